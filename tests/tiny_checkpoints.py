"""Untrained tiny digits checkpoints with an index, for tests of `bench run` (single process and Ray)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from lsrs.checkpoint import index_entry, save_checkpoint, update_index
from lsrs.models import resnet18


def tiny_checkpoint(root: Path, fors: int, sigma: float, width: int = 4, seed: int | None = None,
                    name: str | None = None) -> dict:
    """Write one untrained width-``width`` digits ResNet18 under ``root/digits``; return its index entry."""
    folder = root / "digits"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(fors * 10 + int(sigma * 4) if seed is None else seed)
    model = resnet18(num_classes=10, fors=fors, width=width, in_size=16, in_channels=1).eval()
    name = name or f"m-f{fors}-s{sigma:g}.safetensors"
    meta = {"dataset": "digits", "sigma": sigma, "noise": "input" if fors == 0 else "latent",
            "epochs": 0, "clean_acc": 0.1, "noisy_acc": 0.1}
    digest = save_checkpoint(folder / name, model, meta)
    return index_entry({**meta, "arch": "resnet18", "fors": fors, "width": width, "in_size": 16,
                        "num_classes": 10}, name, digest)


def write_tiny_checkpoints(root: Path, fors: Sequence[int], sigmas: Sequence[float], width: int = 4,
                           baseline_width: int | None = None) -> Path:
    """Width-``width`` ResNet18s for digits: the baseline (of ``baseline_width`` if given) and each FoR twin at
    every σ; returns ``root``."""
    entries = [tiny_checkpoint(root, k, sigma, width if k or baseline_width is None else baseline_width)
               for k in (0, *fors) for sigma in sigmas]
    update_index(root, "digits", entries)
    return root


def retrain(root: Path, fors: int, sigma: float, width: int = 4) -> Path:
    """Replace the FoR ``fors`` checkpoint at ``sigma`` by other weights (as a new ``bench train`` would)."""
    entry = tiny_checkpoint(root, fors, sigma, width, seed=1000 + fors)
    update_index(root, "digits", [entry])
    return root / "digits" / entry["path"]
