"""Proof tools against independent oracles, and the encoder bound of every valid FoR."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lsrs.layers import CayleyConv2d
from lsrs.lipschitz import (
    audit,
    conv_singular_values,
    empirical_lipschitz,
    jacobian_spectral_norm,
    pair_lipschitz,
    proven_bound,
)
from lsrs.models import OrthogonalStem, Split, resnet18, valid_fors


def dense(f, shape, dtype=torch.float64) -> torch.Tensor:
    d = math.prod(shape)
    with torch.no_grad():
        return f(torch.eye(d, dtype=dtype).reshape(d, *shape)).reshape(d, -1)


@pytest.mark.parametrize("c_out,c_in,k,n", [(3, 2, 3, 5), (2, 4, 3, 6), (3, 3, 5, 3), (2, 2, 2, 4)])
def test_conv_singular_values_match_dense_circular_conv(c_out, c_in, k, n):
    """Oracle: the dense matrix of nn.Conv2d with circular padding (a circular conv), exact SVD."""
    torch.manual_seed(0)
    w = torch.randn(c_out, c_in, k, k, dtype=torch.float64)
    pad = (k // 2, (k - 1) // 2, k // 2, (k - 1) // 2)  # left, right, top, bottom: output keeps n x n

    def conv(x):
        return F.conv2d(F.pad(x, pad, mode="circular"), w)

    exact = torch.linalg.svdvals(dense(conv, (c_in, n, n)))
    fast = conv_singular_values(w, n)
    assert fast.shape == exact.shape
    assert torch.allclose(fast, exact, atol=1e-10)
    assert torch.allclose(conv_singular_values(w, (n, n)), fast)


def test_power_iteration_matches_exact_jacobian_svd():
    """Oracle: the full Jacobian of a small orthogonal encoder at x, exact top singular value."""
    torch.manual_seed(0)
    model = resnet18(fors=7, width=4, in_size=8, in_channels=1).double().eval().requires_grad_(False)
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    z = model.encoder(xg).flatten()
    rows = [torch.autograd.grad(z, xg, e, retain_graph=True)[0].flatten() for e in torch.eye(z.numel(), dtype=z.dtype)]
    jac = torch.stack(rows)  # row i of J = e_i^T J, one backward pass each
    exact = float(torch.linalg.svdvals(jac)[0])
    est = jacobian_spectral_norm(model.encoder, x, iters=100, generator=torch.Generator().manual_seed(0))
    assert est <= exact + 1e-9
    assert est >= exact * (1 - 1e-4)
    assert exact <= 1 + 1e-9


def test_power_iteration_and_pair_search_on_a_linear_map():
    torch.manual_seed(0)
    lin = nn.Linear(6, 4).double()
    top = float(torch.linalg.svdvals(lin.weight.detach())[0])
    x = torch.randn(3, 6, dtype=torch.float64)
    assert jacobian_spectral_norm(lin, x, iters=100) == pytest.approx(top, rel=1e-6)
    pairs = pair_lipschitz(lin, x, steps=200, lr=0.05)
    assert pairs <= top + 1e-9
    assert pairs >= 0.98 * top
    assert proven_bound(lin, (6,)) == pytest.approx(top)


def _perturb(model: Split, steps: int = 3) -> None:
    """A few large SGD steps so that alphas and weights are no longer at their init."""
    gen = torch.Generator().manual_seed(0)
    shape = (int(model.config["in_channels"]), model.config["in_size"], model.config["in_size"])
    x = torch.rand(8, *shape, generator=gen)
    y = torch.randint(0, model.config["num_classes"], (8,), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("fors", valid_fors("resnet18"))
def test_every_fors_encoder_is_within_its_declared_bound(fors):
    """Empirical (power iteration + pair search) <= proven <= declared = 1, after training steps too."""
    torch.manual_seed(fors)
    model = resnet18(fors=fors, width=8, in_size=16, in_channels=3, mean=(0.49, 0.48, 0.45))
    _perturb(model)
    assert model.encoder_lipschitz == 1.0
    enc = model.encoder.double().eval().requires_grad_(False)
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    emp = empirical_lipschitz(enc, x, iters=20, steps=20)
    assert emp <= model.encoder_lipschitz + 1e-4
    assert proven_bound(enc, (3, 16, 16)) <= model.encoder_lipschitz + 1e-6
    if fors in (0, 1):  # identity / isometric stem + MaxMin: tight
        assert emp == pytest.approx(1.0, abs=1e-6)


class _StdNormalize(nn.Module):
    """The classic (x - mean) / std preprocessing: Lipschitz 1 / min(std), not 1."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def test_std_normalisation_in_the_encoder_is_caught():
    torch.manual_seed(0)
    enc = nn.Sequential(_StdNormalize([0.49, 0.48, 0.45], [0.25, 0.24, 0.26]), OrthogonalStem(3, 8))
    wrong = Split(enc, nn.Sequential(nn.Flatten(), nn.LazyLinear(10)), arch="resnet18", fors=1, fors_total=18,
                  encoder_lipschitz=1.0, latent_shape=(8, 8, 8), config={"in_channels": 3, "in_size": 8})
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    measured = empirical_lipschitz(enc.double().eval(), x, iters=20, steps=10)
    assert measured > 4.0  # the true constant is 1 / min(std) = 4.17, not the declared 1
    assert measured <= 1 / 0.24 + 1e-6
    assert proven_bound(enc, (3, 8, 8)) == math.inf
    table = audit(wrong, (3, 8, 8), iters=10, steps=5)
    assert not table.attrs["sound"]


def test_audit_table_of_an_orthogonal_model():
    torch.manual_seed(0)
    model = resnet18(fors=9, width=8, in_size=16, in_channels=1)
    table = audit(model, iters=10, steps=5)
    assert list(table["layer"]) == ["stem", "block1", "block2", "block3", "block4", "encoder"]
    assert table.attrs["sound"] and table.attrs["declared"] == 1.0
    assert table["bound"].between(1 - 1e-9, 1 + 1e-9).all()
    assert (table["empirical"] <= table["bound"] + 1e-4).all()
    assert table.iloc[-1]["output_shape"] == "16x8x8"
    assert model.training  # audit works on a copy and leaves the model as it was


def test_audit_of_the_baseline_is_the_identity():
    table = audit(resnet18(fors=0, width=4, in_size=8, in_channels=1), iters=5, steps=5)
    assert table.attrs["proven"] == 1.0
    assert table.attrs["empirical"] == pytest.approx(1.0)
    assert table.iloc[-1]["output_shape"] == "1x8x8"


def test_proven_bound_uses_exact_singular_values():
    """A deliberately scaled Cayley conv: the proven bound is its exact top singular value."""
    conv = CayleyConv2d(4, 4, 3).double()
    seq = nn.Sequential(conv, nn.Identity())
    with torch.no_grad():
        conv.weight.mul_(2.0)  # scale is a separate parameter: the operator stays orthogonal
    assert proven_bound(seq, (4, 8, 8)) == pytest.approx(1.0, abs=1e-9)
    lin = nn.Linear(4, 4, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(2.5 * torch.eye(4))
    assert proven_bound(nn.Sequential(lin, lin), (4,)) == pytest.approx(6.25)
