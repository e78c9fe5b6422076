"""The fast knowledge extraction engine: ``knowledge.extract_tile``'s outputs, bit for bit, in less time.

``extract_tiles_torch(tiles, params)`` returns, for every (H, W, 3) uint8
IHC tile, the very ``TileKnowledge`` that ``knowledge.extract_tile`` returns:
``dab_rgb``, ``membrane_mask``, ``nuclei_mask``, ``centroids`` and ``density``
equal element for element, floats included (tolerance 0), so the PNG, TIFF
and CSV files written to disk are the same bytes. Tests:
``tests/test_extraction_fast.py``; speed: ``benchmarks/extract_speed.py``.

Where the time went in ``extract_tile`` (1024 px synth tile, one CPU core,
~1.45 s) and what this engine does instead:

- ``skimage.morphology.h_maxima`` took ~1.1 s: its grey reconstruction
  argsorts the 2 M values of marker and mask. ``h_maxima_torch`` marks most
  maxima directly and reconstructs (3x3 geodesic dilations in torch, float32,
  exact for these integers) only the components that need it, packed on one
  small canvas: ~30 ms. The argument is below.
- The colour deconvolution ran several times per tile; it runs once, and the
  DAB-only image, the membrane and the relief reuse it. Its logarithms, and
  those of the white balance and the tissue mask, are functions of one uint8
  channel value: they are computed for the 256 values and gathered (the same
  numpy function on the same floats); the matrix products that follow run on
  arrays of the same shape as in the numpy path and the channel sums add in
  numpy's order, so they round the same way. The white point is read from
  per-channel histograms.
- ``regionprops`` built one object per nucleus for its centroid; here
  per-label sums of pixel coordinates (``np.bincount``): integer sums are
  exact in float64, so ``sum / area`` is the very float regionprops' mean gives.
- The release's 9x9 mask blur runs in torch on shifted slices: its integer
  sums stay below 2**24, which float32 holds exactly in any order.
- The density map's Gaussian skips the lines that hold no impulse (exactly
  zero either way); the release membrane's HSV saturation takes maxima across
  channel planes instead of numpy's slow reductions over a 3-long axis.

The rest calls the numpy/scipy code of ``knowledge`` and ``nuclei`` itself:
thresholds, Otsu, morphology, Euclidean distance transform, watershed and the
Gaussian filters. Torch reproduces scipy's Gaussian bit for bit when it adds
the taps in scipy's order (outermost pair first), but on one core that is no
faster than scipy; transcendental functions and BLAS products in torch differ
from numpy's in the last bit, and a last-bit difference moves a threshold, an
Otsu bin or a truncation to uint8. Batching tiles gains nothing on the CPU
(scipy holds the GIL); same-size tiles share one h-maxima canvas and one blur.

Only the ``classical`` nuclei backend is supported; ``cellpose`` raises
``TdkstainError`` (use the numpy engine, ``knowledge.extract_tile``).

h-maxima, exactly. ``h_maxima(f, h)`` marks p iff ``f(p) - R(p) >= h``, where R
is the grey reconstruction by dilation of ``f - h`` under ``f`` (8-connected).
Since ``R >= f - h``, that means R(p) = f(p) - h: no pixel higher than p can be
reached from p through pixels all above ``f(p) - h``. Let b = min(f).

- When ``h > max(f) - b`` scikit-image returns no maxima at all; so do we.
- When ``f(p) - h < b`` every pixel is above that level and the image is
  connected, so p is marked iff f(p) = max(f). (On our relief b = 0 is the
  background outside the nuclei mask, which carries level 0 from nucleus to
  nucleus: a tiny nucleus whose peak is below h is marked only if it holds the
  tile's maximum.)
- Otherwise the level is at least b, so the paths that matter never touch a
  pixel at b: each component of ``f > b`` is decided on its own. Its pixels at
  the component's maximum are marked (nothing higher is reachable). A pixel
  below that maximum with a higher 8-neighbour is not. Only components holding
  a pixel below their maximum with no higher neighbour need the
  reconstruction; they are cut out (other components and the background set
  to -inf walls), packed side by side with -inf gaps, and reconstructed
  together until nothing changes (about the component diameter in
  iterations). On a 1024 px relief ~250 of ~820 components, ~8 % of the tile.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
from scipy import ndimage

from tdkstain.knowledge import maps as knowledge
from tdkstain.knowledge import nuclei
from tdkstain.knowledge import stain
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.knowledge.maps import ExtractionParams, TileKnowledge

ENGINES = ("torch", "numpy")
# float32 holds every integer up to 2**24 exactly; the reconstruction compares and takes maxima only.
_FLOAT32_EXACT = 2**24


# --------------------------------------------------------------------------- h-maxima


def h_maxima_torch(levels: np.ndarray | torch.Tensor, h: int, device: str | torch.device = "cpu") -> np.ndarray:
    """``skimage.morphology.h_maxima(levels, h)`` (3x3 footprint) for a batch of integer images.

    Args:
        levels: (H, W) or (B, H, W) integer array; each image is treated on its own.
        h: the minimal dynamic, an integer >= 1.
        device: torch device for the reconstruction.
    Returns:
        bool array of ``levels``' shape: True on the maxima of dynamic >= h (and on
        the global maxima), equal to ``h_maxima(levels[b], h).astype(bool)`` for every b.
    Raises:
        TdkstainError: non-integer levels or h < 1.
    """
    array = levels.cpu().numpy() if isinstance(levels, torch.Tensor) else np.asarray(levels)
    if not np.issubdtype(array.dtype, np.integer):
        raise TdkstainError(f"h_maxima_torch: levels must be an integer image, got dtype {array.dtype}")
    if isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1:
        raise TdkstainError(f"h_maxima_torch: h must be an integer >= 1, got {h!r}")
    single = array.ndim == 2
    if single:
        array = array[None]
    if array.ndim != 3 or array.shape[1] == 0 or array.shape[2] == 0:
        raise TdkstainError(f"h_maxima_torch: expected an (H, W) or (B, H, W) image, got shape {levels.shape}")
    h = int(h)
    out = np.zeros(array.shape, bool)
    crops: list[tuple[int, tuple[slice, slice], np.ndarray, np.ndarray]] = []
    for index, image in enumerate(array):
        crops += _mark_simple_maxima(image.astype(np.int64), h, out[index], index)
    if crops:
        _mark_by_reconstruction(crops, h, out, torch.device(device))
    return out[0] if single else out


def _mark_simple_maxima(
    image: np.ndarray, h: int, out: np.ndarray, index: int
) -> list[tuple[int, tuple[slice, slice], np.ndarray, np.ndarray]]:
    """Mark in ``out`` what needs no reconstruction; return the components that do.

    image: (H, W) int64; out: (H, W) bool, written in place. With b = min(image):
    a pixel below b + h is marked iff it is a global maximum (see the module
    docstring); in a component of ``image > b`` the pixels at the component's
    maximum are marked (nothing higher is reachable inside it) when at least
    b + h; and a pixel below its component's maximum can be marked only if it is
    a local maximum (no higher 8-neighbour). Components holding such a pixel
    are returned as crops (bounding box, pixels of other components and the
    background -inf walls) for ``_mark_by_reconstruction``.
    Returns [(``index``, (rows, cols) slices, (h, w) integer crop of image - b,
    (h, w) bool component mask)].
    """
    low, high = int(image.min()), int(image.max())
    if high - low < h:
        return []  # scikit-image returns no maxima when h exceeds the range
    # Heights above the minimum, in the narrowest integer type that holds them (faster maxima).
    values = (image - low).astype(np.int32 if high - low < 2**31 - 1 else np.int64)
    top = high - low
    out |= (values == top) & (values < h)
    above = values > 0
    labels, count = ndimage.label(above, structure=np.ones((3, 3), bool))
    if count == 0:
        return []
    peak = np.zeros(count + 1, values.dtype)
    np.maximum.at(peak, labels[above], values[above])
    component_peak = peak[labels]
    out |= above & (values == component_peak) & (values >= h)
    # Largest 8-neighbour (or the pixel itself): padding with 0 = the minimum changes no comparison.
    padded = np.pad(values, 1)
    rows = np.maximum(np.maximum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    neighbourhood = np.maximum(np.maximum(rows[:-2], rows[1:-1]), rows[2:])
    pending = above & (values == neighbourhood) & (values < component_peak) & (values >= h)
    boxes = ndimage.find_objects(labels)
    crops = []
    for label in np.unique(labels[pending]):
        box = boxes[label - 1]
        crops.append((index, box, values[box], labels[box] == label))
    return crops


def _mark_by_reconstruction(
    crops: list[tuple[int, tuple[slice, slice], np.ndarray, np.ndarray]],
    h: int,
    out: np.ndarray,
    device: torch.device,
) -> None:
    """Reconstruct all pending components at once, packed side by side on one canvas.

    Rows of crops (tallest first) separated by one -inf pixel, so no two
    components touch; the reconstruction then works on the components' boxes
    only (on a 1024 px relief about a tenth of the tile) instead of the tile.
    Marks ``out[b][box]`` where ``f - R >= h`` inside each crop's component.
    """
    order = sorted(range(len(crops)), key=lambda i: -crops[i][2].shape[0])
    area = sum((c[2].shape[0] + 1) * (c[2].shape[1] + 1) for c in crops)
    width = max(max(c[2].shape[1] for c in crops) + 1, int(np.sqrt(area) * 1.25))
    places, x, y, shelf = {}, 1, 1, 0
    for i in order:
        rows, cols = crops[i][2].shape
        if x + cols + 1 > width:
            x, y, shelf = 1, y + shelf + 1, 0
        places[i] = (y, x)
        x += cols + 1
        shelf = max(shelf, rows)
    height = y + shelf + 1
    span = max(int(c[2].max()) for c in crops)
    dtype = np.float32 if span + h < _FLOAT32_EXACT else np.float64
    canvas = np.full((height, width + 1), -np.inf, dtype)
    for i, (_, _, values, member) in enumerate(crops):
        top, left = places[i]
        window = canvas[top : top + values.shape[0], left : left + values.shape[1]]
        window[member] = values[member]
    with _single_thread_on_cpu(device):
        ceiling = torch.as_tensor(canvas, device=device)[None]
        reconstructed = _reconstruct_by_dilation(ceiling - h, ceiling)[0].cpu().numpy()
    for i, (image_index, box, values, member) in enumerate(crops):
        top, left = places[i]
        rec = reconstructed[top : top + values.shape[0], left : left + values.shape[1]]
        out[image_index][box] |= member & (values >= h) & (values - rec >= h)


@contextmanager
def _single_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """Run the enclosed torch work on one CPU thread, then restore the caller's setting.

    The torch steps here are many small elementwise calls (~100 of them on at
    most 1 M values); a second intra-op thread saves little on them, and on a
    machine whose cores are busy with other work every call waits for the
    descheduled thread: measured 10-20x slower (h-maxima 0.75 s instead of
    0.04 s at load 4 on 2 cores). Not used on CUDA.
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _reconstruct_by_dilation(marker: torch.Tensor, ceiling: torch.Tensor) -> torch.Tensor:
    """Grey reconstruction: iterate ``min(dilate3x3(marker), ceiling)`` until it stops changing.

    marker, ceiling: (B, H, W) float, marker <= ceiling. -inf pixels are walls.
    Returns (B, H, W). The 3x3 maximum is taken separably from shifted slices
    of a -inf-padded copy, which on 2 CPU threads is several times faster than
    ``max_pool2d`` on one channel.
    """
    batch, height, width = marker.shape
    padded = torch.full((batch, height + 2, width + 2), float("-inf"), dtype=marker.dtype, device=marker.device)
    rows = torch.empty((batch, height + 2, width), dtype=marker.dtype, device=marker.device)
    current = marker
    while True:
        padded[:, 1:-1, 1:-1] = current
        torch.maximum(padded[:, :, :-2], padded[:, :, 1:-1], out=rows)
        torch.maximum(rows, padded[:, :, 2:], out=rows)
        grown = torch.maximum(rows[:, :-2], rows[:, 1:-1])
        torch.maximum(grown, rows[:, 2:], out=grown)
        torch.minimum(grown, ceiling, out=grown)
        if torch.equal(grown, current):
            return current
        current = grown


