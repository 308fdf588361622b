"""Orthogonal layers: exact singular values from the impulse response, caching, and the 1-Lipschitz atoms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lsrs.layers import CayleyConv2d, ChannelPad, ConvexResidual, MaxMin, MeanShift, cayley
from lsrs.lipschitz import conv_singular_values, proven_bound

TOL = 1e-4


def impulse_matrix(layer: nn.Module, shape: tuple[int, int, int], dtype=torch.float32) -> torch.Tensor:
    """Dense matrix of the layer's linear part: push the identity basis through it (minus the bias)."""
    d = shape[0] * shape[1] * shape[2]
    basis = torch.eye(d, dtype=dtype).reshape(d, *shape)
    with torch.no_grad():
        out = layer(basis) - layer(torch.zeros(1, *shape, dtype=dtype))
    return out.reshape(d, -1)


# (c_in, c_out, kernel, stride, spatial size): square, tall (isometry), wide (row-orthonormal), stride 2,
# 1x1 skip, odd size, a 3x3 kernel wrapping around a 2x2 torus, a 5x5 kernel.
LAYERS = [
    (4, 4, 3, 1, 8),
    (3, 8, 3, 1, 6),
    (8, 3, 3, 1, 6),
    (2, 4, 3, 2, 8),
    (4, 4, 1, 2, 8),
    (4, 4, 3, 1, 7),
    (4, 4, 3, 1, 2),
    (4, 6, 5, 1, 6),
]


def _sgd_steps(layer: CayleyConv2d, shape: tuple[int, int, int], steps: int = 20) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, *shape, generator=gen)
    target = torch.randn_like(layer(x)).detach()
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer.train()
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(layer(x), target).backward()
        opt.step()


