"""Batch-size-independent Gaussian noise for Monte Carlo certification: fixed, addressable blocks per stream.

A :class:`NoiseStream` draws its samples in fixed blocks of ``block`` (64) samples, each block one ``normal_``
call of the same size: sample ``j`` is element ``j % block`` of block ``j // block``, whatever the batch sizes
used to consume the stream (a batch that ends inside a block keeps the rest of that block for the next batch;
torch's ``normal_`` output depends on the size of each call, hence the fixed blocks).
:meth:`NoiseStream.finish_block` drops the rest of a partly used block, so CERTIFY draws its ``n0`` selection
samples from the first blocks of a certificate's stream and its ``n`` estimation samples from the following
ones: no block is shared.

Image-shaped noise (C, H, W) is drawn in (H, W, C) order and returned as an NCHW view, which is exactly
PyTorch's ``channels_last`` memory format: the optimized channels-last path and the plain contiguous path
see identical values.

Stream v3 (the default, :data:`NOISE_STREAM`) draws exactly the Gaussian samples of v2; it differs only in the
words of lattice noise (:class:`lsrs.lattice.LatticeNoiseStream`): on the CPU, block ``b``'s words are
:func:`block_uniform_bits` of block ``b`` under the key ``(*key, "lattice")``, drawn side by side on the torch
threads, instead of v2's one mt19937 generator per stream.

Stream v2 (Gaussian samples as v3; lattice words as v1, only to resume a run recorded with it). The key (an int, or a tuple of ints and strings) is hashed
once with SHAKE-256 (FIPS 202): ``k = SHAKE256(repr(("lsrs.noise.philox", key)))[:16]``, the 128-bit key of
Philox4x64-10 (:func:`philox_key`). On the CPU, block ``b`` is ``normal_(0, std)`` from a torch CPU generator
loaded with the mt19937 state made of the outputs of ``Philox_k`` at counters ``(78 b + i, 0, 0, 0)``,
``i = 1 .. 78`` (624 32-bit words; the top bit of word 0 set, as Matsumoto and Nishimura's ``init_by_array``
does, so the state is never zero; :func:`mt19937_block_states`). Any block is thus reachable without drawing
the ones before it, and the blocks of one fill are drawn side by side on up to ``torch.get_num_threads()``
threads (:func:`draw_blocks`). Uniform 64-bit integers of the same key read counters ``(i, b, 0, 1)``
(:func:`block_uniform_bits`). On CUDA (and other devices) v2 is v1: one generator per stream,
``manual_seed`` with the first 64 bits of ``SHAKE256(repr(("lsrs.noise", key)))`` (the full Philox4x32-10
key of torch's CUDA generator), blocks drawn in order.

Stream v1 (only to resume a run recorded with it): on the CPU, one generator per stream whose mt19937 state is
the first 2,496 bytes of ``SHAKE256(repr(("lsrs.noise", key)))`` (top bit of word 0 set), loaded with
``set_state`` (``manual_seed`` keeps only the low 32 bits of a seed), all blocks drawn from it in order.

The samples are torch's ``normal_`` in both versions (for float32 blocks of 16 or more values: Box-Muller on
uniforms of a 2^-24 grid, so every Box-Muller radius is at most ``sqrt(48 ln 2) = 5.77`` standard deviations).

Guarantees (M. Matsumoto and T. Nishimura, ACM TOMACS 8(1), 1998; J. Salmon et al., SC 2011, "Parallel
random numbers: as easy as 1, 2, 3"). ``W`` bounds the 32-bit outputs one block (v2) or one stream (v1)
consumes, ``B`` the blocks of a stream, ``K`` the number of streams; mt19937's period is ``P = 2^19937 - 1``.

* Blocks of one v2 stream are independent. Distinct blocks read disjoint Philox counters (``78 b + i`` with
  ``1 <= i <= 78`` determines ``b``; the last word separates the uniform integers). Modelling ``Philox_k`` as a
  pseudorandom function (the standard assumption on counter-based generators; Salmon et al.), the block states
  are independent and uniform over the ``2^19936`` states on mt19937's single cycle whose top bit of word 0 is
  set, so two blocks' outputs overlap only if one state lies within ``W`` steps of the other on the cycle:
  ``P(any overlap in a stream) <= B^2 W / 2^19936``. v1: the states one generator passes through are pairwise
  distinct (``B W << P``). CUDA: each ``normal_`` call advances the Philox offset past the counters it used.
* Distinct streams. v2: ``K`` keys give two equal 128-bit Philox keys with probability at most
  ``K^2 / 2^129`` (birthday bound, SHAKE-256 as a random function); with distinct Philox keys every block of
  every stream is an independent uniform state as above: ``P(any overlap) <= (K B)^2 W / 2^19936``. v1:
  ``P <= K^2 W / 2^19936``. CUDA: two streams share noise only if their 64-bit keys are equal:
  ``P <= K^2 / 2^65``.
* Batch-size and thread independence: a sample's value depends only on its block's state (or, v1 and CUDA, on
  the blocks drawn before it) and on the fixed block shape, never on the batch cuts or on which thread drew it.
* Keys of certificates (:func:`certificate_key`): v2 keys a stream by ``(seed, purpose, image digest)``
  (BLAKE2b-128 of the input's dtype, shape and bytes), so one int seed gives every image its own stream and
  CERTIFY, the anytime-valid decision and PREDICT never read the same stream. ``bench run`` seeds a
  certificate with a 63-bit :func:`derive_seed` of (run seed, image, method, FoR, sigma): two configurations
  of one image share a stream only if those seeds collide, ``P <= K^2 / 2^64`` (for 500 images x 15
  configurations, ``K = 7,500``: below ``3.1e-12``). A stream shared across certificates never affects one
  certificate's ``1 - alpha`` guarantee, which holds for each alone.
"""