# --------------------------------------------------------------------------- stages


class StageTimer:
    """Seconds spent per stage, summed over calls: ``timer.seconds`` {stage: s}."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


# Every per-pixel logarithm of the numpy path is a function of one uint8 channel value, so it is
# computed for the 256 values (the same numpy function on the same floats gives the same
# results) and gathered; the matrix products that follow run on arrays of the same shape and
# layout as in the numpy path, and channel sums add in numpy's order, so they round the same way.
_LEVELS = np.arange(256, dtype=np.uint8)
# stain.rgb_to_hed's log(max(rgb / 255, 1e-6)) / ln(1e-6), per uint8 value.
_HED_LOG = np.log(np.maximum(np.multiply(_LEVELS, 1.0 / 255.0, dtype=np.float64), stain._MIN_INTENSITY)) / stain._LOG_ADJUST
# knowledge.optical_density_sum's -log10(max(rgb, 1) / 255), per uint8 value.
_OD10 = -np.log10(np.maximum(_LEVELS.astype(np.float64), 1.0) / 255.0)


_CHANNEL_OFFSET = np.array([0, 256, 512], np.uint16)


def _channel_index(ihc: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W, 3) uint16 ``value + 256 * channel``, an index into a (3, 256) table."""
    index = ihc.astype(np.uint16)
    index += _CHANNEL_OFFSET
    return index


