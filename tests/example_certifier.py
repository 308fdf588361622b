"""An example certifier, registered by the tests: ``clean`` predicts with the FoR-0 baseline's plain forward
pass, without noise, and certifies radius 0 (the trivial certificate: every point is its own 0-ball).

It is what a new certifier takes: one module that builds a :class:`bench.certifiers.Certifier` (its jobs,
its set-up and rows, its label and colour, which columns apply) and calls :func:`bench.certifiers.register`.
No other file of the harness changes: ``bench run --methods is,clean`` certifies it, and ``bench report`` and
the run's console table show it. Its one job per run is the baseline trained at the run's first σ (that σ is
stored in its rows, as the model's; it samples nothing, so its tables show σ as "-").

Like the built-ins, it imports torch only in the code that certifies, so that listing the certifiers (``bench
run --help``, ``--methods`` checked when the command line is parsed) does not import torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bench.certifiers import Certifier, Job, register
from bench.certifiers.rows import one_pass_row

KEY = "clean"


def jobs(config: Any, sigma: float | None) -> list[tuple[int, float, int]]:
    """Once per run: the baseline (FoR 0) trained at the run's first σ, n = 0."""
    return [(0, float(config.sigmas[0]), 0)] if sigma is None else []


class CleanPrediction:
    """Set-up: nothing to prove or warm. Rows: the base classifier's argmax, radius 0, ``samples_used`` 0."""

    def __init__(self, context: Any, x: Any, batch_size: int | None, channels_last: bool) -> None:
        self.context = context
        context.batch_size = 1

    def rows(self, dataset: Any, indices: list[int], decided: set[tuple] | frozenset) -> Iterator[tuple[dict, list[dict]]]:
        import torch

        from lsrs.timing import Stopwatch

        context = self.context
        for i in indices:
            x, label = dataset[i]
            with Stopwatch(context.device) as sw, torch.inference_mode():
                prediction = int(context.model(x.to(context.device).unsqueeze(0)).argmax(1).item())
            yield one_pass_row(context, i, int(label), prediction, 0.0, 0.0, 1.0, samples_used=0, sample_s=sw.seconds,
                               total_s=sw.seconds), []


def label(job: Job) -> str:
    return f"clean prediction FoR {job.fors}"


CLEAN = Certifier(key=KEY, defense="Clean", jobs=jobs, start=CleanPrediction, noise=False, color="tab:green",
                  line_style="-.", job_label=label, caption="the clean prediction (radius 0)",
                  help="the base classifier's prediction, radius 0")


def register_clean() -> Certifier:
    return register(CLEAN, replace=True)
