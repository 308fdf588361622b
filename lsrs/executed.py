"""The encoder's Lipschitz bound *as executed*, and the rounding error of the latent it computes.

Theorem 1 of the paper divides the latent radius by a Lipschitz bound ``L`` of the encoder. The proof that
Cayley convolutions are orthogonal holds in exact arithmetic; the encoder that runs applies float32 operators
built by FFT, whose singular values are ``1 +- 1e-6`` or more. This module makes the certificate a statement
about the code that runs:

* The latent is computed in float64 from the stored float32 operators (:meth:`CayleyConv2d.forward` upcasts
  the cached operator exactly when it meets a float64 input), then rounded to float32 once: ``z32(x)``.
* ``L`` (:func:`lsrs.proofs.executed_bound`, composed from one proof per layer) bounds the exact-arithmetic Lipschitz constant of the map ``z(x)`` that
  applies exactly those operators: the product over layers of rigorous float64 bounds on their spectral norms
  (:func:`operator_norm_bound`), convexly combined through residuals with the ``alpha`` actually used.
* ``delta(r)`` (:meth:`ExecutedBound.error`) bounds ``|z32(x') - z(x')|`` for every ``x'`` with
  ``L |x' - x| <= L r``: the float64 rounding of every layer (standard error analysis, Higham 2002) plus the
  final float32 rounding.

**Certified radius.** Let ``R`` be the latent radius of CERTIFY at ``z32(x)`` (the smoothed ``fc`` is constant
on the ball of radius ``R`` around ``z32(x)``; the float32 sum ``z32 + eps`` is the correctly rounded exact sum,
so ``fc(round(.))`` is a fixed base classifier of ``z32 + eps``). For ``|x' - x| <= r``::

    |z32(x') - z32(x)| <= |z32(x') - z(x')| + |z(x') - z(x)| + |z(x) - z32(x)| <= L r + 2 delta(r).

With ``delta(r) = a + b r`` this is ``<= R`` for ``r = (R - 2a) / (L + 2b)`` (:meth:`ExecutedBound.radius`),
which is therefore a sound input radius; it is never larger than ``R / L``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from lsrs.threads import map_chunks

__all__ = [
    "LIPSCHITZ_SOURCES", "SOURCE_PROVEN", "SOURCE_TRUSTED", "SOURCE_USER_PROOF",
    "BoundCache", "ExecutedBound", "Output", "Term", "encode_executed", "fft_error", "gamma", "operator_norm_bound",
    "refuse_active_modes",
]

SOURCE_PROVEN = "proven"  # every layer proven by the library's own proofs (lsrs.proofs)
SOURCE_USER_PROOF = "user-proof"  # some layer proven by a class's own lipschitz_proof / @proves outside lsrs
SOURCE_TRUSTED = "trusted"  # the declared bound, taken on trust (trust_lipschitz=True)
LIPSCHITZ_SOURCES = (SOURCE_PROVEN, SOURCE_USER_PROOF, SOURCE_TRUSTED)

U64 = 2.0**-53  # unit roundoff of float64
U32 = 2.0**-24  # unit roundoff of float32
TINY32 = 2.0**-150  # largest absolute rounding error of a float32 subnormal result


def gamma(n: int, u: float = U64) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``: the relative error bound of an ``n``-term inner product."""
    return n * u / (1.0 - n * u)


def fft_error(points: int, u: float = U64) -> float:
    """Relative l2 error bound of an FFT of ``points`` points (Higham 2002, Theorem 24.2).

    Theorem 24.2 (radix 2, ``N = 2^t``): ``|fl(FFT x) - FFT x| <= t eta / (1 - t eta) |FFT x|`` with
    ``eta = mu + gamma_4 (sqrt 2 + mu)`` and ``mu`` the error of the computed twiddle factors. Mixed-radix and
    Bluestein steps (sizes such as 28 or 56) have the same form with larger constants per stage; this bound
    allows ``mu = 8u`` and ``8 (ceil(log2 N) + 2)`` stages, several times what the analysis needs.
    """
    mu = 8 * u
    eta = mu + gamma(4, u) * (math.sqrt(2.0) + mu)
    t = 8 * (math.ceil(math.log2(max(points, 2))) + 2)
    return t * eta / (1.0 - t * eta)


def refuse_active_modes() -> None:
    """Raise ``ValueError`` while a torch-function or dispatch mode is active (torch's default-device context
    excepted): a mode can change what any operation of a proof or of a certified pass computes."""
    from torch.overrides import _get_current_function_mode_stack
    from torch.utils._device import DeviceContext
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    modes = [m for m in _get_current_function_mode_stack() if type(m) is not DeviceContext]
    modes += list(_get_current_dispatch_mode_stack())
    if modes:
        raise ValueError(f"a torch mode is active ({type(modes[0]).__name__}): it can change what the bound's proof "
                         "or the certified forward pass computes; certify outside it")


