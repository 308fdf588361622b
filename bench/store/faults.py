"""Storage faults of a run folder, each told in one line that names the file and what to do.

A write that fails (a full disk, a read-only or foreign folder, an I/O error) raises :class:`StorageFault`
from the store after its temporary file is removed: every part and manifest already in place stays whole
(they are only ever replaced atomically), so the run resumes from them once the cause is fixed.
"""

from __future__ import annotations

import errno
from pathlib import Path

from bench.errors import UsageError

_ADVICE = {
    errno.ENOSPC: "the disk is full: free space (or give another --out) and run the same command again",
    errno.EDQUOT: "the disk quota is exceeded: free space (or give another --out) and run the same command again",
    errno.EROFS: "the file system is read-only: give a writable --out",
    errno.EACCES: "no permission to write there: give a writable --out",
    errno.EPERM: "no permission to write there: give a writable --out",
    errno.ENOTDIR: "a file stands where a folder is needed: give another --out",
}


class StorageFault(OSError, UsageError):
    """Writing ``path`` failed; ``str()`` is the one line for the user (exit code 2 on the command line)."""

    def __init__(self, path: Path | str, cause: BaseException, what: str = "") -> None:
        code = getattr(cause, "errno", None)
        if code is None and "No space left" in str(cause):  # pyarrow's IO errors carry no errno
            code = errno.ENOSPC
        reason = getattr(cause, "strerror", None) or (str(cause).splitlines() or [type(cause).__name__])[0]
        advice = _ADVICE.get(code, "check the disk and run the same command again")
        message = f"cannot write {what}{path}: {reason}; {advice}"
        super().__init__(code, message, str(path))
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # a worker process's fault reaches the driver whole
        return (_restore, (self.message, self.errno, self.filename))


def _restore(message: str, code: int | None, filename: str | None) -> StorageFault:
    fault = StorageFault.__new__(StorageFault)
    OSError.__init__(fault, code, message, filename)
    fault.message = message
    return fault


def storage_fault(path: Path | str, cause: BaseException, what: str = "") -> StorageFault:
    """``cause`` as a :class:`StorageFault` on ``path`` (unchanged when it already is one); ``what`` is put
    before the path (``"to --out "``)."""
    return cause if isinstance(cause, StorageFault) else StorageFault(path, cause, what)


__all__ = ["StorageFault", "storage_fault"]
