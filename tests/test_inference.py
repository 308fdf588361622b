"""BatchNorm folding keeps the function of the network (up to rounding) and leaves the encoder alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lsrs.inference import fold_batchnorm
from lsrs.models import resnet18, wide_resnet34


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=gen))
            m.bias.data.copy_(0.4 * torch.rand(n, generator=gen) - 0.2)


@pytest.mark.parametrize("fors", [0, 5, 9])
def test_folded_resnet18_computes_the_same_function(fors: int) -> None:
    torch.manual_seed(fors)
    model = resnet18(10, fors, width=8, in_size=16, in_channels=3)
    _randomise_batchnorm(model, fors)
    model.eval()
    folded = fold_batchnorm(model)
    x = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model(x), folded(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    assert folded.fors == model.fors and folded.encoder_lipschitz == model.encoder_lipschitz
    for a, b in zip(model.encoder.parameters(), folded.encoder.parameters(), strict=True):
        assert torch.equal(a, b)  # the certified encoder is never rewritten


def test_folded_wide_resnet34_computes_the_same_function() -> None:
    torch.manual_seed(0)
    model = wide_resnet34(num_classes=10, fors=0, widen=1, in_size=16)
    _randomise_batchnorm(model)
    model.eval()
    folded = fold_batchnorm(model)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
    remaining = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert remaining < sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
