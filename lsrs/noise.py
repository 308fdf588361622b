"""Batch-size-independent Gaussian noise for Monte Carlo certification.

Noise sample ``j`` of a stream always has the same value, whatever the batch size used to consume the
stream: samples are drawn in fixed blocks of ``block`` samples, block ``b`` from a generator seeded with
``derive_seed(seed, b)``. A batch that ends inside a block keeps the rest of that block for the next batch.

Image-shaped noise (C, H, W) is drawn in (H, W, C) order and returned as an NCHW view, which is exactly
PyTorch's ``channels_last`` memory format: the optimized channels-last path and the plain contiguous path
see identical values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

DEFAULT_BLOCK = 64


def derive_seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (stable across runs, platforms and Python versions)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_from(generator: torch.Generator | int | None) -> int:
    """A base seed from an int, from one draw of a ``torch.Generator``, or from torch's global RNG."""
    if isinstance(generator, int):
        return generator
    if generator is None:
        return int(torch.randint(0, 2**62, (1,)).item())
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())


def _storage_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Per-sample shape in drawing order: (H, W, C) for (C, H, W), unchanged otherwise."""
    shape = tuple(shape)
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else shape


def as_nchw(buffer: torch.Tensor) -> torch.Tensor:
    """View a (B, H, W, C) drawing buffer as (B, C, H, W) (channels_last memory); other ranks unchanged."""
    return buffer.permute(0, 3, 1, 2) if buffer.dim() == 4 else buffer


class NoiseStream:
    """An endless stream of i.i.d. N(0, std^2) samples of shape ``sample_shape`` (see the module docstring).

    ``std`` is applied inside the draw (``normal_(0, std)``), so the engine adds the stream to the latent in
    one pass instead of scaling it first.
    """

    def __init__(
        self,
        sample_shape: Sequence[int],
        seed: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        block: int = DEFAULT_BLOCK,
        std: float = 1.0,
    ) -> None:
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.storage_shape = _storage_shape(sample_shape)
        self.seed = seed
        self.device = torch.device(device)
        self.dtype = dtype
        self.block = block
        self.std = float(std)
        self._next_block = 0
        self._pending: torch.Tensor | None = None
        self._gen = torch.Generator(device=self.device)

    def new_buffer(self, batch: int) -> torch.Tensor:
        """An uninitialised drawing buffer for ``batch`` samples (fill it with :meth:`fill`)."""
        return torch.empty((batch, *self.storage_shape), device=self.device, dtype=self.dtype)

    def _draw_block(self, out: torch.Tensor) -> None:
        self._gen.manual_seed(derive_seed(self.seed, self._next_block))
        self._next_block += 1
        out.normal_(0.0, self.std, generator=self._gen)

    def fill(self, out: torch.Tensor) -> torch.Tensor:
        """Fill ``out`` (a contiguous (b, *storage_shape) tensor) with the next b samples; return its NCHW view."""
        b = out.shape[0]
        done = 0
        if self._pending is not None:
            take = min(b, self._pending.shape[0])
            out[:take].copy_(self._pending[:take])
            self._pending = self._pending[take:] if take < self._pending.shape[0] else None
            done = take
        while b - done >= self.block:
            self._draw_block(out[done : done + self.block])
            done += self.block
        if done < b:
            spare = self.new_buffer(self.block)
            self._draw_block(spare)
            need = b - done
            out[done:].copy_(spare[:need])
            self._pending = spare[need:]
        return as_nchw(out)
