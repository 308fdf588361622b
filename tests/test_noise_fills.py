"""How the sampling loop draws its noise: runs of whole batches per fill (lsrs.noise.fill_sizes), a reused buffer
(lsrs.noise.Scratch), and certificates that do not depend on either."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lsrs.smoothing
from lsrs.noise import Scratch, fill_sizes


def _batch_cuts(num: int, batch_size: int, stops: list[int]) -> list[int]:
    """The oracle: the batches of a loop that draws batch by batch and also ends a batch at each stop."""
    cuts, drawn, pending = [], 0, sorted(s for s in set(stops) if 0 < s < num)
    while drawn < num:
        pending = [s for s in pending if s > drawn]
        b = min(batch_size, num - drawn, *(s - drawn for s in pending[:1]))
        cuts.append(b)
        drawn += b
    return cuts


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(num=st.integers(1, 3000), batch=st.integers(1, 400), sample_bytes=st.integers(1, 50_000),
       ahead=st.sampled_from([0, 1, 2**16, 2**20, 64 * 2**20]), stops=st.lists(st.integers(-5, 3100), max_size=6))
def test_fills_are_runs_of_the_batch_by_batch_cuts(num: int, batch: int, sample_bytes: int, ahead: int,
                                                   stops: list[int]) -> None:
    sizes = fill_sizes(num, batch, sample_bytes, stops, ahead)
    assert sum(sizes) == num and min(sizes) > 0
    cuts = [min(batch, size - start) for size in sizes for start in range(0, size, batch)]
    assert cuts == _batch_cuts(num, batch, stops)
    ends = {sum(sizes[: i + 1]) for i in range(len(sizes))}
    assert {s for s in stops if 0 < s < num} <= ends  # no fill crosses a stop
    assert max(sizes) <= max(batch, batch * (ahead // (batch * sample_bytes)))  # within the budget, or one batch


def test_scratch_reuses_its_buffer_until_it_no_longer_fits() -> None:
    scratch = Scratch()
    make = lambda k: torch.empty((k, 3, 2))  # noqa: E731
    a = scratch.get(10, make)
    b = scratch.get(4, make)
    assert a.shape == (10, 3, 2) and b.shape == (4, 3, 2) and b.data_ptr() == a.data_ptr()
    c = scratch.get(11, make)
    assert c.shape == (11, 3, 2) and c.untyped_storage().data_ptr() != a.untyped_storage().data_ptr()
    d = scratch.get(5, lambda k: torch.empty((k, 2, 3)))
    assert d.shape == (5, 2, 3)
    e = scratch.get(5, lambda k: torch.empty((k, 2, 3), dtype=torch.float64))
    assert e.dtype == torch.float64
    for fresh in (copy.deepcopy(scratch), pickle.loads(pickle.dumps(scratch))):
        assert getattr(fresh._local, "buffer", None) is None


@pytest.mark.parametrize("noise", ["gaussian", "lattice"])
def test_certificates_do_not_depend_on_how_much_noise_a_fill_draws(noise: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """CERTIFY and the anytime-valid decision give the same counts whether each fill draws one batch, a few, or
    the whole of n (the fills only regroup the same stream), and the reused buffer carries nothing over."""
    from lsrs.models import resnet18
    from lsrs.smoothing import LatentSmooth

    torch.manual_seed(5)
    model = resnet18(10, 9, width=8, in_size=16, in_channels=3).eval()
    smoother = LatentSmooth(model.encoder, model.classifier, 10, 0.5, model.encoder_lipschitz, noise=noise)
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(6))
    seen, decided = set(), set()
    for ahead in (0, 3 * 50 * 8 * 8 * 8 * 4, 2**30, 0):  # one batch; three; all of n; one again (reused buffer)
        monkeypatch.setattr(lsrs.smoothing, "fill_ahead_bytes", lambda _device, ahead=ahead: ahead)
        c = smoother.certify(x, 60, 470, 0.001, 50, generator=9)
        seen.add((c.counts_selection, c.counts_estimation, c.prediction, c.radius))
        d = smoother.decide(x, 0.05, 0.001, 800, 50, generator=9)
        decided.add((d.certified, d.prediction, d.samples_used, d.p_a_lower, d.p_a_upper))
    assert len(seen) == 1 and len(decided) == 1
    assert sum(v > 0 for v in next(iter(seen))[1]) >= 2, "a constant classifier would make the comparison vacuous"


def test_the_memory_format_follows_the_feature_map_size_on_cpu() -> None:
    from lsrs.inference import CHANNELS_LAST_MIN_AREA, prefers_channels_last

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert prefers_channels_last((200, 3, 32, 32), cpu) and prefers_channels_last((200, 128, 16, 16), cpu)
    assert not prefers_channels_last((200, 256, 8, 8), cpu) and not prefers_channels_last((200, 512, 4, 4), cpu)
    assert CHANNELS_LAST_MIN_AREA == 16 * 16
    assert prefers_channels_last((200, 256, 8, 8), gpu) and not prefers_channels_last((200, 10), cpu)


@pytest.mark.parametrize(("fors", "nchw"), [(0, False), (13, True)])
def test_by_default_small_maps_run_in_nchw_with_the_counts_of_either_format(fors: int, nchw: bool) -> None:
    """channels_last=None: a deep split's 4 x 4 maps (width 8, input 16) reach the classifier in NCHW memory, an
    input image in channels_last; the counts equal those of the format fixed either way (the same function)."""
    from lsrs.models import resnet18
    from lsrs.smoothing import LatentSmooth

    torch.manual_seed(2)
    model = resnet18(10, fors, width=8, in_size=16, in_channels=3).eval()
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(8))
    results, layouts = {}, []
    for channels_last in (None, True, False):
        sm = LatentSmooth(model.encoder, model.classifier, 10, 0.5, model.encoder_lipschitz,
                          channels_last=channels_last)
        c = sm.certify(x, 50, 300, 0.001, 64, generator=3)
        if channels_last is None:
            seen = sm._nchw() if nchw else sm.classifier
            seen.register_forward_pre_hook(lambda _m, args: layouts.append(args[0].is_contiguous()))
            c = sm.certify(x, 50, 300, 0.001, 64, generator=3)
        results[channels_last] = (c.counts_selection, c.counts_estimation)
    assert layouts and all(layout == nchw for layout in layouts)
    assert results[None] == results[True] == results[False]
    assert sum(v > 0 for v in results[None][1]) >= 2, "a constant classifier would make the comparison vacuous"


def test_runs_of_batches_only_where_several_threads_draw() -> None:
    from lsrs.noise import FILL_AHEAD_BYTES, fill_ahead_bytes

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert fill_ahead_bytes(torch.device("cpu")) == FILL_AHEAD_BYTES > 0
        assert fill_ahead_bytes(torch.device("cuda")) == 0
        torch.set_num_threads(1)
        assert fill_ahead_bytes(torch.device("cpu")) == 0
    finally:
        torch.set_num_threads(before)
