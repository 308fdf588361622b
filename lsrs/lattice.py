"""Lattice noise: randomized smoothing whose certificate covers the floating-point arithmetic that runs.

Why. With Gaussian noise the classifier sees ``fl32(x + fl32(g))``: a rounded Gaussian added to ``x`` and
rounded again, whose law depends on ``x`` beyond a shift (the grid of the sum is ``x``'s grid, ties round to
even), so Cohen et al.'s Neyman-Pearson argument does not cover it; Voracek & Hein (ICLR 2023, "Sound
randomized smoothing in floating-point arithmetic") build false certificates from exactly this.

The construction (Voracek & Hein's, for images). Work on the lattice ``hZ^d`` with ``h = 1/D`` for an integer
``D`` (``D = 255`` for 8-bit images, ``D = 2^e`` for latents). The noise is the Gaussian *rounded to the
lattice*, ``eps = h round(g / h)`` with ``g ~ N(0, sigma^2 I)`` (Voracek & Hein's "discrete Gaussian"; not the
distribution proportional to ``exp(-|k h|^2 / 2 sigma^2)``, whose radius has no closed form):
``P(eps_i = k h) = Phi((k + 1/2) h / sigma) - Phi((k - 1/2) h / sigma)``, coordinates independent.

**Theorem (radius).** Let ``F: Z^d -> float32^d`` be any fixed map and ``f`` any base classifier; for ``y`` in
``R^d`` let ``G(y) = argmax_c P_g(f(F(round(y / h + g / h))) = c)``. If
``P_g(f(F(round((y + g)/h))) = A) >= p_A > 1/2`` then ``G(y') = A`` for every real ``y'`` with
``|y' - y|_2 < sigma Phi^-1(p_A)``.
*Proof.* ``b = f o F o round(./h)`` is a fixed measurable classifier of ``R^d`` and ``G`` is its Gaussian
smoothing; apply Cohen et al. (2019), Theorem 1 to ``b``. ∎

**What runs equals G on the lattice.** For a lattice point ``y = m h`` (``m`` integer),
``round((y + g)/h) = m + round(g/h) = m + k`` exactly (rounding commutes with integer shifts), and the engine
feeds the classifier ``F(m + k) = fl32(fl32(m + k) / fl32(D))``: an integer below ``2^24`` is exact in float32
and IEEE division is correctly rounded, so ``F`` is a fixed function of the lattice point, whatever the batch,
device or layout. Hence the counts of CERTIFY are draws of exactly ``P_g(b(y + g) = c)`` and the certificate
holds for ``G`` (with ``k`` sampled exactly, below). **Threat model:** the perturbed input is itself a lattice
point (an 8-bit image for IS-RS); the engine computes ``G`` exactly there and refuses any other input.

**Exact sampling.** ``U`` is a uniform 64-bit integer and ``U' = (U + V) / 2^64`` with ``V ~ U[0,1)``
independent is uniform on ``[0, 1)``; the ideal draw is ``k(U') = min{k : U' < Phi_k}``,
``Phi_k = Phi((k + 1/2) h / sigma)``. The table holds ``T_k = floor(2^64 Phi_k)`` (``mpmath`` at ``PRECISION``
bits, an error far below one unit, so ``T_k - 1 <= 2^64 Phi_k < T_k + 2``),
``K = ceil(TAIL_SIGMAS sigma / h)``, for ``k = -K .. K-1`` (cell ``k``'s upper boundary). With
``i = #{k : T_k < U}``: if ``|U - T| >= 2`` for both neighbours ``T_{i-1}`` and ``T_i`` (hence for every
threshold) and ``0 < i < 2K``, then ``U' > Phi_k`` exactly for the thresholds below and ``U' < Phi_k`` for
those above, so ``k(U') = i - K`` **exactly** (the tails lie beyond the end thresholds). Otherwise the draw is
*inexact*: probability at most ``3 (2K) / 2^64 + 2 Phi(-(K - 1/2) h / sigma)`` per coordinate, about ``1e-16``
for 8-bit images. **Accounting:** a certificate with any inexact draw abstains. On the coupling above, a
certificate without one used ideal draws, so P(wrong certificate) <= P(ideal certificate wrong) <= alpha:
nothing is added to alpha. (The same holds for the multiclass bound, Cohen et al.'s theorem with p_A, p_B.)

**LS-RS.** The executed latent ``z32(x)`` is quantized to ``q(z) = h round(z / h)`` on ``h = 2^-e`` (``z D`` is
exact in float32, so ``q`` is exact) and smoothed as above. For ``|x' - x| <= r``, each coordinate moves by at
most ``h / 2`` under ``q``, so with :mod:`lsrs.executed`'s ``delta(r) = a + b r``::

    |q(z32(x')) - q(z32(x))| <= |z32(x') - z32(x)| + h sqrt(d) <= L r + 2 (a + b r) + h sqrt(d),

which is ``< R`` for ``r = (R - h sqrt(d) - 2a) / (L + 2b)``: the certified radius is
``ExecutedBound.radius(R - h sqrt(d), a, b)`` (:func:`quantization_penalty`). ``e`` is chosen so that
``h sqrt(d) <= sigma / LATENT_PENALTY`` (:func:`latent_denominator`).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lsrs.noise import (
    DEFAULT_BLOCK,
    NOISE_STREAM,
    BlockStream,
    NoiseKey,
    check_noise_stream,
    draw_uniform_blocks,
    philox_key,
    stream_generator,
)

__all__ = [
    "INPUT_LEVELS", "LATENT_PENALTY", "NOISES", "LatticeNoiseStream", "LatticeSpec", "LatticeTable",
    "cell_probabilities", "compute_table", "draws_from_words", "latent_denominator", "lattice_spec", "lattice_table", "on_input_lattice",
    "padded_table", "quantization_penalty", "to_input_lattice", "uniform_words",
]

NOISES = ("gaussian", "lattice")
INPUT_LEVELS = 255  # 8-bit images: the input lattice is (1/255) Z^d
LATENT_PENALTY = 64  # the latent step h satisfies h sqrt(d) <= sigma / LATENT_PENALTY
TAIL_SIGMAS = 9.8  # the tail cells beyond K = ceil(9.8 sigma / h) steps hold < 2^-64 each
PRECISION = 128  # mpmath bits for the thresholds
EXACT_INTEGERS = 2**24  # float32 holds every integer of smaller magnitude exactly
_Q = 2**64
_OFFSET = 2**63  # thresholds are stored as signed int64: T - 2^63, compared with signed uniform words


def uniform_words(generator: torch.Generator, out: torch.Tensor) -> torch.Tensor:
    """Fill int64 ``out`` with uniform 64-bit words (as signed integers) from ``generator``.

    ``random_(-2**63, None)`` draws the full 64-bit range (torch's ``random_full_64_bits_range``): on CPU each
    word is two mt19937 outputs (``hi << 32 | lo``; :func:`lsrs.noise.raw_words`), on CUDA Philox words.
    """
    return out.random_(-(2**63), None, generator=generator)


@dataclass(frozen=True)
class LatticeTable:
    """The thresholds of the Gaussian rounded to ``(1/D) Z`` at ``scale = sigma * D`` (sigma in lattice steps)."""

    scale: float
    half_width: int  # K: the table covers k in [-K, K]
    thresholds: np.ndarray  # int64, T_k - 2^63 for k = -K .. K-1 (the upper cell boundaries)

    @property
    def cells(self) -> int:
        return 2 * self.half_width + 1


def _upper_tail(t: object) -> int:
    """``floor(2^64 (1 - Phi(t)))`` for ``t > 0`` at ``PRECISION`` bits (mpmath's ``erfc``)."""
    import mpmath

    return int(mpmath.floor(mpmath.erfc(t / mpmath.sqrt(2)) / 2 * _Q))


def _cache_file(scale: float) -> Path:
    root = Path(os.environ.get("LSRS_CACHE", Path.home() / ".cache" / "lsrs"))
    return root / "lattice" / f"{float(scale).hex()}-p{PRECISION}-t{TAIL_SIGMAS}.npy"


@functools.lru_cache(maxsize=16)
def lattice_table(scale: float) -> LatticeTable:
    """:func:`compute_table`, kept in memory and on disk (``$LSRS_CACHE/lattice``, default ``~/.cache/lsrs``).

    A stored table is used only if it has the right length, is sorted and matches 16 entries recomputed here.
    """
    path = _cache_file(scale)
    half = math.ceil(TAIL_SIGMAS * scale)
    if path.exists():
        values = np.load(path)
        if values.shape == (2 * half,) and bool((np.diff(values) >= 0).all()):
            probe = np.random.default_rng(len(values)).integers(0, half, 16)
            if all(_threshold(scale, int(k)) == int(values[half + k]) for k in probe):
                return LatticeTable(float(scale), half, values)
    table = compute_table(scale)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, table.thresholds)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the table stays in memory
    return table


def _threshold(scale: float, k: int) -> int:
    """``T_k - 2^63`` for ``k >= 0`` (as stored), from one tail value."""
    import mpmath

    with mpmath.workprec(PRECISION):
        return _Q - _upper_tail((mpmath.mpf(k) + mpmath.mpf(1) / 2) / mpmath.mpf(scale)) - 1 - _OFFSET


def compute_table(scale: float) -> LatticeTable:
    """Integer thresholds of the rounded Gaussian with standard deviation ``scale`` lattice steps.

    ``T_k = floor(2^64 Phi((k + 1/2) / scale))``, by symmetry ``Phi(-t) = 1 - Phi(t)`` from ``K`` tail values:
    ``floor(2^64 - v) = 2^64 - ceil(v)`` for ``v = 2^64 (1 - Phi(t))``, and ``ceil(v) = floor(v) + 1`` unless ``v``
    is an integer, which an irrational ``v`` never is (the enclosure of the module docstring absorbs a unit).
    """
    import mpmath

    if not scale >= 1.0:
        raise ValueError(f"sigma must be at least one lattice step (sigma * D = {scale!r}); choose a finer lattice")
    half = math.ceil(TAIL_SIGMAS * scale)
    with mpmath.workprec(PRECISION):
        s = mpmath.mpf(scale)
        root2s = mpmath.sqrt(2) * s
        upper = [int(mpmath.floor(mpmath.erfc((k + mpmath.mpf(1) / 2) / root2s) * (_Q // 2)))
                 for k in range(half)]  # floor(2^64 (1 - Phi((k + 1/2) / s))), k = 0 .. K-1
    # thresholds for k = -K .. -1 are the upper tails of k' = K-1 .. 0 (Phi((k+1/2)/s) = 1 - Phi((-k-1/2)/s))
    lower = upper[::-1]  # T_k for k = -K..-1: floor(2^64 Phi(-(|k| - 1/2)/s)) = floor(v) with t = (|k|-1/2)/s
    positive = [_Q - u - 1 for u in upper]  # T_k for k = 0..K-1
    values = np.array([v - _OFFSET for v in lower + positive], dtype=np.int64)
    return LatticeTable(float(scale), half, values)


def cell_probabilities(scale: float, half_width: int) -> np.ndarray:
    """Exact-in-float64 probabilities of ``k = -K..K`` under the rounded Gaussian (``scipy.stats.norm``),
    a reference independent of the integer table."""
    from scipy.stats import norm

    k = np.arange(-half_width, half_width + 1, dtype=np.float64)
    return norm.cdf((k + 0.5) / scale) - norm.cdf((k - 0.5) / scale)


def on_input_lattice(x: torch.Tensor, denominator: int = INPUT_LEVELS) -> torch.Tensor | None:
    """The integers ``m`` with ``x == fl32(m / D)`` exactly (float32), or None if ``x`` is not on that lattice."""
    m = torch.round(x.double() * denominator)
    back = (m.float() / float(denominator)).to(x.dtype)
    if x.dtype != torch.float32 or not bool(torch.equal(back, x)) or bool((m.abs() >= EXACT_INTEGERS).any()):
        return None
    return m.float()


def to_input_lattice(x: torch.Tensor, denominator: int = INPUT_LEVELS) -> torch.Tensor:
    """``x`` rounded once to the nearest ``fl32(m / D)``: the 8-bit image a loader should have produced."""
    return (torch.round(x.double() * denominator).float() / float(denominator)).to(torch.float32)


def latent_denominator(sigma: float, numel: int) -> int:
    """``D = 2^e``, the smallest power of two with ``sqrt(d) / D <= sigma / LATENT_PENALTY``."""
    return 2 ** max(0, math.ceil(math.log2(LATENT_PENALTY * math.sqrt(numel) / sigma)))


def quantization_penalty(denominator: int, numel: int) -> float:
    """``h sqrt(d)`` (rounded up): the largest growth of an l2 distance under rounding to ``(1/D) Z^d``."""
    return math.nextafter(math.sqrt(numel) / denominator, math.inf)


@dataclass(frozen=True)
class LatticeSpec:
    """The lattice ``(1/D) Z^d`` of a certificate and the ``h sqrt(d)`` its quantization costs (0: none)."""

    denominator: int  # D; 0 for Gaussian noise
    quantization: float = 0.0

    @property
    def step(self) -> float:
        return 1.0 / self.denominator if self.denominator else math.nan

    @classmethod
    def none(cls) -> LatticeSpec:
        return cls(0)


def lattice_spec(
    z: torch.Tensor, sigma: float, input_lattice: bool, denominator: int | None = None
) -> tuple[torch.Tensor, LatticeSpec]:
    """``(m, spec)``: the integer centre ``m`` (float32) of ``z`` on its lattice, and the lattice.

    Input space (``input_lattice``): ``z`` must already be on ``(1/D) Z^d`` (``D = 255`` unless given), else
    ``ValueError``; nothing is quantized. Latent space: ``D = 2^e`` (default :func:`latent_denominator`) and
    ``m = round(z D)``, exact in float32; the spec carries ``h sqrt(d)``. Refuses centres whose noisy values
    could leave the exactly representable integers of float32.
    """
    numel = z[0].numel()
    if input_lattice:
        d = denominator or INPUT_LEVELS
        m = on_input_lattice(z, d)
        if m is None:
            raise ValueError(f"noise='lattice' certifies inputs on the lattice (1/{d}) Z^d only (8-bit images as "
                             f"float32 m/{d}); round the input once (lsrs.lattice.to_input_lattice) or use "
                             "noise='gaussian'")
        spec = LatticeSpec(d)
    else:
        d = denominator or latent_denominator(sigma, numel)
        if d & (d - 1):
            raise ValueError(f"a latent lattice needs a power-of-two denominator (exact rounding), got {d}")
        m = torch.round(z.float() * d)
        spec = LatticeSpec(d, quantization_penalty(d, numel))
    reach = float(m.abs().max()) + math.ceil(TAIL_SIGMAS * sigma * d) + 1 if m.numel() else 0.0
    if not reach < EXACT_INTEGERS:
        raise ValueError(f"noise='lattice': centre and noise reach {reach:.3g} steps of 1/{d}, beyond float32's "
                         f"exact integers (2^24); use a coarser lattice_denominator or noise='gaussian'")
    return m, spec


class LatticeNoiseStream(BlockStream):
    """A stream of rounded-Gaussian draws ``k`` (integers, as float32) on ``(1/denominator) Z`` at ``sigma``.

    The block discipline of :class:`lsrs.noise.BlockStream` (as :class:`lsrs.noise.NoiseStream`), with a word
    source of its own, keyed by ``(*key, "lattice")`` (so never the Gaussian stream of the same key); each block is
    ``block * prod(shape)`` uniform 64-bit words, mapped through the table on the device (``torch.searchsorted``;
    on CPU first through :class:`BucketIndex`, the same draws). Sample ``j`` is the same whatever the batch sizes (a
    batch ending inside a block keeps the rest for the next), and :meth:`finish_block` starts a fresh block.

    The words (``version``, :data:`lsrs.noise.NOISE_STREAMS`): with ``"v3"`` on the CPU, block ``b``'s words are
    :func:`lsrs.noise.block_uniform_bits` of block ``b`` (Philox4x64-10 at counters of that block only, the bit
    pattern of each uint64 read as a signed word), drawn side by side on the torch threads; the guarantees of
    :mod:`lsrs.noise` for counter-addressed blocks apply (distinct blocks and streams read disjoint counters or
    distinct keys). With ``"v1"`` or ``"v2"`` (only to resume a run recorded with them), and on other devices,
    one generator per stream (:func:`lsrs.noise.stream_generator`), seeded once, each block one
    :func:`uniform_words` call: within a stream every block comes from a distinct generator state. ``inexact``
    counts, on the device, the draws the table cannot decide exactly (module docstring); a certificate with any
    of them abstains.
    """

    def __init__(
        self,
        sample_shape: Sequence[int],
        seed: NoiseKey,
        device: torch.device | str = "cpu",
        block: int = DEFAULT_BLOCK,
        sigma: float = 1.0,
        denominator: int = INPUT_LEVELS,
        version: str = NOISE_STREAM,
    ) -> None:
        super().__init__(sample_shape, device, torch.float32, block)
        check_noise_stream(version)
        self.seed = seed
        self.denominator = denominator
        self.version = version
        key = (seed, "lattice") if isinstance(seed, int) else (*seed, "lattice")
        self._key = philox_key(key) if version == "v3" and self.device.type == "cpu" else None
        self._gen = None if self._key is not None else stream_generator(key, self.device)
        self._index = device_index(float(sigma) * denominator, self.device)
        self.half_width = self._index.half_width
        self.inexact = torch.zeros((), dtype=torch.long, device=self.device)
        self._ahead: dict[int, np.ndarray] = {}  # v3: words of the next blocks, drawn side by side
        self._words = (None if self._gen is None else
                       torch.empty((block, *self.storage_shape), dtype=torch.int64, device=self.device))

    def _block_words(self) -> torch.Tensor:
        """The words of the next block (v3 on CPU: drawn ahead by :meth:`_draw_blocks` where it could)."""
        if self._key is None:
            return uniform_words(self._gen, self._words)
        words = self._ahead.pop(self.blocks_drawn, None)
        if words is None:
            words = draw_uniform_blocks(self._key, self.blocks_drawn, 1, (self.block, *self.storage_shape))[0]
        return torch.from_numpy(words).view(torch.int64)

    def _draw_block(self, out: torch.Tensor) -> None:
        k, inexact = self._index.draws(self._block_words().view(-1))
        self.inexact += inexact
        out.view(-1).copy_(k)
        self.blocks_drawn += 1

    def _draw_blocks(self, outs: list[torch.Tensor]) -> None:
        """Draw the next ``len(outs)`` blocks into ``outs``, in order; v3 on CPU draws the words of as many blocks
        as there are torch threads side by side first."""
        step = max(1, torch.get_num_threads() if self._key is not None else len(outs))  # outs may be empty
        for start in range(0, len(outs), step):
            group = outs[start : start + step]
            if self._key is not None and len(group) > 1:
                words = draw_uniform_blocks(self._key, self.blocks_drawn, len(group), (self.block, *self.storage_shape))
                self._ahead = dict(enumerate(words, self.blocks_drawn))
            for out in group:
                self._draw_block(out)


BUCKET_BITS = (14, 18)  # CPU bucket index: 2^b buckets of the top b bits, b in this range (an index in cache)


class BucketIndex:
    """The table on one device, and on CPU a bucket index of the top ``b`` bits of a word.

    For a bucket ``[s, e]`` of words let ``lo = #{T < s - 2}`` and ``c`` the number of thresholds in
    ``[s - 2, e + 2]``. ``c = 0``: every word has ``i = #{T < u} = lo`` and both neighbours at least two units away.
    ``c = 1``: ``i = lo + [T_lo < u]``, and the word is within one unit of a threshold iff ``|u - T_lo| <= 1``
    (the others are at least three away). Either way :func:`draws_from_words` gives the same ``k = i - K`` and the
    same flag (tail cells ``i = 0``, ``i = 2K`` included); words in buckets with ``c >= 2`` (and the two end
    buckets, where ``s - 2`` or ``e + 2`` would wrap) go through :func:`draws_from_words` itself. Same draws, two
    gathers for most words instead of a binary search.
    """

    def __init__(self, table: LatticeTable, device: torch.device) -> None:
        self.half_width = table.half_width
        self.table = torch.as_tensor(table.thresholds, device=device)
        self.padded = padded_table(self.table)
        self.lo: torch.Tensor | None = None
        if device.type == "cpu":
            bits = min(max(BUCKET_BITS[0], math.ceil(math.log2(4 * table.cells))), BUCKET_BITS[1])
            self.shift = 64 - bits
            self.offset = 2 ** (bits - 1)
            starts = (torch.arange(2**bits, dtype=torch.int64) - self.offset) << self.shift
            ends = starts + ((1 << self.shift) - 1)
            self.lo = torch.searchsorted(self.table, starts - 2)  # #{T < s - 2}
            count = torch.searchsorted(self.table, ends + 2, right=True) - self.lo  # #{T in [s - 2, e + 2]}
            count[0] = count[-1] = 2  # s - 2 and e + 2 wrap around there
            self.count = count.clamp(max=2).to(torch.int8)
            self.extended = torch.cat([self.table, self.table[-1:]])  # T_lo for lo = 2K too

    def draws(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(k, number of inexact draws)`` of the words ``u`` (the count stays on the device)."""
        if self.lo is None:
            k, inexact = draws_from_words(u, self.table, self.padded, self.half_width)
            return k, inexact.sum()
        b = (u >> self.shift).add_(self.offset)
        count = self.count[b]
        one = count == 1
        lo = self.lo[b]
        d = u - self.extended[lo]  # no wrap-around where one: T_lo lies within the word's bucket (+-2)
        i = lo.add_(one & (d > 0))
        inexact = (one & (d.abs_() <= 1)) | (i == 0) | (i == self.table.numel())
        rest = (count == 2).nonzero().squeeze(1)
        k = i.sub_(self.half_width)
        if rest.numel():
            k_rest, inexact_rest = draws_from_words(u[rest], self.table, self.padded, self.half_width)
            k[rest] = k_rest
            inexact[rest] = inexact_rest
        return k, inexact.sum()


@functools.lru_cache(maxsize=16)
def device_index(scale: float, device: torch.device) -> BucketIndex:
    """The :class:`BucketIndex` of :func:`lattice_table` ``(scale)`` on ``device`` (built once per process)."""
    return BucketIndex(lattice_table(scale), device)


def padded_table(table: torch.Tensor) -> torch.Tensor:
    """``table`` with its end values repeated: ``T_{i-1} = padded[i]`` and ``T_i = padded[i + 1]``."""
    return torch.cat([table[:1], table, table[-1:]])


def draws_from_words(
    u: torch.Tensor, table: torch.Tensor, padded: torch.Tensor, half_width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(k, inexact)`` of signed words ``u`` (module docstring, "Exact sampling"): ``k = i - K`` with
    ``i = #{T < u}``, inexact where a neighbouring threshold is within one unit or ``u`` lies in a tail cell."""
    i = torch.searchsorted(table, u)
    below = u - padded[i]  # > 0 inside: at most one cell's width, < 2^63 as a cell holds < 1/2 the mass
    above = padded[i + 1] - u
    inexact = (below < 2) | (above < 2) | (i == 0) | (i == table.numel())
    return i - half_width, inexact
