"""One place per name, no import cycles: read from the source of ``bench`` and ``lsrs`` (``ast``, nothing imported)."""

from __future__ import annotations

import ast
from functools import cache
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "lsrs")


@cache
def _modules() -> dict[str, ast.Module]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            out[name] = ast.parse(path.read_text(encoding="utf-8"))
    return out


def _import_graph(modules: dict[str, ast.Module]) -> dict[str, set[str]]:
    """Module -> the modules it imports anywhere (top level or inside a function)."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _module_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_no_import_cycles() -> None:
    try:
        order = list(TopologicalSorter(_import_graph(_modules())).static_order())
    except CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")
    assert {"bench.report.labels", "bench.report.plots", "bench.report.writer", "lsrs.smoothing"} <= set(order)


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("ABSTAIN", "lsrs.smoothing"),
        ("VARIANT_KEYS", "bench.report.labels"),
        ("DEFENSES", "bench.report.labels"),
        ("config_label", "bench.report.labels"),
        ("fors_label", "bench.report.labels"),
        ("format_sigma", "bench.report.labels"),
        ("variant_keys", "bench.report.labels"),
        ("resolve_device", "lsrs.devices"),  # one device rule (bench.devices.usage_device: as a usage error)
        ("PRESETS", "bench.demo.pipeline"),  # the demo presets; the speed configurations are SPEED_CONFIGS
        ("SPEED_CONFIGS", "bench.perf.speed"),
        ("collect_shard", "bench.run.shards"),  # one collection path for the three grid executors
        # torch-free homes of what the CLI's help and parse-time checks read (bench CMD --help imports no torch)
        ("PRECISION_CHOICES", "bench.devices"),
        ("COMPILE_MODES", "bench.certifiers.engine"),
        ("MARGIN_EPS", "bench.train.defaults"),
        ("MARGIN_TEMPERATURE", "bench.train.defaults"),
        ("OPTIMIZERS", "lsrs.training_choices"),
        ("SCHEDULES", "lsrs.training_choices"),
        ("FORMATS", "bench.report.formats"),
        ("COHEN_DATASETS", "lsrs.cohen_published"),
        ("PUBLISHED_STD", "lsrs.cohen_published"),
        ("RESNET18_LAYERS", "lsrs.layer_counts"),
    ],
)
def test_shared_name_is_defined_once(name: str, home: str) -> None:
    """The report, its figures and the library share these names; each is defined in one module only."""
    modules = _modules()
    defined = sorted(m for m, tree in modules.items() if name in _module_level_names(tree))
    assert defined == [home]
