"""The encoder's bound as executed (lsrs.executed) against exact SVDs, power iteration and an 80-bit oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_lipschitz import _perturb  # a few large SGD steps off the init, as for the declared bound
from torch import nn

from lsrs.executed import encode_executed, operator_norm_bound
from lsrs.layers import CayleyConv2d, ChannelPad, ConvexResidual, MaxMin, MeanShift
from lsrs.lipschitz import jacobian_spectral_norm
from lsrs.models import resnet18, valid_fors
from lsrs.proofs import executed_bound
from lsrs.smoothing import LatentSmooth, smooth_model


def _cayley_layers(module: nn.Module) -> list[CayleyConv2d]:
    return [m for m in module.modules() if isinstance(m, CayleyConv2d)]


# ---------------------------------------------------------------------------- operator norm bound
@pytest.mark.parametrize("shape", [(7, 5, 5), (3, 6, 4), (2, 4, 9), (5, 5)])
@pytest.mark.parametrize("noise", [0.0, 1e-6, 1e-3, 0.5])
def test_operator_norm_bound_is_above_the_exact_svd(shape, noise):
    """Upper bound on max_f |A_f|_2 (exact float64 SVD as the oracle); tight for near-orthogonal stacks."""
    gen = torch.Generator().manual_seed(len(shape) * 31 + int(noise * 1e6))
    a = torch.randn(*shape, dtype=torch.complex128, generator=gen)
    q = torch.linalg.qr(a if shape[-2] >= shape[-1] else a.mH).Q
    q = q if shape[-2] >= shape[-1] else q.mH
    op = (q + noise * torch.randn(q.shape, dtype=q.dtype, generator=gen)).to(torch.complex64)
    exact = float(torch.linalg.svdvals(op.to(torch.complex128)).max())
    bound = operator_norm_bound(op)
    assert bound >= exact
    k = min(shape[-2:])
    assert bound <= k**0.25 * exact * (1 + 1e-9)  # |G|_2 <= |G|_F <= sqrt(k) |G|_2
    if noise <= 1e-6:  # near-orthogonal (the float32 Cayley case): within a few 1e-6 of the exact norm
        assert bound - exact <= 10 * k * (noise + 1e-7)


def test_operator_norm_bound_of_a_non_finite_operator_is_infinite():
    """A NaN or inf entry (e.g. a failed inverse) must not vanish in max(): the bound is inf."""
    op = torch.linalg.qr(torch.randn(4, 6, 6, dtype=torch.complex128)).Q.to(torch.complex64)
    for bad in (float("nan"), float("inf")):
        broken = op.clone()
        broken[2, 1, 3] = bad
        assert operator_norm_bound(broken) == math.inf
        assert operator_norm_bound(broken.real.contiguous()) == math.inf


def test_operator_norm_bound_of_a_real_matrix():
    w = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    assert operator_norm_bound(w) >= 3.0
    assert operator_norm_bound(w) <= math.sqrt(9.0 + 0.25) + 1e-9  # the Gram Frobenius norm


# ---------------------------------------------------------------------------- L of the encoder as executed
@pytest.mark.parametrize("fors", [f for f in valid_fors("resnet18") if 0 < f < 18])  # 18: lsrs.margin
def test_executed_bound_is_above_power_iteration_on_the_float32_encoder(fors):
    """For every FoR after training steps: power iteration in float64 on the encoder with its float32
    cached operators (a lower bound on the executed map's constant) never exceeds the as-executed L."""
    torch.manual_seed(fors)
    model = resnet18(fors=fors, width=8, in_size=16, in_channels=3, mean=(0.49, 0.48, 0.45))
    _perturb(model)
    enc = model.encoder.eval().requires_grad_(False)
    bound = executed_bound(enc, (3, 16, 16))
    assert bound is not None
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    emp = jacobian_spectral_norm(enc, x, iters=20, generator=torch.Generator().manual_seed(1))
    assert emp <= bound.lipschitz
    assert bound.lipschitz == pytest.approx(1.0, abs=1e-3)
    assert bound.lipschitz >= 1.0


def test_perturbed_cached_operators_raise_l_and_shrink_radii():
    """Operators scaled by 1 + 1e-3 after building: L >= 1.001 and the radius shrinks in proportion.
    (Fails on code that divides by the declared 1.0.)"""
    torch.manual_seed(0)
    model = resnet18(num_classes=10, fors=3, width=8, in_size=16, in_channels=1).eval()
    smoother = smooth_model(model, 10, 0.5)
    x = torch.rand(1, 16, 16)
    before = smoother.certify(x, 32, 500, 0.01, 128, generator=3)
    layers = _cayley_layers(smoother.encoder)  # the smoother's private copy: the operators that run
    with torch.no_grad():
        for layer in layers:
            for op in layer._cache.values():
                op.mul_(1.0 + 1e-3)
    after = smoother.certify(x, 32, 500, 0.01, 128, generator=3)
    assert after.lipschitz >= 1.001
    assert after.lipschitz >= before.lipschitz * (1 + 1e-3) ** 1.5  # stem conv and the block's two convs
    assert before.radius_latent > 0 and after.radius_latent > 0
    # the radius is the latent radius (less 2 delta) over the executed L, for both
    for cert in (before, after):
        assert cert.radius <= cert.radius_latent / cert.lipschitz
        assert cert.radius == pytest.approx(cert.radius_latent / cert.lipschitz, rel=1e-5)
    assert after.radius < before.radius


def test_identity_encoder_has_no_rounding_term():
    model = resnet18(num_classes=10, fors=0, width=8, in_size=16, in_channels=1).eval()
    cert = smooth_model(model, 10, 0.5).certify(torch.rand(1, 16, 16), 32, 300, 0.01, 100, generator=1)
    assert cert.lipschitz == 1.0 and cert.latent_error == 0.0
    assert cert.radius == cert.radius_latent


class _Doubling(nn.Module):
    def forward(self, x):
        return 2 * x


def test_unknown_encoder_is_refused_unless_trusted():
    """A module without a proof: no as-executed bound; LatentSmooth refuses it by path and class, and with
    trust_lipschitz=True divides by the declared bound, recording the source."""
    enc = nn.Sequential(nn.Flatten(), _Doubling())
    assert executed_bound(enc.eval(), (4,)) is None
    head = nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r"no proven Lipschitz bound for encoder\.1 \(_Doubling\).*trust_lipschitz"):
        LatentSmooth(enc, head, 3, 0.5, 2.0)
    smoother = LatentSmooth(enc, head, 3, 0.5, 2.0, trust_lipschitz=True)
    cert = smoother.certify(torch.rand(4), 16, 200, 0.01, 100, generator=0)
    assert cert.lipschitz_source == "trusted" and cert.lipschitz == 2.0
    assert cert.radius == cert.radius_latent / 2.0


