"""Batch-size-independent Gaussian noise (lsrs.noise)."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import stats

import lsrs.noise as noise_mod
from lsrs.noise import (
    DEFAULT_BLOCK,
    MT_WORDS,
    NoiseStream,
    as_nchw,
    derive_seed,
    device_seed,
    mt19937_words,
    raw_words,
    seed_from,
    stream_generator,
)
from tests.noise_draws import draw_in_chunks

SETTINGS = settings(max_examples=40, deadline=None, database=None, derandomize=True)




# ---------------------------------------------------------------- distribution
def test_stream_is_standard_normal_ks() -> None:
    """Values are N(0, 1): KS test against scipy.stats.norm on 150k values (fixed seed), plus moments."""
    stream = NoiseStream((3, 5, 5), seed=20240601)
    values = draw_in_chunks(stream, [2000]).numpy().ravel().astype(np.float64)
    assert values.size == 150_000
    ks = stats.kstest(values, stats.norm.cdf)
    assert ks.pvalue > 1e-3
    # mean and variance within 5 standard errors of 0 and 1
    se = 1 / np.sqrt(values.size)
    assert abs(values.mean()) < 5 * se
    assert abs(values.var() - 1.0) < 5 * np.sqrt(2) * se


@pytest.mark.parametrize("std", [0.12, 0.5, 1.0, 3.0])
def test_stream_with_std_is_normal_with_that_scale_ks(std: float) -> None:
    """``std`` gives N(0, std^2) (KS test against scipy.stats.norm(scale=std)), and it is the unit stream
    of the same seed scaled by ``std`` (the engine relies on this instead of multiplying by sigma itself)."""
    scaled = draw_in_chunks(NoiseStream((3, 5, 5), seed=77, std=std), [37, 1000, 3])
    unit = draw_in_chunks(NoiseStream((3, 5, 5), seed=77), [1040])
    values = scaled.numpy().ravel().astype(np.float64)
    assert stats.kstest(values, stats.norm(scale=std).cdf).pvalue > 1e-3
    torch.testing.assert_close(scaled, unit * std, rtol=1e-6, atol=1e-7)


def test_bad_std_raises() -> None:
    for std in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            NoiseStream((3,), seed=0, std=std)


def test_blocks_are_distinct_and_uncorrelated() -> None:
    """Consecutive blocks come from successive states of one generator: no two blocks are equal and
    neighbours are uncorrelated."""
    stream = NoiseStream((16,), seed=3)
    x = draw_in_chunks(stream, [DEFAULT_BLOCK * 40]).reshape(40, -1).numpy().astype(np.float64)
    assert len({row.tobytes() for row in x}) == 40
    r = np.corrcoef(x[:-1].ravel(), x[1:].ravel())[0, 1]
    assert abs(r) < 5 / np.sqrt(x[:-1].size)


def test_sample_j_comes_from_block_j_div_block_of_one_generator() -> None:
    """Documented contract of stream v1: sample j is element j % block of the (j // block)-th ``normal_`` block
    drawn, in order, from the one generator ``stream_generator(seed)``."""
    seed, block, shape = 99, 8, (2, 3, 4)  # (C, H, W) -> drawn as (H, W, C)
    stream = NoiseStream(shape, seed=seed, block=block, version="v1")
    got = draw_in_chunks(stream, [5, 13, 1, 20])  # 39 samples, chunks straddle block edges
    g = stream_generator(seed)
    ref = torch.cat([torch.empty((block, 3, 4, 2)).normal_(generator=g) for _ in range(5)])
    assert torch.equal(got, ref[:39])
    assert stream.blocks_drawn == 5


def test_finish_block_starts_the_next_block() -> None:
    """After ``finish_block`` the next sample is the first of the next block; the rest of the block is dropped
    (stream v1; v2: tests/test_noise_blocks.py)."""
    block = 8
    stream = NoiseStream((3,), seed=5, block=block, version="v1")
    first = draw_in_chunks(stream, [11])  # blocks 0 and 1 (3 samples of block 1 used)
    stream.finish_block()
    after = draw_in_chunks(stream, [10])  # blocks 2 and 3
    g = stream_generator(5)
    ref = torch.cat([torch.empty((block, 3)).normal_(generator=g) for _ in range(4)])
    assert torch.equal(first, ref[:11]) and torch.equal(after, ref[16:26])
    stream.finish_block()  # drops the 6 unused samples of block 3: block 4 comes next
    assert torch.equal(draw_in_chunks(stream, [1]), torch.empty((block, 3)).normal_(generator=g)[:1])


# ---------------------------------------------------------------- independence within and across streams
def test_seeds_equal_in_the_low_32_bits_give_different_noise() -> None:
    """Regression: torch's CPU generator keeps only the low 32 bits of ``manual_seed``. Streams 56800 and
    192027 used to seed their block 0 with derive_seed(seed, 0), equal in those bits, hence an identical
    block; now each stream loads a full mt19937 state and their noise differs."""
    a, b = 56_800, 192_027
    assert derive_seed(a, 0) != derive_seed(b, 0)
    assert derive_seed(a, 0) % 2**32 == derive_seed(b, 0) % 2**32
    assert not torch.isclose(draw_in_chunks(NoiseStream((10,), a), [64]), draw_in_chunks(NoiseStream((10,), b), [64])).any()
    for s in (7, 2**40 + 3):
        x = draw_in_chunks(NoiseStream((10,), s), [64])
        for other in (s + 2**32, s + 2**63, s + 2**64):
            assert not torch.isclose(x, draw_in_chunks(NoiseStream((10,), other), [64])).any()
            assert device_seed(s) != device_seed(other)  # the 64-bit keys of non-CPU devices differ too


def test_every_block_of_a_certificate_stream_is_distinct() -> None:
    """One certificate's stream (n0 = 100 selection samples, then n = 100,000 estimation samples from the next
    block on) of a 4-float latent: all 100,100 samples pairwise different, hence every one of its 1,565
    blocks too (also checked by hashing each block's bytes). Seed 900 used to reseed its blocks 409 and 450
    with derive_seed values equal in the low 32 bits: 64 repeated samples."""
    stream = NoiseStream((4,), seed=900)
    selection = draw_in_chunks(stream, [100])
    stream.finish_block()
    estimation = draw_in_chunks(stream, [4096] * 24 + [1696])
    assert stream.blocks_drawn == 2 + 1563
    rows = torch.cat([selection, estimation]).numpy()
    assert rows.shape == (100_100, 4)
    assert len(np.unique(rows, axis=0)) == 100_100
    blocks = [selection[:64], selection[64:], *estimation.split(DEFAULT_BLOCK)]
    assert len({hashlib.sha256(blk.numpy().tobytes()).digest() for blk in blocks}) == len(blocks) == 1565


@pytest.mark.parametrize("key", [0, 12345, 2**64 + 1, -3, (2**62, "certify"), (7, "predict")])
def test_loaded_cpu_state_reproduces_numpys_mt19937(key: object) -> None:
    """Oracle: the CPU generator's raw 32-bit outputs (int64 ``random_(-2**63, None)`` = two words, high
    first) equal numpy's ``MT19937.random_raw`` from the same 624-word state, across several twists."""
    words = mt19937_words(key)
    assert words.dtype == np.uint32 and words.shape == (MT_WORDS,) and words[0] >> 31 == 1
    bg = np.random.MT19937()
    bg.state = {"bit_generator": "MT19937", "state": {"key": words, "pos": MT_WORDS}}
    got = torch.empty(1500, dtype=torch.int64).random_(-(2**63), None, generator=stream_generator(key))
    np.testing.assert_array_equal(raw_words(got), bg.random_raw(3000))


