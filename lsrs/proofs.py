"""One Lipschitz proof per layer, composed by one walker; a module without a proof is refused by name.

Theorem 1 of the paper (and the margin certificate of :mod:`lsrs.margin`) needs an upper bound ``L`` on the
l2 Lipschitz constant of a module tree. Every layer the library can bound has one *proof* here: a function
registered with :func:`proves` for its exact class, returning a :class:`LayerProof`

* ``exact`` - the bound of the layer's definition in exact arithmetic (the proof on paper: a Cayley
  convolution is orthogonal, 1);
* ``executed`` - a rigorous bound for the map with the operators as stored or computed, the ones that run
  (the float32 Cayley operator's float64 norm bound, a weight matrix's spectral norm);
* ``terms`` - the layer's float64 rounding, ``rel * |input| + absolute`` (:class:`lsrs.executed.Term`), which
  :class:`lsrs.executed.ExecutedBound` turns into ``delta``.

:func:`prove` walks the tree: sequences multiply, convex residuals combine with the ``alpha`` that runs.

**What counts as "the class".** A proof is found by walking ``type(module).__mro__``: the first class that is
registered, or that defines a method ``lipschitz_proof(self, ctx, path)``, supplies it; but a class met on the
way that defines anything besides ``__init__``, ``extra_repr`` and documentation (e.g. its own ``forward``,
or a helper the inherited ``forward`` calls) ends the search with no proof. So ``OrthogonalBlock``, an
``nn.Sequential`` subclass with only an ``__init__``, is proven as a sequence, and an ``nn.Identity`` subclass
returning ``3 * x`` is refused; so is one with a mixin after ``nn.Identity`` among its bases (every class of the
MRO outside the proven class's own must be inert). What runs must be exactly the code the proof was registered for
(:mod:`lsrs.pristine`: no class patch, no custom metaclass, no callable or compiled call path on the instance, no
forward hook, per module or global); a module in training mode, or one whose tensors are tensor subclasses (their
``__torch_function__`` can change any operation) or hold NaN / Inf, is refused too. Proofs from outside the
library are recorded as such (:attr:`lsrs.executed.ExecutedBound.source`).

Adding a layer is one function here with ``@proves(TheLayer)``; a user's layer can carry ``lipschitz_proof``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsrs.digest import state_key
from lsrs.executed import (
    U64,
    BoundCache,
    ExecutedBound,
    Output,
    Term,
    fft_error,
    gamma,
    operator_norm_bound,
    refuse_active_modes,
)
from lsrs.layers import CayleyConv2d, ChannelPad, ConvexResidual, MaxMin, MeanShift
from lsrs.lipschitz_layers import NormPool, OrthogonalLinear
from lsrs.pristine import (
    INERT,
    class_dict,
    global_hook_refusal,
    instance_refusal,
    metaclass_refusal,
    reference_refusal,
    remember,
    true_mro,
)

__all__ = [
    "U64",
    "LayerProof",
    "ProofContext",
    "UnprovenModule",
    "compose",
    "executable_copy",
    "executed_bound",
    "find_proof",
    "first_unproven",
    "input_shapes",
    "is_sequence",
    "probe_dtype",
    "prove",
    "proves",
    "spectral_norm_upper",
    "state_key",
    "Term",
]

_MAX_EPS = 1e-6  # refuse an analysis whose relative error terms are not tiny (first-order reasoning)
EXPLICIT_MAX_ENTRIES = 2**21  # a conv's explicit matrix is built (and its SVD taken) only up to this size


class UnprovenModule(ValueError):
    """A module of the tree has no Lipschitz proof: names its path in the model and its class."""

    def __init__(self, path: str, module: nn.Module, why: str) -> None:
        self.path, self.module, self.why = path, module, why
        super().__init__(f"no proven Lipschitz bound for {path or 'model'} ({type(module).__name__}): {why}")

    def within(self, prefix: str, advice: str = "") -> UnprovenModule:
        """The same refusal with the path prefixed by ``prefix`` (the module's name in the model) and advice."""
        err = UnprovenModule(".".join(p for p in (prefix, self.path) if p), self.module, self.why)
        if advice:
            err.args = (f"{err.args[0]}; {advice}",)
        return err


@dataclass(frozen=True)
class LayerProof:
    """What one layer proves: bounds in exact arithmetic and as executed, its float64 rounding terms, and
    ``plus`` (>= 1), a bound on the Lipschitz constant of every prefix of the layer (for composites)."""

    exact: float
    executed: float
    terms: tuple[Term, ...] = ()
    plus: float | None = None

    @property
    def expansion(self) -> float:
        return self.plus if self.plus is not None else max(1.0, self.executed)


@dataclass
class ProofContext:
    """What a proof may read: the per-sample input shape of every module (one forward pass) and the operator-
    norm bound to use (:class:`lsrs.executed.BoundCache` when given)."""

    shapes: dict[nn.Module, tuple[int, ...] | None]
    norm_bound: Callable[[Tensor], float] = operator_norm_bound
    proofs: dict[nn.Module, LayerProof] = field(default_factory=dict)
    u: float = U64  # unit roundoff of the forward whose rounding the terms bound (float64; float32: 2^-24)
    user_proofs: list[str] = field(default_factory=list)  # paths proven by a proof from outside the library

    def prove(self, module: nn.Module, path: str) -> LayerProof:
        """The proof of ``module`` (its path ``path`` for errors); raises :class:`UnprovenModule` (``ValueError``
        while a torch mode is active: :func:`lsrs.executed.refuse_active_modes`)."""
        refuse_active_modes()
        proof_fn, library = _checked_proof(module, path)
        if module not in self.shapes:
            raise UnprovenModule(path, module, "it did not run on the probe input, so its input size is unknown")
        if self.shapes[module] is None:
            raise UnprovenModule(path, module, "it runs on inputs of several sizes; the proofs take one per module")
        proof = _as_floats(proof_fn(module, self, path), module, path)
        if not library:
            self.user_proofs.append(path or "model")
        self.proofs[module] = proof
        return proof


def _as_floats(proof: object, module: nn.Module, path: str) -> LayerProof:
    """``proof`` with Python floats (a proof may compute them as tensors or numpy scalars); refused unless it is a
    :class:`LayerProof` with finite, non-negative bounds."""
    if not isinstance(proof, LayerProof):
        raise UnprovenModule(path, module, f"its proof returned a {type(proof).__name__}, not a LayerProof")
    values = [float(proof.exact), float(proof.executed)] + ([] if proof.plus is None else [float(proof.plus)])
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise UnprovenModule(path, module, f"its proof returned the bound {values[1]!r}, not a finite number >= 0")
    plus = None if proof.plus is None else values[2]
    terms = tuple(Term(t.tracked, float(t.rel), float(t.absolute)) for t in proof.terms)
    return LayerProof(values[0], values[1], terms, plus)


ProofFn = Callable[[nn.Module, ProofContext, str], LayerProof]
_PROOFS: dict[type, ProofFn] = {}


def proves(*classes: type) -> Callable[[ProofFn], ProofFn]:
    """Register the decorated function as the proof of exactly ``classes`` (and their inert subclasses); the
    classes' code is remembered now (:func:`lsrs.pristine.remember`): a later patch of it is refused."""

    def register(fn: ProofFn) -> ProofFn:
        for cls in classes:
            remember(cls)
            _PROOFS[cls] = fn
        return fn

    return register


def _is_library(fn: object) -> bool:
    """Whether ``fn`` (a proof) is the library's own (defined in ``lsrs``), not a user's."""
    return str(getattr(fn, "__module__", "")).split(".")[0] == "lsrs"


def _find(module: nn.Module) -> tuple[type, ProofFn, bool] | None:
    """``(class that supplies the proof, proof, whether it is the library's)`` by the MRO rule, or None."""
    mro = true_mro(type(module))
    for cls in mro:
        proof = _PROOFS.get(cls)
        library = _is_library(proof)
        own = class_dict(cls).get("lipschitz_proof")
        if proof is None and callable(own):
            proof = lambda m, ctx, path, _own=own: _own(m, ctx, path)  # noqa: E731
            library = _is_library(own)
            remember(cls)  # a class's own proof: its code as first seen is the reference
        if proof is not None:
            others = [k for k in mro if k not in true_mro(cls)]
            return None if any(_is_active(k) for k in others) else (cls, proof, library)
        if cls is nn.Module or _is_active(cls):
            return None
    return None


def find_proof(module: nn.Module) -> ProofFn | None:
    """The proof of ``module``'s class (see the module docstring for the MRO rule), or None.

    Every class of the MRO outside the proven class's own MRO must be inert too: with multiple inheritance a
    mixin listed after the proven class (``class X(nn.Identity, Mixin)``) comes after it in the MRO, yet its
    ``__call__`` or ``_call_impl`` runs. The MRO and class dictionaries are read through ``type``'s own
    descriptors (:mod:`lsrs.pristine`)."""
    if metaclass_refusal(type(module)) is not None:
        return None
    found = _find(module)
    return None if found is None else found[1]


def _is_active(cls: type) -> bool:
    """Whether ``cls`` defines anything that can change what runs (more than ``lsrs.pristine.INERT``)."""
    return bool(set(class_dict(cls)) - INERT)


def _checked_proof(module: nn.Module, path: str, check_mode: bool = True) -> tuple[ProofFn, bool]:
    """``(proof, whether it is the library's)`` after checking that what ``module`` runs is exactly the code its
    proof covers (:mod:`lsrs.pristine`: metaclass, class patches, instance overrides, hooks), that its tensors
    are plain and finite, and its mode."""
    why = metaclass_refusal(type(module))
    found = None if why is not None else _find(module)
    if why is None and found is None:
        why = "the library has no proof for this class (or for a subclass that changes what its base runs)"
    why = why or reference_refusal(found[0]) or global_hook_refusal() or instance_refusal(module)
    why = why or _tensor_refusal(module)
    if why is None and check_mode and module.training:
        why = "it is in training mode (call .eval(); the proof is of the eval function)"
    if why is not None:
        raise UnprovenModule(path, module, why)
    return found[1], found[2]


def _tensor_refusal(module: nn.Module) -> str | None:
    """Why a tensor of ``module`` (parameter, buffer or tensor attribute) cannot be proven: a tensor subclass
    (its ``__torch_function__`` can change what every operation on it computes) or non-finite entries."""
    named = [(k, t) for k, t in (*module._parameters.items(), *module._buffers.items()) if t is not None]
    named += [(k, t) for k, t in vars(module).items() if isinstance(t, Tensor)]
    for k, t in named:
        if type(t) not in (Tensor, nn.Parameter):
            return f"its tensor {k!r} is a {type(t).__name__}, a tensor subclass"
    for k, t in named:
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t.detach()).all()):
            return f"its tensor {k!r} has NaN or Inf entries (a diverged training run?)"
    return None


