"""One writer per run folder: an exclusive lock held for the whole of a ``bench run``.

The lock is ``fcntl.flock`` on ``<run>/_run.lock`` (leading ``_``: ``pandas.read_parquet(run_dir)`` skips it),
which the kernel releases when its holder dies, whatever killed it; so a lock left by a dead process is never
mistaken for a live one. The file records the holder (host, pid, start time) so that a refused second writer
can name it. A clean release empties the file; a non-empty file found by a process that gets the lock was
left by a holder that died (kill -9, out of memory, a node lost): it is taken over, and the caller is told.

Where the file system has no ``flock`` (some network file systems), the record alone decides: a holder on this
host whose pid is gone is stale and taken over; a live one, or one on another host, is refused.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bench.errors import UsageError

LOCK_NAME = "_run.lock"


class RunLockedError(UsageError):
    """Another live process holds the run folder's lock (its message names the holder)."""


@dataclass
class RunLock:
    """A held lock on a run folder; :meth:`release` (or leaving the ``with`` block) gives it back."""

    path: Path
    fd: int
    taken_over: dict | None  # the record of a dead holder this lock replaced, else None

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            os.ftruncate(self.fd, 0)  # empty: released cleanly
        except OSError:
            pass
        os.close(self.fd)  # closing drops the flock
        self.fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder_text(record: dict) -> str:
    """``host H, pid P, since T`` of a lock record."""
    return f"host {record.get('host', '?')}, pid {record.get('pid', '?')}, since {record.get('started', '?')}"


def acquire(run_dir: Path) -> RunLock:
    """Lock ``run_dir`` for this process or raise :class:`RunLockedError` naming the holder.

    A lock whose holder died is taken over: :attr:`RunLock.taken_over` holds the dead holder's record."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        locked = _flock(fd)
        previous = _read_record(fd)
        if locked is False or (locked is None and previous and _alive(previous)):
            raise RunLockedError(
                f"{run_dir} is being written by another bench run ({holder_text(previous or {})}); wait for it to "
                f"finish or use another --out (if that process is gone, delete {path})"
            )
        record = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    return RunLock(path, fd, previous or None)


def _flock(fd: int) -> bool | None:
    """True when locked, False when another process holds it, None when the file system has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise


def _read_record(fd: int) -> dict:
    """The holder's record in the lock file ({} when empty or unreadable)."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        record = json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _alive(record: dict) -> bool:
    """Whether a record's holder may still run: any holder on another host (it cannot be checked from here),
    or a pid on this host that exists."""
    if record.get("host") != socket.gethostname():
        return True
    try:
        pid = int(record.get("pid", -1))
        if pid <= 0:
            return False
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return True


__all__ = ["LOCK_NAME", "RunLock", "RunLockedError", "acquire", "holder_text"]
