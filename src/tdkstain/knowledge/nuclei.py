"""Nuclei masks and nuclei centroids in real IHC tiles, and detection scoring.

Two mask recipes:

- ``release``: docs/method.md step 4 exactly, as the authors' release computes it:
  haematoxylin optical density (``skimage.color.rgb2hed``), rescaled from
  [min, 99th percentile] to [0, 255], Otsu threshold, holes under 400 px
  filled (connectivity 2), dilation with a disk of radius 1.
- ``adaptive``: ours (issue 10). Otsu on the whole rescaled tile "goes wild"
  on tiles with little tissue or a strong counterstain, and its pixel
  constants only fit 20x. The adaptive mask white-balances the tile, takes
  the threshold from tissue pixels only, refuses thresholds below an
  optical-density floor (so a tile without nuclei gives no nuclei), and
  states every size in microns, converted with the tile's microns per pixel.
  Blobs larger than any nucleus (crowded glands, whose counterstained
  cytoplasm passes the tile's threshold) are thresholded again on their own
  pixels.

Two instance backends turn the mask into centroids:

- ``classical`` (default, no weights): distance transform of the mask plus
  a little haematoxylin intensity, one seed per maximum that stands out by
  at least ``peak_prominence_um`` (h-maxima), watershed, one centroid per
  region, regions outside the nucleus size window (microns) dropped.
- ``cellpose`` (optional extra ``pip install 'tdkstain[cellpose]'``), as in
  the paper and the release: Cellpose 'nuclei' on the nuclei mask image,
  Cellpose 'cyto2' on the DAB (membrane) mask, both centroid sets pooled and
  de-duplicated. Weights are never downloaded here: they must already be in
  ``cellpose_model_dir`` or the Cellpose cache.

Centroids are ``(N, 2)`` float64 ``(row, col)`` in pixels of the IHC tile.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from tdkstain.knowledge import stain
from tdkstain.plumbing.errors import TdkstainError

__all__ = [
    "NucleiParams",
    "MatchResult",
    "nuclei_mask",
    "detect_nuclei",
    "match_centroids",
    "score_detection",
    "pool_centroids",
]

MODES = ("release", "adaptive")
BACKENDS = ("classical", "cellpose")


@dataclass
class NucleiParams:
    """Every setting of nuclei extraction; the only copy of each default.

    Sizes are in microns and converted with ``mpp`` so one setting serves 20x
    (~0.5 um/px) and 40x (~0.25 um/px) tiles. The ``release_*`` numbers are the
    release's pixel constants (docs/method.md step 4) and are used as-is in
    ``release`` mode whatever the magnification, exactly as the release does.
    """

    # "adaptive" (ours, issue 10) by default: better F1 than "release" (docs/method.md step 4)
    # on every synthetic case, clean tiles included (benchmarks/knowledge_robustness.py).
    mode: str = "adaptive"
    backend: str = "classical"  # "classical" (no weights) | "cellpose" (paper/release)
    mpp: float = 0.5  # microns per pixel of the IHC tile; BCI/RegH2I tiles are 20x ~0.5

    # Nucleus size window, equivalent-circle diameter in microns (our choice).
    # Lymphocyte nuclei are ~6-7 um across (standard histology texts), breast
    # carcinoma nuclei ~8-15 um, fibroblast nuclei thin spindles whose
    # equivalent diameter is ~4-6 um; the window is wider on both sides so
    # blur, halos and pleomorphism do not clip real nuclei, while debris
    # (< 3 um) and merged glands (> 20 um) are dropped.
    min_diameter_um: float = 3.0
    max_diameter_um: float = 20.0

    # --- release mask (docs/method.md step 4; pixel units as in the release) ---
    release_percentile: float = 99.0  # upper end of the rescale range
    release_hole_area_px: int = 400  # holes strictly smaller than this are filled
    release_hole_connectivity: int = 2  # 8-connected holes, as the release
    release_dilation_px: int = 1  # disk radius of the final dilation

    # --- adaptive mask (ours) ---
    # White point: each RGB channel divided by its 99th percentile, so a
    # global tint or grey cast is removed before colour deconvolution. Only
    # bright enough white points are trusted (a tile without background would
    # otherwise be "whitened" from its darkest tissue).
    white_percentile: float = 99.0
    white_min: float = 150.0  # 0..255; white points darker than this are not corrected
    # Tissue: summed RGB optical density (natural log, after white balance)
    # above this. Glass is 0 +- sensor noise (~0.02 once smoothed); the
    # palest IHC stroma (haematoxylin ~0.004, DAB ~0.002 rgb2hed units) sums
    # to ~0.13. The threshold keeps Otsu away from the glass/tissue split
    # that makes the release mask "go wild" on tiles with little tissue.
    tissue_od_min: float = 0.08
    # Haematoxylin OD floor (rgb2hed units): the threshold is never allowed
    # below it, so a tile whose tissue holds no nuclei gives no mask. Nuclei
    # in real 20x IHC sit at 0.03-0.10 (ihc_skimage_colon.png: 90th
    # percentile 0.04, 99th 0.06) and pale, weakly counterstained nuclei at
    # 0.013 and up (synth: 0.085 x 0.45 x 0.35); glass and DAB-only
    # membrane sit below 0.005.
    hematoxylin_od_floor: float = 0.01
    smooth_um: float = 0.5  # Gaussian sigma before thresholding: JPEG blocks and noise
    dilation_um: float = 0.0  # no dilation: it merges touching nuclei
    # Blobs larger than the largest nucleus are re-thresholded on their own
    # pixels this many times (crowded epithelium; see _split_crowded_blobs).
    crowded_rounds: int = 2

    # --- classical instances ---
    # A seed must rise this far (distance to the mask edge, in microns) above
    # the saddle that joins it to a higher seed.
    peak_prominence_um: float = 0.75
    # Weight of haematoxylin intensity (0..1 rescaled) added to the distance
    # transform before seeding: dark chromatin centres break ties
    # between the lobes of touching nuclei.
    intensity_weight_um: float = 1.0

    # --- cellpose backend ---
    cellpose_model_dir: str | None = None  # offline weights; None: $CELLPOSE_LOCAL_MODELS_PATH or ~/.cellpose/models
    cellpose_gpu: bool = False
    # Cellpose's 'nuclei' model was trained at a 17 px mean diameter and the
    # cyto models at 30 px (Cellpose docs, models page); we tell Cellpose the
    # expected diameter in pixels so it rescales the tile to that.
    cellpose_nucleus_diameter_um: float = 8.0
    cellpose_cell_diameter_um: float = 15.0
    # Pooled centroids closer than this are one nucleus (a cell's centroid
    # from the DAB mask lies within about a nucleus radius of its nucleus).
    pool_radius_um: float = 4.0

    def px(self, microns: float) -> float:
        """Microns -> pixels of this tile."""
        return microns / self.mpp

    def validate(self) -> None:
        """Raise TdkstainError naming the bad field and the allowed values."""
        if self.mode not in MODES:
            raise TdkstainError(f"nuclei mode {self.mode!r} is unknown: use one of {', '.join(MODES)}")
        if self.backend not in BACKENDS:
            raise TdkstainError(f"nuclei backend {self.backend!r} is unknown: use one of {', '.join(BACKENDS)}")
        if not (np.isfinite(self.mpp) and self.mpp > 0):
            raise TdkstainError(f"nuclei mpp must be a positive number of microns per pixel, got {self.mpp!r}")
        if not (0 < self.min_diameter_um < self.max_diameter_um):
            raise TdkstainError(
                "nuclei size window must satisfy 0 < min_diameter_um < max_diameter_um, got "
                f"{self.min_diameter_um!r} and {self.max_diameter_um!r}"
            )


@dataclass
class MatchResult:
    """One-to-one matching of predicted to true centroids.

    ``pairs`` is ``(K, 2)`` int64 of (pred index, truth index). With nothing
    to find and nothing found, precision, recall and F1 are all 1.
    """

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64), repr=False)


# ---------------------------------------------------------------------------
# Stains
# ---------------------------------------------------------------------------


def _check_ihc(ihc: np.ndarray) -> np.ndarray:
    ihc = np.asarray(ihc)
    if ihc.ndim != 3 or ihc.shape[2] not in (3, 4):
        raise TdkstainError(f"IHC tile must be an (H, W, 3) RGB image, got shape {ihc.shape}")
    if ihc.dtype != np.uint8:
        raise TdkstainError(f"IHC tile must be uint8 0..255, got dtype {ihc.dtype}; convert at load time")
    return ihc[..., :3]


def _white_balanced_hematoxylin(ihc: np.ndarray, params: NucleiParams) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin OD and summed RGB OD after dividing out the tile's white point.

    Returns ((H, W) float64 haematoxylin OD, (H, W) float64 summed OD).
    """
    rgb = _check_ihc(ihc).astype(np.float64)
    white = np.percentile(rgb.reshape(-1, 3), params.white_percentile, axis=0)
    # A dark white point means the tile has no glass: nothing to calibrate on.
    white = np.where(white >= params.white_min, white, 255.0)
    balanced = np.clip(rgb * (255.0 / white), 1.0, 255.0)
    od = -np.log(balanced / 255.0)
    hematoxylin = stain.hematoxylin_od(balanced / 255.0)
    return hematoxylin, od.sum(axis=2)


