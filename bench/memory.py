"""Keep freed memory in the process for reuse (glibc ``mallopt``), for commands that allocate and free
operator-sized blocks over and over.

glibc serves every block above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and returns it on
``free``, so each new complex operator of a WRN-34 at 224x224 (hundreds of MB) is page-faulted in afresh.
With ``M_MMAP_MAX = 0`` and a huge ``M_TRIM_THRESHOLD`` freed blocks stay in the heap and are reused, which
saves ``bench info --model wide_resnet34 --fors 16 --in-size 224 --stem-stride 4 --no-empirical`` most of its
system time. The price: the process keeps its peak memory. (One arena for all threads, ``M_ARENA_MAX = 1``,
is left out: it did not shorten that command, and it serialises the allocations of the default
``bench info``, whose empirical estimates run autograd on several threads.) Measured:
docs/data/benchmarks.yaml.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Tune glibc's allocator as described above; False where there is no glibc (nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))
    return all([bool(mallopt(option, value)) for option, value in settings])