from __future__ import annotations

import functools
import hashlib
import numbers
import operator
import os
import struct
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

DEFAULT_BLOCK = 64
MT_WORDS = 624  # mt19937 state words
#: Noise drawn ahead in one fill on the CPU, in bytes (:func:`fill_sizes`).
FILL_AHEAD_BYTES = 64 * 2**20
NoiseKey = int | tuple[int | str, ...]
#: Versions of the CPU noise stream (see the module docstring); :data:`NOISE_STREAM` is drawn unless a stored
#: run recorded another one.
NOISE_STREAMS = ("v1", "v2", "v3")
NOISE_STREAM = "v3"
#: The versions whose CPU Gaussian blocks are counter-addressed (:func:`draw_blocks`); v3 adds the lattice words.
ADDRESSED_STREAMS = ("v2", "v3")

# torch's CPUGeneratorImplState (aten/src/ATen/CPUGeneratorImpl.cpp): uint64 the_initial_seed, int left,
# int seeded, uint64 next, uint64 state[624], then the cached normal samples (left as a fresh generator's).
_HEADER = struct.Struct("<QiiQ")
_STATE_BYTES = 5056
_LAYOUT_PROBE_SEED = 20240601


def check_noise_stream(version: str) -> str:
    if version not in NOISE_STREAMS:
        raise ValueError(f"noise stream must be one of {NOISE_STREAMS}, got {version!r}")
    return version


def derive_seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (stable across runs, platforms and Python versions)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_from(generator: torch.Generator | int | None) -> int:
    """A base seed from an int (numpy integers included), from one draw of a ``torch.Generator``, or from
    torch's global RNG."""
    if isinstance(generator, numbers.Integral):
        return operator.index(generator)
    if generator is None:
        return int(torch.randint(0, 2**62, (1,)).item())
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be an int, a torch.Generator or None, got {type(generator).__name__}")
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())


def image_digest(x: torch.Tensor) -> str:
    """BLAKE2b-128 (RFC 7693) of an input's dtype, shape and bytes (C order, on the CPU), as hex."""
    data = x.detach().to("cpu").contiguous()
    h = hashlib.blake2b(repr((str(data.dtype), tuple(data.shape))).encode(), digest_size=16)
    h.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return h.hexdigest()


#: What a smoother draws a stream for; v2 keys each with its own name, so no two share samples.
PURPOSES = ("certify", "decide", "predict")


