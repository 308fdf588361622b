"""Which stream a smoother draws: an int generator gives each image its own, and CERTIFY, the anytime-valid
decision and PREDICT never share samples (the keys of lsrs.noise.certificate_key)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lsrs.smoothing import LatentSmooth, Smooth

SIGMA = 1.0


def _first_coordinate_classifier() -> nn.Module:
    """Logits (v0, -v0): the prediction depends on the first coordinate only, so images that differ elsewhere
    get equal counts exactly when they get equal noise."""
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    return lin.eval()


def _keys_used(monkeypatch: pytest.MonkeyPatch) -> list:
    keys: list = []
    original = LatentSmooth.noise_stream

    def spy(self, z, key, *rest):
        keys.append(key)
        return original(self, z, key, *rest)

    monkeypatch.setattr(LatentSmooth, "noise_stream", spy)
    return keys


def test_an_int_generator_gives_each_image_its_own_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's loop passes ``generator=0`` for every image: five images equal in the coordinate the
    classifier reads must still get five different streams (different counts), and the same image the same."""
    smoother = Smooth(_first_coordinate_classifier(), 2, SIGMA, input_range=None)
    keys = _keys_used(monkeypatch)
    images = [torch.tensor([0.0, float(k)]) for k in range(5)]
    certs = [smoother.certify(x, 200, 2000, 0.001, 256, generator=0) for x in images]
    counts = {(c.counts_selection, c.counts_estimation) for c in certs}
    assert len(counts) == 5
    assert len({repr(k) for k in keys}) == 5
    again = smoother.certify(images[3].clone(), 200, 2000, 0.001, 256, generator=0)
    assert (again.counts_selection, again.counts_estimation) == (certs[3].counts_selection, certs[3].counts_estimation)


def test_certify_decide_and_predict_never_share_a_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    smoother = Smooth(_first_coordinate_classifier(), 2, SIGMA, input_range=None)
    keys = _keys_used(monkeypatch)
    x = torch.tensor([0.3, 0.0])
    smoother.certify(x, 100, 500, 0.001, 128, generator=7)
    smoother.decide(x, 0.1, 0.001, 512, 128, generator=7, n0=100)
    smoother.predict(x, 300, 0.001, 128, generator=7)
    assert len(keys) == 3 and len({repr(k) for k in keys}) == 3


@pytest.mark.parametrize("seed", [np.int64(5), np.int32(5), np.uint8(5)])
def test_numpy_integer_seeds_are_ints(seed: object) -> None:
    smoother = Smooth(_first_coordinate_classifier(), 2, SIGMA, input_range=None)
    x = torch.tensor([0.2, 0.0])
    want = smoother.certify(x, 50, 300, 0.001, 64, generator=5)
    got = smoother.certify(x, 50, 300, 0.001, 64, generator=seed)
    assert (got.counts_selection, got.counts_estimation) == (want.counts_selection, want.counts_estimation)
    assert smoother.predict(x, 200, 0.001, 64, generator=seed) == smoother.predict(x, 200, 0.001, 64, generator=5)


@pytest.mark.parametrize("bad", [1.5, "0", np.float32(1.0)])
def test_other_generators_are_refused_in_one_line(bad: object) -> None:
    smoother = Smooth(_first_coordinate_classifier(), 2, SIGMA, input_range=None)
    with pytest.raises(TypeError, match="generator must be an int, a torch.Generator or None"):
        smoother.certify(torch.zeros(2), 10, 10, 0.001, 10, generator=bad)