# ---------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------


def _remove_small_holes(mask: np.ndarray, area_threshold: int, connectivity: int) -> np.ndarray:
    """``remove_small_holes(area_threshold=...)`` on every scikit-image version.

    scikit-image 0.26 deprecated ``area_threshold`` (holes strictly smaller are
    filled) for ``max_size`` (holes of this size or smaller are filled).
    """
    from skimage.morphology import remove_small_holes

    if "max_size" in inspect.signature(remove_small_holes).parameters:
        return remove_small_holes(mask, max_size=area_threshold - 1, connectivity=connectivity)
    return remove_small_holes(mask, area_threshold=area_threshold, connectivity=connectivity)


def _release_mask(ihc: np.ndarray, params: NucleiParams, hematoxylin: np.ndarray | None = None) -> np.ndarray:
    """hematoxylin: optional (H, W) ``stain.hematoxylin_od(ihc)`` the caller already computed."""
    from skimage.exposure import rescale_intensity
    from skimage.filters import threshold_otsu
    from skimage.morphology import dilation, disk

    if hematoxylin is None:
        hematoxylin = stain.hematoxylin_od(_check_ihc(ihc))
    low = float(hematoxylin.min())
    high = float(np.percentile(hematoxylin, params.release_percentile))
    if not high > low:
        # Flat haematoxylin (blank tile): the release divides by zero here.
        return np.zeros(hematoxylin.shape, bool)
    scaled = rescale_intensity(hematoxylin, in_range=(low, high), out_range=(0, 255))
    mask = scaled > threshold_otsu(scaled)
    mask = _remove_small_holes(mask, params.release_hole_area_px, params.release_hole_connectivity)
    if params.release_dilation_px > 0:
        mask = dilation(mask, disk(params.release_dilation_px))
    return mask


