"""Row helpers shared by certifiers: the row of a certificate made without sampling."""

from __future__ import annotations

from typing import Any

from bench.certifiers.context import CertifyContext


def one_pass_row(context: CertifyContext, idx: int, label: int, prediction: int, radius: float, radius_latent: float,
                 lipschitz: float, *, samples_used: int, sample_s: float, total_s: float,
                 lipschitz_source: str = "declared", **common: Any) -> dict:
    """A row of a certificate without sampling (σ = 0 clean accuracy, the Lipschitz margin): no counts, NaN
    probabilities, no rounding term, ``sampler`` / ``certificate`` repeating the run's (so that reports do not
    split the run into variants). ``context``: the job's :class:`bench.certifiers.context.CertifyContext`; ``common``
    overrides its common fields (e.g. ``precision``)."""
    return {
        **context.common,
        **common,
        "idx": idx,
        "label": label,
        "prediction": prediction,
        "correct": prediction == label,
        "radius": radius,
        "radius_latent": radius_latent,
        "lipschitz": lipschitz,
        "lipschitz_declared": lipschitz,
        "lipschitz_source": lipschitz_source,
        "latent_error": 0.0,
        "p_a_lower": float("nan"),
        "p_b_upper": float("nan"),
        "sampler": context.config.sampler,
        "certificate": context.config.certificate,
        "noise": context.config.noise,
        "quantization": 0.0,
        "counts_selection": [],
        "counts_estimation": [],
        "n0": 0,
        "n": 0,
        "samples_used": samples_used,
        "encode_s": 0.0,
        "sample_s": sample_s,
        "total_s": total_s,
        "batch_size": 1,
        "seed": 0,
    }
