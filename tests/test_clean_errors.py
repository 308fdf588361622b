"""Plausible input gets a certificate or one line saying what is wrong and how to fix it, never a traceback from
deep inside; provenance says whose proof a bound rests on; the caller's tensors are never written."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lsrs import LatentSmooth, Smooth
from lsrs.margin import LipschitzCertifier
from lsrs.proofs import LayerProof, proves

IMAGE = torch.tensor([[[0.6, 0.2], [0.1, 0.9]]])


def _encoder() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 4)).eval()


def _head() -> nn.Module:
    torch.manual_seed(1)
    return nn.Linear(4, 2).eval()


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------------------- non-finite weights
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_weights_are_refused_naming_the_layer(bad):
    """A diverged training run: the SVD raised LinAlgError (NaN) or the bound was inf / nan."""
    enc = _encoder()
    with torch.no_grad():
        enc[1].weight[0, 0] = bad
    with pytest.raises(ValueError, match=r"encoder\.1 \(Linear\): its tensor 'weight' has NaN or Inf") as err:
        LatentSmooth(enc, _head(), 2, sigma=0.5, lipschitz=1.0)
    assert "trust_lipschitz=True" in _one_line(err)
    net = nn.Sequential(*_encoder(), _head()).eval()
    with torch.no_grad():
        net[2].bias[1] = bad
    with pytest.raises(ValueError, match=r"2 \(Linear\): its tensor 'bias' has NaN or Inf"):
        LipschitzCertifier(net, (1, 2, 2))


def test_non_finite_weights_set_after_the_first_certificate_are_refused():
    ls = LatentSmooth(_encoder(), _head(), 2, sigma=0.5, lipschitz=1.0)
    ls.certify(IMAGE, 8, 16, 0.01, 16, generator=0)
    ls.encoder[1].weight.data[1, 1] = math.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        ls.certify(IMAGE, 8, 16, 0.01, 16, generator=0)


# ---------------------------------------------------------------------------- numpy numbers
def test_numpy_scalars_are_accepted_wherever_python_numbers_are():
    """``sigma=np.float32(0.25)``, ``n=np.int64(100)``, ``generator=np.int64(i)``, ... were refused or crashed."""
    ls_np = LatentSmooth(_encoder(), _head(), np.int64(2), sigma=np.float32(0.25), lipschitz=np.float32(1.0),
                         noise_block=np.int32(64))
    ls_py = LatentSmooth(_encoder(), _head(), 2, sigma=float(np.float32(0.25)), lipschitz=1.0)
    a = ls_np.certify(IMAGE, np.int64(16), np.int64(100), np.float64(0.01), np.int32(50), generator=np.int64(3))
    b = ls_py.certify(IMAGE, 16, 100, 0.01, 50, generator=3)
    assert (a.prediction, a.radius, a.counts_estimation) == (b.prediction, b.radius, b.counts_estimation)
    assert type(a.n) is int and type(a.alpha) is float and type(a.sigma) is float
    assert ls_np.predict(IMAGE, np.int64(50), np.float32(0.01), np.int64(25), generator=np.int64(1)) == \
        ls_py.predict(IMAGE, 50, float(np.float32(0.01)), 25, generator=1)
    d = ls_np.decide(IMAGE, np.float32(0.1), np.float64(0.01), np.int64(128), np.int64(64), generator=np.int64(2),
                     n0=np.int64(16), first_look=np.int64(32))
    assert d.radius == pytest.approx(0.1)
    with pytest.raises(ValueError, match="n must be an integer >= 1, got np.True_|n must be an integer >= 1"):
        ls_np.certify(IMAGE, 16, np.bool_(True), 0.01, 50)


# ---------------------------------------------------------------------------- reduced precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_or_bf16_classifier_is_certified_in_its_precision(dtype):
    """A classifier after ``.half()`` crashed on a dtype mismatch: it now gets its inputs in its own precision
    (a valid base classifier: ``f(round(z + noise))``)."""
    cert = Smooth(nn.Sequential(nn.Flatten(), _head()).eval().to(dtype), 2, 0.5).certify(IMAGE, 16, 64, 0.01, 64,
                                                                                     generator=0)
    assert sum(cert.counts_estimation) == 64
    ls = LatentSmooth(_encoder(), _head().to(dtype), 2, sigma=0.5, lipschitz=1.0)
    assert sum(ls.certify(IMAGE, 16, 64, 0.01, 64, generator=0).counts_estimation) == 64


def test_a_reduced_precision_encoder_is_certified_or_refused_in_one_line():
    """nn.Linear / nn.Conv2d are upcast exactly for the float64 forward (certified); a Cayley convolution in
    float16 is not (refused, with the fix)."""
    from lsrs.models import resnet18

    ls = LatentSmooth(_encoder().half(), _head(), 2, sigma=0.5, lipschitz=1.0)
    assert ls.certify(IMAGE, 8, 16, 0.01, 16, generator=0).lipschitz_source == "proven"
    model = resnet18(num_classes=2, fors=5, width=4, in_size=8, in_channels=1).eval()
    with pytest.raises(ValueError, match=r"float16 tensors .*\.float\(\)") as err:
        LatentSmooth(model.encoder.half(), model.classifier, 2, sigma=0.5, lipschitz=1.0)
    _one_line(err)


# ---------------------------------------------------------------------------- a user's own proof
class Halve(nn.Module):
    """The README's extension path, literally: a layer with a method ``lipschitz_proof(self, ctx, path)``
    returning an ``lsrs.proofs.LayerProof`` (default terms). It holds a float32 parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        return x * self.scale

    def lipschitz_proof(self, ctx, path):
        return LayerProof(abs(self.scale.detach()), abs(self.scale.detach()))  # tensors: taken as floats


