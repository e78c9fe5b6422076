"""Knowledge extraction for a whole dataset: every IHC tile -> DAB image, membrane mask, nuclei.

``extract_dataset`` runs ``knowledge.extract_tile`` over every pair that
``pairs.discover_pairs`` finds and writes, beside the data and in the
release's folder names (so data prepared by either tool works in both)::

    ROOT/{split}_IHC_dab/STEM.png         DAB-only RGB image K_M, uint8
    ROOT/{split}_IHC_dab_mask/STEM.png    membrane mask M, uint8 0..255
    ROOT/{split}_IHC_nuclei_map/STEM.png  nuclei density K_N, uint8 (min-max)
                          .../STEM.tif    or float32 (count-preserving)
    ROOT/{split}_IHC_nuclei/STEM.csv      centroids, header ``x,y`` (x = column)
    ROOT/extraction.json                  the parameters, calibration, status
    ROOT/extraction_report/               quality report (index.html, plots)

Rules that make a rerun cheap and an interruption harmless:

- Every file is written atomically (``atomic.atomic_path``); a killed run
  leaves at most ``.tmp-*`` files, which the next run deletes.
- ``extraction.json`` is written *before* the first tile with
  ``"complete": false`` and rewritten at the end, so an interrupted run
  resumes with the same parameters.
- A tile is skipped when all its outputs exist and are at least as new as
  its IHC file, and ``extraction.json`` holds the same parameters.
- Parameters that differ from those in ``extraction.json`` are refused
  unless ``force=True``, which then re-extracts every tile: a dataset never
  mixes maps made with two settings, since training reads one setting.
- Results do not depend on the number of workers: each tile is computed
  alone, from its own file, by the same deterministic function.

``evaluate_against_truth`` compares the extracted knowledge of a
``tdkstain synth`` dataset with its ground truth; ``write_quality_report``
summarises a dataset for a person (issue 10).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import quote

import numpy as np

from tdkstain import __version__
from tdkstain.atomic import write_text_atomic
from tdkstain.errors import TdkstainError

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
            lines.append(f"bad tile:   {tile.ihc}: {tile.error}")
        return "\n".join(lines)


@dataclass(frozen=True)
class _TileTask:
    """One unit of work, picklable for the process pool."""

    split: str | None
    stem: str
    label: str | None
    ihc: str
    dab: str
    dab_mask: str
    density: str
    density_other: str  # the other density format, deleted when this one is written
    centroids: str
    overlay: str | None
    force: bool


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


# --------------------------------------------------------------------------- one tile (runs in workers)


def _process_tile(task: _TileTask, params: Any) -> TileResult:
    """Extract (or reuse) one tile's knowledge; never raises for a bad tile, returns status 'bad'."""
    from tdkstain import images, knowledge

    def bad(message: str) -> TileResult:
        return TileResult(task.split, task.stem, task.label, task.ihc, "bad", error=message)

    ihc_path = Path(task.ihc)
    try:
        ihc = images.read_rgb(ihc_path)
        input_mtime = ihc_path.stat().st_mtime_ns
    except TdkstainError as err:
        return bad(str(err))
    except Exception as err:  # a decoder failing in an unexpected way is still a bad tile, named
        return bad(f"{ihc_path}: cannot read the IHC tile ({type(err).__name__}: {err})")

    outputs = [Path(task.dab), Path(task.dab_mask), Path(task.density), Path(task.centroids)]
    membrane_mask = centroids = None
    status = "extracted"
    if not task.force and all(_is_current(p, input_mtime) for p in outputs):
        try:
            membrane_mask = images.read_gray(task.dab_mask)
            centroids = read_centroids_csv(task.centroids)
            if membrane_mask.shape != ihc.shape[:2]:
                membrane_mask = None  # stale output from another tile size: make it again
            else:
                status = "skipped"
        except (TdkstainError, OSError, ValueError):
            membrane_mask = None  # unreadable output: make it again

    if status == "extracted":
        try:
            tile = knowledge.extract_tile(ihc, params)
        except TdkstainError as err:
            return bad(f"{ihc_path}: {err}")
        except (ValueError, ArithmeticError) as err:
            return bad(f"{ihc_path}: knowledge extraction failed ({type(err).__name__}: {err})")
        centroid_text = format_centroids_csv(tile.centroids)
        images.write_png(task.dab, tile.dab_rgb)
        images.write_png(task.dab_mask, tile.membrane_mask)
        # uint8 PNG (min-max) or float32 TIFF (count); the suffix picks the format.
        images.write_image(task.density, knowledge.density_for_disk(tile.density, params.density_normalise))
        # A map of the other kind from an earlier setting would be read by
        # mistake (the loader prefers one format); remove it.
        Path(task.density_other).unlink(missing_ok=True)
        # The CSV goes last: a tile counts as done only when all four exist.
        write_text_atomic(task.centroids, centroid_text)
        membrane_mask = tile.membrane_mask
        # Parse what was written, so a fresh run and a resumed run see the
        # very same centroid values (report, overlays).
        centroids = parse_centroids_csv(centroid_text)

    tissue = knowledge.tissue_mask(ihc)
    fraction = float(knowledge.stained_fraction(membrane_mask, tissue))

    if task.overlay is not None:
        overlay_path = Path(task.overlay)
        if task.force or status == "extracted" or not _is_current(overlay_path, Path(task.centroids).stat().st_mtime_ns):
            from tdkstain.overlays import membrane_nuclei_overlay

            images.write_png(overlay_path, membrane_nuclei_overlay(ihc, membrane_mask, centroids))

    return TileResult(
        task.split,
        task.stem,
        task.label,
        task.ihc,
        status,
        stained_fraction=fraction,
        nuclei_count=int(len(centroids)),
    )


