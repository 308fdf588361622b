"""Extending a stored run to more test images (``bench run --skip 2`` then ``--skip 1`` on the same --out):
only the new images are certified, and the extended run holds the rows a fresh run of the larger selection
would (noise is keyed by image, not by its position in the selection)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from tiny_checkpoints import write_tiny_checkpoints

from bench import store
from bench.cli.main import cli

KEY = ["sigma", "method", "fors", "n", "idx"]
RESULT = KEY + ["label", "prediction", "radius", "counts_selection", "counts_estimation", "seed", "checkpoint_sha256"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    return write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"), (1,), (0.25,))


def _args(checkpoints: Path, out: Path, *selection: str) -> list[str]:
    return ["run", "--dataset", "digits", "--fors", "1", "--sigmas", "0.25", "--n0", "16", "--n", "48",
            *selection, "--checkpoints", str(checkpoints), "--out", str(out), "-q"]


def _rows(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out).sort_values(KEY).reset_index(drop=True)


def test_a_larger_selection_certifies_only_the_new_images(checkpoints: Path, tmp_path: Path) -> None:
    out, runner = tmp_path / "run", CliRunner()
    first = runner.invoke(cli, _args(checkpoints, out, "--skip", "60", "--max-images", "3"))
    assert first.exit_code == 0, first.output
    stored, parts = _rows(out), set(store.part_files(out))
    old_hash = json.loads((out / store.MANIFEST).read_text())["config_hash"]
    assert sorted(set(stored["idx"])) == [0, 60, 120]

    result = runner.invoke(cli, _args(checkpoints, out, "--skip", "30", "--max-images", "6"))
    assert result.exit_code == 0, result.output
    both = _rows(out)
    assert set(store.part_files(out)) > parts  # stored parts kept, new ones added
    assert sorted(set(both["idx"])) == [0, 30, 60, 90, 120, 150] and not both.duplicated(KEY).any()
    kept = both[both["idx"].isin([0, 60, 120])].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, stored)  # the stored images were not certified again
    manifest = json.loads((out / store.MANIFEST).read_text())
    assert manifest["config"]["skip"] == 30 and manifest["config"]["max_images"] == 6
    assert manifest["extended"][0]["config_hash"] == old_hash and manifest["extended"][0]["skip"] == 60
    assert set(both.loc[~both["idx"].isin([0, 60, 120]), "run"]) == {manifest["config_hash"]}

    fresh = tmp_path / "fresh"
    assert runner.invoke(cli, _args(checkpoints, fresh, "--skip", "30", "--max-images", "6")).exit_code == 0
    pd.testing.assert_frame_equal(both[RESULT], _rows(fresh)[RESULT])  # what a fresh run certifies


def test_a_selection_that_drops_a_stored_image_is_refused(checkpoints: Path, tmp_path: Path) -> None:
    out, runner = tmp_path / "run", CliRunner()
    assert runner.invoke(cli, _args(checkpoints, out, "--skip", "60", "--max-images", "3")).exit_code == 0
    refused = runner.invoke(cli, _args(checkpoints, out, "--skip", "40", "--max-images", "4"))  # 0,40,80,120
    assert refused.exit_code == 2 and "not all among this selection" in refused.output
    assert "Traceback" not in refused.output
    other = runner.invoke(cli, _args(checkpoints, out, "--skip", "30", "--max-images", "6", "--seed", "1"))
    assert other.exit_code == 2 and "different configuration" in other.output
    assert "not all among" not in other.output
