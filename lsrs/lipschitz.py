"""Proof tools for the encoder's Lipschitz constant (Theorem 1 needs an upper bound ``L``).

* :func:`conv_singular_values` - every singular value of a 2-D circular convolution, exactly, via the FFT
  (Sedghi, Gupta & Long 2019): the operator is block-diagonal in the Fourier basis.
* :func:`proven_bound` - an upper bound for a module built from known 1-Lipschitz atoms: exact per-layer
  constants multiplied through ``nn.Sequential`` and combined convexly through ``ConvexResidual``.
* :func:`jacobian_spectral_norm` / :func:`pair_lipschitz` - empirical *lower* bounds: power iteration on
  ``J^T J`` (jvp / vjp) and gradient ascent on ``|f(x) - f(x')| / |x - x'|`` over input pairs.
* :func:`audit` - the per-layer table printed by ``bench info``.

A model is sound when ``empirical <= proven <= declared``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import pandas as pd
import torch
from torch import Tensor, nn

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


def _input_shapes(module: nn.Module, x: Tensor) -> dict[nn.Module, tuple[int, ...]]:
    """Per-sample input shape of every submodule, recorded during one forward pass."""
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def hook(mod: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], Tensor):
            shapes.setdefault(mod, tuple(args[0].shape[1:]))

    handles = [m.register_forward_pre_hook(hook) for m in module.modules()]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return shapes


def _bound(module: nn.Module, shapes: dict[nn.Module, tuple[int, ...]]) -> float:
    if isinstance(module, nn.Sequential):
        out = 1.0
        for child in module:
            out *= _bound(child, shapes)
        return out
    if isinstance(module, ConvexResidual):
        a = float(module.alpha.detach())
        return a * _bound(module.main, shapes) + (1.0 - a) * _bound(module.skip, shapes)
    if isinstance(module, _FREE):
        return 1.0
    if isinstance(module, CayleyConv2d):
        return module.lipschitz_bound(shapes[module])
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
    p = next(iter(module.parameters()), None)
    x = torch.zeros(1, *input_shape, dtype=p.dtype if p is not None else torch.float32,
                    device=p.device if p is not None else "cpu")
    was_training = module.training
    module.eval()
    try:
        return _bound(module, _input_shapes(module, x))
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
def audit(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    iters: int = 30,
    steps: int = 30,
    batch: int = 2,
    empirical: bool = True,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> pd.DataFrame:
    """Per-layer Lipschitz audit of ``model.encoder`` (a :class:`lsrs.models.Split`).

    One row per top-level stage of the encoder: input / output shape, the exact bound of the stage
    (``bound``), the running product (``cumulative``), and the empirical local constant of the stage at the
    activations of a random image batch (``empirical``, power iteration, a lower bound). A last row
    ``encoder`` holds the proven product and the empirical estimate of the whole encoder (power iteration
    plus pair search). ``df.attrs`` carries ``declared`` (``model.encoder_lipschitz``), ``proven``,
    ``empirical`` and ``sound`` (``empirical <= proven + 1e-4`` and ``proven <= declared + 1e-6``).
    Computations run in ``dtype`` (float64 by default) on a frozen copy, on the model's device.
    """
    if input_shape is None:
        cfg = getattr(model, "config", {})
        input_shape = (int(cfg.get("in_channels", 3)), int(cfg.get("in_size", 32)), int(cfg.get("in_size", 32)))
    input_shape = tuple(int(s) for s in input_shape)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    encoder = _frozen_copy(model.encoder, dtype)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *input_shape, generator=gen, dtype=dtype).to(device)

    stages = list(encoder.named_children()) if isinstance(encoder, nn.Sequential) else [("encoder", encoder)]
    if not stages:
        stages = [("identity", encoder)]
    rows = []
    cumulative = 1.0
    h = x
    for name, stage in stages:
        in_shape = tuple(h.shape[1:])
        bound = proven_bound(stage, in_shape)
        emp = jacobian_spectral_norm(stage, h, iters=iters, generator=gen) if empirical else math.nan
        with torch.no_grad():
            h_next = stage(h)
        cumulative *= bound
        rows.append(
            {
                "layer": name,
                "type": type(stage).__name__,
                "input_shape": "x".join(map(str, in_shape)),
                "output_shape": "x".join(map(str, h_next.shape[1:])),
                "bound": bound,
                "cumulative": cumulative,
                "empirical": emp,
            }
        )
        h = h_next
    proven = cumulative
    emp_total = empirical_lipschitz(encoder, x, iters=iters, steps=steps, seed=seed) if empirical else math.nan
    rows.append(
        {
            "layer": "encoder",
            "type": type(model.encoder).__name__,
            "input_shape": "x".join(map(str, input_shape)),
            "output_shape": "x".join(map(str, h.shape[1:])),
            "bound": proven,
            "cumulative": proven,
            "empirical": emp_total,
        }
    )
    df = pd.DataFrame(rows)
    declared = float(getattr(model, "encoder_lipschitz", math.nan))
    df.attrs.update(
        declared=declared,
        proven=proven,
        empirical=emp_total,
        sound=bool(proven <= declared + 1e-6 and (math.isnan(emp_total) or emp_total <= proven + 1e-4)),
    )
    return df
