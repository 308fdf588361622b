"""CERTIFY / PREDICT of IS-RS and LS-RS (lsrs.smoothing) against analytic and statistical oracles.

The analytic oracle is a linear two-class base classifier f(x) = [w^T x + b > 0]. Its smoothed classifier
under N(0, sigma^2 I) noise is again the half-space g(x) = [w^T x + b > 0], the probability of the top class
is pA = Phi(|w^T x + b| / (sigma ||w||)), and the exact robustness radius of g at x is the distance to the
hyperplane, |w^T x + b| / ||w|| = sigma * Phi^-1(pA). A certificate is *wrong* if it predicts the wrong
class, or the right class with a radius beyond that distance (then an adversarial point lies inside the
certified ball). CERTIFY promises this happens with probability at most alpha.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.proportion import proportion_confint
from torch import nn

from lsrs.smoothing import ABSTAIN, PRECISIONS, Certificate, LatentSmooth, Smooth

HSETTINGS = settings(max_examples=12, deadline=None, database=None, derandomize=True)


# ====================================================================== models
class LinearTwoClass(nn.Module):
    """Logits (-s, s) with s = w^T x + b: class 1 iff w^T x + b > 0."""

    def __init__(self, w: np.ndarray, b: float) -> None:
        super().__init__()
        self.register_buffer("w", torch.as_tensor(np.asarray(w), dtype=torch.float32))
        self.b = float(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([-s, s], dim=1)


class ScaledOrthogonal(nn.Module):
    """The encoder z = c * Q x (Lipschitz constant exactly c for orthogonal Q); it has no proof in lsrs.proofs, so
    the smoothers take its declared bound on trust (trust_lipschitz=True)."""

    def __init__(self, c: float, q: np.ndarray | None = None) -> None:
        super().__init__()
        self.c = float(c)
        self.q = None if q is None else torch.as_tensor(q, dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x if self.q is None else x @ self.q.T
        return self.c * z


class Recorder(nn.Module):
    """Pass-through that keeps a copy of every batch the smoothed classifier feeds to ``inner``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.batches: list[torch.Tensor] = []
        self.channels_last: list[bool] = []
        self.contiguous: list[bool] = []
        self.eval()  # a module in training mode would be evaluated as a private eval-mode copy, not this one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.clone(memory_format=torch.contiguous_format))
        if x.dim() == 4:
            self.channels_last.append(x.is_contiguous(memory_format=torch.channels_last))
        self.contiguous.append(x.is_contiguous())
        return self.inner(x)

    def rows(self) -> torch.Tensor:
        return torch.cat(self.batches)


