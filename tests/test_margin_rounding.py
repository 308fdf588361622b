"""The Lipschitz-margin certifier's rounding allowance comes from the per-layer proofs' rounding terms
(lsrs.proofs, composed by lsrs.executed.ExecutedBound.forward_error), and dominates the observed error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lsrs.layers import CayleyConv2d, ConvexResidual, MeanShift
from lsrs.margin import LipschitzCertifier


def _shift(d: int, c: float) -> nn.Linear:
    lin = nn.Linear(d, d, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(d, dtype=torch.float64))
        lin.bias.fill_(c)
    return lin


def test_allowance_covers_a_cancellation_inside_a_residual_branch():
    """``(x + c) - c`` with ``c = 2^40`` inside a convex residual: the float64 logits are off by ~1e-4 from the
    exact ones (a float128 oracle). The allowance bounds it; the earlier estimate (first-order constants
    times the largest *stage* activation norm, blind to the branch's 2^40) allowed 4e-13."""
    d, c = 8, 2.0**40
    torch.manual_seed(0)
    head = nn.Linear(d, 3, dtype=torch.float64)
    net = nn.Sequential(nn.Flatten(), ConvexResidual(nn.Sequential(_shift(d, c), _shift(d, -c)), theta=2.0),
                        head).eval()
    cert = LipschitzCertifier(net, (d,))
    x = torch.randn(64, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g, norms = cert.forward(x)
    ld = np.longdouble
    assert np.finfo(ld).eps < 2.0**-60, "needs an extended-precision long double for the oracle"
    a = ld(float(torch.sigmoid(torch.tensor(2.0, dtype=torch.float64))))
    xs = x.numpy().astype(ld)
    h = a * ((xs + ld(c)) - ld(c)) + (ld(1) - a) * xs
    exact = h @ head.weight.detach().numpy().astype(ld).T + head.bias.detach().numpy().astype(ld)
    err = torch.from_numpy(np.sqrt(((g.numpy().astype(ld) - exact) ** 2).sum(1)).astype(np.float64))
    delta = cert.rounding_bound(norms, torch.zeros(64, dtype=torch.float64))
    assert float(err.max()) > 1e-6  # the cancellation is real
    assert (err <= delta).all()


def _stack(seed: int) -> nn.Module:
    """A small network of several proven layer types (conv, pools, activations, residuals, mean shift)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        MeanShift([0.5, -0.25]),
        nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect"),
        nn.LeakyReLU(0.3),
        ConvexResidual(nn.Sequential(CayleyConv2d(4, 4, 3), nn.Tanh()), theta=0.4),
        nn.AvgPool2d(2),
        ConvexResidual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, stride=1), nn.ReLU()), theta=-0.3),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 5),
    ).eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float32_allowance_dominates_float32_minus_float64_logits(seed):
    """Independent oracle: the same network executed in float32 and in float64 on random inputs; the float32
    certifier's allowance (per-layer terms with u = 2^-24) is at least the observed deviation, per image."""
    net = _stack(seed)
    c32 = LipschitzCertifier(net, (2, 8, 8), dtype=torch.float32)
    c64 = LipschitzCertifier(net, (2, 8, 8))
    x = 3 * torch.rand(32, 2, 8, 8, generator=torch.Generator().manual_seed(10 + seed))
    l32, norms = c32.forward(x)
    l64, _ = c64.forward(x)
    err = (l32.double() - l64).norm(dim=1)
    delta = c32.rounding_bound(norms, torch.zeros(32, dtype=torch.float64))
    assert (err > 0).all()
    assert (err <= delta).all()
    # an a-priori worst case (the Cayley FFT term, with 8 (log2 N + 2) stages allowed, dominates): measured
    # 7e4 - 1.5e5 times the observed error, about 5e-3 on logits of norm ~1
    assert float((delta / err).median()) < 1e6
    assert float(delta.max()) < 0.05
