"""Confidence bounds and radii (lsrs.bounds) against independent oracles: statsmodels and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.stats import binom, norm
from statsmodels.stats.proportion import binom_test, proportion_confint

from lsrs.bounds import (
    check_alpha,
    clopper_pearson_lower,
    clopper_pearson_upper,
    gaussian_radius,
    two_sided_binomial_pvalue,
)

SETTINGS = settings(max_examples=150, deadline=None, database=None, derandomize=True)

# statsmodels' two-sided interval at level 2*alpha needs 2*alpha < 1
alphas = st.floats(min_value=1e-6, max_value=0.49, allow_nan=False, allow_infinity=False)


@st.composite
def k_n(draw: st.DrawFn) -> tuple[int, int]:
    n = draw(st.integers(min_value=1, max_value=200_000))
    # bias towards the edges k = 0 and k = n, where special cases live
    k = draw(st.one_of(st.just(0), st.just(n), st.integers(min_value=0, max_value=n)))
    return k, n


def _statsmodels(k: int, n: int, alpha: float) -> tuple[float, float]:
    lo, hi = proportion_confint(k, n, alpha=2 * alpha, method="beta")
    return float(lo), float(hi)


# ---------------------------------------------------------------- Clopper-Pearson vs statsmodels
GRID = [
    (k, n, a)
    for n in (1, 2, 10, 100, 1000, 100_000)
    for k in sorted({0, 1, n // 2, n - 1, n})
    for a in (1e-3, 0.01, 0.05, 0.25)
    if 0 <= k <= n
]


@pytest.mark.parametrize(("k", "n", "alpha"), GRID)
def test_clopper_pearson_matches_statsmodels_on_grid(k: int, n: int, alpha: float) -> None:
    """Lower and upper one-sided (1-alpha) bounds equal statsmodels' 'beta' interval at level 2*alpha."""
    lo, hi = _statsmodels(k, n, alpha)
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(lo, rel=1e-9, abs=1e-14)
    assert clopper_pearson_upper(k, n, alpha) == pytest.approx(hi, rel=1e-9, abs=1e-14)


@SETTINGS
@given(kn=k_n(), alpha=alphas)
@example(kn=(0, 1), alpha=0.001)
@example(kn=(1, 1), alpha=0.001)
@example(kn=(0, 100_000), alpha=0.001)
@example(kn=(100_000, 100_000), alpha=0.001)
def test_clopper_pearson_matches_statsmodels_property(kn: tuple[int, int], alpha: float) -> None:
    """Same equality over random (k, n, alpha), including the edges k = 0 and k = n."""
    k, n = kn
    lo, hi = _statsmodels(k, n, alpha)
    lower = clopper_pearson_lower(k, n, alpha)
    upper = clopper_pearson_upper(k, n, alpha)
    assert lower == pytest.approx(lo, rel=1e-9, abs=1e-14)
    assert upper == pytest.approx(hi, rel=1e-9, abs=1e-14)
    assert 0.0 <= lower <= k / n <= upper <= 1.0


def test_clopper_pearson_edge_closed_forms() -> None:
    """k = 0 gives lower 0 and upper 1 - alpha^(1/n); k = n gives lower alpha^(1/n) and upper 1."""
    for n in (1, 3, 50, 10_000):
        for a in (1e-3, 0.05):
            assert clopper_pearson_lower(0, n, a) == 0.0
            assert clopper_pearson_upper(n, n, a) == 1.0
            assert clopper_pearson_lower(n, n, a) == pytest.approx(a ** (1 / n), rel=1e-10)
            assert clopper_pearson_upper(0, n, a) == pytest.approx(1 - a ** (1 / n), rel=1e-10)


@pytest.mark.parametrize("n", [1, 7, 40, 150])
@pytest.mark.parametrize("alpha", [0.001, 0.05, 0.2])
def test_clopper_pearson_one_sided_coverage_exact(n: int, alpha: float) -> None:
    """Exact binomial computation: for every true p, P_k~Bin(n,p)[lower(k) > p] <= alpha, and likewise
    P[upper(k) < p] <= alpha. This is the statistical guarantee CERTIFY rests on."""
    ks = np.arange(n + 1)
    lowers = np.array([clopper_pearson_lower(int(k), n, alpha) for k in ks])
    uppers = np.array([clopper_pearson_upper(int(k), n, alpha) for k in ks])
    ps = np.concatenate([np.linspace(1e-4, 1 - 1e-4, 401), lowers[1:], uppers[:-1]])
    pmf = binom.pmf(ks[None, :], n, ps[:, None])  # (P, n+1)
    miss_low = (pmf * (lowers[None, :] > ps[:, None])).sum(1)
    miss_high = (pmf * (uppers[None, :] < ps[:, None])).sum(1)
    assert miss_low.max() <= alpha + 1e-12
    assert miss_high.max() <= alpha + 1e-12


# ---------------------------------------------------------------- argument checks
@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan"), float("inf")])
def test_bad_alpha_raises(alpha: float) -> None:
    with pytest.raises(ValueError):
        check_alpha(alpha)
    with pytest.raises(ValueError):
        clopper_pearson_lower(5, 10, alpha)
    with pytest.raises(ValueError):
        clopper_pearson_upper(5, 10, alpha)


@pytest.mark.parametrize(("k", "n"), [(0, 0), (1, 0), (-1, 10), (11, 10), (5, -3)])
def test_bad_counts_raise(k: int, n: int) -> None:
    with pytest.raises(ValueError):
        clopper_pearson_lower(k, n, 0.05)
    with pytest.raises(ValueError):
        clopper_pearson_upper(k, n, 0.05)


# ---------------------------------------------------------------- radius and PREDICT's test
@SETTINGS
@given(
    sigma=st.floats(min_value=1e-3, max_value=10.0),
    t=st.floats(min_value=0.0, max_value=6.0),
)
def test_gaussian_radius_closed_form(sigma: float, t: float) -> None:
    """R = sigma * Phi^-1(pA_lower), i.e. gaussian_radius(sigma, Phi(t)) = sigma * t (Cohen et al. Thm 1
    with pB = 1 - pA, which is paper Eq. 3: sigma/2 * (Phi^-1(pA) - Phi^-1(1 - pA)))."""
    p = float(norm.cdf(t))
    r = gaussian_radius(sigma, p)
    assert r == pytest.approx(sigma * t, rel=1e-7, abs=1e-9)
    assert r == pytest.approx(sigma / 2 * (norm.ppf(p) - norm.ppf(1 - p)), rel=1e-7, abs=1e-9)


def test_gaussian_radius_at_one_half_is_zero() -> None:
    assert gaussian_radius(0.5, 0.5) == 0.0


@SETTINGS
@given(kn=k_n())
def test_two_sided_pvalue_matches_statsmodels(kn: tuple[int, int]) -> None:
    """PREDICT's p-value equals statsmodels' exact two-sided binomial test of p = 1/2."""
    k, n = kn
    expected = float(binom_test(k, n, prop=0.5, alternative="two-sided"))
    assert two_sided_binomial_pvalue(k, n) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_two_sided_pvalue_symmetric_and_tie_is_one() -> None:
    for n in (1, 2, 9, 100):
        for k in range(n + 1):
            assert two_sided_binomial_pvalue(k, n) == pytest.approx(two_sided_binomial_pvalue(n - k, n))
        if n % 2 == 0:
            assert math.isclose(two_sided_binomial_pvalue(n // 2, n), 1.0)
