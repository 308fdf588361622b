"""Untrained tiny digits checkpoints with an index, for tests of `bench run` (single process and Ray)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from lsrs.checkpoint import index_entry, save_checkpoint, update_index
from lsrs.models import resnet18


def write_tiny_checkpoints(root: Path, fors: Sequence[int], sigmas: Sequence[float], width: int = 4) -> Path:
    """Width-``width`` ResNet18s for digits: the baseline and each FoR twin at every σ; returns ``root``."""
    folder = root / "digits"
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for k in (0, *fors):
        for sigma in sigmas:
            torch.manual_seed(k * 10 + int(sigma * 4))
            model = resnet18(num_classes=10, fors=k, width=width, in_size=16, in_channels=1).eval()
            name = f"m-f{k}-s{sigma:g}.safetensors"
            meta = {"dataset": "digits", "sigma": sigma, "noise": "input" if k == 0 else "latent",
                    "epochs": 0, "clean_acc": 0.1, "noisy_acc": 0.1}
            digest = save_checkpoint(folder / name, model, meta)
            entries.append(index_entry({**meta, "arch": "resnet18", "fors": k, "width": width, "in_size": 16,
                                        "num_classes": 10}, name, digest))
    update_index(root, "digits", entries)
    return root