def certificate_key(generator: torch.Generator | int | None, purpose: str, x: torch.Tensor,
                    version: str = NOISE_STREAM) -> NoiseKey:
    """The key of the stream that ``purpose`` (:data:`PURPOSES`) draws for input ``x``.

    v2: ``(seed, purpose, image_digest(x))``: an int ``generator`` gives every input its own stream (two
    inputs share one only if their 128-bit digests collide), reproducible from the seed and the input, and
    CERTIFY, the anytime-valid decision and PREDICT never read the same stream. v1 (only to resume a run
    recorded with it): ``(seed, "predict")`` for PREDICT, ``(seed, "certify")`` otherwise.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    seed = seed_from(generator)
    if check_noise_stream(version) == "v1":
        return (seed, "predict" if purpose == "predict" else "certify")
    return (seed, purpose, image_digest(x))


def _key_bytes(key: NoiseKey, nbytes: int) -> bytes:
    """The first ``nbytes`` of SHAKE-256 of the key (see the module docstring)."""
    return hashlib.shake_256(repr(("lsrs.noise", key)).encode()).digest(nbytes)


def _cpu_seed(key: NoiseKey) -> tuple[np.ndarray, int]:
    """(624-word mt19937 state, 64-bit seed) of ``key``'s stream from one SHAKE-256 output."""
    digest = bytearray(_key_bytes(key, 4 * MT_WORDS))
    seed64 = int.from_bytes(digest[:8], "little")
    digest[3] |= 0x80  # top bit of little-endian word 0
    return np.frombuffer(digest, dtype="<u4"), seed64


# ---------------------------------------------------------------- counter-based blocks (Philox4x64-10)
#: The last word of a Philox counter separates what the words are drawn for: the mt19937 states of the
#: Gaussian blocks of stream version v2 (:func:`mt19937_block_states`) and uniform integers
#: (:func:`block_uniform_bits`).
DOMAINS: dict[str, int] = {"mt19937": 0, "uniform": 1}
#: Philox counter steps (four 64-bit words each) per block's mt19937 state: 624 32-bit words.
STATE_STEPS = MT_WORDS // 8


def philox_key(key: NoiseKey) -> np.ndarray:
    """The 128-bit Philox key of ``key``'s stream: two little-endian uint64 words of SHAKE-256 (FIPS 202) of
    ``repr(("lsrs.noise.philox", key))``."""
    digest = hashlib.shake_256(repr(("lsrs.noise.philox", key)).encode()).digest(16)
    return np.frombuffer(digest, dtype="<u8").astype(np.uint64)


def block_bit_generator(key: NoiseKey | np.ndarray, block: int) -> np.random.Philox:
    """numpy's Philox4x64-10 positioned at the first uniform output of block ``block`` of ``key``'s stream.

    Output ``4 (i - 1) + j`` (``i >= 1``, ``j < 4``) of the block is word ``j`` of
    ``Philox_k((i, block, 0, DOMAINS["uniform"]))`` with ``k = philox_key(key)`` (numpy increments the counter
    before each group of four outputs). A block never reaches ``i = 2**64``, so distinct blocks read disjoint
    counters, and none of the Gaussian blocks' (last word ``DOMAINS["mt19937"]``); ``key`` may also be a
    precomputed :func:`philox_key`.
    """
    if isinstance(block, bool) or not 0 <= int(block) < 2**64:
        raise ValueError(f"block must be an integer in [0, 2**64), got {block!r}")
    k = key if isinstance(key, np.ndarray) else philox_key(key)
    counter = np.array([0, int(block), 0, DOMAINS["uniform"]], dtype=np.uint64)
    return np.random.Philox(key=k, counter=counter)


def block_uniform_bits(key: NoiseKey | np.ndarray, block: int, shape: int | Sequence[int]) -> np.ndarray:
    """Uniform 64-bit integers (``uint64`` of ``shape``, C order) of block ``block`` of ``key``'s stream.

    Independent of the stream's normals (:func:`block_bit_generator`: other counters of the same key) and of
    every other block; the same ``(key, block, shape)`` always gives the same array,
    and a larger ``shape`` extends a smaller one (the words are the block's first ``prod(shape)`` outputs).
    """
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    count = int(np.prod(shape, dtype=np.int64))
    return block_bit_generator(key, block).random_raw(count).reshape(shape)


