"""One self-contained HTML page with every table and figure of a sweep.

The page needs nothing but itself: figures are PNG images embedded as base64 ``data:`` URIs,
styles are inline, there is no script. It holds the ablation table (plus its LaTeX and CSV in
collapsible blocks), the sweep file's claims with their verdicts (:mod:`analysis.claims`), a
table of every run, and every figure of :func:`analysis.plots.sweep_figures`.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from analysis.claims import ClaimsUnavailable, ConfigError, check_sweep_dir, summary_line
from analysis.figure_style import DPI
from analysis.load import SweepResults
from analysis.plots import sweep_figures
from analysis.table_format import display_cells, to_csv, to_latex
from analysis.tables import AblationTable, build_table

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1.5em;
       box-sizing: border-box; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.baseline td { font-weight: 600; }
tr.below-init td { background: #fdecea; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: 600; }
div.scroll { overflow-x: auto; }
td.verdict { font-weight: 600; text-align: center; }
td.verdict-holds { background: #e6f4ea; color: #137333; }
td.verdict-fails { background: #fdecea; color: #a50e0e; }
td.verdict-undecided { background: #fef7e0; color: #7a5800; }
"""

_CAPTIONS = {
    "knn_overlay": "Teacher (solid) and student (dashed) k-NN top-1 over epochs, mean ± std "
                   "over seeds (paper Fig. 6 left: the momentum teacher beats the student); "
                   "dotted: the teacher at random initialisation, dash-dotted: raw pixels.",
    "knn_runs": "Teacher and student k-NN per run; dotted: teacher at random initialisation, "
                "dash-dotted: k-NN on the raw pixels.",
    "linear": "Linear-probe top-1 on frozen teacher (solid) and student (dashed) features at the "
              "epochs it was measured, mean ± std over seeds; dotted: the random-init teacher's "
              "probe, dash-dotted: the probe on raw pixels.",
    "collapse": "Teacher entropy and KL(teacher‖student) over epochs (paper Fig. 7): KL → 0 "
                "means collapse; entropy → ln K is a uniform collapse, → 0 a one-dimensional one.",
    "patch_size": "Final teacher k-NN vs measured training throughput per patch size "
                  "(paper Fig. 5).",
    "batch_size": "Final teacher k-NN vs batch size (paper Table 9: 100 epochs, no multi-crop).",
    "attention": "Where the teacher's [CLS] token looks in the last block (mean over heads; "
                 "red = most attention, blue = least, brightness = the image), on the same "
                 "validation images (columns) for the first seed of each point (rows). Per-head "
                 "maps, the student's and the 60 % masks: each run's attention/ folder.",
}


def png_data_uri(figure: Figure) -> str:
    """The figure as a ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _html_table(headers: list[str], rows: Iterable[list[str]], numeric: list[bool],
                highlighted: Iterable[bool] | None = None,
                flagged: Iterable[bool] | None = None) -> str:
    """A ``<table>``; ``highlighted`` rows get class ``baseline``, ``flagged`` ``below-init``."""
    head = "".join(f"<th>{_escape(header)}</th>" for header in headers)
    body = []
    marks = list(highlighted) if highlighted is not None else None
    flags = list(flagged) if flagged is not None else None
    for index, row in enumerate(rows):
        cells = "".join(
            f'<td class="num">{_escape(cell)}</td>' if is_numeric else f"<td>{_escape(cell)}</td>"
            for cell, is_numeric in zip(row, numeric, strict=True)
        )
        classes = [name for name, on in (("baseline", marks), ("below-init", flags))
                   if on is not None and on[index]]
        attribute = f' class="{" ".join(classes)}"' if classes else ""
        body.append(f"<tr{attribute}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def ablation_table_html(table: AblationTable) -> str:
    """The ablation table as an HTML ``<table>``; the baseline row is bold, and points whose
    teacher ends below its random-init teacher are shaded (besides their ▼ marker)."""
    columns, rows = display_cells(table)
    return _html_table([column.header for column in columns], rows,
                       [column.numeric for column in columns], table.frame["is_baseline"],
                       table.frame["below_init"].astype(bool))


def _number(value: Any, digits: int) -> str:
    return "–" if pd.isna(value) else f"{float(value):.{digits}f}"


def _percent(value: Any) -> str:
    return "–" if value is None or pd.isna(value) else f"{float(value) * 100.0:.2f}"


def runs_table_html(sweep: SweepResults) -> str:
    """One row per run: point, seed, state, epochs, final kNN and linear probe, the random-init
    teacher's, the final collapse diagnostics, compute, collapse, reason."""
    runs = sweep.runs
    keys = [key for key in sweep.point_keys if key != "run_id"]
    headers = ["run", *keys, "seed", "state", "epochs", "teacher kNN (%)", "student kNN (%)",
               "teacher linear (%)", "random-init teacher kNN (%)",
               "random-init teacher linear (%)", "teacher entropy (nats)",
               "batch entropy (nats)", "KL (nats)",
               "compute (h)", "images/s", "collapse from epoch", "reason"]
    numeric = [False, *(False for _ in keys), True, False, *(True for _ in range(12)), False]
    rows = []
    for _, run in runs.iterrows():
        planned = "?" if pd.isna(run["epochs_planned"]) else str(int(run["epochs_planned"]))
        rows.append([
            str(run["run_id"]),
            *(("–" if pd.isna(run[key]) else str(run[key])) for key in keys),
            "–" if pd.isna(run["seed"]) else str(run["seed"]),
            str(run["state"]),
            f"{run['epochs_done']}/{planned}",
            _number(run["knn_teacher"] * 100.0, 2),
            _number(run["knn_student"] * 100.0, 2),
            _percent(run["linear_teacher"]),
            _percent(run["knn_teacher_init"]),
            _percent(run["linear_teacher_init"]),
            _number(run["final_teacher_entropy"], 2),
            _number(run["final_teacher_batch_entropy"], 2),
            _number(run["final_kl_teacher_student"], 2),
            _number(run["compute_hours"], 2),
            _number(run["images_per_s"], 0),
            "–" if pd.isna(run["collapse_epoch"]) else str(int(run["collapse_epoch"])),
            "" if run["status_reason"] is None else str(run["status_reason"]),
        ])
    return _html_table(headers, rows, numeric)


