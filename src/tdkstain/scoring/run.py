"""Score many IHC tiles and write the results: ``tdkstain score`` on files and folders.

Output folder::

    scores.csv          one row per tile: score, reason, cell counts, % per class, H-score
    scores.json         the same, the settings used, and the count of tiles per score
    cells/STEM.csv      one row per cell (scoring.outputs.CELL_COLUMNS)
    geojson/STEM.geojson  the cells as QuPath cell objects
    overlays/STEM.png   each cell's membrane ring coloured by class
    index.html          the table and the overlays, to look through

Tiles are scored in worker processes (``workers``); every file is written
atomically, so an interrupted run leaves no half-written file and a rerun
rewrites all of them.
"""

from __future__ import annotations

import html
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tdkstain.data.images import DEFAULT_MAX_PIXELS, read_rgb, write_png
from tdkstain.plumbing.atomic import display_name, safe_strings, write_text_atomic
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.plumbing.jsonsafe import json_safe
from tdkstain.scoring.her2 import SCORES, RegionScore, ScoringParams

__all__ = ["TILE_COLUMNS", "ScoreOutputs", "score_images", "tile_row", "unique_stems"]

# Columns of scores.csv.
TILE_COLUMNS: tuple[str, ...] = (
    "image", "score", "reason", "cells", "tumour_cells", "pct_negative", "pct_weak", "pct_moderate",
    "pct_strong", "pct_complete", "pct_strong_complete", "pct_stained", "h_score",
)


@dataclass(frozen=True)
class ScoreOutputs:
    """Which per-tile files to write besides scores.csv / scores.json."""

    cells: bool = True
    geojson: bool = True
    overlays: bool = True
    html: bool = True


def tile_row(image: str, result: RegionScore) -> dict:
    """A row of scores.csv for one tile (or region)."""
    p = result.percent
    return {
        "image": image, "score": result.score if result.scorable else "not scorable", "reason": result.reason,
        "cells": result.cells, "tumour_cells": result.tumour_cells,
        "pct_negative": round(p["negative"], 2), "pct_weak": round(p["weak"], 2),
        "pct_moderate": round(p["moderate"], 2), "pct_strong": round(p["strong"], 2),
        "pct_complete": round(result.percent_complete, 2), "pct_strong_complete": round(result.percent_strong_complete, 2),
        "pct_stained": round(result.percent_stained, 2), "h_score": round(result.h_score, 2),
    }


