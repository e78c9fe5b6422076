"""Whole-slide virtual staining: streaming, resumable, seam-free, into a pyramidal TIFF.

The steps of :func:`stain_slide`:

1. Open the slide and view it at the network's microns per pixel
   (:class:`tdkstain.slides.reader.SlideAtMpp`). The image at that resolution
   (padded with white to a multiple of the generator's downsampling factor) is
   covered by the engine's :class:`tdkstain.inference.TileGrid`.
2. Find tissue on a thumbnail (:mod:`tdkstain.slides.tissue`); only tiles that
   touch tissue are stained, the others are skipped and counted. One skipped
   tile is chosen as the slide's glass: the one whose thumbnail pixels are
   closest to the median colour of the thumbnail's background (so not a
   label, pen mark, speck or scanner edge), inside the slide where possible.
3. Instance-norm statistics consistent across tiles (see
   :mod:`tdkstain.inference`). "global" (default): the engine's exact
   layer-by-layer statistics (:meth:`Stainer.sequential_stats`) over the
   cores of ``stat_tiles`` tissue tiles spread evenly over the slide, one set
   for every tile. "kernel": a pass records every tissue tile's statistics,
   and each tile pools its neighbourhood's (``stat_passes`` such passes).
4. Background: stain the glass tile once, normalised as the tissue is ("global":
   the same statistics; "kernel": the pool of every tissue tile's recorded
   statistics, a kernel of unbounded radius; "tile": its own), and take the
   mean colour of its middle (``overlap / 2`` in from every side, where the
   receptive field is whole) as the fill of every skipped tile: the generator's
   own rendering of this slide's glass (the release's model stains glass
   about (230, 225, 233), not white). A flat colour rather than the stained
   tile itself: glass renders as that colour plus noise, and repeating one
   tile would repeat its texture and specks with the grid's period.
5. Staining pass: stain every tissue tile with its pooled statistics.
6. Assembly: blend the stained tiles with the engine's weights into bands
   one TIFF tile tall, every skipped tile taking part in the blend with its
   own weights and the fill colour, so a stained tile fades into the glass
   fill over the overlap exactly as it fades into a stained neighbour (a
   stained tile whose neighbour is skipped covers the overlap up to its
   blending margin: without the skipped tile's share the edge would be hard,
   ``overlap / 2 - margin`` past the middle of the overlap). Stream the bands
   into a pyramidal TIFF
   (:mod:`tdkstain.slides.writer`) under a temporary name, then move it into
   place; write a thumbnail PNG beside it.

Resumable. The work folder ``OUT.partial/`` holds ``job.json`` (everything
the stained pixels depend on), the statistics (``stats/global.npz`` or ``stats/passK/*.npz``),
the background fill (``background.json``: its RGB, the glass tile and how it
was normalised; ``background.png``: the stained glass tile, for a look)
and each stained tile (``tiles/ROW_COL.png``, lossless), every file written
atomically. A rerun with the same job reuses them and computes only the rest;
a rerun with a different job (other checkpoint, resolution, tiles, norm, ...)
starts over. Work is cut into fixed chunks of ``batch`` consecutive tissue
tiles, and a chunk is always recomputed whole, so every forward pass sees the
same batch whether or not the run was interrupted: the result is identical
to an uninterrupted run. Options that only change the encoding (compression,
JPEG quality, TIFF tile size, thumbnail size) are not part of the job: rerun
with another quality and only the TIFF is rewritten. The work folder is
removed after success unless ``keep_work``. A lock file in it keeps a second
run off the same output while the first is alive.

Streaming and overlap. Reader threads read (and resample) the next chunks
while the model runs, and writer threads encode stained tiles to PNG
(``io_workers`` threads each), each side through a queue of
``QUEUE_DEPTH * io_workers`` chunks. Assembly runs after the staining pass
(it needs every tile of a band, and keeping it separate is what makes the
result independent of interruptions): ``io_workers`` threads blend bands
while tifffile encodes tiles on its own threads. Memory is bounded by the
tiles in flight (about ``(2 * QUEUE_DEPTH * io_workers + 1) * batch``
tiles), the model's activations (in "global" mode, once, those of ``stat_tiles``
tiles at one layer: about 1.1 GB for the release's generator with 16 tiles
of 512 in fp32), the per-tile statistics inside the kernel window, and at
assembly ``io_workers + 1`` level-0 bands plus one band per lower level
(``tiff_tile x width x 3`` bytes each): O(slide width), never O(slide area).

Measured (benchmarks/slide_memory.py, 2 shared CPU cores, tile 512, batch 4,
tiny generator): peak resident memory above the ~0.75 GB of loaded
libraries and model was 416, 426 and 403 MiB for synthetic slides of 4096²,
8192² and 16384² pixels (16x the area, flat); for 40k x 40k add the wider
bands (about 6 x 256 x 40000 x 3 bytes = 0.2 GB): about 1.4 GB in all, plus
the generator's activations (the release's ngf-64 generator on CPU, fp32:
peak 2.5 GB RSS measured, about 3.5 GB at 40k with 16 statistics tiles).

A slide in which no tissue is found gives a valid all-white TIFF and a
warning that names ``--no-tissue-detection`` (an error would stop batch jobs
over many slides for one empty scan). It stays white rather than glass
coloured: with no tissue there are no tissue statistics to stain the glass
with, and glass normalised by its own statistics (an almost flat input
whose variance is sensor noise) renders as amplified noise, not as the
glass colour a stained slide has; white says "nothing was stained".
``--no-tissue-detection`` stains every tile, glass included, so nothing is
skipped and no fill is made.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import shutil
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from tdkstain import __version__
from tdkstain.inference import NormStats, Stainer, TileGrid, TilePosition, combine_stats
from tdkstain.plumbing.atomic import atomic_path, write_text_atomic
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.plumbing.limits import check_number
from tdkstain.slides.reader import MPP_TOLERANCE, Slide, SlideAtMpp, read_thumbnail
from tdkstain.slides.tissue import MAX_DARK_VALUE, box_sums, tiles_touching, tissue_mask
from tdkstain.slides.writer import PyramidInfo, write_pyramid_tiff

#: Chunks of tiles queued between the reader thread, the model and the writer thread.
QUEUE_DEPTH = 2
# Level pixels per side one tile may read before resampling (8192^2 RGBA: 256 MB).
MAX_SOURCE_SIDE = 8192
#: Bump when the layout or meaning of the work folder changes, so old work is not reused.
WORK_FORMAT = 1


def work_dir_for(out: str | os.PathLike) -> Path:
    """The work folder of an output: ``OUT.tif`` -> ``OUT.tif.partial/``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def thumbnail_path_for(out: str | os.PathLike) -> Path:
    """The thumbnail PNG beside an output: ``OUT.tif`` -> ``OUT.thumbnail.png``."""
    out = Path(out)
    return out.with_name(out.stem + ".thumbnail.png")