class Alternating(nn.Module):
    """A deterministic classifier that answers 0, 1, 0, 1, ... over the whole stream of samples."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = torch.arange(self.calls, self.calls + x.shape[0]) % 2
        self.calls += x.shape[0]
        return nn.functional.one_hot(k, 2).float()


class WrongShape(nn.Module):
    def __init__(self, rows: str, k: int) -> None:
        super().__init__()
        self.rows, self.k = rows, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = {"same": x.shape[0], "one": 1, "double": 2 * x.shape[0]}[self.rows]
        return torch.zeros(b, self.k)


# ====================================================================== oracle helpers
def orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def place(w: np.ndarray, b: float, radius: float, sign: int, rng: np.random.Generator) -> np.ndarray:
    """A point at signed distance ``sign * radius`` from the hyperplane w^T x + b = 0, with a random
    component parallel to the hyperplane."""
    u = w / np.linalg.norm(w)
    t = rng.standard_normal(w.shape)
    t -= (t @ u) * u
    return -b * w / (w @ w) + sign * radius * u + t


def true_class_and_distance(w: np.ndarray, b: float, x: np.ndarray) -> tuple[int, float]:
    """Class of the smoothed linear classifier at x (float64, on the float32 point actually used) and its
    exact robustness radius (distance to the decision hyperplane)."""
    m = float(np.asarray(w, np.float64) @ np.asarray(x, np.float32).astype(np.float64) + b)
    return int(m > 0), abs(m) / float(np.linalg.norm(np.asarray(w, np.float64)))


def cp_lower_table(n: int, alpha: float) -> np.ndarray:
    """Clopper-Pearson one-sided lower bounds for k = 0..n, from statsmodels (the oracle, not lsrs)."""
    k = np.arange(n + 1)
    return np.asarray(proportion_confint(k, n, alpha=2 * alpha, method="beta")[0], dtype=np.float64)


def exact_failure_probability(p_a: np.ndarray, n0: int, n: int, alpha: float) -> np.ndarray:
    """P[certificate wrong] for a two-class problem with top-class probability p_a (odd n0: no ties).

    Selection picks the true class A when more than n0/2 selection samples vote A. Given A, the certificate
    is wrong iff pA_lower(k_A) > p_a (radius sigma*Phi^-1(pA_lower) beyond sigma*Phi^-1(p_a)); given B, it is
    wrong iff it does not abstain, i.e. pA_lower(k_B) >= 1/2.
    """
    assert n0 % 2 == 1
    p_a = np.asarray(p_a, dtype=np.float64)[:, None]
    lowers = cp_lower_table(n, alpha)[None, :]
    k = np.arange(n + 1)[None, :]
    sel_a = stats.binom.sf(n0 // 2, n0, p_a[:, 0])
    wrong_a = (stats.binom.pmf(k, n, p_a) * (lowers > p_a)).sum(1)
    wrong_b = (stats.binom.pmf(k, n, 1 - p_a) * (lowers >= 0.5)).sum(1)
    return sel_a * wrong_a + (1 - sel_a) * wrong_b


def is_wrong(cert: Certificate, true_class: int, true_radius: float) -> bool:
    if cert.abstained:
        return False
    return cert.prediction != true_class or cert.radius > true_radius


def assert_at_most_alpha(failures: int, trials: int, alpha: float) -> None:
    """Failures are consistent with a rate <= alpha (one-sided exact binomial test at level 1e-3)."""
    p = stats.binomtest(failures, trials, alpha, alternative="greater").pvalue
    assert p > 1e-3, f"{failures}/{trials} wrong certificates, above alpha={alpha} (p={p:.2e})"


def assert_matches_poisson_binomial(failures: int, probs: np.ndarray) -> None:
    """Observed count within 5 standard deviations of the sum of exact per-trial probabilities."""
    mu, sd = probs.sum(), math.sqrt((probs * (1 - probs)).sum())
    assert abs(failures - mu) <= 5 * sd + 1, f"observed {failures}, expected {mu:.1f} +- {sd:.1f}"


def certify_points(smoother: LatentSmooth, xs: np.ndarray, n0: int, n: int, alpha: float, seed0: int):
    return [
        smoother.certify(torch.from_numpy(x.astype(np.float32)), n0, n, alpha, 1000, generator=seed0 + i)
        for i, x in enumerate(xs)
    ]


# ====================================================================== analytic oracle, IS-RS
N_TRIALS, N0, N_SMALL, ALPHA = 2000, 11, 100, 0.05


@pytest.fixture(scope="module")
def linear_problem():
    rng = np.random.default_rng(0)
    d, sigma, b = 5, 0.5, 0.3
    w = rng.standard_normal(d)
    p_target = rng.uniform(0.7, 0.99, N_TRIALS)
    signs = rng.choice([-1, 1], N_TRIALS)
    xs = np.stack(
        [place(w, b, sigma * stats.norm.ppf(p), s, rng) for p, s in zip(p_target, signs, strict=True)]
    )
    truth = [true_class_and_distance(w, b, x) for x in xs]
    classes = np.array([t[0] for t in truth])
    radii = np.array([t[1] for t in truth])
    return {"w": w, "b": b, "sigma": sigma, "xs": xs, "classes": classes, "radii": radii}


@pytest.fixture(scope="module")
def is_rs_trials(linear_problem):
    lp = linear_problem
    smoother = Smooth(LinearTwoClass(lp["w"], lp["b"]), num_classes=2, sigma=lp["sigma"], input_range=None)
    return certify_points(smoother, lp["xs"], N0, N_SMALL, ALPHA, seed0=10_000)


def test_linear_oracle_smoothed_probability_is_phi(linear_problem) -> None:
    """Sanity of the oracle itself: empirical pA over 200k samples matches Phi(margin / (sigma ||w||))."""
    lp = linear_problem
    x = lp["xs"][0]
    smoother = Smooth(LinearTwoClass(lp["w"], lp["b"]), num_classes=2, sigma=lp["sigma"], input_range=None)
    cert = smoother.certify(torch.from_numpy(x.astype(np.float32)), 1, 200_000, 0.001, 50_000, generator=1)
    p = stats.norm.cdf(lp["radii"][0] / lp["sigma"])
    k = cert.counts_estimation[lp["classes"][0]]
    assert abs(k / 200_000 - p) < 5 * math.sqrt(p * (1 - p) / 200_000)


def test_is_rs_certificates_wrong_at_most_alpha(linear_problem, is_rs_trials) -> None:
    """Over 2,000 independent CERTIFY runs (n0=11, n=100, alpha=0.05, pA in [0.7, 0.99], x varied), the share
    of wrong certificates (wrong class, or radius beyond the exact distance to the boundary) is <= alpha."""
    lp = linear_problem
    wrong = sum(is_wrong(c, k, r) for c, k, r in zip(is_rs_trials, lp["classes"], lp["radii"], strict=True))
    assert_at_most_alpha(wrong, N_TRIALS, ALPHA)
    # the check is not vacuous: most certificates are non-trivial
    certified = [c for c in is_rs_trials if not c.abstained]
    assert len(certified) > 0.9 * N_TRIALS
    assert np.mean([c.radius for c in certified]) > 0.5 * lp["radii"].mean()


def test_is_rs_failure_rate_matches_exact_binomial_computation(linear_problem, is_rs_trials) -> None:
    """The number of wrong certificates matches the exact per-trial probability computed from the binomial
    law and statsmodels' Clopper-Pearson bounds (checks the sampling, not only conservativeness)."""
    lp = linear_problem
    wrong = sum(is_wrong(c, k, r) for c, k, r in zip(is_rs_trials, lp["classes"], lp["radii"], strict=True))
    probs = exact_failure_probability(stats.norm.cdf(lp["radii"] / lp["sigma"]), N0, N_SMALL, ALPHA)
    assert probs.max() <= ALPHA
    assert_matches_poisson_binomial(wrong, probs)


