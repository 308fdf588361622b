"""`bench import certify-log` takes a line only when the dataset and the declared statistics allow it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from cohen_format import LOG_HEADER
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint

from bench.cli.main import cli
from bench.peers.log_checks import max_certified_radius, printed_upper

BOUND = 0.25 * norm.ppf(0.001 ** (1 / 100_000))  # 0.9529


def _import(text: str, tmp_path: Path, *extra: str):
    log = tmp_path / "log"
    log.write_text(LOG_HEADER + "0\t1\t1\t0.5\t1\t15.4\n" + text)
    args = ["import", "certify-log", str(log), "--dataset", "cifar10", "--out", str(tmp_path / "run")]
    return CliRunner().invoke(cli, [*args, *(extra or ("--sigma", "0.25"))])


@pytest.mark.parametrize(
    ("line", "expect"),
    [
        ("100000000000000000000000\t1\t1\t0.5\t1\t15.4", "idx 100000000000000000000000 is out of range"),
        ("1_0\t1\t1\t0.5\t1\t15.4", "idx '1_0' is not a decimal integer"),
        ("+3\t1\t1\t0.5\t1\t15.4", "idx '+3' is not a decimal integer"),
        ("10000\t1\t1\t0.5\t1\t15.4", "idx 10000 is beyond the test set (10000 images)"),
        ("3\t10\t10\t0.5\t1\t15.4", "label 10 is not a class of the dataset (0..9)"),
        ("3\t1\t12\t0.5\t0\t15.4", "prediction 12 is not a class"),
        ("3\t1\t1\t0.5\t1\t-1 day, 23:59:59", "is negative"),
        ("3\t1\t1\t0.96\t1\t15.4", "radius 0.96 exceeds 0.9529"),
    ],
    ids=["overflow", "underscore", "plus-sign", "beyond-test-set", "label", "prediction", "negative-time", "radius"],
)
def test_impossible_lines_are_refused_naming_the_line(line: str, expect: str, tmp_path: Path) -> None:
    result = _import(line + "\n", tmp_path, "--sigma", "0.25", "--n", "100000", "--alpha", "0.001")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "line 3" in lines[0] and expect in lines[0], result.output
    assert not (tmp_path / "run").exists()


def test_the_largest_certifiable_radius_is_accepted_and_unchecked_without_n(tmp_path: Path) -> None:
    at_bound = f"3\t1\t1\t{format(BOUND, '.3')}\t1\t15.4\n"
    assert _import(at_bound, tmp_path, "--sigma", "0.25", "--n", "100000", "--alpha", "0.001").exit_code == 0
    beyond = tmp_path / "beyond"
    beyond.mkdir()
    assert _import("3\t1\t1\t2.5\t1\t15.4\n", beyond, "--sigma", "0.25").exit_code == 0  # no n, α: nothing to check


def test_sigma_zero_is_refused(tmp_path: Path) -> None:
    result = _import("", tmp_path, "--sigma", "0")
    assert result.exit_code == 2 and "sigma must be > 0" in result.output


@pytest.mark.parametrize(("sigma", "n", "alpha"), [(0.25, 100_000, 0.001), (0.5, 1000, 0.01), (1.0, 100, 0.05)])
def test_max_radius_equals_cohen_certify_with_every_sample_correct(sigma: float, n: int, alpha: float) -> None:
    """Oracle: Cohen et al.'s lower bound, statsmodels' Clopper-Pearson at 2α two-sided, with n_A = n."""
    p_lower = proportion_confint(n, n, alpha=2 * alpha, method="beta")[0]
    assert max_certified_radius(sigma, n, alpha) == pytest.approx(sigma * norm.ppf(p_lower), rel=1e-9)
    below = proportion_confint(n - 1, n, alpha=2 * alpha, method="beta")[0]
    assert sigma * norm.ppf(below) < max_certified_radius(sigma, n, alpha)


def test_printed_upper_bounds_every_three_digit_print_below_the_value() -> None:
    rng = np.random.default_rng(0)
    for value in rng.uniform(0.01, 5.0, 200):
        xs = value - rng.uniform(0, value * 0.01, 50)
        assert max(float(format(x, ".3")) for x in [*xs, value]) <= printed_upper(value)
        assert printed_upper(value) < value * 1.006
