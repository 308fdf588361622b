"""Provenance of `bench run` rows (issue 14, parts 3 and 4): which checkpoint produced each row, resumes that
would mix two models, the baseline matched to its twins, and what the report says the numbers mean."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from tiny_checkpoints import retrain, tiny_checkpoint, write_tiny_checkpoints

from bench import store
from bench.cli.main import cli
from bench.report.notes import ray_note, setup_note
from bench.run.runner import RunConfig, RunOptions, run_grid
from lsrs.checkpoint import update_index
from lsrs.data import DIGITS_SIZE, DIGITS_SOURCE_SIZE, DIGITS_UPSAMPLING_NORM, load_dataset
from lsrs.devices import resolve_device

FORS = (9,)
SIGMAS = (0.0, 0.25)
IMAGES = 3
TIMING = ["encode_s", "sample_s", "total_s"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    return write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"), FORS, SIGMAS)


@pytest.fixture
def own_checkpoints(checkpoints: Path, tmp_path: Path) -> Path:
    """A copy of the checkpoints that a test may retrain."""
    return Path(shutil.copytree(checkpoints, tmp_path / "ckpt"))


def _args(checkpoints: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--dataset", "digits", "--fors", ",".join(map(str, FORS)), "--sigmas", "0,0.25",
            "--n0", "16", "--n", "64", "--max-images", str(IMAGES), "--precision", "fp32", "--skip", "11",
            "--checkpoints", str(checkpoints), "--out", str(out), "-q", *extra]


def _config(checkpoints: Path) -> RunConfig:
    return RunConfig(dataset="digits", fors=FORS, sigmas=SIGMAS, n0=16, n=64, skip=11, max_images=IMAGES,
                     checkpoints=str(checkpoints), device_type=resolve_device("auto").type)  # as bench run chooses


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_every_row_carries_the_sha256_of_its_checkpoint(checkpoints: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, _args(checkpoints, out))
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert "checkpoint_sha256" in store.ROW_SCHEMA.names and len(frame) == IMAGES * len(SIGMAS) * 2
    for (fors, sigma), rows in frame.groupby(["fors", "sigma"]):
        expected = _sha(checkpoints / "digits" / f"m-f{fors}-s{sigma:g}.safetensors")
        assert set(rows["checkpoint_sha256"]) == {expected}


def test_setup_times_are_in_the_manifest(checkpoints: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert CliRunner().invoke(cli, _args(checkpoints, out)).exit_code == 0
    manifest = json.loads((out / store.MANIFEST).read_text())
    setup = manifest["setup_s"]
    assert set(manifest["checkpoints"]) == {"is-f0-s0", "ls-f9-s0", "is-f0-s0.25", "ls-f9-s0.25"}
    assert set(setup) == {"is-f0-s0", "ls-f9-s0", "is-f0-s0.25-n64", "ls-f9-s0.25-n64"}  # per model and n
    for key, stages in setup.items():
        assert stages["load"] > 0 and stages["fold_bn"] > 0
        assert stages["total"] == pytest.approx(sum(v for k, v in stages.items() if k != "total"))
        if key.endswith("s0.25-n64"):
            assert stages["first_encode"] > 0 and stages["warmup"] == manifest["warmup_s"][key]
        else:  # σ = 0: plain forward passes, no smoother
            assert "first_encode" not in stages


def test_resume_with_a_retrained_checkpoint_is_refused_unless_fresh(own_checkpoints: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_grid(_config(own_checkpoints), RunOptions(out=out, quiet=True, stop_after=4), _test_set)  # crash
    before = json.loads((out / store.MANIFEST).read_text())["checkpoints"]
    changed = retrain(own_checkpoints, 9, 0.0)  # one of its 3 images is stored: the rest would mix two models
    refused = CliRunner().invoke(cli, _args(own_checkpoints, out))
    assert refused.exit_code == 2
    line = _one_line(refused)
    assert str(changed) in line and "--fresh" in line
    assert json.loads((out / store.MANIFEST).read_text())["checkpoints"] == before  # not overwritten
    assert len(pd.read_parquet(out)) == 4  # nothing certified with the new model
    fresh = CliRunner().invoke(cli, _args(own_checkpoints, out, "--fresh"))
    assert fresh.exit_code == 0, fresh.output
    frame = pd.read_parquet(out)
    assert set(frame.loc[(frame["fors"] == 9) & (frame["sigma"] == 0), "checkpoint_sha256"]) == {_sha(changed)}
    manifest = json.loads((out / store.MANIFEST).read_text())
    assert manifest["checkpoints"]["ls-f9-s0"]["sha256"] == _sha(changed)


def test_resume_of_a_finished_run_after_retraining_is_refused(own_checkpoints: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert CliRunner().invoke(cli, _args(own_checkpoints, out)).exit_code == 0
    changed = retrain(own_checkpoints, 0, 0.0)
    refused = CliRunner().invoke(cli, _args(own_checkpoints, out))
    assert refused.exit_code == 2 and str(changed) in _one_line(refused)


def test_old_run_without_the_column_resumes_and_reports(checkpoints: Path, tmp_path: Path) -> None:
    """Runs stored before rows carried checkpoint_sha256 still resume (the manifest's record is checked) and
    `bench report` reads them."""
    out = tmp_path / "run"
    run_grid(_config(checkpoints), RunOptions(out=out, quiet=True, stop_after=5), _test_set)
    for part in store.part_files(out):
        pq.write_table(pq.read_table(part).drop(["checkpoint_sha256"]), part)
    resumed = CliRunner().invoke(cli, _args(checkpoints, out))
    assert resumed.exit_code == 0, resumed.output
    frame = store.read_rows(out)  # part by part: pandas.read_parquet(out) takes the first part's columns
    assert len(frame) == IMAGES * len(SIGMAS) * 2 and frame["checkpoint_sha256"].isna().sum() == 5
    report = CliRunner().invoke(cli, ["report", str(out), "--out", str(tmp_path / "report"), "--no-figures", "-q"])
    assert report.exit_code == 0, report.output


def _baseline_mismatch(root: Path) -> Path:
    """Twins of width 4 and baselines of width 8 only."""
    return write_tiny_checkpoints(root, FORS, SIGMAS, width=4, baseline_width=8)


def test_baseline_of_another_width_than_its_twins_is_refused(tmp_path: Path) -> None:
    root = _baseline_mismatch(tmp_path / "ckpt")
    result = CliRunner().invoke(cli, _args(root, tmp_path / "run"))
    assert result.exit_code == 2
    line = _one_line(result)
    assert "m-f0-s0" in line and "m-f9-s0" in line and "width 8" in line and "width 4" in line
    assert not (tmp_path / "run" / store.MANIFEST).exists()


def test_baseline_of_another_arch_than_its_twins_is_refused(tmp_path: Path) -> None:
    root = write_tiny_checkpoints(tmp_path / "ckpt", FORS, SIGMAS)
    index = root / "digits" / "index.json"
    data = json.loads(index.read_text())
    for entry in data["entries"]:
        if entry["fors"] == 0:
            entry["arch"] = "wide_resnet34"
    index.write_text(json.dumps(data))
    result = CliRunner().invoke(cli, _args(root, tmp_path / "run"))
    assert result.exit_code == 2
    assert "wide_resnet34" in _one_line(result) and "resnet18" in _one_line(result)


def test_baseline_is_the_one_of_the_twins_width(tmp_path: Path) -> None:
    """Baselines of widths 4 and 8 in the index, twins of width 8: IS-RS certifies with the width-8 baseline."""
    root = write_tiny_checkpoints(tmp_path / "ckpt", FORS, SIGMAS, width=8)
    update_index(root, "digits", [tiny_checkpoint(root, 0, s, width=4, name=f"w4-f0-s{s:g}.safetensors")
                                  for s in SIGMAS])
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, _args(root, out))
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    for sigma in SIGMAS:
        rows = frame[(frame["method"] == "is") & (frame["sigma"] == sigma)]
        assert set(rows["checkpoint_sha256"]) == {_sha(root / "digits" / f"m-f0-s{sigma:g}.safetensors")}


def test_checkpoints_option_accepts_the_dataset_folder(checkpoints: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    for name, path in (("root", checkpoints), ("folder", checkpoints / "digits")):
        result = runner.invoke(cli, _args(path, tmp_path / name))
        assert result.exit_code == 0, result.output
    a, b = (pd.read_parquet(tmp_path / name).sort_values(["sigma", "method", "idx"]).reset_index(drop=True)
            for name in ("root", "folder"))
    pd.testing.assert_frame_equal(a.drop(columns=TIMING), b.drop(columns=TIMING))
    records = [json.loads((tmp_path / name / store.MANIFEST).read_text())["checkpoints"] for name in ("root", "folder")]
    assert records[0] == records[1]


def _test_set():
    return load_dataset("digits", "test")


# ------------------------------------------------------------------------------------------ what numbers mean


def test_digits_upsampling_norm_is_the_largest_singular_value_of_the_pipeline() -> None:
    """Oracle: the 8x8 -> 16x16 bilinear upsampling as a 256x64 matrix (interpolate on the basis), exact SVD."""
    side, big = DIGITS_SOURCE_SIZE, DIGITS_SIZE
    basis = torch.eye(side * side, dtype=torch.float64).reshape(-1, 1, side, side)
    up = torch.nn.functional.interpolate(basis, size=(big, big), mode="bilinear", align_corners=False)
    matrix = up.reshape(side * side, big * big).T
    assert torch.linalg.svdvals(matrix)[0].item() == pytest.approx(DIGITS_UPSAMPLING_NORM, abs=1e-12)
    # ... and it is the map lsrs.data applies to the scans (the clamp to [0, 1] then changes nothing).
    from sklearn.datasets import load_digits

    from lsrs.data import _digits_tensors

    scans = torch.as_tensor(load_digits().images, dtype=torch.float64).reshape(-1, side * side) / 16.0
    expected = (scans @ matrix.T).reshape(-1, 1, big, big)
    assert torch.allclose(_digits_tensors()[0].double(), expected, atol=1e-6)


def test_report_states_setup_and_digits_radii(checkpoints: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert CliRunner().invoke(cli, _args(checkpoints, out)).exit_code == 0
    report = CliRunner().invoke(cli, ["report", str(out), "--out", str(tmp_path / "report"), "--no-figures", "-q"])
    assert report.exit_code == 0, report.output
    text = (tmp_path / "report" / "index.md").read_text()
    assert "Cayley operator cache" in text and "`setup_s`" in text and "In this run:" in text
    assert f"operator norm {DIGITS_UPSAMPLING_NORM:g}" in text and f"r/{DIGITS_UPSAMPLING_NORM:g}" in text
    assert "Ray timings" not in text  # a single-process run


def _cluster(peaks: list[int]) -> dict:
    nodes = [{"node_id": str(i), "cpus": 2.0, "gpus": 0.0, "task_slots": 2, "tasks": 3, "peak_concurrent_tasks": p}
             for i, p in enumerate(peaks)]
    return {"cluster": {"nodes": nodes, "task": {"num_cpus": 1.0, "num_gpus": 0.0}}}


def test_ray_note_says_when_timings_are_not_comparable() -> None:
    assert "not comparable with a single-process run" in ray_note(_cluster([1, 2]))[0]
    assert "up to 2 tasks" in ray_note(_cluster([1, 2]))[0]
    assert "one task at a time per node" in ray_note(_cluster([1, 1]))[0]
    assert ray_note({}) == [] and "In this run" not in setup_note({})[0]
