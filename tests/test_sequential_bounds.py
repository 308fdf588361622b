"""Oracle tests of the statistics behind curtailment, multiclass radii and sequential decisions."""

from __future__ import annotations

import math

import pytest
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint

from lsrs.bounds import clopper_pearson_lower
from lsrs.sequential import (
    abstain_is_certain,
    checkpoint_schedule,
    min_certifying_count,
    multiclass_bound,
    required_probability,
)


@pytest.mark.parametrize("n,alpha", [(1, 0.4), (10, 0.05), (100, 0.001), (1000, 0.001), (2500, 0.01)])
def test_min_certifying_count_is_the_exact_threshold(n: int, alpha: float) -> None:
    k = min_certifying_count(n, alpha)
    brute = next((j for j in range(n + 1) if clopper_pearson_lower(j, n, alpha) >= 0.5), n + 1)
    assert k == brute


def test_abstain_is_certain_only_when_no_continuation_certifies() -> None:
    n, alpha = 200, 0.01
    assert 100 < min_certifying_count(n, alpha) < n  # the check below is not vacuous
    for drawn in (0, 50, 120, 199):
        for hits in range(drawn + 1):
            best_final = hits + (n - drawn)
            assert abstain_is_certain(hits, drawn, n, alpha) == (clopper_pearson_lower(best_final, n, alpha) < 0.5)


def test_multiclass_bound_matches_statsmodels_bonferroni() -> None:
    counts, n, alpha, sigma = [700, 200, 100], 1000, 0.01, 0.5
    pa = proportion_confint(700, n, alpha=2 * alpha / 2, method="beta")[0]
    pb = max(proportion_confint(c, n, alpha=2 * alpha / 4, method="beta")[1] for c in (200, 100))
    bound = multiclass_bound(counts, 0, n, alpha, sigma)
    assert bound.p_a_lower == pytest.approx(pa, rel=1e-10)
    assert bound.p_b_upper == pytest.approx(min(pb, 1 - pa), rel=1e-10)
    assert bound.radius == pytest.approx(sigma / 2 * (norm.ppf(pa) - norm.ppf(min(pb, 1 - pa))), rel=1e-10)


def test_multiclass_radius_beats_binary_when_mass_is_spread() -> None:
    # Ten classes, top class 50%: binary abstains (pA_lower < 1/2) but the runner-up is far below.
    counts = [5000] + [555] * 9
    n = sum(counts)
    bound = multiclass_bound(counts, 0, n, 0.001, 0.25)
    assert clopper_pearson_lower(5000, n, 0.001) < 0.5
    assert bound.radius > 0.1


def test_multiclass_abstains_when_bounds_overlap() -> None:
    assert multiclass_bound([50, 48, 2], 0, 100, 0.001, 0.5).radius == 0.0


def test_checkpoint_schedule_is_geometric_and_ends_at_max_n() -> None:
    assert checkpoint_schedule(1000, 64) == [64, 128, 256, 512, 1000]
    assert checkpoint_schedule(50, 64) == [50]
    assert checkpoint_schedule(128, 64) == [64, 128]


def test_required_probability_inverts_the_radius_formula() -> None:
    for r, s, lip in [(0.0, 0.25, 1.0), (0.5, 0.5, 1.0), (0.25, 1.0, 2.0)]:
        p = required_probability(r, s, lip)
        assert s * norm.ppf(p) / lip == pytest.approx(r, abs=1e-12)
    with pytest.raises(ValueError):
        required_probability(-1.0, 0.5)
    assert math.isclose(required_probability(0.0, 0.3), 0.5)
