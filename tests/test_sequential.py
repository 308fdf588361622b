"""Curtailment, multiclass certificates and anytime-valid decisions against analytic oracles (issue 10).

Oracles: for a linear two-class classifier f(x) = [w.x + b > 0] smoothed with N(0, sigma^2 I), the top-class
probability is Phi(|w.x + b| / (sigma |w|)) and the exact robust radius is |w.x + b| / |w|. For a three-class
linear classifier in 2-D the class probabilities are bivariate normal orthant probabilities (scipy).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import beta, binomtest, multivariate_normal, norm

from lsrs import ABSTAIN, Smooth

ALPHA = 0.05
TRIALS = 2000


def _two_class(w: torch.Tensor, b: float) -> torch.nn.Module:
    lin = torch.nn.Linear(w.numel(), 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([torch.zeros_like(w), w]))
        lin.bias.copy_(torch.tensor([0.0, b]))
    return lin


def _not_above_alpha(failures: int, trials: int, alpha: float) -> bool:
    """One-sided binomial test: is the failure rate compatible with <= alpha (p > 1e-3)?"""
    return binomtest(failures, trials, alpha, alternative="greater").pvalue > 1e-3


@pytest.fixture(scope="module")
def linear_setup():
    w = torch.tensor([0.6, -0.8])  # |w| = 1: the margin is the distance to the boundary
    sigma = 0.5
    return w, sigma, Smooth(_two_class(w, 0.0), 2, sigma, input_range=None)


def test_curtail_returns_fixed_certificates_and_saves_samples_on_abstentions(linear_setup) -> None:
    w, sigma, smooth = linear_setup
    rng = np.random.default_rng(0)
    abstain_used, abstain_n, certified = [], 0, 0
    for trial in range(150):
        margin = rng.uniform(-0.6, 0.6) if trial % 3 else rng.uniform(-0.05, 0.05)  # many near the boundary
        x = torch.tensor([0.6, -0.8]) * margin
        for certificate in ("binary", "multiclass"):
            fixed = smooth.certify(x, 20, 400, 0.01, 64, generator=trial, certificate=certificate)
            curt = smooth.certify(x, 20, 400, 0.01, 64, generator=trial, sampler="curtail", certificate=certificate)
            assert (curt.prediction, curt.radius, curt.radius_latent) == (fixed.prediction, fixed.radius,
                                                                           fixed.radius_latent)
            assert curt.samples_used <= fixed.samples_used
            if fixed.prediction != ABSTAIN:
                certified += 1
                assert curt.samples_used == fixed.samples_used and curt.p_a_lower == fixed.p_a_lower
            else:
                abstain_used.append(curt.samples_used)
                abstain_n += 1
    assert abstain_n >= 40 and certified >= 40
    # On abstentions curtailment stops early: on average far fewer than n0 + n = 420 samples.
    assert np.mean(abstain_used) < 0.97 * 420, np.mean(abstain_used)


def _decide_trials(smooth, sigma, trials, radius_offset, max_n, seed0):
    """Run `decide` at a radius near the exact one; return (#wrong claims, #answers, mean samples)."""
    rng = np.random.default_rng(seed0)
    wrong = answered = 0
    used = []
    for t in range(trials):
        margin = rng.uniform(0.1, 0.9)
        x = torch.tensor([0.6, -0.8]) * margin  # class 1 side, exact radius = margin
        asked = max(0.0, margin + radius_offset * rng.choice([-1.0, 1.0]))
        d = smooth.decide(x, asked, ALPHA, max_n, 256, generator=seed0 * 100_000 + t, n0=20)
        used.append(d.samples_used)
        if d.certified is None:
            continue
        answered += 1
        if d.certified and (d.prediction != 1 or margin < asked):
            wrong += 1
        if d.certified is False and margin > asked:
            wrong += 1
    return wrong, answered, float(np.mean(used))


def test_decide_wrong_claims_at_most_alpha_near_the_boundary(linear_setup) -> None:
    _, sigma, smooth = linear_setup
    wrong, answered, _ = _decide_trials(smooth, sigma, TRIALS, radius_offset=0.05, max_n=2000, seed0=1)
    assert answered > TRIALS // 4  # the test is not vacuous
    assert _not_above_alpha(wrong, TRIALS, ALPHA), (wrong, answered)


def test_decide_needs_far_fewer_samples_than_fixed_n_when_the_answer_is_clear(linear_setup) -> None:
    _, sigma, smooth = linear_setup
    max_n = 100_000
    wrong, answered, mean_used = _decide_trials(smooth, sigma, 200, radius_offset=0.3, max_n=max_n, seed0=2)
    assert answered == 200 and _not_above_alpha(wrong, 200, ALPHA)
    assert mean_used < 0.05 * max_n, mean_used  # measured here: a few hundred samples on average


def test_naive_fixed_n_bound_at_a_stopping_time_exceeds_alpha() -> None:
    """The invalid variant: a fixed-n Clopper-Pearson bound re-checked after every batch (optional stopping).

    The true pA sits just below the required level, so every 'certified' answer is wrong. The valid
    union-bound test (``decide``) keeps wrong answers <= alpha on the same oracle; the naive one does not.
    """
    sigma, radius = 0.5, 0.25
    w = torch.tensor([1.0])
    classifier = _two_class(w, 0.0)
    smooth = Smooth(classifier, 2, sigma, input_range=None)
    margin = radius - 0.01  # exact radius just below the asked one: pA < required
    x = torch.tensor([margin])
    p_required = norm.cdf(radius / sigma)
    trials, step, max_n = 600, 10, 3000
    looks = np.arange(step, max_n + 1, step)
    gen = torch.Generator().manual_seed(0)
    naive_wrong = valid_wrong = 0
    for t in range(trials):
        noisy = x + sigma * torch.randn(max_n, 1, generator=gen)
        with torch.no_grad():
            hits = np.cumsum((classifier(noisy).argmax(1) == 1).numpy())[looks - 1]
        lower = beta.ppf(ALPHA, hits, looks - hits + 1)  # fixed-n bound, looked at after every batch
        upper = beta.ppf(1 - ALPHA, hits + 1, looks - hits)
        decided = np.flatnonzero((lower > p_required) | (upper <= p_required))
        naive_wrong += bool(decided.size and lower[decided[0]] > p_required)
        d = smooth.decide(x, radius, ALPHA, max_n, 256, generator=10_000 + t, n0=20)
        valid_wrong += bool(d.certified)
    assert not _not_above_alpha(naive_wrong, trials, ALPHA), naive_wrong  # the oracle catches the mistake
    assert _not_above_alpha(valid_wrong, trials, ALPHA), valid_wrong


def _three_class_probs(W: np.ndarray, b: np.ndarray, x: np.ndarray, sigma: float) -> np.ndarray:
    """Exact P(argmax(W(x + xi) + b) = c), xi ~ N(0, sigma^2 I_2), via bivariate normal orthant probabilities.

    ``x`` is one point (2,) -> probabilities (3,), or many points (m, 2) -> (m, 3): the covariance depends on
    the class only, so scipy evaluates each class's orthant probability at all points in one call."""
    points = np.atleast_2d(x)
    probs = []
    for c in range(3):
        others = [j for j in range(3) if j != c]
        D = np.stack([W[c] - W[j] for j in others])  # class c wins iff D(x + xi) + e > 0
        e = np.array([b[c] - b[j] for j in others])
        upper = points @ D.T + e  # -D xi < upper
        cov = sigma**2 * D @ D.T
        probs.append(np.atleast_1d(multivariate_normal(mean=np.zeros(2), cov=cov).cdf(upper)))
    out = np.stack(probs, axis=-1)
    return out[0] if np.ndim(x) == 1 else out


def test_multiclass_certificates_wrong_at_most_alpha_on_three_class_oracle() -> None:
    angles = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
    W = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    b = np.zeros(3)
    lin = torch.nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(W, dtype=torch.float32))
        lin.bias.zero_()
    sigma = 0.5
    smooth = Smooth(lin, 3, sigma, input_range=None)
    rng = np.random.default_rng(3)
    trials = TRIALS
    points = []
    for _ in range(trials):  # the same points, drawn in the same order as one per trial
        r, phi = rng.uniform(0.0, 0.8), rng.uniform(0, 2 * np.pi)
        points.append([r * np.cos(phi), r * np.sin(phi)])
    xs = np.array(points)
    certs = [smooth.certify(torch.tensor(x, dtype=torch.float32), 10, 100, ALPHA, 128, generator=t,
                            certificate="multiclass") for t, x in enumerate(xs)]
    probs = np.clip(_three_class_probs(W, b, xs, sigma), 1e-12, 1 - 1e-12)  # (trials, 3), one scipy call a class
    wrong = certified = 0
    for cert, p in zip(certs, probs, strict=True):
        if cert.prediction == ABSTAIN:
            continue
        certified += 1
        p_a = p[cert.prediction]
        p_b = max(p[j] for j in range(3) if j != cert.prediction)
        true_bound = sigma / 2 * (norm.ppf(p_a) - norm.ppf(p_b))
        if cert.radius > true_bound + 1e-9:
            wrong += 1
    assert certified > trials // 4
    assert _not_above_alpha(wrong, trials, ALPHA), (wrong, certified)


