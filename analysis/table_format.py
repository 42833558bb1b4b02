"""Render an :class:`analysis.tables.AblationTable` as Markdown, LaTeX or CSV.

Markdown and LaTeX show formatted cells (``72.81 ± 0.35``, ``+1.20``, ``–`` for missing); CSV
keeps every raw numeric column of the table (means and standard deviations apart, NaN empty) so
that it can be read back without parsing text. Which columns are displayed, and why, is listed
in :mod:`analysis.tables`; a point whose teacher ends below its random-init teacher reads
``▼ below random init`` (LaTeX: ``$\bigtriangledown$``, no extra package).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final, NamedTuple

import pandas as pd

from analysis.tables import SINGLE_POINT_KEY, AblationTable

FORMATS: Final = ("md", "latex", "csv")

MISSING = "–"

#: LaTeX special characters and their escapes (text mode).
_LATEX_ESCAPES: Final = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
}
#: Unicode used in cells, and its LaTeX form (inserted after escaping).
_LATEX_SYMBOLS: Final = {"±": r"$\pm$", "×": r"$\times$", "Δ": r"$\Delta$", "–": "--",
                         "▼": r"$\bigtriangledown$"}

#: The marker of a point whose teacher ends below its random-init teacher.
BELOW_INIT = "▼ below random init"

#: Display labels of paper reference keys (accuracies in percent, diagnostics in nats).
_PAPER_LABELS: Final = {
    "knn": "kNN (%)",
    "linear": "linear (%)",
    "teacher_entropy": "teacher entropy (nats)",
    "kl_teacher_student": "KL (nats)",
}


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _number(value: Any, digits: int = 2, signed: bool = False) -> str:
    if _is_missing(value) or not math.isfinite(float(value)):
        return MISSING
    return f"{float(value):+.{digits}f}" if signed else f"{float(value):.{digits}f}"


def _mean_pm_std(mean: Any, std: Any) -> str:
    if _is_missing(mean):
        return MISSING
    if _is_missing(std):
        return _number(mean)
    return f"{_number(mean)} ± {_number(std)}"


def _key_value(value: Any) -> str:
    if _is_missing(value):
        return MISSING
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class Column(NamedTuple):
    """A displayed column: header, cell formatter, and whether it is right-aligned (numeric)."""

    header: str
    cell: Callable[[pd.Series], str]
    numeric: bool


def _columns(table: AblationTable) -> list[Column]:
    """The displayed columns, in order; each paper value sits beside the measured one."""
    columns = [
        Column("sweep" if key == SINGLE_POINT_KEY else key, _key_cell(key), False)
        for key in table.point_keys
    ]
    columns.append(Column("seeds", _seeds, True))
    shown: set[str] = set()

    def paper(key: str) -> None:
        if key in table.reference_keys:
            columns.append(Column(f"paper {_PAPER_LABELS.get(key, key)}", _paper_cell(key), True))
            shown.add(key)

    for probe, label in (("knn", "kNN"), ("linear", "linear")):
        columns += [
            Column(f"teacher {label} (%)", _mean_std_cell(f"teacher_{probe}"), True),
            Column(f"student {label} (%)", _mean_std_cell(f"student_{probe}"), True),
        ]
        paper(probe)
    columns += [
        Column("random-init teacher kNN (%)", _number_cell("init_teacher_knn"), True),
        Column("random-init teacher linear (%)", _number_cell("init_teacher_linear"), True),
        Column("raw-pixel kNN (%)", _number_cell("pixels_knn"), True),
        Column("raw-pixel linear (%)", _number_cell("pixels_linear"), True),
        Column("teacher kNN vs random init", _versus_init, True),
        Column("Δ teacher vs baseline (pp)", _delta_cell(table), True),
    ]
    if table.show_collapse:
        columns.append(Column("teacher entropy (nats)",
                              _mean_std_cell("final_teacher_entropy"), True))
        paper("teacher_entropy")
        columns.append(Column("batch entropy (nats)",
                              _mean_std_cell("final_teacher_batch_entropy"), True))
        columns.append(Column("KL (nats)", _mean_std_cell("final_kl_teacher_student"), True))
        paper("kl_teacher_student")
        columns.append(Column("ln K", _number_cell("ln_k"), True))
    for key in table.reference_keys:
        if key not in shown:
            columns.append(Column(f"paper {_PAPER_LABELS.get(key, key)}", _paper_cell(key),
                                  True))
    columns += [
        Column("state", lambda row: str(row["state"]), False),
        Column("epochs", _epochs, True),
        Column("compute (h)", lambda row: _number(row["compute_hours"]), True),
    ]
    return columns


def _mean_std_cell(prefix: str) -> Callable[[pd.Series], str]:
    def cell(row: pd.Series) -> str:
        return _mean_pm_std(row[f"{prefix}_mean"], row[f"{prefix}_std"])

    return cell


def _number_cell(column: str) -> Callable[[pd.Series], str]:
    def cell(row: pd.Series) -> str:
        return _number(row[column])

    return cell


def _versus_init(row: pd.Series) -> str:
    """``+16.90 pp`` above the random-init teacher; the marker and the gap below it."""
    if _is_missing(row["delta_init"]):
        return MISSING
    gap = f"{_number(row['delta_init'], signed=True)} pp"
    return f"{BELOW_INIT} ({gap})" if row["below_init"] else gap


def _key_cell(key: str) -> Callable[[pd.Series], str]:
    def cell(row: pd.Series) -> str:
        return _key_value(row[key])

    return cell


def _paper_cell(key: str) -> Callable[[pd.Series], str]:
    def cell(row: pd.Series) -> str:
        return _number(row[f"paper_{key}"])

    return cell


def _delta_cell(table: AblationTable) -> Callable[[pd.Series], str]:
    """Δ vs baseline; a point or baseline below random init is said so, not ranked silently."""
    is_baseline = table.frame["is_baseline"].astype(bool)
    below = table.frame["below_init"].astype(bool) if "below_init" in table.frame else None
    baseline_below = below is not None and bool((below & is_baseline).any())

    def cell(row: pd.Series) -> str:
        if row["is_baseline"]:
            return f"baseline, {BELOW_INIT}" if baseline_below else "baseline"
        text = _number(row["delta_baseline"], signed=True)
        if text == MISSING:
            return text
        if row.get("below_init", False):
            return f"{text} ({BELOW_INIT})"
        if baseline_below:
            return f"{text} (baseline {BELOW_INIT.removeprefix('▼ ')})"
        return text

    return cell


def _seeds(row: pd.Series) -> str:
    if row["n_aggregated"] == row["n_runs"]:
        return str(row["n_runs"])
    return f"{row['n_aggregated']}/{row['n_runs']}"


def _epochs(row: pd.Series) -> str:
    planned = row["epochs_planned"]
    planned_text = "?" if _is_missing(planned) else str(int(planned))
    return f"{int(row['epochs_done'])}/{planned_text}"


def display_cells(table: AblationTable) -> tuple[list[Column], list[list[str]]]:
    """Displayed columns and formatted cells, as shown in Markdown, LaTeX and HTML."""
    columns = _columns(table)
    rows = [[column.cell(row) for column in columns] for _, row in table.frame.iterrows()]
    return columns, rows


def to_markdown(table: AblationTable) -> str:
    """A GitHub-flavoured Markdown table; ``|`` in cells is escaped."""
    columns, rows = display_cells(table)

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |"

    align = ["---:" if column.numeric else "---" for column in columns]
    body = [line([column.header for column in columns]), "| " + " | ".join(align) + " |"]
    body += [line(row) for row in rows]
    return "\n".join(body) + "\n"


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters in text-mode ``text``; ±, ×, Δ, – become math/dashes."""
    escaped = "".join(_LATEX_ESCAPES.get(char, char) for char in text)
    for symbol, latex in _LATEX_SYMBOLS.items():
        escaped = escaped.replace(symbol, latex)
    return escaped