def test_is_rs_certificate_fields_match_oracle(linear_problem, is_rs_trials) -> None:
    """Each certificate's pA_lower, radius and bookkeeping agree with statsmodels and the closed form."""
    sigma = linear_problem["sigma"]
    lowers = cp_lower_table(N_SMALL, ALPHA)
    for c in is_rs_trials[:300]:
        assert sum(c.counts_selection) == N0 and sum(c.counts_estimation) == N_SMALL
        c_a = int(np.argmax(c.counts_selection))
        assert c.p_a_lower == pytest.approx(lowers[c.counts_estimation[c_a]], rel=1e-9, abs=1e-14)
        if c.p_a_lower < 0.5:
            assert c.prediction == ABSTAIN and c.radius == 0.0 and c.radius_latent == 0.0
        else:
            assert c.prediction == c_a
            assert c.radius == pytest.approx(sigma * stats.norm.ppf(c.p_a_lower), rel=1e-9)
            assert c.radius_latent == c.radius
        assert (c.n0, c.n, c.alpha, c.sigma, c.lipschitz) == (N0, N_SMALL, ALPHA, sigma, 1.0)
        assert c.samples_used == N0 + N_SMALL
        assert min(c.encode_s, c.sample_s, c.total_s) >= 0.0


@pytest.mark.parametrize("p_a", [0.75, 0.9, 0.99])
def test_large_n_radius_approaches_true_radius(p_a: float) -> None:
    """With n = 10^6 and alpha = 0.001 the certified radius is below the exact one and within 2 % of it
    (theory: the gap is about z_(1-alpha) * sqrt(pA(1-pA)/n) / phi(Phi^-1(pA)) * sigma, under 1 %)."""
    rng = np.random.default_rng(int(p_a * 100))
    sigma, b = 0.25, -0.4
    w = rng.standard_normal(3)
    x = place(w, b, sigma * stats.norm.ppf(p_a), 1, rng)
    cls, true_r = true_class_and_distance(w, b, x)
    smoother = Smooth(LinearTwoClass(w, b), num_classes=2, sigma=sigma, input_range=None)
    cert = smoother.certify(
        torch.from_numpy(x.astype(np.float32)), 100, 1_000_000, 0.001, 200_000, generator=7
    )
    assert cert.prediction == cls == 1
    assert cert.radius <= true_r
    assert cert.radius >= 0.98 * true_r


