"""pytest-benchmark cases of certification speed on one fixed small ResNet18 (``bench.perf.speed.SpeedConfig``).

Pure forward of the baseline and of ``fc`` at each FoR, IS-RS and LS-RS CERTIFY, bf16 IS-RS, and the
reference loop of Cohen et al.'s ``core.py`` on a separate plain copy of the baseline. These record times
(``--benchmark-save``/``--benchmark-compare`` across commits); the *same-run ratios* and their guard are in
``test_speed_guard.py``.
"""

from __future__ import annotations

import pytest

from bench.devices import native_support
from bench.perf.speed import SpeedConfig

# Under xdist one worker builds the suite; pytest-benchmark then runs each case once, untimed, and the
# assertions still hold. `nox -s benchmark` runs these without xdist (-n 0) to record the times.
pytestmark = pytest.mark.xdist_group("exclusive")

CFG = SpeedConfig()
METHODS = CFG.methods()


def _info(benchmark, suite, method: str, precision: str, samples: int) -> None:
    cfg = suite.cfg
    benchmark.extra_info.update(
        method=method, precision=precision, samples=samples, batch_size=cfg.batch_size, width=cfg.width,
        in_size=cfg.in_size, threads=cfg.threads, flops_per_sample=suite.flops[method],
    )


@pytest.mark.parametrize("method", METHODS)
def test_forward(benchmark, speed_suite, bench_rounds, method: str) -> None:
    """The pure batched forwards of one CERTIFY (baseline for ``is``, ``fc`` for ``lsK``), fp32."""
    cfg = speed_suite.cfg
    benchmark.group = "pure forward fp32 (the batches of one CERTIFY)"
    _info(benchmark, speed_suite, method, "fp32", cfg.n0 + cfg.n)
    out = benchmark.pedantic(speed_suite.forward_fn(method, "fp32"), rounds=bench_rounds, warmup_rounds=1)
    assert sum(speed_suite.batches()) == cfg.n0 + cfg.n
    assert out.shape == (speed_suite.batches()[-1], cfg.num_classes)


@pytest.mark.parametrize("method", METHODS)
def test_certify(benchmark, speed_suite, bench_rounds, method: str) -> None:
    """One CERTIFY (n0 + n samples) of the engine, fp32."""
    cfg = speed_suite.cfg
    benchmark.group = "certify fp32 (one image)"
    _info(benchmark, speed_suite, method, "fp32", cfg.n0 + cfg.n)
    cert = benchmark.pedantic(speed_suite.certify_fn(method, "fp32"), rounds=bench_rounds, warmup_rounds=1)
    assert sum(cert.counts_estimation) == cfg.n and sum(cert.counts_selection) == cfg.n0


@pytest.mark.parametrize("precision", [p for p in CFG.precisions if p != "fp32"])
def test_certify_reduced_precision(benchmark, speed_suite, bench_rounds, precision: str) -> None:
    """IS-RS CERTIFY with a reduced-precision base classifier (autocast), timed where the CPU runs it natively.

    Elsewhere it is emulated (26 s per CERTIFY on an AVX2 CPU against 1 s in fp32), a time no user gets from
    ``--precision auto``; its counts are checked by ``tests/test_smoothing.py`` and ``tests/test_cmd_run.py``.
    """
    native, why = native_support(precision, speed_suite.device.type)
    if native is False:
        pytest.skip(f"{precision} is emulated here: {why}")
    cfg = speed_suite.cfg
    benchmark.group = "certify reduced precision (one image)"
    _info(benchmark, speed_suite, "is", precision, cfg.n0 + cfg.n)
    cert = benchmark.pedantic(speed_suite.certify_fn("is", precision), rounds=bench_rounds, warmup_rounds=1)
    assert sum(cert.counts_estimation) == cfg.n


def test_reference_loop(benchmark, speed_suite, bench_rounds) -> None:
    """Cohen et al.'s ``core.py`` loop (fp32, contiguous, counts on the host): the baseline to beat."""
    cfg = speed_suite.cfg
    benchmark.group = "certify fp32 (one image)"
    _info(benchmark, speed_suite, "is", "fp32", cfg.n0 + cfg.n)
    benchmark.extra_info["implementation"] = "reference core.py loop"
    prediction, radius = benchmark.pedantic(speed_suite.reference_fn(), rounds=bench_rounds, warmup_rounds=1)
    assert radius >= 0.0 and -1 <= prediction < cfg.num_classes


@pytest.mark.parametrize("method", ["is", "ls9", "ls13"])
def test_certify_paper_size_plain_call(benchmark, paper_suite, bench_rounds, method: str) -> None:
    """One CERTIFY at the paper's width 64 and batch 200 (``SPEED_CONFIGS["paper-guard"]``), torch's default threads,
    through the README call with no options."""
    cfg = paper_suite.cfg
    benchmark.group = "certify fp32, width 64, README call (one image)"
    _info(benchmark, paper_suite, method, "fp32", cfg.n0 + cfg.n)
    cert = benchmark.pedantic(paper_suite.certify_fn(method, "fp32"), rounds=bench_rounds, warmup_rounds=1)
    assert sum(cert.counts_estimation) == cfg.n and sum(cert.counts_selection) == cfg.n0
