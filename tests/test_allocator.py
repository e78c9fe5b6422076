"""tdkstain.plumbing.allocator: freed memory stays mapped for reuse once keep_freed_memory() ran (glibc)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_PROBE = """
import os, sys
import numpy as np
from tdkstain.plumbing.allocator import keep_freed_memory

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

ok = keep_freed_memory() if sys.argv[1] == "keep" else None
before = rss_mib()
block = np.ones(256 * 2**20 // 8)  # 256 MiB, touched
del block
print(ok, rss_mib() - before)
"""


def _freed_mib_still_resident(mode: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.exists("/proc/self/statm"), reason="glibc on Linux")
def test_keep_freed_memory_keeps_pages_that_glibc_would_unmap():
    status, default_resident = _freed_mib_still_resident("default")
    assert default_resident < 64, "by default glibc unmaps a freed 256 MiB block at once"
    status, kept_resident = _freed_mib_still_resident("keep")
    assert status == "True"
    assert kept_resident > 200, "after keep_freed_memory() the freed block stays resident for reuse"

