"""Pictures for a person to check knowledge maps: IHC with the membrane mask and nuclei drawn on it.

Pure numpy (plus scipy's binary erosion), no plotting library: overlays are
written for thousands of tiles by ``tdkstain extract --overlays`` and must be
cheap and deterministic.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Colours chosen to stand out on brown DAB and blue haematoxylin alike.
MEMBRANE_COLOUR: tuple[int, int, int] = (0, 230, 0)  # green contour
NUCLEUS_COLOUR: tuple[int, int, int] = (255, 0, 255)  # magenta dot
NUCLEUS_OUTLINE: tuple[int, int, int] = (255, 255, 255)  # white ring, so dots show on dark pixels


def mask_contour(mask: np.ndarray, threshold: int = 128) -> np.ndarray:
    """Inner boundary of a mask.

    Args:
        mask: ``(H, W)`` uint8 0..255 (soft masks allowed) or bool.
        threshold: grey level at or above which a uint8 pixel counts as inside;
            128 takes a blurred mask at its half-height, close to the
            unblurred binary outline.

    Returns:
        ``(H, W)`` bool, True on inside pixels that touch an outside pixel
        (8-connectivity).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    inside = mask if mask.dtype == bool else mask >= threshold
    # border_value=0: pixels on the tile edge count as boundary, so a mask that
    # fills the whole tile still shows as a frame.
    eroded = ndimage.binary_erosion(inside, structure=np.ones((3, 3), bool), border_value=0)
    return inside & ~eroded


def _disk_offsets(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    dr, dc = np.meshgrid(r, r, indexing="ij")
    keep = dr**2 + dc**2 <= radius**2 + radius  # "+ radius" rounds the disk like a drawn circle
    return np.stack([dr[keep], dc[keep]], axis=1)


def draw_dots(
    image: np.ndarray,
    centroids: np.ndarray,
    colour: tuple[int, int, int] = NUCLEUS_COLOUR,
    radius: int = 2,
    outline: tuple[int, int, int] | None = NUCLEUS_OUTLINE,
) -> np.ndarray:
    """Draw a filled disk (with a one-pixel ring) at every centroid, in place, and return ``image``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB, modified in place.
        centroids: ``(N, 2)`` float ``(row, col)`` pixels; rounded to the nearest pixel.
        colour: RGB of the dot.
        radius: dot radius in pixels.
        outline: RGB of a ring one pixel outside the dot, or None for no ring.
    """
    centroids = np.asarray(centroids, dtype=np.float64).reshape(-1, 2)
    if len(centroids) == 0:
        return image
    height, width = image.shape[:2]
    centres = np.rint(centroids).astype(np.int64)

    def paint(offsets: np.ndarray, rgb: tuple[int, int, int]) -> None:
        rows = (centres[:, None, 0] + offsets[None, :, 0]).ravel()
        cols = (centres[:, None, 1] + offsets[None, :, 1]).ravel()
        inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
        image[rows[inside], cols[inside]] = rgb

    if outline is not None:
        paint(_disk_offsets(radius + 1), outline)
    paint(_disk_offsets(radius), colour)
    return image


def membrane_nuclei_overlay(
    ihc: np.ndarray,
    membrane_mask: np.ndarray,
    centroids: np.ndarray,
    *,
    membrane_colour: tuple[int, int, int] = MEMBRANE_COLOUR,
    nucleus_colour: tuple[int, int, int] = NUCLEUS_COLOUR,
    dot_radius: int | None = None,
) -> np.ndarray:
    """IHC tile with the membrane mask outlined and every nucleus centroid marked.

    Args:
        ihc: ``(H, W, 3)`` uint8 RGB IHC tile.
        membrane_mask: ``(H, W)`` uint8 0..255 (a blurred mask is outlined at
            grey level 128) or bool.
        centroids: ``(N, 2)`` float ``(row, col)`` in pixels.
        membrane_colour: RGB of the membrane contour (default green).
        nucleus_colour: RGB of the centroid dots (default magenta, white ring).
        dot_radius: dot radius in pixels; default scales with the tile
            (2 px up to 512 px tiles, 3 px above).

    Returns:
        ``(H, W, 3)`` uint8 RGB; the input is not modified.
    """
    ihc = np.asarray(ihc)
    if ihc.ndim != 3 or ihc.shape[2] != 3 or ihc.dtype != np.uint8:
        raise ValueError(f"ihc must be (H, W, 3) uint8, got shape {ihc.shape} dtype {ihc.dtype}")
    membrane_mask = np.asarray(membrane_mask)
    if membrane_mask.shape != ihc.shape[:2]:
        raise ValueError(f"membrane_mask shape {membrane_mask.shape} does not match the IHC tile {ihc.shape[:2]}")
    if dot_radius is None:
        dot_radius = 2 if max(ihc.shape[:2]) <= 512 else 3
    out = ihc.copy()
    out[mask_contour(membrane_mask)] = membrane_colour
    draw_dots(out, centroids, colour=nucleus_colour, radius=dot_radius)
    return out


def montage(images: list[np.ndarray], columns: int = 4, gap: int = 4, background: int = 255) -> np.ndarray:
    """Tile same-height RGB images into a grid, row-major, with ``gap`` pixels between them.

    Args:
        images: list of ``(H, W_i, 3)`` uint8 RGB; widths may differ, heights
            are padded to the tallest.
        columns: images per row.
        gap: pixels of ``background`` between images and around the edge.
        background: grey level of the gaps.

    Returns:
        ``(rows * (H + gap) + gap, columns * (W + gap) + gap, 3)`` uint8.
    """
    if not images:
        raise ValueError("montage needs at least one image")
    columns = max(1, min(columns, len(images)))
    cell_h = max(im.shape[0] for im in images)
    cell_w = max(im.shape[1] for im in images)
    rows = (len(images) + columns - 1) // columns
    out = np.full((rows * (cell_h + gap) + gap, columns * (cell_w + gap) + gap, 3), background, np.uint8)
    for index, im in enumerate(images):
        r, c = divmod(index, columns)
        top = gap + r * (cell_h + gap)
        left = gap + c * (cell_w + gap)
        out[top : top + im.shape[0], left : left + im.shape[1]] = im
    return out