def test_raw_words_read_torchs_mt19937_outputs() -> None:
    """The word order of :func:`raw_words` on stock torch: ``manual_seed(s)`` is mt19937's ``init_genrand(s)``
    (numpy's legacy seeding), and its raw outputs match numpy's."""
    bg = np.random.MT19937()
    bg._legacy_seeding(2024)
    got = torch.empty(700, dtype=torch.int64).random_(-(2**63), None, generator=torch.Generator().manual_seed(2024))
    np.testing.assert_array_equal(raw_words(got), bg.random_raw(1400))


def test_mt19937_words_are_the_documented_shake256_output() -> None:
    digest = hashlib.shake_256(repr(("lsrs.noise", (5, "certify"))).encode()).digest(8 * MT_WORDS)
    words = np.frombuffer(digest[: 4 * MT_WORDS], dtype="<u4").copy()
    words[0] |= 0x80000000
    np.testing.assert_array_equal(mt19937_words((5, "certify")), words)
    assert device_seed((5, "certify")) == int.from_bytes(digest[:8], "little")
    assert stream_generator((5, "certify")).initial_seed() == device_seed((5, "certify"))


@pytest.fixture
def fresh_layout_check():
    noise_mod._cpu_state_template.cache_clear()
    yield
    noise_mod._cpu_state_template.cache_clear()


_PACK = noise_mod._pack


