"""The guard every grid executor runs under: one writer per run folder, and the folder checked first.

:func:`open_run_folder` takes the folder's lock (:mod:`bench.store.lock`), then moves unreadable parts and a
corrupt manifest aside and removes rows stored twice (:mod:`bench.store.repair`), telling each on one line
(stderr, also with ``-q``), and releases the lock when the run ends, however it ends.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.store import lock as run_lock
from bench.store import repair as run_repair
from bench.store.faults import storage_fault


def _tell(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


@contextmanager
def open_run_folder(out: Path | str) -> Iterator[run_lock.RunLock]:
    """Hold ``out``'s lock for the ``with`` block, after checking and repairing the folder.

    Raises :class:`bench.store.lock.RunLockedError` when another live run holds it, and
    :class:`bench.store.faults.StorageFault` when the folder cannot be written."""
    out = Path(out)
    try:
        lock = run_lock.acquire(out)
    except OSError as exc:
        raise storage_fault(out, exc, what="to --out ") from None
    with lock:
        if lock.taken_over:
            _tell(f"{out}: took over the lock of a run that is gone ({run_lock.holder_text(lock.taken_over)})")
        try:
            lines = run_repair.set_aside_unreadable(out)
            lines += [line for line in [run_repair.set_aside_bad_manifest(out)] if line]
            lines += run_repair.deduplicate(out)
        except OSError as exc:
            raise storage_fault(out, exc) from None
        for line in lines:
            _tell(line)
        yield lock


__all__ = ["open_run_folder"]