def _score_one(path: str, stem: str, out: str, params_dict: dict, outputs: ScoreOutputs, max_pixels: int,
               device: str) -> dict:
    """Worker: score one tile, write its per-tile files, return its row and its RegionScore as a dict."""
    from tdkstain.scoring import outputs as out_files
    from tdkstain.scoring.tile import he_warning, score_tile

    params = ScoringParams.from_dict(params_dict)
    ihc = read_rgb(path, max_pixels=max_pixels)
    tile = score_tile(ihc, params, device=device)
    folder = Path(out)
    if outputs.cells:
        out_files.write_csv(folder / "cells" / f"{stem}.csv", out_files.cell_rows(tile), out_files.CELL_COLUMNS)
    if outputs.geojson:
        out_files.write_geojson(folder / "geojson" / f"{stem}.geojson", out_files.cell_features(tile))
    if outputs.overlays:
        write_png(folder / "overlays" / f"{stem}.png", out_files.ring_overlay(ihc, tile))
    return {"row": tile_row(path, tile.result), "result": tile.result.to_dict(), "stem": stem,
            "warning": he_warning(ihc)}


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """File stems, made unique (``a``, ``a-2``) so that tiles of different folders never overwrite each other."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        stem = path.stem
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


@dataclass
class ScoreRun:
    """What :func:`score_images` did."""

    rows: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "PATH: why" for each tile left out (skip_bad)
    warnings: list[str] = field(default_factory=list)  # "PATH: what" for tiles scored but suspect (H&E given)
    counts: dict[str, int] = field(default_factory=dict)  # tiles per score, and "not scorable"


def score_images(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    params: ScoringParams | None = None,
    *,
    outputs: ScoreOutputs = ScoreOutputs(),
    workers: int = 0,
    skip_bad: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] = lambda message: None,
) -> ScoreRun:
    """Score IHC tiles and write the output folder described in the module docstring.

    Args:
        paths: IHC image files.
        workers: worker processes (0: score in this process).
        skip_bad: a tile that cannot be read is listed in ``ScoreRun.skipped`` instead of stopping the run.
    """
    params = (params or ScoringParams()).validate()
    paths = [Path(p) for p in paths]
    if not paths:
        raise TdkstainError("no IHC image to score")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TdkstainError(f"--out {out}: a file is in the way; scoring writes a folder there. Choose another --out.")
    out.mkdir(parents=True, exist_ok=True)
    stems = unique_stems(paths)
    jobs = [(str(p), s, str(out), params.to_dict(), outputs, max_pixels, device) for p, s in zip(paths, stems)]
    run = ScoreRun()
    results: dict[str, dict] = {}
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="tile", desc="scoring", disable=not (progress and sys.stderr.isatty()), file=sys.stderr)

    def take(job: tuple, done: dict | None, error: TdkstainError | None) -> None:
        bar.update(1)
        if error is not None:
            if not skip_bad:
                raise error
            run.skipped.append(str(error))
            log(f"skipped: {display_name(str(error))}")
            return
        results[job[1]] = done
        if done.get("warning"):
            run.warnings.append(f"{job[0]}: {done['warning']}")
            log(f"warning: {display_name(job[0])}: {done['warning']}")

    if workers > 0 and len(jobs) > 1:
        context = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [(job, pool.submit(_score_one, *job)) for job in jobs]
            for job, future in futures:
                try:
                    take(job, future.result(), None)
                except TdkstainError as err:
                    take(job, None, err)
    else:
        for job in jobs:
            try:
                take(job, _score_one(*job), None)
            except TdkstainError as err:
                take(job, None, err)
    bar.close()
    ordered = [results[s] for s in stems if s in results]
    if not ordered:
        raise TdkstainError(f"no tile could be scored ({len(run.skipped)} skipped)")
    run.rows = [r["row"] for r in ordered]
    run.counts = {label: sum(r["row"]["score"] == label for r in ordered) for label in (*SCORES, "not scorable")}
    _write_tables(out, run, ordered, params)
    if outputs.html:
        _write_index(out, run, ordered, outputs)
    return run


def _write_tables(out: Path, run: ScoreRun, ordered: list[dict], params: ScoringParams) -> None:
    from tdkstain.scoring.outputs import write_csv

    write_csv(out / "scores.csv", run.rows, TILE_COLUMNS)
    document = {
        "what": "HER2 scores of IHC tiles by the ASCO/CAP 2018 guideline (tdkstain score); research use only",
        "params": params.to_dict(),
        "tiles_per_score": run.counts,
        "skipped": run.skipped,
        "warnings": run.warnings,
        "tiles": [{"image": r["row"]["image"], "stem": r["stem"], **r["result"]} for r in ordered],
    }
    write_text_atomic(out / "scores.json", json.dumps(safe_strings(json_safe(document)), indent=2))


def _write_index(out: Path, run: ScoreRun, ordered: list[dict], outputs: ScoreOutputs) -> None:
    from urllib.parse import quote

    from tdkstain.scoring.outputs import CELL_CLASSES, CLASS_COLOURS, OTHER_COLOUR

    legend = " ".join(
        f'<span style="color:rgb{c}">&#9632;</span> {html.escape(name)}'
        for name, c in zip((*CELL_CLASSES, "not tumour"), (*CLASS_COLOURS, OTHER_COLOUR))
    )
    counts = ", ".join(f"{k}: {v}" for k, v in run.counts.items() if v)
    rows = []
    for r in ordered:
        row, stem = r["row"], r["stem"]
        picture = (f'<a href="overlays/{quote(stem)}.png"><img src="overlays/{quote(stem)}.png" width="256" '
                   f'alt="{html.escape(stem)}"></a>') if outputs.overlays else ""
        rows.append(
            f"<tr><td>{picture}</td><td><b>{html.escape(stem)}</b><br>{html.escape(str(row['image']))}</td>"
            f"<td class=score>{html.escape(str(row['score']))}</td><td>{html.escape(row['reason'])}</td>"
            f"<td>{row['tumour_cells']} / {row['cells']}</td><td>{row['h_score']:.0f}</td></tr>"
        )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>HER2 scores</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border-bottom:1px solid #ddd;
padding:6px;vertical-align:top;text-align:left}}td.score{{font-size:1.6em;font-weight:bold}}.warn{{color:#a00}}</style></head><body>
<h1>HER2 scores (ASCO/CAP 2018)</h1>
<p>{len(ordered)} tiles scored{f", {len(run.skipped)} skipped" if run.skipped else ""}. Tiles per score: {html.escape(counts)}.
Research use only: an automated reading of membrane DAB, not a diagnosis.</p>
{"<p class=warn>" + "<br>".join(html.escape(w) for w in run.warnings) + "</p>" if run.warnings else ""}
<p>Membrane rings: {legend}. Files: <a href="scores.csv">scores.csv</a>, <a href="scores.json">scores.json</a>.</p>
<table><tr><th>overlay</th><th>tile</th><th>score</th><th>why</th><th>tumour / all cells</th><th>H-score</th></tr>
{"".join(rows)}</table></body></html>
"""
    write_text_atomic(out / "index.html", page)