# ====================================================================== LS-RS vs IS-RS
@pytest.mark.parametrize("c", [2.0, 0.5, 4.0])
def test_ls_rs_scaled_identity_equals_is_rs_exactly(c: float) -> None:
    """Encoder c*I with lipschitz=c, latent noise sigma  ==  IS-RS of f(c x) with noise sigma/c.

    Both consume the same noise stream eps: LS classifies c*x + sigma*eps, IS classifies c*(x + sigma/c*eps),
    which is the same float32 number for c a power of two. So counts, pA_lower and the input radius
    R_z / c = (sigma/c) * Phi^-1(pA_lower) coincide certificate by certificate."""
    rng = np.random.default_rng(1)
    d, sigma, b = 3, 0.5, 0.1
    v = rng.standard_normal(d)
    f_c = LinearTwoClass(v, b)
    ls = LatentSmooth(ScaledOrthogonal(c), f_c, num_classes=2, sigma=sigma, lipschitz=c, trust_lipschitz=True, input_range=None)
    is_ = Smooth(nn.Sequential(ScaledOrthogonal(c), f_c), num_classes=2, sigma=sigma / c, input_range=None)
    for i in range(25):
        x = torch.from_numpy(place(v * c, b, sigma / c * stats.norm.ppf(rng.uniform(0.6, 0.99)), 1, rng))
        x = x.float()
        a = ls.certify(x, 31, 500, 0.01, 128, generator=i)
        r = is_.certify(x, 31, 500, 0.01, 128, generator=i)
        assert a.counts_selection == r.counts_selection
        assert a.counts_estimation == r.counts_estimation
        assert a.prediction == r.prediction and a.p_a_lower == r.p_a_lower
        assert a.radius == pytest.approx(r.radius, rel=1e-12, abs=0)
        assert a.radius_latent == pytest.approx(c * a.radius, rel=1e-12, abs=0)
        assert a.lipschitz == c and r.lipschitz == 1.0


N_LS = 2000


@pytest.fixture(scope="module")
def scaled_orthogonal_problem():
    """Encoder 3*Q (Q a random 4x4 orthogonal), latent linear classifier (v, b); x varied with pA in
    [0.7, 0.99]. The composed input-space classifier is x -> [3 (Q^T v)^T x + b > 0]."""
    rng = np.random.default_rng(2)
    d, c, sigma, b = 4, 3.0, 0.6, -0.2
    q = orthogonal(d, rng)
    v = rng.standard_normal(d)
    w_in = c * q.T @ v  # input-space weight of the composed classifier
    p_target = rng.uniform(0.7, 0.99, N_LS)
    signs = rng.choice([-1, 1], N_LS)
    xs = np.stack(
        [place(w_in, b, sigma / c * stats.norm.ppf(p), s, rng) for p, s in zip(p_target, signs, strict=True)]
    )
    truth = [true_class_and_distance(w_in, b, x) for x in xs]
    classes = np.array([t[0] for t in truth])
    # exact input-space robustness radius of the LS-smoothed classifier
    radii = np.array([t[1] for t in truth])
    encoder, f_c = ScaledOrthogonal(c, q), LinearTwoClass(v, b)
    return {
        "c": c,
        "sigma": sigma,
        "xs": xs,
        "classes": classes,
        "radii": radii,
        "encoder": encoder,
        "f_c": f_c,
    }


