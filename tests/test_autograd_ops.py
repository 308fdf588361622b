"""The hand-written backward passes of lsrs.autograd_ops against autograd's own (the oracle) and gradcheck."""

from __future__ import annotations

import pytest
import torch

from lsrs.autograd_ops import frequency_product, max_min
from lsrs.layers import CayleyConv2d, MaxMin


def _complex(*shape: int, dtype=torch.complex128) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype, requires_grad=True)


def test_frequency_product_passes_gradcheck() -> None:
    torch.manual_seed(0)
    x, q = _complex(5, 3, 4), _complex(5, 4, 2)
    assert torch.autograd.gradcheck(frequency_product, (x, q))


@pytest.mark.parametrize("permuted", [False, True])
def test_frequency_product_gradients_equal_autograds_bmm(permuted: bool) -> None:
    """Same forward and same gradients as ``torch.bmm``, also for the permuted gradient of an inverse FFT."""
    torch.manual_seed(1)
    h, m, b, c_in, c_out = 4, 3, 6, 4, 5
    x, q = _complex(h * m, b, c_in, dtype=torch.complex64), _complex(h * m, c_in, c_out, dtype=torch.complex64)
    weight = torch.randn(b, c_out, h, m, dtype=torch.complex64)
    grads = []
    for product in (torch.bmm, frequency_product):
        y = product(x, q)
        if permuted:
            y = y.reshape(h, m, b, c_out).permute(2, 3, 0, 1)
        else:
            weight = weight.reshape(h * m, b, c_out)
        loss = (y * weight).real.sum()
        grads.append((y.detach(), *torch.autograd.grad(loss, (x, q))))
    for ours, reference in zip(grads[1], grads[0]):
        torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)


def test_frequency_product_gives_no_gradient_where_none_is_needed() -> None:
    x = torch.randn(2, 3, 4, dtype=torch.complex64)  # an input image's spectrum: no gradient
    q = _complex(2, 4, 4, dtype=torch.complex64)
    (grad_q,) = torch.autograd.grad(frequency_product(x, q).real.sum(), (q,))
    torch.testing.assert_close(grad_q, torch.autograd.grad(torch.bmm(x, q).real.sum(), (q,))[0])


def test_max_min_matches_maximum_and_minimum_and_their_gradients_without_ties() -> None:
    torch.manual_seed(2)
    a, b = torch.randn(3, 4, 5, 5, requires_grad=True), torch.randn(3, 4, 5, 5, requires_grad=True)
    weight = torch.randn(3, 8, 5, 5)
    ours = max_min(a, b)
    reference = torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)
    assert torch.equal(ours, reference)
    for g, r in zip(torch.autograd.grad((ours * weight).sum(), (a, b)),
                    torch.autograd.grad((reference * weight).sum(), (a, b))):
        assert torch.equal(g, r)


def test_max_min_routes_a_tie_whole_to_one_input_and_passes_gradcheck() -> None:
    a = torch.tensor([[1.0, 2.0]], dtype=torch.float64, requires_grad=True).view(1, 2, 1, 1)
    b = torch.tensor([[1.0, 3.0]], dtype=torch.float64, requires_grad=True).view(1, 2, 1, 1)
    ga, gb = torch.autograd.grad(max_min(a, b)[:, :2].sum(), (a, b))  # the max half only
    assert ga.flatten().tolist() == [1.0, 0.0] and gb.flatten().tolist() == [0.0, 1.0]  # tie: all to a
    torch.manual_seed(3)
    x, y = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True), torch.randn(
        2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(max_min, (x, y))


def test_layers_use_them_in_training_with_unchanged_outputs() -> None:
    """A Cayley convolution and MaxMin in training give the eval-mode (cached operator) outputs."""
    torch.manual_seed(4)
    conv = CayleyConv2d(4, 8, 3, stride=2)
    x = torch.randn(3, 4, 8, 8)
    train_out = MaxMin()(conv.train()(x))
    train_out.sum().backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    with torch.no_grad():
        eval_out = MaxMin()(conv.eval()(x))
    torch.testing.assert_close(train_out.detach(), eval_out, rtol=1e-5, atol=1e-5)
