"""Turn dino_ablate run directories into tables, figures and reports.

The package reads only what a run directory holds (see ``docs/run_directory.md``) and never
imports the trainer: from ``dino_ablate`` it imports only :mod:`dino_ablate.contract`, the
run-directory contract (file names, states, readers, the collapse classification), which the
trainer writes by. Pipeline order, one module per concept:

- :mod:`analysis.sweepdir` finds the run directories of a sweep directory;
- :mod:`analysis.metrics_file` parses ``metrics.jsonl`` (the contract's reader, tolerating a
  truncated last line);
- :mod:`analysis.run_reader` reads one run directory;
- :mod:`analysis.collapse` classifies a run's entropy/KL series (the contract's, pure, no I/O);
- :mod:`analysis.state` decides a run's state (done, collapsed, running, ...);
- :mod:`analysis.parallel` reads many run directories in worker processes;
- :mod:`analysis.cache` keeps parsed runs under ``SWEEP_DIR/.analysis_cache``;
- :mod:`analysis.load` assembles the tidy per-epoch DataFrame;
- :mod:`analysis.tables` builds the per-sweep ablation table, :mod:`analysis.table_format`
  renders it as Markdown, LaTeX or CSV;
- :mod:`analysis.plots` draws the figures (styled by :mod:`analysis.figure_style`; baseline
  reference lines and the linear-probe figure in :mod:`analysis.probe_plots`),
  :mod:`analysis.report` writes one HTML page;
- :mod:`analysis.claims` evaluates the sweep file's claims over the runs (the arithmetic in
  :mod:`analysis.claim_stats`, one evaluator per kind in :mod:`analysis.claim_kinds`);
- :mod:`analysis.cli` adds the ``table``, ``plot``, ``report`` and ``claims`` subcommands.

Importing :mod:`analysis` itself is cheap: matplotlib is only imported by :mod:`analysis.plots`.
"""
