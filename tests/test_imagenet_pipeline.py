"""The paper's ImageNet model end to end on a miniature ImageNet folder (issue 24): ``bench train`` builds
WRN-34 (widen 2 by default, here 1 to stay small) at 224x224, ``bench run --fors 16`` takes the architecture
from the checkpoints and writes IS-RS and LS-RS rows, ``bench report`` writes Table 3, and ``bench info``
of the trained twin agrees with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from bench.cli.main import cli


def _image_folder(root: Path, classes: int = 3, train: int = 2, val: int = 1) -> Path:
    """``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``: the standard ImageFolder layout, random pixels."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (60, 70, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")
    return root


def _invoke(*args: str):
    result = CliRunner().invoke(cli, list(args), terminal_width=200)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("imagenet")
    data = _image_folder(tmp / "data")
    ckpt = tmp / "ckpt"
    _invoke("train", "--dataset", "imagenet", "--fors", "0,16", "--sigmas", "0.25", "--epochs", "1", "--width", "1",
            "--batch-size", "3", "--threads", "1", "--data-dir", str(data), "--out", str(ckpt), "-q")
    return data, ckpt


def test_train_builds_wrn34_at_224_with_the_registry_defaults(trained) -> None:
    _, ckpt = trained
    entries = json.loads((ckpt / "imagenet" / "index.json").read_text())["entries"]
    assert sorted(e["fors"] for e in entries) == [0, 16]
    assert {(e["arch"], e["fors_total"], e["width"], e["in_size"]) for e in entries} == {("wide_resnet34", 34, 1, 224)}
    twin = json.loads((ckpt / "imagenet" / next(e["path"] for e in entries if e["fors"] == 16)).with_suffix(".json")
                      .read_text())
    # stride-4 stem, base width 16, widen 1: FoR 16 ends after two blocks of group 2 (32 x 28 x 28)
    assert twin["config"]["stem_stride"] == 4 and twin["latent_shape"] == [32, 28, 28]
    assert twin["arch_source"] == "lsrs.models:wide_resnet34"


def test_run_report_and_info_of_the_imagenet_pair(trained, tmp_path: Path) -> None:
    data, ckpt = trained
    out = tmp_path / "run"
    _invoke("run", "--dataset", "imagenet", "--fors", "16", "--sigmas", "0.25", "--n0", "4", "--n", "16",
            "--batch-size", "16", "--max-images", "2", "--checkpoints", str(ckpt), "--data-dir", str(data),
            "--out", str(out), "-q")
    frame = pd.read_parquet(out)
    assert set(zip(frame["method"], frame["fors"], strict=True)) == {("is", 0), ("ls", 16)}
    assert (frame["arch"] == "wide_resnet34").all() and len(frame) == 4
    assert (frame["n"] == 16).all() and (frame["counts_estimation"].map(sum) == 16).all()

    reports = tmp_path / "report"
    _invoke("report", str(out), "--format", "markdown", "--out", str(reports), "-q")
    table3 = (reports / "table3.md").read_text()
    assert "ImageNet" in table3 and "16/34" in table3 and "0/34" in table3
    assert "main FoR" not in (reports / "index.md").read_text()  # FoR 16 is the paper's main WRN-34 setting

    twin = next(ckpt.glob("imagenet/*fors16*.safetensors"))
    info = json.loads(_invoke("info", "--checkpoint", str(twin), "--no-empirical", "--json").output)
    assert (info["arch"], info["fors"], info["fors_total"]) == ("wide_resnet34", 16, 34)
    assert info["input_shape"] == [3, 224, 224] and info["latent_shape"] == [32, 28, 28]
    assert info["lipschitz"]["sound"] and info["lipschitz"]["executed"] >= 1.0
    assert info["flops"]["ideal_speedup"] > 1.0


def test_run_refuses_a_for_the_checkpoints_architecture_lacks(trained, tmp_path: Path) -> None:
    data, ckpt = trained
    result = CliRunner().invoke(cli, ["run", "--dataset", "imagenet", "--fors", "13", "--checkpoints", str(ckpt),
                                      "--data-dir", str(data), "--out", str(tmp_path / "r"), "-q"])
    assert result.exit_code == 2 and "invalid for wide_resnet34" in result.output and "16" in result.output
    result = CliRunner().invoke(cli, ["run", "--dataset", "imagenet", "--methods", "is,lip", "--fors", "16",
                                      "--checkpoints", str(ckpt), "--data-dir", str(data), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "wide_resnet34 has none" in result.output