def draw_uniform_blocks(key: NoiseKey | np.ndarray, first: int, count: int, shape: Sequence[int]) -> list[np.ndarray]:
    """:func:`block_uniform_bits` of blocks ``first .. first + count - 1`` (each of ``shape``), drawn side by side
    on up to ``torch.get_num_threads()`` threads (numpy's bit generators release the GIL). Each block's words
    depend only on ``(key, block, shape)``, not on the threads."""
    k = key if isinstance(key, np.ndarray) else philox_key(key)
    blocks = range(first, first + count)
    if min(torch.get_num_threads(), count) <= 1:
        return [block_uniform_bits(k, b, shape) for b in blocks]
    return list(_noise_pool().map(lambda b: block_uniform_bits(k, b, shape), blocks))


def stream_uniform_bits(
    key: NoiseKey | np.ndarray, start: int, count: int, sample_shape: Sequence[int], block: int = DEFAULT_BLOCK
) -> np.ndarray:
    """Samples ``start .. start + count - 1`` of ``key``'s stream of uniform uint64 samples of ``sample_shape``.

    Sample ``j`` is sample ``j % block`` of :func:`block_uniform_bits` block ``j // block`` (``block`` samples
    per block), so it does not depend on how the stream is cut into calls (batch-size independence).
    """
    sample_shape = tuple(sample_shape)
    k = key if isinstance(key, np.ndarray) else philox_key(key)
    out = np.empty((count, *sample_shape), dtype=np.uint64)
    done = 0
    while done < count:
        b, offset = divmod(start + done, block)
        take = min(block - offset, count - done)
        out[done : done + take] = block_uniform_bits(k, b, (offset + take, *sample_shape))[offset:]
        done += take
    return out


def mt19937_block_states(key: NoiseKey | np.ndarray, first: int, count: int) -> np.ndarray:
    """The mt19937 states (``(count, 624)`` uint32, top bit of word 0 set) of blocks ``first .. first + count - 1``
    of ``key``'s v2 Gaussian stream.

    Block ``b``'s 624 words are the 312 outputs of ``Philox_k((78 b + i, 0, 0, DOMAINS["mt19937"]))``,
    ``i = 1 .. 78``, in order, each 64-bit output split into its low then its high 32 bits; consecutive blocks
    read consecutive counters, so one Philox call yields the states of a whole range of blocks.
    """
    if isinstance(first, bool) or int(first) < 0 or int(first) + count > 2**64 // STATE_STEPS:
        raise ValueError(f"block must be an integer in [0, 2**64 / {STATE_STEPS}), got {first!r}")
    k = key if isinstance(key, np.ndarray) else philox_key(key)
    counter = np.array([STATE_STEPS * int(first), 0, 0, DOMAINS["mt19937"]], dtype=np.uint64)
    raw = np.random.Philox(key=k, counter=counter).random_raw(STATE_STEPS * 4 * count)
    words = raw.astype("<u8").view("<u4").reshape(count, MT_WORDS).astype(np.uint32)
    words[:, 0] |= np.uint32(0x80000000)  # never the all-zero state (as init_by_array does)
    return words


def block_generator(key: NoiseKey | np.ndarray, block: int) -> torch.Generator:
    """The torch CPU generator of block ``block`` of ``key``'s v2 Gaussian stream (its state loaded from
    :func:`mt19937_block_states`): the block is ``normal_(0, std)`` of one (block size, *shape) tensor from it."""
    return _loaded(_cpu_state_template(), mt19937_block_states(key, block, 1)[0], 0)


