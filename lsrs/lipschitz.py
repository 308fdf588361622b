"""Proof tools for the encoder's Lipschitz constant (Theorem 1 needs an upper bound ``L``).

* :func:`conv_singular_values` - every singular value of a 2-D circular convolution, exactly, via the FFT
  (Sedghi, Gupta & Long 2019): the operator is block-diagonal in the Fourier basis.
* :func:`proven_bound` - an upper bound for a module whose every layer has a proof (:mod:`lsrs.proofs`):
  per-layer bounds multiplied through ``nn.Sequential`` and combined convexly through ``ConvexResidual``.
* :func:`jacobian_spectral_norm` / :func:`pair_lipschitz` - empirical *lower* bounds: power iteration on
  ``J^T J`` (jvp / vjp) and gradient ascent on ``|f(x) - f(x')| / |x - x'|`` over input pairs.
* :func:`audit` - the per-layer table printed by ``bench info``: the bound of the proof in exact arithmetic
  beside the bound as executed (:mod:`lsrs.executed`).

A model is sound when ``empirical <= executed`` and ``proven <= declared``; certificates divide by the
executed bound (never below the declared one).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch import Tensor, nn

from lsrs.executed import U64, BoundCache, operator_norm_bound
from lsrs.layers import circular_kernel
from lsrs.proofs import (
    ProofContext,
    UnprovenModule,
    executable_copy,
    first_unproven,
    input_shapes,
    is_sequence,
    probe_dtype,
    prove,
)

__all__ = [
    "audit",
    "conv_singular_values",
    "empirical_lipschitz",
    "jacobian_spectral_norm",
    "pair_lipschitz",
    "proven_bound",
]


def conv_singular_values(weight: Tensor, input_size: int | Sequence[int]) -> Tensor:
    """All singular values (descending) of the circular convolution with ``weight`` on ``n x n`` inputs.

    ``weight`` is ``(c_out, c_in, k_h, k_w)``; ``input_size`` is ``n`` or ``(h, w)``. Following Sedghi et
    al. (2019), the kernel is placed on the ``h x w`` torus, transformed by ``fft2``, and the singular
    values of the ``c_out x c_in`` matrix at each of the ``h * w`` frequencies are collected.
    """
    size = (int(input_size), int(input_size)) if isinstance(input_size, int) else tuple(int(s) for s in input_size)
    if len(size) != 2:
        raise ValueError(f"input_size must be n or (h, w), got {input_size!r}")
    with torch.no_grad():
        spectrum = torch.fft.fft2(circular_kernel(weight.detach(), size))  # (c_out, c_in, h, w)
        s = torch.linalg.svdvals(spectrum.permute(2, 3, 0, 1))
    return s.reshape(-1).sort(descending=True).values


# ---------------------------------------------------------------------------- proven upper bounds
def _proof(module: nn.Module, input_shape: Sequence[int], cache: BoundCache | None = None):
    """The composed proof (:func:`lsrs.proofs.prove`) of a private executable copy of ``module``."""
    clone = executable_copy(module)
    p = next(iter(module.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    x = torch.zeros(1, *input_shape, dtype=probe_dtype(clone), device=device)
    return prove(clone, input_shapes(clone, x), cache)


def proven_bound(module: nn.Module, input_shape: Sequence[int]) -> float:
    """An upper bound on the l2 Lipschitz constant of ``module`` on inputs of shape ``input_shape``, as executed.

    The composed per-layer proofs of :mod:`lsrs.proofs` (rigorous bounds of the operators that run, e.g. each
    Cayley convolution's computed operator at its actual spatial size), on a private eval-mode copy (the
    caller's module is not touched). A module without a proof (BatchNorm, a std division, ...) gives ``inf``;
    :func:`lsrs.proofs.prove` raises instead, naming it.
    """
    try:
        return _proof(module, tuple(int(s) for s in input_shape)).executed
    except UnprovenModule:
        return math.inf


# ---------------------------------------------------------------------------- empirical lower bounds
def _per_sample_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1)


def _unit(t: Tensor) -> Tensor:
    return t / _per_sample_norm(t).clamp_min(1e-30).view(-1, *([1] * (t.dim() - 1)))


def jacobian_spectral_norm(
    module: nn.Module, x: Tensor, iters: int = 50, generator: torch.Generator | None = None
) -> float:
    """Power iteration on ``J^T J`` at ``x`` (``J`` = Jacobian of ``module``): a lower bound on ``|J|_2``.

    ``J^T u`` is a vector-Jacobian product (reverse mode); ``J v`` is obtained by differentiating it with
    respect to ``u`` (double backward), so one forward pass serves all iterations.

    ``x`` is a batch; each sample is iterated separately (the module must act per sample, e.g. in
    ``eval()``), and the largest ``|J v|`` over the batch, with ``|v| = 1``, is returned. Each returned
    value is attained, so it never exceeds the true local (hence global) Lipschitz constant.
    """
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = module(xg)
        u = torch.zeros_like(y, requires_grad=True)
        # J^T u, kept differentiable in u: its derivative along v gives J v (the double-backward trick).
        (jt_u,) = torch.autograd.grad(y, xg, u, create_graph=True)

    def jvp(v: Tensor) -> Tensor:
        (out,) = torch.autograd.grad(jt_u, u, v, retain_graph=True)
        return out

    v = _unit(torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device))
    for _ in range(iters):
        (w,) = torch.autograd.grad(y, xg, jvp(v), retain_graph=True)
        v = _unit(w)
    return float(_per_sample_norm(jvp(v)).detach().max())


def pair_lipschitz(
    module: nn.Module,
    x: Tensor,
    steps: int = 50,
    lr: float = 0.01,
    radius: float = 0.1,
    generator: torch.Generator | None = None,
) -> float:
    """Gradient ascent (Adam) on ``|f(x) - f(x')| / |x - x'|`` over pairs, started at ``x' = x + delta``.

    Returns the largest ratio observed (over steps and samples): a certified lower bound on the global
    Lipschitz constant, since each ratio is attained by an actual pair.
    """
    x0 = x.detach().clone().requires_grad_(True)
    delta = radius * _unit(torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device))
    delta.requires_grad_(True)
    opt = torch.optim.Adam([x0, delta], lr=lr)
    best = 0.0
    for _ in range(steps + 1):
        num = _per_sample_norm(module(x0 + delta) - module(x0))
        ratio = num / _per_sample_norm(delta).clamp_min(1e-30)
        best = max(best, float(ratio.detach().max()))
        opt.zero_grad()
        (-ratio.sum()).backward()
        opt.step()
    return best


def empirical_lipschitz(
    module: nn.Module, x: Tensor, iters: int = 30, steps: int = 30, seed: int = 0
) -> float:
    """``max`` of :func:`jacobian_spectral_norm` and :func:`pair_lipschitz` at ``x``: a lower bound on L."""
    gen = torch.Generator().manual_seed(seed)
    power = jacobian_spectral_norm(module, x, iters=iters, generator=gen)
    pairs = pair_lipschitz(module, x, steps=steps, generator=gen) if steps > 0 else 0.0
    return max(power, pairs)


def _frozen_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """An ``eval()``, parameter-frozen copy in ``dtype`` (so the certification path, with caches, is measured)."""
    clone = copy.deepcopy(module).to(dtype).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


# ---------------------------------------------------------------------------- audit
def audit(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    iters: int = 30,
    steps: int = 30,
    batch: int = 2,
    empirical: bool = True,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    cache: BoundCache | None = None,
    in_place: bool = False,
) -> pd.DataFrame:
    """Per-layer Lipschitz audit of ``model.encoder`` (a :class:`lsrs.models.Split`), exact and as executed.

    One row per top-level stage of the encoder: input / output shape, the bound of the proof in exact
    arithmetic (``bound``, Cayley convolutions count 1), the bound of the stage *as executed* (``executed``:
    float64 bounds of the cached float32 operators; both from the per-layer proofs of :mod:`lsrs.proofs`, inf
    for a stage containing a module without one), their running products
    (``cumulative``, ``cumulative_executed``), and the empirical local constant of the stage (``empirical``:
    power iteration in float64 through the float32 operators, a lower bound). A last row ``encoder`` holds
    the products and the empirical estimate of the whole encoder (power iteration plus pair search).
    ``df.attrs`` carries ``declared`` (``model.encoder_lipschitz``), ``proven`` (exact arithmetic),
    ``executed`` and ``empirical``, and ``sound`` (``empirical <= executed``, ``proven <= declared``).
    ``progress`` is called with each stage's name before it is bounded (large encoders take seconds per stage).
    ``cache`` reuses operator-norm bounds proven before (:class:`lsrs.executed.BoundCache`). ``in_place``
    audits ``model.encoder`` itself, which must then be in ``eval()`` with frozen float parameters (its cached
    operators are reused, e.g. those :func:`lsrs.flops.flop_split` built), instead of a frozen copy.
    """
    if input_shape is None:
        cfg = getattr(model, "config", {})
        input_shape = (int(cfg.get("in_channels", 3)), int(cfg.get("in_size", 32)), int(cfg.get("in_size", 32)))
    input_shape = tuple(int(s) for s in input_shape)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    if in_place:
        if any(m.training for m in model.encoder.modules()) or any(p.requires_grad for p in model.parameters()):
            raise ValueError("in_place=True audits the encoder as it is: call model.eval().requires_grad_(False)")
        encoder = model.encoder
    else:
        encoder = executable_copy(model.encoder)
    as_executed = first_unproven(encoder) is None
    if not as_executed:  # no proof to run in float64: measure a float64 copy (the bounds are inf)
        encoder = _frozen_copy(model.encoder, torch.float64)
    gen = torch.Generator().manual_seed(seed)
    # the empirical estimates run in float64; without them one float32 image suffices to pass the shapes on
    # (and spares the float64 copies of every operator, gigabytes at ImageNet size)
    wide = empirical or not as_executed or probe_dtype(encoder) == torch.float64
    x = torch.rand(batch if wide else 1, *input_shape, generator=gen, dtype=torch.float64).to(device)
    if not wide:
        x = x.to(param.dtype if param is not None else torch.float32)

    stages = list(encoder.named_children()) if is_sequence(encoder) else [("encoder", encoder)]
    stages = stages or [("identity", encoder)]
    ctx = ProofContext(input_shapes(encoder, x[:1]),  # every submodule's input shape, from one pass
                       cache.norm_bound if cache is not None else operator_norm_bound)
    rows = []
    cumulative, cumulative_executed = 1.0, 1.0
    h = x
    for name, stage in stages:
        if progress is not None:
            progress(name)
        in_shape = tuple(h.shape[1:])
        try:
            proof = ctx.prove(stage, name)
            bound, executed_l = proof.exact, proof.executed
        except UnprovenModule:
            bound = executed_l = math.inf
        emp = jacobian_spectral_norm(stage, h, iters=iters, generator=gen) if empirical else math.nan
        with torch.no_grad():
            h_next = stage(h)
        cumulative *= bound
        cumulative_executed *= executed_l
        rows.append(_audit_row(name, stage, in_shape, h_next, bound, cumulative, executed_l, cumulative_executed,
                               emp))
        h = h_next
    if progress is not None:
        progress("encoder")
    # the whole encoder is the sequence of its stages: the product (with the walker's rounding allowance)
    executed_total = cumulative_executed * (1 + 4 * U64 * len(stages))
    emp_total = empirical_lipschitz(encoder, x, iters=iters, steps=steps, seed=seed) if empirical else math.nan
    rows.append(_audit_row("encoder", model.encoder, input_shape, h, cumulative, cumulative, executed_total,
                           executed_total, emp_total))
    df = pd.DataFrame(rows)
    declared = float(getattr(model, "encoder_lipschitz", math.nan))
    df.attrs.update(
        declared=declared,
        proven=cumulative,
        executed=executed_total,
        empirical=emp_total,
        sound=bool(cumulative <= declared + 1e-12 and math.isfinite(executed_total)
                   and (math.isnan(emp_total) or emp_total <= executed_total)),
    )
    return df


def _audit_row(name: str, stage: nn.Module, in_shape: tuple, out: Tensor, bound: float, cumulative: float,
               executed: float, cumulative_executed: float, emp: float) -> dict:
    return {
        "layer": name,
        "type": type(stage).__name__,
        "input_shape": "x".join(map(str, in_shape)),
        "output_shape": "x".join(map(str, out.shape[1:])),
        "bound": bound,
        "cumulative": cumulative,
        "executed": executed,
        "cumulative_executed": cumulative_executed,
        "empirical": emp,
    }
