"""``train_grid(processes=2)``: models trained side by side in worker processes equal the one-process ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench.train.grid import train_grid
from lsrs import checkpoint as ckpt

pytestmark = pytest.mark.xdist_group("exclusive")  # worker processes of their own: never beside the speed guards

KW = dict(epochs=1, lr=0.05, batch_size=128, device="cpu", seed=3, width=4, quiet=True, threads=1)


def test_parallel_training_gives_the_sequential_weights_bit_for_bit(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    sequential = train_grid("digits", [0, 1], [0.25], tmp_path / "seq", processes=1, **KW)
    parallel = train_grid("digits", [0, 1], [0.25], tmp_path / "par", processes=2,
                          on_epoch=lambda m, e: seen.append((m["fors"], e)), **KW)
    assert [e["status"] for e in parallel] == ["trained", "trained"]
    assert [(e["fors"], e["sigma"]) for e in parallel] == [(0, 0.25), (1, 0.25)]  # grid order
    assert sorted(seen) == [(0, 0), (1, 0)]  # the workers' epochs reach the caller's callback
    for seq, par in zip(sequential, parallel, strict=True):
        a = load_file(tmp_path / "seq" / "digits" / seq["path"])
        b = load_file(tmp_path / "par" / "digits" / par["path"])
        assert a.keys() == b.keys() and a
        for name in a:
            assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape
            assert a[name].view(-1).view(torch.uint8).equal(b[name].view(-1).view(torch.uint8)), name
        assert (seq["clean_acc"], seq["noisy_acc"]) == (par["clean_acc"], par["noisy_acc"])
    assert len(ckpt.read_index(tmp_path / "par", "digits")) == 2

    # the same call again reuses both checkpoints without starting workers
    again = train_grid("digits", [0, 1], [0.25], tmp_path / "par", processes=2, **KW)
    assert [e["status"] for e in again] == ["reused", "reused"]
