"""Seam score: how visible the tile borders of a tiled, stained image are.

For every border between neighbouring tiles (the middle of their overlap,
:attr:`TileGrid.row_borders` / :attr:`TileGrid.col_borders`) the score takes
the absolute intensity step across it, ``|mean(I[b : b + band]) -
mean(I[b - band : b])|`` per line of pixels (intensity = mean of R, G, B),
and divides its mean by the mean of the same statistic at every position
inside tiles (farther than ``band + overlap / 2`` from any border). Natural
image texture makes the inside statistic non-zero, so an image without
visible borders scores about 1; a tile border that jumps in brightness or
colour scores above 1 (a naively tiled instance-norm generator: several).

``band`` 1 measures pixel-to-pixel steps; but a generator with reflection
padding makes its output locally mirror-symmetric at a tile border, which
hides texture steps there, and blending spreads a level difference over the
overlap. The default ``band`` 4 averages 4-pixel strips: on real H&E
(benchmarks/seams.py) it separates naive tiling (1.1-2.0) from blended,
consistently normalised tiling and from whole-image inference (0.94-1.08)
for both an untrained and a trained generator, where band 1 misses the
untrained generator's seams.

Slides stain only the tiles that touch tissue. :func:`border_steps` takes
which tiles were stained and scores the two kinds of border apart, with one
reference (the inside step of the stained tiles): borders between two
stained tiles (:attr:`BorderSteps.stained`, the seam score above restricted
to them: with every tile stained it *is* :func:`seam_score`) and borders
between a stained and a skipped tile (:attr:`BorderSteps.background`). The
edge against a skipped tile need not sit at the middle of the overlap: a
stained tile whose neighbour is missing covers the overlap up to its
blending margin, so a hard edge there lies ``overlap / 2 - margin`` past the
middle, towards the skipped tile. So the background score is the largest
mean step at any position from the middle to the stained tile's end
(offsets ``0 .. overlap / 2`` towards the skipped tile; the step averaged
over every line of every such border first, so that texture noise does not
make the maximum), never smaller than the step at the middle. Positions on
the stained side of the middle are left out: there the stained tile's own
content (tissue edges) would be scored, not the border.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tdkstain.inference.tiling import TileGrid

__all__ = ["BorderSteps", "border_steps", "seam_score", "seam_steps"]


def _strip_steps(intensity: np.ndarray, band: int) -> np.ndarray:
    """``|mean(I[:, x:x+band]) - mean(I[:, x-band:x])|`` for x in [band, W - band], shape (H, W - 2 band + 1)."""
    csum = np.concatenate([np.zeros((intensity.shape[0], 1)), np.cumsum(intensity, axis=1)], axis=1)
    width = intensity.shape[1]
    x = np.arange(band, width - band + 1)
    right = (csum[:, x + band] - csum[:, x]) / band
    left = (csum[:, x] - csum[:, x - band]) / band
    return np.abs(right - left)


def _intensity(image: np.ndarray) -> np.ndarray:
    intensity = np.asarray(image, dtype=np.float64)
    return intensity.mean(axis=2) if intensity.ndim == 3 else intensity


def seam_steps(image: np.ndarray, borders: list[float], band: int, exclude: float) -> tuple[float, float]:
    """Mean step across column ``borders`` and mean step at positions farther than ``exclude`` from them.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` array (channels averaged).
        borders: x coordinates of pixel edges (rounded to the nearest edge).
        band: strip width in pixels (>= 1).
        exclude: distance from any border within which a position is not "inside".

    Returns:
        ``(border_mean, inside_mean)``; NaN where there is nothing to average.
    """
    intensity = _intensity(image)
    width = intensity.shape[1]
    if width < 2 * band + 1:
        return float("nan"), float("nan")
    steps = _strip_steps(intensity, band)  # column j <-> edge x = j + band
    edges = np.arange(band, width - band + 1)
    at = sorted({int(round(b)) for b in borders if band <= round(b) <= width - band})
    border_mean = float(steps[:, [x - band for x in at]].mean()) if at else float("nan")
    inside = _inside(edges, borders, exclude)
    inside_mean = float(steps[:, inside].mean()) if inside.any() else float("nan")
    return border_mean, inside_mean


def _inside(edges: np.ndarray, borders: list[float], exclude: float) -> np.ndarray:
    """Which pixel ``edges`` lie farther than ``exclude`` from every border, ``(len(edges),)`` bool."""
    if not borders:
        return np.ones(edges.shape, dtype=bool)
    distance = np.min(np.abs(edges[:, None] - np.asarray(borders, dtype=np.float64)[None, :]), axis=1)
    return distance > exclude


@dataclass(frozen=True)
class BorderSteps:
    """Steps across the borders of a partly stained tile grid (:func:`border_steps`).

    Ratios are border steps over :attr:`inside` (about 1: the border does not
    show; NaN where there is no such border); steps are in intensity units of
    the image (grey levels 0..255 for uint8 RGB).

    Attributes:
        stained: mean step at the middle of the overlap across borders
            between two stained tiles / inside (:func:`seam_score`'s measure).
        background: largest mean step from the middle of the overlap to the
            stained tile's end, over borders between a stained and a skipped
            tile / inside.
        stained_zone: the same statistic over stained/stained borders (offsets
            towards the right or lower tile), for a like-for-like comparison.
        background_midline: the step at the middle of stained/skipped
            overlaps / inside (misses a hard edge away from the middle).
        inside: mean step inside stained tiles, farther than ``band +
            overlap / 2`` from any border (the reference).
        stained_borders, background_borders: how many border pieces (one
            tile side each) of either kind were measured.
        offsets: pixel offsets from the middle of the overlap, towards the
            skipped tile for background borders, ``0 .. ceil(overlap / 2)``.
        background_profile, stained_profile: mean step (intensity units) at
            each offset, pooled over the borders of that kind.
    """

    stained: float
    background: float
    stained_zone: float
    background_midline: float
    inside: float
    stained_borders: int
    background_borders: int
    offsets: tuple[int, ...]
    background_profile: tuple[float, ...]
    stained_profile: tuple[float, ...]


class _Tally:
    """Sums of one border kind in one direction: steps at the middle, and per offset across the overlap."""

    def __init__(self, offsets: int) -> None:
        self.mid_sum = 0.0
        self.mid_lines = 0
        self.pieces = 0
        self.profile_sum = np.zeros(offsets)
        self.profile_lines = np.zeros(offsets)


def _one_direction(
    intensity: np.ndarray,
    grid_borders: list[float],
    line_borders: list[float],
    stained: np.ndarray,
    band: int,
    exclude: float,
    half: int,
) -> tuple[_Tally, _Tally, float, int]:
    """Column borders of ``intensity`` (``(H, W)``); tile rows cut the lines into border pieces.

    ``stained``: ``(rows, cols)`` bool, tile ``(r, c)`` covers lines of tile row r
    and columns of tile column c. Returns the stained/stained and stained/skipped
    tallies and the inside steps' sum and count (positions in stained tiles only).
    """
    height, width = intensity.shape
    offsets = np.arange(half + 1)
    both, one = _Tally(len(offsets)), _Tally(len(offsets))
    if width < 2 * band + 1:
        return both, one, 0.0, 0
    steps = _strip_steps(intensity, band)  # column j <-> edge x = j + band
    line_cuts = [0] + [min(height, max(0, round(b))) for b in line_borders] + [height]
    for c, border in enumerate(grid_borders):
        middle = round(border)
        for r in range(len(line_cuts) - 1):
            y0, y1 = line_cuts[r], line_cuts[r + 1]
            left, right = bool(stained[r, c]), bool(stained[r, c + 1])
            if y1 <= y0 or not (left or right):
                continue
            tally = both if (left and right) else one
            towards = 1 if left else -1  # towards the skipped tile
            lines = steps[y0:y1]
            tally.pieces += 1
            if band <= middle <= width - band:
                tally.mid_sum += float(lines[:, middle - band].sum())
                tally.mid_lines += y1 - y0
            xs = middle + towards * offsets
            valid = (xs >= band) & (xs <= width - band)
            tally.profile_sum[valid] += lines[:, xs[valid] - band].sum(axis=0)
            tally.profile_lines[valid] += y1 - y0
    edges = np.arange(band, width - band + 1)
    tile_col = np.searchsorted(np.asarray(grid_borders, dtype=np.float64), edges, side="right")
    tile_row = np.searchsorted(np.asarray(line_cuts[1:-1]), np.arange(height), side="right")
    keep = stained[tile_row[:, None], tile_col[None, :]] & _inside(edges, grid_borders, exclude)[None, :]
    return both, one, float(steps[keep].sum()), int(keep.sum())


def _pooled(tallies: list[tuple[_Tally, int]]) -> tuple[float, np.ndarray]:
    """Mean middle step and mean profile over both directions, each direction weighted by the whole
    borders its measured lines amount to (lines / lines per border), as :func:`seam_score` weights them."""
    mid_num = sum(t.mid_sum / length for t, length in tallies if length)
    mid_den = sum(t.mid_lines / length for t, length in tallies if length)
    profile_num = sum(t.profile_sum / length for t, length in tallies if length)
    profile_den = sum(t.profile_lines / length for t, length in tallies if length)
    mid = mid_num / mid_den if mid_den > 0 else float("nan")
    profile = np.divide(profile_num, profile_den, out=np.full(len(profile_den), np.nan), where=profile_den > 0)
    return float(mid), profile


def border_steps(image: np.ndarray, grid: TileGrid, stained: np.ndarray | None = None, *, band: int = 4) -> BorderSteps:
    """Steps across stained/stained and stained/skipped tile borders, relative to the inside of stained tiles.

    Args:
        image: ``(H, W, 3)`` (or ``(H, W)``) image assembled on ``grid``, any
            real dtype; it may be smaller than the grid (a slide is cut from
            its canvas, which is padded to the generator's alignment).
        grid: the tile grid it was stained on.
        stained: ``(grid.rows, grid.cols)`` bool, which tiles were stained
            (None: every tile).
        band: strip width in pixels either side of a position (>= 1).

    Returns:
        :class:`BorderSteps`. With every tile stained, ``stained`` equals
        :func:`seam_score` and there are no background borders.
    """
    if band < 1:
        raise ValueError(f"border_steps: band must be >= 1, got {band}")
    mask = np.ones((grid.rows, grid.cols), dtype=bool) if stained is None else np.asarray(stained, dtype=bool)
    if mask.shape != (grid.rows, grid.cols):
        raise ValueError(f"border_steps: stained has shape {mask.shape}, the grid {grid.rows}x{grid.cols} tiles")
    intensity = _intensity(image)
    exclude = band + grid.overlap / 2.0
    half = math.ceil(grid.overlap / 2.0)
    height, width = intensity.shape
    columns = _one_direction(intensity, grid.col_borders, grid.row_borders, mask, band, exclude, half)
    rows = _one_direction(intensity.T, grid.row_borders, grid.col_borders, mask.T, band, exclude, half)
    (both_c, one_c, _, _), (both_r, one_r, _, _) = columns, rows
    # the inside reference, directions weighted as the borders they hold (seam_score's weighting)
    weights = [((b.mid_lines + o.mid_lines) / length, s, n) for (b, o, s, n), length in ((columns, height), (rows, width))]
    total = sum(w for w, _, n in weights if n)
    inside = sum(w * s / n for w, s, n in weights if n) / total if total else float("nan")
    stained_mid, stained_profile = _pooled([(both_c, height), (both_r, width)])
    background_mid, background_profile = _pooled([(one_c, height), (one_r, width)])

    def ratio(step: float) -> float:
        return float(step / inside) if np.isfinite(step) and inside > 0 else float("nan")

    def peak(profile: np.ndarray) -> float:
        return float(np.nanmax(profile)) if np.isfinite(profile).any() else float("nan")

    return BorderSteps(
        stained=ratio(stained_mid),
        background=ratio(peak(background_profile)),
        stained_zone=ratio(peak(stained_profile)),
        background_midline=ratio(background_mid),
        inside=float(inside),
        stained_borders=both_c.pieces + both_r.pieces,
        background_borders=one_c.pieces + one_r.pieces,
        offsets=tuple(range(half + 1)),
        background_profile=tuple(float(v) for v in background_profile),
        stained_profile=tuple(float(v) for v in stained_profile),
    )


def seam_score(image: np.ndarray, tile: int, overlap: int = 0, *, band: int = 4, grid: TileGrid | None = None) -> float:
    """Mean absolute intensity step across tile borders relative to the same step inside tiles.

    Args:
        image: ``(H, W, 3)`` (or ``(H, W)``) stained image, any real dtype.
        tile, overlap: the grid it was stained with (``TileGrid(H, W, tile,
            overlap)``), unless ``grid`` is given (e.g. ``Stainer.grid(H, W)``).
        band: strip width in pixels either side of a border (>= 1; default 4).

    Returns:
        ``border step / inside step`` pooled over horizontal and vertical
        borders, each direction weighted by its number of borders (~1: no
        visible border; NaN when the image has no border).
        :func:`border_steps` with every tile stained.
    """
    if band < 1:
        raise ValueError(f"seam_score: band must be >= 1, got {band}")
    image = np.asarray(image)
    if grid is None:
        grid = TileGrid(image.shape[0], image.shape[1], tile, overlap)
    return border_steps(image, grid, None, band=band).stained
