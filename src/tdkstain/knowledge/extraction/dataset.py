"""The dataset run: every IHC tile -> knowledge files, resumable, parallel, checked against extraction.json.

See the package docstring (``tdkstain.knowledge.extraction``) for the rules that make
reruns cheap and interruptions harmless.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from tdkstain.plumbing.atomic import write_text_atomic
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.knowledge.extraction.records import (
    EXTRACTION_JSON,
    ExtractionSummary,
    TileResult,
    _differences,
    _is_current,
    _write_record,
    format_centroids_csv,
    parse_centroids_csv,
    read_centroids_csv,
    read_extraction_record,
    remove_temporaries,
)
from tdkstain.knowledge.extraction.report import write_quality_report

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
    engine: str = "torch"  # "torch" (extraction.fast) or "numpy" (knowledge.extract_tile): same outputs
    max_pixels: int | None = None  # pixel limit of the IHC tile (None: tdkstain.data.images' default)


# --------------------------------------------------------------------------- one tile (runs in workers)


def _process_tile(task: _TileTask, params: Any) -> TileResult:
    """Extract (or reuse) one tile's knowledge; never raises for a bad tile, returns status 'bad'."""
    from tdkstain.data import images
    from tdkstain.knowledge import maps as knowledge
    from tdkstain.knowledge.extraction import fast

    def bad(message: str) -> TileResult:
        return TileResult(task.split, task.stem, task.label, task.ihc, "bad", error=message)

    ihc_path = Path(task.ihc)
    try:
        limit = {} if task.max_pixels is None else {"max_pixels": task.max_pixels}
        ihc = images.read_rgb(ihc_path, **limit)
        input_mtime = ihc_path.stat().st_mtime_ns
    except TdkstainError as err:
        return bad(str(err))
    except OSError as err:  # e.g. the file went away between reading and stat
        from tdkstain.plumbing.atomic import read_error

        return bad(str(read_error(ihc_path, err)))
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
            if task.engine == "torch":
                tile = fast.extract_tiles_torch([ihc], params)[0]
            else:
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

    # Bit-identical either way; the torch engine's version reuses its per-value tables.
    tissue = fast.tissue_mask(ihc) if task.engine == "torch" else knowledge.tissue_mask(ihc)
    fraction = float(knowledge.stained_fraction(membrane_mask, tissue))

    if task.overlay is not None:
        overlay_path = Path(task.overlay)
        if task.force or status == "extracted" or not _is_current(overlay_path, Path(task.centroids).stat().st_mtime_ns):
            from tdkstain.knowledge.overlays import membrane_nuclei_overlay

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
    import torch

    from tdkstain.knowledge.maps import ExtractionParams

    # The pool already keeps every core busy with one tile per worker; torch's own
    # threads on top would fight them (spinning threads on a busy core run 10x slower).
    torch.set_num_threads(1)
    params = ExtractionParams.from_dict(params_dict)
    return [(index, _process_tile(task, params)) for index, task in chunk]


# --------------------------------------------------------------------------- calibration


def calibrate(
    root: str | os.PathLike, params: Any, pairs: Sequence[Any], sample: int = 32, *, max_pixels: int | None = None
) -> tuple[Any, dict]:
    """Fit the adaptive membrane threshold on up to ``sample`` IHC tiles spread evenly over ``pairs``.

    ``knowledge.calibrate_membrane`` fits the DAB density margin above each
    tile's background; it exists for the adaptive mode only (the release
    mode's saturation threshold is the release's fixed 0.15).

    Returns:
        The parameters with the fitted ``membrane.threshold`` (and
        ``membrane.calibrated`` True), and a record of the calibration
        (threshold, mode, tiles used) for ``extraction.json``.
    """
    from tdkstain.data import images
    from tdkstain.knowledge import maps as knowledge
    from tdkstain.knowledge.maps import ExtractionParams

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
    limit = {} if max_pixels is None else {"max_pixels": max_pixels}
    tiles = [images.read_rgb(p.ihc, **limit) for p in chosen]
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


def _make_tasks(
    root: Path, pairs: Sequence[Any], params: Any, force: bool, overlays: bool, engine: str = "torch",
    max_pixels: int | None = None,
) -> list[_TileTask]:
    from tdkstain.data.pairs import knowledge_paths

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
                engine=engine,
                max_pixels=max_pixels,
            )
        )
    return tasks