def _process_chunk(chunk: list[tuple[int, _TileTask]], params_dict: dict) -> list[tuple[int, TileResult]]:
    from tdkstain.knowledge import ExtractionParams

    params = ExtractionParams.from_dict(params_dict)
    return [(index, _process_tile(task, params)) for index, task in chunk]


# --------------------------------------------------------------------------- extraction.json


def read_extraction_record(root: str | os.PathLike) -> dict | None:
    """The content of ``ROOT/extraction.json``, or None if the dataset was never extracted by tdkstain."""
    path = Path(root) / EXTRACTION_JSON
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise TdkstainError(f"{path}: not readable JSON ({err}); delete it and rerun with --force") from None
    if not isinstance(record, dict) or "params" not in record:
        raise TdkstainError(f"{path}: no 'params' entry; it was not written by tdkstain extract. Delete it and rerun")
    return record


def load_extraction_params(root: str | os.PathLike) -> Any:
    """The ``ExtractionParams`` a dataset was extracted with (from ``ROOT/extraction.json``)."""
    from tdkstain.knowledge import ExtractionParams

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
    write_text_atomic(root / EXTRACTION_JSON, json.dumps(record, indent=2) + "\n")


# --------------------------------------------------------------------------- calibration


def calibrate(root: str | os.PathLike, params: Any, pairs: Sequence[Any], sample: int = 32) -> tuple[Any, dict]:
    """Fit the adaptive membrane threshold on up to ``sample`` IHC tiles spread evenly over ``pairs``.

    ``knowledge.calibrate_membrane`` fits the DAB density margin above each
    tile's background; it exists for the adaptive mode only (the release
    mode's saturation threshold is the release's fixed 0.15).

    Returns:
        The parameters with the fitted ``membrane.threshold`` (and
        ``membrane.calibrated`` True), and a record of the calibration
        (threshold, mode, tiles used) for ``extraction.json``.
    """
    from tdkstain import images, knowledge
    from tdkstain.knowledge import ExtractionParams

    if params.membrane.mode != "adaptive":
        raise TdkstainError(
            f"--calibrate fits the adaptive membrane threshold, but the membrane mode is {params.membrane.mode!r}; "
            "use --mode adaptive with --calibrate, or drop --calibrate"
        )
    if not pairs:
        raise TdkstainError(f"{root}: no pairs to calibrate on")
    if sample < 1:
        raise TdkstainError(f"calibration needs at least one tile, got {sample}")
    # Evenly spaced indices over the sorted pair list: deterministic and
    # covering every split and score the listing holds.
    count = min(sample, len(pairs))
    indices = sorted({int(i) for i in np.linspace(0, len(pairs) - 1, count).round()})
    chosen = [pairs[i] for i in indices]
    tiles = [images.read_rgb(p.ihc) for p in chosen]
    threshold = float(knowledge.calibrate_membrane(tiles, params.membrane))
    params_dict = params.to_dict()
    params_dict["membrane"]["threshold"] = threshold
    params_dict["membrane"]["calibrated"] = True
    record = {
        "membrane_threshold": threshold,
        "membrane_mode": params.membrane.mode,
        "tiles": [str(Path(p.ihc).relative_to(root)) if _is_under(p.ihc, root) else str(p.ihc) for p in chosen],
    }
    return ExtractionParams.from_dict(params_dict), record


