"""Records shared by the extraction modules: per-tile results, the run summary, centroid CSVs, extraction.json."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from tdkstain import __version__
from tdkstain.plumbing.atomic import display_name, read_error, safe_strings, write_text_atomic
from tdkstain.plumbing.errors import TdkstainError

EXTRACTION_JSON = "extraction.json"
REPORT_DIR = "extraction_report"
RECORD_FORMAT = 1
# HER2 scores in the order the ASCO/CAP guideline ranks them.
HER2_ORDER: tuple[str, ...] = ("0", "1+", "2+", "3+")
# Decimal places of centroid coordinates in the CSV: 1/100 px is far below
# any detector's precision and keeps files small.
CENTROID_DECIMALS = 2


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class TileResult:
    """What happened to one IHC tile, and the two numbers the quality report plots."""

    split: str | None
    stem: str
    label: str | None
    ihc: str
    status: str  # "extracted" | "skipped" (up to date) | "bad"
    error: str | None = None
    stained_fraction: float = float("nan")  # membrane-stained fraction of the tissue, [0, 1]
    nuclei_count: int = -1


@dataclass
class ExtractionSummary:
    """The outcome of ``extract_dataset``."""

    root: Path
    params: Any  # knowledge.ExtractionParams
    tiles: list[TileResult]
    output_dirs: list[Path]
    calibration: dict | None = None
    report: Path | None = None
    seconds: float = 0.0

    @property
    def extracted(self) -> int:
        return sum(t.status == "extracted" for t in self.tiles)

    @property
    def skipped(self) -> int:
        return sum(t.status == "skipped" for t in self.tiles)

    @property
    def bad(self) -> list[TileResult]:
        return [t for t in self.tiles if t.status == "bad"]

    def describe(self) -> str:
        lines = [
            f"{len(self.tiles)} IHC tiles: {self.extracted} extracted, {self.skipped} up to date (skipped), "
            f"{len(self.bad)} bad, in {self.seconds:.1f} s",
            f"parameters: {self.root / EXTRACTION_JSON}",
        ]
        lines += [f"outputs:    {d}" for d in self.output_dirs]
        if self.report is not None:
            lines.append(f"report:     {self.report}")
        for tile in self.bad:
            # The reader's message starts with the file already; say it once.
            error = tile.error or ""
            lines.append(f"bad tile:   {error if error.startswith(tile.ihc) else f'{tile.ihc}: {error}'}")
        # One line each, printable whatever the file names hold (not UTF-8, a newline).
        return "\n".join(display_name(line) for line in lines)


# --------------------------------------------------------------------------- file helpers


def format_centroids_csv(centroids: np.ndarray) -> str:
    """CSV text for ``(N, 2)`` ``(row, col)`` centroids: header ``x,y``, x = column, y = row."""
    centroids = np.asarray(centroids, dtype=np.float64).reshape(-1, 2)
    out = io.StringIO()
    out.write("x,y\n")
    for row, col in centroids:
        out.write(f"{col:.{CENTROID_DECIMALS}f},{row:.{CENTROID_DECIMALS}f}\n")
    return out.getvalue()


def parse_centroids_csv(text: str, source: str = "<csv>") -> np.ndarray:
    """``(N, 2)`` float64 ``(row, col)`` from CSV text with at least columns ``x`` and ``y``."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "x" not in reader.fieldnames or "y" not in reader.fieldnames:
        raise TdkstainError(f"{source}: a centroid CSV needs a header with columns x,y (x = column, y = row)")
    rows = []
    for line_no, record in enumerate(reader, start=2):
        try:
            rows.append((float(record["y"]), float(record["x"])))
        except (TypeError, ValueError):
            raise TdkstainError(f"{source}: line {line_no} has no numeric x,y: {record}") from None
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def read_centroids_csv(path: str | os.PathLike) -> np.ndarray:
    """Read a centroid CSV written by ``tdkstain extract`` (or the same format): ``(N, 2)`` ``(row, col)``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise TdkstainError(f"{path}: cannot read centroids ({err})") from None
    return parse_centroids_csv(text, str(path))


def _is_current(output: Path, input_mtime_ns: int) -> bool:
    try:
        return output.stat().st_mtime_ns >= input_mtime_ns
    except FileNotFoundError:
        return False


# --------------------------------------------------------------------------- extraction.json


def read_extraction_record(root: str | os.PathLike) -> dict | None:
    """The content of ``ROOT/extraction.json``, or None if the dataset was never extracted by tdkstain."""
    path = Path(root) / EXTRACTION_JSON
    if not path.exists():
        return None
    try:
        data = path.read_bytes()
    except OSError as err:
        raise read_error(path, err) from None
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TdkstainError(f"{path}: not readable JSON ({err}); delete it and rerun with --force") from None
    if not isinstance(record, dict) or "params" not in record:
        raise TdkstainError(f"{path}: no 'params' entry; it was not written by tdkstain extract. Delete it and rerun")
    return record


def load_extraction_params(root: str | os.PathLike) -> Any:
    """The ``ExtractionParams`` a dataset was extracted with (from ``ROOT/extraction.json``)."""
    from tdkstain.knowledge.maps import ExtractionParams

    record = read_extraction_record(root)
    if record is None:
        raise TdkstainError(f"{Path(root) / EXTRACTION_JSON}: missing; run 'tdkstain extract {root}' first")
    return ExtractionParams.from_dict(record["params"])


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def _write_record(root: Path, params_dict: dict, calibration: dict | None, **extra: Any) -> None:
    record = {
        "format": RECORD_FORMAT,
        "tool": f"tdkstain {__version__}",
        "params": params_dict,
        "calibration": calibration,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }
    # File names in it (calibration tiles, bad tiles) may not be valid UTF-8: written with U+FFFD.
    write_text_atomic(root / EXTRACTION_JSON, json.dumps(safe_strings(record), indent=2) + "\n")


def remove_temporaries(dirs: Iterable[Path]) -> int:
    """Delete ``.tmp-*`` leftovers of an interrupted run (only in our own output folders)."""
    removed = 0
    for d in dirs:
        if d.is_dir():
            for leftover in d.glob(".tmp-*"):
                leftover.unlink(missing_ok=True)
                removed += 1
    return removed