def test_ls_rs_orthogonal_encoder_sound_and_equal_in_distribution(scaled_orthogonal_problem) -> None:
    """LS-RS with encoder c*Q and lipschitz=c: wrong certificates <= alpha against the exact input-space radius,
    failure count matching the exact binomial computation, and the estimation counts distributed like those of
    IS-RS on the composed classifier with noise sigma/c (both match Binomial(n, pA) and each other)."""
    sp = scaled_orthogonal_problem
    c, sigma, xs = sp["c"], sp["sigma"], sp["xs"]
    ls = LatentSmooth(sp["encoder"], sp["f_c"], num_classes=2, sigma=sigma, lipschitz=c, trust_lipschitz=True, input_range=None)
    is_ = Smooth(nn.Sequential(sp["encoder"], sp["f_c"]), num_classes=2, sigma=sigma / c, input_range=None)
    ls_certs = certify_points(ls, xs, N0, N_SMALL, ALPHA, seed0=50_000)
    is_certs = certify_points(is_, xs, N0, N_SMALL, ALPHA, seed0=90_000)

    p_a = stats.norm.cdf(sp["radii"] * c / sigma)
    probs = exact_failure_probability(p_a, N0, N_SMALL, ALPHA)
    for certs in (ls_certs, is_certs):
        wrong = sum(is_wrong(ct, k, r) for ct, k, r in zip(certs, sp["classes"], sp["radii"], strict=True))
        assert_at_most_alpha(wrong, N_LS, ALPHA)
        assert_matches_poisson_binomial(wrong, probs)

    # counts of the true class: sum over trials ~ sum of Binomial(n, pA_i)
    k_ls = np.array([ct.counts_estimation[k] for ct, k in zip(ls_certs, sp["classes"], strict=True)])
    k_is = np.array([ct.counts_estimation[k] for ct, k in zip(is_certs, sp["classes"], strict=True)])
    mu, var = N_SMALL * p_a.sum(), N_SMALL * (p_a * (1 - p_a)).sum()
    assert abs(k_ls.sum() - mu) < 5 * math.sqrt(var)
    assert abs(k_is.sum() - mu) < 5 * math.sqrt(var)
    assert abs(k_ls.sum() - k_is.sum()) < 5 * math.sqrt(2 * var)
    # the two certified-radius distributions are indistinguishable
    r_ls = np.array([ct.radius for ct in ls_certs])
    r_is = np.array([ct.radius for ct in is_certs])
    assert stats.ks_2samp(r_ls, r_is).pvalue > 1e-3
    # the input radius is the latent one divided by L
    for ct in ls_certs[:200]:
        assert ct.radius == pytest.approx(ct.radius_latent / c, rel=1e-12, abs=0)


def test_understated_lipschitz_is_caught(scaled_orthogonal_problem) -> None:
    """Declaring lipschitz=1 for the encoder 3*Q over-claims: the exact input radius is exceeded far more often
    than alpha, so the soundness check above would fail for a wrong L."""
    sp = scaled_orthogonal_problem
    m = 400
    wrong_l = LatentSmooth(sp["encoder"], sp["f_c"], num_classes=2, sigma=sp["sigma"], lipschitz=1.0,
                           trust_lipschitz=True, input_range=None)  # the caller vouches for a wrong bound: nothing can catch it
    certs = certify_points(wrong_l, sp["xs"][:m], N0, N_SMALL, ALPHA, seed0=130_000)
    wrong = sum(
        is_wrong(ct, k, r) for ct, k, r in zip(certs, sp["classes"][:m], sp["radii"][:m], strict=True)
    )
    assert wrong > 0.5 * m
    assert stats.binomtest(wrong, m, ALPHA, alternative="greater").pvalue < 1e-12
    with pytest.raises(AssertionError):
        assert_at_most_alpha(wrong, m, ALPHA)


# ====================================================================== batch-size independence
def _run_recorded(
    model: nn.Module, x: torch.Tensor, batch_size: int, channels_last: bool = False, k: int = 2
):
    rec = Recorder(model)
    smoother = Smooth(rec, num_classes=k, sigma=0.7, channels_last=channels_last, input_range=None)
    cert = smoother.certify(x, 37, 300, 0.01, batch_size, generator=2024)
    return cert, rec


@HSETTINGS
@given(batch_size=st.integers(min_value=1, max_value=1000))
@example(batch_size=1)
@example(batch_size=7)
@example(batch_size=63)
@example(batch_size=64)
@example(batch_size=65)
@example(batch_size=1000)
def test_counts_and_noise_independent_of_batch_size(batch_size: int) -> None:
    """Under a fixed seed the classifier sees bitwise the same noisy inputs, hence the same counts, whatever
    the batch size (including sizes that are not multiples of the noise block 64)."""
    model = LinearTwoClass(np.array([1.0, -2.0, 0.5]), 0.2)
    x = torch.tensor([0.3, 0.1, -0.2])
    ref, ref_rec = _run_recorded(model, x, 100_000)
    cert, rec = _run_recorded(model, x, batch_size)
    assert cert.counts_selection == ref.counts_selection
    assert cert.counts_estimation == ref.counts_estimation
    assert torch.equal(rec.rows(), ref_rec.rows())
    assert all(bt.shape[0] <= batch_size for bt in rec.batches)