@torch.no_grad()
def operator_norm_bound(op: Tensor, chunk: int = 8) -> float:
    """A rigorous upper bound on ``max_f |op_f|_2`` for a stack ``(F, m, k)`` (or one ``(m, k)``) of matrices.

    With ``G = A^H A`` (the smaller Gram matrix), ``|A|_2^2 = |G|_2 <= 1 + |G - I|_2 <= 1 + |G - I|_F``, and
    also ``<= |G|_F``. ``G`` is computed in float64 from the stored entries, in real arithmetic: with
    ``A = B + iC``, ``Re G = B^T B + C^T C`` and ``Im G = P - P^T`` for ``P = B^T C`` (``A^T`` replaces ``A``
    when it gives the smaller Gram matrix: ``|A^T|_2 = |A|_2``, and no conjugate copy is made). Each entry of
    ``Re G`` is two inner products of ``p`` terms and a sum, each of ``Im G`` the difference of two, so
    ``|fl(G) - G| <= gamma_{p+1} (|B|^T |B| + |C|^T |C| + i (|B|^T |C| + |C|^T |B|))`` entrywise (Higham 2002,
    Section 3.5), whose Frobenius norm is at most ``2 gamma_{p+1} |A|_F^2`` (``|X^T Y|_F <= |X|_F |Y|_F``).
    ``Re G`` is computed as *one* product ``R^T R`` of the stacked ``R = [B; C]``: each entry is an inner
    product of ``2p`` terms, within ``gamma_{2p}``, so ``2 gamma_{2p+2} |A|_F^2`` is added (covering both parts and
    the subtraction of ``I``). The squared norms are sums of ``N`` rounded squares, within
    ``gamma_{N+1}`` relative, and the subtraction of ``I``, the square root and the final steps are within a few
    ``u`` (the factors ``1 + gamma_{N+4}`` and ``1 + 1e-12``). ``|G|_F`` (tighter only far from orthogonal,
    when ``1 + |G - I|_F > 2``) is computed only then.

    Cost: two real products, ``Re G = R^T R`` for the stacked ``R = [B; C]`` and ``P``: ``3 p k^2`` real
    multiply-adds per matrix (a complex Gram product is 4), ``chunk`` matrices at a time so that every
    temporary is small and reused, the chunks spread over the cores (:func:`lsrs.threads.map_chunks`). A
    non-finite entry gives ``inf``.
    """
    a = op.detach()
    if a.dim() == 2:
        a = a.unsqueeze(0)
    a = a.reshape(-1, *a.shape[-2:])
    if a.shape[-2] < a.shape[-1]:
        a = a.mT  # make the Gram matrix the smaller one
    p, k = a.shape[-2:]
    grow = 1.0 + gamma(2 * p * k + 4)  # rounding of the squared norms (at most 2 p k squares each)

    def chunk_bound(lo: int, hi: int) -> float:
        block = a[lo:hi].resolve_conj()
        parts = (block.real, block.imag) if block.is_complex() else (block,)
        parts = tuple(x.to(torch.float64) for x in parts)  # exact upcast of the stored entries
        slack = 2.0 * gamma(2 * p + 2) * sum(_square_sum(x) for x in parts) * grow  # from |A|_F^2
        bound = 1.0 + (_gram_deviation_sq(parts) * grow).sqrt() + slack
        if not bool(torch.isfinite(bound).all()):
            return math.inf
        if float(bound.max()) > 2.0:  # far from orthogonal: |G|_F may be the tighter bound
            bound = torch.minimum(bound, (_gram_deviation_sq(parts, shift=0.0) * grow).sqrt() + slack)
        return float(bound.max())

    worst = max(map_chunks(chunk_bound, a.shape[0], chunk, a.device))
    return math.sqrt(worst * (1.0 + 1e-12)) * (1.0 + 1e-12)


def _gram_deviation_sq(parts: tuple[Tensor, ...], shift: float = 1.0) -> Tensor:
    """Per matrix, ``|G - shift I|_F^2`` of ``G = A^H A`` with ``A = parts[0] + i parts[1]`` (real parts only when
    ``A`` is real), from ``Re G = R^T R`` for the stacked ``R = [B; C]`` and ``Im G = P - P^T``
    (:func:`operator_norm_bound`)."""
    stacked = torch.cat(parts, dim=-2) if len(parts) == 2 else parts[0]
    g = stacked.mT @ stacked
    g.diagonal(dim1=-2, dim2=-1).sub_(shift)
    total = _square_sum(g)
    if len(parts) == 2:
        prod = parts[0].mT @ parts[1]
        total = total + _square_sum(prod - prod.mT)
    return total


