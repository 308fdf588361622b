"""The one collection path of the three grid executors (:mod:`bench.run.executors`): shards of a job.

A shard is some of one job's images, certified by one :class:`bench.run.runner.JobCertifier` and stored as one
parquet part; its summary (:func:`shard_summary`) is what the process that drives the run folds into the
manifest and the job's progress tally (:func:`collect_shard`). Every executor goes through these functions:

- in this process (:meth:`bench.run.runner.GridRunner.run`), a job's images are certified one after another; each
  image is collected as it is certified (so the bar and its tally move per image), and the rows are stored
  every :data:`bench.run.runner.FLUSH_ROWS` images or :data:`bench.run.runner.FLUSH_SECONDS` seconds, and
  when the job stops for any reason, as a part of a new name (:func:`store_shard` without ``name``): a killed
  run loses at most the rows of the last few seconds;
- in local workers and Ray tasks (:func:`bench.run.distributed.certify_shard`), the shards are fixed before the
  run; each is stored under a name fixed by (job, images) in one atomic replace, so a task that is retried
  rewrites its part instead of adding one, and its summary goes back to the driver to be collected.

Either way the decisions are stored before the rows that mark the images as done.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import store

STAGING_DIR = ".staging"  # leading ".": neither pandas.read_parquet(run_dir) nor the store reads it


class Tally:
    """Running accuracy, ACR and s/image of one job's images certified so far in this session (progress line)."""

    def __init__(self) -> None:
        self.images = self.correct = 0
        self.radius = self.seconds = 0.0

    def add(self, row: dict) -> None:
        self.images += 1
        self.correct += bool(row["correct"])
        self.radius += row["radius"] if row["correct"] else 0.0
        self.seconds += row["total_s"]

    def summary(self) -> str:
        k = max(self.images, 1)
        return f"acc {100 * self.correct / k:5.1f}%  ACR {self.radius / k:.3f}  {self.seconds / k:.3f} s/img"


def part_name(job_key: str, indices: Sequence[int]) -> str:
    """The fixed part name of a shard decided before the run: the same (job, images) always get the same name."""
    digest = hashlib.sha256(",".join(map(str, indices)).encode()).hexdigest()[:10]
    return f"{job_key}-i{indices[0]}-{digest}"


def write_part_as(folder: Path, name: str, rows: list[dict], schema) -> Path:
    """Store ``rows`` as ``folder/part-<name>.parquet`` in one atomic replace (overwriting a previous try)."""
    staged = store.write_part(folder / STAGING_DIR, rows, name, schema=schema)
    final = folder / f"part-{name}.parquet"
    os.replace(staged, final)
    return final


def store_shard(out: Path, job_key: str, rows: list[dict], decisions: list[dict], name: str | None = None) -> None:
    """Store a shard's decisions, then its certification rows (those mark its images as done).

    Without ``name`` each call adds a part tagged with ``job_key`` (the flushes of one process); with ``name``
    the part is ``part-<name>.parquet``, replaced whole (a retried task rewrites it). Nothing is written for
    empty lists.
    """
    for folder, part, schema in ((out / store.DECISIONS_DIR, decisions, store.DECISION_SCHEMA),
                                 (out, rows, store.ROW_SCHEMA)):
        if not part:
            continue
        if name is None:
            store.write_part(folder, part, job_key, schema=schema)
        else:
            write_part_as(folder, name, part, schema)


def clear_staging(out: Path) -> None:
    """Remove what tasks killed between writing and renaming a part left in the staging folders."""
    for folder in (out / STAGING_DIR, out / store.DECISIONS_DIR / STAGING_DIR):
        if folder.is_dir():
            try:
                for leftover in folder.iterdir():
                    leftover.unlink(missing_ok=True)
                folder.rmdir()
            except OSError:  # a cancelled task still writing: the next run clears it
                pass


def shard_summary(certifier: Any, model_record: dict, rows: list[dict]) -> dict:
    """What the driver collects of a shard certified by ``certifier`` (a :class:`bench.run.runner.JobCertifier`):
    per row what the tally needs, the job's set-up and its model's record (``bench.run.runner._model_record``)."""
    job = certifier.job
    return {
        "job": job.key,
        "fors": job.fors,
        "rows": [{"correct": bool(r["correct"]), "radius": float(r["radius"]), "total_s": float(r["total_s"])}
                 for r in rows],
        "device": certifier.common["device"],
        "batch_size": certifier.batch_size,
        "warmup_s": certifier.warmup_s,
        "lipschitz_executed": certifier.lipschitz_executed,
        "setup_s": certifier.setup_s,
        "model": model_record,
    }


def collect_shard(manifest: dict, summary: dict, tally: Tally) -> None:
    """Fold one shard's summary (:func:`shard_summary`) into the manifest (model record, batch size, warm-up,
    set-up, as-executed L) and the job's tally: the collection of every executor."""
    for row in summary["rows"]:
        tally.add(row)
    manifest["models"].setdefault(str(summary["fors"]), summary["model"])
    record_job_setup(manifest, summary["job"], summary["setup_s"], summary["batch_size"], summary["warmup_s"],
                     summary["lipschitz_executed"])


def record_job_setup(manifest: dict, key: str, setup_s: dict, batch_size: int | None, warmup_s: float,
                     lipschitz_executed: float | None) -> None:
    """Record one set-up of job ``key`` in the manifest (one process, a local worker or a Ray task alike): its
    set-up seconds (the slowest set-up of the job, over workers and resumed sessions), batch size, warm-up
    (the longest) and the encoder's bound as executed."""
    setup = manifest.setdefault("setup_s", {})
    if setup_s["total"] >= setup.get(key, {}).get("total", -1.0):
        setup[key] = setup_s
    if batch_size is not None:
        manifest["batch_size"][key] = batch_size
        manifest["warmup_s"][key] = max(warmup_s, manifest["warmup_s"].get(key, 0.0))
        manifest.setdefault("lipschitz_executed", {})[key] = lipschitz_executed


def finish_run(out: Path, manifest: dict) -> dict:
    """Mark the run finished (every job done) and store its manifest; returns it."""
    manifest["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    store.write_json(out / store.MANIFEST, manifest)
    return manifest


__all__ = [
    "STAGING_DIR", "Tally", "clear_staging", "collect_shard", "finish_run", "part_name", "record_job_setup",
    "shard_summary", "store_shard", "write_part_as",
]
