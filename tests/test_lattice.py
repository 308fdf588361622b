"""Lattice noise (lsrs.lattice): the exact sampler, its table, the radius, the quantized latent, the streams."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy.stats import chisquare, norm
from torch import nn

from lsrs.lattice import (
    LatticeNoiseStream,
    cell_probabilities,
    compute_table,
    draws_from_words,
    lattice_spec,
    lattice_table,
    on_input_lattice,
    padded_table,
    quantization_penalty,
    to_input_lattice,
)
from lsrs.noise import block_uniform_bits, philox_key, stream_generator
from lsrs.smoothing import ABSTAIN, LatentSmooth, Smooth


def _image(seed: int, shape: tuple[int, ...] = (1, 4, 4)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g).float() / 255


# ------------------------------------------------------------------ the table and the sampler
@pytest.mark.parametrize("scale", [1.0, 3.7, 63.75])
def test_table_equals_an_independent_high_precision_computation(scale: float) -> None:
    """T_k = floor(2^64 Phi((k + 1/2)/s)) - 2^63, against mpmath's ncdf at 256 bits (another function, no symmetry)."""
    table = compute_table(scale)
    ks = list(range(-table.half_width, table.half_width))
    with mpmath.workprec(256):
        want = [int(mpmath.floor(mpmath.ncdf((mpmath.mpf(k) + 0.5) / mpmath.mpf(scale)) * 2**64)) - 2**63
                for k in ks[:: max(1, len(ks) // 200)]]
    got = table.thresholds[:: max(1, len(ks) // 200)].tolist()
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1
    assert bool((np.diff(table.thresholds) >= 0).all())
    assert norm.sf((table.half_width - 0.5) / scale) < 2.0**-64  # the tail cells hold next to nothing


def test_words_map_to_the_ideal_inverse_cdf_and_flag_the_undecidable() -> None:
    """Words at and around each threshold: k(U) equals the ideal min{k : U' < Phi_k} (mpmath) unless flagged;
    the three words within one unit of a threshold are flagged, two away are not."""
    scale = 2.5
    table = compute_table(scale)
    t = torch.as_tensor(table.thresholds)
    words, ideal = [], []
    with mpmath.workprec(256):
        cdf = [mpmath.ncdf((mpmath.mpf(k) + 0.5) / scale) for k in range(-table.half_width, table.half_width)]
        for j in range(3, len(cdf) - 3):
            for offset in (-2, -1, 0, 1, 2):
                u = int(table.thresholds[j]) + offset
                words.append(u)
                # U' ranges over [(U + 2^63) / 2^64, (U + 2^63 + 1) / 2^64): ideal k where the whole range agrees
                lo, hi = mpmath.mpf(u + 2**63) / 2**64, mpmath.mpf(u + 2**63 + 1) / 2**64
                k_lo = next(i for i, c in enumerate(cdf) if lo < c) - table.half_width
                k_hi = next(i for i, c in enumerate(cdf) if hi <= c) - table.half_width
                ideal.append(k_lo if k_lo == k_hi else None)
    k, inexact = draws_from_words(torch.tensor(words), t, padded_table(t), table.half_width)
    offsets = np.tile([-2, -1, 0, 1, 2], len(words) // 5)
    assert inexact.numpy().tolist() == (np.abs(offsets) <= 1).tolist()
    for kk, flag, want in zip(k.tolist(), inexact.tolist(), ideal, strict=True):
        if not flag:
            assert want is not None and kk == want
    # the ends: the lowest and highest words fall in the tail cells and are flagged
    ends = torch.tensor([-(2**63), 2**63 - 1])
    assert draws_from_words(ends, t, padded_table(t), table.half_width)[1].all()


def test_sampler_matches_the_rounded_gaussian_chi_square() -> None:
    """Marginal counts of 400,000 draws against the exact cell probabilities (scipy), tails pooled."""
    sigma, denominator = 0.02, 255  # 5.1 lattice steps: about 40 cells carry mass
    stream = LatticeNoiseStream((4, 10, 10), ("chi2", 1), sigma=sigma, denominator=denominator, block=50)
    k = stream.fill(stream.new_buffer(1000)).flatten().numpy().astype(np.int64)
    half = stream.half_width
    counts = np.bincount(k + half, minlength=2 * half + 1)
    p = cell_probabilities(sigma * denominator, half)
    keep = p * k.size > 20
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = np.append(p[keep], p[~keep].sum()) * k.size
    assert chisquare(observed, expected).pvalue > 1e-4
    assert int(stream.inexact) == 0
    # the test can tell: the draws are not the continuous Gaussian rounded half a step off
    shifted = cell_probabilities(sigma * denominator * 1.02, half)
    assert chisquare(observed, np.append(shifted[keep], shifted[~keep].sum()) * k.size).pvalue < 1e-6


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_streams_are_batch_size_independent_and_keyed(version: str) -> None:
    """The same draws however the stream is cut, including a batch served wholly from the rest of a block (1)."""
    shape, key = (3, 4, 4), ("stream", 5)
    one = LatticeNoiseStream(shape, key, sigma=0.25, block=16, version=version)
    whole = one.fill(one.new_buffer(100)).clone()
    other = LatticeNoiseStream(shape, key, sigma=0.25, block=16, version=version)
    parts = [other.fill(other.new_buffer(b)).clone() for b in (7, 30, 1, 62)]
    assert torch.equal(torch.cat(parts), whole)
    third = LatticeNoiseStream(shape, ("stream", 6), sigma=0.25, block=16, version=version)
    assert not torch.equal(third.fill(third.new_buffer(100)), whole)


# ------------------------------------------------------------------ the radius
def _np_minimum(p0: np.ndarray, p1: np.ndarray, mass: float) -> float:
    """min P1(S) over (randomized) sets with P0(S) >= mass: Neyman-Pearson, smallest likelihood ratio first."""
    order = np.argsort(p1 / p0, kind="stable")
    c0, c1 = np.cumsum(p0[order]), np.cumsum(p1[order])
    j = int(np.searchsorted(c0, mass))
    before0 = c0[j - 1] if j else 0.0
    before1 = c1[j - 1] if j else 0.0
    return before1 + (mass - before0) / p0[order][j] * p1[order][j]


@pytest.mark.parametrize("dim", [1, 2])
def test_radius_against_exact_enumeration(dim: int) -> None:
    """For the rounded Gaussian on hZ^d and lattice shifts delta, the exact worst case over all base classifiers
    (Neyman-Pearson over the enumerated lattice) never falls below Phi(Phi^-1(p) - |delta| / sigma), the bound
    behind sigma Phi^-1(pA); and it comes close to it (the radius is not loose)."""
    sigma, h = 1.3, 1.0  # sigma in lattice steps: coarse, where a discrete law would differ most
    half = 12
    p1d = cell_probabilities(sigma / h, half)
    grid = np.arange(-half, half + 1)
    worst_gap = math.inf
    shifts = [(1,), (2,), (3,)] if dim == 1 else [(1, 0), (1, 1), (2, 1), (3, 2)]
    for shift in shifts:
        if dim == 1:
            p0 = p1d
            idx = grid - shift[0]
            p1 = np.where(np.abs(idx) <= half, p1d[np.clip(idx + half, 0, 2 * half)], 0.0)
        else:
            p0 = np.outer(p1d, p1d).ravel()
            a = grid - shift[0]
            b = grid - shift[1]
            pa = np.where(np.abs(a) <= half, p1d[np.clip(a + half, 0, 2 * half)], 0.0)
            pb = np.where(np.abs(b) <= half, p1d[np.clip(b + half, 0, 2 * half)], 0.0)
            p1 = np.outer(pa, pb).ravel()
        dist = h * math.hypot(*shift)
        for mass in (0.55, 0.7, 0.9, 0.99):
            exact = _np_minimum(p0, p1, mass)
            bound = norm.cdf(norm.ppf(mass) - dist / sigma)
            assert exact >= bound - 1e-9, (shift, mass, exact, bound)
            worst_gap = min(worst_gap, exact - bound)
    assert worst_gap < 0.05  # tight for some shift


# ------------------------------------------------------------------ the engine sees lattice points
class _Recorder(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        s = x.flatten(1).sum(1)
        return torch.stack([s, -s, 0 * s], 1)


def test_classifier_sees_exact_lattice_points() -> None:
    x = _image(0)
    recorder = _Recorder()
    smooth = Smooth(recorder.eval(), 3, 0.25, noise="lattice", fold_bn=False, channels_last=False)
    cert = smooth.certify(x, 20, 100, 0.001, 32, generator=3)
    seen = torch.cat(recorder.seen)
    m = torch.round(seen.double() * 255)
    assert torch.equal((m.float() / 255).to(torch.float32), seen)  # fl32(m / 255) exactly
    k = m - torch.round(x.double() * 255)
    assert k.abs().max() < 0.25 * 255 * 10 and k.std().item() == pytest.approx(0.25 * 255, rel=0.1)
    assert cert.noise == "lattice" and cert.lattice_step == pytest.approx(1 / 255) and cert.quantization == 0.0


def test_off_lattice_input_is_refused_and_rounding_once_helps() -> None:
    x = _image(1) * 0.999 + 1e-4  # in [0, 1], off the lattice
    smooth = Smooth(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval(), 3, 0.25, noise="lattice")
    with pytest.raises(ValueError, match="lattice"):
        smooth.certify(x, 10, 20, 0.001, 10, generator=0)
    assert on_input_lattice(x) is None and on_input_lattice(to_input_lattice(x)) is not None
    smooth.certify(to_input_lattice(x), 10, 20, 0.001, 10, generator=0)


def test_lattice_certificates_do_not_depend_on_batch_size() -> None:
    x = _image(2)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    torch.manual_seed(0)
    smooth = Smooth(clf, 3, 0.25, noise="lattice")
    a = smooth.certify(x, 30, 300, 0.001, 7, generator=11)
    b = smooth.certify(x, 30, 300, 0.001, 64, generator=11)
    assert a.counts_selection == b.counts_selection and a.counts_estimation == b.counts_estimation
    assert a.radius == b.radius


def test_an_inexact_draw_makes_the_certificate_abstain(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _image(3)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    with torch.no_grad():
        clf[1].weight.zero_()
        clf[1].bias.copy_(torch.tensor([5.0, 0.0, 0.0]))  # always class 0: certified without the flag
    smooth = Smooth(clf, 3, 0.25, noise="lattice")
    assert smooth.certify(x, 10, 200, 0.001, 50, generator=1).prediction == 0
    original = LatticeNoiseStream._draw_block

    def flagged(self: LatticeNoiseStream, out: torch.Tensor) -> None:
        original(self, out)
        self.inexact += 1

    monkeypatch.setattr(LatticeNoiseStream, "_draw_block", flagged)
    cert = smooth.certify(x, 10, 200, 0.001, 50, generator=1)
    assert cert.prediction == ABSTAIN and cert.radius == 0.0 and cert.inexact_draws > 0
    assert smooth.predict(x, 50, 0.001, 50, generator=1) == ABSTAIN


# ------------------------------------------------------------------ LS-RS: the quantized latent
def test_quantization_term_against_brute_force() -> None:
    """|q(a) - q(b)| <= |a - b| + h sqrt(d) over random and adversarial pairs, and the term is attained."""
    d, denominator = 12, 2**6
    h = 1 / denominator
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.normal(size=(20000, d))).float()
    b = a + torch.from_numpy(rng.normal(scale=rng.uniform(0, 0.05, (20000, 1)), size=(20000, d))).float()
    q = lambda t: torch.round(t * denominator) / denominator  # noqa: E731
    penalty = quantization_penalty(denominator, d)
    grow = (q(a) - q(b)).double().norm(dim=1) - (a - b).double().norm(dim=1)
    assert float(grow.max()) <= penalty
    eps = 2.0**-12  # straddling cell boundaries in every coordinate: the growth is h sqrt(d) - 2 eps sqrt(d)
    worst = (q(torch.full((d,), h / 2 + eps)) - q(torch.full((d,), h / 2 - eps))).norm() - 2 * eps * math.sqrt(d)
    assert float(worst) == pytest.approx(penalty - 2 * eps * math.sqrt(d), rel=1e-6)


def _orthogonal_encoder(channels: int = 4) -> nn.Module:
    torch.manual_seed(0)
    conv = nn.Conv2d(1, channels, 1, bias=False)
    with torch.no_grad():
        w = torch.linalg.qr(torch.randn(channels, channels))[0][:, :1]
        conv.weight.copy_(w.reshape(channels, 1, 1, 1))
    return conv


def test_latent_certificate_holds_for_the_quantized_latents_brute_force() -> None:
    """Inputs x' within the certified radius: |q(z(x')) - q(z(x))| stays below the latent radius (over random
    and coordinate-aligned directions), and the radius is (R - h sqrt(d) - 2a) / (L + 2b)."""
    encoder = _orthogonal_encoder()
    clf = nn.Sequential(nn.Flatten(), nn.Linear(64, 2)).eval()
    with torch.no_grad():
        clf[1].weight.zero_()
        clf[1].bias.copy_(torch.tensor([3.0, 0.0]))
    x = _image(4)
    smooth = LatentSmooth(encoder, clf, 2, 0.5, 1.0, noise="lattice", lattice_denominator=2**5, input_range=None)
    cert = smooth.certify(x, 20, 500, 0.001, 100, generator=0)
    assert cert.prediction == 0 and cert.quantization == quantization_penalty(2**5, 64)
    bound = smooth.executed_bound(tuple(x.shape))
    z0 = smooth.encode(x)
    _, (a, b) = bound, smooth._encode_bounded(x)[2]
    assert cert.radius == pytest.approx(bound.radius(cert.radius_latent - cert.quantization, a, b))
    gauss = LatentSmooth(encoder, clf, 2, 0.5, 1.0, input_range=None).certify(x, 20, 500, 0.001, 100, generator=0)
    assert cert.radius < gauss.radius  # the quantization costs radius
    q0 = torch.round(z0 * 32)
    rng = torch.Generator().manual_seed(1)
    directions = torch.cat([torch.randn(200, *x.shape, generator=rng), torch.eye(16).reshape(16, *x.shape)])
    for v in directions:
        x1 = x + v / v.norm() * cert.radius * (1 - 1e-9)
        q1 = torch.round(smooth.encode(x1) * 32)
        assert float((q1 - q0).double().norm() / 32) <= cert.radius_latent


def test_latent_lattice_refuses_what_float32_cannot_hold() -> None:
    with pytest.raises(ValueError, match="2\\^24"):
        lattice_spec(torch.full((1, 8), 1e6), 0.25, input_lattice=False, denominator=2**10)
    with pytest.raises(ValueError, match="power-of-two"):
        lattice_spec(torch.zeros(1, 8), 0.25, input_lattice=False, denominator=100)


def test_table_cache_round_trip(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSRS_CACHE", str(tmp_path))
    lattice_table.cache_clear()
    first = lattice_table(4.25)
    lattice_table.cache_clear()
    assert np.array_equal(lattice_table(4.25).thresholds, first.thresholds)
    stored = next((tmp_path / "lattice").glob("*.npy"))
    np.save(stored, first.thresholds[::-1].copy())  # a corrupt file is recomputed, not trusted
    lattice_table.cache_clear()
    assert np.array_equal(lattice_table(4.25).thresholds, compute_table(4.25).thresholds)
    lattice_table.cache_clear()


@pytest.mark.parametrize("scale", [63.75, 900.0])
def test_cpu_bucket_index_gives_the_same_draws_as_the_search(scale: float) -> None:
    """The CPU fast path (one gather for words in clean buckets) against the binary search, on random words and
    on words at and around every threshold (where it must defer to the search and flag the same words)."""
    from lsrs.lattice import BucketIndex

    table = lattice_table(scale)
    index = BucketIndex(table, torch.device("cpu"))
    t = index.table
    random = torch.empty(200_000, dtype=torch.int64).random_(-(2**63), None, generator=torch.Generator().manual_seed(0))
    inner = t[1:-1]
    words = torch.cat([random, *(inner + d for d in (-3, -2, -1, 0, 1, 2, 3))])
    k, flags = draws_from_words(words, t, padded_table(t), table.half_width)
    k_fast, count = index.draws(words)
    assert torch.equal(k_fast, k) and int(count) == int(flags.sum()) > 0


def test_division_by_255_is_ieee_at_every_offset() -> None:
    """F(m) = fl32(m) / 255 must be a function of m alone: torch's float32 division equals IEEE division
    (numpy) for every integer the lattice engine can meet near the 8-bit range, at every memory offset."""
    m = np.arange(-(2**15), 2**15, dtype=np.float32)
    want = m / np.float32(255)
    t = torch.from_numpy(m)
    for offset in range(8):  # vectorised main loops and scalar tails see different elements
        got = (t[offset:] / 255.0).numpy()
        assert np.array_equal(got, want[offset:])
    buffer = torch.from_numpy(m.reshape(64, 1024)).contiguous(memory_format=torch.contiguous_format)
    assert np.array_equal(buffer.div_(255).numpy().ravel(), want)


# ------------------------------------------------------------------ the word source of each stream version
def _mapped(words: torch.Tensor, stream: LatticeNoiseStream) -> torch.Tensor:
    """The draws of ``words`` through the table itself (no bucket index): the oracle of a block."""
    t = stream._index.table
    return draws_from_words(words.reshape(-1), t, padded_table(t), stream.half_width)[0].float()


@pytest.mark.parametrize("threads", [1, 2])
def test_v3_blocks_are_the_philox_words_of_their_block(threads: int) -> None:
    """v3 on CPU: block b is Philox4x64-10 of (key, "lattice") at block b's counters (block_uniform_bits, the
    uint64 read as a signed word) through the table, whatever the threads or the batch cuts."""
    shape, key, block = (2, 3, 3), ("v3", 7), 8
    stream = LatticeNoiseStream(shape, key, sigma=0.25, block=block, version="v3")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = torch.cat([stream.fill(stream.new_buffer(b)).clone() for b in (5, 20, 1, 14)])
    finally:
        torch.set_num_threads(before)
    storage = (3, 3, 2)  # (H, W, C): drawn channels-last
    pk = philox_key((*key, "lattice"))
    for b in range(40 // block):
        words = torch.from_numpy(block_uniform_bits(pk, b, (block, *storage)).view(np.int64))
        want = _mapped(words, stream).reshape(block, *storage).permute(0, 3, 1, 2)
        assert torch.equal(got[b * block : (b + 1) * block], want)


def test_v2_lattice_stream_is_the_recorded_one_generator_stream() -> None:
    """A run recorded with v2 resumes with the lattice words it drew: one mt19937 generator of (key, "lattice"),
    one full-range random_ call per block."""
    shape, key, block = (4,), ("v2", 3), 16
    stream = LatticeNoiseStream(shape, key, sigma=0.25, block=block, version="v2")
    got = stream.fill(stream.new_buffer(40))
    gen = stream_generator((*key, "lattice"))
    words = [torch.empty((block, 4), dtype=torch.int64).random_(-(2**63), None, generator=gen) for _ in range(3)]
    want = torch.cat([_mapped(w, stream).reshape(block, 4) for w in words])[:40]
    assert torch.equal(got, want)
    v3 = LatticeNoiseStream(shape, key, sigma=0.25, block=block)
    assert v3.version == "v3" and not torch.equal(v3.fill(v3.new_buffer(40)), got)
