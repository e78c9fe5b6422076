"""Paired H&E / IHC tiles, in whichever layout a dataset ships, and the check that finds what is wrong.

Layouts (``ROOT`` is the folder the user names; ``{split}`` is e.g. ``train``):

- release:  ``ROOT/{split}_HE/STEM.*`` and ``ROOT/{split}_IHC/STEM.*``
- BCI:      ``ROOT/HE/{split}/STEM.*`` and ``ROOT/IHC/{split}/STEM.*``
  (images directly in ``ROOT/HE`` and ``ROOT/IHC`` form the split ``all``)
- MIST:     ``ROOT/{split}A/STEM.*`` and ``ROOT/{split}B/STEM.*`` (A = H&E,
  B = IHC; for MIST-HER2 as downloaded, ROOT is ``HER2/TrainValAB``)
- manifest: a CSV with columns ``he,ihc[,label][,split]``, paths relative to
  the CSV's folder; rows without a split belong to the split ``all``.

In a folder layout, H&E and IHC files are partners when their stems match
(``a.png`` pairs with ``a.jpg``). Image suffixes: png, jpg, jpeg, tif, tiff,
bmp, any case. Hidden files and ``.tmp-*`` files (interrupted writes) are
ignored. Folders that ``tdkstain extract`` and ``tdkstain synth`` write
(``train_IHC_dab``, ``train_IHC_nuclei_map``, ``train_truth``, ...) are never
taken for splits.

HER2 labels come from a manifest's ``label`` column, or else from BCI-style
file names (``00052_test_3+``: the last ``_`` token). A trailing ``_0``
could be a tile index, so names count as labelled only when at least one
stem ends in an unambiguous score such as ``_2+``.
"""

from __future__ import annotations

import csv
import os
import re
import sys
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tdkstain.data.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES
from tdkstain.plumbing.atomic import display_name, read_error
from tdkstain.plumbing.files import named_path_exists
from tdkstain.plumbing.errors import TdkstainError

__all__ = [
    "HER2_LABELS",
    "CheckReport",
    "KnowledgePaths",
    "Layout",
    "Pair",
    "PROBLEM_KINDS",
    "Problem",
    "check_dataset",
    "detect_layout",
    "discover_pairs",
    "discover_unpaired",
    "knowledge_paths",
    "parse_her2_label",
]

# ASCO/CAP HER2 immunohistochemistry scores, as BCI writes them in file names.
HER2_LABELS = ("0", "1+", "2+", "3+")

# Split given to manifest rows without a ``split`` cell, and to BCI images
# that sit directly in ROOT/HE and ROOT/IHC.
DEFAULT_SPLIT = "all"

# A split name becomes part of folder names (``{split}_IHC_dab``).
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_RELEASE_DIR = re.compile(r"^(?P<split>.+)_(?P<stain>HE|IHC)$", re.IGNORECASE)
_MIST_DIR = re.compile(r"^(?P<split>.+)(?P<stain>[AB])$")
# A last name token that tries to be a score: "3+", "4+", "12+".
_SCORE_LIKE = re.compile(r"^\d+\+$")

# Problem kinds that make a dataset unusable as it stands: discover_pairs
# refuses them (the others it skips with a warning). Listing finds only
# folders "unreadable" (files are decoded by check_dataset alone): a split
# folder that cannot be listed would silently lose every pair.
FATAL_KINDS = frozenset({"manifest", "missing_file", "duplicate_stem", "bad_label", "unreadable"})

# Every kind of problem check_dataset reports, with what it means.
PROBLEM_KINDS = {
    "missing_ihc": "an H&E image without an IHC partner",
    "missing_he": "an IHC image without an H&E partner",
    "size_mismatch": "partners of different pixel sizes",
    "unreadable": "a file that cannot be read (permission denied, a broken link, a pipe) or does not decode "
                  "(empty, truncated, corrupt, not an image), or a folder that cannot be listed",
    "duplicate_stem": "two files that would be the same pair (e.g. a.png and a.jpg in one folder)",
    "odd_label": "a file name whose HER2 score is not 0, 1+, 2+ or 3+",
    "missing_label": "a file name without a HER2 score in a dataset whose other names have one",
    "bad_label": "a manifest label that is not 0, 1+, 2+ or 3+",
    "missing_file": "a manifest row naming a file that does not exist",
    "manifest": "a manifest row that cannot be used (empty cell, path outside the CSV's folder, bad split)",
    "no_pairs": "a dataset (or split) without a single image",
}