def first_unproven(module: nn.Module) -> UnprovenModule | None:
    """The first module of the tree without a proof (as :func:`prove` would refuse it, before any forward pass),
    or None. Training mode is not checked here (the smoother proves an eval-mode copy)."""
    if not isinstance(module, nn.Module):
        return UnprovenModule("", module, "it is not a torch.nn.Module")
    for path, m in module.named_modules():
        try:
            _checked_proof(m, path, check_mode=False)
        except UnprovenModule as err:
            return err
    return None


def prove(module: nn.Module, shapes: dict[nn.Module, tuple[int, ...]],
          cache: BoundCache | None = None) -> LayerProof:
    """The composed proof of ``module`` (its input shapes from :func:`input_shapes`); raises UnprovenModule."""
    ctx = ProofContext(shapes, cache.norm_bound if cache is not None else operator_norm_bound)
    return ctx.prove(module, "")


# ---------------------------------------------------------------------------- composites
@proves(nn.Sequential)
def _sequential(module: nn.Sequential, ctx: ProofContext, path: str) -> LayerProof:
    """Composition of the children as forward runs them (a module listed twice counts twice): :func:`compose`."""
    return compose(ctx, path, module._modules.items())


def compose(ctx: ProofContext, path: str, stages: Iterable[tuple[str, nn.Module]]) -> LayerProof:
    """``f_n o ... o f_1`` of the named ``stages`` (in the order they run): ``Lip <= prod Lip(f_i)``, the float64
    products of the bounds within ``4 u`` each; the rounding terms of every stage."""
    exact = executed = plus = 1.0
    terms: list[Term] = []
    count = 0
    for name, child in stages:
        p = ctx.prove(child, f"{path}.{name}" if path else name)
        exact, executed, plus = exact * p.exact, executed * p.executed, plus * p.expansion
        terms.extend(p.terms)
        count += 1
    grow = 1 + 4 * U64 * count
    return LayerProof(exact, executed * grow, tuple(terms), plus * grow)


