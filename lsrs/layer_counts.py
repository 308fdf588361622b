"""The weighted-layer counts (FoR denominators) of the built-in architectures, importable without torch.

The architecture records (:mod:`lsrs.models`) are registered from these, and the ``bench`` command line
names them in its help (the Lipschitz-margin certifier's FoR) without building, or importing, a network.
"""

from __future__ import annotations

RESNET18_LAYERS = 18
"""ResNet18 (CIFAR variant): stem + 16 block convs + linear; FoR 18/18 is its fully orthogonal Lipschitz twin."""
