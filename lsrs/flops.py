"""FLOP split between encoder and classifier, and the FLOP-ideal LS-RS speedup.

IS-RS pays ``n`` full forward passes per image; LS-RS pays one encoder pass plus ``n`` classifier passes
(paper Section 2.1), so for large ``n`` the ideal speedup is ``flops_total / flops_classifier``.

Counts come from :class:`torch.utils.flop_counter.FlopCounterMode` on one image in ``eval()`` (after a
warm-up pass, so cached orthogonal operators are not counted: certification computes them once). Matmuls
and convolutions count ``2 * MACs``; the Cayley convs' per-frequency products are complex batched matmuls,
counted at 8 real FLOPs per complex MAC (torch's own formula ignores the dtype and would count 2); FFTs
are added with the usual ``5 N log2 N`` (complex) / ``2.5 N log2 N`` (real) estimate.
Element-wise ops (activations, BatchNorm at eval, additions) are not counted, as is customary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "flop_split"]

aten = torch.ops.aten


def _points(shape: Sequence[int], dims: Sequence[int]) -> tuple[int, int]:
    """(points per transform, number of transforms) for an FFT over ``dims`` of a tensor of ``shape``."""
    shape = tuple(getattr(shape, "shape", shape))  # a shape, or a tensor on torches that pass tensors
    n = math.prod(int(shape[d]) for d in dims)
    return n, math.prod(int(s) for s in shape) // max(n, 1)


def _fft_r2c_flop(x_shape, dim, *args, out_shape=None, **kwargs) -> int:
    n, batch = _points(x_shape, dim)
    return int(2.5 * n * math.log2(max(n, 2)) * batch)


def _fft_c2r_flop(x_shape, dim, *args, out_shape=None, **kwargs) -> int:
    n, batch = _points(out_shape, dim)
    return int(2.5 * n * math.log2(max(n, 2)) * batch)


def _fft_c2c_flop(x_shape, dim, *args, out_shape=None, **kwargs) -> int:
    n, batch = _points(x_shape, dim)
    return int(5 * n * math.log2(max(n, 2)) * batch)


def _bmm_flop(a, b, *args, out_val=None, **kwargs) -> int:
    """``2 * MACs`` of ``bmm(a, b)``; a complex MAC is 4 real multiplications and 4 real additions."""
    bsz, m, k = tuple(getattr(a, "shape", a))
    flops = 2 * bsz * m * k * int(tuple(getattr(b, "shape", b))[-1])
    is_complex = getattr(a, "is_complex", None)
    return 4 * flops if is_complex is not None and is_complex() else flops


_bmm_flop._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode passes the tensors, not shapes

_FFT_MAPPING = {
    aten._fft_r2c: _fft_r2c_flop,
    aten._fft_c2r: _fft_c2r_flop,
    aten._fft_c2c: _fft_c2c_flop,
    aten.bmm: _bmm_flop,
}


def _counter() -> FlopCounterMode:
    try:
        return FlopCounterMode(display=False, custom_mapping=_FFT_MAPPING)
    except TypeError:  # a torch without custom_mapping: FFTs go uncounted
        return FlopCounterMode(display=False)


def count_flops(module: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of ``module(x)`` (no grad), as counted by ``FlopCounterMode`` plus FFTs."""
    with torch.no_grad(), _counter() as counter:
        module(x)
    return int(counter.get_total_flops())


def flop_split(model: nn.Module, input_shape: tuple[int, int, int]) -> dict:
    """FLOPs per single image of ``model`` (a :class:`lsrs.models.Split`), split at the latent.

    Returns ``flops_total``, ``flops_encoder``, ``flops_classifier`` (ints) and ``ideal_speedup`` =
    ``flops_total / flops_classifier``. When ``model`` carries ``arch`` and ``config`` (a builder's
    output), also ``flops_baseline`` (the ``fors=0`` twin's total, what IS-RS runs) and
    ``ideal_speedup_vs_baseline`` = ``flops_baseline / flops_classifier``.
    """
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(1, *input_shape, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            z = model.encoder(x)  # warm-up: builds the eval caches outside the counter
        enc = count_flops(model.encoder, x)
        cls = count_flops(model.classifier, z)
        total = enc + cls  # Split.forward is classifier(encoder(x)): no third pass (the costliest at 224x224)
    finally:
        model.train(was_training)
    out: dict = {
        "flops_total": total,
        "flops_encoder": enc,
        "flops_classifier": cls,
        "ideal_speedup": total / cls if cls else math.inf,
    }
    arch, config = getattr(model, "arch", None), getattr(model, "config", None)
    if arch is not None and isinstance(config, dict):
        if int(getattr(model, "fors", 0)) == 0:
            base = total
        else:
            from lsrs.models import build_model

            # FLOPs depend on shapes only: the twin is built and run on the meta device (no weights, no work)
            with torch.device("meta"):
                twin = build_model(arch, **{**config, "fors": 0}).to(dtype=dtype).eval()
            base = count_flops(twin, x.to("meta"))
        out["flops_baseline"] = base
        out["ideal_speedup_vs_baseline"] = base / cls if cls else math.inf
    return out
