"""Checks and repairs of a run folder before a run writes to it (under its lock, :mod:`bench.store.lock`).

- An unreadable parquet part (truncated, overwritten, not parquet) is renamed ``_<name>.corrupt`` -- moved
  aside, never deleted -- so the store no longer reads it and the run certifies its keys again.
- A ``_manifest.json`` that is not a JSON object is renamed ``_manifest.json.corrupt``; the run then adopts
  the stored rows when all of them belong to its configuration (their ``run`` column is its hash), else it
  stops and says what to do (:mod:`bench.run.runner`).
- Rows stored twice under one key (two writers before the lock existed, a copy of a part) are removed: the
  parts that hold a repeated key are rewritten as one part that keeps each key once (the first stored), which
  is written before the old parts are removed, so a crash in between leaves duplicates (repaired next time),
  never a lost row.

Each repair returns one line for the user.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench import store

ROW_KEY = ("method", "fors", "sigma", "n", "idx")
DECISION_KEY = ("method", "fors", "sigma", "idx", "radius")
CORRUPT_SUFFIX = ".corrupt"


def set_aside(path: Path) -> Path:
    """Rename ``path`` to ``_<name>.corrupt`` (``.corrupt-2``, ... when taken; the leading ``_`` keeps it out of
    ``pandas.read_parquet(run_dir)``); returns the new path."""
    name = path.name if path.name.startswith("_") else f"_{path.name}"
    target = path.with_name(name + CORRUPT_SUFFIX)
    k = 2
    while target.exists():
        target = path.with_name(f"{name}{CORRUPT_SUFFIX}-{k}")
        k += 1
    path.rename(target)
    return target


def _read_part(path: Path, schema: pa.Schema) -> pa.Table:
    """A part as a table of ``schema`` (a column a part lacks, as older parts do, is null)."""
    table = pq.read_table(path)
    for name in schema.names:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(len(table), schema.field(name).type))
    return table.select(schema.names).cast(schema)


def set_aside_unreadable(run_dir: Path) -> list[str]:
    """Move every unreadable part of ``run_dir`` (and of its decisions) aside; one line per part."""
    lines = []
    for folder, schema in ((run_dir, store.ROW_SCHEMA), (run_dir / store.DECISIONS_DIR, store.DECISION_SCHEMA)):
        for part in store.part_files(folder):
            try:
                _read_part(part, schema)
            except (OSError, ValueError, pa.ArrowException) as exc:
                moved = set_aside(part)
                reason = (str(exc).splitlines() or [type(exc).__name__])[0]
                lines.append(f"{part} is not a readable parquet part ({reason}); moved aside to {moved.name}, "
                             "its rows are certified again")
    return lines


def set_aside_bad_manifest(run_dir: Path) -> str | None:
    """Move ``_manifest.json`` aside when it is not a JSON object; one line, or None when it is fine or absent."""
    path = run_dir / store.MANIFEST
    if not path.exists():
        return None
    try:
        if isinstance(json.loads(path.read_text(encoding="utf-8")), dict):
            return None
        reason = "not a JSON object"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
    moved = set_aside(path)
    return f"{path} is not a valid manifest ({reason}); moved aside to {moved.name}"


def rows_belong_to(run_dir: Path, config_hash: str) -> bool:
    """Whether every stored row of ``run_dir`` was certified by the configuration of ``config_hash``."""
    runs: set = set()
    for part in store.part_files(run_dir):
        runs |= set(pq.read_table(part, columns=["run"]).column("run").to_pylist())
    return runs == {config_hash}


def deduplicate(run_dir: Path) -> list[str]:
    """Keep each key of ``run_dir``'s rows (and decisions) once; one line per folder repaired."""
    lines = []
    for folder, schema, key in ((run_dir, store.ROW_SCHEMA, ROW_KEY),
                                (run_dir / store.DECISIONS_DIR, store.DECISION_SCHEMA, DECISION_KEY)):
        parts = store.part_files(folder)
        if not parts:
            continue
        tables = {part: _read_part(part, schema) for part in parts}
        seen: dict[tuple, Path] = {}
        involved: set[Path] = set()
        for part, table in tables.items():
            for k in zip(*(table.column(c).to_pylist() for c in key), strict=True):
                if k in seen:
                    involved |= {part, seen[k]}
                else:
                    seen[k] = part
        if not involved:
            continue
        merged = pa.concat_tables([tables[p] for p in parts if p in involved])
        keep, keys = [], set()
        for i, k in enumerate(zip(*(merged.column(c).to_pylist() for c in key), strict=True)):
            if k not in keys:
                keys.add(k)
                keep.append(i)
        written = store.write_part(folder, merged.take(keep).to_pylist(), "dedup", schema=schema)
        for part in involved:
            part.unlink()
        lines.append(f"{folder}: {len(merged) - len(keep)} rows stored twice removed ({len(involved)} parts "
                     f"rewritten as {written.name}, each key kept once)")
    return lines


__all__ = ["CORRUPT_SUFFIX", "deduplicate", "rows_belong_to", "set_aside", "set_aside_bad_manifest",
           "set_aside_unreadable"]
