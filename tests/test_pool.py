"""``bench.run.pool``: the grid certified by local worker processes equals the one-process run, and resumes it."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pandas as pd
import pytest
from tiny_checkpoints import write_tiny_checkpoints

from bench import store
from bench.run.pool import PoolGridRunner, run_grid_pool
from bench.run.runner import RunConfig, RunOptions, run_grid
from lsrs.data import load_dataset

pytestmark = pytest.mark.xdist_group("exclusive")  # worker processes of their own: never beside the speed guards

TIMING = ["encode_s", "sample_s", "total_s"]
KEY = ["sigma", "method", "fors", "idx"]
_test_set = functools.partial(load_dataset, "digits", "test")  # picklable: the workers load it


def _config(checkpoints: Path) -> RunConfig:
    return RunConfig(dataset="digits", fors=(1, 9), sigmas=(0.0, 0.25), n0=16, n=96, skip=7, max_images=5,
                     checkpoints=str(checkpoints), decide_radii=(0.1,), max_n=200)


def _table(folder: Path, drop: list[str]) -> pd.DataFrame:
    frame = pd.read_parquet(folder)
    return frame.sort_values([*KEY, *(["radius"] if "certified" in frame else [])]).reset_index(drop=True).drop(
        columns=drop)


def test_pool_run_equals_the_one_process_run_and_resumes_it(tmp_path: Path) -> None:
    checkpoints = write_tiny_checkpoints(tmp_path / "ckpt", (1, 9), (0.0, 0.25))
    config = _config(checkpoints)
    reference = tmp_path / "reference"
    expected = run_grid(config, RunOptions(out=reference, quiet=True), _test_set)

    out = tmp_path / "pool"
    run_grid(config, RunOptions(out=out, quiet=True, stop_after=4), _test_set)  # an interrupted run to resume
    stored = len(pd.read_parquet(out))
    labels = [0] * len(_test_set())
    manifest = PoolGridRunner(config, RunOptions(out=out, quiet=True)).run_pool(labels, _test_set, processes=2,
                                                                                shard_size=2)
    assert stored == 4 and len(store.part_files(out)) > 3  # the stored rows plus the workers' shards
    pd.testing.assert_frame_equal(_table(out, TIMING), _table(reference, TIMING))
    pd.testing.assert_frame_equal(_table(out / store.DECISIONS_DIR, ["total_s"]),
                                  _table(reference / store.DECISIONS_DIR, ["total_s"]))
    assert manifest["finished"] and manifest["config_hash"] == expected["config_hash"]
    for key in ("checkpoints", "models", "batch_size"):
        assert manifest[key] == expected[key], key
    assert set(manifest["warmup_s"]) == set(expected["warmup_s"])
    assert not (out / ".staging").exists()

    again = run_grid_pool(config, RunOptions(out=out, quiet=True), _test_set, processes=2)  # nothing left to do
    assert again["finished"] and len(pd.read_parquet(out)) == len(pd.read_parquet(reference))


def test_bench_run_processes_reaches_the_pool_with_the_one_process_rows(tmp_path: Path) -> None:
    """``bench run --processes 2`` certifies in local workers (a manifest of the pool: shard set-ups per job)
    and stores the rows of ``bench run``; with ``--ray`` it is refused in one line."""
    from click.testing import CliRunner

    from bench.cli.main import cli

    checkpoints = write_tiny_checkpoints(tmp_path / "ckpt", (9,), (0.0, 0.25))
    args = ["run", "--dataset", "digits", "--fors", "9", "--sigmas", "0,0.25", "--n0", "8", "--n", "48",
            "--skip", "9", "--max-images", "4", "--precision", "fp32", "--checkpoints", str(checkpoints), "-q",
            "--device", "cpu"]  # bit-equal rows are a CPU property: on a GPU each process autotunes its kernels
    one = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    pool = CliRunner().invoke(cli, [*args, "--processes", "2", "--out", str(tmp_path / "pool")])
    assert pool.exit_code == 0, pool.output
    drop = [*TIMING, "device"]
    pd.testing.assert_frame_equal(_table(tmp_path / "one", drop), _table(tmp_path / "pool", drop))
    def shards(run: str) -> list[bool]:  # a shard's part: part-<job>-i<first image>-<digest>.parquet (bench.run.pool)
        return [bool(re.search(r"-i\d+-[0-9a-f]{10}\.parquet$", p.name)) for p in store.part_files(tmp_path / run)]

    assert all(shards("pool")) and not any(shards("one"))
    manifest = store.read_manifest(tmp_path / "pool")
    assert manifest["finished"] and manifest["config_hash"] == store.read_manifest(tmp_path / "one")["config_hash"]
    both = CliRunner().invoke(cli, [*args, "--processes", "2", "--ray", "auto", "--out", str(tmp_path / "x")])
    assert both.exit_code == 2 and "give one of them" in both.output and "Traceback" not in both.output


def test_a_certifier_registered_in_the_parent_only_certifies_in_the_workers(tmp_path: Path) -> None:
    """The example certifier, registered by this process alone, reaches the spawned workers with its shards
    (its record travels in the shard spec) and gives the rows of the one-process run."""
    from example_certifier import KEY, register_clean

    from bench import certifiers

    register_clean()
    try:
        checkpoints = write_tiny_checkpoints(tmp_path / "ckpt", (9,), (0.25,))
        config = RunConfig(dataset="digits", fors=(9,), sigmas=(0.25,), methods=("is", KEY), n0=8, n=32, skip=9,
                           max_images=3, checkpoints=str(checkpoints))
        run_grid(config, RunOptions(out=tmp_path / "one", quiet=True), _test_set)
        run_grid_pool(config, RunOptions(out=tmp_path / "pool", quiet=True), _test_set, processes=2)
        drop = [*TIMING, "device"]
        pd.testing.assert_frame_equal(_table(tmp_path / "one", drop), _table(tmp_path / "pool", drop))
        assert set(pd.read_parquet(tmp_path / "pool")["method"]) == {"is", KEY}
    finally:
        certifiers.unregister(KEY)
