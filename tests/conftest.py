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


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    """The speed guard's ratio table (tests/benchmarks/test_speed_guard.py), also from an xdist worker: it
    travels as the test report's ``speed_table`` property."""
    for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", []):
        for name, table in getattr(report, "user_properties", ()):
            if name == "speed_table":
                terminalreporter.write_sep("-", "certification speed: same-run ratios (bench/perf/speed.py)")
                terminalreporter.write_line(table)
