"""MkDocs hook: the benchmarks page's tables, generated from ``docs/data/benchmarks.yaml``.

Every measured time of the project lives in that one data file, each with the machine, its CPU flags, the
date and the command that measured it. The page ``benchmarks.md`` holds the marker :data:`MARKER`; this hook
replaces it with one section per group of the data file. A malformed entry (a missing field, an unknown
machine, a date that is not ``YYYY-MM-DD``) fails the build, so ``mkdocs build --strict`` checks the data.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import yaml

MARKER = "<!-- benchmarks:tables -->"
DATA = Path(__file__).resolve().parent.parent / "data" / "benchmarks.yaml"
ENTRY_FIELDS = ("what", "value", "machine", "date", "command")
MACHINE_FIELDS = ("name", "cpu_flags")
COLUMNS = ("Measured", "Value", "Machine", "CPU flags", "Date", "Command")


def load(path: Path = DATA) -> dict[str, Any]:
    """The data file, checked: every machine has a name and CPU flags, every entry its fields."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    machines = data["machines"]
    for key, machine in machines.items():
        missing = [f for f in MACHINE_FIELDS if not machine.get(f)]
        if missing:
            raise ValueError(f"{path.name}: machine {key!r} lacks {', '.join(missing)}")
    for section in data["sections"]:
        for entry in section["entries"]:
            missing = [f for f in ENTRY_FIELDS if not entry.get(f)]
            if missing:
                raise ValueError(f"{path.name}: entry {entry.get('what')!r} lacks {', '.join(missing)}")
            if entry["machine"] not in machines:
                raise ValueError(f"{path.name}: entry {entry['what']!r} names unknown machine {entry['machine']!r}")
            dt.date.fromisoformat(str(entry["date"]))
    return data


def _cell(text: Any) -> str:
    """One table cell: a single line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text: str) -> str:
    """A command as inline code (backticks inside it are dropped)."""
    return f"`{_cell(text).replace('`', '')}`"


def render_section(section: dict[str, Any], machines: dict[str, Any]) -> str:
    """One group: its heading, its introduction and a table of its measurements."""
    lines = [f"## {section['title']} {{ #{section['id']} }}", ""]
    if section.get("intro"):
        lines += [" ".join(section["intro"].split()), ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for e in section["entries"]:
        machine = machines[e["machine"]]
        what = _cell(e["what"]) + (f" ({_cell(e['note'])})" if e.get("note") else "")
        row = (what, _cell(e["value"]), _cell(machine["name"]), _cell(machine["cpu_flags"]), str(e["date"]),
               _code(e["command"]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def render(data: dict[str, Any]) -> str:
    """Every group of the data file, in its order."""
    return "\n".join(render_section(s, data["machines"]) for s in data["sections"])


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the marker of the benchmarks page by the generated tables."""
    if page.file.src_uri != "benchmarks.md":
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"benchmarks.md lacks the marker {MARKER}")
    return markdown.replace(MARKER, render(load()))