def _gather(index: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(H, W, 3) index (uint8 values, or ``_channel_index``) -> (H, W, 3) float64 ``table.ravel()[index]``.

    table: (256,) for all channels, or (3, 256) one row per channel (with ``_channel_index``).
    """
    return np.take(table.ravel(), index)


def _sum3(values: np.ndarray) -> np.ndarray:
    """``values.sum(axis=-1)`` for (H, W, 3) float64, bit for bit, ~4x faster.

    numpy adds a 3-long last axis left to right, ``(v0 + v1) + v2`` (checked
    against numpy by ``tests/test_extraction_fast.py``); the same additions on
    the channel planes skip its slow small-axis reduction. Returns (H, W).
    """
    return (values[..., 0] + values[..., 1]) + values[..., 2]


def _hed(index: np.ndarray, logs: np.ndarray) -> np.ndarray:
    """``stain.rgb_to_hed`` from the per-value logs: (H, W, 3) float64 densities, clipped at 0."""
    return np.maximum(_gather(index, logs) @ stain.HED_FROM_RGB, 0.0)


def _uint8_percentile(index: np.ndarray, q: float) -> np.ndarray:
    """``np.percentile(ihc.reshape(-1, 3).astype(float), q, axis=0)`` from per-channel histograms.

    index: ``_channel_index(ihc)``. numpy's value depends only on the count and
    the sorted values, so the percentile of each channel's sorted values rebuilt
    from its histogram is the same float, without partitioning 3 M values.
    Returns (3,) float64.
    """
    counts = np.bincount(index.ravel(), minlength=768)
    values = np.arange(256, dtype=np.float64)
    return np.array([np.percentile(np.repeat(values, counts[c * 256 : (c + 1) * 256]), q) for c in range(3)])


def _white_balanced_hematoxylin(ihc: np.ndarray, params: nuclei.NucleiParams) -> tuple[np.ndarray, np.ndarray]:
    """``nuclei._white_balanced_hematoxylin``, bit for bit: ((H, W) haematoxylin OD, (H, W) summed OD)."""
    index = _channel_index(ihc)
    white = _uint8_percentile(index, params.white_percentile)
    white = np.where(white >= params.white_min, white, 255.0)
    balanced = np.clip(_LEVELS.astype(np.float64)[:, None] * (255.0 / white), 1.0, 255.0)  # (256, 3)
    od = _gather(index, -np.log(balanced / 255.0).T)
    logs = np.log(np.maximum(balanced / 255.0, stain._MIN_INTENSITY)) / stain._LOG_ADJUST
    return _hed(index, logs.T)[..., 0], _sum3(od)


def tissue_mask(ihc: np.ndarray) -> np.ndarray:
    """``knowledge.tissue_mask(ihc)``, bit for bit, with the per-value optical densities.

    Args:
        ihc: (H, W, 3) uint8 RGB.
    Returns:
        (H, W) bool.
    """
    ihc = knowledge._check_ihc(ihc, "tissue_mask input")
    od = ndimage.gaussian_filter(_sum3(_gather(ihc, _OD10)), sigma=2.0, mode="nearest")
    return od > np.percentile(od, knowledge.TISSUE_WHITE_PERCENTILE) + knowledge.TISSUE_OD_MARGIN


def _dab_rgb_float(dab: np.ndarray) -> np.ndarray:
    """``stain.dab_rgb_float`` from an already deconvolved DAB density: (H, W) -> (H, W, 3) float64.

    ``hed_to_rgb([0, 0, dab])`` multiplies ``-(hed * ln 1e6)`` by ``RGB_FROM_HED``;
    with the first two densities 0 each product sum is the single term of the
    DAB row (adding zeros is exact), so a broadcast product gives the same floats.
    """
    log_rgb = (-(dab * -stain._LOG_ADJUST))[..., None] * stain.RGB_FROM_HED[2]
    return np.clip(np.exp(log_rgb), 0.0, 1.0)


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """``stain.saturation(rgb)`` for (H, W, 3) float64, bit for bit, 6x faster.

    Maximum and minimum are exact whatever the order, so taking them across
    the three channel planes gives the floats that numpy's reductions over the
    3-long last axis give, and the difference and division are the same IEEE
    operations. Returns (H, W) float64.
    """
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = np.maximum(np.maximum(red, green), blue)
    delta = value - np.minimum(np.minimum(red, green), blue)
    with np.errstate(invalid="ignore", divide="ignore"):
        sat = delta / value
    sat[delta == 0.0] = 0.0
    return sat


def release_blur_torch_exact(masks: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
    """``stain.release_blur`` for a batch of uint8 masks, bit-identical.

    The fixed-point sums are integers below 2**24 (255 x 256 x 256 at most),
    which float32 holds exactly whatever the order of summation.

    Args:
        masks: (B, H, W) uint8, H and W at least 5 (the reflected border).
    Returns:
        (B, H, W) uint8.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.dtype != np.uint8:
        raise TdkstainError(f"release_blur_torch_exact: expected (B, H, W) uint8 masks, got {masks.shape} {masks.dtype}")
    r, taps = stain.RELEASE_BLUR_RADIUS, [float(tap) for tap in stain.RELEASE_BLUR_TAPS]
    height, width = masks.shape[1:]
    device = torch.device(device)
    with _single_thread_on_cpu(device):
        x = torch.as_tensor(masks, device=device).to(torch.float32)[:, None]
        x = torch.nn.functional.pad(x, (r, r, r, r), mode="reflect")[:, 0]
        # Shifted slices, not conv2d: on one channel they are ~10x faster on the CPU.
        rows = x[:, :, :width] * taps[0]
        for i in range(1, len(taps)):
            rows += x[:, :, i : i + width] * taps[i]
        out = rows[:, :height] * taps[0]
        for i in range(1, len(taps)):
            out += rows[:, i : i + height] * taps[i]
        # (out + 2**15) >> 16: the division by 2**16 is exact in float32, floor rounds down like the shift.
        out = torch.floor((out + float(1 << 15)) / float(1 << 16))
        return out.to(torch.uint8).cpu().numpy()


def _centroids(labels: np.ndarray, params: nuclei.NucleiParams) -> np.ndarray:
    """``nuclei._region_centroids(labels, params)`` without one regionprops object per region.

    Row and column sums per label are sums of integers, exact in float64, and
    ``regionprops``' centroid is their mean: ``sum / area``, the same float.
    """
    count = int(labels.max()) if labels.size else 0
    if count == 0:
        return np.zeros((0, 2), np.float64)
    where = np.flatnonzero(labels)  # only labelled pixels: background adds nothing to any label
    flat = labels.ravel()[where]
    rows, cols = np.divmod(where, labels.shape[1])
    area = np.bincount(flat, minlength=count + 1)
    row_sum = np.bincount(flat, weights=rows.astype(np.float64), minlength=count + 1)
    col_sum = np.bincount(flat, weights=cols.astype(np.float64), minlength=count + 1)
    min_area = nuclei._disk_area_px(params.min_diameter_um, params)
    max_area = nuclei._disk_area_px(params.max_diameter_um, params)
    index = np.arange(count + 1)
    keep = (index > 0) & (area > 0) & (area >= min_area) & (area <= max_area)
    if not keep.any():
        return np.zeros((0, 2), np.float64)
    return np.stack((row_sum[keep] / area[keep], col_sum[keep] / area[keep]), axis=1)


def _density_map(centroids: np.ndarray, shape: tuple[int, int], sigma: float, normalise: str) -> np.ndarray:
    """``knowledge.density_map(centroids, shape, sigma, normalise)``, bit for bit, filtering only where it matters.

    ``gaussian_filter`` filters along rows (axis 0), then along columns, each
    line on its own (its border extension included), so a column without an
    impulse stays exactly 0 in the first pass and a row that is all 0 after it
    stays 0 in the second: those lines are left out. With ~800 nuclei on a
    1024 px tile about half the columns hold none.
    Returns (H, W) float32.
    """
    height, width = shape
    if len(centroids) == 0:
        # No impulse: the numpy path filters zeros into zeros (and min-max gives zeros).
        return knowledge.density_map(centroids, shape, sigma, normalise)
    impulses = np.zeros((height, width), dtype=np.float64)
    rows = np.clip(np.rint(centroids[:, 0]).astype(np.int64), 0, height - 1)
    cols = np.clip(np.rint(centroids[:, 1]).astype(np.int64), 0, width - 1)
    np.add.at(impulses, (rows, cols), 1.0)
    mode = "nearest" if normalise == "minmax" else "reflect"
    used_cols = np.unique(cols)
    density = np.zeros((height, width), dtype=np.float64)
    density[:, used_cols] = ndimage.gaussian_filter1d(impulses[:, used_cols], sigma, axis=0, mode=mode, truncate=4.0)
    used_rows = np.flatnonzero(density.any(axis=1))
    density[used_rows] = ndimage.gaussian_filter1d(density[used_rows], sigma, axis=1, mode=mode, truncate=4.0)
    if normalise == "minmax":
        low, high = density.min(), density.max()
        density = (density - low) / (high - low) if high > low else np.zeros_like(density)
    return density.astype(np.float32)


def _check_params(params: ExtractionParams | None) -> ExtractionParams:
    params = params or ExtractionParams()
    params.validate()
    if params.nuclei.backend != "classical":
        raise TdkstainError(
            f"the torch extraction engine supports the 'classical' nuclei backend only, not "
            f"{params.nuclei.backend!r}: use the numpy engine (tdkstain extract --engine numpy) for Cellpose"
        )
    return params


def extract_tiles_torch(
    tiles: Sequence[np.ndarray],
    params: ExtractionParams | None = None,
    device: str | torch.device = "cpu",
    timer: StageTimer | None = None,
    batch: int | None = None,
) -> list[TileKnowledge]:
    """``knowledge.extract_tile`` for every tile, with identical outputs, faster.

    Args:
        tiles: (H, W, 3) uint8 RGB IHC tiles; sizes may differ.
        params: ``ExtractionParams`` (classical nuclei backend).
        device: torch device for the h-maxima reconstruction and the mask blur.
        timer: optional ``StageTimer`` that receives seconds per stage.
        batch: same-size tiles that share one h-maxima canvas and one blur call;
            their intermediate maps (~40 MB per 1024 px tile) are held together.
            None: 1 on the CPU, where batching measured no faster
            (``benchmarks/extract_speed.py``: scipy holds the GIL and the torch
            steps are small), 8 on other devices.
    Returns:
        One ``TileKnowledge`` per tile, in order; each field equal to ``extract_tile``'s.
    Raises:
        TdkstainError: a tile that is not an (H, W, 3) uint8 image, bad parameters,
            or the cellpose backend.
    """
    params = _check_params(params)
    timer = timer or StageTimer()
    tiles = [knowledge._check_ihc(tile, f"tile {index}") for index, tile in enumerate(tiles)]
    device = torch.device(device)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for index, tile in enumerate(tiles):
        by_shape.setdefault(tile.shape[:2], []).append(index)
    if batch is None:
        batch = 1 if device.type == "cpu" else 8
    if batch < 1:
        raise TdkstainError(f"extract_tiles_torch: batch must be at least 1, got {batch}")
    results: list[TileKnowledge | None] = [None] * len(tiles)
    for same_size in by_shape.values():
        for start in range(0, len(same_size), batch):
            indices = same_size[start : start + batch]
            for index, result in zip(indices, _extract_same_size([tiles[i] for i in indices], params, device, timer)):
                results[index] = result
    return [r for r in results if r is not None]


def _extract_same_size(
    tiles: list[np.ndarray], params: ExtractionParams, device: torch.device, timer: StageTimer
) -> list[TileKnowledge]:
    membrane_params, nuclei_params = params.membrane, params.nuclei
    dab_images, binary_masks, hematoxylins, nuclei_masks = [], [], [], []
    for ihc in tiles:
        with timer("deconvolution"):
            hed = _hed(ihc, _HED_LOG)  # once: DAB image, membrane, nuclei and relief all read it
            dab, hematoxylin = hed[..., 2], hed[..., 0]
            dab_float = _dab_rgb_float(dab)
            dab_images.append((dab_float * 255).astype(np.uint8))
        with timer("membrane"):
            if membrane_params.mode == "release":
                binary = _saturation(dab_float) > membrane_params.saturation_threshold
            else:
                background = knowledge.dab_background(dab, tissue_mask(ihc), membrane_params)
                binary = dab - background > membrane_params.threshold
            binary_masks.append(np.where(binary, 255, 0).astype(np.uint8))
        with timer("nuclei mask"):
            if nuclei_params.mode == "release":
                nuclei_masks.append(nuclei._release_mask(ihc, nuclei_params, hematoxylin))
            else:
                balanced = _white_balanced_hematoxylin(ihc, nuclei_params)
                nuclei_masks.append(nuclei._adaptive_mask(ihc, nuclei_params, balanced))
        hematoxylins.append(hematoxylin)

    with timer("membrane blur"):
        membranes = (
            list(release_blur_torch_exact(np.stack(binary_masks), device)) if membrane_params.blur else binary_masks
        )

    # Relief of every tile with nuclei, then one batched h-maxima for all of them.
    reliefs: dict[int, np.ndarray] = {}
    levels: dict[int, np.ndarray] = {}
    h = 1
    with timer("relief"):
        for index, (ihc, mask) in enumerate(zip(tiles, nuclei_masks)):
            if mask.any():
                reliefs[index], levels[index], h = nuclei._classical_relief(ihc, mask, nuclei_params, hematoxylins[index])
    seeds: dict[int, np.ndarray] = {}
    if levels:
        with timer("h-maxima"):
            order = list(levels)
            found = h_maxima_torch(np.stack([levels[i] for i in order]), h, device)
            seeds = dict(zip(order, found))

    results = []
    for index, ihc in enumerate(tiles):
        mask = nuclei_masks[index]
        with timer("watershed"):
            if index in seeds:
                labels = nuclei._watershed_from_seeds(reliefs[index], mask, seeds[index])
            else:
                labels = np.zeros(mask.shape, np.int32)
        with timer("centroids"):
            centroids = _centroids(labels, nuclei_params)
        with timer("density"):
            density = _density_map(centroids, ihc.shape[:2], params.density_sigma, params.density_normalise)
        results.append(
            TileKnowledge(
                dab_rgb=dab_images[index],
                membrane_mask=membranes[index],
                nuclei_mask=mask,
                centroids=centroids,
                density=density,
            )
        )
    return results


def extract_tiles(
    tiles: Sequence[np.ndarray],
    params: ExtractionParams | None = None,
    engine: str = "torch",
    device: str | torch.device = "cpu",
) -> list[TileKnowledge]:
    """Knowledge of every tile with the chosen engine: "torch" (this module) or "numpy" (``extract_tile``)."""
    if engine == "numpy":
        return [knowledge.extract_tile(tile, params) for tile in tiles]
    if engine == "torch":
        return extract_tiles_torch(tiles, params, device)
    raise TdkstainError(f"extraction engine {engine!r} is unknown: use one of {', '.join(ENGINES)}")


def nuclei_and_stains(
    ihc: np.ndarray, params: nuclei.NucleiParams | None = None, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """The nuclei behind ``detect_nuclei``'s centroids as instance labels, and the tile's stain densities.

    What the HER2 scorer (``tdkstain.scoring``) grows cells from: the
    classical backend's watershed instances (exact h-maxima here, as
    :func:`extract_tiles_torch`) of which only those inside the size window
    (``min_diameter_um``..``max_diameter_um``) are kept, relabelled 1..N in
    raster order of their first pixel.

    Args:
        ihc: (H, W, 3) uint8 RGB IHC.
        params: ``NucleiParams`` (classical backend; ``mpp`` sets the size window).
    Returns:
        ``(labels, hed)``: (H, W) int32, 0 = background; (H, W, 3) float64
        ``stain.rgb_to_hed(ihc)`` (haematoxylin, eosin, DAB; rgb2hed units, >= 0).
    """
    params = params or nuclei.NucleiParams()
    params.validate()
    ihc = knowledge._check_ihc(ihc, "ihc")
    hed = _hed(ihc, _HED_LOG)
    if params.mode == "release":
        mask = nuclei._release_mask(ihc, params, hed[..., 0])
    else:
        mask = nuclei._adaptive_mask(ihc, params, _white_balanced_hematoxylin(ihc, params))
    if not mask.any():
        return np.zeros(mask.shape, np.int32), hed
    relief, levels, h = nuclei._classical_relief(ihc, mask, params, hed[..., 0])
    with _single_thread_on_cpu(torch.device(device)):
        seeds = h_maxima_torch(levels[None], h, device)[0]
    labels = nuclei._watershed_from_seeds(relief, mask, seeds)
    area = np.bincount(labels.ravel())
    keep = (area >= nuclei._disk_area_px(params.min_diameter_um, params)) & (
        area <= nuclei._disk_area_px(params.max_diameter_um, params))
    keep[0] = False
    new_ids = np.zeros(len(area), np.int32)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new_ids[labels], hed
