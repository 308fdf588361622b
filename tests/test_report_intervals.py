"""Intervals and paired comparisons in ``bench report``: summary.csv / paired.csv columns, numbers against
independent oracles, the sentences of index.md against paired.csv, and runs that cannot define them."""

from __future__ import annotations

import math
import re

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from scipy import stats  # noqa: E402
from statsmodels.stats.proportion import proportion_confint  # noqa: E402
from synthetic_results import make_manifest, make_results, write_run  # noqa: E402

from bench.cli.main import cli  # noqa: E402
from bench.report.comparisons import PAIRED_COLUMNS  # noqa: E402
from bench.report.intervals import BOOTSTRAP_SEED  # noqa: E402
from bench.report.writer import RADII, cert_acc_column, write_report  # noqa: E402

METRICS = ["acr", "accuracy", *(cert_acc_column(r) for r in RADII), "time_s", "encode_s", "sample_s", "speedup"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ci")
    df = make_results((5, 9), (0.0, 0.25, 0.5), n_images=60, seed=3)
    run = write_run(tmp / "run", df, make_manifest((5, 9), (0.0, 0.25, 0.5)))
    result = write_report(run, tmp / "rep", figures=False)
    return df, tmp / "rep", result


def _ok(df: pd.DataFrame) -> pd.Series:
    return df["correct"].astype(bool) & (df["prediction"] != -1)


def test_summary_csv_has_an_interval_per_metric_and_the_seed(report):
    _, rep, _ = report
    summary = pd.read_csv(rep / "summary.csv")
    for m in METRICS:
        assert {f"{m}_lo", f"{m}_hi"} <= set(summary.columns), m
        assert list(summary.columns).index(f"{m}_lo") == list(summary.columns).index(m) + 1
    assert (summary["confidence"] == 0.95).all() and (summary["bootstrap_seed"] == BOOTSTRAP_SEED).all()


def test_proportion_intervals_are_statsmodels_clopper_pearson_on_the_counts(report):
    df, rep, _ = report
    summary = pd.read_csv(rep / "summary.csv")
    for rec in summary[summary["sigma"] > 0].to_dict("records"):
        rows = df[(df["method"] == rec["method"]) & (df["fors"] == rec["fors"]) & (df["sigma"] == rec["sigma"])]
        for r in RADII:
            k = int((_ok(rows) & (rows["radius"] >= r)).sum())
            lo, hi = proportion_confint(k, len(rows), alpha=0.05, method="beta")
            col = cert_acc_column(r)
            assert rec[f"{col}_lo"] == pytest.approx(100 * lo) and rec[f"{col}_hi"] == pytest.approx(100 * hi)
        assert rec["acr_lo"] <= rec["acr"] <= rec["acr_hi"]
        assert rec["time_s_lo"] <= rec["time_s"] <= rec["time_s_hi"]
    clean = summary[summary["sigma"] == 0]
    assert clean["time_s_lo"].isna().all() and clean[f"{cert_acc_column(0.5)}_lo"].isna().all()


def test_paired_csv_rows_against_hand_computed_counts(report):
    df, rep, _ = report
    paired = pd.read_csv(rep / "paired.csv")
    assert list(paired.columns) == list(PAIRED_COLUMNS)
    assert len(paired) == 2 * 2 * (len(RADII) + 2)  # 2 FoRs x 2 sigmas x (radii, ACR, time)
    rec = paired[(paired["config_a"] == "LS-RS 9/18, σ = 0.50") & (paired["radius"] == 0.25)].iloc[0]
    ls = df[(df["method"] == "ls") & (df["fors"] == 9) & (df["sigma"] == 0.5)].set_index("idx").sort_index()
    is_ = df[(df["method"] == "is") & (df["sigma"] == 0.5)].set_index("idx").sort_index()
    a, b = (_ok(x) & (x["radius"] >= 0.25) for x in (ls, is_))
    discordant_a, discordant_b = int((a & ~b).sum()), int((~a & b).sum())
    assert rec["value_a"] == pytest.approx(100 * a.mean()) and rec["value_b"] == pytest.approx(100 * b.mean())
    assert rec["diff"] == pytest.approx(100 * (a.mean() - b.mean()))
    assert rec["p_value"] == pytest.approx(stats.binomtest(discordant_a, discordant_a + discordant_b).pvalue)
    assert rec["test"] == "exact McNemar" and rec["images"] == 60 and math.isnan(rec["ratio"])
    acr = paired[(paired["config_a"] == "LS-RS 9/18, σ = 0.50") & (paired["metric"] == "acr")].iloc[0]
    credit_a = np.where(_ok(ls), ls["radius"], 0.0).mean()
    credit_b = np.where(_ok(is_), is_["radius"], 0.0).mean()
    assert acr["ratio"] == pytest.approx(credit_a / credit_b)
    assert acr["ratio_lo"] <= acr["ratio"] <= acr["ratio_hi"]
    time = paired[(paired["config_b"] == "LS-RS 9/18, σ = 0.50") & (paired["metric"] == "time_s")].iloc[0]
    summary = pd.read_csv(rep / "summary.csv")
    row = summary[(summary["fors"] == 9) & (summary["sigma"] == 0.5)].iloc[0]
    assert time["ratio"] == pytest.approx(row["speedup"])  # IS-RS first: the ratio is the speedup
    assert (time["ratio_lo"], time["ratio_hi"]) == pytest.approx((row["speedup_lo"], row["speedup_hi"]))


NUMBER = r"(-?[\d.]+|n/a)"
DETECTED = re.compile(rf"^- (σ = [\d.]+): FoR (\d+) certifies {NUMBER} points (fewer|more) at r = ([\d.]+) "
                      rf"\(95 % CI {NUMBER} to {NUMBER}, exact McNemar p = (\S+)\)\.$")
NOT_DETECTED = re.compile(rf"^- (σ = [\d.]+): FoR (\d+) against IS-RS at r = ([\d.]+): no difference detectable on "
                          rf"(\d+) images: the 95 % CI of the difference is {NUMBER} to {NUMBER} points")


def test_index_sentences_match_paired_csv(report):
    _, rep, result = report
    paired = pd.read_csv(rep / "paired.csv")
    lines = (rep / "index.md").read_text().splitlines()
    seen = 0
    for line in lines:
        if m := DETECTED.match(line):
            setting, fors, d, word, r, lo, hi, p = m.groups()
            rec = paired[(paired["config_a"] == f"LS-RS {fors}/18, {setting}") & (paired["radius"] == float(r))].iloc[0]
            sign = -1 if word == "fewer" else 1
            assert float(d) == pytest.approx(sign * rec["diff"], abs=0.05)
            ends = sorted((sign * rec["diff_lo"], sign * rec["diff_hi"]))
            assert (float(lo), float(hi)) == pytest.approx(tuple(ends), abs=0.05)
            assert float(p) == pytest.approx(rec["p_value"], rel=0.05) and rec["p_value"] < 0.05
            seen += 1
        elif m := NOT_DETECTED.match(line):
            setting, fors, r, images, lo, hi = m.groups()
            rec = paired[(paired["config_a"] == f"LS-RS {fors}/18, {setting}") & (paired["radius"] == float(r))].iloc[0]
            assert int(images) == rec["images"]
            assert (float(lo), float(hi)) == pytest.approx((rec["diff_lo"], rec["diff_hi"]), abs=0.05)
            assert rec["p_value"] >= 0.05 or rec["diff_lo"] <= 0 <= rec["diff_hi"]
            seen += 1
    assert seen == (paired["metric"] == "certified_accuracy").sum() == len(result.sentences) - 4


def test_index_states_what_alpha_adds_with_the_run_numbers(report):
    df, rep, _ = report
    text = (rep / "index.md").read_text()
    certificates = int((_ok(df) & (df["sigma"] > 0) & (df["radius"] > 0)).sum())
    assert f"The run issued {certificates:,} certificates" in text
    assert f"α·M = {0.001 * certificates:.3g}" in text and "Markov" in text and "union bound" in text
    assert "**Power**: on 60 images" in text


def test_tables_show_value_and_interval(report):
    _, rep, _ = report
    text = (rep / "certified_accuracy.md").read_text()
    assert "[lo, hi]: the 95 % interval over the images" in text
    assert re.search(r"\| +\d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\] \|", text)


def test_confidence_option_narrows_the_intervals_and_rejects_nonsense(report, tmp_path):
    df, rep, _ = report
    run = rep.parent / "run"
    res = CliRunner().invoke(cli, ["report", str(run), "--out", str(tmp_path / "r80"), "--no-figures", "-q",
                                   "--confidence", "0.8"])
    assert res.exit_code == 0, res.output
    s80, s95 = pd.read_csv(tmp_path / "r80" / "summary.csv"), pd.read_csv(rep / "summary.csv")
    assert (s80["confidence"] == 0.8).all()
    width = lambda s, m: (s[f"{m}_hi"] - s[f"{m}_lo"]).dropna()  # noqa: E731
    assert (width(s80, "accuracy") < width(s95, "accuracy")).all()
    assert "80 % CI" in (tmp_path / "r80" / "index.md").read_text() or "80 %" in (tmp_path / "r80" / "index.md").read_text()
    bad = CliRunner().invoke(cli, ["report", str(run), "--out", str(tmp_path / "bad"), "--confidence", "1.5"])
    assert bad.exit_code == 2 and "--confidence" in bad.output and "Traceback" not in bad.output


# ------------------------------------------------------------------------------ runs that define little


def _report(tmp_path, df, manifest=None, **kw):
    run = write_run(tmp_path / "run", df, manifest)
    result = write_report(run, tmp_path / "rep", figure_formats=("png",), **kw)
    return result, pd.read_csv(tmp_path / "rep" / "summary.csv"), pd.read_csv(tmp_path / "rep" / "paired.csv")


def test_one_image_reports_undefined_means_and_a_paired_row(tmp_path):
    result, summary, paired = _report(tmp_path, make_results((9,), (0.0, 0.5), n_images=1))
    assert summary["acr_lo"].isna().all() and summary["time_s_lo"].isna().all()
    assert summary["accuracy_lo"].notna().all()  # Clopper-Pearson is defined on one image
    assert (paired["images"] == 1).all() and paired.loc[paired["metric"] == "acr", "diff_lo"].isna().all()
    assert "[n/a]" in (tmp_path / "rep" / "table1.md").read_text()


def test_one_method_reports_without_comparisons(tmp_path):
    result, summary, paired = _report(tmp_path, make_results((9,), (0.25,), n_images=8, with_is=False))
    assert paired.empty and list(paired.columns) == list(PAIRED_COLUMNS)
    assert summary["speedup_lo"].isna().all() and summary["acr_lo"].notna().all()
    assert "## Paired comparisons" not in (tmp_path / "rep" / "index.md").read_text()


def test_no_clean_rows(tmp_path):
    result, summary, paired = _report(tmp_path, make_results((9,), (0.25,), n_images=12))
    assert len(paired) == len(RADII) + 2 and summary["accuracy_lo"].notna().all()


def test_imported_log_without_times(tmp_path):
    df = make_results((9,), (0.25, 0.5), n_images=12).drop(columns=["total_s", "encode_s", "sample_s"])
    result, summary, paired = _report(tmp_path, df, make_manifest((9,), (0.25, 0.5)))
    assert summary["time_s_lo"].isna().all() and summary["speedup_lo"].isna().all()
    time = paired[paired["metric"] == "time_s"]
    assert time["diff"].isna().all() and time["images"].eq(0).all()
    assert paired.loc[paired["metric"] == "acr", "diff_lo"].notna().all()


def test_comparison_report_pairs_the_runs_on_shared_images(tmp_path):
    a = write_run(tmp_path / "a", make_results((9,), (0.25,), n_images=30, seed=1), make_manifest((9,), (0.25,)))
    b = write_run(tmp_path / "b", make_results((), (0.25,), n_images=30, seed=2), make_manifest((), (0.25,)))
    res = CliRunner().invoke(cli, ["report", str(a), str(b), "--name", "ours", "--name", "peer", "--out",
                                   str(tmp_path / "cmp"), "--no-figures", "-q"])
    assert res.exit_code == 0, res.output
    paired = pd.read_csv(tmp_path / "cmp" / "paired.csv")
    assert set(paired["config_a"]) >= {"ours: IS-RS, σ = 0.25", "ours: LS-RS 9/18, σ = 0.25"}
    assert (paired["images"] == 30).all()
    text = (tmp_path / "cmp" / "index.md").read_text()
    assert "## Paired comparisons" in text
    table = (tmp_path / "cmp" / "certified_accuracy_compare.md").read_text()
    assert re.search(r"\d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\]", table)


def test_figures_show_bands_and_the_pa_ecdf(tmp_path):
    result, _, _ = _report(tmp_path, make_results((9,), (0.0, 0.25, 0.5), n_images=20))
    names = {p.name for p in result.paths}
    assert {"certified_accuracy.png", "pa_lower_ecdf.png"} <= names
    from matplotlib.collections import PolyCollection

    from bench.report.plots import certified_accuracy_figure

    fig = certified_accuracy_figure(make_results((9,), (0.25,), n_images=20))
    bands = [c for ax in fig.axes for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2  # one band per curve (IS-RS, LS-RS 9/18)


def test_lipschitz_speedup_has_a_paired_interval(tmp_path):
    df = make_results((9,), (0.25, 0.5), n_images=30)
    lip = df[(df["method"] == "is") & (df["sigma"] == 0.25)].assign(method="lip", fors=18, sigma=0.0)
    lip["total_s"] = lip["total_s"] * 0.01
    result, summary, _ = _report(tmp_path, pd.concat([df, lip], ignore_index=True))
    row = summary[summary["method"] == "lip"].iloc[0]
    is_times = df[(df["method"] == "is") & (df["sigma"] > 0)].groupby("sigma")["total_s"].mean().mean()
    assert row["speedup"] == pytest.approx(is_times / lip["total_s"].mean())
    assert row["speedup_lo"] < row["speedup"] < row["speedup_hi"]


def test_rows_without_image_indices_pair_nothing(tmp_path):
    df = make_results((9,), (0.25,), n_images=10).drop(columns=["idx"])
    result, summary, paired = _report(tmp_path, df)
    assert paired.empty and summary["acr_lo"].notna().all() and summary["speedup_lo"].isna().sum() == 1
