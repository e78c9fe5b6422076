"""Finding input files: folder listings and existence checks that leave the wording of errors to the reader.

A path that cannot be looked at (permission denied, an I/O error), a broken
link or a pipe is *kept* as an input, so that reading it reports what is
wrong (:func:`tdkstain.plumbing.atomic.read_error`) instead of it vanishing
or being called missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

from tdkstain.plumbing.atomic import read_error

__all__ = ["list_files", "named_path_exists"]


def named_path_exists(path: str | os.PathLike) -> bool:
    """False only when nothing is at ``path``; a path that cannot be looked at, or a broken link, counts as there."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def list_files(
    folder: str | os.PathLike,
    suffixes: Iterable[str],
    *,
    recursive: bool = False,
    skip: Callable[[Path], bool] = lambda path: False,
) -> list[Path]:
    """Files in ``folder`` whose names end in one of ``suffixes`` (lower case, with the dot; case-insensitive), sorted.

    ``recursive``: subfolders too (links to folders are not followed).
    Hidden entries (names starting with ``.``) are left out, and so is any
    entry for which ``skip(path)`` is true (a folder: not entered). An entry
    with a matching suffix counts whatever it is (a broken link, a pipe), so
    that reading it says what is wrong. Raises TdkstainError naming a folder
    that cannot be listed.
    """
    wanted = tuple(suffixes)
    files: list[Path] = []
    pending = [Path(folder)]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as it:
                entries = list(it)
        except OSError as err:
            raise read_error(current, err, folder=True) from err
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if os.path.isdir(path):
                if recursive and not entry.is_symlink() and not skip(path):
                    pending.append(path)
            elif path.suffix.lower() in wanted and not skip(path):
                files.append(path)
    return sorted(files)
