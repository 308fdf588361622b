"""bench.report.plots: figures are written, non-empty, column-wide, with the expected axes and data."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from synthetic_results import make_manifest, make_results  # noqa: E402

from bench.report import plots  # noqa: E402
from bench.report.writer import summarize  # noqa: E402

FORS = (1, 5, 9)
SIGMAS = (0.0, 0.25, 0.5)


@pytest.fixture(scope="module")
def run_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    df = make_results(FORS, SIGMAS, n_images=12, seed=5)
    return df, summarize(df, make_manifest(FORS, SIGMAS))


def _visible_axes(fig):
    return [ax for ax in fig.axes if ax.axison]


def test_certified_accuracy_curve_follows_the_definition():
    radius = np.array([0.1, 0.4, 0.4, 0.9, 0.3])
    correct = np.array([True, True, False, True, True])
    grid = np.array([0.0, 0.1, 0.35, 0.4, 0.5, 0.9, 1.0])
    expected = [100 * np.mean(correct & (radius >= r)) for r in grid]
    np.testing.assert_allclose(plots.certified_accuracy_curve(radius, correct, grid), expected)


def test_certified_accuracy_figure_one_panel_per_sigma(run_tables):
    df, _ = run_tables
    fig = plots.certified_accuracy_figure(df)
    axes = _visible_axes(fig)
    assert [ax.get_title() for ax in axes] == ["σ = 0.25", "σ = 0.50"]
    assert [ax.get_ylabel() for ax in axes] == [plots.CERT_ACC_LABEL, ""]  # shared y axis, labelled once
    for ax in axes:
        assert ax.get_xlabel() == plots.RADIUS_LABEL
        assert len(ax.get_lines()) == 1 + len(FORS)  # IS-RS and each FoR
        first = ax.get_lines()[0].get_ydata()
        assert first[0] <= 100 and np.all(np.diff(first) <= 0)  # non-increasing in the radius
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["IS-RS", "LS-RS 1/18", "LS-RS 5/18", "LS-RS 9/18"]
    assert fig.get_size_inches()[0] == pytest.approx(plots.COLUMN_WIDTH_IN)


def test_ablation_figures_show_the_summary(run_tables):
    _, summary = run_tables
    fig = plots.ablation_accuracy_figure(summary)
    ax_acr, ax_acc = fig.axes
    assert (ax_acr.get_ylabel(), ax_acc.get_ylabel()) == (plots.ACR_LABEL, plots.ACCURACY_LABEL)
    assert ax_acr.get_xlabel() == ax_acc.get_xlabel() == "FoR k (of 18)"
    ls = summary[summary["method"] == "ls"]
    acr_lines = [ln for ln in ax_acr.get_lines() if len(ln.get_xdata()) == len(FORS)]
    assert len(acr_lines) == 2  # one per sigma > 0
    np.testing.assert_allclose(acr_lines[0].get_ydata(), ls[ls["sigma"] == 0.25].sort_values("fors")["acr"])

    fig = plots.ablation_speed_figure(summary)
    ax_t, ax_s = fig.axes
    assert (ax_t.get_ylabel(), ax_s.get_ylabel()) == (plots.TIME_LABEL, plots.SPEEDUP_LABEL)
    ideal = [ln for ln in ax_s.get_lines() if ln.get_linestyle() == ":"]
    assert len(ideal) == 1
    np.testing.assert_allclose(
        ideal[0].get_ydata(), ls.drop_duplicates("fors").sort_values("fors")["flop_ideal"]
    )
    is_lines = [ln for ln in ax_t.get_lines() if ln.get_linestyle() == "--"]
    is_times = summary[(summary["method"] == "is") & (summary["sigma"] > 0)]["time_s"]
    assert sorted(ln.get_ydata()[0] for ln in is_lines) == pytest.approx(sorted(is_times))
    assert "FLOP-ideal" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_time_breakdown_bars_add_up_to_the_time(run_tables):
    _, summary = run_tables
    fig = plots.time_breakdown_figure(summary)
    (ax,) = fig.axes
    assert ax.get_xlabel() == plots.TIME_LABEL
    timed = summary[summary["sigma"] > 0]
    assert len(ax.get_yticklabels()) == len(timed)
    ends = {}
    for patch in ax.patches:
        y = round(patch.get_y(), 6)
        ends[y] = max(ends.get(y, 0.0), patch.get_x() + patch.get_width())
    assert sorted(ends.values()) == pytest.approx(sorted(timed["time_s"]))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "encoder",
        "sampling + classification",
        "other",
    ]


def test_write_figures_writes_nonempty_png_and_pdf(run_tables, tmp_path):
    df, summary = run_tables
    written, notes = plots.write_figures(df, summary, tmp_path)
    assert notes == []
    assert [f.name for f in written] == [
        "certified_accuracy",
        "pa_lower_ecdf",
        "ablation_accuracy",
        "ablation_speed",
        "time_breakdown",
    ]
    for fig in written:
        assert [p.name for p in fig.paths] == [f"{fig.name}.png", f"{fig.name}.pdf"]
        png, pdf = (p.read_bytes() for p in fig.paths)
        assert png.startswith(b"\x89PNG") and len(png) > 5000
        assert pdf.startswith(b"%PDF") and len(pdf) > 2000
        assert fig.figure.get_size_inches()[0] == pytest.approx(plots.COLUMN_WIDTH_IN)
        assert fig.caption


def test_write_figures_skips_what_the_data_cannot_show(tmp_path):
    df = make_results((9,), (0.0,), n_images=4, with_is=False)
    written, notes = plots.write_figures(df, summarize(df, {}), tmp_path)
    assert [f.name for f in written] == ["ablation_accuracy"]
    assert len(notes) == 4 and all("not drawn" in n for n in notes)


def test_write_figures_in_the_formats_asked_for(tmp_path):
    """PNG + PDF by default; the demo asks for PNG only (bench report writes the PDFs)."""
    df = make_results((9,), (0.0,), n_images=4, with_is=False)
    for sub in ("both", "png"):
        (tmp_path / sub).mkdir()
    (both,), _ = plots.write_figures(df, summarize(df, {}), tmp_path / "both")
    (png,), _ = plots.write_figures(df, summarize(df, {}), tmp_path / "png", formats=("png",))
    assert [p.suffix for p in both.paths] == [".png", ".pdf"] and all(p.is_file() for p in both.paths)
    assert [p.name for p in png.paths] == ["ablation_accuracy.png"]
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["ablation_accuracy.png"]