def to_latex(table: AblationTable) -> str:
    """A ``table`` environment with a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    columns, rows = display_cells(table)
    spec = "".join("r" if column.numeric else "l" for column in columns)
    label = "".join(char if char.isalnum() else "-" for char in table.sweep_name)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        f"\\caption{{Ablation sweep {latex_escape(table.sweep_name)}: final k-NN and linear-probe "
        r"top-1 (mean $\pm$ std over seeds) beside the paper's, with the random-init teacher and "
        r"raw-pixel baselines; $\bigtriangledown$: the teacher ends below its random-init "
        r"teacher.}",
        f"\\label{{tab:{label}}}",
        f"\\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(latex_escape(column.header) for column in columns) + r" \\",
        r"\midrule",
        *(" & ".join(latex_escape(cell) for cell in row) + r" \\" for row in rows),
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def to_csv(table: AblationTable) -> str:
    """Every column of ``table.frame``, raw values, one row per point."""
    text: str = table.frame.to_csv(index=False, lineterminator="\n")
    return text


def render(table: AblationTable, fmt: str) -> str:
    """Render in ``fmt``, one of :data:`FORMATS`."""
    if fmt == "md":
        return to_markdown(table)
    if fmt == "latex":
        return to_latex(table)
    if fmt == "csv":
        return to_csv(table)
    raise ValueError(f"table format {fmt!r} is not one of {', '.join(FORMATS)}")
