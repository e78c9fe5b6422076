"""HER2 scoring speed: ``scoring.score_tile`` on 512, 1024 and 2048 px synthetic IHC, and its stages.

- **score_tile**: seconds per tile (median of ``--repeats`` runs over each
  size's tiles) and MP/s, with ``torch.set_num_threads`` 1 and 2 (only the
  nuclei seeds run in torch, and on one thread whatever the setting:
  ``knowledge.extraction.fast._single_thread_on_cpu``; numpy / scipy /
  scikit-image run on one thread), and the same plus the per-tile outputs
  (QuPath GeoJSON + ring overlay, built in memory, not written).
- **stages at 1024 and 2048 px** (``--stage-sizes``): nuclei (``nuclei_and_stains``: colour deconvolution,
  mask, watershed), cells / rings (``expand_labels``, boundaries, membrane
  rings, areas, centroids, ring mean), sectors (smoothing, the 1.5 um reach,
  per-sector peaks, completeness, classes), tumour rule, the guideline,
  GeoJSON, overlay. The stages call ``scoring.cells``' own helpers in
  ``measure_cells``' order; their result is checked equal to
  ``measure_cells``'.
- **identity of the fast paths**: the batched Douglas-Peucker
  (``outputs._simplify``) against ``skimage.measure.approximate_polygon``
  contour by contour, and the ring dilation (``cells._within``) against
  ``distance_transform_edt(...) < r``, on every tile; both are timed too.

Tiles: ``synth.render_pair`` IHC, HER2 0..3 (512 and 1024: one tile per
score; 2048: the four 1024 tiles as a 2 x 2 mosaic, which keeps rendering
memory down). Run from the repository root::

    .venv/bin/python benchmarks/scoring_speed.py [--repeats 5] [--out benchmarks/results/cpu-20261207]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _limits import machine  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def make_tiles(size: int) -> list[np.ndarray]:
    from tdkstain.synth import render_pair

    if size <= 1024:
        return [render_pair(100 + her2, size, her2).ihc for her2 in range(4)]
    quarter = make_tiles(size // 2)
    return [np.concatenate([np.concatenate(quarter[:2], axis=1), np.concatenate(quarter[2:], axis=1)], axis=0)]


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    """Median seconds of ``repeats`` calls (after one warm-up call), and every time."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def stages(ihc: np.ndarray, params) -> tuple[dict[str, float], object]:
    """``score_tile`` and the outputs step by step, timed (``measure_cells(timings=...)`` for its own stages);
    returns seconds per stage and the Cells."""
    from tdkstain.scoring import outputs
    from tdkstain.scoring.cells import measure_cells
    from tdkstain.scoring.her2 import score_cells, tumour_cells
    from tdkstain.scoring.tile import TileScore

    seconds: dict[str, float] = {}
    measured = measure_cells(ihc, params.cells, timings=seconds)
    t = time.perf_counter()
    tumour = tumour_cells(measured, params)
    seconds["tumour_rule"] = time.perf_counter() - t
    t = time.perf_counter()
    result = score_cells(measured, params, tumour)
    seconds["guideline"] = time.perf_counter() - t
    tile = TileScore(cells=measured, tumour=tumour, result=result, params=params)
    t = time.perf_counter()
    outputs.cell_features(tile)
    seconds["geojson"] = time.perf_counter() - t
    t = time.perf_counter()
    outputs.ring_overlay(ihc, tile)
    seconds["overlay"] = time.perf_counter() - t
    return seconds, measured