@proves(ConvexResidual)
def _convex_residual(module: ConvexResidual, ctx: ProofContext, path: str) -> LayerProof:
    """``a main + (1 - a) skip`` with ``a`` in [0, 1]: triangle inequality, ``a L_main + (1 - a) L_skip``
    (paper Section 4). ``a`` is the float32 ``sigmoid(theta)`` exactly as the float64 forward uses it; the
    float64 ``1 - a``, two products and a sum round within ``4 u`` of the branch outputs. The branches must
    return the same shape: a broadcast copies one branch's output (a ``(B, 1)`` skip added to ``(B, 4)``
    multiplies its Lipschitz constant by 2), which the triangle bound does not see."""
    main_shape, skip_shape = _branch_shapes(module, ctx.shapes[module])
    if main_shape != skip_shape:
        raise UnprovenModule(path, module, f"its branches return shapes {main_shape} and {skip_shape}; the sum "
                                           "would broadcast one of them")
    a = float(module.alpha.detach().double())
    main = ctx.prove(module.main, f"{path}.main" if path else "main")
    skip = ctx.prove(module.skip, f"{path}.skip" if path else "skip")
    terms = (*main.terms, *skip.terms, Term((Output(module.main), Output(module.skip)), 4 * ctx.u, 0.0))
    exact = a * main.exact + (1.0 - a) * skip.exact
    executed = (a * main.executed + (1.0 - a) * skip.executed) * (1 + 4 * U64)
    return LayerProof(exact, executed, terms, max(main.expansion, skip.expansion, 1.0))


