"""Drawing a noise stream in chunks, as the engine's batches do: shared by the noise tests."""

from __future__ import annotations

import torch

from lsrs.noise import NoiseStream


def draw_in_chunks(stream: NoiseStream, chunks: list[int]) -> torch.Tensor:
    """Consume ``stream`` in the given chunk sizes; return all samples in drawing layout, concatenated."""
    parts = []
    for b in chunks:
        buf = stream.new_buffer(b)
        stream.fill(buf)
        parts.append(buf.clone())
    return torch.cat(parts)
