"""What HER2 scoring writes: a table of cells, QuPath GeoJSON, and an overlay of each cell's ring by class.

- **Cells table** (CSV, one row per cell): position in image pixels, areas,
  DAB measurements, completeness, the intensity class and whether the cell
  counts as a tumour cell.
- **GeoJSON** that QuPath (0.4 and later) imports with *File > Import
  objects*: a ``FeatureCollection`` of cells, each a ``Feature`` whose
  ``geometry`` is the cell outline, ``nucleusGeometry`` the nucleus outline,
  and ``properties`` hold ``objectType: "cell"``, a ``classification``
  (``"Tumor: 3+"`` ... ``"Tumor: Negative"`` for tumour cells, ``"Other"``
  for the rest, with QuPath's colours) and the ``measurements``.
  Coordinates are pixels of the full-resolution image, origin top left, as
  QuPath's.
- **Overlay** (PNG): the IHC with each tumour cell's membrane ring painted in
  its class colour (blue negative, yellow 1+, orange 2+, red 3+) and other
  cells' rings in grey.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from tdkstain.plumbing.atomic import write_text_atomic
from tdkstain.plumbing.jsonsafe import json_safe
from tdkstain.scoring.tile import TileScore

__all__ = [
    "CELL_CLASSES",
    "CLASS_COLOURS",
    "OTHER_COLOUR",
    "cell_rows",
    "cell_features",
    "feature_collection",
    "ring_overlay",
    "write_csv",
    "write_geojson",
]

# Names of the per-cell intensity classes (0..3), as QuPath's positive cell detection names them.
CELL_CLASSES: tuple[str, ...] = ("Negative", "1+", "2+", "3+")
# QuPath's colours of those classes (RGB).
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = ((112, 112, 225), (255, 215, 0), (224, 142, 0), (200, 35, 35))
OTHER_COLOUR: tuple[int, int, int] = (150, 150, 150)

CELL_COLUMNS: tuple[str, ...] = (
    "cell", "x", "y", "tumour", "class", "intensity_od", "completeness", "complete", "ring_od",
    "nucleus_area_um2", "cell_area_um2",
)


def cell_rows(tile: TileScore, origin: tuple[float, float] = (0.0, 0.0), scale: float = 1.0) -> list[dict]:
    """One dict per cell (the columns of :data:`CELL_COLUMNS`).

    Args:
        origin: ``(x, y)`` of the tile's top-left pixel in the image the table refers to.
        scale: image pixels per tile pixel (a slide read at a lower resolution: > 1).
    """
    c = tile.cells
    rows = []
    for i in range(len(c)):
        rows.append({
            "cell": i + 1,
            "x": round(origin[0] + (c.centroid[i, 1] + 0.5) * scale, 2),
            "y": round(origin[1] + (c.centroid[i, 0] + 0.5) * scale, 2),
            "tumour": bool(tile.tumour[i]),
            "class": CELL_CLASSES[int(c.intensity_class[i])],
            "intensity_od": round(float(c.intensity_od[i]), 4),
            "completeness": round(float(c.completeness[i]), 4),
            "complete": bool(c.complete[i]),
            "ring_od": round(float(c.ring_od[i]), 4),
            "nucleus_area_um2": round(float(c.nucleus_area_um2[i]), 2),
            "cell_area_um2": round(float(c.cell_area_um2[i]), 2),
        })
    return rows


def write_csv(path: str | os.PathLike, rows: list[dict], columns: tuple[str, ...] | None = None) -> Path:
    """Write ``rows`` (dicts) as a CSV with a header, atomically."""
    columns = columns or (tuple(rows[0]) if rows else CELL_COLUMNS)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())
    return Path(path)


OUTLINE_TOLERANCE_PX = 0.5  # Douglas-Peucker tolerance of the cell and nucleus outlines, tile pixels


def _contour(mask: np.ndarray) -> np.ndarray | None:
    """The longest 0.5-level contour of a binary mask (``skimage.measure.find_contours``), (K, 2) (row, col), or None."""
    from skimage.measure import find_contours

    contours = find_contours(np.pad(mask, 1).astype(np.float32), 0.5)
    return max(contours, key=len) if contours else None


def _simplify(contours: list[np.ndarray], tolerance: float) -> list[np.ndarray]:
    """``skimage.measure.approximate_polygon(contour, tolerance)`` of many contours at once, point for point the same.

    Douglas-Peucker splits a segment at its farthest interior point (the first, on ties) while that lies
    more than ``tolerance`` from it; which points a segment keeps depends on that segment alone, so every
    open segment of every contour is handled in one vectorised pass per level (scikit-image runs one
    segment per Python iteration: 2 s of a 1024 px tile's 3.4 s GeoJSON). The distances are computed with
    scikit-image's operations in its order (perpendicular distance where the point projects inside the
    segment, else the distance to the nearer end), so the kept points are identical.

    Args:
        contours: (K_i, 2) float64 arrays, K_i >= 2.
    Returns:
        The simplified (L_i, 2) arrays (each a subset of its contour's rows, in order; first and last kept).
    """
    if not contours:
        return []
    lengths = np.array([len(k) for k in contours], np.int64)
    ends = np.cumsum(lengths)
    firsts = ends - lengths
    coords = np.concatenate(contours).astype(np.float64, copy=False)
    keep = np.zeros(len(coords), bool)
    keep[firsts] = True
    keep[ends - 1] = True
    start, end = firsts, ends - 1
    while True:
        open_ = end - start > 1
        start, end = start[open_], end[open_]
        if not len(start):
            break
        inside = end - start - 1  # interior points per segment
        offsets = np.cumsum(inside) - inside
        segment = np.repeat(np.arange(len(start)), inside)
        index = np.arange(int(inside.sum())) - offsets[segment] + start[segment] + 1
        r0, c0 = coords[start, 0], coords[start, 1]
        r1, c1 = coords[end, 0], coords[end, 1]
        dr, dc = r1 - r0, c1 - c0
        angle = -np.arctan2(dr, dc)
        sin, cos = np.sin(angle), np.cos(angle)
        line = c0 * sin + r0 * cos
        r, c = coords[index, 0], coords[index, 1]
        dr0, dc0 = r - r0[segment], c - c0[segment]
        dr1, dc1 = r - r1[segment], c - c1[segment]
        perp = ((dr0 * dr[segment] + dc0 * dc[segment]) > 0) & ((-dr1 * dr[segment] - dc1 * dc[segment]) > 0)
        dist = np.where(perp, np.abs(r * cos[segment] + c * sin[segment] - line[segment]),
                        np.minimum(np.sqrt(dc0**2 + dr0**2), np.sqrt(dc1**2 + dr1**2)))
        farthest = np.maximum.reduceat(dist, offsets)
        split = farthest > tolerance
        at_max = np.flatnonzero((dist == farthest[segment]) & split[segment])
        _, first = np.unique(segment[at_max], return_index=True)  # the first maximum of each split segment
        cut = index[at_max[first]]
        keep[cut] = True
        start, end = np.concatenate([start[split], cut]), np.concatenate([cut, end[split]])
    return [coords[a:b][keep[a:b]] for a, b in zip(firsts, ends)]


def _ring(contour: np.ndarray, offset: tuple[int, int], origin: tuple[float, float], scale: float) -> list | None:
    """A simplified contour (padded-mask coordinates) as a closed GeoJSON ring of ``[x, y]`` image coordinates."""
    if len(contour) < 4:
        return None
    rows = contour[:, 0] - 1 + offset[0] + 0.5
    cols = contour[:, 1] - 1 + offset[1] + 0.5
    # np.round is what round() does to the numpy floats the coordinates are, so the values are the same either way
    ring = np.stack([np.round(origin[0] + cols * scale, 2), np.round(origin[1] + rows * scale, 2)], axis=1).tolist()
    if ring[0] != ring[-1]:
        ring.append(ring[0])
    return ring


def _outlines(labels: np.ndarray, count: int, origin: tuple[float, float], scale: float) -> list[list | None]:
    """The outline of each label 1..count of a label image as a closed GeoJSON ring (None for an absent label)."""
    boxes = ndimage.find_objects(labels, max_label=count)
    found = []  # (label index, offset, contour)
    for i, box in enumerate(boxes):
        if box is None:
            continue
        contour = _contour(labels[box] == i + 1)
        if contour is not None:
            found.append((i, (box[0].start, box[1].start), contour))
    simplified = _simplify([contour for _, _, contour in found], OUTLINE_TOLERANCE_PX)
    rings: list[list | None] = [None] * count
    for (i, offset, _), contour in zip(found, simplified):
        rings[i] = _ring(contour, offset, origin, scale)
    return rings


def cell_features(tile: TileScore, origin: tuple[float, float] = (0.0, 0.0), scale: float = 1.0) -> list[dict]:
    """QuPath cell objects (GeoJSON features) for the cells of ``tile``; see the module docstring.

    Outlines: the longest 0.5-level contour of each cell's and nucleus's pixels, simplified by Douglas-Peucker
    at 0.5 tile pixels (``skimage.measure.approximate_polygon``'s result); a cell whose outline keeps fewer
    than 4 points is left out.
    """
    c = tile.cells
    count = len(c)
    features = []
    cell_rings = _outlines(c.cells, count, origin, scale)
    nucleus_rings = _outlines(c.nuclei, count, origin, scale)
    for i, row in enumerate(cell_rows(tile, origin, scale)):
        cell_ring = cell_rings[i]
        if cell_ring is None:
            continue
        feature = {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [cell_ring]},
        }
        nucleus_ring = nucleus_rings[i]
        if nucleus_ring is not None:
            feature["nucleusGeometry"] = {"type": "Polygon", "coordinates": [nucleus_ring]}
        klass = int(c.intensity_class[i])
        name, colour = (f"Tumor: {CELL_CLASSES[klass]}", CLASS_COLOURS[klass]) if row["tumour"] else ("Other", OTHER_COLOUR)
        feature["properties"] = {
            "objectType": "cell",
            "classification": {"name": name, "color": list(colour)},
            "measurements": {
                "DAB membrane OD": row["intensity_od"],
                "DAB ring mean OD": row["ring_od"],
                "Membrane completeness": row["completeness"],
                "Complete membrane": int(row["complete"]),
                "Intensity class": klass,
                "Tumour cell": int(row["tumour"]),
                "Nucleus area um^2": row["nucleus_area_um2"],
                "Cell area um^2": row["cell_area_um2"],
            },
        }
        features.append(feature)
    return features


def feature_collection(features: list[dict]) -> dict:
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | os.PathLike, features: list[dict]) -> Path:
    """Write features as a GeoJSON FeatureCollection, atomically."""
    write_text_atomic(path, json.dumps(json_safe(feature_collection(features)), separators=(",", ":")))
    return Path(path)


def ring_overlay(ihc: np.ndarray, tile: TileScore, dim: float = 0.35) -> np.ndarray:
    """The IHC with each cell's membrane ring painted by class (tumour cells) or grey (other cells).

    Args:
        ihc: (H, W, 3) uint8 RGB, the tile that was scored.
        dim: how far the IHC under the rings is lightened towards white (0: not at all), so colours read.
    Returns:
        (H, W, 3) uint8 RGB.
    """
    c = tile.cells
    out = (np.asarray(ihc, np.float32) * (1 - dim) + 255 * dim).astype(np.uint8)
    if len(c) == 0:
        return out
    palette = np.array([OTHER_COLOUR, *CLASS_COLOURS], np.uint8)
    # Per cell: palette index 0 (other) or 1 + intensity class (tumour).
    index = np.where(tile.tumour, 1 + c.intensity_class, 0).astype(np.int64)
    labels = c.cells[c.ring]
    out[c.ring] = palette[index[labels - 1]]
    return out
