"""Importing Cohen et al.-format certify logs and reporting them beside native runs (issue 25)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from cohen_format import LOG_HEADER, write_log
from synthetic_results import make_manifest, make_results, write_run

from bench.cli.main import cli
from bench.peers.importers import parse_log_time
from bench.report.writer import RADII, cert_acc_column

# (idx, label, predict, radius, time): both time formats of their released files, an abstention, a wrong class
LINES = [
    (0, 3, 3, 0.378, "15.4"),
    (20, 7, -1, 0.0, "0:00:13.736080"),
    (40, 4, 4, 0.341, "0:00:15"),
    (60, 7, 7, 0.941, "1 day, 0:00:01.500000"),
    (80, 8, 9, 0.755, "16.0"),
    (100, 4, 4, 0.0831, "17"),
    (120, 8, 8, 0.952, "0:01:02.250000"),  # just under 0.25·Φ⁻¹(0.001^(1/100000)) = 0.9529
]
SECONDS = [15.4, 13.73608, 15.0, 86401.5, 16.0, 17.0, 62.25]
TRUNCATED = "140\t6\t6\t0.20"  # a killed write: no newline; its radius would parse as 0.2 instead of 0.203


def _import(log: Path, out: Path, *extra: str):
    args = ["import", "certify-log", str(log), "--dataset", "cifar10", "--sigma", "0.25", "--out", str(out)]
    return CliRunner().invoke(cli, [*args, *extra])


@pytest.mark.parametrize(("text", "seconds"), [("15.4", 15.4), ("0:00:15.400000", 15.4), ("0:00:15", 15.0),
                                               ("2:03:04.5", 7384.5), ("1 day, 0:00:00", 86400.0),
                                               ("2 days, 1:00:00.000001", 2 * 86400 + 3600.000001)])
def test_time_field_both_formats(text: str, seconds: float) -> None:
    assert parse_log_time(text) == pytest.approx(seconds, abs=1e-9)


def test_log_import_keeps_every_complete_line_and_marks_the_unknown(tmp_path: Path) -> None:
    log = write_log(tmp_path / "sigma_0.25", LINES, truncated_tail=TRUNCATED)
    result = _import(log, tmp_path / "run", "--n", "100000", "--alpha", "0.001", "--name", "Cohen et al.")
    assert result.exit_code == 0, result.output
    assert "dropped the truncated last line" in result.stderr
    rows = pd.read_parquet(tmp_path / "run").sort_values("idx").reset_index(drop=True)
    assert rows["idx"].tolist() == [line[0] for line in LINES]
    np.testing.assert_allclose(rows["total_s"], SECONDS, rtol=0, atol=1e-9)
    assert rows["prediction"].tolist() == [line[2] for line in LINES]
    assert rows["correct"].tolist() == [line[1] == line[2] for line in LINES]
    assert (rows["method"] == "is").all() and (rows["fors"] == 0).all() and (rows["sigma"] == 0.25).all()
    assert (rows["n"] == 100000).all() and (rows["alpha"] == 0.001).all()
    for col in ("p_a_lower", "n0", "samples_used", "sample_s", "seed", "batch_size"):
        assert rows[col].isna().all(), col
    for col in ("counts_selection", "counts_estimation", "precision", "device", "checkpoint_sha256", "arch"):
        assert rows[col].isna().all(), col
    manifest = json.loads((tmp_path / "run" / "_manifest.json").read_text())
    imported = manifest["imported"]
    assert imported["name"] == "Cohen et al." and imported["source"] == "sigma_0.25" and imported["images"] == 7
    assert {"p_a_lower", "n0", "counts_estimation", "device", "arch"} <= set(imported["unknown_columns"])
    assert "n" not in imported["unknown_columns"] and "alpha" not in imported["unknown_columns"]
    assert imported["declared"] == {"dataset": "cifar10", "sigma": 0.25, "n": 100000, "alpha": 0.001,
                                    "name": "Cohen et al."}
    assert imported["source_sha256"] == hashlib.sha256(log.read_bytes()).hexdigest()
    assert len(imported["warnings"]) == 1


def _oracle(log: Path) -> dict[float, float]:
    """Certified accuracy (%) at each radius, read straight from the file: complete lines only."""
    text = log.read_text()
    complete = text[: text.rfind("\n") + 1]
    records = list(csv.DictReader(complete.splitlines(), delimiter="\t"))
    return {r: 100.0 * sum(int(x["correct"]) == 1 and float(x["radius"]) >= r for x in records) / len(records)
            for r in RADII}


def test_certified_accuracy_of_the_imported_log_equals_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    lines = []
    for i in range(40):
        label, predict = int(rng.integers(10)), int(rng.integers(-1, 10))
        radius = 0.0 if predict == -1 else float(rng.uniform(0, 1.3))
        lines.append((i * 20, label, predict if rng.random() < 0.5 else label, radius, f"{rng.uniform(10, 20):.1f}"))
    log = write_log(tmp_path / "log", lines, truncated_tail="800\t1\t1\t0.9")
    assert _import(log, tmp_path / "run", "-q").exit_code == 0
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "run"), "--out", str(tmp_path / "rep"), "-q",
                                      "--no-figures"])
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "rep" / "summary.csv")
    (row,) = summary.to_dict(orient="records")
    for r, want in _oracle(log).items():
        assert row[cert_acc_column(r)] == pytest.approx(want, abs=1e-9), r
    index = (tmp_path / "rep" / "index.md").read_text()
    assert "**Imported**" in index and "p_a_lower" in index


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("idx\tlabel\tpredict\tradius\tcorrect\n0\t1\t1\t0.5\t1\n", "wrong header"),
        ("idx label predict radius correct time\n", "wrong header"),
        (LOG_HEADER + "0\t1\t1\t0.5\t1\t15.4\n2\t1\t1\tx\t1\t15.4\n4\t1\t1\t0.5\t1\t15.4\n", "line 3"),
        (LOG_HEADER + "0\t1\t2\t0.5\t1\t15.4\n", "contradicts"),
        (LOG_HEADER + "0\t1\t1\t0.5\t1\t15.4\n0\t1\t1\t0.5\t1\t15.4\n", "appears twice"),
        (LOG_HEADER + "0\t1\t1\t-0.5\t1\t15.4\n", "finite number >= 0"),
        (LOG_HEADER + "0\t1\t1\t0.5\t1\tsoon\n", "line 2"),
        (LOG_HEADER, "no complete line"),
    ],
    ids=["five-columns", "spaces", "bad-radius", "correct-contradicts", "repeated", "negative", "bad-time", "empty"],
)
def test_bad_logs_exit_2_in_one_line_and_write_nothing(text: str, expect: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text(text)
    result = _import(log, tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert expect in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("args", "expect"), [(["--sigma", "x"], "'x' is not a number"),
                                              (["--sigma", "inf"], "finite"), (["--n", "0"], "--n")])
def test_bad_declarations_exit_2(args: list[str], expect: str, tmp_path: Path) -> None:
    log = write_log(tmp_path / "log", LINES)
    result = CliRunner().invoke(cli, ["import", "certify-log", str(log), "--dataset", "cifar10", "--sigma", "0.25",
                                      "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 2 and expect in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_missing_log_and_occupied_out_exit_2(tmp_path: Path) -> None:
    assert _import(tmp_path / "nope", tmp_path / "run").exit_code == 2
    log = write_log(tmp_path / "log", LINES)
    assert _import(log, tmp_path / "run", "-q").exit_code == 0
    again = _import(log, tmp_path / "run")
    assert again.exit_code == 2 and "already holds a run" in again.output


def test_side_by_side_report_of_a_native_run_and_an_imported_log(tmp_path: Path) -> None:
    native = write_run(tmp_path / "ours", make_results(fors=(9,), sigmas=(0.0, 0.25, 0.5), n_images=12,
                                                       dataset="digits"),
                       make_manifest(fors=(9,), sigmas=(0.0, 0.25, 0.5), dataset="digits"))
    log = write_log(tmp_path / "log", LINES)
    assert _import(log, tmp_path / "peer", "--name", "Cohen et al.", "-q").exit_code == 0
    out = tmp_path / "cmp"
    result = CliRunner().invoke(cli, ["report", str(native), str(tmp_path / "peer"), "--name", "ours",
                                      "--name", "Cohen et al.", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    table = (out / "certified_accuracy_compare.md").read_text()
    assert "| ours " in table and "| Cohen et al. " in table
    summary = pd.read_csv(out / "summary.csv")
    peer = summary[summary["run"] == "Cohen et al."]
    expect = _oracle(log)
    for r in RADII:  # the comparison's numbers are each run's own numbers
        assert float(peer[cert_acc_column(r)].iloc[0]) == pytest.approx(expect[r], abs=1e-9)
    ours = summary[(summary["run"] == "ours") & (summary["sigma"] > 0)]
    assert set(zip(ours["method"], ours["sigma"], strict=True)) == {("is", 0.25), ("is", 0.5), ("ls", 0.25),
                                                                   ("ls", 0.5)}
    assert (out / "certified_accuracy_compare.png").is_file() and (out / "certified_accuracy_compare.pdf").is_file()
    index = (out / "index.md").read_text()
    assert "different datasets" in index and "cohen2019-certify-log" in index

    from bench.report.compare import comparison_figure, load_runs

    fig = comparison_figure(load_runs([native, tmp_path / "peer"], ["ours", "Cohen et al."]))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["ours: IS-RS, σ = 0.25", "ours: IS-RS, σ = 0.50", "ours: LS-RS 9/18, σ = 0.25",
                      "ours: LS-RS 9/18, σ = 0.50", "Cohen et al.: IS-RS, σ = 0.25"]
    handles = fig.legends[0].legend_handles
    colours = [h.get_color() for h in handles]
    styles = [h.get_linestyle() for h in handles]
    assert colours[0] == colours[1] != colours[2] == colours[3] != colours[4] != colours[0]  # run and configuration
    assert styles[0] == styles[2] != styles[1] == styles[3]  # σ


def test_comparison_names_must_match_the_runs(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log", LINES)
    assert _import(log, tmp_path / "a", "-q").exit_code == 0
    assert _import(log, tmp_path / "b", "-q", "--name", "a").exit_code == 0
    same = CliRunner().invoke(cli, ["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "r")])
    assert same.exit_code == 2 and "two runs are named 'a'" in same.output
    count = CliRunner().invoke(cli, ["report", str(tmp_path / "a"), str(tmp_path / "b"), "--name", "x",
                                     "--out", str(tmp_path / "r")])
    assert count.exit_code == 2 and "one per run" in count.output


def test_a_published_mnist_log_imports_and_reports_as_mnist(tmp_path: Path) -> None:
    """Published MNIST logs (e.g. Jeong & Shin 2020's LeNet runs) stand beside an MNIST run: any registered
    dataset is accepted for a log, and the report speaks of MNIST."""
    log = write_log(tmp_path / "log", LINES)
    args = ["import", "certify-log", str(log), "--dataset", "mnist", "--sigma", "0.5", "--out", str(tmp_path / "run"),
            "-q"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    manifest = json.loads((tmp_path / "run" / "_manifest.json").read_text())
    assert manifest["config"]["dataset"] == "mnist"
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "run"), "--out", str(tmp_path / "rep"), "-q",
                                      "--no-figures"])
    assert result.exit_code == 0, result.output
    assert "MNIST" in (tmp_path / "rep" / "index.md").read_text()
    unknown = CliRunner().invoke(cli, ["import", "certify-log", str(log), "--dataset", "svhn", "--sigma", "0.5",
                                       "--out", str(tmp_path / "other")])
    assert unknown.exit_code == 2 and "unknown dataset 'svhn'" in unknown.output
