"""Shared test setup."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(request):
    """Tiny models lose time to intra-op threading on a small shared CPU: one thread per test module.

    The speed benchmarks under ``tests/benchmarks`` choose their own threads.
    """
    if "benchmarks" in request.path.parts:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
