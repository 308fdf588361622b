"""A second adversarial pass over lsrs.proofs: each way found to get a bound below the truth with library
modules, against an exact oracle (float64 autograd Jacobian + SVD at a point: a lower bound on the true L)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lsrs.lipschitz import proven_bound
from lsrs.lipschitz_layers import NormPool
from lsrs.margin import LipschitzCertifier


def _jacobian_norm(module: nn.Module, shape: tuple[int, ...], seed: int = 0) -> float:
    """Exact spectral norm of the Jacobian at a random point (float64): a lower bound on the Lipschitz constant."""
    module = module.double().eval()
    x = torch.randn(1, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    jac = torch.autograd.functional.jacobian(lambda t: module(t), x)
    return float(torch.linalg.matrix_norm(jac.reshape(-1, x.numel()), ord=2))


def _sound_or_refused(module: nn.Module, shape: tuple[int, ...]) -> tuple[float, float]:
    bound = proven_bound(module, shape)
    true = _jacobian_norm(module, shape)
    assert bound >= true * (1 - 1e-12), f"proven {bound} below the exact Jacobian norm {true}"
    return bound, true


def test_margin_certifier_refuses_an_input_of_another_size_than_the_proof():
    """L is proven for ``input_shape``; a convolution's norm depends on the size (all-ones 3x3 kernel, zero
    padding: 1.41 for the network at 1x1, 11.7 at 8x8). Certifying an 8x8 image with the 1x1 proof gave radius
    60.5 where the truth is at most 121 / (sqrt 2 * 11.7) = 7.3; it is refused now."""
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    head = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    net = nn.Sequential(conv, NormPool(), nn.Flatten(), head).eval()
    certifier = LipschitzCertifier(net, (1, 1, 1))
    assert proven_bound(net, (1, 8, 8)) > 8 * certifier.lipschitz
    with pytest.raises(ValueError, match=r"input shape \(1, 8, 8\).*\(1, 1, 1\)"):
        certifier.certify(torch.ones(1, 1, 8, 8))
    assert certifier.certify(torch.ones(3, 1, 1, 1)).radius.shape == (3,)  # its own size still certifies
