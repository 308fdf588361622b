"""Counter-based blocks of lsrs.noise (Philox4x64-10) against an independent pure-Python Philox."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from lsrs.noise import (
    DOMAINS,
    block_bit_generator,
    block_uniform_bits,
    mt19937_block_states,
    philox_key,
    stream_uniform_bits,
)
from tests.philox_reference import philox4x64_10

SETTINGS = settings(max_examples=30, deadline=None, database=None, derandomize=True)


def test_reference_philox_known_answer() -> None:
    """Random123's known-answer vector for philox4x64_10 with zero counter and key."""
    expected = [0x16554D9ECA36314C, 0xDB20FE9D672D0FDC, 0xD7E772CEE186176B, 0x7E68B68AEC7BA23B]
    assert philox4x64_10([0, 0, 0, 0], [0, 0]) == expected


def test_key_is_shake256_of_the_stream_key() -> None:
    digest = hashlib.shake_256(repr(("lsrs.noise.philox", (7, "certify"))).encode()).digest(16)
    want = [int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")]
    assert philox_key((7, "certify")).tolist() == want


@pytest.mark.parametrize("block", [0, 1, 12345, 2**64 - 1])
def test_block_reads_counters_i_block_0_1(block: int) -> None:
    """Output 4(i-1)+j of a block is word j of Philox_k((i, block, 0, 1)): any block is reachable directly."""
    key = philox_key(("addr", block))
    got = block_bit_generator(key, block).random_raw(12).tolist()
    k = [int(w) for w in key]
    want = [w for i in (1, 2, 3) for w in philox4x64_10([i, block, 0, DOMAINS["uniform"]], k)]
    assert DOMAINS["uniform"] == 1 and got == want
    assert block_uniform_bits(key, block, (3, 4)).ravel().tolist() == want


def test_block_out_of_range_is_refused() -> None:
    for bad in (-1, 2**64, True):
        with pytest.raises(ValueError, match="block"):
            block_uniform_bits(0, bad, 4)


def test_uniform_bits_prefix_and_dtype() -> None:
    small = block_uniform_bits(3, 5, 10)
    large = block_uniform_bits(3, 5, (4, 10))
    assert small.dtype == np.uint64 and large.shape == (4, 10)
    assert np.array_equal(large.ravel()[:10], small)


@SETTINGS
@given(cuts=st.lists(st.integers(1, 150), min_size=1, max_size=6), start=st.integers(0, 200))
def test_stream_uniform_bits_is_batch_size_independent(cuts: list[int], start: int) -> None:
    whole = stream_uniform_bits(("s", 1), start, sum(cuts), (2, 3))
    parts, pos = [], start
    for c in cuts:
        parts.append(stream_uniform_bits(("s", 1), pos, c, (2, 3)))
        pos += c
    assert np.array_equal(np.concatenate(parts), whole)
    j = start + sum(cuts) - 1  # the last sample: sample j % 64 of block j // 64
    assert np.array_equal(whole[-1], block_uniform_bits(("s", 1), j // 64, (j % 64 + 1, 2, 3))[-1])


def test_uniform_bits_are_uniform_and_distinct_across_keys_blocks_domains() -> None:
    """KS of the top 53 bits as a fraction against U(0, 1) on 10^6 words, every bit balanced (on 2^16 words), and no shared
    word between keys, blocks and the Gaussian blocks' states of the same key."""
    words = stream_uniform_bits(("u", 0), 0, 4096, (256,)).ravel()
    u = (words >> np.uint64(11)).astype(np.float64) / 2.0**53
    assert stats.kstest(u, stats.uniform.cdf).pvalue > 1e-3
    head = words[: 2**16]
    bits = ((head[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).mean(axis=0)
    assert np.all(np.abs(bits - 0.5) < 6 * 0.5 / np.sqrt(head.size))
    others = [block_uniform_bits(("u", 1), 0, 4096), block_uniform_bits(("u", 0), 1, 4096),
              mt19937_block_states(("u", 0), 0, 7).view(np.uint64).ravel()]
    first = set(block_uniform_bits(("u", 0), 0, 4096).tolist())
    for other in others:
        assert first.isdisjoint(other.tolist())