_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _noise_pool() -> ThreadPoolExecutor:
    """Threads that draw blocks side by side (ATen releases the GIL in ``normal_``); rebuilt after a fork."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="lsrs-noise"))
    return _POOL[1]


def draw_blocks(key: NoiseKey | np.ndarray, first: int, outs: Sequence[torch.Tensor], std: float = 1.0) -> None:
    """Fill CPU tensors ``outs[j]`` (each a whole block, all the same shape) with block ``first + j`` of ``key``'s
    v2 stream: ``normal_(0, std)`` from a torch CPU generator loaded with :func:`mt19937_block_states`.

    The blocks are spread over up to ``torch.get_num_threads()`` threads; each block's values depend only on
    its state and its shape, so not on the number of threads or on which thread drew it.
    """
    if not outs:
        return
    states = mt19937_block_states(key, first, len(outs))
    template = _cpu_state_template()
    inference = torch.is_inference_mode_enabled()  # thread-local: the worker threads take the caller's mode

    def draw(j: int) -> None:
        with torch.inference_mode(inference):
            outs[j].normal_(0.0, std, generator=_loaded(template, states[j], 0))

    workers = min(torch.get_num_threads(), len(outs))
    if workers <= 1:
        for j in range(len(outs)):
            draw(j)
        return

    def draw_every(start: int) -> None:  # blocks start, start + workers, ...: the same size, so balanced
        for j in range(start, len(outs), workers):
            draw(j)

    futures = [_noise_pool().submit(draw_every, w) for w in range(1, workers)]
    draw_every(0)
    for future in futures:
        future.result()


def fill_ahead_bytes(device: torch.device) -> int:
    """How much noise one fill may draw ahead (:func:`fill_sizes`): :data:`FILL_AHEAD_BYTES` on a CPU with more
    than one torch thread, where a fill's fixed costs are the threads' start-up and contention; otherwise 0 (one
    batch per fill): one thread draws without either and keeps each batch's noise in cache, and a GPU draws
    asynchronously."""
    return FILL_AHEAD_BYTES if device.type == "cpu" and torch.get_num_threads() > 1 else 0


def fill_sizes(num: int, batch_size: int, sample_bytes: int, stops: Sequence[int] = (),
               ahead_bytes: int = FILL_AHEAD_BYTES) -> list[int]:
    """How many samples each fill of a sampling loop draws: ``num`` samples cut at ``stops`` and then into runs
    of whole batches of at most ``ahead_bytes`` (at least one batch each).

    The loop classifies each run in batches of ``batch_size`` from its start, so the batch cuts are the ones a
    loop drawing batch by batch makes, and no fill crosses a stop (at a stop the stream has been drawn exactly as
    far as the samples used). Drawing several batches in one fill pays a fill's fixed costs once per run instead of
    once per batch: the thread start-up of :func:`draw_blocks` and, after a forward pass, its threads competing with
    the forward's worker threads while those spin before sleeping. The stream's values do not depend on the cuts.
    """
    per = batch_size * max(1, ahead_bytes // max(1, batch_size * sample_bytes))
    bounds = [0, *sorted(s for s in set(stops) if 0 < s < num), num]
    return [min(per, hi - start) for lo, hi in zip(bounds, bounds[1:]) for start in range(lo, hi, per)]


class Scratch:
    """One reusable drawing buffer per thread, for a sampling loop that runs many times (one per certificate).

    A fresh buffer of tens of MiB per certificate is mapped and zeroed by the kernel page by page each time;
    a reused one is not. :meth:`get` returns the first ``batch`` samples of this thread's buffer, made anew
    only when it is too small or of another shape, dtype or device. Copies and pickles start empty.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, batch: int, make: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """``batch`` samples of this thread's buffer; ``make(k)`` builds a buffer of ``k`` samples."""
        want = make(0)
        have: torch.Tensor | None = getattr(self._local, "buffer", None)
        if (have is None or have.shape[0] < batch or have.shape[1:] != want.shape[1:] or have.dtype != want.dtype
                or have.device != want.device):
            have = self._local.buffer = make(batch)
        return have[:batch]

    def __reduce__(self) -> tuple:
        return (Scratch, ())

    def __deepcopy__(self, memo: dict) -> Scratch:
        return Scratch()


def mt19937_words(key: NoiseKey) -> np.ndarray:
    """The 624-word mt19937 state of ``key``'s CPU stream (uint32; top bit of word 0 set)."""
    return _cpu_seed(key)[0].copy()


def device_seed(key: NoiseKey) -> int:
    """The 64-bit ``manual_seed`` (Philox key on CUDA) of ``key``'s stream on a non-CPU device."""
    return int.from_bytes(_key_bytes(key, 8), "little")


