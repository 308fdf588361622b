"""Intervals of the equal-time table: the vectorised front reading against the scalar one, the paired
bootstrap's point against the table, and the table cells with their intervals."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from synthetic_results import make_manifest, make_results, write_run  # noqa: E402

from bench.report.equal_time import INTERPOLATED, equal_time_frame, interpolate_log_time  # noqa: E402
from bench.report.equal_time_intervals import equal_time_uncertainty, read_front  # noqa: E402
from bench.report.writer import load_run, summarize, write_report  # noqa: E402


def test_read_front_equals_the_scalar_interpolation():
    rng = np.random.default_rng(0)
    for _ in range(200):
        t = np.sort(rng.uniform(0.01, 2.0, 3))
        y = rng.uniform(0, 100, 3)
        budget = float(rng.uniform(0.005, 2.2))
        expect, _ = interpolate_log_time(t, y, budget)
        got = read_front(np.log(t), y[:, None], np.array(np.log(budget)))[0]
        assert (np.isnan(expect) and np.isnan(got)) or got == pytest.approx(expect)
    assert np.isnan(read_front(np.log([1.0, 0.5]), np.ones((2, 1)), np.array(np.log(0.7))))[0]  # not increasing


def n_axis_rows(n_images: int = 40) -> pd.DataFrame:
    """IS-RS and LS-RS 9/18 at n = 100, 400, 1600 on the same images; time grows with n, LS-RS 3x faster."""
    frames = []
    for i, n in enumerate((100, 400, 1600)):
        df = make_results((9,), (0.25,), n_images=n_images, seed=i)
        fast = np.where(df["method"] == "ls", 0.3, 1.0)
        df["total_s"] = df["total_s"] * n / 100 * fast
        df["n"] = n
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def test_gains_point_is_the_table_reading_minus_is_rs(tmp_path):
    run = write_run(tmp_path / "run", n_axis_rows(), make_manifest((9,), (0.25,)))
    df, manifest = load_run(run)
    summary = summarize(df, manifest)
    frame = equal_time_frame(summary)
    intervals, records = equal_time_uncertainty(df, summary)
    read = frame[(frame["method"] == "ls") & (frame["status"] == INTERPOLATED)]
    assert len(read) >= 1
    gains = pd.DataFrame(records)
    for rec in read.to_dict("records"):
        acr = gains[(gains["metric"] == "equal_time_acr") & gains["config_a"].str.contains(f"IS-RS n = {rec['is_n']:,}")]
        is_acr = frame[(frame["method"] == "is") & (frame["is_n"] == rec["is_n"])]["acr"].iloc[0]
        assert acr["value_a"].iloc[0] == pytest.approx(rec["acr"])
        assert acr["diff"].iloc[0] == pytest.approx(rec["acr"] - is_acr)
        assert acr["diff_lo"].iloc[0] <= acr["diff"].iloc[0] <= acr["diff_hi"].iloc[0]
    lows, highs = intervals["ACR"]
    row = read.index[0]
    assert lows[row] <= read.loc[row, "acr"] <= highs[row]


def test_equal_time_table_shows_intervals_and_paired_csv_the_gains(tmp_path):
    run = write_run(tmp_path / "run", n_axis_rows(), make_manifest((9,), (0.25,)))
    result = write_report(run, tmp_path / "rep", figure_formats=("png",))
    text = (tmp_path / "rep" / "equal_time.md").read_text()
    assert "[lo, hi]: the 95 % interval over the images" in text and "] |" in text
    paired = pd.read_csv(tmp_path / "rep" / "paired.csv")
    assert {"equal_time_acr", "equal_time_certified_accuracy"} <= set(paired["metric"])
    assert result.paired is not None and len(result.paired) == len(paired)