def _is_under(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------- the dataset run


def _make_tasks(root: Path, pairs: Sequence[Any], params: Any, force: bool, overlays: bool) -> list[_TileTask]:
    from tdkstain.pairs import knowledge_paths

    tasks = []
    for pair in pairs:
        paths = knowledge_paths(root, pair.split, pair.stem)
        if params.density_normalise == "count":
            density, other = paths.nuclei_map_float, paths.nuclei_map
        else:
            density, other = paths.nuclei_map, paths.nuclei_map_float
        overlay = None
        if overlays:
            overlay = str(Path(paths.dab).parent.parent / f"{Path(paths.dab).parent.name.removesuffix('_dab')}_overlay" / f"{pair.stem}.png")
        tasks.append(
            _TileTask(
                split=pair.split,
                stem=pair.stem,
                label=pair.label,
                ihc=str(pair.ihc),
                dab=str(paths.dab),
                dab_mask=str(paths.dab_mask),
                density=str(density),
                density_other=str(other),
                centroids=str(paths.nuclei_csv),
                overlay=overlay,
                force=force,
            )
        )
    return tasks


def _output_dirs(tasks: Iterable[_TileTask]) -> list[Path]:
    dirs: dict[Path, None] = {}
    for task in tasks:
        for p in (task.dab, task.dab_mask, task.density, task.centroids, task.overlay):
            if p is not None:
                dirs[Path(p).parent] = None
    return list(dirs)


def _remove_temporaries(dirs: Iterable[Path]) -> int:
    """Delete ``.tmp-*`` leftovers of an interrupted run (only in our own output folders)."""
    removed = 0
    for d in dirs:
        if d.is_dir():
            for leftover in d.glob(".tmp-*"):
                leftover.unlink(missing_ok=True)
                removed += 1
    return removed


def _pool_context() -> multiprocessing.context.BaseContext:
    """Start method for worker processes.

    forkserver where available: never forks a parent that may hold threads
    (torch, BLAS pools), and the server imports the science once (preload),
    so each worker forks from it ready instead of importing torch again.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["tdkstain.extraction", "tdkstain.knowledge"])
        return context
    return multiprocessing.get_context("spawn")


def _run_tasks(tasks: list[_TileTask], params_dict: dict, workers: int, progress: bool) -> list[TileResult]:
    from tqdm import tqdm

    results: list[TileResult | None] = [None] * len(tasks)
    bar = tqdm(total=len(tasks), desc="extract", unit="tile", disable=None if progress else True, file=sys.stderr)
    indexed = list(enumerate(tasks))
    try:
        if workers <= 1 or len(tasks) <= 1:
            from tdkstain.knowledge import ExtractionParams

            params = ExtractionParams.from_dict(params_dict)
            for index, task in indexed:
                results[index] = _process_tile(task, params)
                bar.update(1)
        else:
            # Chunks amortise the pickling of tasks and results; four chunks
            # per worker keep the pool busy to the end. Each tile's result
            # depends only on its own file, so chunking and order of
            # completion change nothing in the outputs.
            size = max(1, min(32, math.ceil(len(tasks) / (workers * 4))))
            chunks = [indexed[i : i + size] for i in range(0, len(indexed), size)]
            # forkserver: no fork of a parent that may hold threads (torch, BLAS).
            with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
                pending: set[Future] = {pool.submit(_process_chunk, chunk, params_dict) for chunk in chunks}
                try:
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in done:
                            for index, result in future.result():
                                results[index] = result
                            bar.update(len(future.result()))
                except BaseException:
                    for future in pending:
                        future.cancel()
                    raise
    finally:
        bar.close()
    return [r for r in results if r is not None]


def extract_dataset(
    root: str | os.PathLike,
    params: Any = None,
    *,
    splits: Sequence[str] | None = None,
    manifest: str | os.PathLike | None = None,
    workers: int = 1,
    force: bool = False,
    overlays: bool = False,
    progress: bool = True,
    skip_bad: bool = False,
    calibrate_sample: int | None = None,
    report: bool = True,
) -> ExtractionSummary:
    """Extract the knowledge maps of every IHC tile of a dataset (see the module docstring).

    Args:
        root: dataset root (any layout ``pairs.discover_pairs`` knows); the
            outputs go under it.
        params: ``knowledge.ExtractionParams``; None takes its defaults.
        splits: only these splits (e.g. ``["train"]``); None for all.
        manifest: a CSV manifest instead of a folder layout.
        workers: processes; 1 runs in this process. Outputs are identical for
            any number.
        force: re-extract every tile, and accept parameters that differ from
            those recorded in ``extraction.json`` (replacing them).
        overlays: also write ``{split}_IHC_overlay/STEM.png`` (IHC, membrane
            contour, nuclei dots) for every tile.
        progress: show a progress bar (only on a terminal).
        skip_bad: continue past tiles that cannot be read or extracted and
            list them in the summary and report, instead of raising.
        calibrate_sample: fit the membrane threshold on this many tiles first
            (``knowledge.calibrate_membrane``) and extract with it.
        report: write the quality report ``ROOT/extraction_report/``.

    Raises:
        TdkstainError: no pairs; parameters differ from ``extraction.json``
            without ``force``; knowledge maps of unknown origin exist without
            ``force``; bad tiles without ``skip_bad`` (all named, after the
            good tiles are written).
    """
    from tdkstain.knowledge import ExtractionParams
    from tdkstain.pairs import detect_layout, discover_pairs

    start = time.perf_counter()
    # The layout's root: the folder itself, or a manifest CSV's folder.
    layout = detect_layout(root, manifest=manifest)
    root, manifest = layout.root, layout.manifest
    if workers < 1:
        raise TdkstainError(f"workers must be at least 1, got {workers}")
    params = ExtractionParams() if params is None else params

    pairs = []
    for split in splits or [None]:
        pairs += discover_pairs(root, split=split, manifest=manifest)
    if not pairs:
        where = f" (split {', '.join(splits)})" if splits else ""
        raise TdkstainError(f"{root}: no H&E/IHC pairs found{where}; run 'tdkstain check {root}' to see why")

    previous = read_extraction_record(root)
    calibration = None
    if calibrate_sample:
        params, calibration = calibrate(root, params, pairs, sample=calibrate_sample)
    elif (
        previous is not None
        and previous.get("calibration")
        and params.membrane.calibrated
        and params.membrane.threshold == previous["calibration"].get("membrane_threshold")
    ):
        calibration = previous["calibration"]  # resuming with the fitted threshold: keep its record
    params_dict = json.loads(json.dumps(params.to_dict()))  # normalise tuples etc. as stored

    tasks = _make_tasks(root, pairs, params, force, overlays)
    if previous is not None and previous["params"] != params_dict and not force:
        diff = "; ".join(_differences(previous["params"], params_dict))
        raise TdkstainError(
            f"{root / EXTRACTION_JSON}: this dataset was extracted with other parameters ({diff}). "
            "Rerun with the same options to resume, or add --force to re-extract every tile with the new ones"
        )
    if previous is not None and previous["params"] != params_dict:
        force = True  # new parameters: nothing old may stay
        tasks = _make_tasks(root, pairs, params, force, overlays)
    if previous is None and not force:
        foreign = next(
            (t for t in tasks if any(Path(p).exists() for p in (t.dab, t.dab_mask, t.density, t.centroids))), None
        )
        if foreign is not None:
            raise TdkstainError(
                f"{root}: knowledge maps already exist (e.g. {foreign.dab_mask}) but {EXTRACTION_JSON} is missing, "
                "so their parameters are unknown (made by another tool?). Add --force to replace them"
            )

    output_dirs = _output_dirs(tasks)
    _remove_temporaries(output_dirs)
    # Written before the first tile: an interrupted run resumes with these
    # parameters, and a run with others is refused (see above).
    _write_record(root, params_dict, calibration, complete=False)

    results = _run_tasks(tasks, params_dict, workers, progress)
    summary = ExtractionSummary(root=root, params=params, tiles=results, output_dirs=output_dirs, calibration=calibration)
    bad = summary.bad
    if bad and not skip_bad:
        shown = "\n  ".join(f"{t.error}" for t in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise TdkstainError(
            f"{len(bad)} of {len(results)} IHC tiles could not be extracted:\n  {shown}{more}\n"
            "The other tiles were written. Fix or remove these files and rerun, or add --skip-bad to go on without them"
        )
    if report:
        summary.report = write_quality_report(root, summary)
    summary.seconds = time.perf_counter() - start
    _write_record(
        root,
        params_dict,
        calibration,
        complete=True,
        tiles=len(results),
        bad=[t.ihc for t in bad],
    )
    return summary


# --------------------------------------------------------------------------- evaluation against synthetic truth


@dataclass
class TruthEvaluation:
    """Extracted knowledge against the truth of a ``tdkstain synth`` dataset.

    ``rows``: one dict per group ("all", "failure=<case>", "her2=<score>")
    with ``tiles``, ``nuclei_precision``, ``nuclei_recall``, ``nuclei_f1``
    (pooled TP/FP/FN over the group's tiles, 6 px matching radius),
    ``count_error_median_pct`` and ``count_error_mean_pct`` (per tile
    ``|found - true| / max(true, 1) * 100``) and ``membrane_iou`` (pooled
    intersection over pooled union of the binary membrane masks).
    ``per_tile``: the same numbers per tile.
    """

    rows: list[dict]
    per_tile: list[dict]
    radius: float
    params: dict = field(default_factory=dict)

    def row(self, group: str = "all") -> dict:
        for r in self.rows:
            if r["group"] == group:
                return r
        raise KeyError(f"no group {group!r}; groups: {[r['group'] for r in self.rows]}")

    def to_markdown(self) -> str:
        head = ["group", "tiles", "nuclei F1", "precision", "recall", "count err median %", "count err mean %", "membrane IoU"]
        keys = ["group", "tiles", "nuclei_f1", "nuclei_precision", "nuclei_recall", "count_error_median_pct", "count_error_mean_pct", "membrane_iou"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for r in self.rows:
            cells = []
            for k in keys:
                v = r[k]
                if isinstance(v, float):
                    cells.append("n/a" if math.isnan(v) else (f"{v:.1f}" if k.endswith("_pct") else f"{v:.3f}"))
                else:
                    cells.append(str(v))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _truth_files(root: Path, split: str | None, stem: str) -> tuple[Path, Path]:
    folder = root / f"{split}_truth"
    return folder / f"{stem}.json", folder / f"{stem}_membrane.png"


def _group_row(group: str, tiles: list[dict]) -> dict:
    tp = sum(t["tp"] for t in tiles)
    fp = sum(t["fp"] for t in tiles)
    fn = sum(t["fn"] for t in tiles)
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    errors = np.array([t["count_error_pct"] for t in tiles], dtype=np.float64)
    intersection = sum(t["membrane_intersection"] for t in tiles)
    union = sum(t["membrane_union"] for t in tiles)
    return {
        "group": group,
        "tiles": len(tiles),
        "nuclei_precision": float(precision),
        "nuclei_recall": float(recall),
        "nuclei_f1": float(f1),
        "count_error_median_pct": float(np.median(errors)) if len(errors) else float("nan"),
        "count_error_mean_pct": float(np.mean(errors)) if len(errors) else float("nan"),
        "membrane_iou": float(intersection / union) if union else float("nan"),
    }


def evaluate_against_truth(
    root: str | os.PathLike,
    split: str | None = None,
    *,
    radius: float = 6.0,
    progress: bool = False,
) -> TruthEvaluation:
    """Compare the extracted centroids and membrane masks of a synth dataset with its truth.

    Nuclei: ``nuclei.match_centroids`` with ``radius`` px (6 px, issue 2).
    Membrane: the binary (unblurred) membrane mask recomputed from the IHC
    tile with the parameters in ``extraction.json``
    (``knowledge.membrane_mask_binary``) against the true stained membrane
    (``{split}_truth/STEM_membrane.png``) by ``knowledge.membrane_iou``, the
    protocol ``knowledge`` documents; intersection and union are pooled over
    the tiles of a group, so tiles without any true membrane (HER2 0) count.

    Raises:
        TdkstainError: no extraction yet, or no truth files (not a synth dataset).
    """
    from tqdm import tqdm

    from tdkstain import images, knowledge
    from tdkstain.nuclei import match_centroids
    from tdkstain.pairs import discover_pairs, knowledge_paths

    root = Path(root)
    params = load_extraction_params(root)
    pairs = discover_pairs(root, split=split)
    with_truth = [p for p in pairs if _truth_files(root, p.split, p.stem)[0].exists()]
    if not with_truth:
        raise TdkstainError(
            f"{root}: no ground truth ({{split}}_truth/STEM.json) for any pair; "
            "--evaluate-against-truth works on data made by 'tdkstain synth'"
        )
    per_tile = []
    for pair in tqdm(with_truth, desc="evaluate", unit="tile", disable=None if progress else True, file=sys.stderr):
        truth_json, truth_membrane_png = _truth_files(root, pair.split, pair.stem)
        truth = json.loads(truth_json.read_text(encoding="utf-8"))
        truth_centroids = np.array([(n["y"], n["x"]) for n in truth.get("nuclei", [])], dtype=np.float64).reshape(-1, 2)
        paths = knowledge_paths(root, pair.split, pair.stem)
        if not Path(paths.nuclei_csv).exists():
            raise TdkstainError(f"{paths.nuclei_csv}: missing; run 'tdkstain extract {root}' first")
        found = read_centroids_csv(paths.nuclei_csv)
        match = match_centroids(found, truth_centroids, radius=radius)
        ihc = images.read_rgb(pair.ihc)
        membrane = knowledge.membrane_mask_binary(ihc, params.membrane)
        truth_membrane = images.read_gray(truth_membrane_png) > 0
        intersection, union = knowledge.membrane_overlap(membrane, truth_membrane)
        true_count = len(truth_centroids)
        per_tile.append(
            {
                "split": pair.split,
                "stem": pair.stem,
                "her2": truth.get("her2", pair.label),
                "failure": truth.get("failure") or "none",
                "true_nuclei": true_count,
                "found_nuclei": len(found),
                "tp": int(match.tp),
                "fp": int(match.fp),
                "fn": int(match.fn),
                "nuclei_f1": float(match.f1),
                "count_error_pct": abs(len(found) - true_count) / max(true_count, 1) * 100.0,
                "membrane_intersection": int(intersection),
                "membrane_union": int(union),
                "membrane_iou": float(intersection / union) if union else float("nan"),
            }
        )
    rows = [_group_row("all", per_tile)]
    failures = sorted({t["failure"] for t in per_tile}, key=lambda f: (f != "none", f))
    if len(failures) > 1:
        rows += [_group_row(f"failure={f}", [t for t in per_tile if t["failure"] == f]) for f in failures]
    scores = [s for s in HER2_ORDER if any(t["her2"] == s for t in per_tile)]
    rows += [_group_row(f"her2={s}", [t for t in per_tile if t["her2"] == s]) for s in scores]
    return TruthEvaluation(rows=rows, per_tile=per_tile, radius=radius, params=params.to_dict())


# --------------------------------------------------------------------------- quality report (issue 10)


def stained_fraction_check(tiles: Sequence[TileResult]) -> dict:
    """Does the mean stained fraction rise with HER2 score (0 < 1+ < 2+ < 3+)?

    Returns ``{"status": "PASS"|"FAIL"|"N/A", "means": {score: mean}, "text": str}``.
    Scores absent from the data are left out of the comparison; fewer than
    two scores present gives "N/A". Strict increase is required between
    every consecutive pair of present scores.
    """
    means = {}
    for score in HER2_ORDER:
        values = [t.stained_fraction for t in tiles if t.label == score and t.status != "bad"]
        if values:
            means[score] = float(np.mean(values))
    text = "stained fraction rises with HER2 score (0 < 1+ < 2+ < 3+ on average)"
    if len(means) < 2:
        return {"status": "N/A", "means": means, "text": f"{text}: N/A (fewer than two HER2 scores labelled)"}
    ordered = list(means.values())
    ok = all(a < b for a, b in zip(ordered, ordered[1:]))
    status = "PASS" if ok else "FAIL"
    detail = " < ".join(f"{s}: {m:.3f}" for s, m in means.items()) if ok else ", ".join(f"{s}: {m:.3f}" for s, m in means.items())
    return {"status": status, "means": means, "text": f"{text}: {status} ({detail})"}


def _label_name(label: str | None) -> str:
    return "unlabelled" if label is None else label


def _box_strip_plot(path: Path, groups: list[tuple[str, list[float]]], ylabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    data = [values for _, values in groups]
    ax.boxplot(data, showfliers=False, widths=0.5)
    # Jitter from a fixed generator: the report is identical on every rerun.
    rng = np.random.default_rng(0)
    for position, values in enumerate(data, start=1):
        ax.scatter(position + rng.uniform(-0.15, 0.15, len(values)), values, s=10, alpha=0.6, color="tab:brown", zorder=3)
    ax.set_xticks(range(1, len(groups) + 1), [f"{name}\n(n={len(v)})" for name, v in groups])
    ax.set_xlabel("HER2 score")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from tdkstain.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _extremes(tiles: list[TileResult], per_kind: int) -> list[tuple[str, TileResult]]:
    """(reason, tile) for the tiles with the most extreme stained fraction and nuclei count."""
    chosen: list[tuple[str, TileResult]] = []
    seen: set[tuple[str | None, str]] = set()
    # Ties broken by split and stem, so the choice is reproducible.
    kinds = [
        ("highest stained fraction", lambda t: (-t.stained_fraction, str(t.split), t.stem)),
        ("lowest stained fraction", lambda t: (t.stained_fraction, str(t.split), t.stem)),
        ("most nuclei", lambda t: (-t.nuclei_count, str(t.split), t.stem)),
        ("fewest nuclei", lambda t: (t.nuclei_count, str(t.split), t.stem)),
    ]
    for reason, key in kinds:
        taken = 0
        for tile in sorted(tiles, key=key):
            if taken == per_kind:
                break
            chosen.append((reason, tile))
            seen.add((tile.split, tile.stem))
            taken += 1
    return chosen


def write_quality_report(root: str | os.PathLike, summary: ExtractionSummary, extremes_per_kind: int = 3) -> Path:
    """Write ``ROOT/extraction_report/`` (index.html, plots, overlays, report.json); return index.html's path.

    Shows the stained fraction and nuclei count per HER2 score (box and strip
    plots), the tiles with the most extreme values as overlays (IHC, membrane
    contour in green, nuclei centroids in magenta), the check "stained
    fraction rises with HER2 score" (red at the top when it fails) and the
    bad tiles. All links are relative and point to files written here.
    """
    from tdkstain import images
    from tdkstain.overlays import membrane_nuclei_overlay

    root = Path(root)
    out = root / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    _remove_temporaries([out, out / "overlays"])
    good = [t for t in summary.tiles if t.status != "bad"]
    params = summary.params
    mode = f"membrane {params.membrane.mode}, nuclei {params.nuclei.mode}"
    check = stained_fraction_check(good)

    label_order = [s for s in HER2_ORDER if any(t.label == s for t in good)]
    if any(t.label is None or t.label not in HER2_ORDER for t in good):
        label_order.append(None)

    def group_of(label: str | None) -> list[TileResult]:
        if label is None:
            return [t for t in good if t.label is None or t.label not in HER2_ORDER]
        return [t for t in good if t.label == label]

    per_score = []
    for label in label_order:
        members = group_of(label)
        fractions = np.array([t.stained_fraction for t in members])
        counts = np.array([t.nuclei_count for t in members])
        per_score.append(
            {
                "her2": label,
                "tiles": len(members),
                "stained_fraction_mean": float(fractions.mean()),
                "stained_fraction_median": float(np.median(fractions)),
                "nuclei_count_mean": float(counts.mean()),
                "nuclei_count_median": float(np.median(counts)),
            }
        )

    plots = {}
    if good:
        plots["stained_fraction"] = "stained_fraction.png"
        _box_strip_plot(
            out / plots["stained_fraction"],
            [(_label_name(l), [t.stained_fraction for t in group_of(l)]) for l in label_order],
            "membrane-stained fraction of tissue",
            "Stained fraction per HER2 score",
        )
        plots["nuclei_count"] = "nuclei_count.png"
        _box_strip_plot(
            out / plots["nuclei_count"],
            [(_label_name(l), [float(t.nuclei_count) for t in group_of(l)]) for l in label_order],
            "nuclei per tile",
            "Nuclei count per HER2 score",
        )

    extremes = []
    overlay_dir = out / "overlays"
    for old in overlay_dir.glob("*.png") if overlay_dir.is_dir() else []:
        old.unlink()  # extremes of an earlier run would otherwise linger unlinked
    for reason, tile in _extremes(good, extremes_per_kind):
        from tdkstain.pairs import knowledge_paths

        name = f"{tile.split}_{tile.stem}.png" if tile.split else f"{tile.stem}.png"
        target = overlay_dir / name
        if not target.exists():
            paths = knowledge_paths(root, tile.split, tile.stem)
            ihc = images.read_rgb(tile.ihc)
            overlay = membrane_nuclei_overlay(ihc, images.read_gray(paths.dab_mask), read_centroids_csv(paths.nuclei_csv))
            images.write_png(target, overlay)
        extremes.append({"reason": reason, "split": tile.split, "stem": tile.stem, "her2": tile.label,
                         "stained_fraction": tile.stained_fraction, "nuclei_count": tile.nuclei_count,
                         "overlay": f"overlays/{name}"})

    report = {
        "root": str(root),
        "mode": mode,
        "params": params.to_dict(),
        "calibration": summary.calibration,
        "tiles": len(summary.tiles),
        "bad_tiles": [{"ihc": t.ihc, "error": t.error} for t in summary.bad],
        "check_stained_fraction_rises": check,
        "per_her2": per_score,
        "extremes": extremes,
        "per_tile": [
            {"split": t.split, "stem": t.stem, "her2": t.label, "stained_fraction": t.stained_fraction,
             "nuclei_count": t.nuclei_count, "status": t.status}
            for t in summary.tiles
        ],
        "files": {"plots": plots, "json": "report.json"},
    }
    write_text_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    index = out / "index.html"
    write_text_atomic(index, _render_html(root, mode, check, per_score, plots, extremes, summary))
    return index


def _render_html(
    root: Path,
    mode: str,
    check: dict,
    per_score: list[dict],
    plots: dict,
    extremes: list[dict],
    summary: ExtractionSummary,
) -> str:
    e = html.escape
    colour = {"PASS": "#1a7f37", "FAIL": "#c62828", "N/A": "#666"}[check["status"]]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>tdkstain extraction report: {e(root.name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        ".check{padding:.6em 1em;font-weight:bold;color:#fff;border-radius:4px}"
        ".fail{background:#c62828}.pass{background:#1a7f37}.na{background:#777}"
        "figure{display:inline-block;margin:6px;vertical-align:top}figcaption{font-size:85%;max-width:260px}"
        "img.tile{width:256px;image-rendering:pixelated}</style></head><body>",
    ]
    css = {"PASS": "pass", "FAIL": "fail", "N/A": "na"}[check["status"]]
    # The check line comes first, so a mode that fails it cannot be missed.
    parts.append(f"<p class='check {css}' id='check' style='background:{colour}'>{e(check['text'])}</p>")
    if check["status"] == "FAIL":
        parts.append(
            f"<p style='color:#c62828;font-weight:bold'>Mode '{e(mode)}' FAILS this check: its membrane mask does not "
            "follow the HER2 score on this dataset (tinted background? try --mode adaptive or --calibrate).</p>"
        )
    parts.append(f"<h1>Knowledge extraction report</h1><p>Dataset <code>{e(str(root))}</code>; mode: <b>{e(mode)}</b>; "
                 f"{len(summary.tiles)} tiles, {len(summary.bad)} bad. Parameters: <a href='report.json'>report.json</a>.</p>")
    parts.append("<h2>Per HER2 score</h2><table><tr><th>HER2</th><th>tiles</th><th>stained fraction mean</th>"
                 "<th>median</th><th>nuclei mean</th><th>median</th></tr>")
    for row in per_score:
        parts.append(
            f"<tr><td>{e(_label_name(row['her2']))}</td><td>{row['tiles']}</td><td>{row['stained_fraction_mean']:.3f}</td>"
            f"<td>{row['stained_fraction_median']:.3f}</td><td>{row['nuclei_count_mean']:.1f}</td>"
            f"<td>{row['nuclei_count_median']:.1f}</td></tr>"
        )
    parts.append("</table>")
    for key, caption in (("stained_fraction", "Stained fraction per HER2 score"), ("nuclei_count", "Nuclei count per HER2 score")):
        if key in plots:
            parts.append(f"<figure><img src='{quote(plots[key])}' alt='{e(caption)}'><figcaption>{e(caption)}</figcaption></figure>")
    if extremes:
        parts.append("<h2>Most extreme tiles</h2><p>IHC with the membrane mask outlined in green and nuclei centroids "
                     "as magenta dots.</p>")
        for item in extremes:
            caption = (f"{item['reason']}: {item['split'] or ''} {item['stem']} (HER2 {_label_name(item['her2'])}), "
                       f"stained fraction {item['stained_fraction']:.3f}, {item['nuclei_count']} nuclei")
            parts.append(f"<figure><a href='{quote(item['overlay'])}'><img class='tile' src='{quote(item['overlay'])}' "
                         f"alt='{e(caption)}'></a><figcaption>{e(caption)}</figcaption></figure>")
    if summary.bad:
        parts.append("<h2>Bad tiles (skipped)</h2><ul>")
        parts += [f"<li><code>{e(t.error or t.ihc)}</code></li>" for t in summary.bad]
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