@dataclass(frozen=True)
class Pair:
    """One registered H&E / IHC tile pair.

    ``stem`` names the pair: the shared file stem (in a manifest, the IHC
    file's stem); knowledge files are named after it.
    """

    stem: str
    he: Path
    ihc: Path
    split: str
    label: str | None = None


@dataclass(frozen=True)
class Layout:
    """How a dataset folder is organised.

    ``name`` is ``"release"``, ``"bci"``, ``"mist"`` or ``"manifest"``;
    ``root`` is the dataset root (knowledge is written under it);
    ``folders`` maps each split to its ``(he_folder, ihc_folder)`` (empty for
    a manifest); a folder that does not exist means its files are missing.
    """

    name: str
    root: Path
    splits: tuple[str, ...]
    folders: tuple[tuple[str, Path, Path], ...] = ()
    manifest: Path | None = None


@dataclass(frozen=True)
class KnowledgePaths:
    """Where ``tdkstain extract`` writes the knowledge of one IHC tile (release folder names)."""

    dab: Path  # {split}_IHC_dab/STEM.png: DAB-only RGB image K_M, uint8
    dab_mask: Path  # {split}_IHC_dab_mask/STEM.png: membrane mask M, uint8 0..255
    nuclei_map: Path  # {split}_IHC_nuclei_map/STEM.png: density K_N, uint8 min-max
    nuclei_map_float: Path  # {split}_IHC_nuclei_map/STEM.tif: density, float32, count-preserving
    nuclei_csv: Path  # {split}_IHC_nuclei/STEM.csv: centroids, header x,y


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: the file, a kind from ``PROBLEM_KINDS``, and what to do."""

    path: Path
    kind: str
    message: str


@dataclass
class CheckReport:
    """Everything :func:`check_dataset` found.

    ``notes`` are ``(path, note)`` conversions that lose information but are
    not errors (e.g. 16-bit images read as 8-bit); ``image_sizes`` counts
    decoded files per ``(height, width)``.
    """

    layout: Layout
    pairs: list[Pair]
    problems: list[Problem]
    notes: list[tuple[Path, str]] = field(default_factory=list)
    image_sizes: Counter = field(default_factory=Counter)
    files_checked: int = 0  # image files decoded (or tried: unreadable ones count)

    @property
    def ok(self) -> bool:
        return not self.problems

    def pairs_per_split(self) -> dict[str, int]:
        counts = Counter(p.split for p in self.pairs)
        return {s: counts.get(s, 0) for s in self.layout.splits}

    def labels_per_split(self) -> dict[str, Counter]:
        """Per split, how many pairs carry each HER2 label (``None`` = unlabelled)."""
        out: dict[str, Counter] = {s: Counter() for s in self.layout.splits}
        for p in self.pairs:
            out.setdefault(p.split, Counter())[p.label] += 1
        return out

    def summary(self) -> str:
        """A few human-readable lines: layout, pairs and labels per split, image sizes, notes."""
        lay = self.layout
        where = f" (manifest {lay.manifest})" if lay.manifest else ""
        lines = [f"{lay.root}: {lay.name} layout{where}, {self.files_checked} image files checked"]
        labels = self.labels_per_split()
        for split, n in self.pairs_per_split().items():
            counts = labels.get(split, Counter())
            known = [f"{lab}: {counts[lab]}" for lab in HER2_LABELS if counts.get(lab)]
            if counts.get(None):
                known.append(f"unlabelled: {counts[None]}")
            lines.append(f"  split {split}: {n} pairs" + (f"   HER2 {', '.join(known)}" if known else ""))
        if self.image_sizes:
            sizes = ", ".join(f"{w}x{h} ({n})" for (h, w), n in self.image_sizes.most_common(5))
            more = len(self.image_sizes) - 5
            lines.append(f"  image sizes (width x height, files): {sizes}" + (f" and {more} more" if more > 0 else ""))
        grouped: dict[str, list[Path]] = defaultdict(list)
        for path, note in self.notes:
            grouped[note].append(path)
        for note, paths in grouped.items():
            lines.append(f"  note: {note}: {len(paths)} file(s), e.g. {_display(paths[0], lay.root)}")
        lines.append(f"  problems: {len(self.problems)}" if self.problems else "  no problems found")
        return "\n".join(display_name(line) for line in lines)

    def problem_lines(self) -> list[str]:
        """One line per problem: kind, the file (relative to the root), what is wrong.

        Each is one line whatever the file names hold: a newline in a name is
        shown as ``\\n``, bytes that are not UTF-8 as U+FFFD (``display_name``).
        """
        width = max((len(p.kind) for p in self.problems), default=0)
        return [display_name(f"{p.kind:<{width}}  {_display(p.path, self.layout.root)}: {p.message}")
                for p in self.problems]


# --------------------------------------------------------------------------- public API


def parse_her2_label(stem: str) -> str | None:
    """The HER2 score a BCI-style stem ends with, e.g. ``"00052_test_3+"`` -> ``"3+"``.

    The label is the last ``_``-separated token when it is one of
    ``"0", "1+", "2+", "3+"``; otherwise ``None``.
    """
    if "_" not in stem:
        return None
    token = stem.rsplit("_", 1)[1]
    return token if token in HER2_LABELS else None


def knowledge_paths(root: str | os.PathLike, split: str, stem: str) -> KnowledgePaths:
    """Paths of the knowledge files of one IHC tile, the same for every layout."""
    root = Path(root)
    return KnowledgePaths(
        dab=root / f"{split}_IHC_dab" / f"{stem}.png",
        dab_mask=root / f"{split}_IHC_dab_mask" / f"{stem}.png",
        nuclei_map=root / f"{split}_IHC_nuclei_map" / f"{stem}.png",
        nuclei_map_float=root / f"{split}_IHC_nuclei_map" / f"{stem}.tif",
        nuclei_csv=root / f"{split}_IHC_nuclei" / f"{stem}.csv",
    )


def detect_layout(root: str | os.PathLike, *, manifest: str | os.PathLike | None = None) -> Layout:
    """Find how ``root`` is organised.

    ``root`` may be a dataset folder or a CSV manifest (then its folder is
    the root). A relative ``manifest`` is looked up from the working folder,
    then inside ``root``.

    Raises:
        TdkstainError: no layout (or more than one) matches; the message lists
            the layouts tdkstain reads and the folders it saw.
    """
    root = Path(root)
    if root.suffix.lower() == ".csv" and root.is_file():
        # The CSV itself was named: its folder is the dataset root.
        manifest, root = (root if manifest is None else manifest), root.parent
    if manifest is not None:
        manifest = _locate_manifest(Path(manifest), root)
        splits = sorted({row["split"] for row in _read_manifest_rows(manifest)[1]})
        return Layout("manifest", root, tuple(splits), (), manifest)
    if not os.path.exists(root):
        _check_stat(root)  # a symbolic link loop, a folder above it that cannot be entered
        raise TdkstainError(f"{root}: no such folder; pass the dataset folder (or a CSV manifest).")
    if not os.path.isdir(root):
        raise TdkstainError(f"{root}: not a folder; pass the dataset folder, or a CSV manifest ending in .csv.")
    try:
        with os.scandir(root) as entries:
            next(entries, None)
    except OSError as err:  # e.g. no read permission: not "no layout found"
        raise read_error(root, err, folder=True) from err
    found = [lay for lay in (_release_layout(root), _bci_layout(root), _mist_layout(root)) if lay is not None]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        names = " and ".join(lay.name for lay in found)
        raise TdkstainError(
            f"{root}: holds folders of two layouts ({names}); keep one per dataset folder, "
            "or list the pairs in a CSV manifest (--manifest)."
        )
    raise TdkstainError(_no_layout_message(root))


def discover_pairs(
    root: str | os.PathLike,
    *,
    split: str | None = None,
    manifest: str | os.PathLike | None = None,
    allow_outside: bool = False,
) -> list[Pair]:
    """All H&E / IHC pairs of a dataset, sorted by ``(split, stem)``.

    Args:
        root: dataset folder in any layout, or a CSV manifest.
        split: only this split (an empty list when the dataset has none of it).
        manifest: CSV with columns ``he,ihc[,label][,split]``, paths relative
            to its folder.
        allow_outside: let manifest paths be absolute or leave the CSV's folder.

    Files without a partner are skipped with a warning (``tdkstain check``
    lists them). Duplicate stems, bad manifest rows and bad manifest labels
    raise :class:`TdkstainError` listing every one of them. Nothing is
    decoded here; :func:`check_dataset` does that.
    """
    layout = detect_layout(root, manifest=manifest)
    pairs, problems, _ = _scan(layout, split, allow_outside)
    fatal = [p for p in problems if p.kind in FATAL_KINDS]
    if fatal:
        shown = "\n".join(f"  {p.kind}: {_display(p.path, layout.root)}: {p.message}" for p in fatal[:20])
        more = f"\n  ... and {len(fatal) - 20} more" if len(fatal) > 20 else ""
        raise TdkstainError(
            f"{layout.root}: {len(fatal)} problem(s) to fix before the pairs can be used:\n{shown}{more}"
        )
    unpaired = [p for p in problems if p.kind in ("missing_he", "missing_ihc")]
    if unpaired:
        examples = ", ".join(_display(p.path, layout.root) for p in unpaired[:3])
        warnings.warn(
            f"{layout.root}: {len(unpaired)} image(s) without a partner were skipped (e.g. {examples}); "
            f"'tdkstain check {layout.root}' lists them all (CycleGAN trains on unpaired folders: options.unpaired=true)",
            UserWarning,
            stacklevel=2,
        )
    return pairs


def discover_unpaired(
    root: str | os.PathLike,
    *,
    split: str,
    manifest: str | os.PathLike | None = None,
    allow_outside: bool = False,
) -> tuple[list[Path], list[Path]]:
    """The H&E files and the IHC files of one split, each side listed on its own.

    For unpaired training (CycleGAN with ``options.unpaired``): stems need
    not match, e.g. MIST-style ``trainA/a.png, b.png`` and ``trainB/x.png,
    y.png``, or release-style ``train_HE/`` and ``train_IHC/`` with different
    names. The layout is found as :func:`detect_layout` does; a manifest
    gives the files of its rows. Both lists are sorted by file name.

    Raises:
        TdkstainError: the split has no H&E or no IHC image (naming the folder).
    """
    layout = detect_layout(root, manifest=manifest)
    if layout.name == "manifest":
        pairs = discover_pairs(root, split=split, manifest=manifest, allow_outside=allow_outside)
        he_files, ihc_files = sorted({p.he for p in pairs}), sorted({p.ihc for p in pairs})
        he_where = ihc_where = f"{layout.manifest} (split {split})"
    else:
        chosen = [(he_dir, ihc_dir) for s, he_dir, ihc_dir in layout.folders if s == split]
        if not chosen:
            raise TdkstainError(
                f"{layout.root}: no split '{split}' in this {layout.name} layout (splits: {', '.join(layout.splits) or 'none'})"
            )
        he_dir, ihc_dir = chosen[0]
        (he_files, he_error), (ihc_files, ihc_error) = _list_images(he_dir), _list_images(ihc_dir)
        for folder, error in ((he_dir, he_error), (ihc_dir, ihc_error)):
            if error is not None:
                raise TdkstainError(f"{folder}: {error}")
        he_where, ihc_where = str(he_dir), str(ihc_dir)
    if not he_files:
        raise TdkstainError(f"{he_where}: no H&E images ({', '.join(IMAGE_SUFFIXES)}) to train on")
    if not ihc_files:
        raise TdkstainError(f"{ihc_where}: no IHC images ({', '.join(IMAGE_SUFFIXES)}) to train on")
    return he_files, ihc_files


def check_dataset(
    root: str | os.PathLike,
    *,
    manifest: str | os.PathLike | None = None,
    split: str | None = None,
    allow_outside: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    progress: bool = True,
) -> CheckReport:
    """Find every problem of a dataset in one pass.

    Lists the pairs as :func:`discover_pairs` does, then decodes every image
    file completely (threads; Pillow and zlib release the GIL) to catch
    empty, truncated and non-image files, and compares partner sizes.

    Args:
        split: check only this split (an error when the dataset has none of it).
        max_pixels: per-image pixel limit (see ``tdkstain.data.images``).
        workers: decoding threads; default ``min(8, CPU count)``.
        progress: a progress bar on stderr (shown only on a terminal).

    Returns:
        A :class:`CheckReport`; ``report.ok`` is True when nothing is wrong.

    Raises:
        TdkstainError: no layout found, an unreadable manifest, or an unknown split.
    """
    layout = detect_layout(root, manifest=manifest)
    if split is not None and split not in layout.splits:
        raise TdkstainError(
            f"{layout.root}: no split {split!r}; splits found: {', '.join(layout.splits) or 'none'}."
        )
    pairs, problems, files = _scan(layout, split, allow_outside)
    shapes, notes, unreadable = _decode_files(files, max_pixels, workers, progress)
    for path in files:
        if path in unreadable:
            problems.append(Problem(path, "unreadable", unreadable[path]))
    problems.extend(_size_mismatches(pairs, shapes, layout.root))
    if not files and not problems:
        where = f"split {split!r}" if split is not None else "the dataset"
        problems.append(Problem(layout.root, "no_pairs", f"{where} holds no image files ({layout.name} layout)"))
    problems.sort(key=lambda p: (str(p.path), p.kind))
    notes.sort(key=lambda n: str(n[0]))
    sizes = Counter(shapes.values())
    return CheckReport(layout, pairs, problems, notes, sizes, files_checked=len(files))


def _decode_files(
    files: list[Path], max_pixels: int, workers: int | None, progress: bool
) -> tuple[dict[Path, tuple[int, int]], list[tuple[Path, str]], dict[Path, str]]:
    """Decode every file completely on threads: ``(shapes, notes, unreadable)``.

    ``shapes`` maps each readable file to its ``(height, width)``, ``notes``
    lists ``(file, note)`` of the decoder, ``unreadable`` maps each file that
    does not decode to the reason (without its path).
    """
    from tqdm import tqdm

    # the decoder is only needed here
    from tdkstain.data.images import read_rgb_with_notes

    shapes: dict[Path, tuple[int, int]] = {}
    notes: list[tuple[Path, str]] = []
    unreadable: dict[Path, str] = {}

    def decode(path: Path) -> tuple[Path, tuple[int, int] | None, list[str], str | None]:
        try:
            rgb, file_notes = read_rgb_with_notes(path, max_pixels=max_pixels)
        except TdkstainError as err:
            return path, None, [], _strip_path(str(err), path)
        except OSError as err:  # the reader words these itself; anything left is still this file's problem
            return path, None, [], _strip_path(str(read_error(path, err)), path)
        return path, rgb.shape[:2], file_notes, None

    n_workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=max(1, n_workers))
    try:
        futures = [pool.submit(decode, f) for f in files]
        bar = tqdm(
            as_completed(futures),
            total=len(futures),
            desc="decoding images",
            unit="file",
            file=sys.stderr,
            disable=None if progress else True,
        )
        for future in bar:
            path, shape, file_notes, error = future.result()
            if error is not None:
                unreadable[path] = error
            else:
                shapes[path] = shape
                notes.extend((path, n) for n in file_notes)
    finally:
        # On Ctrl-C, drop the queued files instead of decoding them all first.
        pool.shutdown(wait=True, cancel_futures=True)
    return shapes, notes, unreadable


def _size_mismatches(pairs: list[Pair], shapes: dict[Path, tuple[int, int]], root: Path) -> list[Problem]:
    """A problem for each pair whose partners both decoded but differ in size."""
    problems = []
    for pair in pairs:
        he_shape, ihc_shape = shapes.get(pair.he), shapes.get(pair.ihc)
        if he_shape is not None and ihc_shape is not None and he_shape != ihc_shape:
            problems.append(
                Problem(
                    pair.he,
                    "size_mismatch",
                    f"H&E is {he_shape[1]}x{he_shape[0]} but its IHC partner "
                    f"{_display(pair.ihc, root)} is {ihc_shape[1]}x{ihc_shape[0]} (width x height); "
                    "partners must be registered tiles of one size",
                )
            )
    return problems


# --------------------------------------------------------------------------- layouts


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and os.path.isdir(p))
    except OSError:
        return []


def _image_files(folder: Path) -> list[Path]:
    """The image files of ``folder`` (none when it is missing or cannot be listed; see :func:`_list_images`)."""
    return _list_images(folder)[0]


def _list_images(folder: Path) -> tuple[list[Path], str | None]:
    """``(files, why the folder cannot be listed or None)``: entries with an image suffix, sorted.

    Every entry that is not a folder counts, regular file or not: a broken
    symbolic link or a pipe named ``x.png`` is meant as an image, and
    decoding it says what is wrong with it, rather than it vanishing and its
    partner being reported as "without a partner".
    """
    if not os.path.isdir(folder):
        return [], None
    try:
        names = os.listdir(folder)
    except OSError as err:
        return [], _strip_path(str(read_error(folder, err, folder=True)), folder)
    files = [
        folder / name
        for name in names
        if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES and not os.path.isdir(folder / name)
    ]
    return sorted(files), None


def _release_layout(root: Path) -> Layout | None:
    he: dict[str, Path] = {}
    ihc: dict[str, Path] = {}
    for d in _subdirs(root):
        m = _RELEASE_DIR.match(d.name)
        if m:
            (he if m["stain"].upper() == "HE" else ihc)[m["split"]] = d
    splits = sorted(he.keys() | ihc.keys())
    if not splits:
        return None
    folders = tuple(
        (s, he.get(s, root / f"{s}_HE"), ihc.get(s, root / f"{s}_IHC")) for s in splits
    )
    return Layout("release", root, tuple(splits), folders)


def _bci_layout(root: Path) -> Layout | None:
    by_name = {d.name.upper(): d for d in _subdirs(root)}
    if "HE" not in by_name and "IHC" not in by_name:
        return None
    he_root = by_name.get("HE", root / "HE")
    ihc_root = by_name.get("IHC", root / "IHC")
    splits = sorted({d.name for d in _subdirs(he_root)} | {d.name for d in _subdirs(ihc_root)})
    folders = [(s, he_root / s, ihc_root / s) for s in splits]
    if _image_files(he_root) or _image_files(ihc_root):
        folders.append((DEFAULT_SPLIT, he_root, ihc_root))
    folders.sort()
    return Layout("bci", root, tuple(f[0] for f in folders), tuple(folders))


def _mist_layout(root: Path) -> Layout | None:
    names = {d.name: d for d in _subdirs(root)}
    splits = sorted(
        m["split"] for n in names if (m := _MIST_DIR.match(n)) and m["stain"] == "A" and f"{m['split']}B" in names
    )
    if not splits:
        return None
    folders = tuple((s, names[f"{s}A"], names[f"{s}B"]) for s in splits)
    return Layout("mist", root, tuple(splits), folders)


def _no_layout_message(root: Path) -> str:
    seen = [d.name for d in _subdirs(root)]
    hint = ""
    for child in _subdirs(root):
        if any(f(child) for f in (_release_layout, _bci_layout, _mist_layout)):
            hint = f"\nDid you mean {child}? It holds a dataset layout."
            break
    listing = ", ".join(seen[:12]) + (", ..." if len(seen) > 12 else "") if seen else "no folders"
    return (
        f"{root}: no paired H&E/IHC layout found. tdkstain reads:\n"
        "  release   ROOT/{split}_HE/ and ROOT/{split}_IHC/   (e.g. train_HE, train_IHC)\n"
        "  BCI       ROOT/HE/{split}/ and ROOT/IHC/{split}/   (e.g. HE/train, IHC/train)\n"
        "  MIST      ROOT/{split}A/ and ROOT/{split}B/        (A = H&E, B = IHC; e.g. trainA, trainB)\n"
        "  manifest  a CSV with columns he,ihc[,label][,split]: --manifest pairs.csv\n"
        f"Found in {root}: {listing}.{hint}"
    )


# --------------------------------------------------------------------------- scanning


def _scan(layout: Layout, split: str | None, allow_outside: bool) -> tuple[list[Pair], list[Problem], list[Path]]:
    """Pairs, structural problems (nothing decoded) and every image file to decode."""
    if layout.name == "manifest":
        return _scan_manifest(layout, split, allow_outside)
    return _scan_folders(layout, split)


def _scan_folders(layout: Layout, split: str | None) -> tuple[list[Pair], list[Problem], list[Path]]:
    problems: list[Problem] = []
    # stem -> file, per (split, stain); every split is listed so that labels
    # (and hence a pair's identity) do not depend on the split asked for.
    listed: dict[tuple[str, str], dict[str, Path]] = {}
    # (split, stain) whose folder cannot be listed: its files are unknown, not missing.
    unlisted: set[tuple[str, str]] = set()
    for s, he_dir, ihc_dir in layout.folders:
        for stain, folder in (("he", he_dir), ("ihc", ihc_dir)):
            by_stem: dict[str, Path] = {}
            found, unlistable = _list_images(folder)
            if unlistable is not None:
                unlisted.add((s, stain))
                if s == split or split is None:
                    problems.append(Problem(folder, "unreadable", unlistable))
            for f in found:
                if f.stem in by_stem:
                    if s == split or split is None:
                        problems.append(
                            Problem(
                                f,
                                "duplicate_stem",
                                f"same stem as {by_stem[f.stem].name} in the same folder; "
                                "keep one file per stem (rename or remove the other)",
                            )
                        )
                    continue
                by_stem[f.stem] = f
            listed[(s, stain)] = by_stem
    all_stems = [stem for files in listed.values() for stem in files]
    labels, label_problems = _labels_from_names(all_stems)

    pairs: list[Pair] = []
    files: list[Path] = []
    for s, he_dir, ihc_dir in layout.folders:
        if split is not None and s != split:
            continue
        he_files, ihc_files = listed[(s, "he")], listed[(s, "ihc")]
        files += list(he_files.values()) + list(ihc_files.values())
        for stem in sorted(he_files.keys() | ihc_files.keys()):
            he, ihc = he_files.get(stem), ihc_files.get(stem)
            if he is not None and ihc is not None:
                pairs.append(Pair(stem, he, ihc, s, labels.get(stem)))
            elif (s, "ihc" if he is not None else "he") in unlisted:
                pass  # the partner's folder could not be listed (reported once, above): not "no partner"
            elif he is not None:
                problems.append(
                    Problem(he, "missing_ihc", f"no IHC partner (expected {_display(ihc_dir, layout.root)}/{stem}.*)")
                )
            else:
                assert ihc is not None
                problems.append(
                    Problem(ihc, "missing_he", f"no H&E partner (expected {_display(he_dir, layout.root)}/{stem}.*)")
                )
            if stem in label_problems:
                kind, message = label_problems[stem]
                problems.append(Problem(ihc if ihc is not None else he, kind, message))  # type: ignore[arg-type]
    pairs.sort(key=lambda p: (p.split, p.stem))
    return pairs, problems, files


def _labels_from_names(stems: list[str]) -> tuple[dict[str, str | None], dict[str, tuple[str, str]]]:
    """Labels from BCI-style names, and per-stem label problems.

    A dataset counts as labelled by name when some stem ends in ``_<digit>+``;
    a bare trailing ``_0`` alone could be a tile index and is not trusted.
    """
    labelled = any(_SCORE_LIKE.match(s.rsplit("_", 1)[1]) for s in stems if "_" in s)
    if not labelled:
        return {}, {}
    labels: dict[str, str | None] = {}
    problems: dict[str, tuple[str, str]] = {}
    for stem in stems:
        label = parse_her2_label(stem)
        labels[stem] = label
        if label is not None:
            continue
        token = stem.rsplit("_", 1)[1] if "_" in stem else ""
        if _SCORE_LIKE.match(token):
            problems[stem] = ("odd_label", f"HER2 score {token!r} in the name is not one of {', '.join(HER2_LABELS)}")
        else:
            problems[stem] = (
                "missing_label",
                "no HER2 score at the end of the name, unlike the other files (expected e.g. NAME_2+)",
            )
    return labels, problems


def _locate_manifest(manifest: Path, root: Path) -> Path:
    if manifest.is_file():
        return manifest
    inside = root / manifest
    if not manifest.is_absolute() and root.is_dir() and inside.is_file():
        return inside
    tried = f"{manifest}" + (f" or {inside}" if not manifest.is_absolute() else "")
    raise TdkstainError(f"manifest {tried}: no such file; pass the CSV's path.")


def _read_manifest_rows(manifest: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows (``he``, ``ihc``, ``label``, ``split``, ``line``) of a manifest, cells stripped."""
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise TdkstainError(f"{manifest}: not UTF-8 text ({err}); save the manifest as a UTF-8 CSV.") from err
    except OSError as err:
        raise TdkstainError(f"{manifest}: cannot be read ({err.strerror}).") from err
    reader = csv.reader(text.splitlines())
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise TdkstainError(f"{manifest}: empty; expected a header line 'he,ihc[,label][,split]' and one row per pair.")
    missing = [c for c in ("he", "ihc") if c not in header]
    if missing:
        raise TdkstainError(
            f"{manifest}: no column {' or '.join(repr(c) for c in missing)} in the header {','.join(header)!r}; "
            "expected columns he,ihc[,label][,split]."
        )
    index = {name: header.index(name) for name in ("he", "ihc", "label", "split") if name in header}
    rows = []
    for line, cells in enumerate(reader, start=2):
        if not any(c.strip() for c in cells):
            continue
        row = {name: (cells[i].strip() if i < len(cells) else "") for name, i in index.items()}
        row.setdefault("label", "")
        row["split"] = row.get("split") or DEFAULT_SPLIT
        row["line"] = str(line)
        rows.append(row)
    return header, rows


