"""Proof tools for the encoder's Lipschitz constant (Theorem 1 needs an upper bound ``L``).

* :func:`conv_singular_values` - every singular value of a 2-D circular convolution, exactly, via the FFT
  (Sedghi, Gupta & Long 2019): the operator is block-diagonal in the Fourier basis.
* :func:`proven_bound` - an upper bound for a module built from known 1-Lipschitz atoms: exact per-layer
  constants multiplied through ``nn.Sequential`` and combined convexly through ``ConvexResidual``.
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

from lsrs.executed import U64, BoundCache, executed_bound, has_executed_bound, input_shapes
from lsrs.layers import CayleyConv2d, ChannelPad, ConvexResidual, MaxMin, MeanShift, circular_kernel

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
_FREE = (nn.Identity, nn.PixelUnshuffle, nn.Flatten, nn.ReLU, MaxMin, ChannelPad, MeanShift)


def _bound(module: nn.Module, shapes: dict[nn.Module, tuple[int, ...]], cayley_exact: bool = False) -> float:
    if isinstance(module, nn.Sequential):
        out = 1.0
        for child in module:
            out *= _bound(child, shapes, cayley_exact)
        return out
    if isinstance(module, ConvexResidual):
        a = float(module.alpha.detach())
        return a * _bound(module.main, shapes, cayley_exact) + (1.0 - a) * _bound(module.skip, shapes, cayley_exact)
    if isinstance(module, _FREE):
        return 1.0
    if isinstance(module, CayleyConv2d):
        return 1.0 if cayley_exact else module.lipschitz_bound(shapes[module])
    if isinstance(module, nn.Linear):
        return float(torch.linalg.matrix_norm(module.weight.detach(), ord=2))
    if isinstance(module, nn.Conv2d) and module.padding_mode == "circular" and module.stride == (1, 1):
        return float(conv_singular_values(module.weight, shapes[module][-2:])[0])
    bound = getattr(module, "lipschitz_bound", None)
    if callable(bound) and module in shapes:
        return float(bound(shapes[module]))
    return math.inf


def proven_bound(module: nn.Module, input_shape: Sequence[int]) -> float:
    """An upper bound on the l2 Lipschitz constant of ``module`` on inputs of shape ``input_shape`` (C, H, W).

    Exact constants of the atoms (largest singular value of each Cayley conv at its actual spatial size,
    1 for MaxMin / padding / unshuffle / mean shift) multiplied through sequences, ``alpha``-combined through
    convex residuals. Anything without a known bound (BatchNorm, a std division, ...) gives ``inf``.
    """
    return _module_bound(module, input_shape, cayley_exact=False)


def _module_bound(module: nn.Module, input_shape: Sequence[int], cayley_exact: bool) -> float:
    """:func:`_bound` of ``module`` in eval mode, at the shapes of one forward pass of zeros."""
    p = next(iter(module.parameters()), None)
    x = torch.zeros(1, *input_shape, dtype=p.dtype if p is not None else torch.float32,
                    device=p.device if p is not None else "cpu")
    was_training = module.training
    module.eval()
    try:
        return _bound(module, input_shapes(module, x), cayley_exact)
    finally:
        module.train(was_training)


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
def exact_arithmetic_bound(module: nn.Module, input_shape: Sequence[int],
                           shapes: dict[nn.Module, tuple[int, ...]] | None = None) -> float:
    """The bound of the proof on paper: :func:`proven_bound` with every Cayley convolution counted as exactly
    (semi-)orthogonal, i.e. Lipschitz 1 (the Cayley transform of a skew-Hermitian matrix is unitary, paper
    Eq. 10; Trockman & Kolter 2021). No singular value is computed; the only work is one forward pass for the
    shapes, spared by ``shapes`` (:func:`lsrs.executed.input_shapes` of a pass that included ``module``)."""
    if shapes is not None:
        return _bound(module, shapes, cayley_exact=True)
    return _module_bound(module, input_shape, cayley_exact=True)


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
    float64 bounds of the cached float32 operators, :mod:`lsrs.executed`), their running products
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
        encoder = _frozen_copy(model.encoder, param.dtype if param is not None else torch.float32)
    as_executed = has_executed_bound(encoder)
    if not as_executed:  # the float64 forward needs the library's atoms; otherwise measure a float64 copy
        encoder = _frozen_copy(model.encoder, torch.float64)
    gen = torch.Generator().manual_seed(seed)
    # the empirical estimates run in float64; without them one float32 image suffices to pass the shapes on
    # (and spares the float64 copies of every operator, gigabytes at ImageNet size)
    wide = empirical or not as_executed
    x = torch.rand(batch if wide else 1, *input_shape, generator=gen, dtype=torch.float64).to(device)
    if not wide:
        x = x.to(param.dtype if param is not None else torch.float32)

    stages = list(encoder.named_children()) if isinstance(encoder, nn.Sequential) else [("encoder", encoder)]
    stages = stages or [("identity", encoder)]
    shapes = input_shapes(encoder, x[:1])  # every submodule's input shape, from one pass (not two per stage)
    rows = []
    cumulative, cumulative_executed = 1.0, 1.0
    h = x
    for name, stage in stages:
        if progress is not None:
            progress(name)
        in_shape = tuple(h.shape[1:])
        bound = exact_arithmetic_bound(stage, in_shape, shapes)
        executed = executed_bound(stage, in_shape, device, cache, shapes) if as_executed else None
        executed_l = executed.lipschitz if executed is not None else math.inf
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
