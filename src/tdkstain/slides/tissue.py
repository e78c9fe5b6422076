"""Where a slide holds tissue, found on a thumbnail.

Glass is bright and grey; stained tissue (H&E) is coloured. The mask is
Otsu's threshold on HSV saturation (the classic whole-slide tissue finder,
e.g. the CLAM and tiatoolbox pipelines), floored at
:data:`MIN_TISSUE_SATURATION` so an empty slide's noise is not split in two,
and excluding near-black pixels (slide labels, pen, scanner borders). Small
specks (dust, debris) are removed and small holes filled; the mask is then
dilated by a few thumbnail pixels so that tile selection does not cut the
palest edge of the tissue.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects

#: Saturation (0..1) below which a pixel is never tissue: glass with JPEG and sensor noise
#: stays under ~0.05 on the slides we tried (CMU-1 region: glass 0.00-0.04, pale stroma > 0.12).
MIN_TISSUE_SATURATION = 0.07
#: Pixels this dark (max RGB, 0..255) are ink, labels or scanner borders, not tissue.
MAX_DARK_VALUE = 30
#: Specks smaller than this area are dust or debris, not tissue (100 um x 100 um).
MIN_TISSUE_AREA_UM2 = 100.0 * 100.0


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``(max - min) / max`` of ``(H, W, 3)`` uint8 RGB -> ``(H, W)`` float32 in [0, 1]."""
    # channel-wise maximum/minimum: numpy's reductions over a length-3 last axis are several times slower
    red, green, blue = (rgb[..., k] for k in range(3))
    high = np.maximum(np.maximum(red, green), blue).astype(np.float32)
    low = np.minimum(np.minimum(red, green), blue).astype(np.float32)
    return np.where(high > 0, (high - low) / np.maximum(high, 1.0), 0.0).astype(np.float32)


def tissue_mask(thumbnail: np.ndarray, thumbnail_mpp: float | None = None, dilate_px: int = 2) -> np.ndarray:
    """Tissue on a thumbnail.

    Args:
        thumbnail: ``(H, W, 3)`` uint8 RGB.
        thumbnail_mpp: microns per thumbnail pixel, to size the speck filter
            (:data:`MIN_TISSUE_AREA_UM2`); None: specks under 16 pixels are dropped.
        dilate_px: grow the mask by this many pixels.
    Returns:
        ``(H, W)`` bool.
    """
    sat = saturation(thumbnail)
    dark = np.maximum(np.maximum(thumbnail[..., 0], thumbnail[..., 1]), thumbnail[..., 2]) <= MAX_DARK_VALUE
    candidates = sat[~dark]
    if candidates.size == 0 or float(candidates.max() - candidates.min()) < 1e-6:
        threshold = MIN_TISSUE_SATURATION
    else:
        threshold = max(float(threshold_otsu(candidates)), MIN_TISSUE_SATURATION)
    mask = (sat > threshold) & ~dark
    if thumbnail_mpp is not None and thumbnail_mpp > 0:
        min_area = max(1, int(math.ceil(MIN_TISSUE_AREA_UM2 / thumbnail_mpp**2)))
    else:
        min_area = 16
    mask = remove_small_objects(mask, max_size=min_area - 1) if min_area > 1 else mask
    mask = remove_small_holes(mask, max_size=min_area - 1) if min_area > 1 else mask
    if dilate_px > 0 and mask.any():
        mask = ndimage.binary_dilation(mask, iterations=dilate_px)
    return mask


def tiles_touching(mask: np.ndarray, boxes: list[tuple[int, int, int, int]], scale: float) -> np.ndarray:
    """Which boxes touch the mask.

    Args:
        mask: ``(h, w)`` bool on the thumbnail.
        boxes: ``(x, y, width, height)`` in image pixels.
        scale: thumbnail pixels per image pixel.
    Returns:
        ``(len(boxes),)`` bool.
    """
    return box_sums(mask, boxes, scale) > 0


def box_sums(values: np.ndarray, boxes: list[tuple[int, int, int, int]], scale: float) -> np.ndarray:
    """Sums of a thumbnail map over image boxes, each box widened to whole thumbnail pixels (at least one).

    Args:
        values: ``(h, w)`` bool or numbers on the thumbnail.
        boxes: ``(x, y, width, height)`` in image pixels.
        scale: thumbnail pixels per image pixel.
    Returns:
        ``(len(boxes),)``: int64 for bool or integer ``values``, else float64;
        0 for a box wholly outside the thumbnail.
    """
    # A summed-area table answers every box in O(1).
    exact = values.dtype == bool or np.issubdtype(values.dtype, np.integer)
    dtype = np.int64 if exact else np.float64
    table = np.zeros((values.shape[0] + 1, values.shape[1] + 1), dtype=dtype)
    table[1:, 1:] = values.astype(dtype).cumsum(0).cumsum(1)
    height, width = values.shape
    sums = np.zeros(len(boxes), dtype=dtype)
    for index, (x, y, box_width, box_height) in enumerate(boxes):
        x0 = min(width, max(0, int(math.floor(x * scale))))
        y0 = min(height, max(0, int(math.floor(y * scale))))
        x1 = min(width, max(x0 + 1, int(math.ceil((x + box_width) * scale))))
        y1 = min(height, max(y0 + 1, int(math.ceil((y + box_height) * scale))))
        if x0 >= width or y0 >= height:
            continue
        sums[index] = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    return sums
