"""What Cohen et al. (2019) published about their models' inputs, importable without torch (``bench import
cohen-model --help`` lists :data:`COHEN_DATASETS` without it); the models are :mod:`lsrs.cohen_models`."""

from __future__ import annotations

PUBLISHED_STD: dict[str, tuple[float, ...]] = {
    "cifar10": (0.2023, 0.1994, 0.2010),
    "imagenet": (0.229, 0.224, 0.225),
}
"""Per-channel standard deviations by which Cohen et al.'s ``NormalizeLayer`` divides (their ``datasets.py``)."""

COHEN_DATASETS: tuple[str, ...] = tuple(PUBLISHED_STD)
