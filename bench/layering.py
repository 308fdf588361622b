"""The layers of ``bench/``, in one place, and the check that imports point down them only.

``bench/`` is layered top to bottom: the command line (and the speed measurements beside it), the demo
pipeline, then running, training, reporting and peers' formats, then the certifiers, then the store and devices,
and at the bottom the errors. A module may import its own room (its sub-package or top-level module) and the rooms of lower
layers, never a room of its own layer or of a higher one; and no module outside ``bench/cli/`` imports click,
so the core raises :class:`bench.errors.UsageError` and only the command line formats it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli", "perf", "speed", "device_speed"),
    ("demo",),
    ("run", "train", "report", "peers"),
    ("certifiers",),
    ("store", "devices", "memory", "layering"),
    ("errors",),
)
"""Rooms of ``bench`` from the top layer to the bottom one; a room is a sub-package or a top-level module."""

CLI_ONLY = ("click",)
"""Packages that only the command line (the top layer's ``cli`` room) may import."""


@dataclass(frozen=True)
class Violation:
    """One import against the layering: where it is and what it imports."""

    module: str
    line: int
    imported: str
    why: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.imported}: {self.why}"


def room(module: str) -> str | None:
    """The room of a dotted ``bench`` module name (``bench.run.pool`` -> ``run``); None for ``bench`` itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "bench" else None


def layer(name: str) -> int:
    """The index of a room's layer (0 = top); a room in no layer is an error of the declaration."""
    for index, rooms in enumerate(LAYERS):
        if name in rooms:
            return index
    raise KeyError(f"bench.{name} is in no layer of bench.layering.LAYERS: add it there")


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """Every module imported by the file (at any depth, inside functions too), with its line number."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found += [(node.lineno, f"{base}.{alias.name}" if base == "bench" else base) for alias in node.names]
    return found


def violations(root: Path) -> list[Violation]:
    """The imports of the package at ``root`` (the ``bench`` folder) that break the layering."""
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root.parent).with_suffix("")
        module = ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)
        own = room(module)
        for line, imported in imports(path, module):
            top = imported.split(".")[0]
            if top in CLI_ONLY and own != "cli":
                found.append(Violation(module, line, imported, "only bench.cli may import it"))
            target = room(imported)
            if target is not None and not ((root / target).is_dir() or (root / f"{target}.py").is_file()):
                target = None  # a name of bench/__init__.py (__version__), not a room
            if own is None or target is None or target == own:
                continue
            if layer(target) <= layer(own):
                found.append(Violation(module, line, imported, f"bench.{target} is not below bench.{own}"))
    return found
