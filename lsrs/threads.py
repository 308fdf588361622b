"""Torch intra-op threads for small CPU work, and batched LAPACK calls spread over the cores.

Work too small to share between OpenMP threads runs on one intra-op thread: several threads synchronise more
than they compute on it (the one-image LS-RS encoder), and torch's batched complex inverse can even fail with
two OpenMP threads (MKL: "Parameter 6 was incorrect on entry to CLASWP", then a lu_solve pivot error).
:func:`on_every_core` still uses every core for such a batched call: it runs slices of the batch, one Python
thread per core, each call on one intra-op thread (ATen releases the GIL). :func:`map_chunks` does the same
for a whole pipeline of steps per chunk (the Cayley operators and their bounds at ImageNet size,
:mod:`lsrs.layers`, :mod:`lsrs.executed`). Measured costs: docs/data/benchmarks.yaml (the benchmarks page).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


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


def on_every_core(fn: Callable[[Tensor], Tensor], batch: Tensor) -> Tensor:
    """``fn(batch)`` for a function that maps each item of the leading dimension on its own (e.g. a batched
    inverse), computed on CPU as ``cat(fn(part))`` over one slice per torch thread (:func:`map_chunks`), each
    slice in its own Python thread on one intra-op thread. Elsewhere, or when autograd records ``fn``, one
    plain call (on one intra-op thread on CPU)."""
    n = batch.shape[0]
    workers = min(torch.get_num_threads(), n) if batch.device.type == "cpu" else 1
    if workers <= 1 or (torch.is_grad_enabled() and batch.requires_grad):
        with one_cpu_thread(batch.device):
            return fn(batch)
    return torch.cat(map_chunks(lambda lo, hi: fn(batch[lo:hi]), n, -(-n // workers), batch.device))


def map_chunks(fn: Callable[[int, int], T], total: int, chunk: int, device: torch.device | str = "cpu") -> list[T]:
    """``[fn(lo, hi) for each chunk [lo, hi) of range(total)]``, in order. On CPU the chunks are spread over one
    Python thread per torch thread, each running whole chunks on one intra-op thread: every step of a chunk
    (products, inverses, elementwise work) then runs on all cores, without a thread barrier per operation."""
    bounds = [(lo, min(lo + chunk, total)) for lo in range(0, total, chunk)]
    device = torch.device(device)
    workers = min(torch.get_num_threads(), len(bounds)) if device.type == "cpu" else 1
    if workers <= 1:
        return [fn(lo, hi) for lo, hi in bounds]
    with one_cpu_thread(device), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda b: fn(*b), bounds))