@pytest.mark.parametrize(
    "attr,value",
    [
        ("_STATE_BYTES", 5064),  # the state grew
        ("_HEADER", struct.Struct("<QQQ")),  # other header fields
        ("_pack", lambda template, words, seed: _PACK(template, words[::-1].copy(), seed)),  # words misplaced
    ],
)
def test_an_unexpected_state_layout_fails_loudly(fresh_layout_check, monkeypatch, attr: str, value) -> None:
    """If torch's generator state is not laid out as expected, seeding raises instead of drawing other noise."""
    monkeypatch.setattr(noise_mod, attr, value)
    with pytest.raises(RuntimeError, match="state layout changed"):
        NoiseStream((3,), seed=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_stream_blocks_distinct_and_batch_size_independent() -> None:
    """CUDA: one Philox generator keyed with the full 64-bit device_seed; fixed blocks make the values
    independent of the chunking, and every block of a certificate-sized stream is distinct."""
    one = draw_in_chunks(NoiseStream((2, 3, 3), seed=4, device="cuda"), [1000])
    many = draw_in_chunks(NoiseStream((2, 3, 3), seed=4, device="cuda"), [1, 63, 64, 65, 7, 800])
    assert torch.equal(one, many)
    stream = NoiseStream((4,), seed=900, device="cuda")
    assert stream._gen.initial_seed() == device_seed(900)
    selection = draw_in_chunks(stream, [100])
    stream.finish_block()
    rows = torch.cat([selection, draw_in_chunks(stream, [100_000])]).cpu()
    assert len(np.unique(rows.numpy(), axis=0)) == 100_100


# ---------------------------------------------------------------- chunking independence
@SETTINGS
@given(
    chunks=st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=12),
    block=st.sampled_from([1, 7, 64]),
    seed=st.integers(min_value=0, max_value=2**62),
)
@example(chunks=[1, 7, 63, 64, 65, 1000], block=64, seed=0)
@example(chunks=[63, 1, 64, 64], block=64, seed=1)
def test_values_do_not_depend_on_chunking(chunks: list[int], block: int, seed: int) -> None:
    """The concatenation of the chunks equals one draw of the same total size (bitwise)."""
    shape = (2, 3, 3)
    total = sum(chunks)
    one = draw_in_chunks(NoiseStream(shape, seed=seed, block=block), [total])
    many = draw_in_chunks(NoiseStream(shape, seed=seed, block=block), chunks)
    assert torch.equal(one, many)


def test_different_seeds_give_different_streams() -> None:
    a = draw_in_chunks(NoiseStream((10,), seed=1), [100])
    b = draw_in_chunks(NoiseStream((10,), seed=2), [100])
    assert not torch.isclose(a, b).any()


# ---------------------------------------------------------------- layout
@pytest.mark.parametrize("b", [1, 7, 64, 65])
def test_nchw_view_is_permutation_of_drawing_buffer(b: int) -> None:
    """Image noise is drawn as (B, H, W, C); fill() returns the same memory viewed as (B, C, H, W), i.e. a
    channels_last tensor with view[i, c, h, w] == buffer[i, h, w, c]."""
    C, H, W = 3, 4, 5
    stream = NoiseStream((C, H, W), seed=11)
    buf = stream.new_buffer(b)
    assert buf.shape == (b, H, W, C) and buf.is_contiguous()
    view = stream.fill(buf)
    assert view.shape == (b, C, H, W)
    assert view.data_ptr() == buf.data_ptr()
    assert view.is_contiguous(memory_format=torch.channels_last)
    flat = buf.numpy().reshape(b, H * W * C)
    v = view.numpy()
    i, c, h, w = np.meshgrid(np.arange(b), np.arange(C), np.arange(H), np.arange(W), indexing="ij")
    np.testing.assert_array_equal(v, flat[i, (h * W + w) * C + c])
    # the plain contiguous copy carries the same values
    assert torch.equal(view.contiguous(), buf.permute(0, 3, 1, 2))
    assert torch.equal(as_nchw(buf), view)


def test_non_image_shapes_are_drawn_as_is() -> None:
    for shape in [(5,), (2, 7), (2, 2, 2, 2)]:
        stream = NoiseStream(shape, seed=0)
        buf = stream.new_buffer(3)
        assert buf.shape == (3, *shape)
        out = stream.fill(buf)
        assert out.shape == (3, *shape) and out.data_ptr() == buf.data_ptr()


def test_bad_block_raises() -> None:
    with pytest.raises(ValueError):
        NoiseStream((3,), seed=0, block=0)


# ---------------------------------------------------------------- seeds
def test_derive_seed_is_stable() -> None:
    """Literal values: the derivation must not change across runs, platforms or Python versions,
    otherwise stored results could not be resumed or reproduced."""
    assert derive_seed(0, "selection") == 1020514115353504612
    assert derive_seed(12345, 7) == 8271191295095675034
    assert derive_seed() == 2847183694713211083


def test_derive_seed_differs_across_parts_and_fits_63_bits() -> None:
    seeds = [
        derive_seed(0, "selection"),
        derive_seed(0, "estimation"),
        derive_seed(0, "predict"),
        derive_seed(1, "selection"),
        derive_seed(1, 2),
        derive_seed(2, 1),
        derive_seed(1),
        derive_seed("1"),
        *(derive_seed(7, b) for b in range(1000)),
    ]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**63 for s in seeds)


def test_seed_from() -> None:
    assert seed_from(123) == 123
    a = seed_from(torch.Generator().manual_seed(5))
    b = seed_from(torch.Generator().manual_seed(5))
    c = seed_from(torch.Generator().manual_seed(6))
    assert a == b != c
    assert 0 <= a < 2**62
    assert isinstance(seed_from(None), int)
