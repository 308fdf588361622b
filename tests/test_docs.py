"""The README and the documentation's data: the quick start as documented, links that resolve, every measured
time in docs/data/benchmarks.yaml (complete entries) and none left in the code's docstrings and comments."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
QUICK_START = ('pip install -e ".[dev]" && bench demo', "python -m pytest -q")
# A measured time or a machine's name: "12.5 s", "48.5-49.9 s", "4 ms", "2 min", "6-12x the CPU", "0.95 GB",
# a CPU or GPU model, "2-core", "on this machine", "fits its" (a time budget).
MACHINE_TIMING = re.compile(
    r"(?<![\w.])[0-9][0-9.]*([–-][0-9.]+)? ?(s|ms|min|minutes)\b|[0-9.]+ ?x (faster|slower|the CPU)|EPYC|Xeon|H100|H200"
    r"|on this machine|fits its|2-core|measured here|[0-9.]+ ?GB\b"
)


def _hook():
    pytest.importorskip("yaml")
    spec = importlib.util.spec_from_file_location("benchmarks_hook", ROOT / "docs" / "hooks" / "benchmarks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_short_and_keeps_the_quick_start():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150
    for command in QUICK_START:
        assert command in lines, command


def test_readme_links_resolve():
    text = README.read_text(encoding="utf-8")
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)]+)\)", text) if not t.startswith("http")]
    assert targets, "the README links into the documentation"
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing


def test_every_benchmark_entry_is_complete():
    hook = _hook()
    data = hook.load()
    entries = [e for s in data["sections"] for e in s["entries"]]
    assert entries
    for e in entries:
        assert all(str(e[f]).strip() for f in hook.ENTRY_FIELDS), e
        assert data["machines"][e["machine"]]["cpu_flags"]
    rendered = hook.render(data)
    assert rendered.count("\n| ") == len(entries) + len(data["sections"])  # one header row per section


def test_benchmark_hook_refuses_an_entry_without_machine_or_date(tmp_path):
    hook = _hook()
    import yaml

    data = yaml.safe_load(hook.DATA.read_text(encoding="utf-8"))
    data["sections"][0]["entries"][0]["machine"] = "a machine nobody described"
    path = tmp_path / "benchmarks.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ValueError, match="unknown machine"):
        hook.load(path)
    del data["sections"][0]["entries"][0]["date"]
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ValueError, match="lacks date"):
        hook.load(path)


def test_no_machine_timings_in_code():
    """Docstrings and comments say what the code does and why; measured times live in benchmarks.yaml."""
    files = [*sorted((ROOT / "lsrs").rglob("*.py")), *sorted((ROOT / "bench").rglob("*.py")),
             ROOT / "noxfile.py", ROOT / "pyproject.toml"]
    hits = [f"{f.relative_to(ROOT)}:{i}: {line.strip()}" for f in files
            for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1) if MACHINE_TIMING.search(line)]
    assert not hits, "measured timings belong in docs/data/benchmarks.yaml:\n" + "\n".join(hits)
