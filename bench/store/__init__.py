"""The run store: parquet parts written atomically, and a JSON manifest (see docs/results-schema.md).

Every part is written to a temporary name in the run directory and then ``os.replace``d, so a killed run
never leaves a half-written part: what ``pandas.read_parquet(run_dir)`` reads is always whole rows.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench.store.faults import storage_fault
from lsrs.atomic import replacing

ROW_SCHEMA = pa.schema(
    [
        ("run", pa.string()), ("dataset", pa.string()), ("arch", pa.string()), ("idx", pa.int64()),
        ("label", pa.int64()), ("method", pa.string()), ("fors", pa.int64()), ("fors_total", pa.int64()),
        ("sigma", pa.float64()), ("prediction", pa.int64()), ("correct", pa.bool_()), ("radius", pa.float64()),
        ("radius_latent", pa.float64()), ("lipschitz", pa.float64()), ("lipschitz_declared", pa.float64()),
        ("latent_error", pa.float64()), ("p_a_lower", pa.float64()),
        ("p_b_upper", pa.float64()), ("counts_selection", pa.list_(pa.int64())),
        ("counts_estimation", pa.list_(pa.int64())), ("n0", pa.int64()), ("n", pa.int64()),
        ("samples_used", pa.int64()), ("alpha", pa.float64()), ("sampler", pa.string()),
        ("certificate", pa.string()), ("encode_s", pa.float64()), ("sample_s", pa.float64()),
        ("total_s", pa.float64()), ("batch_size", pa.int64()), ("seed", pa.int64()), ("precision", pa.string()),
        ("device", pa.string()), ("checkpoint_sha256", pa.string()), ("lipschitz_source", pa.string()),
        ("noise", pa.string()), ("quantization", pa.float64()),
    ]
)
"""Columns of a certification row (docs/results-schema.md); every part is written with this schema."""

OPTIONAL_COLUMNS = frozenset({"lipschitz_source", "noise", "quantization"})
NOISE_DEFAULT = "gaussian"  # what rows written before the ``noise`` column used
"""Columns added after runs were stored: null when a row lacks them (as in the parts written before)."""

DECISION_SCHEMA = pa.schema(
    [
        ("run", pa.string()), ("dataset", pa.string()), ("idx", pa.int64()), ("label", pa.int64()),
        ("method", pa.string()), ("fors", pa.int64()), ("fors_total", pa.int64()), ("sigma", pa.float64()),
        ("radius", pa.float64()), ("certified", pa.bool_()), ("prediction", pa.int64()),
        ("correct", pa.bool_()), ("p_required", pa.float64()), ("p_a_lower", pa.float64()),
        ("p_a_upper", pa.float64()), ("samples_used", pa.int64()), ("max_n", pa.int64()),
        ("alpha", pa.float64()), ("total_s", pa.float64()), ("seed", pa.int64()), ("device", pa.string()),
    ]
)
"""Columns of a decision row (``--decide-radii``): ``certified`` is null when ``max_n`` did not settle it."""

DECISIONS_DIR = "_decisions"  # leading "_": not read by pandas.read_parquet(run_dir)

MANIFEST = "_manifest.json"  # leading "_": pyarrow skips it when reading the directory
PART_GLOB = "part-*.parquet"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole and synced (:func:`lsrs.atomic.replacing`); a failed write leaves
    ``path`` as it was and raises :class:`bench.store.faults.StorageFault`."""
    with replacing(path, (OSError,), storage_fault) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_manifest(run_dir: Path) -> dict | None:
    path = run_dir / MANIFEST
    if not path.exists():
        return None
    return json.loads(path.read_text())


def write_part(run_dir: Path, rows: list[dict], tag: str, schema: pa.Schema = ROW_SCHEMA) -> Path:
    """Write ``rows`` as one new parquet part with ``schema`` (atomic); return its path. A failed write leaves
    no file behind and raises :class:`bench.store.faults.StorageFault`."""
    path = run_dir / f"part-{tag}-{uuid.uuid4().hex[:12]}.parquet"
    missing = set(schema.names) - set(rows[0]) - OPTIONAL_COLUMNS
    if missing:
        raise ValueError(f"rows lack columns {sorted(missing)}")
    table = pa.Table.from_pylist(rows, schema=schema)
    with replacing(path, (OSError,), storage_fault) as tmp:
        pq.write_table(table, tmp)
    return path


def part_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob(PART_GLOB))


def read_rows(run_dir: Path) -> pd.DataFrame:
    """All stored rows of a run (empty frame when there are none)."""
    parts = part_files(run_dir)
    if not parts:
        return pd.DataFrame()
    rows = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    rows["noise"] = rows["noise"].fillna(NOISE_DEFAULT) if "noise" in rows else NOISE_DEFAULT
    return rows


def clear_run(run_dir: Path) -> None:
    """Remove the parts, decisions and manifest of a run (``--fresh``); other files are left alone."""
    for p in [*part_files(run_dir), *part_files(run_dir / DECISIONS_DIR)]:
        p.unlink()
    (run_dir / MANIFEST).unlink(missing_ok=True)
