"""`bench run` end to end on tiny untrained models and the embedded digits data (issue 6)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from tiny_checkpoints import write_tiny_checkpoints

from bench import store
from bench.cli.main import cli
from bench.devices import device_name
from bench.run.runner import RunConfig, RunOptions, run_grid
from lsrs.data import load_dataset
from lsrs.devices import resolve_device

FORS = (1, 9)
SIGMAS = (0.0, 0.25, 0.5)
IMAGES = 4
TIMING = ["encode_s", "sample_s", "total_s"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """Untrained width-4 digits models: the baseline and FoR twins at every σ, with an index."""
    return write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"), FORS, SIGMAS)


def _args(checkpoints: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--dataset", "digits", "--fors", ",".join(map(str, FORS)), "--sigmas", "0,0.25,0.5",
            "--n0", "16", "--n", "96", "--max-images", str(IMAGES), "--skip", "7", "--checkpoints", str(checkpoints),
            "--out", str(out), "-q", *extra]


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["sigma", "method", "fors", "idx"]).reset_index(drop=True)


def test_run_writes_complete_grid_schema_and_manifest(checkpoints: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, _args(checkpoints, out))
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert set(store.ROW_SCHEMA.names) <= set(frame.columns)
    assert len(frame) == IMAGES * len(SIGMAS) * (1 + len(FORS))
    assert not frame.duplicated(["method", "fors", "sigma", "idx"]).any()
    grid = set(zip(frame["method"], frame["fors"], frame["sigma"], strict=True))
    assert grid == {("is", 0, s) for s in SIGMAS} | {("ls", k, s) for k in FORS for s in SIGMAS}
    assert sorted(frame["idx"].unique()) == [0, 7, 14, 21]
    noisy = frame[frame["sigma"] > 0]
    assert (noisy["n0"] == 16).all() and (noisy["n"] == 96).all()
    assert (noisy["counts_estimation"].map(sum) == 96).all()
    assert ((noisy["prediction"] == -1) | (noisy["correct"] == (noisy["prediction"] == noisy["label"]))).all()
    # IS-RS: the identity encoder, L = 1 and no rounding term: radius = latent radius exactly.
    is_noisy = noisy[noisy["method"] == "is"]
    assert (is_noisy["radius"] == is_noisy["radius_latent"]).all() and (is_noisy["lipschitz"] == 1).all()
    # LS-RS: radius = (latent radius - 2 delta) / L with L the as-executed bound (>= the declared 1).
    ls_noisy = noisy[(noisy["method"] == "ls") & (noisy["radius_latent"] > 0)]
    assert (ls_noisy["lipschitz"] >= ls_noisy["lipschitz_declared"]).all() and (ls_noisy["lipschitz"] > 1).all()
    assert (ls_noisy["latent_error"] > 0).all()
    expected = (ls_noisy["radius_latent"] - 2 * ls_noisy["latent_error"]) / ls_noisy["lipschitz"]
    assert np.allclose(ls_noisy["radius"], expected, rtol=1e-12, atol=0)
    assert (ls_noisy["radius"] < ls_noisy["radius_latent"]).all()
    is_rows = noisy[noisy["method"] == "is"]
    assert (is_rows["encode_s"] < is_rows["sample_s"]).all()
    assert (noisy["total_s"] >= noisy["encode_s"] + noisy["sample_s"]).all()
    clean = frame[frame["sigma"] == 0]
    assert (clean["radius"] == 0).all() and (clean["n"] == 0).all()
    manifest = json.loads((out / store.MANIFEST).read_text())
    assert manifest["config_hash"] == frame["run"].iloc[0]
    assert manifest["config"]["n"] == 96 and manifest["config"]["fors"] == list(FORS)
    assert manifest["finished"] and manifest["started"] and manifest["device"] == device_name(resolve_device("auto"))
    assert {"python", "torch", "lsrs"} <= set(manifest["versions"])
    index = json.loads((checkpoints / "digits" / "index.json").read_text())["entries"]
    shas = {e["sha256"] for e in index}
    assert len(manifest["checkpoints"]) == len(SIGMAS) * (1 + len(FORS))
    assert all(c["sha256"] in shas for c in manifest["checkpoints"].values())
    assert set(manifest["models"]) == {"0", "1", "9"}
    assert manifest["models"]["9"]["flops_classifier"] < manifest["models"]["9"]["flops_total"]
    assert all(v >= 0 for v in manifest["warmup_s"].values())
    executed = manifest["lipschitz_executed"]
    assert {k: v for k, v in executed.items() if v > 1} and all(v >= 1 for v in executed.values())


def test_interrupt_then_resume_equals_uninterrupted(checkpoints: Path, tmp_path: Path) -> None:
    def config() -> RunConfig:
        return RunConfig(dataset="digits", fors=FORS, sigmas=SIGMAS, n0=16, n=96, skip=7, max_images=IMAGES,
                         checkpoints=str(checkpoints))

    def test_set():
        return load_dataset("digits", "test")

    whole = tmp_path / "whole"
    run_grid(config(), RunOptions(out=whole, quiet=True), test_set)
    broken = tmp_path / "broken"
    run_grid(config(), RunOptions(out=broken, quiet=True, stop_after=7), test_set)  # simulated crash
    assert len(pd.read_parquet(broken)) == 7
    assert json.loads((broken / store.MANIFEST).read_text())["finished"] is None
    run_grid(config(), RunOptions(out=broken, quiet=True), test_set)  # resume
    a, b = _sorted(pd.read_parquet(whole)), _sorted(pd.read_parquet(broken))
    assert len(b) == len(a) and not b.duplicated(["method", "fors", "sigma", "idx"]).any()
    pd.testing.assert_frame_equal(a.drop(columns=TIMING), b.drop(columns=TIMING))


def test_same_seed_different_batch_size_gives_identical_counts(checkpoints: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    for bs in ("7", "64"):
        result = runner.invoke(cli, _args(checkpoints, tmp_path / bs, "--batch-size", bs, "--sigmas", "0.25"))
        assert result.exit_code == 0, result.output
    a, b = (_sorted(pd.read_parquet(tmp_path / bs)) for bs in ("7", "64"))
    assert (a["batch_size"] == 7).all() and (b["batch_size"] == 64).all()
    for col in ("counts_selection", "counts_estimation"):
        assert a[col].map(list).tolist() == b[col].map(list).tolist()
    assert a["radius"].tolist() == b["radius"].tolist()


def test_sampler_certificate_and_decisions_are_recorded(checkpoints: Path, tmp_path: Path) -> None:
    out = tmp_path / "seq"
    result = CliRunner().invoke(cli, _args(checkpoints, out, "--sigmas", "0.5", "--sampler", "curtail",
                                           "--certificate", "multiclass", "--decide-radii", "0,0.1",
                                           "--max-n", "256"))
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert set(frame["sampler"]) == {"curtail"} and set(frame["certificate"]) == {"multiclass"}
    assert (frame["samples_used"] <= frame["n0"] + frame["n"]).all()
    decisions = pd.read_parquet(out / store.DECISIONS_DIR)
    assert len(decisions) == len(frame) * 2
    assert set(decisions["radius"]) == {0.0, 0.1}
    assert (decisions["samples_used"] <= 16 + 256).all()


def test_different_config_in_same_out_is_refused_unless_fresh(checkpoints: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    runner = CliRunner()
    assert runner.invoke(cli, _args(checkpoints, out, "--sigmas", "0.25")).exit_code == 0
    refused = runner.invoke(cli, _args(checkpoints, out, "--sigmas", "0.5"))
    assert refused.exit_code == 2 and "different configuration" in refused.output
    fresh = runner.invoke(cli, _args(checkpoints, out, "--sigmas", "0.5", "--fresh"))
    assert fresh.exit_code == 0, fresh.output
    assert set(pd.read_parquet(out)["sigma"]) == {0.5}


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--dataset", "mnist"], "mnist"),
        (["--fors", "2"], "FoR [2] invalid"),
        (["--fors", "19"], "FoR [19] invalid"),
        (["--fors", "5"], "FoR 5 is not in the checkpoint index"),
        (["--sigmas", "-0.5"], "sigma must be"),
        (["--sigmas", "1.0"], "trained at σ=1"),
        (["--n0", "0"], "--n0"),
        (["--n", "0"], "--n"),
        (["--alpha", "0"], "--alpha"),
        (["--alpha", "1.5"], "--alpha"),
        (["--batch-size", "0"], "batch size must be >= 1"),
        (["--device", "cuda"], "no CUDA device"),
        (["--methods", "xs"], "methods are"),
        (["--decide-radii", "-1"], "radii must be"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(checkpoints: Path, tmp_path: Path, extra, needle) -> None:
    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    result = CliRunner().invoke(cli, _args(checkpoints, tmp_path / "run", *extra))
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output


def test_unwritable_out_exits_2(checkpoints: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(cli, _args(checkpoints, blocker / "run"))
    assert result.exit_code == 2 and "cannot write to --out" in result.output


def test_missing_index_exits_2_and_says_how_to_train(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, _args(tmp_path / "none", tmp_path / "run"))
    assert result.exit_code == 2 and "bench train" in result.output


def test_allow_sigma_mismatch_uses_nearest_trained_sigma(checkpoints: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, _args(checkpoints, out, "--sigmas", "0.6", "--allow-sigma-mismatch"))
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / store.MANIFEST).read_text())
    assert {c["sigma_train"] for c in manifest["checkpoints"].values()} == {0.5}


def test_compile_hash_is_unchanged_when_off() -> None:
    """Runs made before --compile existed keep their identity; a compiled run is a different run."""
    base = RunConfig(dataset="digits", fors=FORS, sigmas=SIGMAS)
    assert base.compile == "off"
    assert RunConfig(dataset="digits", fors=FORS, sigmas=SIGMAS, compile="default").config_hash() != base.config_hash()


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_classifier_certifies_like_the_eager_one(checkpoints: Path, tmp_path: Path) -> None:
    """--compile default (inductor on CPU): the same certificates as the eager run, the mode in the manifest."""
    runner = CliRunner()
    args = ("--fors", "9", "--sigmas", "0.5", "--max-images", "2")
    eager = runner.invoke(cli, _args(checkpoints, tmp_path / "eager", *args))
    assert eager.exit_code == 0, eager.output
    compiled = runner.invoke(cli, _args(checkpoints, tmp_path / "compiled", *args, "--compile", "default"))
    assert compiled.exit_code == 0, compiled.output
    a, b = (_sorted(pd.read_parquet(tmp_path / name)) for name in ("eager", "compiled"))
    assert len(a) == len(b) == 2 * 2
    # Same function up to rounding: every image keeps its prediction, and counts move by a sample at most.
    assert a["prediction"].tolist() == b["prediction"].tolist()
    for x, y in zip(a["counts_estimation"], b["counts_estimation"], strict=True):
        assert sum(abs(int(p) - int(q)) for p, q in zip(x, y, strict=True)) <= 2
    manifest = json.loads((tmp_path / "compiled" / store.MANIFEST).read_text())
    assert manifest["config"]["compile"] == "default"
    assert manifest["config_hash"] != json.loads((tmp_path / "eager" / store.MANIFEST).read_text())["config_hash"]