@pytest.mark.parametrize("channels_last", [False, True])
def test_image_noise_independent_of_batch_size_and_memory_format(channels_last: bool) -> None:
    """4-D inputs: the same noisy images (values) and counts for batch sizes 1..1000 and channels_last on/off;
    the classifier receives channels_last memory exactly when asked for."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    x = torch.rand(3, 4, 4)
    ref, ref_rec = _run_recorded(model, x, 100_000, channels_last=False, k=3)
    for bs in (1, 7, 63, 64, 65, 1000):
        cert, rec = _run_recorded(model, x, bs, channels_last=channels_last, k=3)
        assert cert.counts_selection == ref.counts_selection
        assert cert.counts_estimation == ref.counts_estimation
        assert torch.equal(rec.rows(), ref_rec.rows())
        if channels_last:
            assert all(rec.channels_last)
        else:
            assert all(rec.contiguous)


# ====================================================================== abstain path
def test_exact_tie_abstains_with_zero_radius() -> None:
    """A classifier that splits exactly 50/50 gives pA_lower < 1/2: abstain, radius 0."""
    for n in (2, 100, 1000):
        smoother = Smooth(Alternating(), num_classes=2, sigma=0.5, input_range=None)
        cert = smoother.certify(torch.zeros(2), 10, n, 0.001, 64, generator=3)
        assert cert.counts_estimation == (n // 2, n // 2)
        assert cert.abstained and cert.prediction == ABSTAIN
        assert cert.radius == 0.0 and cert.radius_latent == 0.0
        assert cert.p_a_lower == pytest.approx(cp_lower_table(n, 0.001)[n // 2])
        assert cert.p_a_lower < 0.5


def test_boundary_point_abstains_at_least_one_minus_alpha() -> None:
    """x on the decision boundary of a linear f (pA = 1/2 exactly): the certificate does not abstain with
    probability P_k~Bin(n,1/2)[pA_lower(k) >= 1/2] <= alpha; 400 independent runs agree with that."""
    n, alpha, trials = 60, 0.05, 400
    w = np.array([0.8, -0.6])
    smoother = Smooth(LinearTwoClass(w, 0.0), num_classes=2, sigma=1.0, input_range=None)
    certs = [smoother.certify(torch.zeros(2), 5, n, alpha, 1000, generator=i) for i in range(trials)]
    assert all(c.radius == 0.0 for c in certs if c.abstained)
    answered = sum(not c.abstained for c in certs)
    p_answer = float(stats.binom.pmf(np.arange(n + 1), n, 0.5) @ (cp_lower_table(n, alpha) >= 0.5))
    assert p_answer <= alpha
    assert_at_most_alpha(answered, trials, alpha)
    assert stats.binomtest(answered, trials, p_answer).pvalue > 1e-3


# ====================================================================== PREDICT
def test_predict_confident_classifier_returns_class() -> None:
    rng = np.random.default_rng(5)
    w, b = np.array([2.0, 1.0, -1.0]), 0.5
    smoother = Smooth(LinearTwoClass(w, b), num_classes=2, sigma=0.1, input_range=None)
    for i in range(20):
        sign = 1 if i % 2 else -1
        x = place(w, b, 1.0, sign, rng)  # 10 sigma from the boundary
        assert smoother.predict(torch.from_numpy(x).float(), 200, 0.001, 64, generator=i) == int(sign > 0)


def test_predict_exact_tie_abstains() -> None:
    """PREDICT on a fair 50/50 base classifier abstains at least (1 - alpha) of the time: over 2,000 runs the
    answer rate is <= alpha and matches the exact rejection probability of scipy's binomial test."""
    n, alpha, trials = 50, 0.05, 2000
    smoother = Smooth(LinearTwoClass(np.array([1.0, 1.0]), 0.0), num_classes=2, sigma=1.0, input_range=None)
    answers = [smoother.predict(torch.zeros(2), n, alpha, 1000, generator=i) for i in range(trials)]
    assert set(answers) <= {ABSTAIN, 0, 1}
    answered = sum(a != ABSTAIN for a in answers)
    reject = np.array([stats.binomtest(k, n, 0.5).pvalue <= alpha for k in range(n + 1)])
    p_answer = float(stats.binom.pmf(np.arange(n + 1), n, 0.5) @ reject)
    assert p_answer <= alpha
    assert_at_most_alpha(answered, trials, alpha)
    assert stats.binomtest(answered, trials, p_answer).pvalue > 1e-3
    # a deterministic exact tie always abstains
    tie = Smooth(Alternating(), num_classes=2, sigma=1.0, input_range=None)
    assert all(tie.predict(torch.zeros(2), 100, alpha, 33, generator=i) == ABSTAIN for i in range(10))


