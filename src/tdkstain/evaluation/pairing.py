"""Pair real and generated IHC files by stem, and read HER2 labels.

Generated tiles are matched to real ones by file stem (name without
extension). Generators written on the pix2pix/CycleGAN code base save
``STEM_fake_B.png`` (and ``STEM_real_B.png`` beside it); those suffixes are
stripped so their result folders pair without renaming. Files present on one
side only are reported, never silently dropped.

Labels come from a CSV (``stem,label``) or from BCI-style names whose last
``_`` token is the score (``00052_test_3+``, ``pairs.parse_her2_label``).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from tdkstain.plumbing.errors import TdkstainError
from tdkstain.data.images import IMAGE_SUFFIXES
from tdkstain.data.pairs import HER2_LABELS, parse_her2_label

# Suffixes that the pix2pix / CycleGAN / CUT test scripts append to a stem.
GENERATOR_SUFFIXES = ("_fake_B", "_fake", "_real_B", "_real")
# Header names accepted for the two columns of a labels CSV.
_STEM_COLUMNS = ("stem", "name", "file", "filename", "image", "path")
_LABEL_COLUMNS = ("label", "her2", "score", "her2_score", "class")


@dataclass(frozen=True)
class ImagePair:
    """One real / generated IHC tile pair (and the H&E tile when given)."""

    stem: str
    real: Path
    fake: Path
    he: Path | None = None
    label: str | None = None  # "0", "1+", "2+", "3+" or None


@dataclass
class Pairing:
    """Result of ``pair_by_stem``: the pairs plus everything that did not pair."""

    pairs: list[ImagePair]
    unpaired_real: list[str] = field(default_factory=list)  # stems with no generated tile
    unpaired_fake: list[str] = field(default_factory=list)  # generated stems with no real tile
    missing_he: list[str] = field(default_factory=list)  # paired stems with no H&E tile (only with he_dir)
    unlabelled: list[str] = field(default_factory=list)  # paired stems without a label
    # paired stems left out because another compared method did not generate them (set by the runner)
    not_in_every_method: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """JSON-able counts and (sorted) stem lists."""
        return {
            "pairs": len(self.pairs),
            "unpaired_real": sorted(self.unpaired_real),
            "unpaired_fake": sorted(self.unpaired_fake),
            "missing_he": sorted(self.missing_he),
            "unlabelled": sorted(self.unlabelled),
            "not_in_every_method": sorted(self.not_in_every_method),
        }


def normalise_label(value: str, source: str = "label") -> str:
    """``"0".."3+"`` as written, or a bare score ``"1"``/``"2"``/``"3"`` -> ``"1+"``...; else TdkstainError."""
    text = str(value).strip()
    if text in HER2_LABELS:
        return text
    if text in ("1", "2", "3"):
        return text + "+"
    raise TdkstainError(f"{source}: HER2 label {value!r} is not one of 0, 1+, 2+, 3+")


def strip_generator_suffix(stem: str) -> str:
    """``"x_fake_B"`` -> ``"x"``; stems without a known suffix are returned unchanged."""
    for suffix in GENERATOR_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def list_images(folder: str | os.PathLike, what: str) -> dict[str, Path]:
    """``stem -> path`` of the image files directly in ``folder`` (sorted, hidden files ignored).

    Raises TdkstainError if the folder is missing, holds no image, or two files share a stem.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise TdkstainError(f"{what} folder {folder} does not exist or is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in found:
            raise TdkstainError(
                f"{what} folder {folder}: {found[path.stem].name} and {path.name} share the stem {path.stem!r}; "
                "keep one of them"
            )
        found[path.stem] = path
    if not found:
        raise TdkstainError(
            f"{what} folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)}); point it at the tiles themselves"
        )
    return found


def read_labels_csv(path: str | os.PathLike) -> dict[str, str]:
    """``stem -> HER2 label`` from a CSV.

    Accepted: a header naming a stem column (stem/name/file/filename/image/path;
    paths and extensions are reduced to the stem) and a label column
    (label/her2/score/her2_score/class), or two columns without header.
    Labels ``0, 1+, 2+, 3+`` (bare ``1, 2, 3`` read as ``1+, 2+, 3+``).
    """
    path = Path(path)
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except OSError as err:
        raise TdkstainError(f"labels CSV {path}: cannot read ({err})") from None
    rows = [r for r in rows if r and any(cell.strip() for cell in r)]
    if not rows:
        raise TdkstainError(f"labels CSV {path} is empty; write one 'stem,label' line per tile")
    header = [cell.strip().lower() for cell in rows[0]]
    stem_col = next((header.index(c) for c in _STEM_COLUMNS if c in header), None)
    label_col = next((header.index(c) for c in _LABEL_COLUMNS if c in header), None)
    if stem_col is not None and label_col is not None:
        body, first_line = rows[1:], 2
    elif len(rows[0]) >= 2 and _is_label(rows[0][1]):
        stem_col, label_col, body, first_line = 0, 1, rows, 1
    else:
        raise TdkstainError(
            f"labels CSV {path}: header {rows[0]} names no stem column ({'/'.join(_STEM_COLUMNS)}) and label column "
            f"({'/'.join(_LABEL_COLUMNS)}); write 'stem,label' as the first line"
        )
    labels: dict[str, str] = {}
    for number, row in enumerate(body, start=first_line):
        if len(row) <= max(stem_col, label_col):
            raise TdkstainError(f"labels CSV {path}, line {number}: expected at least {max(stem_col, label_col) + 1} columns")
        name = Path(row[stem_col].strip())
        stem = name.stem if name.suffix.lower() in IMAGE_SUFFIXES else name.name
        label = normalise_label(row[label_col], f"labels CSV {path}, line {number}")
        if stem in labels and labels[stem] != label:
            raise TdkstainError(f"labels CSV {path}, line {number}: {stem!r} labelled both {labels[stem]} and {label}")
        labels[stem] = label
    return labels


def _is_label(text: str) -> bool:
    try:
        normalise_label(text)
        return True
    except TdkstainError:
        return False


def label_for(stem: str, labels: dict[str, str] | None) -> str | None:
    """The label of ``stem``: from ``labels`` when given (also tried without generator suffixes), else from its name."""
    if labels is not None:
        return labels.get(stem, labels.get(strip_generator_suffix(stem)))
    return parse_her2_label(stem)


def pair_by_stem(
    real_dir: str | os.PathLike,
    fake_dir: str | os.PathLike,
    he_dir: str | os.PathLike | None = None,
    labels: dict[str, str] | None = None,
) -> Pairing:
    """Pair the images of ``real_dir`` and ``fake_dir`` by stem (generator suffixes stripped).

    Args:
        real_dir: folder of real IHC tiles.
        fake_dir: folder of generated IHC tiles.
        he_dir: optional folder of the H&E input tiles (for the report's grids).
        labels: ``stem -> label``; None reads BCI-style labels from the names.
    Returns:
        ``Pairing`` with pairs sorted by stem. Raises TdkstainError when nothing pairs.
    """
    real = list_images(real_dir, "real IHC")
    fake_files = list_images(fake_dir, "generated IHC")
    fake: dict[str, Path] = {}
    for stem, path in fake_files.items():
        key = stem if stem in real else strip_generator_suffix(stem)
        if key in fake:
            raise TdkstainError(
                f"generated IHC folder {fake_dir}: {fake[key].name} and {path.name} both match the real tile {key!r}"
            )
        fake[key] = path
    he = list_images(he_dir, "H&E") if he_dir is not None else None
    stems = sorted(set(real) & set(fake))
    if not stems:
        raise TdkstainError(
            f"no file of {fake_dir} has the stem of a file in {real_dir} (e.g. {next(iter(fake_files))!r} vs "
            f"{next(iter(real))!r}); generated tiles must keep the real tile's name"
        )
    pairs = [
        ImagePair(s, real[s], fake[s], he.get(s) if he is not None else None, label_for(s, labels))
        for s in stems
    ]
    return Pairing(
        pairs=pairs,
        unpaired_real=sorted(set(real) - set(fake)),
        unpaired_fake=sorted(fake_files[k].stem for k in set(fake) - set(real)),
        missing_he=[s for s in stems if he is not None and s not in he],
        unlabelled=[p.stem for p in pairs if p.label is None],
    )