def fast_path_identity(tiles: list[np.ndarray], params) -> dict:
    """Batched Douglas-Peucker vs scikit-image, ring dilation vs the distance transform: equal, and timed."""
    from scipy import ndimage
    from skimage.measure import approximate_polygon
    from skimage.segmentation import find_boundaries

    from tdkstain.scoring import cells as C
    from tdkstain.scoring import measure_cells, outputs

    report = {"contours": 0, "contours_equal": 0, "rings_equal": 0, "tiles": len(tiles),
              "skimage_s": 0.0, "batched_s": 0.0, "edt_s": 0.0, "dilation_s": 0.0}
    radius = params.cells.px(params.cells.membrane_um)
    for ihc in tiles:
        cells = measure_cells(ihc, params.cells)
        contours = []
        for labels in (cells.cells, cells.nuclei):
            for i, box in enumerate(ndimage.find_objects(labels)):
                if box is not None:
                    contour = outputs._contour(labels[box] == i + 1)
                    if contour is not None:
                        contours.append(contour)
        t = time.perf_counter()
        reference = [approximate_polygon(k, tolerance=outputs.OUTLINE_TOLERANCE_PX) for k in contours]
        report["skimage_s"] += time.perf_counter() - t
        t = time.perf_counter()
        batched = outputs._simplify(contours, outputs.OUTLINE_TOLERANCE_PX)
        report["batched_s"] += time.perf_counter() - t
        report["contours"] += len(contours)
        report["contours_equal"] += sum(np.array_equal(a, b) for a, b in zip(reference, batched))
        boundary = find_boundaries(cells.cells, mode="inner") & (cells.cells > 0)
        t = time.perf_counter()
        by_edt = ndimage.distance_transform_edt(~boundary) < radius
        report["edt_s"] += time.perf_counter() - t
        t = time.perf_counter()
        by_dilation = C._within(boundary, radius)
        report["dilation_s"] += time.perf_counter() - t
        report["rings_equal"] += int(np.array_equal(by_edt, by_dilation))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per tile and case (default 5)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--stage-sizes", type=int, nargs="+", default=[1024, 2048],
                        help="sizes whose stages are timed (default 1024 2048)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cpu-20261207"))
    args = parser.parse_args()

    from tdkstain.scoring import ScoringParams, outputs, score_tile

    params = ScoringParams()
    tiles = {size: make_tiles(size) for size in args.sizes}
    results = {"machine": machine(), "params": params.to_dict(), "score_tile": []}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for size in args.sizes:
            per_tile, with_outputs, cells = [], [], 0
            for ihc in tiles[size]:
                median, _ = timed(lambda ihc=ihc: score_tile(ihc, params), args.repeats)
                per_tile.append(median)
                tile = score_tile(ihc, params)
                cells += len(tile.cells)

                def everything(ihc=ihc):
                    scored = score_tile(ihc, params)
                    outputs.cell_features(scored)
                    outputs.ring_overlay(ihc, scored)

                with_outputs.append(timed(everything, max(1, args.repeats // 2))[0])
            megapixels = size * size / 1e6
            row = {
                "size": size, "threads": threads, "tiles": len(tiles[size]), "cells_per_tile": cells / len(tiles[size]),
                "score_tile_s": statistics.median(per_tile), "score_tile_s_per_tile": per_tile,
                "score_tile_mp_s": megapixels / statistics.median(per_tile),
                "with_outputs_s": statistics.median(with_outputs),
                "with_outputs_mp_s": megapixels / statistics.median(with_outputs),
            }
            results["score_tile"].append(row)
            print(f"{size:5d} px, {threads} thread(s): score_tile {row['score_tile_s']:.3f} s "
                  f"({row['score_tile_mp_s']:.2f} MP/s), + GeoJSON + overlay {row['with_outputs_s']:.3f} s "
                  f"({row['with_outputs_mp_s']:.2f} MP/s), {row['cells_per_tile']:.0f} cells", flush=True)
    torch.set_num_threads(args.threads[0])
    for size in args.stage_sizes:
        if size not in tiles:
            continue
        runs = {}
        for ihc in tiles[size]:
            stages(ihc, params)  # warm-up
            for _ in range(args.repeats if size <= 1024 else max(1, args.repeats // 2)):
                for name, value in stages(ihc, params)[0].items():
                    runs.setdefault(name, []).append(value)
        results[f"stages_{size}"] = {name: statistics.median(values) for name, values in runs.items()}
        total = sum(results[f"stages_{size}"].values())
        print(f"stages at {size} px (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in results[f"stages_{size}"].items())
              + f"; sum {total:.3f}")
    if 1024 in tiles:
        results["fast_paths"] = fast_path_identity(tiles[1024], params)
        print("fast paths:", json.dumps(results["fast_paths"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scoring_speed.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
