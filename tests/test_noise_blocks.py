"""Stream v2 of lsrs.noise: every CPU block from its own counter-addressed mt19937 state, drawn on all threads."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import stats

from lsrs.noise import (
    DEFAULT_BLOCK,
    DOMAINS,
    MT_WORDS,
    STATE_STEPS,
    NoiseStream,
    draw_blocks,
    mt19937_block_states,
    philox_key,
)
from tests.noise_draws import draw_in_chunks
from tests.philox_reference import philox4x64_10

SETTINGS = settings(max_examples=25, deadline=None, database=None, derandomize=True)




def _reference_block(key: object, b: int, shape: tuple[int, ...], std: float = 1.0) -> torch.Tensor:
    """Block ``b`` from the documented definition: ``normal_(0, std)`` of a (64, *shape) tensor from a fresh
    torch CPU generator whose mt19937 state is the Philox words of counters (78 b + i, 0, 0, 0)."""
    k = [int(w) for w in philox_key(key)]
    raw = [w for i in range(1, STATE_STEPS + 1) for w in philox4x64_10([STATE_STEPS * b + i, 0, 0, 0], k)]
    words = np.array([half for w in raw for half in (w & 0xFFFFFFFF, w >> 32)], dtype=np.uint32)
    words[0] |= np.uint32(0x80000000)
    bg = np.random.MT19937()
    bg.state = {"bit_generator": "MT19937", "state": {"key": words, "pos": MT_WORDS}}
    gen = torch.Generator()
    from lsrs.noise import _cpu_state_template, _pack  # the state loader is checked against numpy below

    gen.set_state(_pack(_cpu_state_template(), words, 0))
    probe = torch.Generator()
    probe.set_state(gen.get_state())
    got = torch.empty(8, dtype=torch.int64).random_(-(2**63), None, generator=probe)
    from lsrs.noise import raw_words

    np.testing.assert_array_equal(raw_words(got), bg.random_raw(16))  # the loaded state is numpy's MT19937
    return torch.empty((DEFAULT_BLOCK, *shape)).normal_(0.0, std, generator=gen)


def test_states_are_the_documented_philox_words() -> None:
    states = mt19937_block_states(("s", 3), 5, 2)
    k = [int(w) for w in philox_key(("s", 3))]
    for j, b in enumerate((5, 6)):
        raw = [w for i in range(1, STATE_STEPS + 1) for w in philox4x64_10([STATE_STEPS * b + i, 0, 0,
                                                                             DOMAINS["mt19937"]], k)]
        words = [half for w in raw for half in (w & 0xFFFFFFFF, w >> 32)]
        words[0] |= 0x80000000
        assert states[j].tolist() == words
    assert np.array_equal(mt19937_block_states(("s", 3), 6, 1)[0], states[1])  # any block directly


def test_sample_j_is_element_j_mod_64_of_block_j_div_64() -> None:
    """The contract: sample j is element j % 64 of block j // 64, and block b is :func:`_reference_block`."""
    key, shape = (99, "certify", "abc"), (2, 3, 4)  # (C, H, W) -> drawn as (H, W, C)
    got = draw_in_chunks(NoiseStream(shape, seed=key, std=0.5), [5, 130, 1, 64])
    ref = torch.cat([_reference_block(key, b, (3, 4, 2), 0.5) for b in range(4)])
    assert torch.equal(got, ref[:200])


def test_finish_block_skips_to_the_next_block() -> None:
    stream = NoiseStream((3,), seed=5)
    first = draw_in_chunks(stream, [70])  # blocks 0 and 1 (6 samples of block 1)
    stream.finish_block()
    after = draw_in_chunks(stream, [10])  # block 2
    assert stream.blocks_drawn == 3
    assert torch.equal(first, torch.cat([_reference_block(5, 0, (3,)), _reference_block(5, 1, (3,))])[:70])
    assert torch.equal(after, _reference_block(5, 2, (3,))[:10])


@SETTINGS
@given(chunks=st.lists(st.integers(1, 300), min_size=1, max_size=10), threads=st.sampled_from([1, 2, 3]),
       seed=st.integers(0, 2**62))
@example(chunks=[1, 63, 64, 65, 7, 800], threads=2, seed=0)
def test_values_do_not_depend_on_batches_or_threads(chunks: list[int], threads: int, seed: int) -> None:
    """Any cut into batches and any number of torch threads gives the same samples, bit for bit."""
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = draw_in_chunks(NoiseStream((2, 3, 3), seed=seed), [sum(chunks)])
        torch.set_num_threads(threads)
        many = draw_in_chunks(NoiseStream((2, 3, 3), seed=seed), chunks)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, many)


