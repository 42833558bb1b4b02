"""The side-by-side attention figure: which runs it shows, what each cell holds, where it goes."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.image import AxesImage

from analysis.attention_figure import (
    ATTENTION_COLORMAP,
    MIN_BRIGHTNESS,
    _overlay,
    attention_figure,
    read_attention,
)
from analysis.load import load_results
from analysis.plots import sweep_figures, write_plots
from analysis.report import render_report
from tests.analysis import synth


def _patch_sweep(root: Path, *, attention: bool = True) -> Path:
    """Patch sizes 4 and 8, two seeds each; every run has attention files when asked."""
    runs = []
    for patch in (4, 8):
        for seed in (1, 0):  # the later seed first: rows must still show seed 0
            runs.append({"run_id": f"p{patch}-s{seed}", "varied": {"model.patch_size": patch},
                         "seed": seed, "records": synth.make_records(3)})
    synth.write_sweep(root, runs, name="patch")
    if attention:
        for patch in (4, 8):
            for seed in (0, 1):
                synth.write_attention(root / "runs" / f"p{patch}-s{seed}", patch_size=patch,
                                      epoch=3 + seed, seed=10 * patch + seed)
    return root


def _rows_and_labels(figure: object) -> tuple[np.ndarray, list[str], list[str]]:
    ax = figure.axes[0]  # type: ignore[attr-defined]
    images = [child for child in ax.get_children() if isinstance(child, AxesImage)]
    assert len(images) == 1
    rows = [label.get_text() for label in ax.get_yticklabels()]
    columns = [label.get_text() for label in ax.get_xticklabels()]
    return np.asarray(images[0].get_array()), rows, columns


def test_rows_are_points_at_their_first_seed_and_columns_the_images(tmp_path: Path) -> None:
    sweep = load_results(_patch_sweep(tmp_path / "sweep"))
    figure = attention_figure(sweep)
    assert figure is not None
    mosaic, rows, columns = _rows_and_labels(figure)
    assert rows == ["model.patch_size=4\n(seed 0, epoch 3)",
                    "model.patch_size=8\n(seed 0, epoch 3)"]
    assert columns == ["val #0", "val #3", "val #6", "val #9"]
    assert "sweep patch" in figure.texts[0].get_text()
    # 16 px images drawn at 64 px with 2 px gaps: 2 rows x 4 columns of cells
    assert mosaic.shape == (2 * 64 + 2, 4 * 64 + 3 * 2, 3)
    # each cell is the overlay of that run's image and head-mean teacher map, upscaled 4x
    data = read_attention(tmp_path / "sweep" / "runs" / "p8-s0")
    assert data is not None
    expected = _overlay(data.images[2], data.teacher[2].mean(axis=0), 8)
    top, left = 64 + 2, 2 * (64 + 2)
    np.testing.assert_allclose(mosaic[top:top + 64:4, left:left + 64:4], expected)


def test_overlay_follows_the_patch_grid_and_the_attention() -> None:
    image = np.full((4, 4, 1), 0.5)
    attention = np.array([[0.0, 1.0], [0.25, 0.25]])  # 2x2 patches of 2 px
    cell = _overlay(image, attention, 2)
    assert cell.shape == (4, 4, 3)
    colormap = colormaps[ATTENTION_COLORMAP]
    brightness = MIN_BRIGHTNESS + (1 - MIN_BRIGHTNESS) * 0.5
    for (row, col), scaled in {(0, 0): 0.0, (1, 1): 0.0, (0, 2): 1.0, (1, 3): 1.0,
                               (2, 0): 0.25, (3, 3): 0.25}.items():
        expected = brightness * np.asarray(colormap(scaled)[:3])
        np.testing.assert_allclose(cell[row, col], expected, err_msg=str((row, col)))
    # timm pads on the right/bottom: a 5 px image with 2 px patches has a 3x3 map, and pixel
    # 4 is the first of the third patch
    padded = _overlay(np.ones((5, 5, 3)), np.diag([0.0, 0.0, 1.0]), 2)
    assert padded.shape == (5, 5, 3)
    np.testing.assert_allclose(padded[4, 4], colormap(1.0)[:3])
    np.testing.assert_allclose(padded[3, 3], colormap(0.0)[:3])
    # the image sets the brightness: a black pixel keeps MIN_BRIGHTNESS of the colour
    dark = _overlay(np.zeros((2, 2, 1)), np.array([[1.0]]), 2)
    np.testing.assert_allclose(dark[0, 0], MIN_BRIGHTNESS * np.asarray(colormap(0.0)[:3]))


def test_none_without_attention_files_and_unreadable_files_skipped(tmp_path: Path) -> None:
    root = _patch_sweep(tmp_path / "sweep", attention=False)
    assert attention_figure(load_results(root)) is None
    assert "attention" not in sweep_figures(load_results(root))
    broken = root / "runs" / "p4-s0" / "attention"
    broken.mkdir(parents=True)
    (broken / "maps.npz").write_bytes(b"not a zip")
    synth.write_attention(root / "runs" / "p4-s1", patch_size=4, epoch=9)
    figure = attention_figure(load_results(root, use_cache=False))
    assert figure is not None
    _, rows, _ = _rows_and_labels(figure)
    # seed 0's file is unreadable: the point's next seed stands in
    assert rows == ["model.patch_size=4\n(seed 1, epoch 9)"]


def test_a_row_on_other_images_says_so(tmp_path: Path) -> None:
    root = _patch_sweep(tmp_path / "sweep", attention=False)
    synth.write_attention(root / "runs" / "p4-s0", patch_size=4)
    synth.write_attention(root / "runs" / "p8-s0", patch_size=8, n_images=2, indices=[5, 7])
    figure = attention_figure(load_results(root))
    assert figure is not None
    mosaic, rows, columns = _rows_and_labels(figure)
    assert rows[1].endswith("(other images)") and "other" not in rows[0]
    assert len(columns) == 4
    assert np.all(mosaic[66:, -64:] == 1.0)  # the shorter row's missing cells stay blank


def test_plot_and_report_include_the_figure(tmp_path: Path) -> None:
    root = _patch_sweep(tmp_path / "sweep")
    sweep = load_results(root)
    written = write_plots(sweep, tmp_path / "plots")
    assert tmp_path / "plots" / "attention.png" in written
    assert tmp_path / "plots" / "attention.pdf" in written
    page = render_report(sweep)
    assert '<figure id="fig-attention"><img src="data:image/png;base64,' in page
    assert "[CLS] token looks" in page


def test_the_module_does_not_import_the_trainer() -> None:
    """Only the run-directory contract (its file names), never the trainer."""
    source = Path(__file__).resolve().parents[2] / "analysis" / "attention_figure.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    modules |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name.split(".")[0] == "dino_ablate" and name != "dino_ablate.contract"
                   for name in modules)