def test_a_linear_encoder_is_bounded_as_executed():
    enc = nn.Linear(4, 4)
    with torch.no_grad():
        enc.weight.copy_(2 * torch.eye(4))
        enc.bias.zero_()
    bound = executed_bound(enc.eval(), (4,))
    assert 2.0 <= bound.lipschitz <= 2.0 * (1 + 1e-12)


# ---------------------------------------------------------------------------- delta against an 80-bit oracle
def _ld(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().resolve_conj().numpy().astype(np.clongdouble if t.is_complex() else np.longdouble)


def _dft(n: int, inverse: bool = False) -> np.ndarray:
    k = np.arange(n, dtype=np.longdouble)
    sign = 1 if inverse else -1
    angle = sign * 2 * np.pi * np.longdouble(1) * np.outer(k, k) / n
    return (np.cos(angle) + 1j * np.sin(angle)).astype(np.clongdouble)


def _ref_cayley(layer: CayleyConv2d, x: np.ndarray) -> np.ndarray:
    """The exact map of the cached operator, in long double: full 2-D DFT, per-frequency product, inverse."""
    if layer.stride > 1:
        s = layer.stride
        c, h, w = x.shape
        x = x.reshape(c, h // s, s, w // s, s).transpose(0, 2, 4, 1, 3).reshape(c * s * s, h // s, w // s)
    c, h, w = x.shape
    op = _ld(layer.executed_operator((h, w)))
    if layer.kernel_size == 1:
        y = np.einsum("oc,chw->ohw", op, x)
    else:
        fh, fw = _dft(h), _dft(w)
        xf = np.einsum("uh,chw,vw->uvc", fh, x.astype(np.clongdouble), fw)  # (h, w, c)
        m = w // 2 + 1
        q_t = op.reshape(h, m, *op.shape[-2:])  # Q^T at the one-sided frequencies
        full = np.empty((h, w, *op.shape[-2:]), dtype=np.clongdouble)
        full[:, :m] = q_t
        for v in range(m, w):  # Q(-u, -v) = conj Q(u, v) for a real kernel
            full[:, v] = np.conj(q_t[(-np.arange(h)) % h, (-v) % w])
        yf = np.einsum("uvc,uvco->ouv", xf, full)
        y = np.real(np.einsum("hu,ouv,wv->ohw", _dft(h, True), yf, _dft(w, True))) / (h * w)
    if layer.bias is not None:
        y = y + _ld(layer.bias)[:, None, None]
    return y


def _ref(module: nn.Module, x: np.ndarray) -> np.ndarray:
    if isinstance(module, nn.Sequential):
        for child in module:
            x = _ref(child, x)
        return x
    if isinstance(module, ConvexResidual):
        a = np.longdouble(float(module.alpha.detach()))
        return a * _ref(module.main, x) + (1 - a) * _ref(module.skip, x)
    if isinstance(module, CayleyConv2d):
        return _ref_cayley(module, x)
    if isinstance(module, MaxMin):
        c = x.shape[0] // 2
        return np.concatenate([np.maximum(x[:c], x[c:]), np.minimum(x[:c], x[c:])])
    if isinstance(module, MeanShift):
        return x - _ld(module.mean)[0]
    if isinstance(module, ChannelPad):
        return np.concatenate([x, np.zeros((module.out_channels - x.shape[0], *x.shape[1:]), x.dtype)])
    if isinstance(module, nn.Identity):
        return x
    raise TypeError(type(module))


@pytest.mark.parametrize("fors", [3, 7])
def test_latent_error_bounds_the_distance_to_the_exact_latent(fors):
    """|z32 - z_exact| <= delta(0) = a, with z_exact evaluated in 80-bit long double (2^-64 unit roundoff,
    2000x finer than float64) from the same cached operators; and the float64 latent is far closer still."""
    if np.finfo(np.longdouble).eps >= np.finfo(np.float64).eps:
        pytest.skip("long double is no wider than float64 on this platform")
    torch.manual_seed(fors)
    model = resnet18(num_classes=10, fors=fors, width=4, in_size=8, in_channels=1, mean=(0.3,))
    _perturb(model, steps=2)
    enc = model.encoder.eval().requires_grad_(False)
    bound = executed_bound(enc, (1, 8, 8))
    for seed in range(3):
        x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
        z64, norms = encode_executed(enc, x, bound)
        a, b = bound.latent_error(norms, float(z64.norm()), z64.numel())
        exact = _ref(enc, _ld(x[0].double()))
        err32 = float(np.linalg.norm(_ld(z64.float().double()[0]) - exact))
        err64 = float(np.linalg.norm(_ld(z64[0]) - exact))
        a64, _ = bound.latent_error(norms, 0.0, 0)  # the float64 part of delta alone
        assert err64 <= a64 < 1e-10  # the rounding analysis of the float64 encoder holds on its own
        assert err32 <= a
        assert 0 < b < 1e-6