class Double(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(2 * torch.eye(4))

    def forward(self, x):
        return x @ self.w


@proves(Double)
def _double_proof(module, ctx, path):
    return LayerProof(2.0, 2.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_documented_lipschitz_proof_path_works_and_is_recorded_as_a_user_proof(dtype):
    """The float64 forward met the layer's float32 parameter (a dtype mismatch traceback); the certificate said
    ``lipschitz_source="proven"`` like the library's own proofs."""
    ls = LatentSmooth(nn.Sequential(nn.Flatten(), Halve(), Double()), _head(), 2, sigma=0.5, lipschitz=0.1)
    cert = ls.certify(IMAGE.to(dtype), 8, 32, 0.01, 32, generator=0)
    assert cert.lipschitz == pytest.approx(1.0) and type(cert.lipschitz) is float
    assert cert.lipschitz_source == "user-proof"
    certifier = LipschitzCertifier(nn.Sequential(nn.Flatten(), Double(), _head()).eval(), (1, 2, 2), dtype=dtype)
    assert certifier.source == "user-proof"
    assert certifier.certify(IMAGE.to(dtype)).radius.shape == (1,)


def test_provenance_of_library_and_trusted_bounds():
    assert LatentSmooth(_encoder(), _head(), 2, 0.5, 1.0).certify(IMAGE, 8, 16, 0.01, 16, generator=0) \
        .lipschitz_source == "proven"
    assert LipschitzCertifier(nn.Sequential(*_encoder(), _head()).eval(), (1, 2, 2)).source == "proven"
    trusted = LatentSmooth(nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4).eval()), _head(), 2, 0.5, 1.0,
                           trust_lipschitz=True)
    assert trusted.certify(IMAGE, 8, 16, 0.01, 16, generator=0).lipschitz_source == "trusted"


# ---------------------------------------------------------------------------- empty latents, images, inputs
def test_an_empty_latent_is_refused_in_one_line():
    """``max()`` of an empty tensor raised a RuntimeError from inside the proof."""
    enc = nn.Sequential(nn.Flatten(), nn.Linear(4, 0))
    ls = LatentSmooth(enc, nn.Linear(0, 2).eval(), 2, sigma=0.5, lipschitz=1.0)
    with pytest.raises(ValueError, match=r"empty latent") as err:
        ls.certify(IMAGE, 8, 16, 0.01, 16, generator=0)
    _one_line(err)


def test_uint8_and_out_of_range_images_are_refused_with_the_rule():
    """A uint8 image was certified on the 0-255 scale without a word."""
    ls = LatentSmooth(_encoder(), _head(), 2, sigma=0.5, lipschitz=1.0)
    with pytest.raises(ValueError, match=r"torch\.uint8.*x\.float\(\) / 255"):
        ls.certify((IMAGE * 255).to(torch.uint8), 8, 16, 0.01, 16, generator=0)
    with pytest.raises(ValueError, match=r"outside input_range=\(0\.0, 1\.0\)"):
        ls.certify(IMAGE * 255, 8, 16, 0.01, 16, generator=0)
    with pytest.raises(ValueError, match=r"outside input_range"):
        ls.certify(IMAGE.masked_fill(IMAGE > 0.5, math.nan), 8, 16, 0.01, 16, generator=0)
    free = LatentSmooth(_encoder(), _head(), 2, sigma=0.5, lipschitz=1.0, input_range=None)
    assert free.certify(IMAGE * 255, 8, 16, 0.01, 16, generator=0).n == 16  # not images: no range


def test_an_in_place_first_layer_never_writes_the_callers_tensor():
    """An encoder (or margin-certified network) starting with ``ReLU(inplace=True)`` zeroed the negative entries
    of the caller's float64 input."""
    x = torch.tensor([[-0.5, 0.25], [0.5, -1.0]], dtype=torch.float64)[None]
    kept = x.clone()
    enc = nn.Sequential(nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4, 4)).eval()
    LipschitzCertifier(nn.Sequential(*enc, _head()).eval(), (1, 2, 2)).certify(x)
    assert torch.equal(x, kept)
    LatentSmooth(enc, _head(), 2, sigma=0.5, lipschitz=1.0, input_range=None).certify(x, 8, 16, 0.01, 16, generator=0)
    assert torch.equal(x, kept)
    LatentSmooth(enc, _head(), 2, sigma=0.5, lipschitz=1.0, input_range=None, trust_lipschitz=True).certify(
        x, 8, 16, 0.01, 16, generator=0)
    assert torch.equal(x, kept)


def test_the_docs_example_of_a_user_proof_runs_as_written():
    """The code block of docs/concepts/proven-function.md, executed as it stands, certifies as a user proof with
    the bound it states."""
    from pathlib import Path

    page = (Path(__file__).parents[1] / "docs" / "concepts" / "proven-function.md").read_text()
    code = page.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "proven-function.md", "exec"), namespace)  # noqa: S102 - the page's own example
    ls = LatentSmooth(nn.Sequential(nn.Flatten(), namespace["Halve"]()), _head(), 2, sigma=0.5, lipschitz=0.1)
    cert = ls.certify(IMAGE, 8, 32, 0.01, 32, generator=0)
    assert cert.lipschitz == pytest.approx(0.5) and cert.lipschitz_source == "user-proof"