def _choose_engine(engine: str | None, params: Any) -> str:
    """The extraction engine: the one asked for, else torch (numpy for the cellpose backend)."""
    from tdkstain.knowledge.extraction.fast import ENGINES

    cellpose = params.nuclei.backend == "cellpose"
    if engine is None:
        return "numpy" if cellpose else "torch"
    if engine not in ENGINES:
        raise TdkstainError(f"extraction engine {engine!r} is unknown: use one of {', '.join(ENGINES)}")
    if engine == "torch" and cellpose:
        raise TdkstainError(
            "the torch extraction engine runs the classical nuclei backend only; "
            "use --engine numpy with --nuclei-backend cellpose (or leave --engine out)"
        )
    return engine


def _output_dirs(tasks: Iterable[_TileTask]) -> list[Path]:
    dirs: dict[Path, None] = {}
    for task in tasks:
        for p in (task.dab, task.dab_mask, task.density, task.centroids, task.overlay):
            if p is not None:
                dirs[Path(p).parent] = None
    return list(dirs)


def _pool_context() -> multiprocessing.context.BaseContext:
    """Start method for worker processes.

    forkserver where available: never forks a parent that may hold threads
    (torch, BLAS pools), and the server imports the science once (preload),
    so each worker forks from it ready instead of importing torch again.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["tdkstain.knowledge.extraction.dataset", "tdkstain.knowledge.maps"])
        return context
    return multiprocessing.get_context("spawn")


def _run_tasks(tasks: list[_TileTask], params_dict: dict, workers: int, progress: bool) -> list[TileResult]:
    from tqdm import tqdm

    results: list[TileResult | None] = [None] * len(tasks)
    bar = tqdm(total=len(tasks), desc="extract", unit="tile", disable=None if progress else True, file=sys.stderr)
    indexed = list(enumerate(tasks))
    try:
        if workers <= 1 or len(tasks) <= 1:
            from tdkstain.knowledge.maps import ExtractionParams

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
    engine: str | None = None,
    max_pixels: int | None = None,
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
        engine: "torch" (``extraction.fast``, faster on the CPU) or "numpy"
            (``knowledge.extract_tile``); both write identical files, so the engine is
            not part of ``extraction.json`` and a run may resume with the other. None:
            torch, or numpy for the cellpose nuclei backend, which torch does not run.
        max_pixels: the largest IHC tile read, in pixels (a guard against
            decompression bombs); None: ``tdkstain.data.images.DEFAULT_MAX_PIXELS``.

    Raises:
        TdkstainError: no pairs; an unknown engine, or torch with the cellpose backend;
            parameters differ from ``extraction.json``
            without ``force``; knowledge maps of unknown origin exist without
            ``force``; bad tiles without ``skip_bad`` (all named, after the
            good tiles are written).
    """
    from tdkstain.knowledge.maps import ExtractionParams
    from tdkstain.data.pairs import detect_layout

    start = time.perf_counter()
    # The layout's root: the folder itself, or a manifest CSV's folder.
    layout = detect_layout(root, manifest=manifest)
    root, manifest = layout.root, layout.manifest
    if workers < 1:
        raise TdkstainError(f"workers must be at least 1, got {workers}")
    params = ExtractionParams() if params is None else params
    engine = _choose_engine(engine, params)
    pairs = _discover_dataset_pairs(root, splits, manifest)

    previous = read_extraction_record(root)
    params, calibration = _calibrate_or_keep_record(root, params, pairs, calibrate_sample, previous, max_pixels)
    params_dict = json.loads(json.dumps(params.to_dict()))  # normalise tuples etc. as stored
    tasks = _tasks_allowed_by_record(root, pairs, params, params_dict, previous, force, overlays, engine, max_pixels)

    output_dirs = _output_dirs(tasks)
    remove_temporaries(output_dirs)
    # Written before the first tile: an interrupted run resumes with these
    # parameters, and a run with others is refused (see _tasks_allowed_by_record).
    _write_record(root, params_dict, calibration, complete=False)

    results = _run_tasks(tasks, params_dict, workers, progress)
    summary = ExtractionSummary(root=root, params=params, tiles=results, output_dirs=output_dirs, calibration=calibration)
    if summary.bad and not skip_bad:
        raise _bad_tiles_error(summary.bad, len(results))
    if report:
        summary.report = write_quality_report(root, summary, max_pixels=max_pixels)
    summary.seconds = time.perf_counter() - start
    _record_complete(root, params_dict, summary)
    return summary