def _layout_error(what: str) -> RuntimeError:
    return RuntimeError(
        f"torch {torch.__version__}: the CPU generator state layout changed ({what}); lsrs.noise writes "
        "mt19937 states in the layout of CPUGeneratorImplState and must be updated for this torch version"
    )


@functools.cache
def _cpu_state_template() -> bytes:
    """A freshly seeded CPU generator's state bytes, after checking the layout that :func:`_pack` writes.

    The probe: ``manual_seed(s)`` must give header ``(s, left=1, seeded=1, next=0)`` and the 624 words of
    mt19937's ``init_genrand(s)`` (numpy's ``RandomState(s)``) as uint64 at byte 24; then a state packed by
    :func:`_pack` must yield exactly numpy's ``MT19937`` raw outputs from the same words.
    """
    raw = torch.Generator().manual_seed(_LAYOUT_PROBE_SEED).get_state().numpy().tobytes()
    if len(raw) != _STATE_BYTES:
        raise _layout_error(f"{len(raw)} bytes instead of {_STATE_BYTES}")
    if _HEADER.unpack_from(raw) != (_LAYOUT_PROBE_SEED, 1, 1, 0):
        raise _layout_error(f"header {_HEADER.unpack_from(raw)}")
    words = np.frombuffer(raw, dtype="<u8", count=MT_WORDS, offset=_HEADER.size)
    if not np.array_equal(words, np.random.RandomState(_LAYOUT_PROBE_SEED).get_state()[1]):
        raise _layout_error("state words are not at byte 24")
    probe = mt19937_words(("layout-probe",))
    got = torch.empty(4, dtype=torch.int64).random_(-(2**63), None, generator=_loaded(raw, probe, 0))
    if not np.array_equal(raw_words(got), mt19937_raw(probe, 8)):
        raise _layout_error("a loaded state does not reproduce numpy's MT19937")
    return raw


def _pack(template: bytes, words: np.ndarray, initial_seed: int) -> torch.Tensor:
    """``template`` with a freshly seeded mt19937 state ``words`` (next output: twist, then word 0)."""
    buf = bytearray(template)
    _HEADER.pack_into(buf, 0, initial_seed, 1, 1, 0)
    buf[_HEADER.size : _HEADER.size + 8 * MT_WORDS] = words.astype("<u8").tobytes()
    return torch.frombuffer(buf, dtype=torch.uint8)


def _loaded(template: bytes, words: np.ndarray, initial_seed: int) -> torch.Generator:
    gen = torch.Generator()
    gen.set_state(_pack(template, words, initial_seed))
    return gen


def raw_words(values: torch.Tensor) -> np.ndarray:
    """The 32-bit mt19937 outputs behind int64 ``random_(-2**63, None)`` draws (each is ``hi << 32 | lo``)."""
    u = values.numpy().view(np.uint64)
    return np.stack([u >> np.uint64(32), u & np.uint64(0xFFFFFFFF)], axis=1).ravel()


def mt19937_raw(words: np.ndarray, count: int) -> np.ndarray:
    """numpy's reference: the first ``count`` outputs of ``MT19937`` from the freshly seeded state ``words``."""
    bg = np.random.MT19937()
    bg.state = {"bit_generator": "MT19937", "state": {"key": words.astype(np.uint32), "pos": MT_WORDS}}
    return bg.random_raw(count)


