"""Keep freed memory in the process for reuse: glibc ``mallopt`` for CPU training.

A training step on the CPU allocates and frees the same large activation
buffers every iteration. glibc serves blocks above its mmap threshold with
fresh ``mmap`` calls and hands them back with ``munmap`` when freed, so each
step page-faults its whole working set in again: the authors' release spent
~56 s of system time in 31.6 M page faults over a short 512 px run
(``docs/PERFORMANCE.md`` of the shared material). Telling glibc never to use
mmap for large blocks and never to trim the heap keeps those pages mapped and
reused. Measured (benchmarks/README.md): faster steps, a higher peak RSS.

This is ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=...``
set from inside the process, which environment tunables cannot be once
Python runs. Other C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["keep_freed_memory"]

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # bytes: the largest an int takes; freed memory is kept below 2 GiB of slack


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Make glibc keep freed heap memory for reuse; True when it took effect.

    Process-wide and not undone (later calls do nothing). Returns False where
    the C library is not glibc or refuses the settings.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        if not hasattr(libc, "gnu_get_libc_version"):
            return False
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    no_mmap = mallopt(_M_MMAP_MAX, 0) == 1
    no_trim = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    return no_mmap and no_trim
