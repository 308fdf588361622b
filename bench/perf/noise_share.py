"""The noise of one CERTIFY on its own: what drawing the Gaussian samples costs, as a share of certification.

:func:`noise_draw` replays exactly the draws :meth:`lsrs.smoothing.LatentSmooth.certify` makes (the smoother's
own stream: version, block, sigma, device, dtype; ``n0`` selection samples, a fresh block, then ``n`` estimation
samples, in batches of ``batch_size`` into one reused buffer) and nothing else, so the time of that callable
divided by the certificate's time is the share of noise generation in certification.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lsrs.smoothing import LatentSmooth


def noise_draw(smoother: LatentSmooth, latent_shape: Sequence[int], n0: int, n: int, batch_size: int,
               key: object = ("noise-share",)) -> Callable[[], torch.Tensor]:
    """A callable drawing one certificate's noise (``n0``, then ``n`` from a fresh block) with ``smoother``'s stream."""
    z = torch.zeros((1, *latent_shape), device=smoother.device)

    def run() -> torch.Tensor:
        stream = smoother.noise_stream(z, key)
        buffer = stream.new_buffer(min(batch_size, max(n0, n)))
        for num in (n0, n):
            for done in range(0, num, batch_size):
                stream.fill(buffer[: min(batch_size, num - done)])
            stream.finish_block()
        return buffer

    return run
