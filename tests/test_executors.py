"""``bench.run.executors``: one interface, and one collection path (``bench.run.shards``) for every executor."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from tiny_checkpoints import write_tiny_checkpoints

from bench import store
from bench.demo import pipeline as demo
from bench.run import pool, runner, shards
from bench.run.executors import InProcess, LocalPool, RayTasks, choose_executor
from bench.run.runner import RunConfig, RunOptions
from lsrs.data import load_dataset

pytestmark = pytest.mark.xdist_group("exclusive")  # worker processes of their own: never beside the speed guards

_test_set = functools.partial(load_dataset, "digits", "test")  # picklable: the workers load it
IMAGES = 4


def _config(checkpoints: Path, **changes) -> RunConfig:
    return RunConfig(**{"dataset": "digits", "fors": (9,), "sigmas": (0.25,), "n0": 8, "n": 32, "skip": 9,
                        "max_images": IMAGES, "checkpoints": str(checkpoints), **changes})


def _recording(monkeypatch, module) -> list[dict]:
    """Every summary ``module`` hands to :func:`bench.run.shards.collect_shard` (which still folds it)."""
    seen: list[dict] = []

    def collect(manifest: dict, summary: dict, tally: shards.Tally) -> None:
        seen.append(summary)
        shards.collect_shard(manifest, summary, tally)

    monkeypatch.setattr(module, "collect_shard", collect)
    return seen


def test_choose_executor() -> None:
    assert choose_executor() == InProcess() and choose_executor(1) == InProcess()
    assert choose_executor(3) == LocalPool(3, 1) and choose_executor(3, threads=2) == LocalPool(3, 2)
    assert choose_executor(3, ray_options="opts") == RayTasks("opts")


def test_in_process_and_pool_fold_the_manifest_through_one_collect_shard(tmp_path: Path, monkeypatch) -> None:
    """The one-process runner collects each image as a one-row shard (its bar moves per image), the pool each
    shard as it finishes; both through ``collect_shard``, into the same manifest."""
    checkpoints = write_tiny_checkpoints(tmp_path / "ckpt", (9,), (0.25,))
    config = _config(checkpoints)
    in_process = _recording(monkeypatch, runner)
    one = InProcess().run(config, RunOptions(out=tmp_path / "one", quiet=True), _test_set)
    in_pool = _recording(monkeypatch, pool)
    two = LocalPool(2).run(config, RunOptions(out=tmp_path / "pool", quiet=True), _test_set)
    jobs = {"is-f0-s0.25-n32", "ls-f9-s0.25-n32"}
    assert [len(s["rows"]) for s in in_process] == [1] * 2 * IMAGES and {s["job"] for s in in_process} == jobs
    assert sum(len(s["rows"]) for s in in_pool) == 2 * IMAGES and {s["job"] for s in in_pool} == jobs
    for key in ("models", "batch_size", "lipschitz_executed", "checkpoints"):
        assert one[key] == two[key], key
    assert set(one["setup_s"]) == set(two["setup_s"]) == set(one["warmup_s"]) == jobs
    assert one["finished"] and two["finished"]
    for name, seen in (("one", in_process), ("pool", in_pool)):  # what was collected is what was stored
        frame = pd.read_parquet(tmp_path / name)
        assert sum(r["correct"] for s in seen for r in s["rows"]) == int(frame["correct"].sum())
        assert sum(r["radius"] for s in seen for r in s["rows"]) == pytest.approx(float(frame["radius"].sum()))

def test_in_process_stores_every_flush_and_what_a_stopped_job_certified(tmp_path: Path, monkeypatch) -> None:
    """Durability of the one-process runner: rows stored every FLUSH_ROWS images as parts of new names, and what
    a job certified before it was stopped; the resume certifies the rest only."""
    checkpoints = write_tiny_checkpoints(tmp_path / "ckpt", (9,), (0.25,))
    config = _config(checkpoints, methods=("is",), max_images=7, skip=5)
    monkeypatch.setattr(runner, "FLUSH_ROWS", 3)
    out = tmp_path / "run"
    runner.run_grid(config, RunOptions(out=out, quiet=True, stop_after=5), _test_set)
    sizes = sorted(len(pd.read_parquet(p)) for p in store.part_files(out))
    assert sizes == [2, 3]  # one flush of 3, then the 2 certified before the stop
    assert all(re.fullmatch(r"part-is-f0-s0\.25-n32-[0-9a-f]{12}\.parquet", p.name) for p in store.part_files(out))
    assert store.read_manifest(out)["finished"] is None
    runner.run_grid(config, RunOptions(out=out, quiet=True), _test_set)
    frame = pd.read_parquet(out)
    assert len(frame) == 7 and not frame["idx"].duplicated().any()
    assert sorted(len(pd.read_parquet(p)) for p in store.part_files(out)) == [2, 2, 3]


@pytest.mark.parametrize("processes", [1, 3])
def test_bench_demo_runs_its_grid_through_choose_executor(tmp_path: Path, monkeypatch, processes: int) -> None:
    chosen: list[tuple] = []

    class Recorder:
        def run(self, config, options, load_test):
            chosen.append((config, options, load_test))
            return {"finished": "now"}

    def choose(processes: int = 1, ray_options=None, threads: int = 1) -> Recorder:
        chosen.append((processes, ray_options, threads))
        return Recorder()

    monkeypatch.setattr(demo, "choose_executor", choose)
    monkeypatch.setattr("bench.train.grid.train_grid", lambda *args, **kwargs: None)
    monkeypatch.setattr("bench.report.writer.write_report", lambda *args, **kwargs: tmp_path / "report.md")
    out = demo.run_demo(tmp_path / "results", tmp_path / "reports", "cpu", Console(quiet=True), quiet=True,
                        processes=processes)
    (how, (config, options, load_test)) = chosen
    assert how == (processes, None, demo.PRESET.threads)
    assert config.fors == demo.PRESET.fors and options.out == tmp_path / "results" / "run"
    assert load_test.func is load_dataset and out["manifest"] == {"finished": "now"}
