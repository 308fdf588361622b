"""Two configurations certified on the same images: paired differences, ratios and the exact McNemar test.

Pairing removes the variation between images from a comparison: LS-RS and IS-RS are certified on the same
test images, so their per-image outcomes are compared image by image.

- Certified accuracy at r (a yes / no per image): the exact McNemar test (McNemar 1947, Psychometrika
  12:153) conditions on the b + c discordant images (A certifies and B not: b; B and not A: c); under the
  null of equal certified accuracy b ~ Binomial(b + c, 1/2), and the two-sided p-value is
  min(1, 2 P(X <= min(b, c))) (``statsmodels.stats.contingency_tables.mcnemar(exact=True)``). The interval
  of the difference of the two proportions, (b - c) / N, is Newcombe's (1998, Stat Med 17:2635, method 10):
  the Wilson intervals of each proportion combined with the correlation phi of the paired 2x2 table; unlike a
  bootstrap it stays informative when few images are discordant (a bootstrap then gives [0, 0]).
- Means (ACR, seconds per image): a paired BCa bootstrap over the shared images (Efron 1987) of the
  difference of the means and of their ratio (the ACR ratio LS/IS, the speedup t_IS / t_LS).
- Power: the smallest difference a comparison on N images can detect is, to first order, the half-width of
  its paired interval; a smaller true difference gives an interval that contains 0 most of the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from bench.report.intervals import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    DEFAULT_CONFIDENCE,
    NAN,
    UNDEFINED,
    Interval,
    bootstrap_interval,
    check_confidence,
)

MCNEMAR = "exact McNemar"
BOOTSTRAP = "paired BCa bootstrap"


@dataclass(frozen=True)
class Paired:
    """One paired comparison of configuration A against B on ``images`` shared images.

    ``value_a``/``value_b`` are the two estimates, ``diff`` = A - B with its interval, ``ratio`` = A / B with
    its interval (NaN where a ratio means nothing), ``p_value`` of ``test`` (NaN without a test)."""

    value_a: float
    value_b: float
    diff: float
    diff_ci: Interval
    ratio: float = NAN
    ratio_ci: Interval = UNDEFINED
    p_value: float = NAN
    test: str = ""
    images: int = 0


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value of paired yes / no outcomes ``a`` and ``b`` (1 with no discordant pair,
    NaN without images)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.size == 0:
        return NAN
    table = [[int(np.sum(a & b)), int(np.sum(a & ~b))], [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]
    if table[0][1] + table[1][0] == 0:
        return 1.0
    return float(mcnemar(table, exact=True).pvalue)


def newcombe_paired_difference(a: np.ndarray, b: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """Newcombe's (1998, method 10) interval of P(A) - P(B) for paired yes / no outcomes.

    With the 2x2 counts (both: e, A only: f, B only: g, neither: h), N images, p1 = (e + f) / N,
    p2 = (e + g) / N, Wilson intervals (l1, u1), (l2, u2) and phi = (e h - f g) / sqrt of the product of the
    margins (0 when a margin is 0):
    lo = D - sqrt((p1 - l1)^2 - 2 phi (p1 - l1)(u2 - p2) + (u2 - p2)^2),
    hi = D + sqrt((u1 - p1)^2 - 2 phi (u1 - p1)(p2 - l2) + (p2 - l2)^2), D = p1 - p2. Undefined without images.
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    n = a.size
    if n == 0:
        return UNDEFINED
    alpha = 1.0 - check_confidence(confidence)
    e, f, g, h = (int(np.sum(x)) for x in (a & b, a & ~b, ~a & b, ~a & ~b))
    p1, p2 = (e + f) / n, (e + g) / n
    l1, u1 = proportion_confint(e + f, n, alpha=alpha, method="wilson")
    l2, u2 = proportion_confint(e + g, n, alpha=alpha, method="wilson")
    margins = (e + f) * (g + h) * (e + g) * (f + h)
    phi = (e * h - f * g) / math.sqrt(margins) if margins > 0 else 0.0
    d = p1 - p2
    lower = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    upper = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    return Interval(max(-1.0, d - math.sqrt(max(lower, 0.0))), min(1.0, d + math.sqrt(max(upper, 0.0))))


def compare_proportions(a: np.ndarray, b: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> Paired:
    """A against B on paired yes / no outcomes (certified or not at r): proportions, difference with
    Newcombe's interval and the exact McNemar p-value; no ratio (a ratio of accuracies means nothing here)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.size == 0:
        return Paired(NAN, NAN, NAN, UNDEFINED, test=MCNEMAR)
    va, vb = float(a.mean()), float(b.mean())
    return Paired(va, vb, va - vb, newcombe_paired_difference(a, b, confidence), p_value=mcnemar_exact(a, b),
                  test=MCNEMAR, images=int(a.size))


def _diff_of_means(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def _ratio_of_means(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.mean(a, axis=axis) / np.mean(b, axis=axis)


def compare_means(
    a: np.ndarray,
    b: np.ndarray,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
    resamples: int = BOOTSTRAP_RESAMPLES,
    ratio: bool = True,
) -> Paired:
    """A against B on paired per-image values (radius credit, seconds): means, their difference and ratio
    A / B, each with a paired BCa bootstrap interval over the images where both are finite (a missing time
    drops the image from this comparison). Undefined with fewer than two such images."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size == 0:
        return Paired(NAN, NAN, NAN, UNDEFINED, test=BOOTSTRAP)
    va, vb = float(a.mean()), float(b.mean())
    diff_ci = bootstrap_interval((a, b), _diff_of_means, confidence, seed, resamples, paired=True)
    value_ratio, ratio_ci = NAN, UNDEFINED
    if ratio and vb != 0:
        value_ratio = va / vb
        ratio_ci = bootstrap_interval((a, b), _ratio_of_means, confidence, seed, resamples, paired=True)
    return Paired(va, vb, va - vb, diff_ci, value_ratio, ratio_ci, test=BOOTSTRAP, images=int(a.size))
