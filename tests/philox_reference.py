"""Philox4x64-10 written from Salmon et al., "Parallel random numbers: as easy as 1, 2, 3" (SC 2011): the
independent oracle of lsrs.noise's counter-based blocks."""

from __future__ import annotations

MASK = 2**64 - 1


def philox4x64_10(counter: list[int], key: list[int]) -> list[int]:
    """The four 64-bit output words of Philox4x64-10 (the paper's Table 2 constants) for one 256-bit counter."""
    c, (k0, k1) = list(counter), key
    for _ in range(10):
        p0, p1 = 0xD2E7470EE14C6C93 * c[0], 0xCA5A826395121157 * c[2]
        c = [(p1 >> 64) ^ c[1] ^ k0, p1 & MASK, (p0 >> 64) ^ c[3] ^ k1, p0 & MASK]
        k0, k1 = (k0 + 0x9E3779B97F4A7C15) & MASK, (k1 + 0xBB67AE8584CAA73B) & MASK
    return c
