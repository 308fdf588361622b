"""The base classifiers of Cohen et al. (2019), "Certified Adversarial Robustness via Randomized Smoothing",
rebuilt here so that their published checkpoints can be certified as IS-RS baselines.

Their model is ``Sequential(NormalizeLayer, net)``: the Gaussian noise is added to the raw image in [0, 1]
and the standardisation ``(x - mean) / std`` is the classifier's first layer, so certified radii are l2 radii
of the raw image (their ``datasets.py``). Here the same function is ``Split(Identity, Sequential(normalize,
net))`` with FoR 0: IS-RS adds the noise to the encoder's output, the raw image, before the normalisation.
The normalisation is rebuilt from the dataset's published mean (:func:`lsrs.datasets.get_dataset`) and standard
deviation (:data:`lsrs.cohen_published.PUBLISHED_STD`); it holds no tensors in the state dict, as in their code.

Architectures (their ``architectures.py``):

* ``cifar_resnet20`` / ``cifar_resnet110``: the CIFAR ResNet of He et al. (2016, Section 4.2) with basic
  blocks, depth 6n + 2: a 3x3 stem to 16 channels, three stages of n blocks at 16, 32, 64 channels (stride 2
  at the start of stages 2 and 3, projection shortcut 1x1 conv + BatchNorm), 8x8 average pool, linear head.
  The blocks are :class:`lsrs.models.BasicBlock` (conv-BN-ReLU-conv-BN + shortcut, ReLU: the same function
  as theirs), whose shortcut is named ``shortcut`` where theirs is ``downsample``: :func:`cohen_to_local`
  renames the keys.
* ``resnet50``: torchvision's ResNet-50 (ImageNet, 1000 classes, 224x224 input), keys unchanged.

Every model has ``fors = 0`` and no LS-RS twin (:data:`NO_TWIN`): it is certified by IS-RS only.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn

from lsrs.architectures import register_architecture
from lsrs.cohen_published import COHEN_DATASETS, PUBLISHED_STD
from lsrs.datasets import get_dataset
from lsrs.models import BasicBlock, Split

__all__ = [
    "COHEN_ARCHS",
    "COHEN_DATASETS",
    "NO_TWIN",
    "PUBLISHED_STD",
    "NormalizeLayer",
    "build_cohen_model",
    "cifar_resnet20",
    "cifar_resnet110",
    "cohen_to_local",
    "local_to_cohen",
    "net_prefix",
    "resnet50",
]

CIFAR_DEPTHS: dict[str, int] = {"cifar_resnet20": 20, "cifar_resnet110": 110}
COHEN_ARCHS: tuple[str, ...] = (*CIFAR_DEPTHS, "resnet50")
ARCH_DATASETS: dict[str, tuple[str, ...]] = {"cifar_resnet20": ("cifar10",), "cifar_resnet110": ("cifar10",),
                                             "resnet50": ("imagenet",)}
NO_TWIN = ("an imported Cohen et al. model is an IS-RS baseline only: it has no orthogonal LS-RS twin; "
           "certify it with --methods is")

_PREFIX = "classifier.net."


class NormalizeLayer(nn.Module):
    """``(x - mean) / std`` per channel, the first layer of the classifier (noise is added before it).

    The statistics are non-persistent buffers: they follow ``.to(device)`` but are not in the state dict,
    as in Cohen et al.'s layer, whose checkpoints hold no tensors for it.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"mean {mean} and std {std} must have one positive std per channel")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def _normalize(dataset: str) -> NormalizeLayer:
    return NormalizeLayer(tuple(get_dataset(dataset).mean), PUBLISHED_STD[dataset])


def _check_dataset(arch: str, dataset: str) -> None:
    if dataset not in ARCH_DATASETS[arch]:
        raise ValueError(f"{arch} is Cohen et al.'s {'/'.join(ARCH_DATASETS[arch])} model, not one for {dataset!r}")


def _stage(c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(*(BasicBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1) for i in range(blocks)))


def _cifar_net(depth: int, num_classes: int) -> nn.Sequential:
    """The CIFAR ResNet of depth 6n + 2 with Cohen et al.'s module names (``conv1``, ``bn1``, ``layer1..3``, ``fc``)."""
    if (depth - 2) % 6:
        raise ValueError(f"a basic-block CIFAR ResNet has depth 6n+2, got {depth}")
    n = (depth - 2) // 6
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 16, 3, padding=1, bias=False), bn1=nn.BatchNorm2d(16), relu=nn.ReLU(inplace=True),
        layer1=_stage(16, 16, n, 1), layer2=_stage(16, 32, n, 2), layer3=_stage(32, 64, n, 2),
        avgpool=nn.AvgPool2d(8), flatten=nn.Flatten(), fc=nn.Linear(64, num_classes),
    ))


