"""bench: the lsrs-bench harness, layered top to bottom (:mod:`bench.layering`): the command line, the demo,
running, training, reports and peers' formats, the certifiers, the run store and devices, the errors."""

from lsrs import __version__

__all__ = ["__version__"]