def _discover_dataset_pairs(root: Path, splits: Sequence[str] | None, manifest: Path | None) -> list[Any]:
    """Every H&E/IHC pair of the asked splits (all splits for None); raises when there is none."""
    from tdkstain.data.pairs import discover_pairs

    pairs = []
    for split in splits or [None]:
        pairs += discover_pairs(root, split=split, manifest=manifest)
    if not pairs:
        where = f" (split {', '.join(splits)})" if splits else ""
        raise TdkstainError(f"{root}: no H&E/IHC pairs found{where}; run 'tdkstain check {root}' to see why")
    return pairs


def _calibrate_or_keep_record(
    root: Path, params: Any, pairs: Sequence[Any], calibrate_sample: int | None, previous: dict | None,
    max_pixels: int | None = None,
) -> tuple[Any, dict | None]:
    """The parameters to extract with, and the calibration record that ``extraction.json`` should keep."""
    if calibrate_sample:
        return calibrate(root, params, pairs, sample=calibrate_sample, max_pixels=max_pixels)
    if (
        previous is not None
        and previous.get("calibration")
        and params.membrane.calibrated
        and params.membrane.threshold == previous["calibration"].get("membrane_threshold")
    ):
        return params, previous["calibration"]  # resuming with the fitted threshold: keep its record
    return params, None


def _tasks_allowed_by_record(
    root: Path,
    pairs: Sequence[Any],
    params: Any,
    params_dict: dict,
    previous: dict | None,
    force: bool,
    overlays: bool,
    engine: str,
    max_pixels: int | None = None,
) -> list[_TileTask]:
    """The tile tasks, once ``extraction.json`` (or its absence) allows writing with ``params_dict``.

    Outputs of other parameters, or of unknown ones, must never mix with this
    run's: either the run resumes with the recorded parameters, or ``force``
    replaces every tile.
    """
    tasks = _make_tasks(root, pairs, params, force, overlays, engine, max_pixels)
    if previous is not None and previous["params"] != params_dict and not force:
        diff = "; ".join(_differences(previous["params"], params_dict))
        raise TdkstainError(
            f"{root / EXTRACTION_JSON}: this dataset was extracted with other parameters ({diff}). "
            "Rerun with the same options to resume, or add --force to re-extract every tile with the new ones"
        )
    if previous is not None and previous["params"] != params_dict:
        force = True  # new parameters: nothing old may stay
        tasks = _make_tasks(root, pairs, params, force, overlays, engine, max_pixels)
    if previous is None and not force:
        foreign = next(
            (t for t in tasks if any(Path(p).exists() for p in (t.dab, t.dab_mask, t.density, t.centroids))), None
        )
        if foreign is not None:
            raise TdkstainError(
                f"{root}: knowledge maps already exist (e.g. {foreign.dab_mask}) but {EXTRACTION_JSON} is missing, "
                "so their parameters are unknown (made by another tool?). Add --force to replace them"
            )
    return tasks


def _bad_tiles_error(bad: Sequence[TileResult], total: int) -> TdkstainError:
    """The error naming the tiles that could not be extracted (the first 20 of them)."""
    shown = "\n  ".join(f"{t.error}" for t in bad[:20])
    more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
    return TdkstainError(
        f"{len(bad)} of {total} IHC tiles could not be extracted:\n  {shown}{more}\n"
        "The other tiles were written. Fix or remove these files and rerun, or add --skip-bad to go on without them"
    )


def _record_complete(root: Path, params_dict: dict, summary: ExtractionSummary) -> None:
    """Mark ``extraction.json`` complete, with the splits, tile count and bad tiles of this run."""
    _write_record(
        root,
        params_dict,
        summary.calibration,
        complete=True,
        splits=sorted({str(t.split) for t in summary.tiles}),
        tiles=len(summary.tiles),
        bad=[t.ihc for t in summary.bad],
    )
