"""One torch intra-op thread for small CPU work.

On the 2-core CPUs measured here, two threads made two kinds of small work several times slower than one:
the one-image LS-RS encoder (6-12x the CPU time at width 64) and the batched LAPACK inverse of the Cayley
transform (406 complex 160x160 matrices: 20 s against 3.9 s).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run the body with one torch thread on a CPU device (restored afterwards); unchanged elsewhere."""
    old = torch.get_num_threads()
    if device.type != "cpu" or old == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)
