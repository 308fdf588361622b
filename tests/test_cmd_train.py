"""``bench train`` and the grid driver: paired grid with an index, reuse, resume, and exit-2 usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bench.cli.main import cli
from bench.train.grid import GridConfigError, train_grid
from lsrs import checkpoint as ckpt


def _invoke(*args: str):
    return CliRunner().invoke(cli, ["train", *args], catch_exceptions=False)


def test_bench_train_writes_the_paired_grid_and_index(tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    args = ("--dataset", "digits", "--fors", "0,1", "--sigmas", "0,0.5", "--epochs", "1", "--width", "8",
            "--out", str(out), "--json", "-q")
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert [e["status"] for e in printed] == ["trained"] * 4
    entries = ckpt.read_index(out, "digits")
    assert sorted((e["fors"], e["sigma"]) for e in entries) == [(0, 0.0), (0, 0.5), (1, 0.0), (1, 0.5)]
    for e in entries:
        assert {"arch", "fors", "sigma", "path", "sha256", "width", "in_size", "num_classes", "clean_acc",
                "noisy_acc"} <= e.keys()
        assert e["noise"] == ("input" if e["fors"] == 0 else "latent")
        assert (e["width"], e["in_size"], e["num_classes"], e["epochs"]) == (8, 16, 10, 1)
        assert 0 <= e["noisy_acc"] <= 1 and 0 <= e["clean_acc"] <= 1
        if e["sigma"] == 0:
            assert e["noisy_acc"] == e["clean_acc"]
        model, meta = ckpt.load_checkpoint(Path(e["abspath"]), expected_sha256=e["sha256"])
        assert model.fors == e["fors"] and meta["sigma"] == e["sigma"] and meta["dataset"] == "digits"
        assert meta["preprocessing"]["mean"] == [0.3054] and len(meta["history"]) == 1
        assert meta["encoder_lipschitz"] == 1.0
    assert not list((out / "digits").glob("*.state.safetensors"))  # finished runs leave no state behind
    pair = ckpt.find_checkpoint(entries, 1, 0.5)
    assert pair is not None and pair["path"] == "resnet18-w8-fors1-sigma0.5.safetensors"

    # the same command again reuses every checkpoint (same files, same hashes)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "digits").glob("*.safetensors")}
    again = _invoke(*args)
    assert again.exit_code == 0
    assert [e["status"] for e in json.loads(again.stdout)] == ["reused"] * 4
    assert before == {p.name: p.stat().st_mtime_ns for p in (out / "digits").glob("*.safetensors")}


class _Interrupt(KeyboardInterrupt):
    pass


def test_interrupted_grid_resumes_the_half_trained_model(tmp_path: Path) -> None:
    def crash(model: dict, epoch: int) -> None:
        if model["fors"] == 1 and epoch == 0:
            raise _Interrupt

    kw = dict(epochs=2, lr=0.05, batch_size=128, device="cpu", seed=0, width=8, quiet=True)
    with pytest.raises(_Interrupt):
        train_grid("digits", [0, 1], [0.25], tmp_path, on_epoch=crash, **kw)
    folder = tmp_path / "digits"
    assert (folder / "resnet18-w8-fors0-sigma0.25.safetensors").is_file()
    assert (folder / "resnet18-w8-fors1-sigma0.25.state.safetensors").is_file()
    assert len(ckpt.read_index(tmp_path, "digits")) == 1  # the finished model is already indexed

    epochs_run: list[tuple[int, int]] = []
    entries = train_grid("digits", [0, 1], [0.25], tmp_path,
                         on_epoch=lambda m, e: epochs_run.append((m["fors"], e)), **kw)
    assert [e["status"] for e in entries] == ["reused", "resumed"]
    assert epochs_run == [(1, 1)]  # only the missing epoch of the FoR-1 model was trained
    _, meta = ckpt.load_checkpoint(folder / "resnet18-w8-fors1-sigma0.25.safetensors")
    assert [h["epoch"] for h in meta["history"]] == [0, 1]
    assert len(ckpt.read_index(tmp_path, "digits")) == 2

    # a different recipe does not reuse the finished checkpoints
    changed = train_grid("digits", [0], [0.25], tmp_path, **{**kw, "epochs": 1})
    assert changed[0]["status"] == "trained" and changed[0]["epochs"] == 1


def test_grid_validation_errors() -> None:
    with pytest.raises(GridConfigError, match="FoR 2 not available for resnet18"):
        train_grid("digits", [0, 2], [0.25], Path("unused"), quiet=True)
    with pytest.raises(GridConfigError, match="unknown dataset"):
        train_grid("svhn", [0], [0.25], Path("unused"), quiet=True)
    with pytest.raises(GridConfigError, match="unknown architecture"):
        train_grid("digits", [0], [0.25], Path("unused"), arch="vgg", quiet=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--fors", "0,2"), "FoR 2 not available for resnet18; choose from 0,1,3,5"),
        (("--sigmas", "0.25,-1"), "sigma must be a finite number >= 0"),
        (("--fors", "1,x"), "'x' is not a valid fors"),
        (("--epochs", "0"), "--epochs"),
        (("--dataset", "cifar10", "--data-dir", "{tmp}/none"), "CIFAR-10 not found: looked in"),
        (("--device", "cuda:7"), "cuda"),
        (("--device", "tpu"), "invalid device"),
        (("--width", "7"), "width must be an even integer"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    if args[0] == "--device" and args[1].startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    args = tuple(a.replace("{tmp}", str(tmp_path)) for a in args)
    result = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "o"), "-q", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    error_lines = [ln for ln in result.output.splitlines() if ln.startswith("Error")]
    assert len(error_lines) == 1