@dataclass(frozen=True)
class SlideOptions:
    """How a slide is read, selected and written (the engine's options live on the :class:`Stainer`).

    Attributes:
        mpp: microns per pixel to stain at (the model card's ``mpp`` if None).
        slide_mpp: microns per pixel of the slide's level 0, when its metadata lacks (or misstates) it.
        backend: slide reader, ``"auto"`` | ``"openslide"`` | ``"tiffslide"``.
        tissue_detection: stain only tiles touching tissue (False: every tile).
        tissue_thumbnail_size: longer side of the thumbnail tissue is found on.
        tiff_tile: TIFF tile side of the output (multiple of 16).
        compression: ``"jpeg"`` or ``"deflate"`` (lossless).
        jpeg_quality: 1..100.
        thumbnail_size: longer side of the output thumbnail PNG.
        keep_work: keep the work folder after success.
        force: replace an existing ``out`` that is not a slide stained by tdkstain.
        io_workers: threads reading slide tiles, and threads encoding stained tiles
            (default: up to 4, by CPU count), so the model does not wait on I/O.
    """

    mpp: float | None = None
    slide_mpp: float | None = None
    backend: str = "auto"
    tissue_detection: bool = True
    tissue_thumbnail_size: int = 2048
    tiff_tile: int = 256
    compression: str = "jpeg"
    jpeg_quality: int = 90
    thumbnail_size: int = 1024
    keep_work: bool = False
    io_workers: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))
    force: bool = False

    def __post_init__(self) -> None:
        # Bounds on what the options make tdkstain allocate (tdkstain.plumbing.limits).
        check_number("--tiff-tile", self.tiff_tile, 16, 4096, integer=True)
        if self.tiff_tile % 16:
            raise TdkstainError(f"--tiff-tile {self.tiff_tile} must be a multiple of 16 (the TIFF standard's tiles)")
        check_number("--jpeg-quality", self.jpeg_quality, 1, 100, integer=True)
        check_number("--thumbnail-size", self.thumbnail_size, 16, 16384, integer=True)
        check_number("tissue_thumbnail_size", self.tissue_thumbnail_size, 64, 16384, integer=True)
        check_number("--io-workers", self.io_workers, 1, 64, integer=True)
        if self.mpp is not None:
            check_number("--mpp", self.mpp, 0.01, 1000, hint="microns per pixel: 0.25 at 40x, 0.5 at 20x")


@dataclass
class SlideResult:
    """What :func:`stain_slide` did; ``tiles_*`` count grid tiles."""

    out: Path
    thumbnail: Path
    width: int
    height: int
    mpp: float
    level: int
    scale: float
    level_dimensions: list[tuple[int, int]]
    tiles_total: int
    tiles_tissue: int
    tiles_background: int
    tiles_reused: int
    forward_passes: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    #: RGB (0..255) every skipped tile was filled with; None: nothing skipped, or no tissue (white).
    background_rgb: tuple[float, float, float] | None = None
    #: the tile grid over the (alignment-padded) slide, and which of its tiles were stained,
    #: ``(grid.rows, grid.cols)`` bool (for :func:`tdkstain.inference.border_steps`).
    grid: TileGrid | None = field(default=None, repr=False)
    stained: np.ndarray | None = field(default=None, repr=False)


# --------------------------------------------------------------------------- planning


@dataclass
class _Plan:
    view: SlideAtMpp
    width: int
    height: int
    grid: TileGrid
    tissue: list[TilePosition]  # row-major
    chunks: list[list[TilePosition]]
    glass: TilePosition | None = None  # the skipped tile stained for the background fill
    tissue_index: dict[tuple[int, int], TilePosition] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tissue_index = {p.index: p for p in self.tissue}


