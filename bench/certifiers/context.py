"""What a certifier receives: :class:`CertifyContext`, one per (process, job), and the run's settings it reads.

A certifier's ``start(context, x, batch_size, channels_last)`` sets its job up from the context and records
what the run stores beside the rows (``batch_size``, ``warmup_s``, ``lipschitz_executed``, stages in
``setup_s``); its rows begin with ``context.common``. The context is built by the runner
(:class:`bench.run.runner.JobCertifier`) in every executor, so a certifier never needs to read the runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from bench.certifiers.registry import Job


class RunSettings(Protocol):
    """The fields of a run's configuration (``bench.run.runner.RunConfig``) that certifiers read."""

    dataset: str
    fors: tuple[int, ...]
    sigmas: tuple[float, ...]
    n0: int
    alpha: float
    seed: int
    precision: str
    fold_bn: bool
    sampler: str
    certificate: str
    decide_radii: tuple[float, ...]
    max_n: int
    compile: str
    trust_lipschitz: bool
    checkpoints: str
    noise: str
    noise_stream: str

    @property
    def n_values(self) -> tuple[int, ...]: ...


@dataclass
class CertifyContext:
    """One job's model and settings, handed to its certifier's ``start``.

    Given: ``config`` (the run's settings), ``job`` (method, FoR, σ, n), ``model`` (the loaded checkpoint; a
    certifier may keep its own copy instead), ``device``, ``num_classes``, ``common`` (the fields every row of
    the job starts with: run hash, dataset, arch, method, FoR, σ, α, precision, device, checkpoint sha256) and
    ``setup_s`` (seconds of each untimed set-up stage; ``load`` is given). Recorded by the certifier:
    ``batch_size`` (None where nothing is sampled), ``warmup_s`` (excluded from the timings) and
    ``lipschitz_executed`` (an encoder's bound as executed, :mod:`lsrs.executed`).
    """

    config: RunSettings
    job: Job
    model: torch.nn.Module
    device: torch.device
    num_classes: int
    common: dict[str, Any]
    setup_s: dict[str, float] = field(default_factory=dict)
    batch_size: int | None = None
    warmup_s: float = 0.0
    lipschitz_executed: float | None = None