def _square_sum(t: Tensor) -> Tensor:
    """Per leading index, the sum of squared moduli of the entries (the squared Frobenius norm)."""
    entries = torch.view_as_real(t) if t.is_complex() else t
    return torch.linalg.vector_norm(entries, dim=tuple(range(1, entries.dim()))).square()


class BoundCache:
    """Results of :func:`operator_norm_bound`, keyed by the SHA-256 of the operator's bytes (with its dtype and
    shape), optionally kept in a JSON file (e.g. beside a checkpoint: :meth:`beside`).

    A stored bound is reused only for an operator whose bytes hash to its key, i.e. for exactly the operator
    it was proven for, whatever checkpoint, torch build or device produced it; an operator computed
    differently (another BLAS rounding, changed weights) misses and is bounded afresh. The file is trusted
    like the checkpoint beside it: whoever can edit one can edit the other.
    """

    SUFFIX = ".bounds.json"

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.bounds: dict[str, float] = {}
        self.hits = self.misses = 0
        if path is not None and path.exists():
            try:
                self.bounds = {str(k): float(v) for k, v in json.loads(path.read_text())["bounds"].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                self.bounds = {}  # unreadable: recompute (and rewrite) rather than trust it

    @classmethod
    def beside(cls, checkpoint: str | Path) -> BoundCache:
        """The cache file next to ``checkpoint`` (``<name>.bounds.json``)."""
        checkpoint = Path(checkpoint)
        return cls(checkpoint.with_name(checkpoint.name + cls.SUFFIX))

    @staticmethod
    def key(op: Tensor) -> str:
        data = op.detach().cpu().resolve_conj().resolve_neg().contiguous()  # the values the operator stands for
        raw = torch.view_as_real(data) if data.is_complex() else data
        digest = hashlib.sha256(memoryview(raw.numpy()).cast("B")).hexdigest()
        return f"{str(data.dtype).removeprefix('torch.')}:{'x'.join(map(str, data.shape))}:{digest}"

    def norm_bound(self, op: Tensor) -> float:
        """:func:`operator_norm_bound` of ``op``, from the cache when this exact operator was bounded before."""
        key = self.key(op)
        if key in self.bounds:
            self.hits += 1
            return self.bounds[key]
        self.misses += 1
        value = self.bounds[key] = operator_norm_bound(op)
        return value

    def save(self) -> None:
        """Write the file (atomically) if there is one and something new was bounded."""
        if self.path is None or not self.misses:
            return
        about = "as-executed operator-norm bounds (lsrs.executed.BoundCache), keyed by dtype:shape:sha256"
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"about": about, "bounds": self.bounds}, indent=1) + "\n")
        os.replace(tmp, self.path)


@dataclass(frozen=True)
class Term:
    """The float64 rounding of one atom: at most ``rel * sum(norms of tracked tensors) + absolute``."""

    tracked: tuple[nn.Module, ...]  # modules whose *input* norm enters the bound
    rel: float
    absolute: float