def _split(arch: str, dataset: str, net: nn.Module, layers: int) -> Split:
    info = get_dataset(dataset)
    classifier = nn.Sequential(OrderedDict(normalize=_normalize(dataset), net=net))
    return Split(
        nn.Identity(), classifier, arch=arch, fors=0, fors_total=layers, encoder_lipschitz=1.0,
        latent_shape=(info.in_channels, info.in_size, info.in_size), config={"dataset": dataset},
    )


def _cifar_resnet(arch: str, dataset: str) -> Split:
    _check_dataset(arch, dataset)
    depth = CIFAR_DEPTHS[arch]
    return _split(arch, dataset, _cifar_net(depth, get_dataset(dataset).num_classes), depth)


def _register(arch: str, layers: int, pairs: tuple[tuple[type, str, str], ...]):
    """Register a peer's builder in :mod:`lsrs.architectures`: FoR 0 only (no LS-RS twin), its dataset's paper,
    the (block, conv, BatchNorm) pairs its blocks feed directly (conv -> BN, folded by the inference copy)."""
    return register_architecture(arch, fors=(0,), fors_total=layers, paper_fors=0,
                                 paper_dataset=ARCH_DATASETS[arch][0], batchnorm_pairs=pairs,
                                 no_twin_reason=f"{arch}: {NO_TWIN}")


_BASIC_PAIRS = ((BasicBlock, "conv1", "bn1"), (BasicBlock, "conv2", "bn2"))


@_register("cifar_resnet20", 20, _BASIC_PAIRS)
def cifar_resnet20(dataset: str = "cifar10") -> Split:
    """Cohen et al.'s ``cifar_resnet20`` (n = 3 blocks per stage) behind the CIFAR-10 normalisation."""
    return _cifar_resnet("cifar_resnet20", dataset)


@_register("cifar_resnet110", 110, _BASIC_PAIRS)
def cifar_resnet110(dataset: str = "cifar10") -> Split:
    """Cohen et al.'s ``cifar_resnet110`` (n = 18 blocks per stage) behind the CIFAR-10 normalisation."""
    return _cifar_resnet("cifar_resnet110", dataset)


@_register("resnet50", 50, ())  # torchvision stays unimported until built: its blocks are not folded
def resnet50(dataset: str = "imagenet") -> Split:
    """torchvision's ResNet-50 (random weights) behind the ImageNet normalisation, as Cohen et al. use it."""
    from torchvision.models import resnet50 as tv_resnet50

    _check_dataset("resnet50", dataset)
    return _split("resnet50", dataset, tv_resnet50(weights=None, num_classes=get_dataset(dataset).num_classes), 50)


_BUILDERS = {"cifar_resnet20": cifar_resnet20, "cifar_resnet110": cifar_resnet110, "resnet50": resnet50}


def build_cohen_model(arch: str, **config: Any) -> Split:
    """Build ``arch`` (one of :data:`COHEN_ARCHS`) from its :attr:`Split.config`."""
    if arch not in _BUILDERS:
        raise ValueError(f"unknown arch {arch!r}; Cohen et al.'s architectures: {', '.join(COHEN_ARCHS)}")
    return _BUILDERS[arch](**config)


# ---------------------------------------------------------------------------- key names
def net_prefix(keys: list[str]) -> str:
    """The prefix of Cohen et al.'s ``net`` in ``Sequential(NormalizeLayer, net)``: ``1.module.`` when every key
    has it (``net`` wrapped in ``DataParallel``, their ImageNet model), else ``1.``."""
    return "1.module." if keys and all(k.startswith("1.module.") for k in keys) else "1."


def cohen_to_local(keys: list[str], arch: str) -> tuple[dict[str, str], list[str], str]:
    """Map each key of a Cohen et al. state dict to this project's name for ``arch``.

    Returns ``(mapping original -> local, keys outside net's prefix, the prefix)``: a key outside ``1.`` (or
    ``1.module.``) cannot belong to ``net``, the normalisation holding no tensors.
    """
    prefix = net_prefix(keys)
    mapping: dict[str, str] = {}
    stray: list[str] = []
    for key in keys:
        if not key.startswith(prefix):
            stray.append(key)
            continue
        local = key[len(prefix):]
        if arch in CIFAR_DEPTHS:
            local = re.sub(r"(^|\.)downsample\.", r"\1shortcut.", local)
        mapping[key] = _PREFIX + local
    return mapping, stray, prefix


def local_to_cohen(key: str, arch: str, prefix: str = "1.") -> str:
    """The Cohen et al. name of this project's key ``key`` (for messages naming a missing tensor)."""
    local = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
    if arch in CIFAR_DEPTHS:
        local = re.sub(r"(^|\.)shortcut\.", r"\1downsample.", local)
    return prefix + local