def test_three_class_oracle_probabilities_sum_to_one() -> None:
    angles = np.array([0.3, 2.0, 4.4])
    W = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    p = _three_class_probs(W, np.array([0.1, -0.2, 0.0]), np.array([0.2, -0.1]), 0.7)
    assert math.isclose(p.sum(), 1.0, abs_tol=1e-4)
    xs = np.array([[0.2, -0.1], [0.0, 0.0], [-0.5, 0.3]])
    many = _three_class_probs(W, np.array([0.1, -0.2, 0.0]), xs, 0.7)
    assert many.shape == (3, 3)
    for x, row in zip(xs, many, strict=True):  # the one-call evaluation equals the point-by-point one
        np.testing.assert_allclose(row, _three_class_probs(W, np.array([0.1, -0.2, 0.0]), x, 0.7), atol=1e-6)


def test_bad_sampler_and_certificate_raise(linear_setup) -> None:
    _, _, smooth = linear_setup
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="sampler"):
        smooth.certify(x, 10, 10, 0.1, 10, sampler="sequential")
    with pytest.raises(ValueError, match="certificate"):
        smooth.certify(x, 10, 10, 0.1, 10, certificate="ternary")
    with pytest.raises(ValueError):
        smooth.decide(x, -0.1, 0.1, 100, 10)
    with pytest.raises(ValueError):
        smooth.decide(x, 0.1, 0.1, 0, 10)
