"""A user's own architecture and dataset through a plugin (issue 24): a tiny package declaring the
``lsrs.architectures`` and ``lsrs.datasets`` entry points is pip-installed into the test environment, then
trained, certified and reported through the CLI by name; a plugin that fails to load is an error naming it."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from bench.cli.main import cli
from lsrs import architectures, datasets

PLUGIN = '''
from torch import nn

from lsrs.architectures import register_architecture
from lsrs.layers import CayleyConv2d, MaxMin, MeanShift
from lsrs.models import Split


@register_architecture("{name}", fors=(0, 1), fors_total=2, paper_fors=1, defaults={{"*": {{"width": 4}}}})
def build(num_classes=10, fors=0, in_size=16, in_channels=1, mean=None, width=4):
    """A conv layer then a linear head (2 layers); FoR 1: the conv is orthogonal (Cayley) + MaxMin."""
    config = dict(num_classes=num_classes, fors=fors, in_size=in_size, in_channels=in_channels, mean=mean,
                  width=width)
    shift = [MeanShift(mean)] if mean is not None else []
    head = nn.Sequential(nn.Flatten(), nn.Linear(width * in_size * in_size, num_classes))
    if fors == 0:
        net = nn.Sequential(*shift, nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), head)
        return Split(nn.Identity(), net, arch="{name}", fors=0, fors_total=2, encoder_lipschitz=1.0,
                     latent_shape=(in_channels, in_size, in_size), config=config)
    encoder = nn.Sequential(*shift, CayleyConv2d(in_channels, width, 3), MaxMin())
    return Split(encoder, head, arch="{name}", fors=1, fors_total=2, encoder_lipschitz=1.0,
                 latent_shape=(width, in_size, in_size), config=config)
'''


DATASET_PLUGIN = '''
import torch

from lsrs.data import TensorImageDataset
from lsrs.datasets import DatasetInfo, register_dataset


def load(split, root, download, augment):
    """10 classes of 8x8 grey images: a fixed random prototype per class plus seeded noise (200 / 50 images)."""
    n = 200 if split == "train" else 50
    prototypes = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1 if split == "train" else 2))
    labels = torch.arange(n) % 10
    return TensorImageDataset((prototypes[labels] + 0.1 * noise).clamp(0, 1), labels)


DATA = register_dataset(DatasetInfo(
    name="{name}_data", title="Tiny synthetic", num_classes=10, in_channels=1, in_size=8, mean=(0.5,), loader=load,
    default_arch="{name}", embedded=True, epochs=1, lr=0.1, lr_step=1, batch_size=50, train_size=200, test_size=50,
))
'''


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True,
                   capture_output=True, text=True)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """Build and install a plugin package (offline: no dependencies, no build isolation); uninstall after."""
    name = f"tinynet_{uuid.uuid4().hex[:8]}"  # the environment may be shared: never clash with another run
    root = tmp_path_factory.mktemp("plugin")
    (root / f"{name}.py").write_text(PLUGIN.format(name=name))
    (root / f"{name}_data.py").write_text(DATASET_PLUGIN.format(name=name))
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name}"
        version = "0.1"

        [tool.setuptools]
        py-modules = ["{name}", "{name}_data"]

        [project.entry-points."lsrs.architectures"]
        {name} = "{name}:build"

        [project.entry-points."lsrs.datasets"]
        {name}_data = "{name}_data:DATA"
    """))
    _pip("install", "--no-deps", "--no-build-isolation", str(root))
    importlib.invalidate_caches()
    try:
        yield name
    finally:
        _pip("uninstall", "-y", name)
        # what the plugin registered in this process goes with it (later tests see the installed registry)
        for registry in (architectures._REGISTRY, datasets.DATASETS):
            for key in [k for k in registry if k.startswith(name)]:
                del registry[key]


def _invoke(*args: str):
    result = CliRunner().invoke(cli, list(args), terminal_width=200)
    assert result.exit_code == 0, result.output
    return result


