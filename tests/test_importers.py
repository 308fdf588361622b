"""Importing Cohen et al.-format checkpoints (issue 25): logits, key mapping, refusal of code, bad input."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from cohen_format import peer_cifar_model, peer_imagenet_model, save_like_train_py

from bench.cli.main import cli
from lsrs.architectures import get_architecture
from lsrs.checkpoint import load_checkpoint, read_index, sha256_file
from lsrs.cohen_models import NO_TWIN, build_cohen_model, cohen_to_local


def _import(ckpt: Path, out: Path, *extra: str, dataset: str = "cifar10", sigma: str = "0.25"):
    args = ["import", "cohen-model", str(ckpt), "--dataset", dataset, "--sigma", sigma, "--out", str(out), "-q"]
    return CliRunner().invoke(cli, [*args, *extra])


@pytest.fixture(scope="module")
def peer20(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    model = peer_cifar_model(20)
    return model, save_like_train_py(model, "cifar_resnet20", tmp_path_factory.mktemp("peer") / "checkpoint.pth.tar")


def test_imported_logits_equal_the_original_modules(peer20, tmp_path: Path) -> None:
    original, path = peer20
    result = _import(path, tmp_path / "ckpt")
    assert result.exit_code == 0, result.output
    (entry,) = read_index(tmp_path / "ckpt", "cifar10")
    assert (entry["arch"], entry["fors"], entry["sigma"], entry["in_size"]) == ("cifar_resnet20", 0, 0.25, 32)
    assert entry["imported"]["source"] == "checkpoint.pth.tar"
    assert entry["imported"]["source_sha256"] == sha256_file(path)
    assert entry["imported"]["source_epoch"] == 90
    model, meta = load_checkpoint(entry["abspath"], expected_sha256=entry["sha256"])
    assert meta["arch"] == "cifar_resnet20" and meta["dataset"] == "cifar10" and meta["sigma"] == 0.25
    assert meta["imported"]["source_sha256"] == sha256_file(path)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = original(x), model(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert (got.argmax(1) == want.argmax(1)).all()
    # the normalisation is the classifier's first layer: noise is added before it, to the raw image
    assert model.fors == 0 and isinstance(model.encoder, torch.nn.Identity)
    assert type(model.classifier[0]).__name__ == "NormalizeLayer"
    assert not any(k.startswith("classifier.normalize") for k in model.state_dict())
    # the engine's fast path folds every BatchNorm of the imported network (same function up to rounding)
    from lsrs.inference import inference_copy

    fast = inference_copy(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    with torch.no_grad():
        torch.testing.assert_close(fast(x), want, rtol=0, atol=1e-4)


def test_legacy_serialisation_and_torch_before_0_4_1_load(tmp_path: Path) -> None:
    """Old releases: the pre-1.6 (non-zip) format, and no num_batches_tracked buffers (filled with 0)."""
    original = peer_cifar_model(20, seed=3)
    state = {k: v for k, v in original.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth.tar"
    torch.save({"epoch": 1, "arch": "cifar_resnet20", "state_dict": state}, path, _use_new_zipfile_serialization=False)
    assert _import(path, tmp_path / "ckpt").exit_code == 0
    (entry,) = read_index(tmp_path / "ckpt", "cifar10")
    batchnorms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in original.modules())
    assert entry["imported"]["num_batches_tracked_filled"] == batchnorms == 1 + 2 * 9 + 2
    model, _ = load_checkpoint(entry["abspath"])
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), rtol=0, atol=1e-5)


def test_cifar_resnet110_keys_map_one_to_one() -> None:
    """Depth 110 = 6 * 18 + 2: every key of their layout has one local name of the right shape, and back."""
    peer = peer_cifar_model(110).state_dict()
    local = build_cohen_model("cifar_resnet110", dataset="cifar10").state_dict()
    mapping, stray, prefix = cohen_to_local(list(peer), "cifar_resnet110")
    assert not stray and prefix == "1."
    assert sorted(mapping.values()) == sorted(local)
    assert all(tuple(peer[k].shape) == tuple(local[v].shape) for k, v in mapping.items())
    assert sum(k.endswith("conv2.weight") for k in local) == 54


def test_resnet50_dataparallel_keys_map_on_the_meta_device() -> None:
    """ImageNet: their net is a DataParallel, keys ``1.module.*``; torchvision's names otherwise."""
    peer = peer_imagenet_model("meta").state_dict()
    with torch.device("meta"):
        local = build_cohen_model("resnet50", dataset="imagenet").state_dict()
    assert all(k.startswith("1.module.") for k in peer)
    mapping, stray, prefix = cohen_to_local(list(peer), "resnet50")
    assert not stray and prefix == "1.module."
    assert sorted(mapping.values()) == sorted(local)
    assert all(tuple(peer[k].shape) == tuple(local[v].shape) for k, v in mapping.items())


def test_resnet50_import_logits(tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = peer_imagenet_model()
    path = save_like_train_py(original, "resnet50", tmp_path / "checkpoint.pth.tar")
    assert _import(path, tmp_path / "ckpt", dataset="imagenet", sigma="0.5").exit_code == 0
    (entry,) = read_index(tmp_path / "ckpt", "imagenet")
    model, _ = load_checkpoint(entry["abspath"])
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), rtol=0, atol=1e-4)


