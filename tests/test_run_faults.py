"""A run folder survives the faults of a shared cluster: no row lost, none doubled, never a traceback.

Two writers on one folder, a killed pool worker, a truncated part, a corrupt manifest, a full disk and Ctrl-C.
"""

from __future__ import annotations

import errno
import functools
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from fault_hooks import always_kill, kill_once
from tiny_checkpoints import write_tiny_checkpoints

from bench import store
from bench.cli.main import cli
from bench.run.pool import PoolGridRunner
from bench.run.runner import JobCertifier, RunConfig, RunOptions, run_grid
from bench.store import lock as run_lock
from lsrs.data import load_dataset

pytestmark = pytest.mark.xdist_group("exclusive")  # subprocesses and worker pools of their own

FORS = (9,)
SIGMAS = (0.25,)
IMAGES = 4
TIMING = ["encode_s", "sample_s", "total_s"]
KEY = ["sigma", "method", "fors", "n", "idx"]
_test_set = functools.partial(load_dataset, "digits", "test")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    return write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"), FORS, SIGMAS)


@pytest.fixture(scope="module")
def reference(checkpoints, tmp_path_factory) -> pd.DataFrame:
    """The rows of an uninterrupted one-process run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_grid(_config(checkpoints), RunOptions(out=out, quiet=True), _test_set)
    return _rows(out)


def _config(checkpoints: Path) -> RunConfig:
    return RunConfig(dataset="digits", fors=FORS, sigmas=SIGMAS, n0=16, n=64, skip=7, max_images=IMAGES,
                     checkpoints=str(checkpoints))


def _args(checkpoints: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--dataset", "digits", "--fors", "9", "--sigmas", "0.25", "--n0", "16", "--n", "64",
            "--max-images", str(IMAGES), "--skip", "7", "--checkpoints", str(checkpoints), "--out", str(out), "--device", "cpu",
            "--precision", "fp32", "-q", *extra]


def _rows(out: Path) -> pd.DataFrame:
    frame = pd.read_parquet(out)
    return frame.sort_values(KEY).reset_index(drop=True).drop(columns=TIMING)


def _assert_complete(out: Path, reference: pd.DataFrame) -> None:
    rows = _rows(out)
    assert not rows.duplicated(KEY).any(), "a key is stored twice"
    pd.testing.assert_frame_equal(rows, reference)


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


# ------------------------------------------------------------------------------------ one writer per folder


def _hold_lock(out: str, ready, release) -> None:
    with run_lock.acquire(Path(out)):
        ready.set()
        release.wait(60)


def test_second_writer_is_refused_naming_the_holder(checkpoints, tmp_path) -> None:
    out = tmp_path / "run"
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(out), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        result = CliRunner().invoke(cli, _args(checkpoints, out))
    finally:
        release.set()
        holder.join(60)
    assert result.exit_code == 2, result.output
    line = _one_line(result.output)
    assert f"pid {holder.pid}" in line and socket.gethostname() in line
    assert not store.part_files(out)


def test_two_concurrent_runs_never_store_a_key_twice(checkpoints, reference, tmp_path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", "from bench.cli.main import cli; cli()", *_args(checkpoints, out)]
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [(p.wait(300), p.stderr.read()) for p in runs]
    for code, err in results:
        assert code in (0, 2), err
        if code == 2:
            assert "is being written by another bench run" in _one_line(err)
    _assert_complete(out, reference)


def test_stale_lock_of_a_dead_process_is_taken_over(checkpoints, reference, tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / run_lock.LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                                      "started": "2026-01-01T00:00:00+00:00"}))
    result = CliRunner().invoke(cli, _args(checkpoints, out))
    assert result.exit_code == 0, result.output
    assert "took over the lock" in result.output and f"pid {dead.pid}" in result.output
    _assert_complete(out, reference)
    assert (out / run_lock.LOCK_NAME).read_text() == ""  # released cleanly


def test_a_folder_with_doubled_rows_is_repaired_by_the_next_run(checkpoints, reference, tmp_path) -> None:
    out = tmp_path / "run"
    assert CliRunner().invoke(cli, _args(checkpoints, out)).exit_code == 0
    for part in store.part_files(out):  # as two writers left it before the lock existed
        (out / part.name.replace("part-", "part-copy-")).write_bytes(part.read_bytes())
    assert len(pd.read_parquet(out)) == 2 * len(reference)
    result = CliRunner().invoke(cli, _args(checkpoints, out))
    assert result.exit_code == 0, result.output
    assert "rows stored twice removed" in _one_line(result.output)
    _assert_complete(out, reference)


# ------------------------------------------------------------------------------------------- killed worker


def test_killed_pool_worker_costs_only_its_shard(checkpoints, reference, tmp_path) -> None:
    out = tmp_path / "run"
    marker = tmp_path / "killed"
    manifest = PoolGridRunner(_config(checkpoints), RunOptions(out=out, quiet=True)).run_pool(
        [0] * len(_test_set()), _test_set, processes=2, shard_size=2, fault_hook=functools.partial(kill_once, str(marker)))
    assert marker.exists(), "the fault was never injected"
    assert manifest["finished"]
    _assert_complete(out, reference)


@pytest.mark.slow  # three pools of spawned workers; the retry path itself is covered by the test above
def test_shard_whose_worker_always_dies_is_named_after_bounded_retries(checkpoints, tmp_path) -> None:
    from bench.run.pool import ShardsLostError

    out = tmp_path / "run"
    with pytest.raises(ShardsLostError, match=r"lost their worker process 3 times .*FoR 9"):
        PoolGridRunner(_config(checkpoints), RunOptions(out=out, quiet=True)).run_pool(
            [0] * len(_test_set()), _test_set, processes=2, shard_size=2, fault_hook=always_kill)
    stored = pd.read_parquet(out)
    assert set(stored["method"]) == {"is"} and len(stored) == IMAGES  # the other job's shards are kept


# ----------------------------------------------------------------------------------------- storage faults


def test_truncated_part_is_moved_aside_and_certified_again(checkpoints, reference, tmp_path) -> None:
    out = tmp_path / "run"
    assert CliRunner().invoke(cli, _args(checkpoints, out)).exit_code == 0
    part = store.part_files(out)[0]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    report = CliRunner().invoke(cli, ["report", str(out), "--out", str(tmp_path / "report"), "-q"])
    assert report.exit_code == 2 and part.name in _one_line(report.output)
    result = CliRunner().invoke(cli, _args(checkpoints, out))
    assert result.exit_code == 0, result.output
    line = _one_line(result.output)
    assert part.name in line and "moved aside" in line
    assert (out / f"_{part.name}.corrupt").exists()  # kept, not deleted
    _assert_complete(out, reference)


def test_corrupt_manifest_is_moved_aside_and_the_run_resumes(checkpoints, reference, tmp_path) -> None:
    out = tmp_path / "run"
    assert CliRunner().invoke(cli, _args(checkpoints, out, "--max-images", "2")).exit_code == 0
    (out / store.MANIFEST).write_text('{"config": {"dataset": "dig')  # cut short
    result = CliRunner().invoke(cli, _args(checkpoints, out, "--max-images", str(IMAGES)))
    assert result.exit_code == 2, result.output  # the stored rows are of another selection: say so
    assert "holds result parts of another configuration but no manifest" in result.output.splitlines()[-1]
    assert (out / f"{store.MANIFEST}.corrupt").exists()

    again = tmp_path / "again"
    assert CliRunner().invoke(cli, _args(checkpoints, again)).exit_code == 0
    (again / store.MANIFEST).write_text("not json")
    result = CliRunner().invoke(cli, _args(checkpoints, again))
    assert result.exit_code == 0, result.output
    assert "not a valid manifest" in result.output and "moved aside" in result.output
    assert json.loads((again / store.MANIFEST).read_text())["finished"]
    _assert_complete(again, reference)


def _full_disk_after(calls: int, monkeypatch) -> None:
    """Every parquet write after the first ``calls`` fails as on a full disk."""
    real = pq.write_table
    count = {"n": 0}

    def write_table(table, where, *args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            Path(where).write_bytes(b"PAR1 half")  # what a full disk leaves of the temporary file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", write_table)


def test_full_disk_stops_with_one_line_and_a_valid_folder(checkpoints, reference, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    _full_disk_after(1, monkeypatch)
    result = CliRunner().invoke(cli, _args(checkpoints, out))
    assert result.exit_code == 2, result.output
    line = _one_line(result.output)
    assert "No space left on device" in line and "disk is full" in line and str(out) in line
    assert not list(out.rglob("*.tmp")), "a temporary file was left behind"
    stored = pd.read_parquet(out)  # every part that is there is whole
    assert 0 < len(stored) < len(reference)
    monkeypatch.undo()
    assert CliRunner().invoke(cli, _args(checkpoints, out)).exit_code == 0
    _assert_complete(out, reference)


def test_ctrl_c_exits_130_and_the_run_resumes(checkpoints, reference, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    real = JobCertifier.iter_rows

    def interrupted(self, dataset, indices, decided=frozenset()):
        for k, item in enumerate(real(self, dataset, indices, decided)):
            if self.job.method == "ls" and k == 1:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(JobCertifier, "iter_rows", interrupted)
    result = CliRunner().invoke(cli, _args(checkpoints, out))
    assert result.exit_code == 130, result.output
    assert "run the same command again to resume" in _one_line(result.output)
    assert len(pd.read_parquet(out)) == IMAGES + 1  # IS-RS done, one LS-RS image stored
    monkeypatch.undo()
    assert CliRunner().invoke(cli, _args(checkpoints, out)).exit_code == 0
    _assert_complete(out, reference)


# ----------------------------------------------------------------------------------- reports and checkpoints


def _report(run: Path, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["report", str(run), "--out", str(out), "-q", "--no-figures", *extra])


def test_full_disk_during_a_report_leaves_no_half_written_report(checkpoints, tmp_path, monkeypatch) -> None:
    run, out = tmp_path / "run", tmp_path / "report"
    assert CliRunner().invoke(cli, _args(checkpoints, run)).exit_code == 0
    assert _report(run, out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = Path.write_text
    count = {"n": 0}

    def write_text(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    result = _report(run, out)
    assert result.exit_code == 2, result.output
    line = _one_line(result.output)
    assert "No space left on device" in line and str(out) in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous report, whole
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left

    monkeypatch.undo()
    fresh = tmp_path / "fresh"
    monkeypatch.setattr(Path, "write_text", write_text)
    count["n"] = 0
    assert _report(run, fresh).exit_code == 2 and not fresh.exists()  # nothing, rather than a folder without index.md


def test_report_of_a_trusted_run_names_its_unproven_bounds(checkpoints, tmp_path) -> None:
    run, out = tmp_path / "run", tmp_path / "report"
    assert CliRunner().invoke(cli, _args(checkpoints, run)).exit_code == 0
    frame = pd.read_parquet(run)
    for part in store.part_files(run):  # as --trust-lipschitz records it
        rows = pd.read_parquet(part)
        rows.loc[rows["method"] == "ls", "lipschitz_source"] = "trusted"
        rows.to_parquet(part)
    assert (frame["method"] == "ls").any()
    result = CliRunner().invoke(cli, ["report", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Trusted, unproven Lipschitz bound" in result.output
    index = (out / "index.md").read_text()
    assert "## Caveats" in index and "LS-RS 9/18 at σ = 0.25" in index
    figure_lines = [line for line in index.splitlines() if line.startswith("- [") and ".png" in line]
    table_lines = [line for line in index.splitlines() if line.startswith("- [table")]
    assert figure_lines and table_lines
    assert all("Trusted, unproven" in line for line in figure_lines + table_lines)


def test_report_beside_the_paper_states_the_protocol_and_warns(checkpoints, tmp_path) -> None:
    run, out = tmp_path / "run", tmp_path / "report"
    assert CliRunner().invoke(cli, _args(checkpoints, run)).exit_code == 0
    result = CliRunner().invoke(cli, ["report", str(run), "--out", str(out), "--compare-paper", "--no-figures"])
    assert result.exit_code == 0, result.output
    assert "was not certified with the paper's protocol" in result.output
    table = next(out.glob("table1.md")).read_text()
    assert f"n = 64, n0 = 16, α = 0.001, width 4, {IMAGES} of 360 test images" in table


def test_comparison_states_image_counts_and_uses_the_shared_images(checkpoints, tmp_path) -> None:
    few, many = tmp_path / "few", tmp_path / "many"
    assert CliRunner().invoke(cli, _args(checkpoints, few, "--max-images", "2")).exit_code == 0
    assert CliRunner().invoke(cli, _args(checkpoints, many)).exit_code == 0
    out = tmp_path / "compare"
    result = CliRunner().invoke(cli, ["report", str(few), str(many), "--out", str(out), "--no-figures"])
    assert result.exit_code == 0, result.output
    assert f"few: 2, many: {IMAGES}" in result.output and "use the 2 images" in result.output
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["images"]) == {2}


def test_full_disk_in_bench_train_is_one_line_and_resumable(tmp_path, monkeypatch) -> None:
    import safetensors.torch
    from safetensors import SafetensorError

    from lsrs import checkpoint as ckpt

    out = tmp_path / "ckpt"
    args = ["train", "--dataset", "digits", "--fors", "0", "--sigmas", "0.25", "--epochs", "1", "--width", "4",
            "--out", str(out), "-q"]
    real = safetensors.torch.save_file

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 16)  # what a full disk leaves of the temporary file
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "cannot write" in _one_line(result.output) and "run the same command again" in result.output
    assert not [p for p in (out / "digits").iterdir() if p.name.startswith(".")], "a temporary file was left"
    assert not list((out / "digits").glob("*.safetensors"))  # nothing half-written
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    assert CliRunner().invoke(cli, args).exit_code == 0
    (entry,) = ckpt.read_index(out, "digits")
    ckpt.load_checkpoint(out / "digits" / entry["path"], expected_sha256=entry["sha256"])


def test_read_only_out_for_bench_train_is_refused_before_training(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(cli, ["train", "--dataset", "digits", "--fors", "0", "--sigmas", "0.25", "--epochs",
                                      "1", "--out", str(blocker / "ckpt"), "-q"])
    assert result.exit_code == 2 and "cannot write to --out" in _one_line(result.output)


def test_a_storage_fault_of_a_worker_reaches_the_driver_whole() -> None:
    import pickle

    from bench.store.faults import StorageFault

    fault = StorageFault("/runs/a/part-x.parquet", OSError(errno.ENOSPC, "No space left on device"))
    again = pickle.loads(pickle.dumps(fault))
    assert str(again) == str(fault) and again.errno == errno.ENOSPC and again.filename == "/runs/a/part-x.parquet"
    assert "the disk is full" in str(again)
