"""Wall-clock timing that is honest on both CPU and CUDA.

On CUDA, work is asynchronous: a ``time.perf_counter`` around a kernel launch measures the launch, not the
work. ``Stopwatch`` uses a pair of ``torch.cuda.Event`` and synchronises before reading them.
"""

from __future__ import annotations

import time

import torch


class Stopwatch:
    """Measure elapsed seconds of a region on ``device`` (CUDA events on GPU, perf_counter on CPU)."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        if self._cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._cuda:
            self._end.record()
            self._end.synchronize()
            self.seconds = self._start.elapsed_time(self._end) / 1000.0
        else:
            self.seconds = time.perf_counter() - self._t0