class _RunsCode:
    """Pickles as a call of ``exec`` that would write ``marker`` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_a_pickle_that_runs_code_is_refused_and_its_code_never_runs(peer20, tmp_path: Path) -> None:
    original, _ = peer20
    marker = tmp_path / "code-ran"
    path = save_like_train_py(original, "cifar_resnet20", tmp_path / "evil.pth.tar", payload=_RunsCode(marker))
    with open(tmp_path / "control.pkl", "wb") as f:  # the payload does run under a plain unpickler
        pickle.dump(_RunsCode(tmp_path / "control-ran"), f)
    with open(tmp_path / "control.pkl", "rb") as f:
        pickle.load(f)  # noqa: S301 - the control of this test
    assert (tmp_path / "control-ran").exists()
    result = _import(path, tmp_path / "ckpt")
    assert result.exit_code == 2
    assert "refused by torch.load(weights_only=True)" in result.output and "exec" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not marker.exists()
    assert not (tmp_path / "ckpt").exists()


def _state(**changes) -> dict:
    state = peer_cifar_model(20).state_dict()
    for k, v in changes.items():
        if v is None:
            state.pop(k)
        else:
            state[k] = v
    return state


@pytest.mark.parametrize(
    ("payload", "expect"),
    [
        (b"not a checkpoint at all", "refused by torch.load"),
        ({"arch": "cifar_resnet20"}, "expected a dict with 'arch' and 'state_dict'"),
        ({"arch": "vgg16", "state_dict": {}}, "unknown arch 'vgg16'"),
        ({"arch": "cifar_resnet110", "state_dict": "state20"}, "missing (1.layer1.3.conv1.weight"),
        ({"arch": "cifar_resnet20", "state_dict": _state(**{"1.fc.weight": None})}, "1 missing (1.fc.weight)"),
        ({"arch": "cifar_resnet20", "state_dict": _state(**{"1.extra.weight": torch.zeros(1)})},
         "1 unexpected (1.extra.weight)"),
        ({"arch": "cifar_resnet20", "state_dict": _state(**{"1.fc.weight": torch.zeros(100, 64)})},
         "1 of the wrong shape (1.fc.weight [100, 64] (expected [10, 64]))"),
        ({"arch": "cifar_resnet20", "state_dict": {"0.means": torch.zeros(3), **_state()}},
         "1 unexpected (0.means)"),
    ],
    ids=["malformed", "no-state-dict", "unknown-arch", "wrong-depth", "missing", "unexpected", "shape", "stray"],
)
def test_bad_checkpoints_exit_2_in_one_line_naming_the_problem(payload, expect: str, tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pth.tar"
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        if payload.get("state_dict") == "state20":
            payload = {**payload, "state_dict": _state()}
        torch.save(payload, path)
    result = _import(path, tmp_path / "ckpt")
    assert result.exit_code == 2, result.output
    assert expect in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--sigma", "abc"], "'abc' is not a number"),
        (["--sigma", "nan"], "finite"),
        (["--dataset", "digits"], "Invalid value for '--dataset'"),
        (["--dataset", "imagenet"], "not one for 'imagenet'"),
    ],
)
def test_bad_options_exit_2_and_write_nothing(peer20, args: list[str], expect: str, tmp_path: Path) -> None:
    _, path = peer20
    base = {"--dataset": "cifar10", "--sigma": "0.25"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    argv = ["import", "cohen-model", str(path), "--out", str(tmp_path / "ckpt")]
    for k, v in base.items():
        argv += [k, v]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2 and expect in result.output, result.output
    assert not (tmp_path / "ckpt").exists()


def test_a_broken_index_is_refused_before_anything_is_written(peer20, tmp_path: Path) -> None:
    _, path = peer20
    index = tmp_path / "ckpt" / "cifar10" / "index.json"
    index.parent.mkdir(parents=True)
    index.write_text("{not json")
    result = _import(path, tmp_path / "ckpt")
    assert result.exit_code == 2 and "index.json" in result.output
    assert sorted(p.name for p in index.parent.iterdir()) == ["index.json"]


def test_missing_checkpoint_exits_2(tmp_path: Path) -> None:
    result = _import(tmp_path / "nope.pth.tar", tmp_path / "ckpt")
    assert result.exit_code == 2 and "does not exist" in result.output


def _fake_cifar_test_batch(root: Path, images: int = 3) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(images, 3072), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": data, "labels": [int(v) for v in rng.integers(0, 10, images)]}, f, protocol=2)
    return root


def test_bench_run_certifies_the_imported_model_with_is_rs_only(peer20, tmp_path: Path) -> None:
    _, path = peer20
    assert _import(path, tmp_path / "ckpt").exit_code == 0
    (entry,) = read_index(tmp_path / "ckpt", "cifar10")
    data = _fake_cifar_test_batch(tmp_path / "data")
    base = ["run", "--dataset", "cifar10", "--sigmas", "0.25", "--n0", "8", "--n", "32", "--batch-size", "40",
            "--max-images", "2", "--checkpoints", str(tmp_path / "ckpt"), "--data-dir", str(data), "-q"]
    result = CliRunner().invoke(cli, [*base, "--methods", "is", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(tmp_path / "run")
    assert len(rows) == 2 and set(rows["method"]) == {"is"} and set(rows["arch"]) == {"cifar_resnet20"}
    assert set(rows["checkpoint_sha256"]) == {entry["sha256"]}
    assert (rows["n"] == 32).all() and (rows["counts_estimation"].map(sum) == 32).all()
    manifest = json.loads((tmp_path / "run" / "_manifest.json").read_text())
    assert manifest["checkpoints"]["is-f0-s0.25"]["sha256"] == entry["sha256"]

    twin = CliRunner().invoke(cli, [*base, "--methods", "is,ls", "--fors", "9", "--out", str(tmp_path / "run2")])
    reason = get_architecture("cifar_resnet20").no_twin_reason  # the record's words: Cohen et al.'s text
    assert NO_TWIN in reason and twin.exit_code == 2 and reason in twin.output
    assert len(twin.output.strip().splitlines()) == 1
