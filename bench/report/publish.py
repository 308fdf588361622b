"""A report is never left half-written: it is written into a temporary folder beside its destination and its
files are then moved into place, ``index.md`` last.

A write that fails (a full disk, a read-only folder) removes the temporary folder and raises
:class:`bench.store.faults.StorageFault` naming the file: the destination keeps the report it held before,
whole, or stays absent. Files of the destination that the report does not write are left alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.report.writer import ReportResult
from bench.store.faults import storage_fault

INDEX = "index.md"


def publish_report(out: Path | str, write: Callable[[Path], ReportResult]) -> ReportResult:
    """Run ``write`` (a report writer given a folder) into a temporary folder, then move what it wrote to ``out``."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as exc:
        raise storage_fault(out, exc, what="the report folder ") from None
    try:
        result = write(staging)
        out.mkdir(parents=True, exist_ok=True)
        names = sorted((p.name for p in staging.iterdir()), key=lambda name: name == INDEX)  # index.md last
        for name in names:
            os.replace(staging / name, out / name)
    except OSError as exc:
        failed = Path(exc.filename) if isinstance(exc.filename, str) else out
        shown = out / failed.relative_to(staging) if failed.is_relative_to(staging) else failed
        raise storage_fault(shown, exc) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _moved(result, staging, out)


def _moved(result: ReportResult, staging: Path, out: Path) -> ReportResult:
    """``result`` with its paths in ``out`` instead of ``staging``."""
    def where(path: Path) -> Path:
        return out / Path(path).relative_to(staging) if Path(path).is_relative_to(staging) else Path(path)

    result.out_dir = out
    result.paths = [where(p) for p in result.paths]
    result.index = where(result.index) if result.index is not None else None
    return result


__all__ = ["publish_report"]
