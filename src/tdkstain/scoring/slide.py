"""HER2 map of a whole IHC slide: the tissue scored region by region, and the slide's score over all of it.

``tdkstain score SLIDE`` runs :func:`score_slide`:

1. Open the slide (OpenSlide or tiffslide, :class:`tdkstain.slides.reader.Slide`)
   and view it at the scoring resolution ``params.cells.mpp``
   (:class:`~tdkstain.slides.reader.SlideAtMpp`: the coarsest pyramid level at
   least that fine, resampled by area when it is not within 2.5 %). Cells are
   measured at the microns per pixel actually delivered (``view.mpp``).
2. Find tissue on a thumbnail (:func:`ihc_tissue_mask`: coloured, as
   :func:`tdkstain.slides.tissue.tissue_mask` finds it, or darker than the
   glass, for the pale counterstain of HER2 0 tissue) and lay a grid of
   square **regions** of ``region_um`` microns over the slide from its
   top-left corner (the last row and column are cut at the slide's edge).
   A region whose tissue fraction is at least ``min_tissue`` is scored; the
   others are background, skipped.
3. Each region is read with a **margin** of ``margin_um`` on every side (the
   tumour rule's neighbour radius plus two cell expansions, 35 um by
   default), so that the cells at its border are whole and their
   neighbourhoods complete, and scored with
   :func:`tdkstain.scoring.tile.score_tile`. Only the cells whose nucleus
   centroid lies inside the region (half-open:
   ``x0 <= x < x0 + w``) count for it, so every cell counts in exactly one
   region. Per region only its cell counts are kept (``RegionScore``).
4. The slide's score is the guideline applied to the **summed counts** of
   every scored region (:func:`tdkstain.scoring.her2.pooled_score`): one
   reading over all scored tumour cells, as the pathologist's whole-slide
   estimate of "% of tumour cells", not a vote of regions.

Outputs, in ``out_dir``, named by the slide's stem, each written atomically
after every region is scored (a failed region leaves no new file)::

    STEM.regions.csv   one row per scored region (REGION_COLUMNS): position in level-0 pixels,
                       score, reason, cell counts, % per class, H-score
    STEM.geojson       the regions as QuPath tile objects (Polygon, level-0 pixels) with a
                       "HER2 ..." classification and their measurements
    STEM.her2.png      the thumbnail with each region coloured by its score and a legend
    STEM.her2.json     settings, slide, regions per score and the slide's score

Memory does not grow with the slide: regions are read one at a time (or, with
``workers``, at most ``QUEUE_PER_WORKER x workers`` in flight), cells are
dropped after their region is counted, and what is kept per region is a few
numbers. The rest is the thumbnail (``tissue_thumbnail_size`` squared, read
as :func:`~tdkstain.slides.reader.read_thumbnail` does) and one region's
measurement: about 100 bytes of numpy arrays per pixel of the region read
with its margins (measured: 41 MiB for a 256 um region at 0.5 um/px, a
652 px square with its margins), plus the nuclei engine's torch buffers, per
worker.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from tdkstain.plumbing.atomic import display_name, safe_strings, write_text_atomic
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.plumbing.jsonsafe import json_safe
from tdkstain.plumbing.limits import check_number
from tdkstain.scoring.her2 import SCORES, RegionScore, ScoringParams, pooled_score, score_cells
from tdkstain.scoring.run import TILE_COLUMNS, tile_row
from tdkstain.scoring.tile import he_warning
from tdkstain.slides.reader import SLIDE_SUFFIXES, TIFF_SUFFIXES

__all__ = [
    "COUNT_KEYS",
    "LARGE_TIFF_SIDE",
    "REGION_COLUMNS",
    "SCORE_COLOURS",
    "SLIDE_SUFFIXES",
    "SlideScoreOptions",
    "SlideScoreSummary",
    "ihc_tissue_mask",
    "is_slide",
    "score_slide",
]

#: A single-level TIFF longer than this on a side (pixels) is scored as a slide: a 5 mm field at 0.5 um/px.
LARGE_TIFF_SIDE = 10_000
#: Regions in flight per worker process (submitted, not yet collected).
QUEUE_PER_WORKER = 2
#: The cell counts a region keeps (``RegionScore.counts``), summed over regions for the slide's score.
COUNT_KEYS: tuple[str, ...] = (
    "cells", "tumour", "negative", "weak", "moderate", "strong", "complete", "strong_complete",
)
#: Columns of STEM.regions.csv: the region's place (grid row and column; x, y, w, h in level-0 pixels),
#: its tissue fraction, the columns of scores.csv (tile_row, without "image") and the counts behind them.
REGION_COLUMNS: tuple[str, ...] = (
    "region", "row", "col", "x", "y", "w", "h", "tissue_fraction", *TILE_COLUMNS[1:],
    *(f"n_{key}" for key in COUNT_KEYS[2:]), "tumour_cell_area_um2",
)
#: Map and QuPath colours (RGB) of the slide-level scores, as QuPath's classes Negative, 1+, 2+, 3+
#: (the colours of scoring.outputs.CLASS_COLOURS), and of a region that could not be scored.
SCORE_COLOURS: dict[str, tuple[int, int, int]] = {
    "0": (112, 112, 225), "1+": (255, 215, 0), "2+": (224, 142, 0), "3+": (200, 35, 35),
    "not scorable": (150, 150, 150),
}


# --------------------------------------------------------------------------- which inputs are slides


def is_slide(path: str | os.PathLike) -> bool:
    """True when ``path`` is a whole-slide image to score region by region, False for a tile.

    A slide: a vendor whole-slide format (:data:`SLIDE_SUFFIXES`, by its name
    alone; a damaged one is reported by the slide reader, naming it), or a
    TIFF whose header declares more than one resolution level (a pyramid, as
    ``tdkstain slide`` writes) or a level 0 longer than :data:`LARGE_TIFF_SIDE`
    pixels on a side. Only TIFF headers are read, never pixel data. A TIFF
    whose header cannot be parsed is not a slide: it goes to the tile reader,
    which names it and says what is wrong (or skips it under ``--skip-bad``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SLIDE_SUFFIXES:
        return True
    if suffix not in TIFF_SUFFIXES:
        return False
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            levels = len(series.levels)
            page = series.levels[0].keyframe
            side = max(int(page.imagewidth), int(page.imagelength))
    except Exception:  # not a TIFF after all, truncated, damaged: the tile reader says which
        return False
    return levels > 1 or side > LARGE_TIFF_SIDE


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class SlideScoreOptions:
    """How a slide is cut into regions and what is drawn (the scoring itself: :class:`ScoringParams`).

    Attributes:
        region_um: side of the square regions, microns (32..4096).
        slide_mpp: microns per pixel of the slide's level 0, when its metadata lacks (or misstates) it.
        workers: worker processes scoring regions (0: this process).
        min_tissue: fraction (0..1] of a region that must be tissue for it to be scored.
        margin_um: context read around each region, microns (None: the tumour rule's neighbour
            radius plus twice the cell expansion: 25 + 2 x 5 = 35 um by default).
        thumbnail_size: longer side of STEM.her2.png's slide image, pixels.
        tissue_thumbnail_size: longer side of the thumbnail tissue is found on, pixels.
        backend: slide reader, ``"auto"`` | ``"openslide"`` | ``"tiffslide"``.
        device: where nuclei are found (``"cpu"`` or a torch device).
    """

    region_um: float = 256.0
    slide_mpp: float | None = None
    workers: int = 0
    min_tissue: float = 0.25
    margin_um: float | None = None
    thumbnail_size: int = 1024
    tissue_thumbnail_size: int = 2048
    backend: str = "auto"
    device: str = "cpu"

    def __post_init__(self) -> None:
        from tdkstain.slides.reader import BACKENDS

        check_number("--region", self.region_um, 32, 4096, hint="the side of the square regions in microns, e.g. 256")
        check_number("--workers", self.workers, 0, 256, integer=True)
        if self.slide_mpp is not None:
            check_number("--slide-mpp", self.slide_mpp, 0.01, 1000, hint="microns per pixel: 0.25 at 40x, 0.5 at 20x")
        check_number("min_tissue", self.min_tissue, 0, 1, hint="a fraction of the region, e.g. 0.25")
        if self.min_tissue <= 0:
            raise TdkstainError("min_tissue must be above 0 (a region without tissue has no cells to score), "
                                f"got {self.min_tissue!r}")
        if self.margin_um is not None:
            check_number("margin_um", self.margin_um, 0, 500, hint="microns of context around each region, e.g. 40")
        check_number("thumbnail_size", self.thumbnail_size, 64, 16384, integer=True)
        check_number("tissue_thumbnail_size", self.tissue_thumbnail_size, 64, 16384, integer=True)
        if self.backend not in BACKENDS:
            raise TdkstainError(f"slide backend {self.backend!r} is unknown; choose one of {', '.join(BACKENDS)}")

    def margin(self, params: ScoringParams) -> float:
        """Microns of context read around each region."""
        if self.margin_um is not None:
            return float(self.margin_um)
        return float(params.neighbour_radius_um + 2 * params.cells.cell_expansion_um)


# --------------------------------------------------------------------------- results


@dataclass
class SlideScoreSummary:
    """What :func:`score_slide` found and wrote."""

    slide: Path
    result: RegionScore  # the guideline over the summed counts of every scored region
    regions_total: int  # regions of the grid
    regions_scored: int  # regions with enough tissue (scorable or not)
    regions_per_score: dict[str, int]  # scored regions per score, and "not scorable"
    tissue_area_mm2: float  # tissue inside the scored regions
    tumour_cell_area_mm2: float  # summed area of the counted tumour cells
    mpp: float  # microns per pixel the cells were measured at
    region_px: int  # region side in pixels at ``mpp``
    files: dict[str, Path] = field(default_factory=dict)  # "map", "regions", "geojson", "json"
    seconds: float = 0.0

    def line(self) -> str:
        """One line for the command line: the slide's score, why, over what, and the map's file."""
        counts = ", ".join(f"{k}: {v}" for k, v in self.regions_per_score.items() if v)
        regions = f"{self.regions_scored} region{'s' if self.regions_scored != 1 else ''}"
        return (f"{display_name(self.slide.name)}: {_score_text(self.result)} ({_why(self.result)} over "
                f"{self.tissue_area_mm2:.2f} mm² of tissue, {regions}{': ' + counts if counts else ''}) -> "
                f"{display_name(str(self.files.get('map', '')))}")


def _score_text(result: RegionScore) -> str:
    return f"HER2 {result.score}" if result.scorable else "HER2 not scorable"


def _why(result: RegionScore) -> str:
    """The guideline's reason for a pooled score, in words, with the number of tumour cells."""
    n = f"{result.tumour_cells:,} tumour cells"
    if result.score == "3+":
        return f"complete strong membranes in {result.percent_strong_complete:.1f} % of {n}"
    if result.score == "2+":
        return f"complete weak-to-moderate membranes in {result.percent_complete:.1f} % of {n}"
    if result.score == "1+":
        return f"faint or incomplete membranes in {result.percent_stained:.1f} % of {n}"
    if result.score == "0":
        return f"membrane staining in {result.percent_stained:.1f} % of {n}"
    return f"{n}, too few to score"


# --------------------------------------------------------------------------- tissue


#: Optical density (decadic, of the grey level against the glass) from which a thumbnail pixel is tissue
#: however pale its colour: 0.02 is 4.5 % darker than the glass. Glass varies by well under that once
#: smoothed; the palest synthetic HER2 0 tissue (haematoxylin only) lies at 0.03-0.05.
TISSUE_MIN_OD = 0.02
#: Gaussian sigma (microns) over which the grey level is averaged before that test, so the pale stroma
#: between nuclei counts with them (a no-op on thumbnails coarser than this).
TISSUE_SMOOTH_UM = 8.0


def ihc_tissue_mask(thumbnail: np.ndarray, thumbnail_mpp: float) -> np.ndarray:
    """Tissue on the thumbnail of an IHC slide: coloured (as :func:`tdkstain.slides.tissue.tissue_mask`) or darker
    than the glass.

    The saturation test alone is made for H&E: the haematoxylin counterstain of a
    HER2 0 slide is too pale and grey for it (median saturation 0.02-0.04 on
    synthetic IHC, under its floor of 0.07), so tissue without DAB would go
    unscored. A pixel is also tissue when its grey level, smoothed over
    :data:`TISSUE_SMOOTH_UM`, lies :data:`TISSUE_MIN_OD` or more below the glass
    (the 99th percentile of the grey levels: a thumbnail without glass takes its
    palest tissue for glass and falls back on the saturation test for that).
    Specks under 100 um x 100 um are dropped and small holes filled, as there.

    Args:
        thumbnail: ``(H, W, 3)`` uint8 RGB.
        thumbnail_mpp: microns per thumbnail pixel.
    Returns:
        ``(H, W)`` bool, undilated.
    """
    from scipy import ndimage
    from skimage.morphology import remove_small_holes, remove_small_objects

    from tdkstain.slides.tissue import MAX_DARK_VALUE, MIN_TISSUE_AREA_UM2, tissue_mask

    coloured = tissue_mask(thumbnail, thumbnail_mpp, dilate_px=0)
    grey = thumbnail.astype(np.float32).mean(axis=2)
    dark = thumbnail.max(axis=2) <= MAX_DARK_VALUE
    sigma = TISSUE_SMOOTH_UM / thumbnail_mpp
    smooth = ndimage.gaussian_filter(grey, sigma, mode="nearest") if sigma >= 0.5 else grey
    glass = float(np.percentile(grey[~dark], 99)) if (~dark).any() else 255.0
    darker = (np.log10(max(glass, 1.0) / np.maximum(smooth, 1.0)) >= TISSUE_MIN_OD) & ~dark
    mask = coloured | darker
    min_area = max(1, int(math.ceil(MIN_TISSUE_AREA_UM2 / thumbnail_mpp**2)))
    if min_area > 1:
        mask = remove_small_objects(mask, max_size=min_area - 1)
        mask = remove_small_holes(mask, max_size=min_area - 1)
    return mask


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class _Region:
    """One square of the grid: in pixels of the view (x, y, w, h) and of level 0 (x0, y0, w0, h0)."""

    index: int
    row: int
    col: int
    x: int
    y: int
    w: int
    h: int
    x0: int
    y0: int
    w0: int
    h0: int
    tissue: float  # tissue fraction on the thumbnail


def _tissue_table(mask: np.ndarray) -> np.ndarray:
    """Summed-area table of a bool mask: ``table[y, x]`` = tissue pixels above and left of ``(y, x)``."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    return table


def _fraction(table: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> float:
    """Tissue fraction of the thumbnail box ``[x0, x1) x [y0, y1)`` (thumbnail pixels, rounded, at least 1 px)."""
    height, width = table.shape[0] - 1, table.shape[1] - 1
    c0 = min(width - 1, max(0, int(round(x0))))
    r0 = min(height - 1, max(0, int(round(y0))))
    c1 = min(width, max(c0 + 1, int(round(x1))))
    r1 = min(height, max(r0 + 1, int(round(y1))))
    inside = table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]
    return float(inside) / ((r1 - r0) * (c1 - c0))


def _plan_regions(view, side: int, level0_per_px: float, mask: np.ndarray,
                  min_tissue: float) -> tuple[list[_Region], int]:
    """The regions with at least ``min_tissue`` tissue, row-major, and the number of grid squares."""
    width0, height0 = view.slide.dimensions
    rows, cols = math.ceil(view.height / side), math.ceil(view.width / side)
    scale_x, scale_y = mask.shape[1] / view.width, mask.shape[0] / view.height  # thumbnail px per view px
    table = _tissue_table(mask)
    regions = []
    for row in range(rows):
        y, h = row * side, min(side, view.height - row * side)
        for col in range(cols):
            x, w = col * side, min(side, view.width - col * side)
            tissue = _fraction(table, x * scale_x, y * scale_y, (x + w) * scale_x, (y + h) * scale_y)
            if tissue < min_tissue:
                continue
            x0, y0 = int(round(x * level0_per_px)), int(round(y * level0_per_px))
            x1 = min(width0, int(round((x + w) * level0_per_px)))
            y1 = min(height0, int(round((y + h) * level0_per_px)))
            regions.append(_Region(len(regions), row, col, x, y, w, h, x0, y0, x1 - x0, y1 - y0, tissue))
    return regions, rows * cols


# --------------------------------------------------------------------------- one region


def _score_region(view, region: _Region, params: ScoringParams, margin: int, device: str) -> dict[str, Any]:
    """Score one region read with ``margin`` view pixels of context; count only cells centred inside it.

    Returns the region's ``RegionScore`` as a dict (``"result"``) and its tumour cells' area in um^2.
    """
    from tdkstain.scoring.tile import score_tile

    try:
        pixels = view.read(region.x - margin, region.y - margin, region.w + 2 * margin, region.h + 2 * margin)
    except TdkstainError as err:
        raise TdkstainError(
            f"{err} [while scoring region {region.index} (grid row {region.row}, column {region.col}) at level-0 "
            f"x={region.x0}, y={region.y0}, {region.w0}x{region.h0} px; no output was written]"
        ) from None
    tile = score_tile(pixels, params, device=device)
    centre = tile.cells.centroid + 0.5  # pixel i covers [i, i + 1): its centre is i + 0.5
    inside = ((centre[:, 0] >= margin) & (centre[:, 0] < margin + region.h)
              & (centre[:, 1] >= margin) & (centre[:, 1] < margin + region.w))
    counted = tile.tumour & inside
    counts = score_cells(tile.cells, params, tumour=counted).counts
    counts["cells"] = int(inside.sum())
    return {
        "result": pooled_score(counts, params).to_dict(),
        "tumour_cell_area_um2": float(tile.cells.cell_area_um2[counted].sum()),
    }


# Worker processes: each opens the slide once (handles cannot be pickled) and keeps it.
_WORKER: dict[str, Any] = {}


def _init_worker(path: str, backend: str, slide_mpp: float | None, target_mpp: float, params: dict, margin: int,
                 device: str) -> None:
    import torch

    from tdkstain.slides.reader import Slide, SlideAtMpp

    torch.set_num_threads(1)  # one process per core: threads inside each would only contend
    slide = Slide(path, backend=backend, slide_mpp=slide_mpp)
    _WORKER.update(view=SlideAtMpp(slide, target_mpp), params=ScoringParams.from_dict(params), margin=margin,
                   device=device)


def _worker_region(region: _Region) -> dict[str, Any]:
    return _score_region(_WORKER["view"], region, _WORKER["params"], _WORKER["margin"], _WORKER["device"])


def _bounded_map(submit: Callable[[Any], Any], jobs: Iterable[Any], depth: int) -> Iterator[Any]:
    """``future.result()`` of ``submit(job)`` for each job, in order, with at most ``depth`` futures pending.

    Results are taken as they are due, so memory holds at most ``depth``
    regions' pixels and results whatever the slide's size.
    """
    pending: deque = deque()
    for job in jobs:
        pending.append(submit(job))
        if len(pending) >= depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _scored_regions(slide, view, regions: list[_Region], params: ScoringParams, margin: int,
                    options: SlideScoreOptions) -> Iterator[dict[str, Any]]:
    """Each region's record, in order; in ``options.workers`` processes when asked."""
    if options.workers > 0 and len(regions) > 1:
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        initargs = (str(slide.path), options.backend, options.slide_mpp, params.cells.mpp, params.to_dict(), margin,
                    options.device)
        pool = ProcessPoolExecutor(max_workers=options.workers, mp_context=context, initializer=_init_worker,
                                   initargs=initargs)
        try:
            depth = QUEUE_PER_WORKER * options.workers
            yield from _bounded_map(lambda region: pool.submit(_worker_region, region), regions, depth)
        except BrokenProcessPool as err:
            raise TdkstainError(
                f"{slide.path}: a worker process scoring its regions stopped ({err}); it may have run out of memory: "
                f"rerun with fewer --workers (now {options.workers}; 0 scores in the main process)"
            ) from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    else:
        for region in regions:
            yield _score_region(view, region, params, margin, options.device)


# --------------------------------------------------------------------------- outputs


def _label(result: dict[str, Any]) -> str:
    return result["score"] if result["score"] is not None else "not scorable"


def _region_row(region: _Region, record: dict[str, Any]) -> dict[str, Any]:
    result = record["result"]
    row = tile_row("", RegionScore(**result))
    row.pop("image")
    counts = result["counts"]
    return {
        "region": region.index, "row": region.row, "col": region.col, "x": region.x0, "y": region.y0,
        "w": region.w0, "h": region.h0, "tissue_fraction": round(region.tissue, 4), **row,
        **{f"n_{key}": int(counts.get(key, 0)) for key in COUNT_KEYS[2:]},
        "tumour_cell_area_um2": round(record["tumour_cell_area_um2"], 1),
    }


def _region_feature(region: _Region, record: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """A QuPath tile object: the region's square in level-0 pixels, its class and measurements."""
    x0, y0, x1, y1 = region.x0, region.y0, region.x0 + region.w0, region.y0 + region.h0
    label = _label(record["result"])
    measurements = {
        "Tissue fraction": row["tissue_fraction"], "Cells": row["cells"], "Tumour cells": row["tumour_cells"],
        "Tumour cells negative": row["n_negative"], "Tumour cells 1+": row["n_weak"],
        "Tumour cells 2+": row["n_moderate"], "Tumour cells 3+": row["n_strong"],
        "Complete membranes": row["n_complete"], "Complete strong membranes": row["n_strong_complete"],
        "% negative": row["pct_negative"], "% 1+": row["pct_weak"], "% 2+": row["pct_moderate"],
        "% 3+": row["pct_strong"], "% complete": row["pct_complete"], "% strong complete": row["pct_strong_complete"],
        "% stained": row["pct_stained"], "H-score": row["h_score"],
    }
    if label in SCORES:
        measurements["HER2 score"] = SCORES.index(label)
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
        "properties": {
            "objectType": "tile",
            "name": f"region {region.index} (row {region.row}, col {region.col})",
            "classification": {"name": f"HER2 {label}", "color": list(SCORE_COLOURS[label])},
            "measurements": measurements,
        },
    }


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _nice_length_um(max_um: float) -> float:
    """The largest 1-2-5 x 10^k microns not above ``max_um``."""
    if max_um <= 0:
        return 0.0
    power = 10 ** math.floor(math.log10(max_um))
    return max(step * power for step in (1, 2, 5) if step * power <= max_um)


def _draw_map(thumbnail: np.ndarray, view_to_thumb: tuple[float, float], thumb_mpp: float,
              regions: list[_Region], labels: list[str], region_um: float, title: str) -> np.ndarray:
    """The thumbnail with each scored region filled in its score's colour and a legend below.

    Args:
        thumbnail: (h, w, 3) uint8 RGB of the whole slide.
        view_to_thumb: thumbnail pixels per view pixel, (x, y).
        thumb_mpp: microns per thumbnail pixel (the scale bar).
    Returns:
        (h + legend, max(w, 360), 3) uint8 RGB.
    """
    from PIL import Image, ImageDraw

    height, width = thumbnail.shape[:2]
    base = Image.fromarray(thumbnail).convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    sx, sy = view_to_thumb
    for region, label in zip(regions, labels):
        box = (int(round(region.x * sx)), int(round(region.y * sy)),
               max(int(round((region.x + region.w) * sx)) - 1, int(round(region.x * sx))),
               max(int(round((region.y + region.h) * sy)) - 1, int(round(region.y * sy))))
        colour = SCORE_COLOURS[label]
        if label == "not scorable":  # grey hatching: looked at, too few tumour cells
            draw.rectangle(box, fill=(*colour, 120), outline=(90, 90, 90, 200))
            step = 6
            for k in range(-(box[3] - box[1]), box[2] - box[0] + 1, step):
                start = (box[0] + max(k, 0), box[1] + max(-k, 0))
                length = min(box[2] - start[0], box[3] - start[1])
                if length > 0:
                    draw.line([start, (start[0] + length, start[1] + length)], fill=(60, 60, 60, 200), width=1)
        else:
            draw.rectangle(box, fill=(*colour, 120), outline=(*colour, 230))
    image = Image.alpha_composite(base, layer).convert("RGB")

    # The legend below: the slide's score, one swatch per score with its count of regions, what the
    # colours mean, a scale bar; wrapped to the thumbnail's width (at least 360 px).
    canvas_width = max(width, 360)
    font_size = max(11, min(22, canvas_width // 48))
    font, bold = _font(font_size), _font(int(font_size * 1.2))
    pad = font_size // 2 + 2
    measure = ImageDraw.Draw(image)
    room = canvas_width - 2 * pad
    counts = {label: labels.count(label) for label in SCORE_COLOURS}
    entries = [(label, f"{'HER2 ' + label if label in SCORES else label} ({counts[label]})") for label in SCORE_COLOURS]
    entry_rows: list[list[tuple[str, str, int]]] = [[]]
    used = 0
    for label, text in entries:
        entry_width = font_size + 6 + int(measure.textlength(text, font=font)) + 2 * pad
        if entry_rows[-1] and used + entry_width > room:
            entry_rows.append([])
            used = 0
        entry_rows[-1].append((label, text, entry_width))
        used += entry_width
    title_lines = _wrap(title, bold, room, measure)
    note_lines = _wrap(f"Regions of {region_um:g} um coloured by score (ASCO/CAP 2018), how many in brackets; hatched: "
                       "too few tumour cells to score. Research use only, not a diagnosis.", font, room, measure)
    line_height = int(font_size * 1.45)
    legend_height = (pad + len(title_lines) * int(line_height * 1.15) + len(entry_rows) * line_height
                     + len(note_lines) * line_height + line_height + pad)
    canvas = Image.new("RGB", (canvas_width, height + legend_height), (255, 255, 255))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = height + pad
    for text in title_lines:
        draw.text((pad, y), text, fill=(0, 0, 0), font=bold)
        y += int(line_height * 1.15)
    for entry_row in entry_rows:
        x = pad
        for label, text, entry_width in entry_row:
            draw.rectangle((x, y + 2, x + font_size, y + font_size + 2), fill=SCORE_COLOURS[label],
                           outline=(60, 60, 60))
            draw.text((x + font_size + 6, y), text, fill=(0, 0, 0), font=font)
            x += entry_width
        y += line_height
    for text in note_lines:
        draw.text((pad, y), text, fill=(80, 80, 80), font=font)
        y += line_height
    scale_um = _nice_length_um(0.25 * width * thumb_mpp)
    if scale_um > 0 and thumb_mpp > 0:
        length = int(round(scale_um / thumb_mpp))
        draw.rectangle((pad, y + font_size // 2, pad + length, y + font_size // 2 + 3), fill=(0, 0, 0))
        scale_text = f"{scale_um / 1000:g} mm" if scale_um >= 1000 else f"{scale_um:g} um"
        draw.text((pad + length + 6, y), scale_text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def _wrap(text: str, font, room: float, measure) -> list[str]:
    """``text`` cut at spaces into lines no wider than ``room`` pixels (a longer word stands alone)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and measure.textlength(f"{lines[-1]} {word}", font=font) <= room:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _title(name: str, result: RegionScore) -> str:
    return f"{name}: {_score_text(result)}, {_why(result)}"


# --------------------------------------------------------------------------- the whole slide


def score_slide(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    params: ScoringParams | None = None,
    options: SlideScoreOptions = SlideScoreOptions(),
    *,
    stem: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> SlideScoreSummary:
    """Score HER2 over a whole IHC slide region by region and write its map (see the module docstring).

    Args:
        path: a slide OpenSlide or tiffslide reads (SVS, NDPI, MRXS, a pyramidal TIFF, ...).
        out_dir: output folder (created); files are named by ``stem``.
        params: scoring settings; ``params.cells.mpp`` is the resolution the slide is read at.
        options: :class:`SlideScoreOptions`.
        stem: the output files' name (default: the slide's file stem).
        progress: a tqdm bar on stderr when it is a terminal.
        log: receives one-line messages (plan, warnings).
    Returns:
        :class:`SlideScoreSummary`.
    Raises:
        TdkstainError: the slide cannot be opened or read (naming it, and the region), records no
            microns per pixel and ``options.slide_mpp`` is not given, or an output cannot be written.
    """
    from tdkstain.data.images import write_png
    from tdkstain.scoring.outputs import write_csv, write_geojson
    from tdkstain.slides.reader import Slide, SlideAtMpp, read_thumbnail

    started = time.perf_counter()
    params = (params or ScoringParams()).validate()
    path, out_dir = Path(path), Path(out_dir)
    stem = stem or path.stem
    if out_dir.exists() and not out_dir.is_dir():
        raise TdkstainError(f"--out {out_dir}: a file is in the way; scoring writes a folder there. "
                            "Choose another --out.")
    with Slide(path, backend=options.backend, slide_mpp=options.slide_mpp) as slide:
        view = SlideAtMpp(slide, params.cells.mpp)  # refuses a slide without mpp, naming --slide-mpp
        if view.mpp != params.cells.mpp:  # a level within 2.5 % is used as is: measure at its own scale
            params = replace(params, cells=replace(params.cells, mpp=view.mpp)).validate()
        side = max(1, int(round(options.region_um / view.mpp)))
        margin = int(math.ceil(options.margin(params) / view.mpp))
        level0_per_px = slide.level_downsamples[view.choice.level] * view.choice.scale
        thumbnail = read_thumbnail(slide, options.tissue_thumbnail_size)
        thumb_mpp = slide.mpp * slide.dimensions[0] / thumbnail.shape[1]
        mask = ihc_tissue_mask(thumbnail, thumb_mpp)
        stain_warning = he_warning(thumbnail)
        if stain_warning:
            log(f"warning: {display_name(path.name)} {stain_warning}")
        regions, total = _plan_regions(view, side, level0_per_px, mask, options.min_tissue)
        choice = view.choice
        log(f"{display_name(path.name)}: {slide.dimensions[0]}x{slide.dimensions[1]} px at {slide.mpp:.4g} um/px, "
            f"{slide.level_count} level(s) ({slide.backend}); scoring at {view.mpp:.4g} um/px from level {choice.level}"
            + ("" if choice.scale == 1.0 else f" resampled by 1/{choice.scale:.4g}")
            + f": {len(regions)} of {total} regions of {options.region_um:g} um ({side} px) hold >= "
            f"{options.min_tissue:.0%} tissue, {total - len(regions)} background skipped")
        if not regions:
            log(f"warning: no tissue found in {display_name(path.name)}; nothing to score (the map is empty)")
        from tqdm import tqdm

        bar = tqdm(total=len(regions), unit="region", desc="scoring regions",
                   disable=not (progress and sys.stderr.isatty()), file=sys.stderr)
        records = []
        with bar:
            for record in _scored_regions(slide, view, regions, params, margin, options):
                records.append(record)
                bar.update(1)
        slide_info = {
            "path": str(path), "name": path.name, "backend": slide.backend, "dimensions": list(slide.dimensions),
            "level_dimensions": [list(d) for d in slide.level_dimensions], "mpp": slide.mpp,
            "mpp_from": "--slide-mpp" if options.slide_mpp is not None else "metadata",
            "read_level": choice.level, "read_scale": choice.scale, "read_mpp": view.mpp,
            "level0_px_per_read_px": level0_per_px,
        }

    rows = [_region_row(region, record) for region, record in zip(regions, records)]
    labels = [_label(record["result"]) for record in records]
    totals = {key: sum(int(record["result"]["counts"].get(key, 0)) for record in records) for key in COUNT_KEYS}
    result = pooled_score(totals, params)
    per_score = {label: labels.count(label) for label in (*SCORES, "not scorable")}
    tissue_mm2 = sum(r.tissue * r.w * r.h for r in regions) * view.mpp**2 / 1e6
    tumour_mm2 = sum(record["tumour_cell_area_um2"] for record in records) / 1e6

    files = {"map": out_dir / f"{stem}.her2.png", "regions": out_dir / f"{stem}.regions.csv",
             "geojson": out_dir / f"{stem}.geojson", "json": out_dir / f"{stem}.her2.json"}
    write_csv(files["regions"], rows, REGION_COLUMNS)
    write_geojson(files["geojson"], [_region_feature(r, rec, row) for r, rec, row in zip(regions, records, rows)])
    scale = max(1.0, max(thumbnail.shape[:2]) / options.thumbnail_size)
    if scale > 1:
        from PIL import Image

        size = (max(1, int(round(thumbnail.shape[1] / scale))), max(1, int(round(thumbnail.shape[0] / scale))))
        thumbnail = np.asarray(Image.fromarray(thumbnail).resize(size, Image.Resampling.BOX))
    view_to_thumb = (thumbnail.shape[1] / view.width, thumbnail.shape[0] / view.height)
    map_mpp = slide_info["mpp"] * slide_info["dimensions"][0] / thumbnail.shape[1]
    picture = _draw_map(thumbnail, view_to_thumb, map_mpp, regions, labels,
                        options.region_um, _title(display_name(path.name), result))
    write_png(files["map"], picture)
    summary = SlideScoreSummary(
        slide=path, result=result, regions_total=total, regions_scored=len(regions), regions_per_score=per_score,
        tissue_area_mm2=tissue_mm2, tumour_cell_area_mm2=tumour_mm2, mpp=view.mpp, region_px=side, files=files,
        seconds=time.perf_counter() - started,
    )
    document = {
        "what": "HER2 map of an IHC slide by the ASCO/CAP 2018 guideline (tdkstain score); research use only",
        "slide": slide_info,
        "params": params.to_dict(),
        "options": {**asdict(options), "margin_um": options.margin(params), "region_px": side, "margin_px": margin},
        "regions": {"grid": total, "scored": len(regions), "background": total - len(regions), "per_score": per_score},
        "slide_score": {
            **result.to_dict(),
            "how": "the guideline over the summed cell counts of every scored region (scoring.her2.pooled_score)",
            "tissue_area_mm2": tissue_mm2,
            "tumour_cell_area_mm2": tumour_mm2,
        },
        "files": {key: value.name for key, value in files.items()},
        "warnings": [stain_warning] if stain_warning else [],
        "seconds": summary.seconds,
    }
    write_text_atomic(files["json"], json.dumps(safe_strings(json_safe(document)), indent=2))
    return summary
