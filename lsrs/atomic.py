"""Files written whole or not at all: a temporary file beside the target, moved over it by ``os.replace``.

The one mechanism behind the checkpoint files (:mod:`lsrs.checkpoint`) and the run store's parts and manifest
(:mod:`bench.store`): a write that fails (a full disk, a read-only folder, an interrupt) leaves the target as
it was and no temporary file behind. Torch-free.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(
    path: Path, errors: tuple[type[BaseException], ...] = (OSError,),
    fault: Callable[[Path, BaseException], BaseException] | None = None,
) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder (made if missing) to write; on a clean exit it replaces
    ``path`` atomically. On any exception the temporary file is removed; one of ``errors`` is raised as
    ``fault(path, exc)`` when ``fault`` is given, any other exception as it was."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if fault is not None and isinstance(exc, errors):
            raise fault(path, exc) from None
        raise


__all__ = ["replacing"]
