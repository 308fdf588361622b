"""`bench run --ray` on a local 2-CPU Ray: same table as one process, retries, resume (issue 8).

Tiny untrained width-4 digits models and small n keep this short; Ray starts once for the module.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from tiny_checkpoints import retrain, write_tiny_checkpoints

from bench import store
from bench.cli.main import cli
from bench.run.runner import RunConfig, RunOptions, run_grid
from lsrs.data import load_dataset

# One local Ray for the module, on the worker that also runs the speed guards, one after the other: on 2 cores
# the Ray tests took 145 s beside the width-64 guard and 45 s alone (tests/benchmarks/README.md).
pytestmark = [pytest.mark.ray, pytest.mark.xdist_group("exclusive")]

FORS = (1, 9)
SIGMAS = (0.0, 0.25)
IMAGES = 6
N0, N, MAX_N = 16, 64, 128
DECIDE = 0.1
NOT_RESULTS = ["encode_s", "sample_s", "total_s", "device"]  # timing, and the device that measured it
KEY = ["method", "fors", "sigma", "idx"]
PART_NAME = re.compile(r"^part-(is|ls)-f\d+-s[0-9.]+(-n\d+)?-i\d+-[0-9a-f]{10}\.parquet$")  # -n<n> where it samples


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray with 2 CPUs (so 2 one-CPU workers), started once for the module."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR,
                 object_store_memory=100 * 1024**2)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """Untrained width-4 digits models: the baseline and FoR twins at every σ, with an index."""
    return write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"), FORS, SIGMAS)


def _config(checkpoints: Path) -> RunConfig:
    return RunConfig(dataset="digits", fors=FORS, sigmas=SIGMAS, n0=N0, n=N, skip=7, max_images=IMAGES,
                     checkpoints=str(checkpoints), decide_radii=(DECIDE,), max_n=MAX_N)


def _args(checkpoints: Path, out: Path, *extra: str) -> list[str]:
    """The CLI form of :func:`_config`."""
    return ["run", "--dataset", "digits", "--fors", ",".join(map(str, FORS)), "--sigmas", "0,0.25",
            "--n0", str(N0), "--n", str(N), "--max-images", str(IMAGES), "--precision", "fp32", "--skip", "7", "--device", "cpu",
            "--decide-radii", str(DECIDE), "--max-n", str(MAX_N), "--checkpoints", str(checkpoints),
            "--out", str(out), "-q", *extra]


# Ray workers unpickle the loader: a partial of a library function, not a function of this test module.
_test_set = functools.partial(load_dataset, "digits", "test")


@pytest.fixture(scope="module")
def reference(checkpoints: Path, tmp_path_factory) -> Path:
    """The single-process run every Ray run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_grid(_config(checkpoints), RunOptions(out=out, quiet=True), _test_set)
    return out


def _table(folder: Path, drop: list[str]) -> pd.DataFrame:
    frame = pd.read_parquet(folder)
    assert not frame.duplicated(KEY + (["radius"] if "certified" in frame else [])).any()
    return frame.sort_values(KEY).reset_index(drop=True).drop(columns=drop)


def _assert_same_results(out: Path, reference: Path) -> None:
    """Every row and decision equal to the single-process run's, timings (and the devices timed) aside."""
    pd.testing.assert_frame_equal(_table(out, NOT_RESULTS), _table(reference, NOT_RESULTS))
    decisions = ["total_s", "device"]
    pd.testing.assert_frame_equal(_table(out / store.DECISIONS_DIR, decisions),
                                  _table(reference / store.DECISIONS_DIR, decisions))


def _ray_parts(out: Path) -> list[Path]:
    return [p for p in store.part_files(out) if PART_NAME.match(p.name)]


