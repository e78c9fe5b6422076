"""Atomic file writes: a reader never sees a half-written output under its final name.

Write into a temporary file in the destination folder, flush to disk, then
``os.replace`` it over the final name (atomic on POSIX and Windows when both
lie on one file system). An interrupted write leaves only a ``.tmp-*`` file,
which the next run ignores and overwrites.

Permissions: an output gets the mode of any file the user creates
(``0o666 & ~umask``, so a shared folder's collaborators can read results as
they read everything else there); an output that replaces an existing file
keeps that file's mode, so a ``chmod`` survives a rerun. (The temporary is
created private, as ``tempfile.mkstemp`` makes it, and given its final mode
just before it takes the final name.)

A full disk or a folder that cannot be written becomes a
:class:`~tdkstain.plumbing.errors.TdkstainError` naming the *final* file (not the
temporary one) and the fix; the earlier version of the file, if any, is left
as it was. :func:`read_error` is the same for a file that cannot be read, and
:func:`os_error` words an ``OSError`` met anywhere else, claiming a write
problem only when the failed operation was a write.

File names need not be text: on Linux a name is bytes, and one that is not
valid UTF-8 reaches Python with surrogates (``b"tile_\\xff.png"`` ->
``"tile_\\udcff.png"``) that no UTF-8 file can hold. :func:`safe_text`
replaces them with U+FFFD; :func:`write_text_atomic` applies it, so no text
output (HTML, CSV, JSON) fails on a file name, and :func:`display_name`
also makes control characters (a newline in a name) visible for one-line
messages.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from tdkstain.plumbing.errors import TdkstainError

__all__ = [
    "atomic_path",
    "display_name",
    "os_error",
    "read_error",
    "safe_strings",
    "safe_text",
    "write_bytes_atomic",
    "write_error",
    "write_text_atomic",
]

# errno values meaning "no room left" (ENOSPC; EDQUOT: a quota, same fix) and
# "this folder refuses writes" (permissions, a read-only mount).
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}
_DENIED = {errno.EACCES, errno.EPERM}
# Longest file name most file systems take (bytes); the temporary's name is kept within it.
_NAME_MAX = 255


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


def read_error(path: str | os.PathLike, err: OSError, *, folder: bool = False) -> TdkstainError:
    """A user-facing error for a failed read of ``path`` (a file, or a folder being listed when ``folder``).

    Always an error about *reading*: ``"PATH: cannot read it (permission denied); ..."``.
    """
    path = Path(path)
    what = "cannot list the folder" if folder else "cannot read it"
    if err.errno in _DENIED:
        return TdkstainError(
            f"{path}: {what} (permission denied); ask its owner for read access to it and to the folders "
            f"above it{' (r and x)' if folder else ''}, or leave it out."
        )
    if err.errno == errno.ELOOP:
        return TdkstainError(f"{path}: {what} (a symbolic link loop: the link points, through other links, "
                             "back to itself); fix or remove the link.")
    if err.errno == errno.EIO:
        return TdkstainError(f"{path}: {what} (input/output error); the disk or network share may be failing. "
                             "Copy the data again or leave it out.")
    reason = err.strerror or str(err) or type(err).__name__
    return TdkstainError(f"{path}: {what} ({reason}).")


def os_error(err: OSError) -> TdkstainError | None:
    """A user-facing error for an ``OSError`` met outside :func:`atomic_path`, or None when nothing useful can be said.

    A full disk, a read-only file system or a file in the way of a folder are
    write problems; "permission denied" is worded as a read problem, a write
    problem, or neither, from what the path allows now (root, who may do
    either, gets the neutral wording): a message never blames writing for a
    file that could not be read.
    """
    filename = err.filename
    if not isinstance(filename, (str, bytes, os.PathLike)):
        return None  # no path (or a file descriptor): the traceback says more than we could
    path = Path(os.fsdecode(filename))
    if err.errno in _DISK_FULL or err.errno == errno.EROFS or err.errno in (errno.ENOTDIR, errno.EEXIST):
        return write_error(path, err, atomic=False)
    if err.errno in _DENIED:
        if err.filename2 is not None:  # rename / replace / link: a write
            return write_error(path, err, atomic=False)
        kind = _denied_operation(path)
        if kind == "read":
            return read_error(path, err, folder=path.is_dir())
        if kind == "write":
            return write_error(path, err, atomic=False)
        return TdkstainError(
            f"{path}: permission denied ({err.strerror}); check the permissions of this file and of the folders above it."
        )
    if err.errno in (errno.ELOOP, errno.EIO):
        return read_error(path, err)
    return None


def _denied_operation(path: Path) -> str | None:
    """``"read"``, ``"write"`` or None (cannot tell): which access to ``path`` the current user lacks."""
    try:
        if os.path.lexists(path):
            readable = os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0))
            if not readable:
                return "read"
            return None  # readable: the denied operation may have been a write, or not; say neither
        parent = path.parent
        if parent.is_dir() and os.access(parent, os.X_OK) and not os.access(parent, os.W_OK):
            return "write"  # creating a file or folder in a folder that refuses it
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------- names in text files

_SURROGATES = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def safe_text(text: str) -> str:
    """``text`` with every lone surrogate (an undecodable byte of a file name) replaced by U+FFFD.

    The result always encodes as UTF-8; text without surrogates is returned unchanged.
    """
    return _SURROGATES.sub("\ufffd", text)


def safe_strings(value: Any) -> Any:
    """``value`` (dicts, lists, tuples of anything) with :func:`safe_text` applied to every string, keys included.

    For JSON documents that hold file names: ``json.dumps`` would otherwise
    write a lone surrogate escape (``"\\udcff"``), which strict JSON readers refuse.
    """
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, dict):
        return {safe_strings(k): safe_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [safe_strings(v) for v in value]
    if isinstance(value, tuple):
        return tuple(safe_strings(v) for v in value)
    return value


def display_name(text: str | os.PathLike) -> str:
    """A file name (or a line naming one) for a one-line message: :func:`safe_text`, and control characters shown escaped.

    ``"tile\\n1.png"`` -> ``"tile\\\\n1.png"`` (a visible backslash-n), so a newline
    in a name cannot split a line of a listing in two.
    """
    text = safe_text(os.fspath(text) if isinstance(text, os.PathLike) else str(text))
    return _CONTROL.sub(lambda m: {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(m[0], f"\\x{ord(m[0]):02x}"), text)


# --------------------------------------------------------------------------- permissions

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux: /proc/self/status)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere the only way is to set it and put it back; meanwhile another thread's new
    # file would get the private 077, the safe direction.
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def _final_mode(final: Path) -> int:
    """The permission bits the output ``final`` should have: the replaced file's, else ``0o666 & ~umask``."""
    try:
        return stat.S_IMODE(os.stat(final).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _temporary_prefix(final: Path) -> str:
    """``.tmp-STEM-``, the stem shortened when the temporary's name would exceed 255 bytes."""
    stem = final.stem
    room = _NAME_MAX - len(os.fsencode(f".tmp--{'x' * 8}{final.suffix}"))
    while stem and len(os.fsencode(stem)) > room:
        stem = stem[:-1]
    return f".tmp-{stem}-"


# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; move it into place if the block succeeds.

    The temporary name keeps the final suffix so that writers which pick a
    format from the extension (Pillow, tifffile) still do the right thing.
    The file placed under ``final`` has the mode of the file it replaces, or
    ``0o666 & ~umask`` when there was none.

    Raises:
        TdkstainError: the disk is full or the folder is not writable (the
            message names ``final``); other ``OSError`` pass through.
    """
    final = Path(final)
    tmp_path: Path | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=_temporary_prefix(final), suffix=final.suffix)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp made it private (0600); give it the mode a file made by the user would have.
        os.chmod(tmp_path, _final_mode(final))
        os.replace(tmp_path, final)
    except OSError as err:
        if err.errno in _DENIED and _names_another_file(err, final, tmp_path):
            raise  # the block could not *read* something else (an input): not a failure to write ``final``
        friendly = write_error(final, err)
        if friendly is None:
            raise
        raise friendly from err
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def _names_another_file(err: OSError, final: Path, tmp_path: Path | None) -> bool:
    """True when ``err`` is about a path that is neither ``final``, its temporary, nor a folder above them."""
    if not isinstance(err.filename, (str, bytes, os.PathLike)):
        return False
    path = Path(os.path.abspath(os.fsdecode(err.filename)))
    final = Path(os.path.abspath(final))
    ours = {final, *final.parents}
    if tmp_path is not None:
        ours.add(Path(os.path.abspath(tmp_path)))
    temporary = path.parent == final.parent and path.name.startswith(".tmp-")  # mkstemp's own failure
    return path not in ours and not temporary


def write_bytes_atomic(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(final: str | os.PathLike, text: str) -> None:
    """Write ``text`` as UTF-8; file names that are not valid UTF-8 in it are written with U+FFFD (:func:`safe_text`)."""
    write_bytes_atomic(final, safe_text(text).encode("utf-8"))