def _plan(slide: Slide, stainer: Stainer, target_mpp: float, options: SlideOptions, log: Callable[[str], None]) -> _Plan:
    view = SlideAtMpp(slide, target_mpp, MPP_TOLERANCE)
    width, height = view.width, view.height
    source_side = stainer.tile * max(view.choice.scale, 1.0)
    if source_side > MAX_SOURCE_SIDE:  # each tile reads this many level pixels per side before resampling
        raise TdkstainError(
            f"{slide.path}: a {stainer.tile} px tile at {view.mpp:.4g} um/px reads {source_side:.0f} px per side of level "
            f"{view.choice.level}; use --tile {max(stainer.align, int(MAX_SOURCE_SIDE // view.choice.scale) // stainer.align * stainer.align)} "
            "or a --mpp closer to the slide's levels"
        )
    align = stainer.align
    canvas_height = int(math.ceil(height / align) * align)
    canvas_width = int(math.ceil(width / align) * align)
    grid = TileGrid(canvas_height, canvas_width, stainer.tile, stainer.overlap)
    positions = grid.positions
    choice = view.choice
    log(
        f"{slide.path.name}: {slide.dimensions[0]}x{slide.dimensions[1]} px at {slide.mpp:.4g} um/px, "
        f"{slide.level_count} level(s) ({slide.backend}); staining at {view.mpp:.4g} um/px from level "
        f"{choice.level}" + ("" if choice.scale == 1.0 else f" resampled by 1/{choice.scale:.4g}")
        + f": {width}x{height} px, {grid.rows}x{grid.cols} tiles of {grid.tile_height}x{grid.tile_width}"
    )
    if choice.scale < 1.0:
        log(
            f"warning: the slide's finest level ({slide.mpp:.4g} um/px) is coarser than the model's "
            f"{target_mpp:.4g} um/px; upsampling, expect blur"
        )
    if options.tissue_detection:
        thumbnail = read_thumbnail(slide, options.tissue_thumbnail_size)
        thumbnail_mpp = slide.mpp * slide.dimensions[0] / thumbnail.shape[1]
        mask = tissue_mask(thumbnail, thumbnail_mpp)
        scale = thumbnail.shape[1] / width  # thumbnail pixels per output pixel
        boxes = [(p.x, p.y, p.width, p.height) for p in positions]
        touched = tiles_touching(mask, boxes, scale)
        tissue = [p for p, t in zip(positions, touched) if t]
        skipped = [p for p, t in zip(positions, touched) if not t]
        glass = _glass_tile(thumbnail, mask, skipped, scale, width, height) if tissue else None
    else:
        tissue, glass = list(positions), None
    batch = stainer.batch
    chunks = [tissue[i : i + batch] for i in range(0, len(tissue), batch)]
    return _Plan(view=view, width=width, height=height, grid=grid, tissue=tissue, chunks=chunks, glass=glass)


def _glass_tile(
    thumbnail: np.ndarray, mask: np.ndarray, skipped: list[TilePosition], scale: float, width: int, height: int
) -> TilePosition | None:
    """The skipped tile that looks most like the slide's glass, or None when there is none.

    Glass colour: the per-channel median of the thumbnail's background
    (``(h, w, 3)`` uint8 ``thumbnail`` outside the ``(h, w)`` tissue ``mask``,
    near-black excluded). Each skipped tile's mean absolute deviation from it
    over the tile's thumbnail pixels (``scale``: thumbnail pixels per image
    pixel) ranks the tiles; tiles inside the ``width x height`` slide come
    before those reaching into the alignment padding; ties go to the first in
    row-major order.
    """
    if not skipped:
        return None
    background = ~mask & (thumbnail.max(axis=2) > MAX_DARK_VALUE)
    if not background.any():
        return None
    glass = np.median(thumbnail[background], axis=0)
    deviation = np.abs(thumbnail.astype(np.float32) - glass.astype(np.float32)).sum(axis=2)
    boxes = [(p.x, p.y, min(p.width, width - p.x), min(p.height, height - p.y)) for p in skipped]
    means = box_sums(deviation, boxes, scale) / np.maximum(box_sums(np.ones(mask.shape, dtype=bool), boxes, scale), 1)
    best = min(
        range(len(skipped)),
        key=lambda i: (skipped[i].x + skipped[i].width > width or skipped[i].y + skipped[i].height > height, means[i], i),
    )
    return skipped[best]