def test_installed_plugin_trains_certifies_and_reports_by_name(plugin: str, tmp_path: Path) -> None:
    assert plugin in architectures.list_architectures()  # listed from its entry point, not yet imported
    assert plugin not in sys.modules
    ckpt, run, report = tmp_path / "ckpt", tmp_path / "run", tmp_path / "report"
    _invoke("train", "--dataset", "digits", "--arch", plugin, "--fors", "0,1", "--sigmas", "0.25", "--epochs", "1",
            "--threads", "1", "--out", str(ckpt), "-q")
    entries = json.loads((ckpt / "digits" / "index.json").read_text())["entries"]
    assert {(e["arch"], e["fors"], e["fors_total"], e["width"]) for e in entries} == {(plugin, 0, 2, 4), (plugin, 1, 2, 4)}
    assert {e["arch_source"] for e in entries} == {f"{plugin}:build"}

    _invoke("run", "--dataset", "digits", "--fors", "1", "--sigmas", "0.25", "--n0", "8", "--n", "32",
            "--max-images", "3", "--checkpoints", str(ckpt), "--out", str(run), "-q")
    frame = pd.read_parquet(run)
    assert set(zip(frame["method"], frame["fors"], strict=True)) == {("is", 0), ("ls", 1)}
    assert (frame["arch"] == plugin).all() and len(frame) == 6
    ls = frame[(frame["method"] == "ls") & (frame["radius_latent"] > 0)]
    assert (ls["lipschitz"] >= 1.0).all()  # the as-executed bound of the plugin's orthogonal encoder

    _invoke("report", str(run), "--format", "csv", "--out", str(report), "-q")
    summary = pd.read_csv(report / "summary.csv")
    assert set(summary["fors_total"]) == {2} and set(summary["method"]) == {"is", "ls"}

    bad = CliRunner().invoke(cli, ["run", "--dataset", "digits", "--fors", "5", "--checkpoints", str(ckpt),
                                   "--out", str(tmp_path / "r2"), "-q"])
    assert bad.exit_code == 2 and f"invalid for {plugin}; valid: 0,1" in bad.output


def test_installed_dataset_plugin_trains_certifies_and_reports_by_name(plugin: str, tmp_path: Path) -> None:
    """The plugin's dataset is listed from its entry point before it is loaded, accepted by ``--dataset``, and
    its record's defaults (the plugin architecture, 1 epoch, 8x8 inputs, 10 classes) reach the checkpoints."""
    from lsrs import datasets

    dataset = f"{plugin}_data"
    assert dataset in datasets.list_datasets() and dataset not in datasets.DATASETS
    assert dataset in CliRunner().invoke(cli, ["info", "--help"], terminal_width=400).output  # the metavar
    ckpt, run, report = tmp_path / "ckpt", tmp_path / "run", tmp_path / "report"
    _invoke("train", "--dataset", dataset, "--fors", "0,1", "--sigmas", "0.25", "--threads", "1", "--out", str(ckpt),
            "-q")
    entries = json.loads((ckpt / dataset / "index.json").read_text())["entries"]
    assert {(e["arch"], e["dataset"], e["in_size"], e["in_channels"], e["num_classes"], e["epochs"])
            for e in entries} == {(plugin, dataset, 8, 1, 10, 1)}
    assert sorted(e["fors"] for e in entries) == [0, 1]

    _invoke("run", "--dataset", dataset, "--fors", "1", "--sigmas", "0.25", "--n0", "8", "--n", "32",
            "--max-images", "4", "--checkpoints", str(ckpt), "--out", str(run), "-q")
    frame = pd.read_parquet(run)
    assert set(frame["dataset"]) == {dataset} and set(frame["method"]) == {"is", "ls"} and len(frame) == 8
    assert set(frame["idx"]) == {0, 1, 2, 3} and frame["label"].between(0, 9).all()

    _invoke("report", str(run), "--format", "csv", "--out", str(report), "-q")
    summary = pd.read_csv(report / "summary.csv")
    assert set(summary["method"]) == {"is", "ls"} and set(summary["fors_total"]) == {2}
    assert "dataset Tiny synthetic" in (report / "index.md").read_text()  # the record's title