# ====================================================================== noise independence
def test_selection_estimation_and_predict_noise_are_independent() -> None:
    """With one seed, selection, estimation and PREDICT draw from different streams: no noise vector is reused,
    and the streams are uncorrelated; the same seed reproduces the same certificate."""
    sigma, n0, n = 0.5, 64, 256
    x = torch.tensor([0.2, -0.1, 0.4, 0.0])
    rec = Recorder(LinearTwoClass(np.array([1.0, 0.0, 0.0, 0.0]), 0.0))
    smoother = Smooth(rec, num_classes=2, sigma=sigma, input_range=None)
    cert = smoother.certify(x, n0, n, 0.01, 10_000, generator=42)
    sel, est = (bt - x for bt in rec.batches)
    assert sel.shape == (n0, 4) and est.shape == (n, 4)
    smoother.predict(x, n, 0.01, 10_000, generator=42)
    pred = rec.batches[2] - x
    rows = [set(map(tuple, t.tolist())) for t in (sel, est, pred)]
    assert rows[0].isdisjoint(rows[1]) and rows[0].isdisjoint(rows[2]) and rows[1].isdisjoint(rows[2])
    assert not torch.isclose(sel, est[:n0]).any()
    for a, b in ((sel, est[:n0]), (est, pred)):
        r = np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]
        assert abs(r) < 5 / math.sqrt(a.numel())
    timings = {f: 0.0 for f in ("encode_s", "sample_s", "total_s")}
    again = smoother.certify(x, n0, n, 0.01, 7, generator=42)  # same seed, another batch size
    assert dataclasses.replace(again, **timings) == dataclasses.replace(cert, **timings)
    del rec.batches[:]
    smoother.certify(x, n0, n, 0.01, 10_000, generator=43)  # another seed: other noise
    assert not torch.isclose(rec.batches[0] - x, sel).any()
    assert not torch.isclose(rec.batches[1] - x, est).any()


def test_every_noise_sample_of_a_certificate_is_distinct() -> None:
    """n0 = 100, n = 100,000 on a 4-float input: the 100,100 noisy inputs the classifier sees are pairwise
    different, so no 64-sample noise block repeats and selection and estimation share none. Seed 1158 used
    to draw estimation blocks 494 and 589 from generators seeded equal in the low 32 bits (64 repeats)."""
    x = torch.tensor([0.2, -0.1, 0.4, 0.0])
    rec = Recorder(LinearTwoClass(np.array([1.0, 0.0, 0.0, 0.0]), 0.0))
    cert = Smooth(rec, num_classes=2, sigma=0.5, input_range=None).certify(x, 100, 100_000, 0.01, 10_000, generator=1158)
    rows = rec.rows().numpy()
    assert cert.samples_used == rows.shape[0] == 100_100
    assert len(np.unique(rows, axis=0)) == 100_100


def test_torch_generator_is_reproducible() -> None:
    smoother = Smooth(LinearTwoClass(np.array([1.0, -1.0]), 0.1), num_classes=2, sigma=0.5, input_range=None)
    a = smoother.certify(torch.zeros(2), 20, 500, 0.01, 64, generator=torch.Generator().manual_seed(8))
    b = smoother.certify(torch.zeros(2), 20, 500, 0.01, 64, generator=torch.Generator().manual_seed(8))
    assert (a.counts_selection, a.counts_estimation) == (b.counts_selection, b.counts_estimation)