@pytest.mark.parametrize("shard_size,num_cpus", [(4, 1), (6, 2)], ids=["2-workers", "1-worker"])
def test_ray_run_equals_single_process_run(ray_cluster, checkpoints, reference, tmp_path, shard_size, num_cpus):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, _args(checkpoints, out, "--ray", "auto", "--ray-shard-size", str(shard_size),
                                           "--ray-num-cpus", str(num_cpus)))
    assert result.exit_code == 0, result.output
    _assert_same_results(out, reference)
    jobs = len(SIGMAS) * (1 + len(FORS))
    shards = -(-IMAGES // shard_size)
    assert len(store.part_files(out)) == len(_ray_parts(out)) == jobs * shards  # one part per task
    assert len(store.part_files(out / store.DECISIONS_DIR)) == (1 + len(FORS)) * shards  # σ > 0 jobs only
    assert not (out / ".staging").exists()
    manifest = json.loads((out / store.MANIFEST).read_text())
    expected = json.loads((reference / store.MANIFEST).read_text())
    assert manifest["config_hash"] == expected["config_hash"]  # the Ray options do not change the run
    assert manifest["finished"] is not None
    assert manifest["models"] == expected["models"]
    assert manifest["batch_size"] == expected["batch_size"]
    cluster = manifest["cluster"]
    assert [node["cpus"] for node in cluster["nodes"]] == [2.0]
    assert cluster["task"] == {"shard_size": shard_size, "num_cpus": num_cpus, "num_gpus": 0.0, "max_retries": 3}
    assert {d["device"] for d in cluster["devices"]} == set(pd.read_parquet(out)["device"])
    if num_cpus == 1:  # two tasks at a time on the 2-CPU cluster
        assert len({d["pid"] for d in cluster["devices"]}) == 2
    [node] = cluster["nodes"]
    assert node["task_slots"] == 2 // num_cpus and node["tasks"] == jobs * shards
    assert 1 <= node["peak_concurrent_tasks"] <= node["task_slots"]
    assert set(manifest["setup_s"]) == set(expected["setup_s"])
    assert all(s["total"] >= s["load"] > 0 for s in manifest["setup_s"].values())


@pytest.mark.parametrize("stage", ["image", "written"])
def test_task_killed_mid_way_is_retried_and_no_row_is_lost_or_duplicated(
    ray_cluster, checkpoints, reference, tmp_path, stage
):
    """A worker exits on its first attempt (after its first image, or after storing its part); Ray retries."""
    from bench.run.distributed import RayOptions, run_grid_ray

    marker = tmp_path / "killed"

    def die_once(event, job, idx):
        if event == stage and job.method == "ls" and job.sigma > 0 and not marker.exists():
            marker.write_text(f"{job.key} {idx} pid {os.getpid()}")
            os._exit(1)

    out = tmp_path / "run"
    manifest = run_grid_ray(_config(checkpoints), RunOptions(out=out, quiet=True),
                            RayOptions(shard_size=4, max_retries=2, fault_hook=die_once), _test_set)
    assert marker.exists(), "the fault was never injected"
    assert manifest["finished"] is not None
    _assert_same_results(out, reference)
    assert len(store.part_files(out)) == len(SIGMAS) * (1 + len(FORS)) * 2  # the retry replaced, not added
    assert not (out / ".staging").exists()


def test_rerun_resumes_from_stored_parts(ray_cluster, checkpoints, reference, tmp_path):
    """A crashed single-process run resumed on Ray certifies only the missing rows; a further rerun adds none."""
    out = tmp_path / "run"
    run_grid(_config(checkpoints), RunOptions(out=out, quiet=True, stop_after=7), _test_set)  # simulated crash
    assert len(pd.read_parquet(out)) == 7
    result = CliRunner().invoke(cli, _args(checkpoints, out, "--ray", "auto", "--ray-shard-size", "4"))
    assert result.exit_code == 0, result.output
    _assert_same_results(out, reference)
    total = IMAGES * len(SIGMAS) * (1 + len(FORS))
    assert sum(len(pd.read_parquet(p)) for p in _ray_parts(out)) == total - 7
    before = {p.name: p.stat().st_mtime_ns for p in store.part_files(out)}
    again = CliRunner().invoke(cli, _args(checkpoints, out, "--ray", "auto"))
    assert again.exit_code == 0, again.output
    assert {p.name: p.stat().st_mtime_ns for p in store.part_files(out)} == before


def test_ray_resume_with_a_retrained_checkpoint_is_refused_unless_fresh(ray_cluster, checkpoints, tmp_path):
    """A crashed run whose FoR 1 twin is retrained before the --ray resume: refused, then redone with --fresh."""
    root = Path(shutil.copytree(checkpoints, tmp_path / "ckpt"))
    out = tmp_path / "run"
    run_grid(_config(root), RunOptions(out=out, quiet=True, stop_after=7), _test_set)  # 1 of 6 FoR 1 rows stored
    changed = retrain(root, 1, 0.0)
    refused = CliRunner().invoke(cli, _args(root, out, "--ray", "auto"))
    assert refused.exit_code == 2, refused.output
    [line] = refused.output.strip().splitlines()
    assert str(changed) in line and "--fresh" in line and "Traceback" not in refused.output
    assert len(pd.read_parquet(out)) == 7
    fresh = CliRunner().invoke(cli, _args(root, out, "--ray", "auto", "--ray-shard-size", "6", "--fresh"))
    assert fresh.exit_code == 0, fresh.output
    frame = pd.read_parquet(out)
    assert len(frame) == IMAGES * len(SIGMAS) * (1 + len(FORS))
    sha = hashlib.sha256(changed.read_bytes()).hexdigest()
    assert set(frame.loc[(frame["fors"] == 1) & (frame["sigma"] == 0), "checkpoint_sha256"]) == {sha}


def test_error_in_a_worker_exits_2_with_its_message(ray_cluster, checkpoints, tmp_path):
    """A checkpoint that fails its sha256 check on the worker is reported like a local run would."""
    root = tmp_path / "ckpt"
    shutil.copytree(checkpoints, root)
    (root / "digits" / "m-f9-s0.25.safetensors").write_bytes(b"\0" * 64)
    result = CliRunner().invoke(cli, _args(root, tmp_path / "run", "--ray", "auto"))
    assert result.exit_code == 2, result.output
    assert "m-f9-s0.25" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_ray_device_cuda_without_cluster_gpu_exits_2(ray_cluster, checkpoints, tmp_path):
    args = [a if a != "cpu" else "cuda" for a in _args(checkpoints, tmp_path / "run", "--ray", "auto")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "Ray cluster has no GPU" in result.output


def test_ray_absent_says_how_to_install_the_extra(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails, as without the extra
    result = CliRunner().invoke(cli, _args(checkpoints, tmp_path / "run", "--ray", "auto"))
    assert result.exit_code == 2, result.output
    assert 'pip install -e ".[ray]"' in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option", [["--ray-shard-size", "3"], ["--ray-num-cpus", "2"], ["--ray-num-gpus", "1"]])
def test_ray_options_without_ray_exit_2(checkpoints, tmp_path, option):
    result = CliRunner().invoke(cli, _args(checkpoints, tmp_path / "run", *option))
    assert result.exit_code == 2 and f"{option[0]} only apply with --ray" in result.output


@pytest.mark.parametrize("option,needle", [(["--ray-shard-size", "0"], "--ray-shard-size"),
                                           (["--ray-num-cpus", "0"], "--ray-num-cpus")])
def test_bad_ray_options_exit_2(checkpoints, tmp_path, option, needle):
    result = CliRunner().invoke(cli, _args(checkpoints, tmp_path / "run", "--ray", "auto", *option))
    assert result.exit_code == 2 and needle in result.output


def test_ray_extends_a_one_process_run_by_another_n(ray_cluster, checkpoints, reference, tmp_path):
    """The n axis on Ray: a stored one-process run at n = N, extended by ``--n N,2N --ray``, certifies only the
    new n, and those rows equal a one-process run's at 2N (noise keyed without n, so the same on any worker)."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    stored = {p.name: p.stat().st_mtime_ns for p in store.part_files(out)}
    args = _args(checkpoints, out, "--ray", "auto", "--ray-shard-size", "4", "--precision", "fp32")
    args[args.index("--n") + 1] = f"{N},{2 * N}"
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert {p.name: p.stat().st_mtime_ns for p in store.part_files(out) if p.name in stored} == stored
    rows = pd.read_parquet(out)
    new = rows[rows["n"] == 2 * N].sort_values(KEY).reset_index(drop=True)
    assert len(rows) == len(pd.read_parquet(reference)) + len(new) and len(new) == (1 + len(FORS)) * IMAGES
    alone = tmp_path / "alone"
    run_grid(dataclasses.replace(_config(checkpoints), n=2 * N, sigmas=(0.25,)), RunOptions(out=alone, quiet=True),
             _test_set)
    expected = pd.read_parquet(alone).sort_values(KEY).reset_index(drop=True)
    pd.testing.assert_frame_equal(new.drop(columns=[*NOT_RESULTS, "run"]), expected.drop(columns=[*NOT_RESULTS, "run"]))