@pytest.mark.parametrize("c_in,c_out,k,stride,n", LAYERS)
def test_cayley_conv_impulse_response_is_semi_orthogonal(c_in, c_out, k, stride, n):
    """At init and after 20 SGD steps (eval): every singular value of the dense operator is 1 +- 1e-4, and
    they agree with the layer's own FFT spectrum and with conv_singular_values of its spatial kernel."""
    torch.manual_seed(0)
    layer = CayleyConv2d(c_in, c_out, k, stride)
    shape = (c_in, n, n)
    before = layer.weight.detach().clone()
    for phase in ("init", "trained"):
        if phase == "trained":
            _sgd_steps(layer, shape)
            assert not torch.allclose(layer.weight, before), "SGD did not move the weights"
        layer.eval()
        dense = impulse_matrix(layer, shape)
        sv = torch.linalg.svdvals(dense.double())
        in_dim, out_dim = c_in * n * n, c_out * (n // stride) ** 2
        assert sv.numel() == min(in_dim, out_dim)
        assert sv.max() <= 1 + TOL and sv.min() >= 1 - TOL, (phase, sv.min().item(), sv.max().item())
        spectral = layer.singular_values(shape).double()
        assert torch.allclose(sv.sort().values, spectral.sort().values, atol=TOL)
        size = n // stride
        via_kernel = conv_singular_values(layer.spatial_kernel(shape), size).double()
        assert torch.allclose(via_kernel.sort().values, spectral.sort().values, atol=TOL)


def test_cayley_conv_is_isometry_when_tall():
    """Column-orthonormal (c_out > c_in) means |f(x) - f(y)| = |x - y| exactly (the stem's case)."""
    layer = CayleyConv2d(3, 8, 3).double().eval()
    x, y = torch.randn(2, 5, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        ratio = (layer(x) - layer(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-10)


def test_stride2_is_unshuffle_then_conv():
    """Stride 2 = pixel-unshuffle (a permutation) followed by the conv on 4x the channels."""
    torch.manual_seed(0)
    strided = CayleyConv2d(3, 6, 3, stride=2)
    plain = CayleyConv2d(12, 6, 3, stride=1)
    plain.load_state_dict(strided.state_dict())
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(strided(x), plain(F.pixel_unshuffle(x, 2)), atol=1e-6)
    perm = impulse_matrix(nn.PixelUnshuffle(2), (3, 8, 8))
    assert torch.equal(perm @ perm.T, torch.eye(perm.shape[0]))


@given(
    p=st.integers(1, 7),
    q=st.integers(1, 7),
    complex_=st.booleans(),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_cayley_matrix_has_orthonormal_columns_or_rows(p, q, complex_, seed):
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.complex128 if complex_ else torch.float64
    w = 3 * torch.randn(5, p, q, generator=gen, dtype=dtype)
    qm = cayley(w)
    assert qm.shape == w.shape
    gram = qm.mH @ qm if p >= q else qm @ qm.mH
    eye = torch.eye(min(p, q), dtype=dtype).expand_as(gram)
    assert torch.allclose(gram, eye, atol=1e-9)


def test_eval_cache_is_bit_identical_and_invalidated():
    torch.manual_seed(0)
    layer = CayleyConv2d(4, 6, 3).eval()
    x = torch.randn(3, 4, 8, 8)
    with torch.no_grad():
        cached = layer(x)
        assert (8, 8) in layer._cache
        again = layer(x)
        layer.cache = False
        uncached = layer(x)
        layer.cache = True
    assert torch.equal(cached, again) and torch.equal(cached, uncached)
    with torch.no_grad():  # an in-place parameter change (an optimizer step, load_state_dict) invalidates
        layer.weight.mul_(1.5).add_(0.1)
        changed = layer(x)
        layer.cache = False
        fresh = layer(x)
        layer.cache = True
    assert not torch.equal(changed, cached)
    assert torch.equal(changed, fresh)
    layer.eval()  # eval() on an eval layer (as the Lipschitz audit does per stage) keeps the operators
    assert (8, 8) in layer._cache
    layer.train()
    assert not layer._cache


def test_cache_works_under_inference_mode_then_autograd_wrt_input():
    """The cached operator built under inference_mode is a plain tensor: backprop to the input still works."""
    layer = CayleyConv2d(4, 4, 3).eval().requires_grad_(False)
    x = torch.randn(2, 4, 8, 8)
    with torch.inference_mode():
        y0 = layer(x)
    xg = x.clone().requires_grad_(True)
    y = layer(xg)
    y.square().sum().backward()
    assert torch.equal(y.detach(), y0)
    # orthogonal: the gradient of |f(x) - b|^2 ... equals 2 J^T (f(x)); its norm is 2 |f(x) - bias|
    expected = 2 * (y - layer.bias[:, None, None]).detach().flatten().norm()
    assert torch.allclose(xg.grad.flatten().norm(), expected, rtol=1e-4)


def test_eval_with_parameter_grads_is_differentiable():
    """In eval, if autograd needs parameter gradients, the uncached path is used and gradients flow."""
    layer = CayleyConv2d(4, 4, 3).eval()
    layer(torch.randn(2, 4, 8, 8)).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_maxmin_is_a_pointwise_permutation_and_1_lipschitz():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 16, 6, 5, 5, generator=gen)
    mm = MaxMin()
    fx, fy = mm(x), mm(y)
    assert torch.allclose(fx.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1))
    assert torch.equal(fx.flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)
    assert ((fx - fy).flatten(1).norm(dim=1) <= (x - y).flatten(1).norm(dim=1) + 1e-6).all()
    assert (fx[:, :3] >= fx[:, 3:]).all()
    with pytest.raises(ValueError):
        mm(torch.randn(1, 3, 2, 2))


def test_channel_pad_and_mean_shift_are_isometries():
    x, y = torch.randn(2, 4, 3, 5, 5)
    pad = ChannelPad(8)
    assert pad(x).shape == (4, 8, 5, 5)
    assert torch.allclose(pad(x).flatten(1).norm(dim=1), x.flatten(1).norm(dim=1))
    shift = MeanShift([0.1, 0.2, 0.3])
    assert torch.allclose(shift(x) - shift(y), x - y, atol=1e-6)
    assert torch.allclose(shift(x)[:, 1], x[:, 1] - 0.2)


def test_convex_residual_alpha_and_bound():
    """alpha = sigmoid(theta) stays in [0, 1]; the bound is alpha * L_main + (1 - alpha) * L_skip."""
    main = nn.Linear(3, 3, bias=False)
    skip = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        main.weight.copy_(torch.diag(torch.tensor([3.0, 1.0, 0.5])))
        skip.weight.copy_(torch.eye(3))
    for theta in (-50.0, -1.0, 0.0, 2.0, 50.0):
        res = ConvexResidual(main, skip, theta=theta)
        a = float(res.alpha.detach())
        assert 0.0 <= a <= 1.0
        assert proven_bound(res, (3,)) == pytest.approx(a * 3.0 + (1 - a) * 1.0)
        x = torch.randn(4, 3)
        assert torch.allclose(res(x), a * main(x) + (1 - a) * x)


def test_batched_inverse_on_every_core_equals_one_call_bit_for_bit():
    """The Cayley operators' batched inverse split over the cores (lsrs.threads.on_every_core) returns exactly
    the one-thread LAPACK result, leaves the thread setting as it was, and keeps autograd working."""
    from lsrs.threads import on_every_core, one_cpu_thread

    gen = torch.Generator().manual_seed(4)
    w = torch.randn(37, 24, 24, dtype=torch.complex64, generator=gen) / 5
    m = torch.eye(24, dtype=torch.complex64) + (w - w.mH)
    before = torch.get_num_threads()
    with one_cpu_thread(m.device):
        ref = torch.linalg.inv(m)
    torch.set_num_threads(2)
    try:
        assert torch.equal(on_every_core(torch.linalg.inv, m), ref)
        assert torch.get_num_threads() == 2
        leaf = m.clone().requires_grad_(True)
        on_every_core(torch.linalg.inv, leaf).real.sum().backward()
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("c_out,c_in,k,h,w", [(5, 3, 3, 8, 8), (4, 4, 3, 2, 2), (6, 2, 1, 5, 7), (3, 3, 5, 3, 6)])
def test_kernel_spectrum_equals_rfft2_of_the_circular_kernel(c_out, c_in, k, h, w):
    """The eval-mode spectrum (one tap-phase product) against torch's rfft2 of the kernel placed on the torus,
    in float64, kernels larger than the grid included (their wrapped taps add)."""
    from lsrs.layers import circular_kernel, kernel_spectrum

    weight = torch.randn(c_out, c_in, k, k, dtype=torch.float64, generator=torch.Generator().manual_seed(k * h))
    reference = torch.fft.rfft2(circular_kernel(weight, (h, w))).permute(2, 3, 0, 1)
    spectrum = kernel_spectrum(weight, (h, w))
    assert spectrum.is_contiguous() and spectrum.shape == reference.shape
    torch.testing.assert_close(spectrum, reference, rtol=0, atol=1e-12)


def test_cached_operator_matches_the_training_path_operator():
    """The cached (eval, no autograd) operator and the differentiable training-path one are the same
    semi-orthogonal matrices up to float32 rounding."""
    torch.manual_seed(2)
    layer = CayleyConv2d(6, 10, 3, stride=2).eval()
    cached = layer.executed_operator((4, 4))
    with torch.enable_grad():
        trained = layer._operator((4, 4))
    torch.testing.assert_close(cached, trained.detach(), rtol=0, atol=2e-6)


@pytest.mark.parametrize("n,leaf", [(160, 48), (57, 8), (33, 48), (9, 1)])
def test_block_inverse_of_positive_real_matrices_against_lapack_in_float64(n, leaf):
    """lsrs.inverse.block_inverse (no pivoting) against LAPACK's pivoted inverse in float64, for the Cayley
    transform's I + U - U^H + V^H V (Hermitian part positive definite), odd sizes and several recursion depths."""
    from lsrs.inverse import block_inverse

    gen = torch.Generator().manual_seed(n + leaf)
    u = torch.randn(3, n, n, dtype=torch.complex128, generator=gen) * 2
    v = torch.randn(3, n // 2 + 1, n, dtype=torch.complex128, generator=gen)
    m = torch.eye(n, dtype=torch.complex128) + u - u.mH + v.mH @ v
    ref = torch.linalg.inv(m)
    torch.testing.assert_close(block_inverse(m, leaf), ref, rtol=0, atol=1e-11 * float(ref.abs().max()))
    real = torch.eye(n, dtype=torch.float64) + u.real - u.real.mT  # the real (1x1 kernel) case
    torch.testing.assert_close(block_inverse(real, leaf), torch.linalg.inv(real), rtol=0, atol=1e-11)
    assert float(torch.linalg.matrix_norm(block_inverse(m, leaf), 2).max()) <= 1.0 + 1e-12  # |M^-1| <= 1


@pytest.mark.parametrize("c_out,c_in,size", [(16, 16, (8, 8)), (16, 32, (6, 10)), (8, 24, (5, 5))])
def test_chunked_cayley_operator_is_the_whole_one_and_orthogonal(c_out, c_in, size):
    """The cached operator built chunk by chunk on all cores equals the one built in one piece (same
    frequencies, same transform) up to float32 rounding, and is (semi-)orthogonal at every frequency."""
    from lsrs.layers import cayley, cayley_operator, kernel_spectrum
    from lsrs.threads import one_cpu_thread

    torch.manual_seed(c_in)
    layer = CayleyConv2d(c_in, c_out).eval()
    with torch.no_grad():
        weight = layer._effective_weight()
        with one_cpu_thread(torch.device("cpu")):
            whole = cayley(kernel_spectrum(weight, size))
        whole = whole.reshape(-1, c_out, c_in).mT
        for chunk in (1, 7, 10_000):
            op = cayley_operator(weight, size, chunk=chunk)
            assert op.shape == whole.shape and op.is_contiguous()
            torch.testing.assert_close(op, whole, rtol=0, atol=1e-6)
        singular = torch.linalg.svdvals(op.to(torch.complex128))
        assert float((singular - 1.0).abs().max()) < 1e-5


def test_map_chunks_keeps_order_covers_every_chunk_and_restores_threads():
    from lsrs.threads import map_chunks

    before = torch.get_num_threads()
    seen = map_chunks(lambda lo, hi: (lo, hi, torch.get_num_threads()), 23, 5)
    assert [(lo, hi) for lo, hi, _ in seen] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    assert all(threads == 1 for *_, threads in seen) or before == 1  # one intra-op thread per worker
    assert torch.get_num_threads() == before
    assert map_chunks(lambda lo, hi: hi - lo, 0, 5) == []
