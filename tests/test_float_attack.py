"""The floating-point attack on randomized smoothing (Voracek & Hein, ICLR 2023), and lattice noise against it.

The base classifier reads the lowest mantissa bit of every coordinate of its input ``y`` in ``[1, 2)`` (``y`` is
an even multiple of ``2^-23``) and says class 0 when clearly more than half are even. With float32 Gaussian
noise the engine feeds ``fl32(x + fl32(g))``: when ``fl32(g)`` has bits below ``x``'s last place the sum can be an
exact tie, and ties round to even, so the fed values are even far more often than half the time. For the
smoothed classifier the certificate speaks of, the noisy input is the exact sum ``x + g`` rounded once (ties have
probability 0): even half the time, so it predicts class 1. The Gaussian pipeline therefore certifies class 0
with a positive radius at a point the smoothed classifier classifies as 1. With lattice noise the engine
computes the smoothed classifier of the lattice exactly: its answer agrees with an independent reference at the
point and at lattice points inside its radius.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lsrs.smoothing import Smooth

DIM = 4096
SIGMA = 0.15
CENTRE = 357  # x = 357 / 255 = 1.4 exactly: on the 8-bit lattice, inside [1, 2) with noise
THRESHOLD = 0.5207  # between the even share of the float pipeline (~0.542) and of exact sums (~0.499)


class EvenBits(nn.Module):
    """Class 0 iff the share of coordinates that are even multiples of 2^-23 exceeds THRESHOLD."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        share = ((y.flatten(1) * 2.0**23) % 2 == 0).float().mean(1)
        return torch.stack([share - THRESHOLD, THRESHOLD - share], 1)


def _share_class0(inputs: np.ndarray) -> float:
    y = torch.from_numpy(inputs.astype(np.float32))
    return float((EvenBits()(y).argmax(1) == 0).double().mean())


def test_gaussian_float_pipeline_certifies_a_false_class() -> None:
    x = torch.full((DIM,), CENTRE / 255, dtype=torch.float32)
    cert = Smooth(EvenBits().eval(), 2, SIGMA, input_range=None).certify(x, 100, 1000, 0.001, 250, generator=0)
    assert cert.prediction == 0 and cert.radius > 0.2
    # the smoothed classifier of the theorem at x: exact sums x + g (float64, one rounding to float32)
    g = np.random.default_rng(0).normal(0.0, SIGMA, (2000, DIM))
    reference = _share_class0(np.float64(x[0]) + g)
    assert reference < 0.05  # class 1 at distance 0 < radius: the certificate is false


def test_lattice_noise_certifies_what_the_lattice_smoothed_classifier_does() -> None:
    x = torch.full((DIM,), CENTRE / 255, dtype=torch.float32)
    cert = Smooth(EvenBits().eval(), 2, SIGMA, noise="lattice", input_range=None).certify(x, 100, 1000, 0.001, 250, generator=0)
    assert cert.prediction == 1 and cert.radius > 0.2  # the honest class: the attack does not get through
    rng = np.random.default_rng(1)

    def reference(centre: np.ndarray) -> float:
        """P(class 0) of the lattice smoothed classifier at integer centre m: k = round(255 g), fed fl32((m+k)/255)."""
        k = np.rint(rng.normal(0.0, SIGMA * 255, (2000, DIM)))
        return _share_class0((centre + k).astype(np.float32) / np.float32(255))

    centre = np.full(DIM, float(CENTRE))
    predicted = 0 if reference(centre) > 0.5 else 1
    assert predicted == cert.prediction
    # lattice points within the certified radius: 1,000 coordinates one level up (distance sqrt(1000)/255)
    moved = centre.copy()
    moved[:1000] += 1
    assert np.sqrt(1000) / 255 < cert.radius
    assert (0 if reference(moved) > 0.5 else 1) == cert.prediction
