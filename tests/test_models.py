"""Paired models: FoR bookkeeping, latent shapes, twins, config round trip, caching, FLOP split."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from lsrs.architectures import list_architectures
from lsrs.flops import count_flops, flop_split
from lsrs.layers import CayleyConv2d, MeanShift
from lsrs.lipschitz_layers import OrthogonalLinear
from lsrs.models import Split, build_model, fors_total, resnet18, valid_fors, wide_resnet34


def _cayley_convs(module: nn.Module) -> list[CayleyConv2d]:
    return [m for m in module.modules() if isinstance(m, CayleyConv2d)]


def test_valid_fors():
    assert valid_fors("resnet18") == (0, 1, 3, 5, 7, 9, 11, 13, 15, 17, 18)
    wrn = valid_fors("wide_resnet34")
    assert wrn[0] == 0 and 1 in wrn and 16 in wrn and wrn[-1] == 33
    assert (fors_total("resnet18"), fors_total("wide_resnet34")) == (18, 34)
    assert {"resnet18", "wide_resnet34"} <= set(list_architectures())
    with pytest.raises(ValueError):
        valid_fors("vgg")


def test_latent_shapes_at_cifar_size():
    expected = {1: (64, 32, 32), 3: (64, 32, 32), 5: (64, 32, 32), 7: (128, 16, 16), 9: (128, 16, 16),
                11: (256, 8, 8), 13: (256, 8, 8), 15: (512, 4, 4), 17: (512, 4, 4), 0: (3, 32, 32)}
    for fors, shape in expected.items():
        m = resnet18(fors=fors)
        assert m.latent_shape == shape, fors
        assert (m.fors, m.fors_total, m.arch) == (fors, 18, "resnet18")
    assert math.prod(resnet18(fors=9).latent_shape) == 32_768  # the paper's latent dimension
    m = resnet18(fors=1).eval()  # the declared shape is what the encoder produces (cheap at full width)
    with torch.no_grad():
        assert m.encoder(torch.rand(1, 3, 32, 32)).shape[1:] == m.latent_shape


@pytest.mark.parametrize("in_channels", [1, 3])
def test_twins_accept_the_same_inputs(in_channels):
    """Every FoR at small width: encoder output = latent_shape, logits of the same shape as the baseline."""
    x = torch.rand(3, in_channels, 16, 16)
    for fors in valid_fors("resnet18"):
        m = resnet18(fors=fors, width=8, in_size=16, in_channels=in_channels, num_classes=7).eval()
        with torch.no_grad():
            z = m.encoder(x)
            assert z.shape == (3, *m.latent_shape)
            assert m(x).shape == (3, 7)
            assert torch.equal(m.classifier(z), m(x))


def test_fors_counts_the_orthogonal_layers():
    """FoR k = number of orthogonal 3x3 layers in the encoder (stem + 2 per block), plus the orthogonal head
    at FoR 18 (the Lipschitz twin); none in the classifier."""
    for fors in valid_fors("resnet18")[1:]:
        m = resnet18(fors=fors, width=4, in_size=8, in_channels=1)
        convs = _cayley_convs(m.encoder)
        heads = sum(isinstance(mod, OrthogonalLinear) for mod in m.encoder.modules())
        assert sum(c.kernel_size == 3 for c in convs) + heads == fors
        assert heads == (fors == 18)
        assert not _cayley_convs(m.classifier)
        banned = (nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.Linear)
        assert not [mod for mod in m.encoder.modules() if isinstance(mod, banned)]
        # the classifier is the baseline's tail: standard convs with BatchNorm
        assert any(isinstance(mod, nn.BatchNorm2d) for mod in m.classifier.modules()) or fors >= 17


def test_baseline_is_a_standard_resnet18():
    m = resnet18()
    assert isinstance(m.encoder, nn.Identity) and m.encoder_lipschitz == 1.0
    assert m.latent_shape == (3, 32, 32)
    assert not _cayley_convs(m)
    assert sum(p.numel() for p in m.parameters()) == 11_173_962  # the usual CIFAR ResNet18
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert len(convs) == 1 + 16 + 3  # stem, block convs, projection shortcuts


def test_wide_resnet34_bookkeeping():
    base = wide_resnet34(num_classes=10, widen=10, in_size=32)
    assert sum(p.numel() for p in base.parameters()) == 46_160_474  # WRN-34-10 on CIFAR
    x = torch.rand(2, 3, 16, 16)
    for fors in (1, 11, 14, 16, 33):
        m = wide_resnet34(num_classes=5, fors=fors, widen=1, base_width=4, in_size=16).eval()
        convs = _cayley_convs(m.encoder)
        counted = sum(c.kernel_size == 3 for c in convs) + sum(c.kernel_size == 1 and c.stride == 2 for c in convs)
        assert counted == fors
        with torch.no_grad():
            assert m.encoder(x).shape[1:] == m.latent_shape
            assert m(x).shape == (2, 5)
    assert wide_resnet34(fors=16, widen=2, base_width=4, in_size=16).latent_shape == (16, 8, 8)
    m = wide_resnet34(fors=1, widen=1, base_width=4, in_size=32, stem_stride=4, num_classes=3)
    assert m.latent_shape == (4, 8, 8)
    assert m(torch.rand(1, 3, 32, 32)).shape == (1, 3)


def test_config_round_trip_rebuilds_the_same_model():
    torch.manual_seed(0)
    for arch, kwargs in (("resnet18", dict(fors=9, width=8, in_size=16, in_channels=1, mean=[0.5])),
                         ("wide_resnet34", dict(fors=16, widen=1, base_width=4, in_size=16, num_classes=10))):
        m = build_model(arch, **kwargs).eval()
        cfg = json.loads(json.dumps(m.config))
        twin = build_model(arch, **cfg).eval()
        twin.load_state_dict(m.state_dict())
        assert isinstance(twin, Split) and twin.config == m.config and twin.arch == arch
        x = torch.rand(2, m.config["in_channels"], 16, 16)
        with torch.no_grad():
            assert torch.equal(twin(x), m(x))


def test_mean_is_subtracted_inside_the_model():
    torch.manual_seed(0)
    mean = [0.4, 0.5, 0.6]
    x = torch.rand(2, 3, 16, 16)
    for fors in (0, 5):
        with_mean = resnet18(fors=fors, width=8, in_size=16, mean=mean).eval()
        plain = resnet18(fors=fors, width=8, in_size=16).eval()
        plain.load_state_dict({k: v for k, v in with_mean.state_dict().items() if not k.endswith("shift.mean")})
        part = with_mean.encoder if fors else with_mean.classifier
        assert isinstance(part[0], MeanShift)
        with torch.no_grad():
            shifted = x - torch.tensor(mean).view(1, 3, 1, 1)
            assert torch.allclose(with_mean(x), plain(shifted), atol=1e-5)


def test_invalid_arguments_raise():
    for kwargs in (dict(fors=2), dict(fors=19), dict(width=7), dict(in_size=12), dict(mean=[0.5]),
                   dict(num_classes=0)):
        with pytest.raises(ValueError):
            resnet18(**kwargs)
    for kwargs in (dict(fors=16 - 1), dict(stem_stride=3), dict(in_size=18)):
        with pytest.raises(ValueError):
            wide_resnet34(**kwargs)
    with pytest.raises(ValueError):
        build_model("vgg")


def test_eval_cache_is_bit_identical_to_the_uncached_path():
    torch.manual_seed(0)
    m = resnet18(fors=13, width=8, in_size=16, in_channels=1).eval()
    x = torch.rand(4, 1, 16, 16)
    with torch.inference_mode():
        cached = m(x)
        cached_again = m(x)
    for conv in _cayley_convs(m):
        conv.cache = False
    with torch.no_grad():
        uncached = m(x)
    assert torch.equal(cached, cached_again) and torch.equal(cached, uncached)


def _conv_flops(c_in, c_out, k, hw_out):
    return 2 * c_in * c_out * k * k * hw_out


def test_flop_split_baseline_matches_closed_form():
    w, n = 8, 16
    m = resnet18(width=w, in_size=n, in_channels=3, num_classes=10)
    expected = _conv_flops(3, w, 3, n * n) + 2 * 8 * w * 10
    c, size = w, n
    for stage, co in enumerate((w, 2 * w, 4 * w, 8 * w)):
        for j in range(2):
            s = 2 if (stage and j == 0) else 1
            size //= s
            expected += _conv_flops(c, co, 3, size * size) + _conv_flops(co, co, 3, size * size)
            if s == 2:
                expected += _conv_flops(c, co, 1, size * size)
            c = co
    f = flop_split(m, (3, n, n))
    assert f["flops_total"] == expected and f["flops_classifier"] == expected and f["flops_encoder"] == 0
    assert f["ideal_speedup"] == 1.0


def test_flop_split_of_an_orthogonal_stem_matches_closed_form():
    """Eval-mode Cayley conv = rfft2 + per-frequency complex products (8 FLOPs per MAC) + irfft2 (cached operator)."""
    w, n, c_in = 8, 16, 3
    m = resnet18(fors=1, width=w, in_size=n, in_channels=c_in)
    freqs = n * (n // 2 + 1)
    fft = 2.5 * n * n * math.log2(n * n)
    expected = 8 * freqs * c_in * w + int(fft * c_in) + int(fft * w)
    f = flop_split(m, (c_in, n, n))
    assert f["flops_encoder"] == expected
    assert f["flops_total"] == f["flops_encoder"] + f["flops_classifier"]
    assert f["ideal_speedup"] == pytest.approx(f["flops_total"] / f["flops_classifier"])
    assert m.training  # flop_split restores the mode


def test_flop_split_speedup_grows_with_fors():
    speedups = []
    for fors in (1, 5, 9, 13):
        f = flop_split(resnet18(fors=fors, width=8, in_size=16, in_channels=1), (1, 16, 16))
        assert f["flops_total"] == f["flops_encoder"] + f["flops_classifier"]
        assert f["flops_baseline"] == flop_split(resnet18(width=8, in_size=16, in_channels=1), (1, 16, 16))["flops_total"]
        speedups.append(f["ideal_speedup_vs_baseline"])
    assert speedups == sorted(speedups) and speedups[0] > 1.0


def test_count_flops_counts_a_complex_mac_as_eight_real_flops():
    """Closed form: a real bmm is 2 * MACs, a complex one 8 * MACs (4 multiplications + 4 additions)."""

    class Bmm(torch.nn.Module):
        def __init__(self, w: torch.Tensor) -> None:
            super().__init__()
            self.w = w

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.bmm(x, self.w)

    macs = 7 * 3 * 5 * 4
    for dtype, per_mac in ((torch.float32, 2), (torch.complex64, 8)):
        module = Bmm(torch.ones(7, 5, 4, dtype=dtype))
        assert count_flops(module, torch.ones(7, 3, 5, dtype=dtype)) == per_mac * macs
