"""Certification beyond fixed n: exact curtailment, multiclass radii, anytime-valid decisions.

* **Curtailment** (``sampler="curtail"``): CERTIFY abstains iff the final top-class count ``n_A`` is below
  ``k_min(n, alpha)``, the smallest count whose Clopper-Pearson lower bound reaches 1/2. After ``m`` of
  ``n`` samples with ``a`` hits, ``n_A <= a + (n - m)``; once that is below ``k_min`` abstention is certain
  and drawing stops. The result (prediction and radius) is exactly what the fixed-n sampler returns.
* **Multiclass** (``certificate="multiclass"``): the paper's Eq. 3, ``R = sigma/2 (Phi^-1(pA_lower) -
  Phi^-1(pB_upper))``. The failure probability is split by Bonferroni: ``alpha/2`` for the lower bound on
  ``pA`` and ``alpha/2`` shared equally by the upper bounds of the ``K - 1`` other classes; ``pB_upper`` is
  the largest of those, capped by ``1 - pA_lower`` (valid on the event that the lower bound holds).
* **Decisions** (``decide``): is the smoothed classifier certifiably robust at a given radius? Testing
  ``pA > Phi(radius * L / sigma)`` with a Clopper-Pearson bound recomputed at a data-dependent stopping time
  is *not* valid (optional stopping inflates the error). Here the bound is only looked at on a fixed
  geometric grid of sample sizes ``m_j = m_0 2^j`` (``j = 0..J-1``, ``m_{J-1} = max_n``) and each look
  spends ``alpha / J`` per side: by the union bound the probability that *any* look gives a wrong answer
  is at most ``alpha``, whenever sampling stops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from scipy.stats import norm

from lsrs.bounds import check_alpha, clopper_pearson_lower, clopper_pearson_upper

SAMPLERS = ("fixed", "curtail")
CERTIFICATES = ("binary", "multiclass")


@lru_cache(maxsize=256)
def min_certifying_count(n: int, alpha: float) -> int:
    """Smallest k with ``clopper_pearson_lower(k, n, alpha) >= 1/2`` (``n + 1`` if none): CERTIFY's threshold."""
    if clopper_pearson_lower(n, n, alpha) < 0.5:
        return n + 1
    lo, hi = 0, n  # invariant: bound(lo) < 1/2 <= bound(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if clopper_pearson_lower(mid, n, alpha) >= 0.5:
            hi = mid
        else:
            lo = mid
    return hi


def abstain_is_certain(hits: int, drawn: int, n: int, alpha: float) -> bool:
    """True when even ``n - drawn`` more hits could not lift the final count to the certifying threshold."""
    return hits + (n - drawn) < min_certifying_count(n, alpha)


@dataclass(frozen=True)
class MulticlassBound:
    p_a_lower: float
    p_b_upper: float
    radius: float  # 0 when the bounds do not separate (abstain)


def multiclass_bound(counts: list[int], top: int, n: int, alpha: float, sigma: float) -> MulticlassBound:
    """Bonferroni-split bounds and the radius of Eq. 3 (see the module docstring for the alpha split)."""
    check_alpha(alpha)
    k = len(counts)
    p_a_lower = clopper_pearson_lower(counts[top], n, alpha / 2)
    others = [c for i, c in enumerate(counts) if i != top]
    if others:
        per_class = alpha / 2 / len(others)
        p_b_upper = min(1.0 - p_a_lower, max(clopper_pearson_upper(c, n, per_class) for c in others))
    else:
        p_b_upper = 1.0 - p_a_lower
    if k < 2 or p_a_lower <= p_b_upper or p_a_lower <= 0.0:
        return MulticlassBound(p_a_lower, p_b_upper, 0.0)
    radius = sigma / 2 * (norm.ppf(p_a_lower) - norm.ppf(p_b_upper))
    return MulticlassBound(p_a_lower, p_b_upper, float(radius))


def checkpoint_schedule(max_n: int, first: int = 64) -> list[int]:
    """Geometric look times ``first, 2 first, 4 first, ...`` ending exactly at ``max_n``."""
    for name, v in (("max_n", max_n), ("first_look", first)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    looks, m = [], min(first, max_n)
    while m < max_n:
        looks.append(m)
        m *= 2
    looks.append(max_n)
    return looks


@dataclass(frozen=True)
class Decision:
    """Answer of ``decide``: ``certified`` True / False, or None when ``max_n`` samples did not settle it.

    With probability at least ``1 - alpha``: True means the smoothed classifier predicts ``prediction``
    everywhere within the asked radius; False means the Gaussian-smoothing certificate at that radius
    cannot hold (``pA`` is below the required level).
    """

    certified: bool | None
    prediction: int
    radius: float
    p_required: float
    p_a_lower: float
    p_a_upper: float
    samples_used: int
    total_s: float


def required_probability(radius: float, sigma: float, lipschitz: float = 1.0) -> float:
    """``pA`` needed to certify input radius ``radius``: ``Phi(radius * L / sigma)`` (Cohen Thm 1 + Theorem 1)."""
    if radius < 0 or not math.isfinite(radius):
        raise ValueError(f"radius must be a finite number >= 0, got {radius!r}")
    return float(norm.cdf(radius * lipschitz / sigma))


def sequential_look(hits: int, drawn: int, p_required: float, alpha_look: float) -> tuple[bool | None, float, float]:
    """One look of the union-bound test: (answer or None, lower bound, upper bound) at level ``alpha_look``."""
    lower = clopper_pearson_lower(hits, drawn, alpha_look)
    upper = clopper_pearson_upper(hits, drawn, alpha_look)
    if lower > p_required:
        return True, lower, upper
    if upper <= p_required:
        return False, lower, upper
    return None, lower, upper
