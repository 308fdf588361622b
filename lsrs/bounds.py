"""Confidence bounds and radii of randomized smoothing (Cohen et al. 2019, Theorem 1 / CERTIFY)."""

from __future__ import annotations

import math

from scipy.stats import beta, binomtest, norm


def check_alpha(alpha: float) -> None:
    """Raise ``ValueError`` unless 0 < alpha < 1."""
    if not (0.0 < alpha < 1.0) or math.isnan(alpha):
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion.

    Equals ``statsmodels.stats.proportion.proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]``.
    """
    check_alpha(alpha)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if k == 0:
        return 0.0
    return float(beta.ppf(alpha, k, n - k + 1))


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound on a binomial proportion."""
    check_alpha(alpha)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if k == n:
        return 1.0
    return float(beta.ppf(1.0 - alpha, k + 1, n - k))


def gaussian_radius(sigma: float, p_a_lower: float) -> float:
    """Certified l2 radius sigma * Phi^-1(pA_lower) of Cohen et al. (paper Eq. 3 with pB = 1 - pA)."""
    return float(sigma * norm.ppf(p_a_lower))


def two_sided_binomial_pvalue(k: int, n: int) -> float:
    """p-value of the two-sided test that k successes in n trials come from p = 1/2 (PREDICT)."""
    return float(binomtest(k, n, 0.5, alternative="two-sided").pvalue)
