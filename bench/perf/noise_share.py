"""The noise of one CERTIFY on its own: what drawing the Gaussian samples costs, as a share of certification.

:func:`noise_draw` replays exactly the draws :meth:`lsrs.smoothing.LatentSmooth.certify` makes (the smoother's
own stream: version, block, sigma, device, dtype; ``n0`` selection samples, a fresh block, then ``n`` estimation
samples, in the fills of :func:`lsrs.noise.fill_sizes` into one reused buffer) and nothing else, so the time of that callable
divided by the certificate's time is the share of noise generation in certification.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lsrs.noise import fill_ahead_bytes, fill_sizes
from lsrs.smoothing import LatentSmooth


def noise_draw(smoother: LatentSmooth, latent_shape: Sequence[int], n0: int, n: int, batch_size: int,
               key: object = ("noise-share",)) -> Callable[[], torch.Tensor]:
    """A callable drawing one certificate's noise (``n0``, then ``n`` from a fresh block) with ``smoother``'s stream."""
    z = torch.zeros((1, *latent_shape), device=smoother.device)
    ahead = fill_ahead_bytes(smoother.device)
    plan = [fill_sizes(num, batch_size, z[0].numel() * z.element_size(), (), ahead) for num in (n0, n)]

    buffer = smoother.noise_stream(z, key).new_buffer(max(max(sizes, default=0) for sizes in plan))

    def run() -> torch.Tensor:  # one buffer for all calls, as the engine's (lsrs.noise.Scratch)
        stream = smoother.noise_stream(z, key)
        for sizes in plan:
            for size in sizes:
                stream.fill(buffer[:size])
            stream.finish_block()
        return buffer

    return run
