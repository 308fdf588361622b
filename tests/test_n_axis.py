"""The n axis of the grid (``bench run --n 48,96``): schema, config hash, resume by extension, shared samples,
the local pool, and the equal-time report (interpolation in log time, never extrapolated)."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from tiny_checkpoints import write_tiny_checkpoints

from bench import store
from bench.cli.main import cli
from bench.report.equal_time import (
    ABOVE,
    BELOW,
    INTERPOLATED,
    MEASURED,
    NOT_MONOTONE,
    WITHIN,
    equal_time_frame,
    interpolate_log_time,
)
from bench.report.writer import summarize, write_report
from bench.run.pool import run_grid_pool
from bench.run.runner import RunConfig, RunOptions, run_grid
from lsrs.data import load_dataset

IMAGES = 3
KEY = ["sigma", "method", "fors", "n", "idx"]
TIMING = ["encode_s", "sample_s", "total_s"]
_test_set = functools.partial(load_dataset, "digits", "test")  # picklable: the pool's workers load it


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    return write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"), (1,), (0.0, 0.25))


def _args(checkpoints: Path, out: Path, n: str) -> list[str]:
    return ["run", "--dataset", "digits", "--fors", "1", "--sigmas", "0,0.25", "--n0", "16", "--n", n,
            "--max-images", str(IMAGES), "--skip", "9", "--checkpoints", str(checkpoints), "--out", str(out), "-q"]


def _rows(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out).sort_values(KEY).reset_index(drop=True)


# ---------------------------------------------------------------------------------------- config and hash


def test_one_n_keeps_the_hash_of_runs_made_before_the_axis() -> None:
    """The digits demo's configuration before the n axis existed had hash 421d1a6f5648d008 (its manifest); it
    was certified with noise stream v1, which a resume of it adopts (tests/test_noise_stream_resume.py)."""
    old_demo = dict(dataset="digits", fors=(9, 13), sigmas=(0.0, 0.25, 0.5), methods=("is", "ls", "lip"), n0=64,
                    alpha=0.001, skip=8, max_images=45, seed=0, device_type="cpu", noise_stream="v1")
    assert RunConfig(**old_demo, n=1000).config_hash() == "421d1a6f5648d008"
    assert RunConfig(**old_demo, n=(1000,)).config_hash() == "421d1a6f5648d008"
    assert RunConfig(**old_demo, n=(1000,)).n == 1000


def test_the_n_axis_is_sorted_and_enters_the_hash() -> None:
    a = RunConfig(dataset="digits", fors=(1,), sigmas=(0.25,), n=(4000, 1000))
    assert a.n == (1000, 4000) and a.n_values == (1000, 4000)
    assert a.config_hash() == RunConfig(dataset="digits", fors=(1,), sigmas=(0.25,), n=(1000, 4000)).config_hash()
    assert a.config_hash() != RunConfig(dataset="digits", fors=(1,), sigmas=(0.25,), n=4000).config_hash()
    with pytest.raises(ValueError, match="n must be"):
        RunConfig(dataset="digits", fors=(1,), sigmas=(0.25,), n=(0, 10))


@pytest.mark.parametrize(("value", "message"), [("1000,0", "must be >= 1"), ("100,100", "twice"), ("1e3", "not a valid")])
def test_bad_n_lists_exit_2_with_one_line(value: str, message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, _args(tmp_path, tmp_path / "out", value))
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------------- rows and resume


def test_n_list_run_schema_then_extension_adds_only_the_new_rows(checkpoints: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    runner = CliRunner()
    assert runner.invoke(cli, _args(checkpoints, out, "48")).exit_code == 0
    first = _rows(out)
    first_parts = set(store.part_files(out))
    assert set(first["n"]) == {0, 48}  # sigma = 0 samples nothing
    hash_48 = json.loads((out / store.MANIFEST).read_text())["config_hash"]

    result = runner.invoke(cli, _args(checkpoints, out, "96,48"))  # the same --out, a list that contains 48
    assert result.exit_code == 0, result.output
    both = _rows(out)
    assert set(store.part_files(out)) > first_parts  # the stored parts are kept, new ones added
    assert set(store.ROW_SCHEMA.names) <= set(both.columns)
    new = both[~both.set_index(KEY).index.isin(first.set_index(KEY).index)]
    assert set(new["n"]) == {96} and len(new) == 2 * IMAGES  # IS-RS and LS-RS FoR 1 at sigma 0.25, n = 96
    assert not both.duplicated(KEY).any() and len(both) == len(first) + len(new)
    pd.testing.assert_frame_equal(both[both.set_index(KEY).index.isin(first.set_index(KEY).index)].reset_index(drop=True),
                                  first)  # the n = 48 rows are those of the first run
    noisy = both[both["sigma"] > 0]
    assert (noisy["counts_estimation"].map(sum) == noisy["n"]).all()
    manifest = json.loads((out / store.MANIFEST).read_text())
    assert manifest["config"]["n"] == [48, 96] and manifest["config_hash"] != hash_48
    assert [e["config_hash"] for e in manifest["extended"]] == [hash_48] and manifest["extended"][0]["n"] == [48]
    assert set(new["run"]) == {manifest["config_hash"]} and set(first["run"]) == {hash_48}
    assert set(manifest["checkpoints"]) == {"is-f0-s0", "ls-f1-s0", "is-f0-s0.25", "ls-f1-s0.25"}
    assert {"is-f0-s0.25-n48", "is-f0-s0.25-n96"} <= set(manifest["batch_size"])

    parts = set(store.part_files(out))
    assert runner.invoke(cli, _args(checkpoints, out, "48,96")).exit_code == 0  # nothing left: nothing added
    assert set(store.part_files(out)) == parts
    refused = runner.invoke(cli, _args(checkpoints, out, "96"))  # drops n = 48: not an extension
    assert refused.exit_code == 2 and "it holds n = 48,96" in refused.output


def test_certificates_at_different_n_share_their_first_samples(checkpoints: Path, tmp_path: Path) -> None:
    """Same noise key at every n: the same selection samples, and the n = 48 estimation samples are the first
    48 of the n = 96 ones, so no class count can shrink from 48 to 96 samples (docstring of bench.run.runner)."""
    out = tmp_path / "run"
    assert CliRunner().invoke(cli, _args(checkpoints, out, "48,96")).exit_code == 0
    rows = pd.read_parquet(out)
    rows = rows[rows["sigma"] > 0].set_index(["method", "fors", "idx", "n"]).sort_index()
    for _, group in rows.groupby(level=[0, 1, 2]):
        small, large = group.xs(48, level="n").iloc[0], group.xs(96, level="n").iloc[0]
        assert list(small["counts_selection"]) == list(large["counts_selection"])
        assert (np.array(large["counts_estimation"]) >= np.array(small["counts_estimation"])).all()
        assert small["seed"] == large["seed"]


@pytest.mark.xdist_group("exclusive")  # worker processes of its own: never beside the speed guards
def test_pool_run_of_an_n_axis_equals_the_one_process_run(checkpoints: Path, tmp_path: Path) -> None:
    config = RunConfig(dataset="digits", fors=(1,), sigmas=(0.0, 0.25), n0=16, n=(48, 96), skip=9,
                       max_images=IMAGES, checkpoints=str(checkpoints))
    run_grid(config, RunOptions(out=tmp_path / "one", quiet=True), _test_set)
    run_grid_pool(config, RunOptions(out=tmp_path / "pool", quiet=True), _test_set, processes=2)
    pd.testing.assert_frame_equal(_rows(tmp_path / "pool").drop(columns=TIMING),
                                  _rows(tmp_path / "one").drop(columns=TIMING))


def test_report_of_an_n_axis_writes_the_equal_time_table_and_front(checkpoints: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert CliRunner().invoke(cli, _args(checkpoints, out, "48,96")).exit_code == 0
    result = write_report(out, tmp_path / "report", fmt="markdown")
    names = {p.name for p in result.paths}
    assert {"equal_time.md", "equal_time.tex", "equal_time.csv", "accuracy_time_front.png"} <= names
    assert "n" in result.summary.columns and set(result.summary["n"]) == {0, 48, 96}
    table = pd.read_csv(tmp_path / "report" / "equal_time.csv")
    assert len(table) == 4  # per IS-RS n (48, 96): IS-RS and LS-RS FoR 1
    assert r"\toprule" in (tmp_path / "report" / "equal_time.tex").read_text()


# ------------------------------------------------------------------------------ interpolation, by hand


def test_interpolation_is_linear_in_log_time_against_hand_computed_values() -> None:
    # t = 1 s and 4 s; budget 2 s lies halfway in log time (ln 2 / ln 4 = 1/2): (10 + 30) / 2.
    assert interpolate_log_time([1.0, 4.0], [10.0, 30.0], 2.0)[0] == pytest.approx(20.0, abs=1e-12)
    # budget 3 s: w = ln 3 / ln 4 = 0.792481..., 10 + 20 w = 25.849625...
    assert interpolate_log_time([1.0, 4.0], [10.0, 30.0], 3.0)[0] == pytest.approx(25.8496250072, abs=1e-9)
    # three points: between 2 s (20) and 8 s (50), budget 4 s is halfway in log time: 35.
    value, status = interpolate_log_time([1.0, 2.0, 8.0], [10.0, 20.0, 50.0], 4.0)
    assert value == pytest.approx(35.0, abs=1e-12) and status == INTERPOLATED
    assert interpolate_log_time([1.0, 4.0], [10.0, 30.0], 4.0) == (30.0, MEASURED)


def test_no_extrapolation_outside_the_measured_times() -> None:
    for budget, status in ((0.999, BELOW), (4.001, ABOVE), (0.0, BELOW)):
        value, got = interpolate_log_time([1.0, 4.0], [10.0, 30.0], budget)
        assert math.isnan(value) and got == status


def test_a_front_whose_time_does_not_grow_with_n_is_not_read() -> None:
    """n = 50, 200, 1000 timed 2.0, 1.8, 3.0 s: a budget of 2.2 s would lie on two segments of the front."""
    value, status = interpolate_log_time([2.0, 1.8, 3.0], [10.0, 20.0, 30.0], 2.2)
    assert math.isnan(value) and status == NOT_MONOTONE


def _summary(rows: list[tuple]) -> pd.DataFrame:
    cols = ["method", "fors", "sigma", "n", "time_s", "cert_acc_r0", "cert_acc_r0.25", "cert_acc_r0.5", "acr"]
    frame = pd.DataFrame(rows, columns=cols)
    return frame.assign(fors_total=18)


def test_equal_time_frame_reads_the_ls_front_at_the_is_time_and_marks_the_rest() -> None:
    summary = _summary([
        ("is", 0, 0.25, 100, 2.0, 90, 60, 30, 0.30),
        ("is", 0, 0.25, 400, 8.0, 92, 70, 40, 0.40),
        ("ls", 9, 0.25, 100, 1.0, 80, 40, 20, 0.20),
        ("ls", 9, 0.25, 400, 4.0, 84, 60, 30, 0.28),
        ("lip", 18, 0.0, 0, 3.0, 70, 50, 10, 0.15),
    ])
    frame = equal_time_frame(summary).set_index(["is_n", "method"])
    ls_100 = frame.loc[(100, "ls")]  # budget 2 s: halfway in log time between LS-RS's 1 s and 4 s
    assert ls_100["cert_acc_r0.25"] == pytest.approx(50.0) and ls_100["acr"] == pytest.approx(0.24)
    assert ls_100["n_equal"] == pytest.approx(200.0) and ls_100["status"] == INTERPOLATED
    ls_400 = frame.loc[(400, "ls")]  # budget 8 s > LS-RS's largest time 4 s: marked, not extrapolated
    assert ls_400["status"].startswith(ABOVE) and math.isnan(ls_400["cert_acc_r0.25"]) and math.isnan(ls_400["n_equal"])
    assert frame.loc[(100, "is")]["status"] == MEASURED and frame.loc[(100, "is")]["acr"] == 0.30
    assert frame.loc[(100, "lip")]["status"].startswith("over budget") and math.isnan(frame.loc[(100, "lip")]["acr"])
    assert frame.loc[(400, "lip")]["status"] == WITHIN and frame.loc[(400, "lip")]["acr"] == 0.15


def test_summarize_splits_the_n_axis_and_a_one_n_run_has_no_n_column(checkpoints: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert CliRunner().invoke(cli, _args(checkpoints, out, "48")).exit_code == 0
    df = pd.read_parquet(out)
    assert "n" not in summarize(df, {}).columns
    assert equal_time_frame(summarize(df, {})).empty


def test_decisions_are_made_once_per_image_whatever_the_n_axis(checkpoints: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [*_args(checkpoints, out, "48,96"), "--sigmas", "0.25", "--decide-radii", "0.1", "--max-n", "64"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    decisions = pd.read_parquet(out / store.DECISIONS_DIR)
    assert len(decisions) == 2 * IMAGES and not decisions.duplicated(["method", "fors", "sigma", "idx"]).any()
    report = write_report(out, tmp_path / "report", figures=False)
    assert "decisions" in {t.name for t in report.tables}