# ====================================================================== reduced precision
class TinyConvNet(nn.Module):
    """conv -> ReLU -> mean -> linear: the layers autocast runs in reduced precision."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_certify_counts_every_sample_and_agrees_with_fp32(precision: str) -> None:
    """CERTIFY with an autocast base classifier: every sample is counted once, its logits really are reduced
    precision, and the certificate's class and radius agree with fp32 on the same noise (to the tolerance of
    a few flipped votes)."""
    model = TinyConvNet().eval()
    x = torch.rand(3, 8, 8)
    dtypes = []
    model.fc.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    low = Smooth(model, 3, 0.25, precision=precision, input_range=None).certify(x, 50, 2000, 0.001, 128, generator=11)
    assert dtypes and set(dtypes) == {PRECISIONS[precision]}
    dtypes.clear()
    ref = Smooth(model, 3, 0.25, input_range=None).certify(x, 50, 2000, 0.001, 128, generator=11)
    assert set(dtypes) == {torch.float32}
    assert sum(low.counts_selection) == 50 and sum(low.counts_estimation) == 2000
    assert low.prediction == ref.prediction
    flipped = np.abs(np.subtract(low.counts_estimation, ref.counts_estimation)).sum() / 2
    assert flipped <= 0.05 * 2000, (low.counts_estimation, ref.counts_estimation)


# ====================================================================== bad arguments
_LIN = LinearTwoClass(np.array([1.0, 1.0]), 0.0)


def _smooth(**kw) -> Smooth:
    return Smooth(kw.pop("model", _LIN), kw.pop("num_classes", 2), kw.pop("sigma", 0.5), **kw)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: _smooth(sigma=0.0), id="sigma=0"),
        pytest.param(lambda: _smooth(sigma=-0.25), id="sigma<0"),
        pytest.param(lambda: _smooth(sigma=float("nan")), id="sigma=nan"),
        pytest.param(lambda: _smooth(sigma=float("inf")), id="sigma=inf"),
        pytest.param(lambda: _smooth(num_classes=0), id="num_classes=0"),
        pytest.param(lambda: _smooth(precision="fp64"), id="precision"),
        pytest.param(lambda: _smooth(noise_block=0), id="noise_block=0"),
        pytest.param(lambda: LatentSmooth(nn.Identity(), _LIN, 2, 0.5, lipschitz=0.0, input_range=None), id="lipschitz=0"),
        pytest.param(lambda: LatentSmooth(nn.Identity(), _LIN, 2, 0.5, lipschitz=-1.0, input_range=None), id="lipschitz<0"),
        pytest.param(lambda: LatentSmooth(nn.Identity(), _LIN, 2, 0.5, lipschitz=float("nan"), input_range=None), id="lip=nan"),
    ],
)
def test_bad_constructor_arguments_raise(build) -> None:
    with pytest.raises(ValueError):
        build()


_X = torch.zeros(2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n0": 0},
        {"n0": -3},
        {"n0": 1.5},
        {"n": 0},
        {"n": -1},
        {"n": 10.0},
        {"alpha": 0.0},
        {"alpha": 1.0},
        {"alpha": -0.1},
        {"alpha": 1.5},
        {"alpha": float("nan")},
        {"batch_size": 0},
        {"batch_size": -8},
    ],
    ids=str,
)
def test_bad_certify_arguments_raise(kwargs: dict) -> None:
    args = {"n0": 10, "n": 100, "alpha": 0.01, "batch_size": 16, **kwargs}
    with pytest.raises(ValueError):
        _smooth().certify(_X, generator=0, **args)


@pytest.mark.parametrize(
    "kwargs",
    [{"n": 0}, {"n": -1}, {"alpha": 0.0}, {"alpha": 1.0}, {"alpha": 2.0}, {"batch_size": 0}],
    ids=str,
)
def test_bad_predict_arguments_raise(kwargs: dict) -> None:
    args = {"n": 100, "alpha": 0.01, "batch_size": 16, **kwargs}
    with pytest.raises(ValueError):
        _smooth().predict(_X, generator=0, **args)


@pytest.mark.parametrize(("rows", "k"), [("same", 3), ("same", 1), ("one", 2), ("double", 2)])
def test_wrong_logits_shape_raises(rows: str, k: int) -> None:
    """A classifier returning the wrong number of logits (or of rows) is an error, not silent miscounting."""
    smoother = _smooth(model=WrongShape(rows, k))
    with pytest.raises(ValueError):
        smoother.certify(_X, 10, 100, 0.01, 16, generator=0)
    with pytest.raises(ValueError):
        smoother.predict(_X, 100, 0.01, 16, generator=0)
