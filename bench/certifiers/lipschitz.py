"""The Lipschitz margin (``lip``): the fully orthogonal twin certified without noise by its logit margin,
radius = margin / (sqrt(2) L) (:class:`lsrs.margin.LipschitzCertifier`, Tsuzuku et al. 2018), one forward
pass per image in float64. Certified once per run (no σ: it is trained and certified without noise), with the
FoR of the architecture's Lipschitz twin (:attr:`lsrs.architectures.Architecture.lipschitz_fors`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from bench.certifiers.context import CertifyContext, RunSettings
from bench.certifiers.registry import Certifier, Job, register_certifier
from bench.certifiers.rows import one_pass_row
from bench.errors import UsageError


def jobs(config: RunSettings, sigma: float | None) -> list[tuple[int, float, int]]:
    """Once per run (``sigma`` None): the fully orthogonal twin of each architecture in the run's checkpoint
    index, at its record's FoR (:attr:`lsrs.architectures.Architecture.lipschitz_fors`), σ = 0, sampling
    nothing."""
    return [(fors, 0.0, 0) for fors in lipschitz_fors(config)] if sigma is None else []


def lipschitz_fors(config: RunSettings) -> list[int]:
    """The FoRs of the Lipschitz twins of the architectures in ``config``'s checkpoint index (none without an
    index: the run then says how to train one)."""
    from lsrs.checkpoint import index_architectures

    records = index_architectures(config.checkpoints, config.dataset)
    return sorted({r.lipschitz_fors for r in records if r.lipschitz_fors is not None})


def check(archs: list, fors: tuple[int, ...]) -> None:
    """The checkpoints' architectures must have a fully orthogonal twin."""
    if archs and all(r.lipschitz_fors is None for r in archs):
        raise UsageError(f"lip certifies a fully orthogonal twin, and {', '.join(r.name for r in archs)} "
                         "has none; use is,ls", option="--methods")


def label(job: Job) -> str:
    return f"Lipschitz margin FoR {job.fors}"


class MarginRun:
    """Copy the model to float64 and prove its bound L, then one untimed certification (builds the operator
    caches); a model without a bound is a usage error. Rows: prediction and radius = margin / (sqrt(2) L),
    ``samples_used`` = 1, NaN probabilities, no counts; ``precision`` is the float64 of the pass."""

    def __init__(self, context: CertifyContext, x: Any, batch_size: int | None, channels_last: bool | None) -> None:
        from lsrs.margin import LipschitzCertifier

        self.context = context
        started = time.perf_counter()
        try:
            self.certifier = LipschitzCertifier(context.model, tuple(x.shape), device=context.device)
        except ValueError as exc:
            raise UsageError(f"{context.job.label}: {exc}") from None
        self.certifier.certify(x)
        context.batch_size = 1
        context.warmup_s = time.perf_counter() - started
        context.setup_s["warmup"] = context.warmup_s
        context.lipschitz_executed = self.certifier.lipschitz

    def rows(self, dataset: Any, indices: list[int], decided: set[tuple] | frozenset) -> Iterator[tuple[dict, list[dict]]]:
        from lsrs.timing import Stopwatch

        context, certifier = self.context, self.certifier
        for i in indices:
            x, label_ = dataset[i]
            with Stopwatch(context.device) as sw:
                cert = certifier.certify(x.to(context.device))
            prediction, radius = int(cert.prediction[0]), float(cert.radius[0])
            # radius_latent is in logit space, so radius = radius_latent / L as for the smoothers
            yield one_pass_row(context, i, int(label_), prediction, radius, radius * cert.lipschitz, cert.lipschitz,
                               samples_used=1, sample_s=sw.seconds, total_s=sw.seconds, precision="fp64",
                               lipschitz_source=certifier.source), []


LIPSCHITZ_MARGIN = register_certifier(Certifier(
    key="lip", defense="Lipschitz", jobs=jobs, start=MarginRun, noise=False, color="tab:red", line_style=":",
    check=check, job_label=label, caption="the Lipschitz-margin twin (one forward pass)",
    help="Lipschitz-margin certificate of the architecture's fully orthogonal twin (trained by bench train "
         "--fors with the architecture's Lipschitz FoR)",
))
