"""bench.report.intervals and bench.report.paired against independent oracles: statsmodels' Clopper-Pearson,
exact binomial sums, a percentile bootstrap written here, and coverage over a known population."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from bench.report.intervals import (
    Interval,
    bootstrap_mean,
    clopper_pearson,
    clopper_pearson_bounds,
    images_for_precision,
    precision_table,
)
from bench.report.paired import compare_means, compare_proportions, mcnemar_exact, newcombe_paired_difference

# ------------------------------------------------------------------------------------- Clopper-Pearson


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
@pytest.mark.parametrize("n", [1, 2, 7, 50, 90, 1000])
def test_clopper_pearson_equals_statsmodels_beta(n, confidence):
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        lo, hi = proportion_confint(k, n, alpha=1 - confidence, method="beta")
        got = clopper_pearson(k, n, confidence)
        assert got.lo == pytest.approx(lo, abs=1e-12) and got.hi == pytest.approx(hi, abs=1e-12), (k, n)


def test_clopper_pearson_vectorised_equals_scalar():
    k, n = np.array([0, 3, 9, 10]), np.array([10, 10, 10, 10])
    lo, hi = clopper_pearson_bounds(k, n, 0.9)
    for i in range(4):
        assert (lo[i], hi[i]) == tuple(clopper_pearson(int(k[i]), 10, 0.9))


@pytest.mark.parametrize("n", [10, 90, 300])
def test_clopper_pearson_coverage_is_at_least_the_confidence_exactly(n):
    """Exact coverage sum_k P(k) [p in CI(k)] over Binomial(n, p), for a grid of p: never below 95 %."""
    lo, hi = clopper_pearson_bounds(np.arange(n + 1), np.full(n + 1, n), 0.95)
    for p in np.linspace(0.005, 0.995, 67):
        pmf = stats.binom.pmf(np.arange(n + 1), n, p)
        assert pmf[(lo <= p) & (p <= hi)].sum() >= 0.95 - 1e-12, p


def test_undefined_proportion_without_images():
    assert not clopper_pearson(0, 0).defined


# ------------------------------------------------------------------------------------------- bootstrap


def percentile_bootstrap(x: np.ndarray, confidence: float, resamples: int, seed: int) -> tuple[float, float]:
    """The plain percentile bootstrap of the mean (Efron & Tibshirani 1993, ch. 13)."""
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    a = 1 - confidence
    return float(np.quantile(means, a / 2)), float(np.quantile(means, 1 - a / 2))


def test_bca_agrees_with_a_percentile_bootstrap_within_monte_carlo_error():
    """On a near-symmetric sample BCa's corrections are tiny, so both intervals agree up to the Monte Carlo
    error of a 2.5 % quantile of 2,000 resampled means (a few hundredths of a standard error)."""
    x = np.random.default_rng(3).normal(1.0, 0.5, size=400)
    se = x.std(ddof=1) / math.sqrt(len(x))
    bca = bootstrap_mean(x, 0.95, seed=11)
    pct = percentile_bootstrap(x, 0.95, 20_000, seed=12)
    assert abs(bca.lo - pct[0]) < 0.12 * se and abs(bca.hi - pct[1]) < 0.12 * se
    t = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=se)  # and both near the t interval
    assert abs(bca.lo - t[0]) < 0.15 * se and abs(bca.hi - t[1]) < 0.15 * se


def test_bca_corrects_for_skew_towards_the_long_tail():
    """On right-skewed radii, BCa shifts the interval to the right of the percentile interval (Efron 1987)."""
    x = np.random.default_rng(5).exponential(1.0, size=60) ** 2
    bca = bootstrap_mean(x, 0.95, seed=1)
    pct = percentile_bootstrap(x, 0.95, 20_000, seed=2)
    assert bca.hi > pct[1] and bca.lo > pct[0] - 0.02


def test_bootstrap_is_seeded():
    x = np.random.default_rng(0).random(50)
    assert bootstrap_mean(x, seed=4) == bootstrap_mean(x, seed=4)


@pytest.mark.parametrize("values", [[], [0.3], [np.nan, np.nan, np.nan], [np.nan, 0.2]])
def test_bootstrap_is_undefined_without_two_values(values):
    assert not bootstrap_mean(np.array(values, float)).defined


def test_bootstrap_of_a_constant_is_the_point():
    assert bootstrap_mean(np.zeros(20)) == Interval(0.0, 0.0)


def _radii(rng: np.random.Generator, n: int) -> np.ndarray:
    """Per-image credited radii of a known population: 30 % wrong or abstained (0), else Gamma(2, 0.25)."""
    return np.where(rng.random(n) < 0.7, rng.gamma(2.0, 0.25, n), 0.0)


def test_acr_interval_covers_the_population_mean_95_percent_of_the_time():
    """1,000 runs of 100 images from a population with ACR 0.7 x 0.5 = 0.35: the 95 % BCa interval covers it
    in 93-97 % of them (the binomial sd of the estimated coverage is 0.7 points)."""
    rng = np.random.default_rng(2024)
    reps = 1000
    hits = 0
    for _ in range(reps):
        ci = bootstrap_mean(_radii(rng, 100))
        hits += ci.lo <= 0.35 <= ci.hi
    assert 0.93 <= hits / reps <= 0.97


def test_paired_difference_of_certified_accuracy_covers_95_percent_of_the_time():
    """Paired yes / no outcomes with P(A) = 0.62, P(B) = 0.55 and strong correlation, 100 images: Newcombe's
    interval covers the true difference 0.07 in 93-97 % of 4,000 runs."""
    rng = np.random.default_rng(7)
    reps, hits = 4000, 0
    for _ in range(reps):
        u = rng.random(100)
        a, b = u < 0.62, (u < 0.50) | ((u > 0.62) & (u < 0.67))
        lo, hi = newcombe_paired_difference(a, b)
        hits += lo <= 0.07 <= hi
    assert 0.93 <= hits / reps <= 0.97


def test_paired_ratio_of_acr_covers_95_percent_of_the_time():
    """LS radii = 0.9 x IS radii on the same images plus small noise: the paired interval of the ACR ratio
    covers 0.9 in 93-97 % of 400 runs of 200 images."""
    rng = np.random.default_rng(11)
    reps, hits = 400, 0
    for _ in range(reps):
        base = _radii(rng, 200)
        ls = 0.9 * base * rng.uniform(0.8, 1.2, 200)  # E[ls] = 0.9 E[base]
        ci = compare_means(ls, base).ratio_ci
        hits += ci.lo <= 0.9 <= ci.hi
    assert 0.93 <= hits / reps <= 0.97


# -------------------------------------------------------------------------------------------- McNemar


def exact_mcnemar_by_hand(b: int, c: int) -> float:
    """Two-sided exact McNemar p: twice the binomial(b + c, 1/2) tail at min(b, c), capped at 1."""
    m = b + c
    tail = sum(math.comb(m, i) for i in range(min(b, c) + 1)) / 2**m
    return min(1.0, 2 * tail)


@pytest.mark.parametrize(("both", "b", "c", "neither"), [(40, 9, 2, 39), (10, 0, 6, 4), (5, 3, 3, 1), (0, 25, 11, 0)])
def test_mcnemar_equals_the_exact_binomial_sum(both, b, c, neither):
    a = np.array([1] * both + [1] * b + [0] * c + [0] * neither, bool)
    bb = np.array([1] * both + [0] * b + [1] * c + [0] * neither, bool)
    assert mcnemar_exact(a, bb) == pytest.approx(exact_mcnemar_by_hand(b, c), rel=1e-12)
    assert mcnemar_exact(a, bb) == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_mcnemar_without_discordant_images_is_one():
    x = np.array([1, 0, 1], bool)
    assert mcnemar_exact(x, x) == 1.0


def test_compare_proportions_values():
    a = np.array([1, 1, 0, 1, 0, 1], bool)
    b = np.array([1, 0, 0, 0, 0, 1], bool)
    p = compare_proportions(a, b)
    assert (p.value_a, p.value_b, p.diff, p.images) == (4 / 6, 2 / 6, 2 / 6, 6)
    assert p.diff_ci.lo <= p.diff <= p.diff_ci.hi and math.isnan(p.ratio)


def test_newcombe_interval_is_nondegenerate_without_discordant_images():
    """All images concordant: a bootstrap would give [0, 0]; Newcombe's interval still spans 0 with a width."""
    x = np.array([1] * 70 + [0] * 20, bool)
    lo, hi = newcombe_paired_difference(x, x)
    assert lo < 0 < hi and hi - lo > 0.02


def test_empty_and_single_comparisons_do_not_raise():
    assert not compare_proportions(np.array([], bool), np.array([], bool)).diff_ci.defined
    one = compare_means(np.array([0.2]), np.array([0.1]))
    assert one.diff == pytest.approx(0.1) and not one.diff_ci.defined and not one.ratio_ci.defined
    zero = compare_means(np.array([0.2, 0.3]), np.zeros(2))
    assert math.isnan(zero.ratio) and not zero.ratio_ci.defined
    nan_times = compare_means(np.full(5, np.nan), np.full(5, np.nan))
    assert nan_times.images == 0 and not nan_times.diff_ci.defined


# ----------------------------------------------------------------------------------------------- power


def test_images_for_precision_is_the_smallest_count_reaching_the_width():
    for h, p in ((0.1, 0.5), (0.05, 0.9)):
        n = images_for_precision(h, p)
        assert clopper_pearson(round(p * n), n).half_width <= h < clopper_pearson(round(p * (n - 1)), n - 1).half_width


def test_precision_table_shrinks_with_the_half_width():
    rows = precision_table()
    assert [r[1] for r in rows] == sorted(r[1] for r in rows) and all(r[2] < r[1] for r in rows)