def test_draw_blocks_fills_in_parallel_like_one_by_one() -> None:
    outs = [torch.empty(DEFAULT_BLOCK, 50) for _ in range(7)]
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        draw_blocks(("p",), 10, outs, 2.0)
    finally:
        torch.set_num_threads(old)
    for j, out in enumerate(outs):
        single = [torch.empty(DEFAULT_BLOCK, 50)]
        draw_blocks(("p",), 10 + j, single, 2.0)
        assert torch.equal(out, single[0])


def test_normals_pass_ks_and_anderson_darling_on_a_million_samples() -> None:
    """N(0, sigma^2) across blocks, threads and a batch cut: KS against scipy.stats.norm on 1,048,576 values,
    Anderson-Darling (normality, estimated parameters) on 100,000, and mean / variance within 5 standard
    errors; no correlation between neighbouring blocks."""
    sigma = 0.25
    values = draw_in_chunks(NoiseStream((4, 8, 8), seed=("dist", 1), std=sigma), [200, 3896]).numpy().astype(np.float64)
    flat = values.ravel()
    assert flat.size == 4096 * 256
    assert stats.kstest(flat, stats.norm(scale=sigma).cdf).pvalue > 1e-3
    ad = stats.anderson(flat[:100_000], dist="norm", method="interpolate")  # p-values tabulated in [0.01, 0.15]
    assert ad.pvalue > 0.01
    se = sigma / np.sqrt(flat.size)
    assert abs(flat.mean()) < 5 * se and abs(flat.var() / sigma**2 - 1) < 5 * np.sqrt(2 / flat.size)
    blocks = values.reshape(-1, DEFAULT_BLOCK * 256)
    r = np.corrcoef(blocks[:-1].ravel(), blocks[1:].ravel())[0, 1]
    assert abs(r) < 5 / np.sqrt(blocks[:-1].size)


def test_every_block_distinct_and_keys_128_bits() -> None:
    """Distinct keys give distinct 128-bit Philox keys (10,000 certificate-like keys, including ints equal
    modulo 2^32 or 2^64 and an int against its string), and the 2,000 blocks of one stream are pairwise
    different (their states and their values)."""
    keys = [(s, "certify", "d") for s in range(5000)] + [s * 2**32 + 7 for s in range(2500)]  # 7 once
    keys += [s * 2**64 + 7 for s in range(1, 2500)] + ["7"]
    assert len({philox_key(k).tobytes() for k in keys}) == len(keys)
    states = mt19937_block_states(("one",), 0, 2000)
    assert len({row.tobytes() for row in states}) == 2000
    x = draw_in_chunks(NoiseStream((4,), seed=("one",)), [2000 * DEFAULT_BLOCK]).reshape(2000, -1)
    assert len({hashlib.sha256(row.numpy().tobytes()).digest() for row in x}) == 2000


def test_block_range_is_checked() -> None:
    with pytest.raises(ValueError, match="block"):
        mt19937_block_states(0, -1, 1)
    with pytest.raises(ValueError, match="block"):
        mt19937_block_states(0, 2**64 // STATE_STEPS, 1)


def test_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError, match="noise stream"):
        NoiseStream((3,), seed=0, version="v4")


def test_certificates_do_not_depend_on_batch_size_or_threads() -> None:
    """CERTIFY of a small LS-RS twin: the same counts and radius for batch sizes 7, 64 and 300 and for one or
    two torch threads (the v2 blocks of a batch are drawn on the threads side by side)."""
    from lsrs.models import resnet18
    from lsrs.smoothing import LatentSmooth

    torch.manual_seed(3)
    model = resnet18(10, 9, width=8, in_size=16, in_channels=3).eval()
    smoother = LatentSmooth(model.encoder, model.classifier, 10, 0.5, model.encoder_lipschitz)
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(4))
    old = torch.get_num_threads()
    seen = set()
    try:
        for threads, batch in [(1, 7), (2, 64), (2, 300), (1, 300)]:
            torch.set_num_threads(threads)
            c = smoother.certify(x, 100, 600, 0.001, batch, generator=12)
            seen.add((c.counts_selection, c.counts_estimation, c.prediction, c.radius))
    finally:
        torch.set_num_threads(old)
    assert len(seen) == 1
    counts = next(iter(seen))[1]
    assert sum(v > 0 for v in counts) >= 2, "a constant classifier would make the comparison vacuous"
