"""Datasets: the digits preset, a miniature CIFAR-10 in the real on-disk format, and clear missing-data errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lsrs import data
from lsrs.data import DATASETS, DatasetMissingError, load_dataset


def _write_cifar_batch(path: Path, images: np.ndarray, labels: list[int]) -> None:
    """A batch exactly as in cifar-10-python.tar.gz: a pickled dict with uint8 rows of 3072 (R, G, B planes)."""
    entry = {
        "batch_label": f"mini {path.name}",
        "labels": labels,
        "data": images.reshape(len(labels), -1),
        "filenames": [f"img_{i}.png" for i in range(len(labels))],
    }
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


@pytest.fixture()
def mini_cifar(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, list[int]]]]:
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    written = {}
    for name, n in [*((f"data_batch_{i}", 4) for i in range(1, 6)), ("test_batch", 6)]:
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        images[0, :, 0, 0] = (0, 255, 128)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        _write_cifar_batch(folder / name, images, labels)
        written[name] = (images, labels)
    return tmp_path, written


def test_mini_cifar10_loads_through_the_real_loader(mini_cifar) -> None:
    root, written = mini_cifar
    test = load_dataset("cifar10", "test", data_dir=root)
    train = load_dataset("cifar10", "train", data_dir=root, augment=False)
    assert len(test) == 6 and len(train) == 20
    x, y = test[0]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    images, labels = written["test_batch"]
    assert y == labels[0]
    assert torch.allclose(x, torch.from_numpy(images[0]).float() / 255.0)
    assert x[:, 0, 0].tolist() == pytest.approx([0.0, 1.0, 128 / 255])
    # training batches are concatenated in order data_batch_1..5
    assert [train[i][1] for i in range(20)] == sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert train[8][0].equal(torch.from_numpy(written["data_batch_3"][0][0]).float() / 255.0)


def test_cifar10_via_environment_and_augmentation_keeps_range(mini_cifar, monkeypatch) -> None:
    root, _ = mini_cifar
    monkeypatch.setenv("LSRS_DATA", str(root))
    train = load_dataset("cifar10", "train")  # augmented by default
    x, _ = train.batch(torch.arange(20), generator=torch.Generator().manual_seed(1))
    assert x.shape == (20, 3, 32, 32) and float(x.min()) >= 0 and float(x.max()) <= 1
    raw, _ = load_dataset("cifar10", "train", augment=False).batch(torch.arange(20))
    assert not torch.equal(x, raw)  # crops/flips happened
    # a crop of a padded image: every augmented value is 0 or one of the original pixel values
    assert set(x.unique().tolist()) <= set(raw.unique().tolist()) | {0.0}


def test_missing_cifar10_says_where_it_looked_and_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError) as err:
        load_dataset("cifar10", "test", data_dir=tmp_path / "nowhere")
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg
    assert "test_batch" in msg and "--download" in msg and "--data-dir" in msg


def test_cifar_batch_carrying_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": Payload(), "labels": [0]}, f)
    with pytest.raises(DatasetMissingError, match="refusing to load global"):
        load_dataset("cifar10", "test", data_dir=tmp_path)
    assert not marker.exists()


def test_corrupt_cifar_batch_is_a_clear_error(mini_cifar) -> None:
    root, _ = mini_cifar
    _write_cifar_batch(root / "cifar-10-batches-py" / "test_batch", np.zeros((2, 3, 16, 16), np.uint8), [0, 1])
    with pytest.raises(DatasetMissingError, match="expected uint8"):
        load_dataset("cifar10", "test", data_dir=root)


def test_digits_preset_split_shapes_and_mean() -> None:
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    info = DATASETS["digits"]
    assert (len(train), len(test)) == (info.train_size, info.test_size) == (1437, 360)
    x, y = test[0]
    assert x.shape == (info.in_channels, info.in_size, info.in_size) == (1, 16, 16)
    assert isinstance(y, int) and 0 <= y < 10
    assert float(train.images.min()) >= 0 and float(train.images.max()) <= 1
    # the stratified split: every class 35-37 times in the test set, the split is disjoint and fixed
    counts = np.bincount(test.labels.numpy(), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    assert info.mean[0] == pytest.approx(float(train.images.mean()), abs=1e-4)
    again = load_dataset("digits", "test")
    assert torch.equal(again.images, test.images)
    # train and test share no image (the scans are distinct)
    flat_train = {tuple(r) for r in train.images.flatten(1).numpy().round(5).tolist()}
    assert not any(tuple(r) in flat_train for r in test.images.flatten(1).numpy().round(5).tolist())


def test_digits_are_upsampled_real_scans() -> None:
    from sklearn.datasets import load_digits

    raw = torch.as_tensor(load_digits().images, dtype=torch.float32) / 16
    x, _, _, test_idx = data._digits_tensors()
    # 2x average pooling of the bilinear upsampling returns the 8x8 scan's structure
    pooled = torch.nn.functional.avg_pool2d(x[:50], 2)[:, 0]
    assert torch.corrcoef(torch.stack([pooled.flatten(), raw[:50].flatten()]))[0, 1] > 0.97


def _write_image_folder(root: Path, classes: int, per_class: int) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(d / f"{i}.JPEG")


def test_imagenet_image_folder_and_one_image_per_class(tmp_path: Path) -> None:
    _write_image_folder(tmp_path, classes=3, per_class=2)
    val = load_dataset("imagenet", "test", data_dir=tmp_path)
    x, y = val[0]
    assert x.shape == (3, 224, 224) and 0 <= float(x.min()) and float(x.max()) <= 1 and y == 0
    picks = data.per_class_indices(data.dataset_labels(val), 1)
    assert [val.targets[i] for i in picks] == [0, 1, 2]
    seeded = data.per_class_indices(data.dataset_labels(val), 1, seed=3)
    assert sorted(val.targets[i] for i in seeded) == [0, 1, 2]


def test_missing_imagenet_and_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match="ImageFolder layout"):
        load_dataset("imagenet", "train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("svhn", "train")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", "val")