@dataclass
class ExecutedBound:
    """``L`` of the encoder as executed and the data for ``delta`` (see the module docstring).

    ``lipschitz`` is ``L``; ``lipschitz_plus`` (``>= 1``) bounds the Lipschitz constant of every partial
    composition of the encoder (a product of ``max(1, L_atom)``), used to carry each layer's rounding error to
    the latent. (:func:`lsrs.digest.state_key` tells a smoother when what runs changes.)
    """

    lipschitz: float
    lipschitz_plus: float
    terms: tuple[Term, ...]
    trusted: bool = False  # True: a declared bound taken on trust (no as-executed analysis was possible)
    user_proof: bool = False  # True: some layer is proven by a proof from outside the library

    @property
    def source(self) -> str:
        """Where ``lipschitz`` comes from (:data:`LIPSCHITZ_SOURCES`): the library's proofs, a user's, or trust."""
        return SOURCE_TRUSTED if self.trusted else SOURCE_USER_PROOF if self.user_proof else SOURCE_PROVEN

    @property
    def rel_total(self) -> float:
        return sum(t.rel * len(t.tracked) for t in self.terms)

    def latent_error(self, norms: dict[nn.Module, float], z_norm: float, dims: int) -> tuple[float, float]:
        """``(a, b)`` with ``delta(r) = a + b r`` for the image whose activation norms are ``norms``.

        Telescoping over the atoms, the float64 latent differs from the exact one by at most
        ``L+ sum_l (rel_l |h_l| + abs_l)`` (each atom's rounding, carried to ``z`` by the exact suffix map of
        Lipschitz constant ``<= L+``). At ``x'`` with ``|x' - x| <= r`` each tracked norm grows by at most
        ``L+ r`` (plus rounding terms of relative size ``<= rel_total``; the factor 2 covers them). The float32
        rounding adds ``u32 |z(x')| + sqrt(d) 2^-150 <= u32 (|z64(x)| + L r + 2 delta64) + sqrt(d) 2^-150``.
        """
        a64, b64 = self.forward_error(norms)
        a = (1.0 + 2 * U32) * a64 + U32 * z_norm + math.sqrt(dims) * TINY32
        b = (1.0 + 2 * U32) * b64 + U32 * self.lipschitz
        return a * (1.0 + 1e-9), b * (1.0 + 1e-9)

    def forward_error(self, norms: dict) -> tuple:
        """``(a, b)``: the computed output at any ``x'`` with ``|x' - x| <= r`` is within ``a + b r`` of the exact
        map (the operators that run, exact arithmetic), in the precision the terms were proven for.

        ``norms`` are the tracked norms measured at ``x`` (floats, or tensors of one per image). Proof: with
        ``e_l`` atom ``l``'s rounding and ``S_l`` the exact map after it (Lipschitz ``<= L+``), telescoping gives
        ``|out_computed - out| <= L+ sum_l |e_l| <= L+ sum_l (rel_l |h_l| + abs_l)`` with ``h_l`` the *computed*
        input of the atom (Higham 2002, Sec. 3: each atom's error is relative to what it computes from). At
        ``x`` this is ``E_0 = L+ sum_l (rel_l N_l + abs_l)`` with the measured norms ``N_l``. At ``x'``,
        ``|h_l(x')| <= N_l + E(x) + L+ r + E(x')``, so with ``rho = L+ rel_total``,
        ``E(x') <= (E_0 (1 + rho) + rho L+ r) / (1 - rho)``, at most ``2 E_0 + 2 L+^2 rel_total r`` when
        ``rho <= 1/3`` (callers refuse larger ``rho``).
        """
        lp = self.lipschitz_plus
        a = 2.0 * lp * sum(t.rel * sum(norms.get(m, 0.0) for m in t.tracked) + t.absolute for t in self.terms)
        return a, 2.0 * lp * lp * self.rel_total

    def radius(self, radius_latent: float, a: float, b: float) -> float:
        """The sound input radius ``max(0, (R - 2a) / (L + 2b))`` for latent radius ``R``."""
        if radius_latent <= 0.0:
            return 0.0
        return max(0.0, (radius_latent - 2.0 * a) / (self.lipschitz + 2.0 * b))

    def latent_radius_needed(self, radius: float, a: float, b: float) -> float:
        """The latent radius that certifies input radius ``radius``: ``L r + 2 (a + b r)``."""
        return self.lipschitz * radius + 2.0 * (a + b * radius)


class Output:
    """Marks a module whose *output* norm is tracked (the branches of a convex residual)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __hash__(self) -> int:
        return hash((id(self.module), "out"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Output) and other.module is self.module


@torch.no_grad()
def encode_executed(encoder: nn.Module, x: Tensor, bound: ExecutedBound) -> tuple[Tensor, dict]:
    """``z64 = encoder(x)`` in float64 (cached float32 operators upcast), with the norms ``delta`` needs.

    Returns ``(z64, norms)``; ``norms`` maps each tracked module (or branch output) to the l2 norm of the
    tensor the rounding analysis refers to, measured on the computed float64 activations.
    """
    refuse_active_modes()
    norms: dict = {}
    inputs = {m for t in bound.terms for m in t.tracked if not isinstance(m, Output)}
    outputs = {m.module: m for t in bound.terms for m in t.tracked if isinstance(m, Output)}
    handles = []

    def pre(mod: nn.Module, args: tuple) -> None:
        norms[mod] = max(norms.get(mod, 0.0), float(args[0].norm()))

    def post(mod: nn.Module, args: tuple, out: Tensor) -> None:
        key = outputs[mod]
        norms[key] = max(norms.get(key, 0.0), float(out.norm()))

    try:
        for m in inputs:
            handles.append(m.register_forward_pre_hook(pre))
        for m in outputs:
            handles.append(m.register_forward_hook(post))
        # cuDNN may pick FFT / Winograd convolutions, outside the inner-product error analysis of the proofs
        with torch.inference_mode(), torch.backends.cudnn.flags(enabled=False):
            z = encoder(x.to(torch.float64))
    finally:
        for h in handles:
            h.remove()
    return z, norms
