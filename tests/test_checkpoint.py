"""Checkpoints: bit-exact round trip, every validation failure named clearly, pickles never executed, index."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from lsrs import checkpoint as ckpt
from lsrs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lsrs.models import build_model

CONFIG = {"num_classes": 10, "width": 8, "in_size": 16, "in_channels": 1, "mean": [0.3054]}


def _model(fors: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model("resnet18", fors=fors, **CONFIG)
    with torch.no_grad():  # make every tensor (BatchNorm statistics included) non-trivial
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.01)
    return model


META = {"dataset": "digits", "sigma": 0.5, "noise": "latent", "epochs": 3, "clean_acc": 0.9, "noisy_acc": 0.8}


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module, str]:
    model = _model(5)
    path = tmp_path / "m.safetensors"
    digest = save_checkpoint(path, model, META)
    return path, model, digest


def test_round_trip_is_bit_exact(saved) -> None:
    path, model, digest = saved
    assert digest == ckpt.sha256_file(path)
    loaded, meta = load_checkpoint(path)
    assert not loaded.training
    original = model.state_dict()
    restored = loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
        assert original[key].dtype == restored[key].dtype
    for key, value in META.items():
        assert meta[key] == value
    assert meta["arch"] == "resnet18" and meta["fors"] == 5 and meta["fors_total"] == 18
    assert meta["width"] == 8 and meta["in_size"] == 16 and meta["num_classes"] == 10
    assert meta["encoder_lipschitz"] == model.encoder_lipschitz
    assert meta["sha256"] == digest and meta["versions"]["torch"] == torch.__version__
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["sha256"] == digest and side["weights"] == "m.safetensors"
    x = torch.rand(4, 1, 16, 16)
    model.eval()
    assert torch.equal(model(x), loaded(x))
    # loading through the JSON sidecar and with the index's expected hash gives the same model
    again, _ = load_checkpoint(path.with_suffix(".json"), expected_sha256=digest, expected={"fors": 5, "sigma": 0.5})
    assert torch.equal(again(x), loaded(x))


def test_metadata_contradicting_the_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="fors=9 contradicts"):
        save_checkpoint(tmp_path / "m.safetensors", _model(5), {**META, "fors": 9})


def test_tampered_weights_fail_the_hash(saved) -> None:
    path, _, digest = saved
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256 mismatch") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    # without the sidecar, the hash recorded in the index still catches it
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(path, expected_sha256=digest)


def test_wrong_fors_is_caught(tmp_path: Path, saved) -> None:
    path, _, _ = saved
    # weights of a FoR-5 model under metadata claiming FoR 9
    header = ckpt.read_meta(path)
    header.pop("sha256", None)
    header["fors"] = 9
    header["config"] = {**header["config"], "fors": 9}
    bad = tmp_path / "bad.safetensors"
    ckpt.save_tensors_atomic(ckpt.state_tensors(_model(5)), bad, {ckpt.META_KEY: json.dumps(header)})
    with pytest.raises(CheckpointError, match="weights do not match resnet18 fors=9") as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value) and "missing" in str(err.value)
    # a sidecar disagreeing with the header
    side = json.loads(path.with_suffix(".json").read_text())
    side["fors"] = 13
    path.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(CheckpointError, match="fors=13 disagrees"):
        load_checkpoint(path)
    # the caller's expectation (e.g. the index says FoR 9)
    side["fors"] = 5
    path.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(CheckpointError, match="expected fors=9"):
        load_checkpoint(path, expected={"fors": 9})


def test_truncated_file_is_a_clear_error(saved) -> None:
    path, _, _ = saved
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="not a valid safetensors file") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    path.write_bytes(raw[:5])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(path)


def test_bad_json_is_a_clear_error(tmp_path: Path, saved) -> None:
    path, model, _ = saved
    side = path.with_suffix(".json")
    side.write_text('{"arch": "resnet18", "fors": ')
    with pytest.raises(CheckpointError, match="metadata is not valid JSON") as err:
        load_checkpoint(path)
    assert str(side) in str(err.value)
    bad = tmp_path / "header.safetensors"
    ckpt.save_tensors_atomic(ckpt.state_tensors(model), bad, {ckpt.META_KEY: "{oops"})
    with pytest.raises(CheckpointError, match="header is not valid JSON"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.safetensors"
    ckpt.save_tensors_atomic(ckpt.state_tensors(model), foreign, {})
    with pytest.raises(CheckpointError, match="not an lsrs checkpoint"):
        load_checkpoint(foreign)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found") as err:
        load_checkpoint(tmp_path / "absent.safetensors")
    assert "absent.safetensors" in str(err.value)


class _Payload:
    """Unpickling this calls Path.touch(marker): a code payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_never_executed(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"state_dict": {"w": torch.zeros(1)}, "meta": {"arch": "resnet18"}, "x": _Payload(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(CheckpointError, match="refusing to load a pickle"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(path, allow_pickle=True)
    assert not marker.exists()


def test_plain_pickle_loads_only_when_allowed(tmp_path: Path) -> None:
    model = _model(1)
    meta = {"arch": "resnet18", "fors": 1, "config": dict(model.config)}
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": model.state_dict(), "meta": meta}, path)
    with pytest.raises(CheckpointError, match="--allow-pickle"):
        load_checkpoint(path)
    loaded, got = load_checkpoint(path, allow_pickle=True)
    assert got["fors"] == 1 and got["sha256"] == ckpt.sha256_file(path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])


def _entry(fors: int, sigma: float, **extra) -> dict:
    base = {
        "arch": "resnet18", "fors": fors, "sigma": sigma, "path": f"m{fors}-{sigma}.safetensors",
        "sha256": "0" * 64, "width": 8, "in_size": 16, "num_classes": 10, "clean_acc": 0.9, "noisy_acc": 0.8,
        "saved_at": "2026-01-01T00:00:00+00:00",
    }
    return {**base, **extra}


def test_index_update_read_and_find(tmp_path: Path) -> None:
    ckpt.update_index(tmp_path, "digits", [_entry(0, 0.25), _entry(5, 0.25), _entry(5, 0.5)])
    ckpt.update_index(tmp_path, "digits", [_entry(5, 0.25, clean_acc=0.95)])  # replaces, not duplicates
    entries = ckpt.read_index(tmp_path, "digits")
    assert [(e["fors"], e["sigma"]) for e in entries] == [(0, 0.25), (5, 0.25), (5, 0.5)]
    found = ckpt.find_checkpoint(entries, 5, 0.25)
    assert found is not None and found["clean_acc"] == 0.95
    assert found["abspath"] == str(tmp_path / "digits" / "m5-0.25.safetensors")
    assert ckpt.find_checkpoint(entries, 9, 0.25) is None
    assert ckpt.find_checkpoint(entries, 5, 1.0) is None
    # two widths of the same pair: the newest wins unless a width is asked for
    ckpt.update_index(tmp_path, "digits", [_entry(5, 0.25, width=16, saved_at="2026-02-01T00:00:00+00:00")])
    entries = ckpt.read_index(tmp_path / "digits", "digits")
    assert ckpt.find_checkpoint(entries, 5, 0.25)["width"] == 16
    assert ckpt.find_checkpoint(entries, 5, 0.25, width=8)["width"] == 8


def test_index_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint index .*bench train --dataset digits"):
        ckpt.read_index(tmp_path, "digits")
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "index.json").write_text("[1, 2")
    with pytest.raises(CheckpointError, match="index is not valid JSON"):
        ckpt.read_index(tmp_path, "digits")
    (tmp_path / "digits" / "index.json").write_text(json.dumps({"entries": [{"arch": "resnet18"}]}))
    with pytest.raises(CheckpointError, match="entry 0 lacks fors"):
        ckpt.read_index(tmp_path, "digits")


def test_checkpoint_written_before_the_registry_loads(tmp_path: Path) -> None:
    """Checkpoints written before ``arch_source`` existed rebuild their built-in architecture by name."""
    model = _model(9)
    path = tmp_path / "old.safetensors"
    save_checkpoint(path, model, META)
    meta = ckpt.read_meta(path)
    assert meta["arch_source"] == "lsrs.models:resnet18"
    old = {k: v for k, v in meta.items() if k not in ("arch_source", "sha256")}
    ckpt.save_tensors_atomic(ckpt.state_tensors(model), path, {"format": ckpt.FORMAT, ckpt.META_KEY: json.dumps(old)})
    ckpt.sidecar_path(path).unlink()
    loaded, loaded_meta = load_checkpoint(path)
    assert "arch_source" not in loaded_meta and loaded.arch == "resnet18" and loaded.fors == 9
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model.eval()(x))
