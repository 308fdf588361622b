"""Fixtures of the certification-speed benchmarks (how they work: README.md in this folder).

One :class:`bench.perf.speed.SpeedSuite` (models, inputs, smoothers) is built per package and shared by the
pytest-benchmark cases (``test_speed.py``) and the same-run ratio guard (``test_speed_guard.py``), which run on
one xdist worker (group "exclusive", shared with the Ray tests, which then never run beside the guards).
Torch runs with ``SpeedConfig.threads`` threads inside this package and is restored afterwards. The guard's
ratio table is printed at the end of the session by ``tests/conftest.py``.
"""

from __future__ import annotations

import os

import pytest
import torch

from bench.perf.speed import (
    SLOWDOWN_ENV,
    SPEED_CONFIGS,
    SpeedConfig,
    SpeedSuite,
    parse_slowdown,
    torch_threads,
)

#: pytest-benchmark rounds per case (after one warm-up round); CI default 1, ``nox -s benchmark`` more.
BENCH_ROUNDS_ENV = "LSRS_BENCH_ROUNDS"


#: torch's default number of threads in this process (before any test changed it).
DEFAULT_THREADS = torch.get_num_threads()


@pytest.fixture(scope="session")
def default_threads() -> int:
    return DEFAULT_THREADS


@pytest.fixture(autouse=True)
def _suite_threads(request):
    """Each test runs with its suite's threads: ``SpeedConfig.threads`` for ``speed_suite``, torch's default
    for ``paper_suite`` (a package-scoped fixture must not hold a thread setting for the tests after it)."""
    if "speed_suite" in request.fixturenames:
        threads = SpeedConfig().threads
    elif "paper_suite" in request.fixturenames:
        threads = SPEED_CONFIGS["paper-guard"].threads or DEFAULT_THREADS
    else:
        threads = None
    with torch_threads(threads):
        yield


@pytest.fixture(scope="package")
def speed_suite():
    """The fixed benchmark problem, built once; ``LSRS_SPEED_SLOWDOWN`` injects a deliberate regression."""
    cfg = SpeedConfig()
    with torch_threads(cfg.threads):
        return SpeedSuite(cfg, slowdown=parse_slowdown(os.environ.get(SLOWDOWN_ENV)))


@pytest.fixture(scope="package")
def paper_suite():
    """The paper's width-64 ResNet18 at the guard's size (``SPEED_CONFIGS["paper-guard"]``), torch's default threads,
    smoothed by the README call with no options; ``LSRS_SPEED_SLOWDOWN`` applies here too."""
    return SpeedSuite(SPEED_CONFIGS["paper-guard"], slowdown=parse_slowdown(os.environ.get(SLOWDOWN_ENV)))


@pytest.fixture(scope="session")
def bench_rounds() -> int:
    return max(1, int(os.environ.get(BENCH_ROUNDS_ENV, "1")))