def _job(slide: Slide, stainer: Stainer, plan: _Plan, options: SlideOptions, checkpoint_id: str) -> dict[str, Any]:
    """Everything the stained pixels depend on; a work folder with another job is discarded."""
    stat = slide.path.stat()
    return {
        "work_format": WORK_FORMAT,
        "slide": {"path": str(slide.path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        "slide_mpp": slide.mpp,
        "checkpoint": checkpoint_id,
        "mpp": plan.view.mpp,
        "level": plan.view.choice.level,
        "scale": plan.view.choice.scale,
        "size": [plan.width, plan.height],
        "tile": stainer.tile,
        "overlap": stainer.overlap,
        "batch": stainer.batch,
        "norm": stainer.norm,
        "kernel_radius": stainer.kernel_radius,
        "stat_passes": stainer.stat_passes,
        "stat_tiles": stainer.stat_tiles,
        "blend_margin": stainer.blend_margin,
        "precision": stainer.precision,
        "device": stainer.device.type,
        "tissue_detection": options.tissue_detection,
        "tissue_thumbnail_size": options.tissue_thumbnail_size,
        "tissue_tiles": len(plan.tissue),
    }


def _prepare_work_dir(work: Path, job: dict[str, Any], log: Callable[[str], None]) -> None:
    job_file = work / "job.json"
    if job_file.is_file():
        try:
            previous = json.loads(job_file.read_text())
        except (OSError, json.JSONDecodeError):
            previous = None
        if previous == job:
            return
        log(f"{work}: left by a run with other settings; starting over")
        shutil.rmtree(work)
    elif work.exists():
        shutil.rmtree(work)
    try:
        (work / "tiles").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TdkstainError(f"{work}: cannot create the work folder ({err}); choose a writable output folder") from err
    write_text_atomic(job_file, json.dumps(job, indent=2))


def _check_not_running(work: Path) -> None:
    """Refuse to share a work folder with a live run (a killed run's lock is stale and ignored)."""
    lock = work / "lock"
    try:
        pid = int(lock.read_text().strip())
    except (OSError, ValueError):
        return
    if pid == os.getpid():
        return  # an earlier call in this process that raised
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass  # alive, owned by another user
    raise TdkstainError(
        f"{work}: another tdkstain slide (process {pid}) is writing this output; wait for it to finish, "
        f"or delete {lock} if that process is not tdkstain"
    )


def _remove_stale_temporaries(out: Path) -> None:
    """Temporary files an interrupted run left beside the output (see tdkstain.plumbing.atomic)."""
    for final in (out, thumbnail_path_for(out)):
        for stale in final.parent.glob(f".tmp-{final.stem}-*{final.suffix}"):
            stale.unlink(missing_ok=True)


# --------------------------------------------------------------------------- statistics on disk


def _save_stats(path: Path, stats: Sequence[NormStats]) -> None:
    arrays: dict[str, np.ndarray] = {"pixels": np.asarray([s.pixels for s in stats], dtype=np.float64)}
    for layer in range(stats[0].num_layers):
        arrays[f"mean{layer}"] = np.stack([s.mean[layer] for s in stats])
        arrays[f"var{layer}"] = np.stack([s.var[layer] for s in stats])
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _load_stats(path: Path) -> list[NormStats]:
    with np.load(path) as data:
        layers = sum(1 for name in data.files if name.startswith("mean"))
        means = [data[f"mean{layer}"] for layer in range(layers)]
        variances = [data[f"var{layer}"] for layer in range(layers)]
        pixels = data["pixels"]
    return [
        NormStats(tuple(m[i] for m in means), tuple(v[i] for v in variances), float(pixels[i]))
        for i in range(len(pixels))
    ]


class _SameStats:
    """Global mode: one set of statistics for every tile."""

    def __init__(self, stats: NormStats) -> None:
        self.stats = stats

    def for_chunk(self, chunk: Sequence[TilePosition]) -> list[NormStats]:
        return [self.stats] * len(chunk)


class _NeighbourhoodStats:
    """Kernel mode: each tile pools the recorded statistics of the tissue tiles within ``radius`` grid steps.

    As :func:`tdkstain.inference.neighbourhood_stats` (tiles absent from the
    slide's tissue do not contribute), but streaming: a pass's chunk files
    are loaded when first needed and dropped once every tile that can need
    them is past, so only the rows inside the window are in memory.
    """

    def __init__(self, folder: Path, plan: _Plan, radius: int) -> None:
        self.folder, self.plan, self.radius = folder, plan, radius
        self._chunk_of: dict[tuple[int, int], tuple[int, int]] = {}
        for k, chunk in enumerate(plan.chunks):
            for i, p in enumerate(chunk):
                self._chunk_of[p.index] = (k, i)
        self._loaded: dict[int, list[NormStats]] = {}

    def _stats_of(self, index: tuple[int, int]) -> NormStats:
        k, i = self._chunk_of[index]
        if k not in self._loaded:
            self._loaded[k] = _load_stats(self.folder / f"{k:06d}.npz")
        return self._loaded[k][i]

    def for_chunk(self, chunk: Sequence[TilePosition]) -> list[NormStats]:
        out = []
        for p in chunk:
            members = [
                self._stats_of((r, c))
                for r in range(p.row - self.radius, p.row + self.radius + 1)
                for c in range(p.col - self.radius, p.col + self.radius + 1)
                if (r, c) in self._chunk_of
            ]
            out.append(members[0] if len(members) == 1 else combine_stats(members))
        # Chunks come in row-major order: rows above row - radius are never needed again.
        first_needed_row = chunk[0].row - self.radius
        for k in [k for k in self._loaded if self.plan.chunks[k][-1].row < first_needed_row]:
            del self._loaded[k]
        return out

    def pooled_all(self) -> NormStats:
        """The pool of every tissue tile's statistics (a kernel of unbounded radius), one chunk file at a time."""
        pooled: NormStats | None = None
        for k in range(len(self.plan.chunks)):
            stats = _load_stats(self.folder / f"{k:06d}.npz")
            pooled = combine_stats(stats if pooled is None else [pooled, *stats])
        if pooled is None:
            raise TdkstainError(f"{self.folder}: no tissue statistics to pool; delete the work folder and rerun")
        return pooled


def spread(count: int, limit: int) -> list[int]:
    """At most ``limit`` indices of ``range(count)``, evenly spaced from first to last (all when they fit)."""
    if count <= limit:
        return list(range(count))
    if limit == 1:
        return [count // 2]
    return sorted({int(round(i * (count - 1) / (limit - 1))) for i in range(limit)})


# --------------------------------------------------------------------------- passes with overlapped I/O


def _read_tiles(plan: _Plan, chunk: Sequence[TilePosition]) -> list[np.ndarray]:
    """H&E tiles of a chunk; pixels beyond the slide (alignment padding) are white."""
    tiles = []
    for p in chunk:
        tile = plan.view.read(p.x, p.y, p.width, p.height)
        if p.y + p.height > plan.height:
            tile[plan.height - p.y :] = 255
        if p.x + p.width > plan.width:
            tile[:, plan.width - p.x :] = 255
        tiles.append(tile)
    return tiles


def _run_chunks(
    plan: _Plan,
    todo: list[int],
    compute: Callable[[int, list[np.ndarray]], Any],
    save: Callable[[int, Any], None],
    tick: Callable[[int], Any],
    io_workers: int,
) -> None:
    """Read (threads) -> compute (this thread: the model) -> save (threads).

    ``io_workers`` threads read and as many save; ``QUEUE_DEPTH * io_workers``
    chunks wait on each side, so the model finds its next batch read and never
    waits for the previous one to be encoded. Chunks are computed in order.
    """
    if not todo:
        return
    depth = QUEUE_DEPTH * io_workers
    with ThreadPoolExecutor(io_workers, thread_name_prefix="slide-read") as reader, ThreadPoolExecutor(
        io_workers, thread_name_prefix="slide-write"
    ) as writer:
        reads: deque[tuple[int, Future]] = deque()
        writes: deque[Future] = deque()
        upcoming = iter(todo)

        def schedule_read() -> None:
            k = next(upcoming, None)
            if k is not None:
                reads.append((k, reader.submit(_read_tiles, plan, plan.chunks[k])))

        for _ in range(depth):
            schedule_read()
        while reads:
            k, future = reads.popleft()
            tiles = future.result()
            schedule_read()
            result = compute(k, tiles)
            writes.append(writer.submit(save, k, result))
            while len(writes) > depth:
                writes.popleft().result()
            tick(len(tiles))
        for future in writes:
            future.result()


def _tile_file(work: Path, p: TilePosition) -> Path:
    return work / "tiles" / f"{p.row:05d}_{p.col:05d}.png"


def _save_tiles(work: Path, chunk: Sequence[TilePosition], stained: Sequence[np.ndarray]) -> None:
    for p, tile in zip(chunk, stained):
        with atomic_path(_tile_file(work, p)) as tmp:
            # compress_level 1: lossless, several times faster than the default; these files are temporary.
            Image.fromarray(tile).save(tmp, format="PNG", compress_level=1)


# --------------------------------------------------------------------------- background


BACKGROUND_FILE = "background.json"


def _fill_region(plan: _Plan, p: TilePosition, inset: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` tile pixels averaged for the fill: ``inset`` in from every side, inside the slide."""
    bottom, right = min(p.height, plan.height - p.y), min(p.width, plan.width - p.x)
    top, left = min(inset, bottom // 2), min(inset, right // 2)
    return top, max(top + 1, bottom - inset), left, max(left + 1, right - inset)


def _read_fill(path: Path) -> tuple[float, float, float] | None | bool:
    """The fill recorded in ``path``: RGB, None (recorded as none), or False (absent or unreadable)."""
    try:
        record = json.loads(path.read_text())
        rgb = record["rgb"]
    except (OSError, ValueError, TypeError, KeyError):
        return False
    if rgb is None:
        return None
    if not (isinstance(rgb, list) and len(rgb) == 3 and all(isinstance(v, (int, float)) and 0 <= v <= 255 for v in rgb)):
        return False
    return (float(rgb[0]), float(rgb[1]), float(rgb[2]))


def _background_fill(
    stainer: Stainer,
    plan: _Plan,
    work: Path,
    pooled: _SameStats | _NeighbourhoodStats | None,
    timings: dict[str, float],
    log: Callable[[str], None],
) -> tuple[tuple[float, float, float] | None, int]:
    """The colour skipped tiles are filled with, recorded in ``work`` (reused from it when there).

    The glass tile (:func:`_glass_tile`) is stained once, normalised as the
    tissue tiles are (see the module docstring), and the mean RGB of its
    middle is the fill. None (white) when nothing is skipped or no tissue was
    found. Returns ``(fill, forward passes spent)``.
    """
    record = work / BACKGROUND_FILE
    recorded = _read_fill(record)
    if recorded is not False:
        if recorded is not None:
            log(f"background: RGB {', '.join(f'{v:.1f}' for v in recorded)} recorded in {record}")
        return recorded, 0
    t0 = time.perf_counter()
    p = plan.glass
    forward_passes = 0
    if p is None or not plan.tissue:
        if not plan.tissue:
            why = "no tissue found: the slide is left white"
        elif len(plan.tissue) == len(plan.grid):
            why = "every tile is stained: nothing to fill"
        else:
            why = "no glass on the thumbnail (every background pixel is near black): skipped tiles are left white"
            log(f"warning: {why}")
        write_text_atomic(record, json.dumps({"rgb": None, "why": why}, indent=2))
        return None, 0
    he = _read_tiles(plan, [p])
    if isinstance(pooled, _SameStats):
        stats, how = [pooled.stats], "the tissue's global statistics"
    elif isinstance(pooled, _NeighbourhoodStats):
        stats, how = [pooled.pooled_all()], "the pool of every tissue tile's statistics (last pass)"
    else:
        stats, how = None, "its own statistics (norm tile)"
    # Compiled (torch.compile, one graph per batch shape): a whole batch of copies reuses the staining pass's
    # graph instead of compiling one for a batch of 1 (10-30 s on a CPU); eager: the tile alone.
    copies = stainer.batch if stainer.compile else 1
    stained = stainer.stain_tiles(he * copies, None if stats is None else stats * copies, as_float=True)[0]
    forward_passes += copies
    top, bottom, left, right = _fill_region(plan, p, stainer.overlap // 2)
    rgb = stained[top:bottom, left:right].reshape(-1, 3).astype(np.float64).mean(axis=0)
    he_rgb = he[0][top:bottom, left:right].reshape(-1, 3).astype(np.float64).mean(axis=0)
    with atomic_path(work / "background.png") as tmp:
        Image.fromarray(np.clip(np.rint(stained), 0, 255).astype(np.uint8)).save(tmp, format="PNG", compress_level=1)
    write_text_atomic(record, json.dumps({
        "rgb": [float(v) for v in rgb],
        "glass_he_rgb": [float(v) for v in he_rgb],
        "tile": {"row": p.row, "col": p.col, "x": p.x, "y": p.y, "width": p.width, "height": p.height},
        "averaged": {"top": top, "bottom": bottom, "left": left, "right": right},
        "normalised_with": how,
    }, indent=2))
    fill = _read_fill(record)  # what a resumed run reads: one path for both
    if not fill:
        raise TdkstainError(f"{record}: could not be read back after writing; check the disk, then rerun")
    log(
        f"background: glass tile ({p.row}, {p.col}) stained with {how}: RGB "
        + ", ".join(f"{v:.1f}" for v in fill) + " fills the skipped tiles"
    )
    timings["background"] = time.perf_counter() - t0
    return fill, forward_passes


# --------------------------------------------------------------------------- assembly


def _touching(starts: list[int], size: int, lo: int, hi: int) -> range:
    """Indices of the tiles ``[s, s + size)`` that intersect ``[lo, hi)``; ``starts`` increasing."""
    return range(bisect.bisect_right(starts, lo - size), bisect.bisect_left(starts, hi))


def _assemble_band(
    plan: _Plan, work: Path, margin: int, band_rows: int, y0: int, fill: tuple[float, float, float] | None = None
) -> np.ndarray:
    """Level-0 rows ``[y0, y0 + band_rows)``: stained tiles blended with the engine's weights, the fill elsewhere.

    Pixels get ``sum(weight * tile) / sum(weight)`` over the grid's tiles
    covering them (as :class:`tdkstain.inference.Blender`), rounded; a
    skipped tile counts as a tile of the ``fill`` colour (RGB 0..255), so a
    stained tile next to it ramps into the fill across their overlap as it
    would into a stained neighbour. ``fill`` None: skipped tiles do not take
    part and pixels no stained tile covers are white (a slide without tissue).
    Blended one ``band_rows``-wide block at a time, decoding only the tiles
    that touch the block (each kept while the blocks to its right need it).

    Returns:
        ``(rows, width, 3)`` uint8 RGB.
    """
    grid = plan.grid
    tissue = plan.tissue_index
    y1 = min(plan.height, y0 + band_rows)
    background = np.full(3, 255.0 if fill is None else fill, dtype=np.float32)
    band = np.empty((y1 - y0, plan.width, 3), dtype=np.uint8)
    band[:] = np.clip(np.rint(background), 0, 255).astype(np.uint8)
    rows = _touching(grid.row_starts, grid.tile_height, y0, y1)
    decoded: dict[tuple[int, int], tuple[np.ndarray | None, np.ndarray]] = {}
    for x0 in range(0, plan.width, band_rows):
        x1 = min(plan.width, x0 + band_rows)
        cols = _touching(grid.col_starts, grid.tile_width, x0, x1)
        touching = [(r, c) for r in rows for c in cols]
        members = [key for key in touching if key in tissue]
        for key in [key for key in decoded if key not in touching]:
            del decoded[key]  # blocks go left to right: a tile not needed here is done for this band
        if not members:
            continue
        total = np.zeros((y1 - y0, x1 - x0, 3), dtype=np.float32)
        weight = np.zeros((y1 - y0, x1 - x0, 1), dtype=np.float32)
        skipped = np.zeros((y1 - y0, x1 - x0, 1), dtype=np.float32)
        for key in members if fill is None else touching:
            r, c = key
            p = tissue.get(key) or TilePosition(r, c, grid.row_starts[r], grid.col_starts[c], grid.tile_height, grid.tile_width)
            if key not in decoded:
                if key in tissue:
                    with Image.open(_tile_file(work, p)) as image:
                        decoded[key] = (np.asarray(image.convert("RGB")), grid.weights(p, margin)[:, :, None])
                else:
                    decoded[key] = (None, grid.weights(p, margin)[:, :, None])
            tile, w = decoded[key]
            ty0, ty1 = max(y0, p.y), min(y1, p.y + p.height)
            tx0, tx1 = max(x0, p.x), min(x1, p.x + p.width)
            piece_w = w[ty0 - p.y : ty1 - p.y, tx0 - p.x : tx1 - p.x]
            where = (slice(ty0 - y0, ty1 - y0), slice(tx0 - x0, tx1 - x0))
            if tile is None:
                skipped[where] += piece_w
                continue
            total[where] += tile[ty0 - p.y : ty1 - p.y, tx0 - p.x : tx1 - p.x] * piece_w
            weight[where] += piece_w
        if fill is not None:
            total += skipped * background
            weight += skipped
        blended = np.empty_like(total)
        blended[:] = background
        np.divide(total, weight, out=blended, where=weight > 0)
        band[:, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return band


def _assembled_bands(
    plan: _Plan, work: Path, margin: int, band_rows: int, workers: int, fill: tuple[float, float, float] | None
) -> Iterator[np.ndarray]:
    """The level-0 bands top to bottom, ``workers`` of them blended at a time on threads (numpy and
    Pillow's decoder release the GIL), at most ``workers + 1`` waiting."""
    starts = iter(range(0, plan.height, band_rows))
    with ThreadPoolExecutor(workers, thread_name_prefix="slide-blend") as pool:
        pending: deque[Future] = deque()
        for y0 in starts:
            pending.append(pool.submit(_assemble_band, plan, work, margin, band_rows, y0, fill))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# --------------------------------------------------------------------------- the whole job


OUTPUT_SIGNATURE = "virtual HER2 IHC of "  # in the ImageDescription of every slide tdkstain writes


def is_stained_slide(path: Path) -> bool:
    """True when ``path`` is a pyramidal TIFF or OME-TIFF that tdkstain slide wrote (its description says so:
    :func:`tdkstain.slides.writer.stained_description`)."""
    from tdkstain.slides.writer import stained_description

    return OUTPUT_SIGNATURE in stained_description(path)


def check_output_path(out: Path, force: bool = False) -> None:
    """Fail early (TdkstainError) when ``out`` is not a .tif/.tiff that can be written, or is a file
    that tdkstain did not write and ``force`` is not given (nothing is replaced silently)."""
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise TdkstainError(f"{out}: the output must be a .tif or .tiff file")
    folder = out.parent if str(out.parent) else Path(".")
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise TdkstainError(f"{out}: cannot write to the folder {folder} (not writable); choose another --out")
    if out.is_dir():
        raise TdkstainError(f"{out}: is a folder; pass a file name such as {out / 'slide.tif'}")
    if out.exists() and not force and not is_stained_slide(out):
        raise TdkstainError(
            f"{out}: exists and is not a slide stained by tdkstain; pass --force to replace it, or choose another --out"
        )


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tile", disable=not enabled or not sys.stderr.isatty(), file=sys.stderr)


def _target_mpp(options: SlideOptions, model_mpp: float | None) -> float:
    target_mpp = options.mpp if options.mpp is not None else model_mpp
    if target_mpp is None:
        raise TdkstainError(
            "the checkpoint records no microns per pixel (e.g. the authors' .pth); pass the resolution it "
            "was trained at with --mpp (the release's BCI data: --mpp 0.5)"
        )
    return target_mpp


def _open_work_dir(
    slide: Slide, stainer: Stainer, plan: _Plan, options: SlideOptions, checkpoint_id: str, out: Path, log: Callable[[str], None]
) -> Path:
    """The work folder of ``out``, reused when its job matches, locked by this process."""
    work = work_dir_for(out)
    job = _job(slide, stainer, plan, options, checkpoint_id)
    _check_not_running(work)
    _prepare_work_dir(work, job, log)
    (work / "lock").write_text(str(os.getpid()))
    _remove_stale_temporaries(out)
    return work


def _stained_mask(plan: _Plan) -> np.ndarray:
    """``(grid.rows, grid.cols)`` bool: which tiles are stained."""
    mask = np.zeros((plan.grid.rows, plan.grid.cols), dtype=bool)
    for p in plan.tissue:
        mask[p.row, p.col] = True
    return mask


def _log_tissue(slide: Slide, plan: _Plan, total: int, background: int, log: Callable[[str], None]) -> None:
    fate = "filled with the generator's rendering of the slide's glass" if plan.tissue else "left white"
    log(f"tissue: {len(plan.tissue)} of {total} tiles to stain, {background} background tiles skipped ({fate})")
    if not plan.tissue:
        log(
            f"warning: no tissue found in {slide.path.name}; writing an all-white slide. If the slide does "
            "hold tissue (faint or unusual stain), rerun with --no-tissue-detection"
        )


def _global_stats(
    stainer: Stainer, plan: _Plan, work: Path, timings: dict[str, float], log: Callable[[str], None]
) -> tuple[_SameStats, int]:
    """The engine's global mode: exact whole-image statistics, layer by layer, over the cores of
    up to stat_tiles tiles spread evenly over the tissue (Stainer.sequential_stats).

    Returns the statistics and the forward passes spent on them (0 when reused from ``work``).
    """
    t0 = time.perf_counter()
    forward_passes = 0
    stats_file = work / "stats" / "global.npz"
    if not stats_file.is_file():
        chosen = [plan.tissue[i] for i in spread(len(plan.tissue), stainer.stat_tiles)]
        log(f"global statistics from {len(chosen)} tissue tiles spread over the slide")
        stats = stainer.sequential_stats(_read_tiles(plan, chosen), [plan.grid.core(p) for p in chosen])
        stats_file.parent.mkdir(parents=True, exist_ok=True)
        _save_stats(stats_file, [stats])
        forward_passes += len(chosen)
    pooled = _SameStats(_load_stats(stats_file)[0])
    timings["statistics"] = time.perf_counter() - t0
    return pooled, forward_passes


def _kernel_stats(
    stainer: Stainer, plan: _Plan, work: Path, options: SlideOptions, timings: dict[str, float], progress: bool
) -> tuple[_NeighbourhoodStats | None, int]:
    """Kernel mode: ``stat_passes`` passes, each recording every tissue tile's statistics normalised
    with the previous pass's pooled ones. Returns the last pass's pooling and the forward passes spent.
    """
    forward_passes = 0
    applied: _NeighbourhoodStats | None = None
    for k in range(1, stainer.stat_passes + 1):
        t0 = time.perf_counter()
        folder = work / "stats" / f"pass{k}"
        folder.mkdir(parents=True, exist_ok=True)
        todo = [i for i in range(len(plan.chunks)) if not (folder / f"{i:06d}.npz").is_file()]
        with _progress_bar(sum(len(plan.chunks[i]) for i in todo), f"statistics {k}/{stainer.stat_passes}", progress) as bar:
            _run_chunks(
                plan,
                todo,
                lambda i, tiles: stainer.tile_stats(tiles, None if applied is None else applied.for_chunk(plan.chunks[i])),
                lambda i, stats: _save_stats(folder / f"{i:06d}.npz", stats),
                bar.update,
                options.io_workers,
            )
        forward_passes += sum(len(plan.chunks[i]) for i in todo)
        applied = _NeighbourhoodStats(folder, plan, stainer.kernel_radius)
        timings[f"statistics pass {k}"] = time.perf_counter() - t0
    return applied, forward_passes


def _staining_pass(
    stainer: Stainer,
    plan: _Plan,
    work: Path,
    pooled: _SameStats | _NeighbourhoodStats | None,
    options: SlideOptions,
    timings: dict[str, float],
    log: Callable[[str], None],
    progress: bool,
) -> tuple[int, int]:
    """Stain every chunk whose tiles are not all in ``work`` yet; returns ``(tiles reused, forward passes)``."""
    t0 = time.perf_counter()
    todo = [i for i, chunk in enumerate(plan.chunks) if not all(_tile_file(work, p).is_file() for p in chunk)]
    pending = set(todo)
    reused = sum(len(c) for i, c in enumerate(plan.chunks) if i not in pending)
    if reused:
        log(f"resuming: {reused} stained tiles reused from {work}")
    with _progress_bar(sum(len(plan.chunks[i]) for i in todo), "staining", progress) as bar:
        _run_chunks(
            plan,
            todo,
            lambda i, tiles: stainer.stain_tiles(tiles, None if pooled is None else pooled.for_chunk(plan.chunks[i])),
            lambda i, stained: _save_tiles(work, plan.chunks[i], stained),
            bar.update,
            options.io_workers,
        )
    timings["staining"] = time.perf_counter() - t0
    return reused, sum(len(plan.chunks[i]) for i in todo)


def _write_outputs(
    slide: Slide,
    stainer: Stainer,
    plan: _Plan,
    work: Path,
    out: Path,
    options: SlideOptions,
    timings: dict[str, float],
    fill: tuple[float, float, float] | None,
) -> tuple[PyramidInfo, Path]:
    """Assemble the stained tiles and the ``fill`` into the pyramidal TIFF ``out``; write its thumbnail PNG beside it."""
    t0 = time.perf_counter()
    spill = work / "pyramid"
    shutil.rmtree(spill, ignore_errors=True)
    description = (
        f"tdkstain {__version__} virtual HER2 IHC of {slide.path.name}; mpp={plan.view.mpp:.6g}; "
        f"norm={stainer.norm}; tile={stainer.tile}; overlap={stainer.overlap}"
    )
    with atomic_path(out) as tmp:
        info = write_pyramid_tiff(
            tmp,
            plan.width,
            plan.height,
            _assembled_bands(plan, work, stainer.blend_margin, options.tiff_tile, options.io_workers, fill),
            mpp=plan.view.mpp,
            spill_dir=spill,
            tile=options.tiff_tile,
            compression=options.compression,
            jpeg_quality=options.jpeg_quality,
            description=description,
            thumbnail_size=options.thumbnail_size,
        )
    thumbnail = thumbnail_path_for(out)
    with atomic_path(thumbnail) as tmp:
        Image.fromarray(info.thumbnail).save(tmp, format="PNG")
    timings["assembly"] = time.perf_counter() - t0
    return info, thumbnail


def _close_work_dir(work: Path, keep_work: bool) -> None:
    """Release the lock of a kept work folder, or remove the folder."""
    if keep_work:
        (work / "lock").unlink(missing_ok=True)
    else:
        shutil.rmtree(work, ignore_errors=True)


def stain_slide(
    stainer: Stainer,
    slide_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model_mpp: float | None = None,
    checkpoint_id: str = "",
    options: SlideOptions = SlideOptions(),
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
    progress: bool = True,
) -> SlideResult:
    """Stain a whole slide into a pyramidal TIFF; resumable (see the module docstring).

    Args:
        stainer: the engine (tile, overlap, batch, norm, device, precision).
        slide_path: any slide OpenSlide or tiffslide reads.
        out: the output ``.tif``; a thumbnail ``OUT.thumbnail.png`` is written beside it.
        model_mpp: microns per pixel the network was trained at (the model
            card's); ``options.mpp`` overrides it; one of them is required.
        checkpoint_id: identifies the weights (e.g. their SHA-256), so that
            work done with other weights is never reused.
        options: :class:`SlideOptions`.
        log: receives one-line messages (plan, counts, timings).
        progress: show tqdm bars when stderr is a terminal.
    Returns:
        :class:`SlideResult`.
    """
    started = time.perf_counter()
    out = Path(out)
    check_output_path(out, options.force)
    target_mpp = _target_mpp(options, model_mpp)
    timings: dict[str, float] = {}
    with Slide(slide_path, backend=options.backend, slide_mpp=options.slide_mpp) as slide:
        plan = _plan(slide, stainer, float(target_mpp), options, log)
        work = _open_work_dir(slide, stainer, plan, options, checkpoint_id, out, log)
        total = len(plan.grid)
        background = total - len(plan.tissue)
        _log_tissue(slide, plan, total, background, log)
        forward_passes = 0
        pooled: _SameStats | _NeighbourhoodStats | None = None
        if stainer.norm == "global" and plan.tissue:
            pooled, forward_passes = _global_stats(stainer, plan, work, timings, log)
        elif stainer.norm == "kernel" and plan.tissue:
            pooled, forward_passes = _kernel_stats(stainer, plan, work, options, timings, progress)
        fill, fill_passes = _background_fill(stainer, plan, work, pooled, timings, log)
        reused, staining_passes = _staining_pass(stainer, plan, work, pooled, options, timings, log, progress)
        forward_passes += fill_passes + staining_passes
        info, thumbnail = _write_outputs(slide, stainer, plan, work, out, options, timings, fill)
        _close_work_dir(work, options.keep_work)
        result = SlideResult(
            out=out,
            thumbnail=thumbnail,
            width=plan.width,
            height=plan.height,
            mpp=plan.view.mpp,
            level=plan.view.choice.level,
            scale=plan.view.choice.scale,
            level_dimensions=info.level_dimensions,
            tiles_total=total,
            tiles_tissue=len(plan.tissue),
            tiles_background=background,
            tiles_reused=reused,
            forward_passes=forward_passes,
            seconds=time.perf_counter() - started,
            timings=timings,
            background_rgb=fill,
            grid=plan.grid,
            stained=_stained_mask(plan),
        )
    log(
        f"wrote {out} ({plan.width}x{plan.height} px, {len(info.level_dimensions)} levels, {plan.view.mpp:.4g} um/px) "
        f"and {thumbnail.name}: {len(plan.tissue)} tissue tiles stained ({reused} reused), {background} background "
        f"tiles skipped, {result.seconds:.1f} s"
    )
    return result


def result_summary(result: SlideResult) -> dict[str, Any]:
    """:class:`SlideResult` as JSON-ready data."""
    data = {f.name: getattr(result, f.name) for f in fields(result) if f.name not in ("grid", "stained")}
    data["out"], data["thumbnail"] = str(result.out), str(result.thumbnail)
    data["timings"] = dict(result.timings)
    data["level_dimensions"] = [list(d) for d in result.level_dimensions]
    data["background_rgb"] = None if result.background_rgb is None else list(result.background_rgb)
    return data
