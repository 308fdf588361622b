"""A stored run resumes with the noise stream it was certified with (lsrs.noise versions, bench run)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import pytest
from tiny_checkpoints import write_tiny_checkpoints

from bench import store
from bench.run.runner import RunConfig, RunOptions, hash_config, run_grid
from lsrs.data import load_dataset
from lsrs.noise import NOISE_STREAM

FORS = (9,)
SIGMAS = (0.25,)
KEY = ["method", "fors", "sigma", "idx"]
COUNTS = ["counts_selection", "counts_estimation"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    return write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"), FORS, SIGMAS)


def _config(checkpoints: Path, **kw: object) -> RunConfig:
    return RunConfig(dataset="digits", fors=FORS, sigmas=SIGMAS, n0=16, n=64, skip=11, max_images=4,
                     checkpoints=str(checkpoints), **kw)


def _rows(out: Path) -> pd.DataFrame:
    frame = pd.read_parquet(out).sort_values(KEY).reset_index(drop=True)
    return frame[KEY + COUNTS + ["radius", "prediction"]].assign(**{c: frame[c].map(list) for c in COUNTS})


def _test_set():
    return load_dataset("digits", "test")


def test_a_run_recorded_before_stream_v2_resumes_with_v1(checkpoints: Path, tmp_path: Path) -> None:
    """A run interrupted under stream v1 with a manifest from before versions existed (no ``noise_stream``)
    resumes with v1 when run again with today's defaults: its rows equal an uninterrupted v1 run's, and its
    hash stays the stored one. A new run draws v2, and its counts differ."""
    v1 = _config(checkpoints, noise_stream="v1")
    whole = tmp_path / "whole"
    run_grid(v1, RunOptions(out=whole, quiet=True), _test_set)
    old = tmp_path / "old"
    run_grid(v1, RunOptions(out=old, quiet=True, stop_after=5), _test_set)  # interrupted
    manifest = json.loads((old / store.MANIFEST).read_text())
    del manifest["config"]["noise_stream"]  # as written before stream versions existed
    assert hash_config(manifest["config"]) == manifest["config_hash"] == v1.config_hash()
    store.write_json(old / store.MANIFEST, manifest)
    resumed_config = _config(checkpoints)
    assert resumed_config.noise_stream == NOISE_STREAM == "v3" and resumed_config.config_hash() != v1.config_hash()
    run_grid(resumed_config, RunOptions(out=old, quiet=True), _test_set)
    pd.testing.assert_frame_equal(_rows(old), _rows(whole))
    assert json.loads((old / store.MANIFEST).read_text())["config_hash"] == v1.config_hash()
    fresh = tmp_path / "fresh"
    run_grid(resumed_config, RunOptions(out=fresh, quiet=True), _test_set)
    manifest = json.loads((fresh / store.MANIFEST).read_text())
    assert manifest["config"]["noise_stream"] == "v3" and manifest["config_hash"] == resumed_config.config_hash()
    assert _rows(fresh)[COUNTS].values.tolist() != _rows(whole)[COUNTS].values.tolist()


def test_stream_enters_the_hash_only_from_v2() -> None:
    base = RunConfig(dataset="digits", fors=(1,), sigmas=(0.25,))
    v1 = replace(base, noise_stream="v1")
    without = {k: v for k, v in asdict(v1).items() if k != "noise_stream"}
    assert hash_config(without) == v1.config_hash() != base.config_hash()