def _scan_manifest(layout: Layout, split: str | None, allow_outside: bool) -> tuple[list[Pair], list[Problem], list[Path]]:
    assert layout.manifest is not None
    manifest = layout.manifest
    base = manifest.parent
    _, rows = _read_manifest_rows(manifest)
    problems: list[Problem] = []
    pairs: list[Pair] = []
    files: list[Path] = []
    name_labels, _ = _labels_from_names([Path(r["ihc"]).stem for r in rows if r["ihc"]])
    seen: dict[tuple[str, str], str] = {}
    for row in rows:
        if split is not None and row["split"] != split:
            continue
        where = f"line {row['line']}"
        if not _SPLIT_NAME.match(row["split"]):
            problems.append(
                Problem(manifest, "manifest", f"{where}: split {row['split']!r} must be letters, digits, '.', '_' or '-'")
            )
            continue
        resolved: dict[str, Path] = {}
        for column in ("he", "ihc"):
            value = row[column]
            if not value:
                problems.append(Problem(manifest, "manifest", f"{where}: the {column!r} cell is empty"))
                continue
            path, reason = _manifest_path(value, base, allow_outside)
            if reason:
                problems.append(Problem(manifest, "manifest", f"{where}: {column} path {value!r} {reason}"))
                continue
            if not named_path_exists(path):
                problems.append(Problem(path, "missing_file", f"listed in {manifest.name} {where} ({column}) but not found"))
                continue
            if os.path.isdir(path):
                problems.append(Problem(manifest, "manifest", f"{where}: {column} path {value!r} is a folder, not an image file"))
                continue
            # A file, or something that is not one (a broken link, a pipe): decoding names what is wrong.
            resolved[column] = path
        files += list(resolved.values())
        label: str | None = row["label"] or None
        if label is not None and label not in HER2_LABELS:
            problems.append(
                Problem(manifest, "bad_label", f"{where}: label {label!r} is not one of {', '.join(HER2_LABELS)}")
            )
            label = None
        if len(resolved) < 2:
            continue
        stem = resolved["ihc"].stem
        key = (row["split"], stem)
        if key in seen:
            problems.append(
                Problem(
                    manifest,
                    "duplicate_stem",
                    f"{where}: IHC stem {stem!r} in split {row['split']!r} already on {seen[key]}; "
                    "knowledge files are named by stem, so stems must be unique per split",
                )
            )
            continue
        seen[key] = where
        if label is None and not row["label"]:
            label = name_labels.get(stem)
        pairs.append(Pair(stem, resolved["he"], resolved["ihc"], row["split"], label))
    pairs.sort(key=lambda p: (p.split, p.stem))
    return pairs, problems, list(dict.fromkeys(files))


def _manifest_path(value: str, base: Path, allow_outside: bool) -> tuple[Path, str]:
    """A manifest cell as a path under ``base``, or the reason it is refused.

    Containment is judged on the written path (``os.path.normpath``), not on
    resolved symlinks, so a linked data folder inside the root is fine.
    """
    raw = Path(value)
    if raw.is_absolute() or value.startswith(("/", "\\")) or (len(value) > 1 and value[1] == ":"):
        if not allow_outside:
            return raw, "is absolute; write it relative to the CSV's folder (or allow paths outside it)"
        return raw, ""
    normal = os.path.normpath(value.replace("\\", "/"))
    if normal == ".." or normal.startswith("../"):
        if not allow_outside:
            return raw, "leaves the CSV's folder ('..'); move the CSV up or allow paths outside it"
    return base / normal, ""


def _check_stat(path: Path) -> None:
    """Raise a read error when ``path`` cannot even be looked at (a symbolic link loop, permission denied)."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as err:
        raise read_error(path, err) from err


def _display(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _strip_path(message: str, path: Path) -> str:
    """A TdkstainError message without its leading ``PATH: `` (the report prints the path)."""
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message
