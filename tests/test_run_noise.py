"""`bench run --noise gaussian|lattice`: the column, the manifest, the config hash, old runs, digits rounding."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from tiny_checkpoints import write_tiny_checkpoints

from bench import store
from bench.cli.main import cli
from bench.run.runner import RunConfig, hash_config
from lsrs.data import load_dataset
from lsrs.lattice import on_input_lattice

FORS = (1,)
SIGMAS = (0.25,)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    return write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"), FORS, SIGMAS)


def _args(checkpoints: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--dataset", "digits", "--fors", "1", "--sigmas", "0.25", "--n0", "16", "--n", "64",
            "--max-images", "2", "--checkpoints", str(checkpoints), "--out", str(out), "-q", *extra]


def test_gaussian_keeps_the_stored_hash_and_lattice_changes_it() -> None:
    config = RunConfig(dataset="digits", fors=(1,), sigmas=(0.25,))
    stored = {k: v for k, v in asdict(config).items() if k != "noise"}  # a manifest written before the option
    assert config.config_hash() == hash_config(stored)
    assert RunConfig(dataset="digits", fors=(1,), sigmas=(0.25,), noise="lattice").config_hash() != config.config_hash()


def test_lattice_run_records_noise_in_rows_and_manifest(checkpoints: Path, tmp_path: Path) -> None:
    out = tmp_path / "lattice"
    result = CliRunner().invoke(cli, _args(checkpoints, out, "--noise", "lattice"))
    assert result.exit_code == 0, result.output
    rows = store.read_rows(out)
    assert (rows["noise"] == "lattice").all()
    ls = rows[rows["method"] == "ls"]
    assert (ls["quantization"] > 0).all() and (rows.loc[rows["method"] == "is", "quantization"] == 0).all()
    manifest = json.loads((out / store.MANIFEST).read_text())
    assert manifest["config"]["noise"] == "lattice"
    gauss = tmp_path / "gauss"
    assert CliRunner().invoke(cli, _args(checkpoints, gauss)).exit_code == 0
    assert (store.read_rows(gauss)["noise"] == "gaussian").all()


def test_parts_without_the_column_read_as_gaussian(checkpoints: Path, tmp_path: Path) -> None:
    out = tmp_path / "old"
    assert CliRunner().invoke(cli, _args(checkpoints, out)).exit_code == 0
    for part in store.part_files(out):  # as written before the column existed
        pd.read_parquet(part).drop(columns=["noise", "quantization"]).to_parquet(part)
    assert (store.read_rows(out)["noise"] == "gaussian").all()


def test_bad_noise_is_a_usage_error(checkpoints: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, _args(checkpoints, tmp_path / "x", "--noise", "uniform"))
    assert result.exit_code == 2 and "--noise" in result.output


def test_digits_images_are_off_the_lattice_and_rounded_once() -> None:
    """The record says so: digits' upsampled images are not 8-bit images; the harness rounds them once."""
    from bench.certifiers.smoothed import lattice_input

    x, _ = load_dataset("digits", "test")[0]
    assert on_input_lattice(x) is None
    config = RunConfig(dataset="digits", fors=(1,), sigmas=(0.25,), noise="lattice")
    rounded = lattice_input(config, x)
    assert on_input_lattice(rounded) is not None and float((rounded - x).abs().max()) <= 0.5 / 255 + 1e-7
    assert torch.equal(lattice_input(RunConfig(dataset="digits", fors=(1,), sigmas=(0.25,)), x), x)
