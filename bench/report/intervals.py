"""Confidence intervals over the test images: what a table's number says about the population of images.

A certificate is a statement about one image; a table's ACR or certified accuracy is an estimate of the mean
over the population of test images that the certified ones were drawn from. Each interval here treats the
certified images as an i.i.d. sample of that population.

- Proportions (accuracy, certified accuracy at r): the exact Clopper--Pearson interval on the image counts
  (Clopper & Pearson 1934, Biometrika 26:404). Its coverage is at least the confidence for every true
  proportion and every number of images: it inverts two one-sided exact binomial tests, each at level
  (1 - confidence) / 2.
- Means (ACR, seconds per image, encode and sampling seconds): the BCa bootstrap over images (Efron 1987,
  JASA 82:171; ``scipy.stats.bootstrap``). Why BCa rather than the percentile bootstrap: per-image radii are
  skewed (a mass at 0 for wrong or abstained images, a tail of large radii) and BCa corrects the percentile
  interval for the bias and the skewness of the estimator (its acceleration), which makes its coverage
  error O(1/n) instead of O(1/sqrt(n)) for smooth statistics such as a mean.

Every function degrades to an undefined interval (NaN, NaN) where the data cannot give one (no image, a
single image, only missing values) and never raises on such data.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from scipy import stats

DEFAULT_CONFIDENCE = 0.95  #: the confidence of every interval of a report unless ``--confidence`` says otherwise
BOOTSTRAP_RESAMPLES = 2000  #: resamples of every bootstrap interval
BOOTSTRAP_SEED = 20_190_208  #: the fixed seed of every bootstrap of a report (recorded in summary.csv)
NAN = float("nan")


class Interval(NamedTuple):
    """A two-sided interval; (nan, nan) when undefined."""

    lo: float
    hi: float

    @property
    def defined(self) -> bool:
        """True when both ends are numbers."""
        return not (math.isnan(self.lo) or math.isnan(self.hi))

    @property
    def half_width(self) -> float:
        """(hi - lo) / 2, NaN when undefined."""
        return (self.hi - self.lo) / 2.0


UNDEFINED = Interval(NAN, NAN)


def check_confidence(confidence: float) -> float:
    """``confidence`` as a float in (0, 1); raises ValueError otherwise."""
    value = float(confidence)
    if not 0.0 < value < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence!r}")
    return value


def clopper_pearson_bounds(
    successes: np.ndarray, trials: np.ndarray, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[np.ndarray, np.ndarray]:
    """Exact two-sided Clopper--Pearson intervals for binomial proportions, elementwise, in [0, 1].

    lo = Beta(a/2; k, n - k + 1) quantile and hi = Beta(1 - a/2; k + 1, n - k) quantile with
    a = 1 - confidence (lo = 0 at k = 0, hi = 1 at k = n): the set of p that neither one-sided exact
    binomial test at level a/2 rejects, so P(p in interval) >= confidence for every p and n
    (Clopper & Pearson 1934). NaN where there are no trials or k is not in [0, n].
    """
    a = 1.0 - check_confidence(confidence)
    k = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    valid = (n > 0) & (k >= 0) & (k <= n)
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k <= 0, 0.0, stats.beta.ppf(a / 2, np.maximum(k, 1e-300), n - k + 1))
        hi = np.where(k >= n, 1.0, stats.beta.ppf(1 - a / 2, k + 1, np.maximum(n - k, 1e-300)))
    return np.where(valid, lo, np.nan), np.where(valid, hi, np.nan)


def clopper_pearson(successes: int, trials: int, confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """:func:`clopper_pearson_bounds` for one proportion; undefined (NaN) without trials."""
    lo, hi = clopper_pearson_bounds(np.asarray(successes), np.asarray(trials), confidence)
    return Interval(float(lo), float(hi))


def _finite(values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    return arr[np.isfinite(arr)]


def bootstrap_interval(
    samples: tuple[np.ndarray, ...],
    statistic: Callable[..., np.ndarray],
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
    resamples: int = BOOTSTRAP_RESAMPLES,
    paired: bool = False,
) -> Interval:
    """BCa bootstrap interval of ``statistic`` (vectorised over the last axis) on ``samples``.

    Undefined with fewer than two observations. A degenerate bootstrap distribution (every resample gives the
    same value, e.g. every radius 0) gives the point interval [value, value]; a statistic that is not finite
    on the data (a ratio over a zero mean) is undefined.
    """
    check_confidence(confidence)
    if any(len(s) < 2 for s in samples):
        return UNDEFINED
    point = float(statistic(*samples, axis=-1))
    if not math.isfinite(point):
        return UNDEFINED
    if all(np.ptp(s) == 0 for s in samples):
        return Interval(point, point)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate or NaN resamples: handled below
        res = stats.bootstrap(
            samples, statistic, n_resamples=resamples, confidence_level=confidence, method="BCa",
            vectorized=True, paired=paired, random_state=np.random.default_rng(seed),
        )  # fmt: skip
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if math.isnan(lo) or math.isnan(hi):
        spread = np.ptp(res.bootstrap_distribution[np.isfinite(res.bootstrap_distribution)])
        return Interval(point, point) if spread == 0 else UNDEFINED
    return Interval(lo, hi)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def bootstrap_mean(
    values: np.ndarray,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> Interval:
    """BCa bootstrap interval (Efron 1987) of the mean of ``values`` over images; NaNs (missing times) are
    left out, and fewer than two remaining values give an undefined interval."""
    return bootstrap_interval((_finite(values),), _mean, confidence, seed, resamples)


def images_for_precision(half_width: float, proportion: float = 0.5, confidence: float = DEFAULT_CONFIDENCE) -> int:
    """The fewest images whose Clopper--Pearson interval at ``proportion`` has half-width <= ``half_width``.

    The half-width is largest at 0.5, so the default answers for any certified accuracy. Found by bisection on
    the number of images n (the half-width at ``round(proportion * n)`` successes shrinks with n)."""
    if not 0 < half_width < 0.5:
        raise ValueError(f"half_width must be in (0, 0.5), got {half_width}")

    def width(n: int) -> float:
        return clopper_pearson(round(proportion * n), n, confidence).half_width

    lo, hi = 1, 2
    while width(hi) > half_width:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if width(mid) > half_width else (lo, mid)
    return hi


PRECISION_POINTS: tuple[float, ...] = (0.10, 0.05, 0.03, 0.02, 0.01)  #: half-widths of :func:`precision_table`


def precision_table(confidence: float = DEFAULT_CONFIDENCE) -> list[tuple[float, int, int]]:
    """(half-width in percentage points, images at accuracy 50 %, images at accuracy 90 %) per
    :data:`PRECISION_POINTS`: how many images a certified accuracy needs for a given precision."""
    return [
        (100 * h, images_for_precision(h, 0.5, confidence), images_for_precision(h, 0.9, confidence))
        for h in PRECISION_POINTS
    ]


def precision_lines(confidence: float = DEFAULT_CONFIDENCE) -> list[str]:
    """:func:`precision_table` as aligned text lines (for ``bench run --help`` and the docs)."""
    conf = f"{100 * confidence:g} %"
    lines = [f"± points ({conf} CI)   images at 50 %   images at 90 %"]
    lines += [f"{h:>18.0f}   {a:>14,}   {b:>14,}" for h, a, b in precision_table(confidence)]
    return lines


def precision_markdown(confidence: float = DEFAULT_CONFIDENCE) -> str:
    """:func:`precision_table` as a markdown table (docs/concepts/statistics.md holds its output)."""
    conf = f"{100 * confidence:g} %"
    rows = [f"| ± {h:.0f} | {a:,} | {b:,} |" for h, a, b in precision_table(confidence)]
    header = f"| half-width of the {conf} interval (points) | images at accuracy 50 % | images at accuracy 90 % |"
    return "\n".join([header, "|---:|---:|---:|", *rows]) + "\n"


if __name__ == "__main__":  # python -m bench.report.intervals: the table of docs/concepts/statistics.md
    print(precision_markdown(), end="")
