"""Atomic file writes: a reader never sees a half-written output under its final name.

Write into a temporary file in the destination folder, flush to disk, then
``os.replace`` it over the final name (atomic on POSIX and Windows when both
lie on one file system). An interrupted write leaves only a ``.tmp-*`` file,
which the next run ignores and overwrites.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; move it into place if the block succeeds.

    The temporary name keeps the final suffix so that writers which pick a
    format from the extension (Pillow, tifffile) still do the right thing.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".tmp-{final.stem}-", suffix=final.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(final: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(final, text.encode("utf-8"))