def stream_generator(key: NoiseKey, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of ``key``'s stream on ``device``, seeded once (full mt19937 state on CPU)."""
    device = torch.device(device)
    if device.type == "cpu":
        return _loaded(_cpu_state_template(), *_cpu_seed(key))
    return torch.Generator(device=device).manual_seed(device_seed(key))


def _storage_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Per-sample shape in drawing order: (H, W, C) for (C, H, W), unchanged otherwise."""
    shape = tuple(shape)
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else shape


def as_nchw(buffer: torch.Tensor) -> torch.Tensor:
    """View a (B, H, W, C) drawing buffer as (B, C, H, W) (channels_last memory); other ranks unchanged."""
    return buffer.permute(0, 3, 1, 2) if buffer.dim() == 4 else buffer


class BlockStream:
    """The block discipline of the noise streams (:class:`NoiseStream`, :class:`lsrs.lattice.LatticeNoiseStream`):
    samples of ``storage_shape`` drawn in whole blocks of ``block`` samples by the subclass's ``_draw_blocks``.

    A batch that ends inside a block keeps the rest of that block for the next (sample ``j`` is element
    ``j % block`` of block ``j // block``, whatever the cuts); :meth:`finish_block` drops the rest.
    """

    def __init__(self, sample_shape: Sequence[int], device: torch.device | str, dtype: torch.dtype,
                 block: int) -> None:
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.storage_shape = _storage_shape(sample_shape)
        self.device = torch.device(device)
        self.dtype = dtype
        self.block = block
        self.blocks_drawn = 0
        self._pending: torch.Tensor | None = None
        self._spare: torch.Tensor | None = None  # the block a fill ends inside, reused by every fill

    def new_buffer(self, batch: int) -> torch.Tensor:
        """An uninitialised drawing buffer for ``batch`` samples (fill it with :meth:`fill`)."""
        return torch.empty((batch, *self.storage_shape), device=self.device, dtype=self.dtype)

    def finish_block(self) -> None:
        """Drop the unused rest of the current block: the next sample is the first of a new block."""
        self._pending = None

    def _draw_blocks(self, outs: list[torch.Tensor]) -> None:
        """Draw the next ``len(outs)`` blocks into ``outs`` (each a whole block), in order."""
        raise NotImplementedError

    def fill(self, out: torch.Tensor) -> torch.Tensor:
        """Fill ``out`` (a contiguous (b, *storage_shape) tensor) with the next b samples; return its NCHW view."""
        b = out.shape[0]
        done = 0
        if self._pending is not None:
            take = min(b, self._pending.shape[0])
            out[:take].copy_(self._pending[:take])
            self._pending = self._pending[take:] if take < self._pending.shape[0] else None
            done = take
        whole = (b - done) // self.block
        outs = [out[done + j * self.block : done + (j + 1) * self.block] for j in range(whole)]
        done += whole * self.block
        spare = None
        if done < b:  # the pending rest (if any) was copied out above: its block can be drawn over
            spare = self._spare = self.new_buffer(self.block) if self._spare is None else self._spare
        self._draw_blocks(outs + ([spare] if spare is not None else []))
        if spare is not None:
            need = b - done
            out[done:].copy_(spare[:need])
            self._pending = spare[need:]
        return as_nchw(out)


class NoiseStream(BlockStream):
    """An endless stream of i.i.d. N(0, std^2) samples of shape ``sample_shape`` (see the module docstring).

    ``seed`` is the stream's key: an int, or a tuple of ints and strings. ``std`` is applied inside the draw
    (``normal_(0, std)``), so the engine adds the stream to the latent in one pass instead of scaling it first.
    ``version`` (:data:`NOISE_STREAMS`): ``"v3"`` and ``"v2"`` (the same Gaussian samples) draw every CPU block
    from its own counter-addressed state, on all torch threads; ``"v1"`` (one generator per stream) only resumes
    runs recorded with it.
    """

    def __init__(
        self,
        sample_shape: Sequence[int],
        seed: NoiseKey,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        block: int = DEFAULT_BLOCK,
        std: float = 1.0,
        version: str = NOISE_STREAM,
    ) -> None:
        super().__init__(sample_shape, device, dtype, block)
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        check_noise_stream(version)
        self.seed = seed
        self.std = float(std)
        self.version = version
        self._addressed = version in ADDRESSED_STREAMS and self.device.type == "cpu"
        if self._addressed:
            self._key = philox_key(seed)
            _cpu_state_template()  # check torch's state layout before the first draw
        else:
            self._gen = stream_generator(seed, self.device)

    def _draw_blocks(self, outs: list[torch.Tensor]) -> None:
        """Draw the next ``len(outs)`` blocks into ``outs``, in order."""
        if self._addressed:
            draw_blocks(self._key, self.blocks_drawn, outs, self.std)
        else:
            for out in outs:
                out.normal_(0.0, self.std, generator=self._gen)
        self.blocks_drawn += len(outs)
