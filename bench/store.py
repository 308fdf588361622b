"""The run store: parquet parts written atomically, and a JSON manifest (see docs/results-schema.md).

Every part is written to a temporary name in the run directory and then ``os.replace``d, so a killed run
never leaves a half-written part: what ``pandas.read_parquet(run_dir)`` reads is always whole rows.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pandas as pd

MANIFEST = "_manifest.json"  # leading "_": pyarrow skips it when reading the directory
PART_GLOB = "part-*.parquet"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_manifest(run_dir: Path) -> dict | None:
    path = run_dir / MANIFEST
    if not path.exists():
        return None
    return json.loads(path.read_text())


def write_part(run_dir: Path, rows: list[dict], tag: str) -> Path:
    """Write ``rows`` as one new parquet part (atomic); return its path."""
    path = run_dir / f"part-{tag}-{uuid.uuid4().hex[:12]}.parquet"
    frame = pd.DataFrame(rows)
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".part-", suffix=".tmp")
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def part_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob(PART_GLOB))


def read_rows(run_dir: Path) -> pd.DataFrame:
    """All stored rows of a run (empty frame when there are none)."""
    parts = part_files(run_dir)
    if not parts:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def clear_run(run_dir: Path) -> None:
    """Remove the parts and manifest of a run (``--fresh``); other files are left alone."""
    for p in part_files(run_dir):
        p.unlink()
    (run_dir / MANIFEST).unlink(missing_ok=True)