def test_a_plugin_that_fails_to_load_is_named(monkeypatch) -> None:
    broken = importlib.metadata.EntryPoint(name="broken_net", value="no_such_module_x:build",
                                           group=architectures.ENTRY_POINT_GROUP)
    monkeypatch.setattr(architectures, "entry_points_by_name", lambda group: {"broken_net": broken})
    with pytest.raises(architectures.ArchitectureError, match=r"plugin 'broken_net' \(no_such_module_x:build\).*"
                                                               r"failed to load: ModuleNotFoundError"):
        architectures.get_architecture("broken_net")
    result = CliRunner().invoke(cli, ["train", "--arch", "broken_net", "-q", "--out", "unused"])
    assert result.exit_code == 2 and "plugin 'broken_net'" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["train", "--arch", "vgg", "-q", "--out", "unused"])
    assert result.exit_code == 2 and "unknown architecture 'vgg'; known: " in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("Error")]) == 1


def test_module_function_builder_trains_and_its_checkpoint_rebuilds_in_a_fresh_registry(tmp_path, monkeypatch):
    """``--arch module:function`` without any installation; the checkpoint names the builder (``arch_source``),
    so a process that never imported the module rebuilds it."""
    from lsrs.checkpoint import load_checkpoint

    name = f"localnet_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}_mod.py").write_text(PLUGIN.format(name=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    ckpt = tmp_path / "ckpt"
    _invoke("train", "--dataset", "digits", "--arch", f"{name}_mod:build", "--fors", "1", "--sigmas", "0.25",
            "--epochs", "1", "--threads", "1", "--out", str(ckpt), "-q")
    weights = next((ckpt / "digits").glob(f"{name}-w4-fors1-*.safetensors"))
    monkeypatch.delitem(architectures._REGISTRY, name)  # as in a fresh process
    monkeypatch.delitem(sys.modules, f"{name}_mod")
    model, meta = load_checkpoint(weights)
    assert (model.arch, model.fors, meta["arch_source"]) == (name, 1, f"{name}_mod:build")


UNPROVEN = '''
from torch import nn


class Gain(nn.Module):
    """A layer the library has no proof for (it doubles its input: Lipschitz 2, declared 1 below)."""

    def forward(self, x):
        return 2 * x
'''


def test_a_plugin_encoder_without_a_proof_is_refused_unless_trusted(tmp_path, monkeypatch) -> None:
    """The plugin's layers get the per-layer proofs: an encoder layer without one stops ``bench run`` (exit 2, one
    line naming the layer's path and class); ``--trust-lipschitz`` certifies with the declared bound, and every
    row says so."""
    name = f"gainnet_{uuid.uuid4().hex[:8]}"
    source = PLUGIN.format(name=name).replace("CayleyConv2d(in_channels, width, 3), MaxMin()",
                                              "CayleyConv2d(in_channels, width, 3), MaxMin(), Gain()")
    (tmp_path / f"{name}_mod.py").write_text(UNPROVEN + source)
    monkeypatch.syspath_prepend(str(tmp_path))
    ckpt = tmp_path / "ckpt"
    _invoke("train", "--dataset", "digits", "--arch", f"{name}_mod:build", "--fors", "0,1", "--sigmas", "0.25",
            "--epochs", "1", "--threads", "1", "--out", str(ckpt), "-q")
    args = ["run", "--dataset", "digits", "--fors", "1", "--sigmas", "0.25", "--n0", "8", "--n", "32",
            "--max-images", "2", "--checkpoints", str(ckpt), "-q"]
    refused = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "refused")])
    lines = refused.output.strip().splitlines()
    assert refused.exit_code == 2 and len(lines) == 1 and "Traceback" not in refused.output, refused.output
    assert "no proven Lipschitz bound for encoder.3 (Gain)" in lines[0]  # after MeanShift, Cayley, MaxMin and "--trust-lipschitz" in lines[0]
    _invoke(*args, "--out", str(tmp_path / "trusted"), "--trust-lipschitz")
    frame = pd.read_parquet(tmp_path / "trusted")
    ls = frame[frame["method"] == "ls"]
    assert len(ls) == 2 and set(ls["lipschitz_source"]) == {"trusted"}
    assert set(frame.loc[frame["method"] == "is", "lipschitz_source"]) != {"trusted"}
