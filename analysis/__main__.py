"""``python -m analysis table|plot|report SWEEP_DIR``: the analysis subcommands on their own."""

from analysis.cli import main

raise SystemExit(main())
