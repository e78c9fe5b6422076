"""Tile grids with overlap, and blending weights that form a partition of unity.

A :class:`TileGrid` covers an ``height x width`` image with tiles of side
``tile`` (shortened to the image side when the image is smaller) that
overlap by at least ``overlap`` pixels. Tile starts step by
``stride = tile - overlap``; the last tile of a row or column is moved back
to end exactly at the image border (its overlap with the previous tile is
then larger). No padding content is stained.

Blending: every border between two neighbouring tiles gets a linear ramp of
width ``overlap - 2 * margin`` centred on the middle of their overlap
(narrower where the moved-back last tile brings two borders closer than
that); a tile's weight is its left/top ramp times its right/bottom
complement (1 at image borders). Consecutive ramps never meet, so the
weights of all tiles sum to exactly 1 at every pixel (a partition of unity)
and identical tiles reconstruct the image exactly; :class:`Blender` divides
by the accumulated weight all the same.
With ``margin`` m > 0 the outer m pixels of a tile side that has a
neighbour get weight 0: a fully convolutional network whose receptive field
radius is <= m then blends to exactly the whole-image result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TilePosition", "TileGrid", "blend_weights", "Blender"]


@dataclass(frozen=True)
class TilePosition:
    """One tile of a grid: grid index ``(row, col)`` and pixel box ``[y, y + height) x [x, x + width)``."""

    row: int
    col: int
    y: int
    x: int
    height: int
    width: int

    @property
    def index(self) -> tuple[int, int]:
        return (self.row, self.col)

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The tile's view of an ``(H, W, ...)`` image (no copy)."""
        return image[self.y : self.y + self.height, self.x : self.x + self.width]


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    n = -(-(size - tile) // stride) + 1  # ceil((size - tile) / stride) + 1 tiles
    return [i * stride for i in range(n - 1)] + [size - tile]


def _ramp(length: int, centre: float, width: int, rising: bool) -> np.ndarray:
    """0 -> 1 (``rising``) or 1 -> 0 linear transition of ``width`` px centred at ``centre`` (pixel units)."""
    p = np.arange(length, dtype=np.float64) + 0.5  # pixel centres
    if width <= 0:
        up = (p >= centre).astype(np.float64)
    else:
        up = np.clip((p - (centre - width / 2.0)) / width, 0.0, 1.0)
    return up if rising else 1.0 - up


def blend_weights(tile: int, overlap: int, margin: int = 0) -> np.ndarray:
    """Weights of an interior tile of a uniform grid (neighbours on all four sides).

    Linear ramps of width ``overlap - 2 * margin`` across the middle of each
    overlap (0 on the outer ``margin`` pixels). Over a uniform grid with
    ``overlap <= tile / 2`` the weights of overlapping tiles sum to 1 at every
    pixel.

    Returns:
        ``(tile, tile)`` float32 in [0, 1].
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"blend_weights: need 0 <= overlap < tile, got overlap {overlap}, tile {tile}")
    if not 0 <= 2 * margin <= overlap:
        raise ValueError(f"blend_weights: need 0 <= 2 * margin <= overlap, got margin {margin}, overlap {overlap}")
    w = _ramp(tile, overlap / 2.0, overlap - 2 * margin, True) * _ramp(tile, tile - overlap / 2.0, overlap - 2 * margin, False)
    return np.outer(w, w).astype(np.float32)


class TileGrid:
    """Overlapping tiles covering an image; see the module docstring.

    Args:
        height, width: image size in pixels (>= 1).
        tile: nominal tile side; tiles are ``min(tile, height) x min(tile, width)``.
        overlap: minimum overlap of neighbouring tiles, ``0 <= overlap < tile``.
    """

    def __init__(self, height: int, width: int, tile: int, overlap: int = 0) -> None:
        if height < 1 or width < 1:
            raise ValueError(f"TileGrid: image size must be positive, got {height}x{width}")
        if tile < 1 or not 0 <= overlap < tile:
            raise ValueError(f"TileGrid: need tile >= 1 and 0 <= overlap < tile, got tile {tile}, overlap {overlap}")
        self.height, self.width = int(height), int(width)
        self.tile, self.overlap = int(tile), int(overlap)
        self.stride = self.tile - self.overlap
        self.tile_height = min(self.tile, self.height)
        self.tile_width = min(self.tile, self.width)
        self.row_starts = _starts(self.height, self.tile, self.stride)
        self.col_starts = _starts(self.width, self.tile, self.stride)

    @property
    def rows(self) -> int:
        return len(self.row_starts)

    @property
    def cols(self) -> int:
        return len(self.col_starts)

    def __len__(self) -> int:
        return self.rows * self.cols

    def __repr__(self) -> str:
        return (
            f"TileGrid({self.height}x{self.width}, tile {self.tile_height}x{self.tile_width}, "
            f"overlap {self.overlap}, {self.rows}x{self.cols} tiles)"
        )

    @property
    def positions(self) -> list[TilePosition]:
        """Every tile, row-major."""
        return [
            TilePosition(r, c, y, x, self.tile_height, self.tile_width)
            for r, y in enumerate(self.row_starts)
            for c, x in enumerate(self.col_starts)
        ]

    @staticmethod
    def _borders(starts: list[int], tile: int) -> list[float]:
        # middle of the overlap of tiles i and i + 1 (the tile border itself when they just touch)
        return [(starts[i + 1] + starts[i] + tile) / 2.0 for i in range(len(starts) - 1)]

    @property
    def row_borders(self) -> list[float]:
        """y coordinates (pixel edges, may be half-integers) where rows of tiles hand over."""
        return self._borders(self.row_starts, self.tile_height)

    @property
    def col_borders(self) -> list[float]:
        """x coordinates where columns of tiles hand over."""
        return self._borders(self.col_starts, self.tile_width)

    def core(self, position: TilePosition) -> tuple[float, float, float, float]:
        """The part of the image this tile stands for: ``(top, bottom, left, right)`` in tile pixels.

        Cores cut the image at the borders (middles of overlaps), so the cores
        of all tiles partition the image: statistics gathered over cores and
        pooled by pixel count count every pixel once (see
        :meth:`tdkstain.inference.Stainer.sequential_stats`).
        """
        rows, cols = self.row_borders, self.col_borders
        top = 0.0 if position.row == 0 else rows[position.row - 1] - position.y
        bottom = float(position.height) if position.row == self.rows - 1 else rows[position.row] - position.y
        left = 0.0 if position.col == 0 else cols[position.col - 1] - position.x
        right = float(position.width) if position.col == self.cols - 1 else cols[position.col] - position.x
        return (top, bottom, left, right)

    def _ramp_widths(self, borders: list[float], margin: int) -> list[float]:
        # overlap - 2 * margin, narrowed where two borders are closer than that (the moved-back last
        # tile) so that consecutive ramps never meet and the weights stay a partition of unity
        gaps = np.diff(borders).tolist()
        widths = []
        for b in range(len(borders)):
            near = [g for g in (gaps[b - 1] if b > 0 else None, gaps[b] if b < len(gaps) else None) if g is not None]
            widths.append(min([float(self.overlap - 2 * margin), *near]))
        return widths

    def _axis_weights(self, starts: list[int], tile: int, i: int, margin: int) -> np.ndarray:
        borders = self._borders(starts, tile)
        widths = self._ramp_widths(borders, margin)
        w = np.ones(tile, dtype=np.float64)
        if i > 0:
            w *= _ramp(tile, borders[i - 1] - starts[i], widths[i - 1], True)
        if i < len(starts) - 1:
            w *= _ramp(tile, borders[i] - starts[i], widths[i], False)
        return w

    def weights(self, position: TilePosition, margin: int = 0) -> np.ndarray:
        """Blending weights of one tile: ramps on the sides that have a neighbour, 1 elsewhere.

        Returns:
            ``(tile_height, tile_width)`` float32 in [0, 1].
        """
        if not 0 <= 2 * margin <= self.overlap:
            raise ValueError(f"TileGrid.weights: need 0 <= 2 * margin <= overlap, got margin {margin}, overlap {self.overlap}")
        wy = self._axis_weights(self.row_starts, self.tile_height, position.row, margin)
        wx = self._axis_weights(self.col_starts, self.tile_width, position.col, margin)
        return np.outer(wy, wx).astype(np.float32)


class Blender:
    """Accumulates weighted tiles into an ``(height, width, channels)`` image.

    ``add`` takes a tile (``(h, w, channels)``, any real dtype) with its
    top-left corner and weights ``(h, w)``; ``result`` returns the weighted
    mean (float32), or uint8 rounded and clipped to 0..255. Pixels that no
    tile covered with positive weight are an error.
    """

    def __init__(self, height: int, width: int, channels: int = 3) -> None:
        self.sum = np.zeros((height, width, channels), dtype=np.float32)
        self.weight = np.zeros((height, width), dtype=np.float32)

    def add(self, tile: np.ndarray, y: int, x: int, weights: np.ndarray) -> None:
        h, w = weights.shape
        if tile.shape[:2] != (h, w):
            raise ValueError(f"Blender.add: tile {tile.shape[:2]} and weights {weights.shape} differ")
        self.sum[y : y + h, x : x + w] += tile.astype(np.float32, copy=False) * weights[:, :, None]
        self.weight[y : y + h, x : x + w] += weights

    def result(self, uint8: bool = True) -> np.ndarray:
        if not np.all(self.weight > 0):
            raise ValueError("Blender.result: some pixels were not covered by any tile")
        mean = self.sum / self.weight[:, :, None]
        if not uint8:
            return mean
        return np.clip(np.rint(mean), 0, 255).astype(np.uint8)