def _disk_area_px(diameter_um: float, params: NucleiParams) -> float:
    return float(np.pi * (params.px(diameter_um) / 2.0) ** 2)


def _adaptive_mask(
    ihc: np.ndarray, params: NucleiParams, balanced: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """balanced: optional ``_white_balanced_hematoxylin(ihc, params)`` the caller already computed."""
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import disk

    hematoxylin, od_sum = balanced if balanced is not None else _white_balanced_hematoxylin(ihc, params)
    sigma = params.px(params.smooth_um)
    if sigma > 0:
        hematoxylin = gaussian(hematoxylin, sigma=sigma, preserve_range=True)
        od_sum = gaussian(od_sum, sigma=sigma, preserve_range=True)
    tissue = od_sum > params.tissue_od_min
    values = hematoxylin[tissue]
    if values.size < _disk_area_px(params.min_diameter_um, params):
        return np.zeros(hematoxylin.shape, bool)
    # Flat tissue (a single uniform object) has no Otsu split: the floor decides.
    otsu = float(threshold_otsu(values)) if np.ptp(values) > 1e-6 else -np.inf
    threshold = max(otsu, params.hematoxylin_od_floor)
    mask = tissue & (hematoxylin > threshold)
    max_area = _disk_area_px(params.max_diameter_um, params)
    mask = _split_crowded_blobs(mask, hematoxylin, max_area, params.crowded_rounds)

    # A small opening cuts the thin haematoxylin bridges of cytoplasm between
    # nuclei; its radius stays well under a nucleus radius.
    opening_radius = int(round(params.px(params.min_diameter_um) / 4.0))
    if opening_radius >= 1:
        mask = ndimage.binary_opening(mask, structure=disk(opening_radius))
    mask = _remove_small_holes(mask, int(np.ceil(max_area / 4.0)), 2)
    min_area = _disk_area_px(params.min_diameter_um, params)
    mask = _remove_small_objects(mask, int(np.floor(min_area)))
    dilation_radius = int(round(params.px(params.dilation_um)))
    if dilation_radius >= 1:
        mask = ndimage.binary_dilation(mask, structure=disk(dilation_radius))
    return mask


def _split_crowded_blobs(mask: np.ndarray, hematoxylin: np.ndarray, max_area: float, rounds: int) -> np.ndarray:
    """Re-threshold every blob larger than the largest nucleus with Otsu on its own pixels.

    Where nuclei crowd (epithelium, glands), the counterstained cytoplasm
    between them passes the tile-wide threshold and a whole gland becomes one
    blob. The tile's Otsu split nuclei from stroma; the blob's own Otsu
    splits nuclei from cytoplasm. mask: (H, W) bool; hematoxylin: (H, W) float.
    """
    mask = mask.copy()
    structure = np.ones((3, 3), bool)
    for _ in range(rounds):
        labels, count = ndimage.label(mask, structure=structure)
        if count == 0:
            break
        areas = np.bincount(labels.ravel(), minlength=count + 1)
        crowded = [index for index in range(1, count + 1) if areas[index] > max_area]
        if not crowded:
            break
        boxes = ndimage.find_objects(labels)
        for index in crowded:
            box = boxes[index - 1]
            blob = labels[box] == index
            values = hematoxylin[box][blob]
            if np.ptp(values) <= 1e-6:
                continue
            from skimage.filters import threshold_otsu

            window = mask[box]
            window[blob] = values > threshold_otsu(values)
    return mask


def _remove_small_objects(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop connected components (8-connected) with fewer than ``min_area`` pixels."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if count == 0:
        return mask.astype(bool)
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    keep = areas >= min_area
    keep[0] = False
    return keep[labels]


def nuclei_mask(ihc: np.ndarray, params: NucleiParams | None = None) -> np.ndarray:
    """Binary nuclei mask of an IHC tile.

    ihc: (H, W, 3) uint8 RGB. Returns (H, W) bool, True on nuclei.
    ``params.mode`` picks the release recipe (docs/method.md step 4) or ours.
    """
    params = params or NucleiParams()
    params.validate()
    if params.mode == "release":
        return _release_mask(ihc, params)
    return _adaptive_mask(ihc, params)


# ---------------------------------------------------------------------------
# Instances and centroids
# ---------------------------------------------------------------------------


def _classical_relief(
    ihc: np.ndarray, mask: np.ndarray, params: NucleiParams, hematoxylin: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """The relief the classical backend seeds and floods, and its integer levels.

    ihc: (H, W, 3) uint8; mask: (H, W) bool, not empty; hematoxylin: optional
    (H, W) float64 ``stain.hematoxylin_od(ihc)`` already computed by the caller.
    Returns ((H, W) float64 relief, 0 outside the mask; (H, W) int32 levels =
    relief in 1/16 px steps; h, the seed prominence in those steps).
    """
    from skimage.filters import gaussian

    distance = ndimage.distance_transform_edt(mask)
    # Relief = distance to the mask edge plus a little haematoxylin: a
    # nucleus is round and darkest at its centre, so both peak there.
    if hematoxylin is None:
        hematoxylin = stain.hematoxylin_od(_check_ihc(ihc))
    inside = hematoxylin[mask]
    low, high = np.percentile(inside, [1, 99])
    darkness = np.clip((hematoxylin - low) / max(high - low, 1e-12), 0, 1)
    relief = distance + params.px(params.intensity_weight_um) * darkness
    relief = gaussian(relief, sigma=max(params.px(0.5), 0.5), preserve_range=True) * mask

    # Seeds: regional maxima of the relief whose dynamic (height above the
    # saddle to a higher maximum) is at least ``peak_prominence_um``. Two
    # touching round nuclei leave a deep saddle between their centres; the
    # ridge of one elongated (fibroblast) nucleus or chromatin texture does not.
    prominence = params.px(params.peak_prominence_um)
    # On integers (1/16 px steps) h_maxima runs several times faster than on floats.
    levels = np.round(relief * 16).astype(np.int32)
    return relief, levels, max(1, int(round(prominence * 16)))


def _watershed_from_seeds(relief: np.ndarray, mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Watershed of ``-relief`` in ``mask`` from ``seeds`` ((H, W) bool), one more seed per unseeded component.

    Returns (H, W) int32 labels, 0 = background.
    """
    from skimage.segmentation import watershed

    components, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    seeds = seeds & mask
    markers, n_seeds = ndimage.label(seeds, structure=np.ones((3, 3), bool))
    markers = markers.astype(np.int32)
    # Every component gets at least one seed: its deepest pixel.
    seeded = np.zeros(count + 1, bool)
    seeded[np.unique(components[seeds])] = True
    next_label = n_seeds + 1
    if not seeded[1:].all():
        deepest = ndimage.maximum_position(relief, components, index=np.arange(1, count + 1))
        for label_index, position in enumerate(deepest, start=1):
            if not seeded[label_index]:
                markers[position] = next_label
                next_label += 1
    return watershed(-relief, markers, mask=mask).astype(np.int32)


def _classical_instances(ihc: np.ndarray, mask: np.ndarray, params: NucleiParams) -> np.ndarray:
    """Split the mask into nuclei: (H, W) int32 labels, 0 = background.

    Relief (``_classical_relief``), seeds = ``skimage.morphology.h_maxima`` of its
    levels, watershed (``_watershed_from_seeds``). ``extraction.fast`` runs the
    same steps with an exact, faster h-maxima.
    """
    from skimage.morphology import h_maxima

    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    relief, levels, h = _classical_relief(ihc, mask, params)
    return _watershed_from_seeds(relief, mask, h_maxima(levels, h).astype(bool))


def _region_centroids(labels: np.ndarray, params: NucleiParams, apply_size_window: bool = True) -> np.ndarray:
    """Centroids (N, 2) float64 (row, col) of labelled regions inside the size window."""
    from skimage.measure import regionprops

    min_area = _disk_area_px(params.min_diameter_um, params)
    max_area = _disk_area_px(params.max_diameter_um, params)
    centroids = []
    for region in regionprops(labels):
        if apply_size_window and not (min_area <= region.area <= max_area):
            continue
        centroids.append(region.centroid)
    if not centroids:
        return np.zeros((0, 2), np.float64)
    return np.asarray(centroids, np.float64)


def detect_nuclei(
    ihc: np.ndarray,
    params: NucleiParams | None = None,
    dab_mask: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Nuclei centroids of an IHC tile.

    ihc: (H, W, 3) uint8 RGB. dab_mask: optional (H, W) membrane mask (bool, or
    uint8 0..255, or float 0..1; > half counts), used by the cellpose backend
    only (the release runs 'cyto2' on it); computed from ``ihc`` with the
    release's recipe when omitted. mask: optional (H, W) bool
    ``nuclei_mask(ihc, params)`` the caller already has (``knowledge.extract_tile``
    keeps it), so it is not computed twice. Returns (N, 2) float64 (row, col) pixels.
    """
    params = params or NucleiParams()
    params.validate()
    if mask is None:
        mask = nuclei_mask(ihc, params)
    else:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != np.asarray(ihc).shape[:2]:
            raise TdkstainError(
                f"nuclei mask has shape {mask.shape}, the IHC tile {np.asarray(ihc).shape[:2]}: they must match"
            )
    if params.backend == "classical":
        return _region_centroids(_classical_instances(ihc, mask, params), params)
    return _cellpose_centroids(ihc, mask, dab_mask, params)


# ---------------------------------------------------------------------------
# Cellpose backend (optional)
# ---------------------------------------------------------------------------

# File names Cellpose itself caches (cellpose.models.model_path): v3 keeps the
# pre-SAM models as '<type>torch_0'; v4 ships only Cellpose-SAM ('cpsam').
_CELLPOSE_V3_FILES = {"nuclei": "nucleitorch_0", "cyto2": "cyto2torch_0"}
_CELLPOSE_V4_FILE = "cpsam"
# Training diameters of the built-in pre-SAM models (Cellpose docs, models page).
_CELLPOSE_V3_DIAM_MEAN = {"nuclei": 17.0, "cyto2": 30.0}


def _cellpose_major(cellpose_module: Any) -> int:
    version = getattr(cellpose_module, "__version__", None) or getattr(cellpose_module, "version", None)
    if version is None:
        from importlib.metadata import version as package_version

        version = package_version("cellpose")
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 3


def _cellpose_model_dir(params: NucleiParams) -> Path:
    if params.cellpose_model_dir:
        return Path(params.cellpose_model_dir).expanduser()
    env = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
    return Path(env) if env else Path.home() / ".cellpose" / "models"


def _import_cellpose() -> Any:
    try:
        import cellpose  # noqa: F401
        from cellpose import models  # noqa: F401
    except ImportError as error:
        raise TdkstainError(
            "nuclei backend 'cellpose' needs the Cellpose package, which is not installed: "
            "run pip install 'tdkstain[cellpose]' (or use backend 'classical', which needs no weights)"
        ) from error
    return cellpose


def _load_cellpose_models(params: NucleiParams) -> dict[str, Callable[[np.ndarray, float], np.ndarray]]:
    """Return {'nuclei': segment, 'cyto2': segment}; segment(image, diameter_px) -> labels."""
    cellpose = _import_cellpose()
    from cellpose import models

    major = _cellpose_major(cellpose)
    model_dir = _cellpose_model_dir(params)
    files = (
        {"nuclei": _CELLPOSE_V4_FILE, "cyto2": _CELLPOSE_V4_FILE} if major >= 4 else dict(_CELLPOSE_V3_FILES)
    )
    missing = sorted({name for name in files.values() if not (model_dir / name).is_file()})
    if missing:
        if major >= 4:
            how = (
                "on a connected machine run: python -c \"from cellpose import models; models.CellposeModel()\" "
                "(or download https://huggingface.co/mouseland/cellpose-sam/resolve/main/cpsam), "
            )
        else:
            how = (
                "on a connected machine run: python -c \"from cellpose import models; "
                "models.CellposeModel(model_type='nuclei'); models.CellposeModel(model_type='cyto2')\" "
                "(or download https://www.cellpose.org/models/nucleitorch_0 and .../cyto2torch_0), "
            )
        raise TdkstainError(
            f"Cellpose {major}.x weights not found in {model_dir}: expected "
            + ", ".join(str(model_dir / name) for name in missing)
            + "; "
            + how
            + f"then copy the files from ~/.cellpose/models to {model_dir} "
            "(or set NucleiParams.cellpose_model_dir / $CELLPOSE_LOCAL_MODELS_PATH to their folder)"
        )

    segmenters: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {}
    for kind, file_name in files.items():
        model = models.CellposeModel(gpu=params.cellpose_gpu, pretrained_model=str(model_dir / file_name))
        if major >= 4:
            # Cellpose-SAM: one generalist model; 'channels' is gone in v4.
            def segment(image: np.ndarray, diameter: float, model: Any = model) -> np.ndarray:
                masks, _flows, _styles = model.eval(image, diameter=diameter)
                return np.asarray(masks)

        else:
            # Loaded from a path, v3 treats the model as custom and reads its
            # diameter from the file; the built-ins were trained at 17 / 30 px.
            model.diam_mean = _CELLPOSE_V3_DIAM_MEAN[kind]

            def segment(image: np.ndarray, diameter: float, model: Any = model) -> np.ndarray:
                masks, _flows, _styles = model.eval(image, diameter=diameter, channels=[0, 0])
                return np.asarray(masks)

        segmenters[kind] = segment
    return segmenters


def pool_centroids(primary: np.ndarray, secondary: np.ndarray, radius: float) -> np.ndarray:
    """Pool two centroid sets, keeping each secondary point only if it is new.

    primary, secondary: (N, 2), (M, 2) float (row, col). A secondary centroid
    within ``radius`` px of a primary centroid, or of a secondary centroid
    kept before it, is the same nucleus and dropped. Returns (K, 2) float64,
    primary first.
    """
    primary = np.asarray(primary, np.float64).reshape(-1, 2)
    secondary = np.asarray(secondary, np.float64).reshape(-1, 2)
    kept = [point for point in primary]
    tree = cKDTree(primary) if len(primary) else None
    extra: list[np.ndarray] = []
    for point in secondary:
        if tree is not None and tree.query_ball_point(point, radius):
            continue
        if any(np.hypot(*(point - other)) <= radius for other in extra):
            continue
        extra.append(point)
    kept.extend(extra)
    if not kept:
        return np.zeros((0, 2), np.float64)
    return np.asarray(kept, np.float64)


def _cellpose_centroids(
    ihc: np.ndarray, mask: np.ndarray, dab_mask: np.ndarray | None, params: NucleiParams
) -> np.ndarray:
    segmenters = _load_cellpose_models(params)
    if dab_mask is None:
        # docs/method.md steps 2-3, unblurred: what the release hands to 'cyto2'.
        dab = stain.release_membrane_mask(_check_ihc(ihc), blur=False) > 0
    else:
        dab_mask = np.asarray(dab_mask)
        if dab_mask.shape != mask.shape:
            raise TdkstainError(f"DAB mask has shape {dab_mask.shape}, the IHC tile {mask.shape}: they must match")
        threshold = 127 if dab_mask.dtype == np.uint8 else 0.5
        dab = dab_mask > threshold
    # The release feeds the binary masks themselves as grayscale images.
    nuclei_image = mask.astype(np.uint8) * 255
    dab_image = dab.astype(np.uint8) * 255
    nuclei_labels = segmenters["nuclei"](nuclei_image, params.px(params.cellpose_nucleus_diameter_um))
    cell_labels = segmenters["cyto2"](dab_image, params.px(params.cellpose_cell_diameter_um))
    # Cellpose already drops tiny masks (min_size); no size window on top.
    nuclei = _region_centroids(np.asarray(nuclei_labels, np.int32), params, apply_size_window=False)
    cells = _region_centroids(np.asarray(cell_labels, np.int32), params, apply_size_window=False)
    return pool_centroids(nuclei, cells, params.px(params.pool_radius_um))


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------


def match_centroids(pred: np.ndarray, truth: np.ndarray, radius: float = 6.0) -> MatchResult:
    """One-to-one matching of predicted to true centroids within ``radius`` px.

    pred (N, 2), truth (M, 2): float (row, col). Among all matchings that pair
    points at most ``radius`` apart, takes one with the most pairs and, among
    those, the least total distance (Hungarian algorithm,
    ``scipy.optimize.linear_sum_assignment``, run per cluster of nearby points).
    """
    pred = np.asarray(pred, np.float64).reshape(-1, 2)
    truth = np.asarray(truth, np.float64).reshape(-1, 2)
    pairs: list[tuple[int, int]] = []
    if len(pred) and len(truth):
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        close = cKDTree(pred).query_ball_tree(cKDTree(truth), r=radius)
        rows = np.array([i for i, js in enumerate(close) for _ in js], np.int64)
        cols = np.array([j for js in close for j in js], np.int64)
        if rows.size:
            n_pred = len(pred)
            graph = coo_matrix(
                (np.ones(rows.size), (rows, cols + n_pred)), shape=(n_pred + len(truth),) * 2
            )
            _, component = connected_components(graph, directed=False)
            for label in np.unique(component[rows]):
                pred_index = np.unique(rows[component[rows] == label])
                truth_index = np.unique(cols[component[cols + n_pred] == label])
                distance = np.linalg.norm(pred[pred_index, None, :] - truth[None, truth_index, :], axis=2)
                feasible = distance <= radius
                # An infeasible pair costs more than any set of feasible ones,
                # so the assignment first maximises the number of pairs.
                big = 2.0 * radius * (min(distance.shape) + 1) + 1.0
                cost = np.where(feasible, distance, big)
                r, c = linear_sum_assignment(cost)
                for i, j in zip(r, c):
                    if feasible[i, j]:
                        pairs.append((int(pred_index[i]), int(truth_index[j])))
    tp = len(pairs)
    fp = len(pred) - tp
    fn = len(truth) - tp
    precision = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
    recall = tp / (tp + fn) if tp + fn else (1.0 if fp == 0 else 0.0)
    f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
    return MatchResult(
        tp=tp,
        fp=fp,
        fn=fn,
        precision=float(precision),
        recall=float(recall),
        f1=float(f1),
        pairs=np.asarray(pairs, np.int64).reshape(-1, 2),
    )


def score_detection(
    ihc: np.ndarray,
    truth: np.ndarray,
    params: NucleiParams | None = None,
    radius: float | None = None,
    dab_mask: np.ndarray | None = None,
) -> MatchResult:
    """Detect nuclei in ``ihc`` and match them to ``truth`` centroids.

    truth: (M, 2) float (row, col). radius: matching radius in px; None means
    3 um converted with ``params.mpp`` (6 px at 20x, 12 px at 40x).
    """
    params = params or NucleiParams()
    if radius is None:
        radius = params.px(3.0)
    return match_centroids(detect_nuclei(ihc, params, dab_mask=dab_mask), truth, radius=radius)
