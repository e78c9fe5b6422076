"""Atomic file writes: a reader never sees a half-written output under its final name.

Write into a temporary file in the destination folder, flush to disk, then
``os.replace`` it over the final name (atomic on POSIX and Windows when both
lie on one file system). An interrupted write leaves only a ``.tmp-*`` file,
which the next run ignores and overwrites.

A full disk or a folder that cannot be written becomes a
:class:`~tdkstain.plumbing.errors.TdkstainError` naming the *final* file (not the
temporary one) and the fix; the earlier version of the file, if any, is left
as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator

from tdkstain.plumbing.errors import TdkstainError

# errno values meaning "no room left" (ENOSPC; EDQUOT: a quota, same fix) and
# "this folder refuses writes" (permissions, a read-only mount).
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def write_error(final: Path, err: OSError, *, atomic: bool = True) -> TdkstainError | None:
    """A user-facing error for a failed write of ``final``, or None when ``err`` is not a known cause.

    ``atomic``: the write went through :func:`atomic_path` (so the message can
    promise that nothing half-written lies under ``final``).
    """
    if err.errno in _DISK_FULL:
        kept = (" Nothing was written under this name; an earlier version of the file, if any, is unchanged."
                if atomic else "")
        return TdkstainError(
            f"{final}: disk full while writing it ({err.strerror}); free space on the disk holding "
            f"{final.parent} (or choose another output folder) and rerun the same command.{kept}"
        )
    if err.errno in _NOT_WRITABLE:
        return TdkstainError(
            f"{final}: cannot write to the folder {final.parent} (not writable: {err.strerror}); "
            "choose another output folder or fix its permissions."
        )
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        # mkdir met a plain file where a folder should be (``final`` itself when a folder was being made).
        blocker = next((p for p in (*reversed(final.parents), final) if p.exists() and not p.is_dir()), None)
        if blocker is not None and (blocker != final or err.errno == errno.EEXIST):
            return TdkstainError(
                f"{final}: cannot create the output folder: {blocker} is a file, in the way; "
                "move it or choose another output folder."
            )
    return None


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; move it into place if the block succeeds.

    The temporary name keeps the final suffix so that writers which pick a
    format from the extension (Pillow, tifffile) still do the right thing.

    Raises:
        TdkstainError: the disk is full or the folder is not writable (the
            message names ``final``); other ``OSError`` pass through.
    """
    final = Path(final)
    tmp_path: Path | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".tmp-{final.stem}-", suffix=final.suffix)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, final)
    except OSError as err:
        friendly = write_error(final, err)
        if friendly is None:
            raise
        raise friendly from err
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(final: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(final, text.encode("utf-8"))
