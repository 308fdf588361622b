"""bench.perf.noise_share replays the noise draws of one CERTIFY exactly (the speed reports' noise share)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.perf.noise_share import noise_draw
from lsrs.noise import NoiseStream
from lsrs.smoothing import Smooth


@pytest.mark.parametrize("n0,n,batch", [(100, 500, 64), (10, 1000, 300), (64, 64, 200)])
def test_noise_draw_makes_the_draws_of_certify(monkeypatch: pytest.MonkeyPatch, n0: int, n: int, batch: int) -> None:
    calls: list[tuple] = []
    fill, finish = NoiseStream.fill, NoiseStream.finish_block

    def spy_fill(self, out):
        calls.append(("fill", out.shape[0], self.blocks_drawn))
        return fill(self, out)

    def spy_finish(self):
        calls.append(("finish", self.blocks_drawn))
        return finish(self)

    monkeypatch.setattr(NoiseStream, "fill", spy_fill)
    monkeypatch.setattr(NoiseStream, "finish_block", spy_finish)
    smoother = Smooth(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval(), 3, 0.5)
    smoother.certify(torch.rand(3, 2, 2), n0, n, 0.001, batch, generator=1)
    certify_calls, calls[:] = list(calls), []
    noise_draw(smoother, (3, 2, 2), n0, n, batch)()
    assert calls[: len(certify_calls)] == certify_calls and calls[len(certify_calls):] == [("finish", calls[-1][1])]
