"""bench: the lsrs-bench harness (CLI, grid runner, timing, result store, reports)."""

from lsrs import __version__

__all__ = ["__version__"]