def _branch_shapes(module: ConvexResidual, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Output shapes of the residual's two branches on a batch of two zero inputs of per-sample ``shape``."""
    x = torch.zeros(2, *shape, dtype=probe_dtype(module), device=module.theta.device)
    with torch.inference_mode():
        return tuple(module.main(x).shape), tuple(module.skip(x).shape)


# ---------------------------------------------------------------------------- atoms without rounding
@proves(nn.Identity, nn.Flatten, nn.Unflatten, nn.PixelUnshuffle, nn.PixelShuffle, nn.ReLU, MaxMin, ChannelPad,
        nn.Dropout)
def _isometry_or_contraction(module: nn.Module, ctx: ProofContext, path: str) -> LayerProof:
    """Lipschitz 1, computed exactly: a reshape or coordinate permutation (identity, flatten, (un)shuffle, eval
    dropout), zero padding of channels (an isometry), ReLU (``|max(a, 0) - max(b, 0)| <= |a - b|``), MaxMin (a
    coordinate permutation at every point, Anil et al. 2019). None rounds."""
    return LayerProof(1.0, 1.0)


@proves(nn.MaxPool2d)
def _max_pool(module: nn.MaxPool2d, ctx: ProofContext, path: str) -> LayerProof:
    """``y_j = max_{i in W_j} x_i``: ``|y(x) - y(x')|^2 <= sum_j max_{i in W_j} (x_i - x'_i)^2
    <= sum_i c_i (x_i - x'_i)^2`` with ``c_i`` the number of windows holding pixel ``i``, so
    ``L <= sqrt(max_i c_i)`` (1 without overlap). Counted exactly by ``fold(unfold(1))``; max is exact."""
    if module.ceil_mode or module.return_indices:
        raise UnprovenModule(path, module, "ceil_mode / return_indices are not covered by the proof")
    shape = ctx.shapes[module]
    ones = torch.ones(1, 1, *shape[-2:], dtype=torch.float64)
    opts = dict(kernel_size=module.kernel_size, dilation=module.dilation, padding=module.padding,
                stride=module.stride)
    counts = F.fold(F.unfold(ones, **opts), output_size=tuple(shape[-2:]), **opts)
    lip = math.sqrt(float(counts.max()))
    return LayerProof(lip, lip)


@proves(nn.LeakyReLU)
def _leaky_relu(module: nn.LeakyReLU, ctx: ProofContext, path: str) -> LayerProof:
    """``x`` or ``s x``: piecewise linear with slopes 1 and ``s``, Lipschitz ``max(1, |s|)``; ``s x`` rounds
    within ``u |s x|``."""
    s = abs(float(module.negative_slope))
    if module.inplace and s > 1.0:  # it would also rescale the input a residual's other branch reads
        raise UnprovenModule(path, module, "inplace=True with |negative_slope| > 1 changes its input")
    lip = max(1.0, s)
    return LayerProof(lip, lip, (Term((module,), ctx.u * s, 0.0),))


@proves(nn.Tanh)
def _tanh(module: nn.Tanh, ctx: ProofContext, path: str) -> LayerProof:
    """``|tanh'| <= 1``. Rounding: the float64 ``tanh`` of glibc / SLEEF is within 2 ulp, i.e. ``4 u |tanh x|
    <= 4 u |x|`` (an accuracy claim of the math library, not a proof of this code)."""
    return LayerProof(1.0, 1.0, (Term((module,), 4 * ctx.u, 0.0),))


# ---------------------------------------------------------------------------- the library's atoms
@proves(MeanShift)
def _mean_shift(module: MeanShift, ctx: ProofContext, path: str) -> LayerProof:
    """A translation (Lipschitz 1) when the mean does not broadcast the input: a ``(C, H, W)`` input with ``C``
    means, or one mean. (Three means on one channel copy it three times: Lipschitz sqrt 3.) The float64
    subtraction rounds within ``u (|x| + |mean|)``."""
    shape, means = ctx.shapes[module], module.mean.numel()
    if len(shape) != 3 or means not in (1, shape[0]) or tuple(module.mean.shape) != (1, means, 1, 1):
        raise UnprovenModule(path, module, f"{means} means on a per-sample input of shape {shape} broadcast it")
    hw = math.prod(shape[-2:])
    mean_norm = float(module.mean.double().norm()) * math.sqrt(hw)
    return LayerProof(1.0, 1.0, (Term((module,), ctx.u, ctx.u * mean_norm),))


@proves(NormPool)
def _norm_pool(module: NormPool, ctx: ProofContext, path: str) -> LayerProof:
    """Cauchy-Schwarz per channel (:class:`NormPool`): Lipschitz 1. In float64 each channel sum of ``m`` terms
    is within ``gamma_{m-1} sum |x_i| <= gamma_{m-1} sqrt(m) |x_c|`` (Higham 2002, Eq. 3.5); the square root
    and the division add ``2 u``: ``|err| <= gamma_{m+2} |x|``."""
    m = math.prod(ctx.shapes[module][-2:])
    return LayerProof(1.0, 1.0, (Term((module,), gamma(m + 2, ctx.u), 0.0),))


def _dense_terms(module: nn.Module, fan_in: int, abs_norm: float, lip: float, bias_norm: float,
                 u: float = U64) -> tuple[Term]:
    """Rounding of ``y = W x + b`` computed by inner products of ``fan_in`` terms: ``|fl(Wx) - Wx| <= gamma_n
    |W| |x|`` entrywise (Higham 2002, Eq. 3.11), in norm ``<= gamma_n || |W| ||_2 |x|`` with ``abs_norm`` a
    bound on ``|| |W| ||_2``; adding the bias rounds within ``u (|Wx| + |b|)``."""
    return (Term((module,), gamma(fan_in + 1, u) * abs_norm + u * lip, 2 * u * bias_norm),)


@proves(CayleyConv2d)
def _cayley_conv(layer: CayleyConv2d, ctx: ProofContext, path: str) -> LayerProof:
    """Exact arithmetic: orthogonal (paper Eq. 10-11), 1. As executed: the float64 norm bound of the cached
    float32 operator (:func:`lsrs.executed.operator_norm_bound`). Rounding of the float64 forward: a 1x1
    kernel is an inner product per pixel (:func:`_dense_terms`); otherwise rfft2 (within ``fft_error``), the
    per-frequency products (inner dimension ``c_in``, the half spectrum's ``sqrt 2``), irfft2 from the half
    spectrum (within ``fft_error`` of the full spectrum's norm, at most ``sqrt 2`` times the half's), bias."""
    if not layer.cache:
        raise UnprovenModule(path, layer, "cache=False recomputes its operator at every call; the bound covers "
                                          "the one cached operator (set cache=True)")
    shape = ctx.shapes[layer]
    size = layer.conv_size(shape)
    op = layer.executed_operator(size)
    lip = ctx.norm_bound(op)
    bias = 0.0 if layer.bias is None else float(layer.bias.detach().double().norm()) * math.sqrt(math.prod(size))
    if layer.kernel_size == 1:  # a (c_in, c_out) real matrix; F.conv2d is an inner product per pixel
        terms = _dense_terms(layer, op.shape[-2], float(op.double().norm()), lip, bias, ctx.u)
        return LayerProof(1.0, lip, terms)
    c_in, c_out = op.shape[-2], op.shape[-1]
    points = size[0] * size[1]
    mm = math.sqrt(2.0) * gamma(c_in + 2, ctx.u) * math.sqrt(min(c_in, c_out)) * lip
    rel = ((1.0 + math.sqrt(2.0)) * fft_error(points, ctx.u) * lip + mm + 3 * ctx.u * lip) * 1.01
    return LayerProof(1.0, lip, (Term((layer,), rel, 2 * ctx.u * bias),))


@proves(OrthogonalLinear)
def _orthogonal_linear(layer: OrthogonalLinear, ctx: ProofContext, path: str) -> LayerProof:
    """Exact arithmetic: (semi-)orthogonal, 1. As executed: the norm bound of the cached float32 ``Q``
    (:meth:`OrthogonalLinear.executed_matrix`), applied in float64 (:func:`_dense_terms`)."""
    q = layer.executed_matrix()
    lip = ctx.norm_bound(q)
    rows = math.prod(ctx.shapes[layer][:-1])
    bias = 0.0 if layer.bias is None else float(layer.bias.detach().double().norm()) * math.sqrt(rows)
    return LayerProof(1.0, lip, _dense_terms(layer, q.shape[-1], float(q.double().norm()), lip, bias, ctx.u))


# ---------------------------------------------------------------------------- standard torch layers
def spectral_norm_upper(a: Tensor) -> float:
    """An upper bound on ``max |a_f|_2`` over a stack of (real or complex) matrices, from float64 singular values.

    LAPACK's SVD is backward stable: the computed singular values are those of ``a + E`` with ``|E|_2 <=
    p(m, n) u |a|_2`` for a modest ``p`` (Demmel & Kahan 1990; Golub & Van Loan 2013, Sec. 8.6), so by Weyl's
    inequality ``sigma_max <= s_max + p u |a|_F``; ``p = 64 max(m, n)`` is taken.
    """
    a = a.detach().to(torch.complex128 if a.is_complex() else torch.float64)
    if a.dim() == 2:
        a = a.unsqueeze(0)
    if a.numel() == 0:
        return 0.0
    s = torch.linalg.matrix_norm(a, ord=2).max()
    fro = torch.linalg.matrix_norm(a).max()
    return float(s) + 64 * max(a.shape[-2:]) * U64 * float(fro)


@proves(nn.Linear)
def _linear(layer: nn.Linear, ctx: ProofContext, path: str) -> LayerProof:
    """``W x + b``: Lipschitz ``|W|_2`` (:func:`spectral_norm_upper`), the same in exact arithmetic and as
    executed (the float64 forward applies the exactly upcast stored weights, :func:`executable_copy`)."""
    w = layer.weight.detach().double()
    lip = spectral_norm_upper(w)
    rows = math.prod(ctx.shapes[layer][:-1])
    bias = 0.0 if layer.bias is None else float(layer.bias.detach().double().norm()) * math.sqrt(rows)
    abs_norm = _schur(w.abs().sum(1).max(), w.abs().sum(0).max())
    return LayerProof(lip, lip, _dense_terms(layer, w.shape[1], abs_norm, lip, bias, ctx.u))


def _schur(row_max: Tensor | float, col_max: Tensor | float) -> float:
    """Schur's test: ``|A|_2 <= sqrt(max row sum * max column sum)`` of ``|A|``; ``(1 + 1e-12)`` for the sums."""
    return math.sqrt(float(row_max) * float(col_max)) * (1 + 1e-12)


def _conv_linear(layer: nn.Conv2d, x: Tensor, weight: Tensor) -> Tensor:
    """The layer's linear part (padding, convolution; no bias) as torch runs it."""
    return layer._conv_forward(x, weight, None)


def _pad_amounts(layer: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding that the layer's forward applies: ``F.pad`` with
    ``_reversed_padding_repeated_twice`` for a non-zero mode; for zeros, ``F.conv2d`` reads ``padding`` itself
    (``'same'``: ``d (k - 1)`` in total per dimension, the odd one right / bottom, as torch pads)."""
    if layer.padding_mode != "zeros":
        left, right, top, bottom = (int(p) for p in layer._reversed_padding_repeated_twice)
        return left, right, top, bottom
    if layer.padding == "valid":
        return 0, 0, 0, 0
    if layer.padding == "same":
        totals = [int(d) * (int(k) - 1) for d, k in zip(layer.dilation, layer.kernel_size, strict=True)]
        (th, tw) = totals
        return tw // 2, tw - tw // 2, th // 2, th - th // 2
    ph, pw = (int(p) for p in layer.padding)
    return pw, pw, ph, ph


def _pad_multiplicity(layer: nn.Conv2d, size: tuple[int, int]) -> float:
    """``|P|_2^2`` of the layer's padding ``P`` (each padded pixel copies one input pixel or is zero): the largest
    entry of ``P^T 1``, the number of copies of an input pixel, counted exactly (1 for zero padding)."""
    if layer.padding_mode == "zeros":
        return 1.0
    ones = torch.ones(1, 1, *size, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        padded = F.pad(ones, _pad_amounts(layer), mode=layer.padding_mode)
        (counts,) = torch.autograd.grad(padded.sum(), ones)
    return float(counts.max())


def _torus_bound(weight: Tensor, dilation: tuple[int, int], groups: int, torus: tuple[int, int]) -> float:
    """Largest singular value (upper bound) of the circular convolution of the dilated, group-expanded kernel on
    the ``torus``: the max over frequencies of ``|K(f)|_2`` (Sedghi, Gupta & Long 2019). ``K(f)`` is computed
    from the taps with float64 phases; each entry is a sum of ``T`` taps of modulus-1 factors, within
    ``gamma_{T+8} sum |w|``, so ``|fl(K) - K|_F <= gamma_{T+8} sqrt(T) |w|_F`` is added."""
    c_out, c_in_g, kh, kw = weight.shape
    full = torch.zeros(c_out, c_in_g * groups, kh, kw, dtype=torch.float64)
    per = c_out // groups
    for g in range(groups):
        full[g * per:(g + 1) * per, g * c_in_g:(g + 1) * c_in_g] = weight[g * per:(g + 1) * per].double()
    h, w = torus
    rows = torch.arange(kh) * dilation[0] % h
    cols = torch.arange(kw) * dilation[1] % w
    fu, fv = torch.arange(h), torch.arange(w // 2 + 1)
    turns = ((rows[:, None] * fu[None, :] % h).double() / h)[:, None, :, None] + \
        ((cols[:, None] * fv[None, :] % w).double() / w)[None, :, None, :]
    phase = torch.polar(torch.ones_like(turns), -2.0 * math.pi * turns).reshape(kh * kw, -1)  # (T, F)
    taps = full.reshape(c_out * full.shape[1], kh * kw).to(torch.complex128)  # (c_out c_in, T)
    best = 0.0
    for lo in range(0, phase.shape[1], 256):
        spectrum = (taps @ phase[:, lo:lo + 256]).mT.reshape(-1, c_out, full.shape[1])
        best = max(best, spectral_norm_upper(spectrum))
    taps_n = kh * kw
    return best + gamma(taps_n + 8) * math.sqrt(taps_n) * float(full.norm())


def conv2d_norm_bound(layer: nn.Conv2d, size: tuple[int, int]) -> float:
    """A sound upper bound on the operator norm of ``layer``'s linear part on ``C x size`` inputs.

    * Circular padding of ``d (k - 1)`` in total per dimension, stride 1: the layer *is* the circular
      convolution on the input's own torus, whose norm is exact by the FFT (:func:`_torus_bound`).
    * Otherwise: pad, then a valid convolution. The valid convolution of the padded ``(H_p, W_p)`` image is a
      subset of the rows of the circular convolution on the ``H_p x W_p`` torus (no tap wraps for a valid
      output; a stride keeps a subset of them), so its norm is at most the torus bound. The padding ``P`` puts
      each output pixel at one input pixel (or zero), so ``|P|_2 = sqrt(max multiplicity)``, counted exactly
      from ``P^T 1`` (1 for zeros, up to 2 per axis for reflect, up to ``1 + p`` per axis for replicate).
    * When the explicit matrix of the layer at this size is small (:data:`EXPLICIT_MAX_ENTRIES`), its own
      spectral norm (:func:`spectral_norm_upper`), which is exact, and the smaller of the two is taken.
    """
    weight = layer.weight.detach().double().cpu()  # the bound is computed on the CPU, in float64
    left, right, top, bottom = _pad_amounts(layer)
    dil, stride = tuple(layer.dilation), tuple(layer.stride)
    kh, kw = weight.shape[-2:]
    circulant = (layer.padding_mode == "circular" and stride == (1, 1)
                 and left + right == dil[1] * (kw - 1) and top + bottom == dil[0] * (kh - 1))
    if circulant:
        return _torus_bound(weight, dil, layer.groups, size)
    padded = (size[0] + top + bottom, size[1] + left + right)
    bound = math.sqrt(_pad_multiplicity(layer, size)) * _torus_bound(weight, dil, layer.groups, padded)
    c_in = weight.shape[1] * layer.groups
    n_in = c_in * size[0] * size[1]
    with torch.no_grad():
        n_out = _conv_linear(layer, torch.zeros(1, c_in, *size, dtype=torch.float64), weight).numel()
    if n_in * n_out <= EXPLICIT_MAX_ENTRIES:
        with torch.no_grad():
            basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, c_in, *size)
            matrix = _conv_linear(layer, basis, weight).reshape(n_in, -1)
        bound = min(bound, spectral_norm_upper(matrix) + gamma(kh * kw + 8) * float(matrix.norm()))
    return bound


@proves(nn.Conv2d)
def _conv2d(layer: nn.Conv2d, ctx: ProofContext, path: str) -> LayerProof:
    """Any ``nn.Conv2d`` (padding mode, padding, stride, dilation, groups, kernel parity): the bound of
    :func:`conv2d_norm_bound` at the input's real size, the same in exact arithmetic and as executed (the
    float64 forward applies the exactly upcast stored weights). Rounding: each output is an inner product of
    ``c_in / groups * k_h k_w`` terms (:func:`_dense_terms`); ``|| |W| ||_2`` by Schur's test on the absolute
    kernel (rows: one output channel's taps; columns: one input channel's taps over all outputs), times the
    padding's ``sqrt(multiplicity)``."""
    shape = ctx.shapes[layer]
    if len(shape) != 3:
        raise UnprovenModule(path, layer, f"expects a batched (B, C, H, W) input, got per-sample shape {shape}")
    lip = conv2d_norm_bound(layer, (int(shape[1]), int(shape[2])))
    w = layer.weight.detach().double().cpu().abs()
    with torch.no_grad():
        out = _conv_linear(layer, torch.zeros(1, *shape, dtype=torch.float64), w)
    bias = 0.0 if layer.bias is None else float(layer.bias.detach().double().norm()) * math.sqrt(out[0, 0].numel())
    mult = _pad_multiplicity(layer, (int(shape[1]), int(shape[2])))
    abs_norm = _schur(w.sum((1, 2, 3)).max(), w.sum((0, 2, 3)).max()) * math.sqrt(mult)
    return LayerProof(lip, lip, _dense_terms(layer, w[0].numel(), abs_norm, lip, bias, ctx.u))


@proves(nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AdaptiveAvgPool1d)
def _avg_pool(module: nn.Module, ctx: ProofContext, path: str) -> LayerProof:
    """A linear map ``A`` with non-negative entries (any padding, ceil_mode, divisor): Schur's test with the row
    sums ``A 1`` and column sums ``A^T 1``, computed in float64 (within ``gamma_N`` of ``N`` input entries).
    Rounding: each output is a sum of its window and a division, within ``gamma_{N+1} (A |x|)``, whose norm is
    at most ``gamma_{N+1} L |x|``. A non-positive ``divisor_override`` (torch accepts negative ones) makes the
    entries negative, outside Schur's test as used here: refused."""
    divisor = getattr(module, "divisor_override", None)
    if divisor is not None and not divisor > 0:
        raise UnprovenModule(path, module, f"divisor_override={divisor} is not positive")
    shape = ctx.shapes[module]
    ones = torch.ones(1, *shape, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        rows = module(ones)
        (cols,) = torch.autograd.grad(rows.sum(), ones)
    n = math.prod(shape)
    lip = _schur(rows.detach().max(), cols.max()) * (1 + gamma(n + 2))
    return LayerProof(lip, lip, (Term((module,), gamma(n + 1, ctx.u) * lip, 0.0),))


# ---------------------------------------------------------------------------- walking a tree that runs
def input_shapes(module: nn.Module, x: Tensor) -> dict[nn.Module, tuple[int, ...]]:
    """Per-sample input shape of every submodule, recorded during one forward pass (None for a module that ran on
    inputs of several shapes, or on something other than a tensor)."""
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def hook(mod: nn.Module, args: tuple) -> None:
        shape = tuple(args[0].shape[1:]) if args and isinstance(args[0], Tensor) else None
        if mod in shapes and shapes[mod] != shape:
            shapes[mod] = None  # several sizes: ctx.prove refuses it
        else:
            shapes[mod] = shape

    handles = [m.register_forward_pre_hook(hook) for m in module.modules()]
    try:
        with torch.inference_mode():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return shapes


def is_sequence(module: nn.Module) -> bool:
    """Whether ``module`` runs as an ``nn.Sequential`` (its proof is the sequence's)."""
    return find_proof(module) is _sequential


def probe_dtype(module: nn.Module) -> torch.dtype:
    """float64 when some parameter is (the float64 forward of widened layers), else the parameters' dtype."""
    dtypes = {p.dtype for p in module.parameters() if p.is_floating_point()}
    return torch.float64 if torch.float64 in dtypes or not dtypes else next(iter(dtypes))


def executed_bound(encoder: nn.Module, input_shape: Sequence[int], device: torch.device | str = "cpu",
                   cache: BoundCache | None = None, shapes: dict[nn.Module, tuple[int, ...]] | None = None,
                   *, strict: bool = False) -> ExecutedBound | None:
    """The as-executed bound of ``encoder`` (in ``eval()``) on inputs of shape ``input_shape``.

    A module without a proof gives None, or raises :class:`UnprovenModule` with ``strict``. ``cache`` reuses
    operator-norm bounds (:class:`lsrs.executed.BoundCache`); ``shapes`` (:func:`input_shapes` of a forward pass
    that included ``encoder``) spares the pass. Builds the cached operators if needed.
    """
    missing = first_unproven(encoder)
    if missing is not None:
        if strict:
            raise missing
        return None
    if type(encoder) is nn.Identity:  # checked above: no hook, no patch
        return ExecutedBound(1.0, 1.0, ())
    if any(m.training for m in encoder.modules()):
        raise ValueError("the encoder is in training mode: call .eval() on it before certifying "
                         "(its cached operators are what runs and what the bound covers)")
    if shapes is None:
        shapes = input_shapes(encoder, torch.zeros(1, *input_shape, dtype=probe_dtype(encoder), device=device))
    ctx = ProofContext(shapes, cache.norm_bound if cache is not None else operator_norm_bound)
    try:
        proof = ctx.prove(encoder, "")
    except UnprovenModule:
        if strict:
            raise
        return None
    bound = ExecutedBound(proof.executed, proof.expansion, proof.terms, user_proof=bool(ctx.user_proofs))
    if bound.rel_total * bound.lipschitz_plus > _MAX_EPS:
        raise ValueError(f"rounding analysis out of its first-order range (relative error {bound.rel_total:.2e})")
    return bound


_WIDENED = (_linear, _conv2d)  # proofs of layers whose float64 forward needs float64 weights


def executable_copy(module: nn.Module, widen: bool = True, *, verify: bool = False) -> nn.Module:
    """A private ``eval()`` copy of ``module`` with frozen parameters, the one a certificate proves and runs.

    Cached Cayley operators are not copied (the copy builds its own, so the caller's memory is not doubled)
    and every Cayley convolution caches (``cache=True``: the bound covers the cached operator, see
    :func:`_cayley_conv`). With ``widen``, the weights of standard layers (``nn.Linear``, ``nn.Conv2d``) and the
    own tensors of layers proven outside the library are upcast exactly to float64, so the as-executed float64
    forward applies the stored values. With ``verify``, the copy itself is checked (:func:`first_unproven`):
    copying runs ``__deepcopy__`` methods of whatever the module holds, which could add hooks or call paths.
    """
    memo: dict[int, object] = {}
    for m in module.modules():
        for name in ("_cache", "_cache64"):
            if isinstance(getattr(m, name, None), dict):
                memo[id(getattr(m, name))] = {}
    clone = copy.deepcopy(module, memo).eval().requires_grad_(False)
    for m in clone.modules():
        found = _find(m) if metaclass_refusal(type(m)) is None else None
        if found is None:
            continue
        if found[1] is _cayley_conv:
            m.cache = True
        if widen and (found[1] in _WIDENED or not found[2]):
            m._apply(_to_float64, recurse=False)
    if verify:
        refused = first_unproven(clone)
        if refused is not None:
            raise UnprovenModule(refused.path, refused.module, f"{refused.why} (found in the private copy, after "
                                                               "copying)")
    return clone


def _to_float64(t: Tensor) -> Tensor:
    return t.to(torch.float64) if t.is_floating_point() else t


def named_proofs(module: nn.Module, shapes: dict[nn.Module, tuple[int, ...]]) -> Iterator[tuple[str, LayerProof]]:
    """``(path, proof)`` of every module of the tree that has one (for reports)."""
    ctx = ProofContext(shapes)
    ctx.prove(module, "")
    names = {m: n for n, m in module.named_modules()}
    for m, proof in ctx.proofs.items():
        yield names.get(m, "?"), proof
