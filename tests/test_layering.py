"""``bench/`` is layered one way (``bench.layering.LAYERS``): the check passes on the tree and catches a back edge."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import bench
from bench.layering import LAYERS, layer, violations

ROOT = Path(bench.__file__).resolve().parent


def test_bench_imports_point_down_the_layers_only() -> None:
    assert violations(ROOT) == []


def test_every_room_of_bench_is_in_a_layer() -> None:
    rooms = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    rooms |= {p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"}
    for name in rooms:
        assert layer(name) in range(len(LAYERS))


@pytest.mark.parametrize(("module", "line", "why"), [
    ("store/__init__.py", "from bench.cli.params import DATASET\n", "bench.cli is not below bench.store"),
    ("certifiers/registry.py", "from bench.run import runner\n", "bench.run is not below bench.certifiers"),
    ("run/runner.py", "from bench.report import writer\n", "bench.report is not below bench.run"),
    ("report/writer.py", "import click\n", "only bench.cli may import it"),
])
def test_a_back_edge_is_caught(tmp_path: Path, module: str, line: str, why: str) -> None:
    copy = tmp_path / "bench"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(target.read_text(encoding="utf-8") + "\n\ndef _late():\n    " + line, encoding="utf-8")
    found = violations(copy)
    assert [v.why for v in found] == [why], found
