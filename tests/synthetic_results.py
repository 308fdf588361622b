"""Synthetic results tables and run directories in the layout of ``docs/results-schema.md``, for tests.

``make_results`` draws known radii, predictions and timings per (image, method, FoR, sigma) from a seeded
generator; ``make_manifest`` gives a matching manifest; ``write_run`` writes both as a run directory
(``part-*.parquet`` + ``_manifest.json``). Wrong predictions carry a positive radius on purpose (a certificate
for the wrong class), so aggregates that forget to zero them are caught.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bench.store import MANIFEST

SCHEMA_COLUMNS = [
    "run", "dataset", "arch", "idx", "label", "method", "fors", "fors_total", "sigma", "prediction",
    "correct", "radius", "radius_latent", "lipschitz", "p_a_lower", "counts_selection", "counts_estimation",
    "n0", "n", "samples_used", "alpha", "encode_s", "sample_s", "total_s", "batch_size", "seed", "precision",
    "device",
]  # fmt: skip


def make_results(
    fors: Sequence[int] = (1, 5, 9, 13),
    sigmas: Sequence[float] = (0.0, 0.25, 0.5, 1.0),
    n_images: int = 20,
    *,
    with_is: bool = True,
    fors_total: int = 18,
    dataset: str = "cifar10",
    arch: str = "resnet18",
    num_classes: int = 10,
    seed: int = 0,
    skip: Iterable[tuple[str, int, float]] = (),
    extra: dict[str, object] | None = None,
) -> pd.DataFrame:
    """One row per (image, method, FoR, sigma); ``skip`` drops whole (method, fors, sigma) configs.

    ``extra`` adds constant columns (e.g. ``{"sampler": "fixed"}``) to mimic later schema additions.
    """
    rng = np.random.default_rng(seed)
    skipped = {(m, int(k), float(s)) for m, k, s in skip}
    configs = ([("is", 0)] if with_is else []) + [("ls", int(k)) for k in fors]
    labels = rng.integers(0, num_classes, size=n_images)
    rows = []
    for method, k in configs:
        for sigma in sigmas:
            if (method, k, float(sigma)) in skipped:
                continue
            p_correct = 0.9 - 0.25 * sigma - 0.01 * k
            base_time = 0.0 if sigma == 0 else 1.0 - 0.05 * k
            for idx in range(n_images):
                label = int(labels[idx])
                u = rng.random()
                if u < p_correct:
                    pred = label
                elif sigma > 0 and u < p_correct + 0.5 * (1 - p_correct):
                    pred = -1
                else:
                    pred = (label + 1 + int(rng.integers(0, num_classes - 1))) % num_classes
                    if pred == label:
                        pred = (label + 1) % num_classes
                radius = 0.0 if (sigma == 0 or pred == -1) else float(rng.uniform(0.0, 2.5 * sigma))
                encode = 0.0 if method == "is" or sigma == 0 else float(rng.uniform(0.001, 0.003))
                sample = float(base_time * rng.uniform(0.8, 1.2)) if sigma > 0 else 0.0
                total = encode + sample + (float(rng.uniform(0.0, 0.01)) if sigma > 0 else 0.001)
                n0, n = (0, 0) if sigma == 0 else (100, 1000)
                rows.append(
                    {
                        "run": "synthetic",
                        "dataset": dataset,
                        "arch": arch,
                        "idx": idx,
                        "label": label,
                        "method": method,
                        "fors": k,
                        "fors_total": fors_total,
                        "sigma": float(sigma),
                        "prediction": pred,
                        "correct": pred == label,
                        "radius": radius,
                        "radius_latent": radius,
                        "lipschitz": 1.0,
                        "p_a_lower": float("nan") if sigma == 0 else float(rng.uniform(0.5, 1.0)),
                        "counts_selection": [
                            int(c) for c in rng.multinomial(n0, [1 / num_classes] * num_classes)
                        ],
                        "counts_estimation": [
                            int(c) for c in rng.multinomial(n, [1 / num_classes] * num_classes)
                        ],
                        "n0": n0,
                        "n": n,
                        "samples_used": n0 + n,
                        "alpha": 0.001,
                        "encode_s": encode,
                        "sample_s": sample,
                        "total_s": total,
                        "batch_size": 400,
                        "seed": int(rng.integers(0, 2**31)),
                        "precision": "fp32",
                        "device": "cpu",
                        **(extra or {}),
                    }
                )
    return pd.DataFrame(rows)


def make_manifest(
    fors: Sequence[int] = (1, 5, 9, 13),
    sigmas: Sequence[float] = (0.0, 0.25, 0.5, 1.0),
    *,
    dataset: str = "cifar10",
    arch: str = "resnet18",
    flops_total: float = 5.6e8,
    models_for: Sequence[int] | None = None,
) -> dict:
    """A manifest whose FoR-k model spends ``k / (k + 9)`` of ``flops_total`` in the encoder.

    The baseline (k = 0) costs 1.25 ``flops_total``: orthogonal FFT layers are cheaper than the convs they
    replace, so the FLOP-ideal speedup must use the baseline's FLOPs, not the LS model's own total.
    """
    models = {}
    for k in [0, *fors] if models_for is None else models_for:
        enc = flops_total * k / (k + 9)
        models[str(k)] = {
            "flops_total": flops_total * (1.25 if k == 0 else 1.0),
            "flops_encoder": enc,
            "flops_classifier": flops_total * (1.25 if k == 0 else 1.0) - enc,
            "latent_shape": [64, 32, 32],
            "encoder_lipschitz": 1.0,
        }
    return {
        "config": {
            "dataset": dataset,
            "arch": arch,
            "fors": list(fors),
            "sigmas": list(sigmas),
            "n0": 100,
            "n": 1000,
        },
        "config_hash": "synthetic0001",
        "versions": {"python": "3.11", "torch": "2.x", "lsrs": "0.1.0"},
        "device": "cpu",
        "checkpoints": {},
        "models": models,
        "warmup_s": 0.1,
        "started": "2025-01-01T00:00:00",
        "finished": "2025-01-01T00:10:00",
    }


def write_run(
    directory: Path, df: pd.DataFrame, manifest: dict | None, parts: int = 3, manifest_name: str = MANIFEST
) -> Path:
    """Write ``df`` as ``parts`` parquet files (``part-00000.parquet``...) plus the manifest.

    The manifest goes to ``manifest_name`` (the store's ``_manifest.json`` by default).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for i, chunk in enumerate(np.array_split(np.arange(len(df)), max(1, parts))):
        if len(chunk):
            df.iloc[chunk].to_parquet(directory / f"part-{i:05d}.parquet", index=False)
    if manifest is not None:
        (directory / manifest_name).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return directory
