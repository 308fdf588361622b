"""Defaults of the paired grid's training (:mod:`bench.train.grid`) that ``bench train --help`` shows;
importable without torch."""

from __future__ import annotations

MARGIN_EPS = 0.5
"""Default target l2 radius of the Lipschitz twin's margin loss (the offset is sqrt(2) * MARGIN_EPS)."""
MARGIN_TEMPERATURE = 0.25
"""Default temperature of the margin loss (Prach & Lampert 2022 offset cross-entropy)."""

PLAIN_DISTILL = 0.0
"""A twin's distillation weight in the paper's plain recipe (none)."""
PLAIN_DISTILL_TEMPERATURE = 1.0
"""A twin's distillation temperature in the paper's plain recipe."""

MEASURED_TWIN_OPTIONS: dict[tuple[str, str], dict[str, object]] = {
    ("resnet18", "digits"): {"warm_start": True, "distill": 0.5, "distill_temperature": 4.0},
    ("resnet18", "mnist"): {"warm_start": True, "distill": 0.5, "distill_temperature": 2.0},
}
"""The twin recipe options of ``bench train`` per (architecture, dataset) where they were measured to help
(docs/ablation.md; on digits T = 4 beat T = 2 at σ 0.5 on the preset's images and on the 270 others); the paper's
plain recipe elsewhere (a plugin's twin need not share its baseline's classifier layers, which a warm start
copies). :data:`bench.train.grid.MEASURED_TWIN_RECIPES` is built from it; so is the help of each option."""


def measured_default(option: str, plain: object, show=lambda v: f"{v:g}") -> str:
    """``4 for digits, 2 for mnist, else 1``: the default of a twin ``option`` per dataset, from
    :data:`MEASURED_TWIN_OPTIONS` (``show`` formats a value), for ``bench train --help``."""
    by_value: dict[str, list[str]] = {}
    for (_arch, dataset), options in MEASURED_TWIN_OPTIONS.items():
        if option in options:
            by_value.setdefault(show(options[option]), []).append(dataset)
    cases = [f"{value} for {' and '.join(datasets)}" for value, datasets in by_value.items()]
    return ", ".join([*cases, f"else {show(plain)}"])