def claims_html(sweep: SweepResults) -> str:
    """The sweep file's claims as a table (claim, source, paper, measured, verdict), verdicts
    coloured; a paragraph saying why when there are none to check."""
    try:
        checked = check_sweep_dir(sweep.root)
    except ClaimsUnavailable as error:
        return f"<p>No claims checked: {_escape(error)}</p>"
    except ConfigError as error:
        return f"<p>No claims checked: the sweep file's claims are invalid: {_escape(error)}</p>"
    if not checked.results:
        return (f"<p>The sweep file {_escape(checked.sweep_file)} gives no claims for profile "
                f"{_escape(checked.profile)}.</p>")
    head = "".join(f"<th>{name}</th>" for name in
                   ("claim", "source", "paper", "measured", "verdict"))
    rows = []
    for result in checked.results:
        cells = "".join(f"<td>{_escape(text)}</td>" for text in (
            result.claim.id, result.claim.source, result.claim.paper, result.measured))
        rows.append(f'<tr id="claim-{_escape(result.claim.id)}">{cells}<td class="verdict '
                    f'verdict-{result.verdict}">{result.verdict}</td></tr>')
    return (f"<p>From {_escape(checked.sweep_file)} (profile {_escape(checked.profile)}): "
            f"{_escape(summary_line(checked.results))}. Accuracies in percent, thresholds in "
            "percentage points; ± is the standard deviation over seeds; a comparison within "
            "it is undecided, as is a point whose run is missing or unfinished.</p>"
            f'<div class="scroll"><table class="claims"><thead><tr>{head}</tr></thead><tbody>'
            f"{''.join(rows)}</tbody></table></div>")


def _figure_html(stem: str, figure: Figure) -> str:
    # Paged figures (knn_runs_01, knn_runs_02, ...) share the caption of their family.
    caption = _CAPTIONS.get(stem) or _CAPTIONS.get(stem.rsplit("_", 1)[0], "")
    title = stem.replace("_", " ")
    return (
        f'<figure id="fig-{_escape(stem)}"><img src="{png_data_uri(figure)}" '
        f'alt="{_escape(title)}"><figcaption>{_escape(caption)}</figcaption></figure>'
    )


def render_report(sweep: SweepResults) -> str:
    """The report page of ``sweep`` as an HTML string."""
    table = build_table(sweep)
    state_counts = sweep.runs["state"].value_counts()
    states = ", ".join(f"{state} {count}" for state, count in state_counts.items())
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    figures = "\n".join(_figure_html(stem, figure)
                        for stem, figure in sweep_figures(sweep).items())
    varied = ", ".join(sweep.varied_keys) or "nothing"
    meta_rows = "".join(
        f"<dt>{label}</dt><dd>{_escape(sweep.sweep_meta[key])}</dd>\n"
        for key, label in (("file", "sweep file"), ("profile", "profile"))
        if sweep.sweep_meta.get(key) is not None
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>DINO ablation report: {_escape(sweep.name)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>DINO ablation report: {_escape(sweep.name)}</h1>
<dl>
<dt>sweep directory</dt><dd><code>{_escape(sweep.root)}</code></dd>
{meta_rows}<dt>varied</dt><dd>{_escape(varied)}</dd>
<dt>runs</dt><dd>{len(sweep.runs)} ({_escape(states)})</dd>
<dt>baseline run</dt><dd>{_escape(sweep.baseline_run_id)}</dd>
<dt>generated</dt><dd>{_escape(created)}</dd>
</dl>
<h2>Ablation table</h2>
<p>Final k-NN and linear-probe top-1 (%) of the teacher and the student, mean ± std over seeds,
beside the paper's; the randomly initialised teacher and the raw pixels (kNN and linear probe
on the flattened images) are the baselines of the same evaluation. A point whose teacher ends
below its random-init teacher is marked ▼ and shaded: its training made the features worse than
random ones. Δ is the teacher k-NN minus the baseline point's, in percentage points (it says so
when either side is below random init). A done run whose metrics end in a sustained collapse is
shown as collapsed; collapse-related sweeps also show the final teacher entropy, batch-mean
entropy and KL (nats) beside the paper's and ln K.</p>
<div class="scroll">{ablation_table_html(table)}</div>
<details><summary>LaTeX</summary><pre>{_escape(to_latex(table))}</pre></details>
<details><summary>CSV</summary><pre>{_escape(to_csv(table))}</pre></details>
<h2>Claims</h2>
{claims_html(sweep)}
<h2>Runs</h2>
<div class="scroll">{runs_table_html(sweep)}</div>
<h2>Figures</h2>
{figures}
</body>
</html>
"""


def write_report(sweep: SweepResults, path: Path) -> Path:
    """Write the report page of ``sweep`` to ``path``; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(sweep), encoding="utf-8")
    return path
