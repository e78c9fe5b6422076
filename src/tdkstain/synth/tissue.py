"""Synthetic paired H&E / HER2 IHC tiles whose truth is known.

No paired H&E/IHC data can be downloaded, so tests, demos and users need
tissue whose nuclei, membranes and HER2 score are known exactly. One tile
is drawn in four steps, all in microns so that the scale (``mpp``) only
changes the number of pixels:

1. Layout (H&E coordinates): tumour nests from a thresholded smooth random
   field, stroma around them, a tissue edge (white background) on some tiles
   and glandular lumina inside nests. Cells are placed by dart throwing with
   a per-cell exclusion radius, so nuclei rarely touch: tumour cells (large
   pleomorphic nuclei) in nests, fibroblasts (elongated nuclei along the
   collagen fibres) and lymphocytes (small round dark nuclei, in clusters)
   in stroma. Tumour cells are the Voronoi cells of their seeds, bounded by
   the nest edge and a maximum radius; their boundaries are the membranes.
2. Stain amounts as optical-density maps (haematoxylin, eosin, DAB) in the
   unit of ``skimage.color.rgb2hed``. The IHC is a consecutive section: the
   same layout with a lighter haematoxylin counterstain, no eosin and DAB on
   the membranes of tumour cells following ASCO/CAP (see ``_her2_staining``).
3. The IHC maps are moved by a small smooth random warp (misregistration);
   the truth is warped with them, so it is given in IHC coordinates.
4. Beer-Lambert rendering with the Ruifrok & Johnston stain vectors
   (``skimage.color.rgb_from_hed``), so colour deconvolution separates the
   stains again; per-tile stain variation, slight optical blur, sensor noise,
   and an optional failure case (tint, counterstain, blur, JPEG, scale).

The H&E carries a weak cue of the HER2 level (real morphology does too):
tumour fraction of the tissue, tumour nuclear size and eosin of tumour
cytoplasm all rise with the score, with per-tile spread so that neighbouring
levels overlap. ``docs/synth.md`` documents every number.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from tdkstain.errors import TdkstainError
from tdkstain.synth.fields import bilinear, fibres, fine_noise, smooth_noise, warp_field

#: Failure cases, selectable per tile (issue 10). ``"none"`` (alias ``"clean"``) is a clean tile.
FAILURES: tuple[str, ...] = (
    "tint-dab",
    "tint-grey",
    "weak-counterstain",
    "strong-counterstain",
    "blur",
    "jpeg",
    "scale-20x",
    "scale-40x",
)
HER2_LABELS: tuple[str, ...] = ("0", "1+", "2+", "3+")
CELL_TYPES: tuple[str, ...] = ("tumour", "fibroblast", "lymphocyte")
#: Microns per pixel: 20x is the default scale (BCI and RegH2I are 20x scans, docs/method.md).
MPP_20X = 0.5
MPP_40X = 0.25

# Ruifrok & Johnston (2001) stain vectors, rows H, E, DAB -> RGB absorbance;
# exactly scikit-image's ``rgb_from_hed`` so that ``rgb2hed`` inverts our rendering.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
# scikit-image's optical-density unit: rgb2hed divides ln(I) by ln(1e-6).
_OD_UNIT = -math.log(1e-6)


def her2_label(score: int) -> str:
    """HER2 score 0..3 -> the label string used in file names: ``"0"``, ``"1+"``, ``"2+"``, ``"3+"``."""
    if not isinstance(score, (int, np.integer)) or not 0 <= int(score) <= 3:
        raise TdkstainError(f"HER2 score must be an integer 0..3, got {score!r}")
    return HER2_LABELS[int(score)]


def normalise_failure(name: str) -> str:
    """``"clean"`` / ``"none"`` -> ``"none"``; a failure name is returned as is; anything else is an error."""
    name = str(name).strip().lower()
    if name in ("none", "clean", ""):
        return "none"
    if name not in FAILURES:
        raise TdkstainError(
            f"unknown failure case {name!r}; choose 'none' (or 'clean') or one of: {', '.join(FAILURES)}"
        )
    return name


def parse_failures(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"none,tint-dab"`` or ``"all"`` (clean plus every failure) -> a tuple of normalised names."""
    items = text.split(",") if isinstance(text, str) else list(text)
    items = [str(item).strip() for item in items if str(item).strip()]
    if not items:
        raise TdkstainError("--failures is empty; give e.g. 'none', 'none,tint-dab' or 'all'")
    if any(item.lower() == "all" for item in items):
        return ("none",) + FAILURES
    out: list[str] = []
    for item in items:
        name = normalise_failure(item)
        if name not in out:
            out.append(name)
    return tuple(out)


@dataclass
class SynthPair:
    """One synthetic consecutive-section pair and its truth (IHC coordinates unless named ``he_``)."""

    he: np.ndarray  # (H, W, 3) uint8 RGB
    ihc: np.ndarray  # (H, W, 3) uint8 RGB, warped consecutive section
    her2: int  # 0..3; the label string via her2_label()
    nuclei: np.ndarray  # (N, 2) float64 centroids (row, col) in IHC coordinates
    cell_types: np.ndarray  # (N,) str: "tumour", "fibroblast", "lymphocyte"
    he_nuclei: np.ndarray  # (N, 2) float64 centroids (row, col) in H&E coordinates
    membrane_mask: np.ndarray  # (H, W) bool, DAB-stained membrane, IHC coordinates
    tissue_mask: np.ndarray  # (H, W) bool, tissue (not background, not lumen), IHC coordinates
    mpp: float  # microns per pixel
    failure: str  # "none" or one of FAILURES


# --------------------------------------------------------------------------- layout


@dataclass
class _Cells:
    centre: np.ndarray  # (N, 2) seed (row, col), canvas px
    kind: np.ndarray  # (N,) int index into CELL_TYPES
    radius: np.ndarray  # (N,) exclusion radius, px


def _place_cells(
    rng: np.random.Generator,
    nest: np.ndarray,
    stroma: np.ndarray,
    lymph_zone: np.ndarray,
    tumour_radius_um: float,
    px: float,
) -> _Cells:
    """Dart throwing: candidates in random order, kept when they clear every kept cell.

    The exclusion distance of two cells is the sum of their radii, so nuclei stay
    mostly separable (a classical detector must reach F1 >= 0.85 on clean tiles).
    Tumour radius = half the nuclear diameter + 2.2 um of cytoplasm (cells ~15 um
    across); lymphocytes 4.3 um (6.5 um nuclei, Junqueira's Basic Histology);
    fibroblasts 6.5 um (their nuclei are 9-13 um long).
    """
    n = nest.shape[0]
    n_candidates = int(n * n / (math.pi * (3.0 * px) ** 2))
    points = rng.uniform(0, n, (n_candidates, 2))
    r, c = points.astype(int).T
    in_nest, in_stroma, in_lymph = nest[r, c], stroma[r, c], lymph_zone[r, c]
    keep_fibro = rng.random(n_candidates) < 0.30  # fibroblasts are sparse in stroma
    kind = np.full(n_candidates, -1)
    kind[in_nest] = 0
    kind[in_stroma & ~in_lymph & keep_fibro] = 1
    kind[in_stroma & in_lymph] = 2
    tumour_radius = tumour_radius_um * np.exp(rng.normal(0, 0.10, n_candidates))
    radius = np.choose(np.maximum(kind, 0), [tumour_radius, np.full(n_candidates, 6.5), np.full(n_candidates, 4.3)]) * px
    use = kind >= 0
    points, kind, radius = points[use], kind[use], radius[use]

    # A coarse grid of buckets keeps each test to the neighbours that can conflict.
    bucket = float(2 * radius.max()) if radius.size else 1.0
    grid: dict[tuple[int, int], list[int]] = {}
    kept: list[int] = []
    for i in range(points.shape[0]):
        y, x = points[i]
        by, bx = int(y // bucket), int(x // bucket)
        ok = True
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                for j in grid.get((by + dy, bx + dx), ()):
                    if (points[j, 0] - y) ** 2 + (points[j, 1] - x) ** 2 < (radius[i] + radius[j]) ** 2:
                        ok = False
                        break
                if not ok:
                    break
            if not ok:
                break
        if ok:
            kept.append(i)
            grid.setdefault((by, bx), []).append(i)
    idx = np.asarray(kept, dtype=int)
    return _Cells(points[idx], kind[idx], radius[idx])


# --------------------------------------------------------------------------- HER2 staining


def _her2_staining(rng: np.random.Generator, her2: int, n_tumour: int) -> dict[str, np.ndarray | float]:
    """Per-cell membrane DAB following ASCO/CAP 2018/2023 (HER2 IHC in breast cancer).

    Peak DAB optical density (rgb2hed unit) of a stained membrane:
    0   none, or faint (0.018-0.030) incomplete on < 10 % of tumour cells
    1+  faint (0.035-0.055) incomplete (30-70 % of the circumference) on 30-80 %
    2+  weak to moderate (0.075-0.12) complete (85-100 %) on 60-95 %
    3+  strong (0.18-0.28) complete circumferential on 80-100 %
    The bands do not overlap, so the DAB inside the true membrane rises with the
    score; faint cytoplasmic DAB (0 .. 0.012) rises with it too.
    """
    fraction_range, intensity_range, arc_range, cytoplasm = {
        0: ((0.0, 0.08), (0.018, 0.030), (0.25, 0.6), 0.0),
        1: ((0.30, 0.80), (0.035, 0.055), (0.30, 0.7), 0.002),
        2: ((0.60, 0.95), (0.075, 0.120), (0.85, 1.0), 0.006),
        3: ((0.80, 1.00), (0.180, 0.280), (1.0, 1.0), 0.012),
    }[her2]
    fraction = rng.uniform(*fraction_range)
    stained = rng.random(n_tumour) < fraction
    tile_intensity = rng.uniform(*intensity_range)
    intensity = np.clip(tile_intensity * rng.uniform(0.85, 1.15, n_tumour), *intensity_range)
    arc = rng.uniform(*arc_range, n_tumour)
    phase = rng.uniform(-math.pi, math.pi, n_tumour)
    return {"stained": stained, "intensity": intensity * stained, "arc": arc, "phase": phase, "cytoplasm": cytoplasm}


# --------------------------------------------------------------------------- nuclei


def _render_nuclei(
    rng: np.random.Generator,
    cells: _Cells,
    n: int,
    px: float,
    tumour_diameter_um: float,
    fibre_angle: float,
    chromatin: np.ndarray,
    warp: np.ndarray,
    window: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Haematoxylin OD of every nucleus on the (n, n) canvas, their alpha masks and truth.

    Returns ``hematoxylin`` (n, n) float64, ``alpha`` (n, n) float64 in [0, 1] and
    a dict of per-nucleus truth: ``he`` / ``ihc`` (N, 2) float64 (row, col) canvas
    centroids and ``he_visible`` / ``ihc_visible`` (N,) fractions in [0, 1]. A
    centroid is the alpha-weighted centre of the part of the nucleus that lies
    inside the tile (canvas rows/cols ``window[0]..window[1]``), i.e. what an
    ideal detector reports, also for nuclei cut by the tile edge. IHC positions
    map each drawn pixel x forward through the warp (q + warp(q) = x).
    Shapes: tumour nuclei pleomorphic ellipses (aspect 1-1.5, 2nd/3rd angular
    harmonics, darker rim, a nucleolus), vesicular chromatin; fibroblast nuclei
    spindles 9-13 x 2.4-3.4 um along the fibres; lymphocytes round 5.8-7 um,
    dense and dark (OD levels read off real H&E: ``shared/data``, rgb2hed H
    95th-99th percentile 0.09-0.15).
    """
    count = cells.kind.shape[0]
    hematoxylin = np.zeros((n, n))
    alpha_all = np.zeros((n, n))
    truth = {key: np.zeros((count, 2)) for key in ("he", "ihc")}
    truth.update({key: np.zeros(count) for key in ("he_visible", "ihc_visible")})
    lo, hi = window
    # The warp varies over ~n/2 px, so one shift per nucleus (at its seed) moves
    # its pixels to within ~0.2 px of a per-pixel mapping.
    shift = np.zeros((count, 2))
    for _ in range(4):  # fixed point of q = x - warp(q)
        shift = bilinear(warp, cells.centre[:, 0] - shift[:, 0], cells.centre[:, 1] - shift[:, 1]).T
    kind = cells.kind
    diameter = np.where(
        kind == 0,
        tumour_diameter_um * np.exp(rng.normal(0, 0.13, count)),
        np.where(kind == 2, rng.uniform(5.8, 7.0, count), 0.0),
    )
    aspect = np.where(kind == 0, rng.uniform(1.0, 1.5, count), rng.uniform(1.0, 1.12, count))
    semi_major = np.where(kind == 1, rng.uniform(4.5, 6.5, count), diameter / 2 * np.sqrt(aspect)) * px
    semi_minor = np.where(kind == 1, rng.uniform(1.2, 1.7, count), diameter / 2 / np.sqrt(aspect)) * px
    angle = np.where(kind == 1, fibre_angle + rng.normal(0, 0.2, count), rng.uniform(0, math.pi, count))
    level = np.choose(kind, [rng.uniform(0.085, 0.125, count), rng.uniform(0.12, 0.16, count), rng.uniform(0.16, 0.20, count)])
    texture = np.choose(kind, [0.30, 0.12, 0.06])
    harm = np.where(kind[:, None] == 0, rng.uniform(0, 1, (count, 2)) * [0.08, 0.06], 0.0)
    harm_phase = rng.uniform(0, 2 * math.pi, (count, 2))
    nucleolus = (kind == 0) & (rng.random(count) < 0.6)
    nucleolus_offset = rng.uniform(-0.35, 0.35, (count, 2))
    edge_px = 0.7  # soft boundary width, px: the focus of a 20x scan

    for i in range(count):
        half = int(math.ceil(semi_major[i] * 1.25)) + 2
        r0, c0 = int(round(cells.centre[i, 0])), int(round(cells.centre[i, 1]))
        top, bottom = max(r0 - half, 0), min(r0 + half + 1, n)
        left, right = max(c0 - half, 0), min(c0 + half + 1, n)
        if top >= bottom or left >= right:
            continue
        rows = np.arange(top, bottom, dtype=np.float64)[:, None] - cells.centre[i, 0]
        cols = np.arange(left, right, dtype=np.float64)[None, :] - cells.centre[i, 1]
        ca, sa = math.cos(angle[i]), math.sin(angle[i])
        u = (cols * ca + rows * sa) / semi_major[i]
        v = (-cols * sa + rows * ca) / semi_minor[i]
        rho = np.sqrt(u * u + v * v)
        if kind[i] == 0:
            theta = np.arctan2(v, u)
            rho = rho / (1 + harm[i, 0] * np.cos(2 * theta + harm_phase[i, 0]) + harm[i, 1] * np.cos(3 * theta + harm_phase[i, 1]))
        # distance to the boundary in px, approximately, along the minor axis
        inside = (1.0 - rho) * semi_minor[i]
        alpha = np.clip(inside / edge_px + 0.5, 0.0, 1.0)
        if not alpha.any():
            continue
        od = level[i] * (1.0 + texture[i] * chromatin[top:bottom, left:right])
        if kind[i] == 0:
            # chromatin condenses along the nuclear membrane; a nucleolus is a dense dot
            od = od + 0.35 * level[i] * np.exp(-((inside / (0.8 * px)) ** 2))
            if nucleolus[i]:
                du = u - nucleolus_offset[i, 0]
                dv = (v - nucleolus_offset[i, 1]) * semi_minor[i] / semi_major[i]
                od = od + 0.6 * level[i] * np.exp(-((du * semi_major[i]) ** 2 + (dv * semi_major[i]) ** 2) / (2 * (0.6 * px) ** 2))
        od = od * alpha
        window = hematoxylin[top:bottom, left:right]
        np.maximum(window, od, out=window)
        a_window = alpha_all[top:bottom, left:right]
        np.maximum(a_window, alpha, out=a_window)
        drawn = alpha > 0
        weight = alpha[drawn]
        he_pos = np.column_stack([
            np.broadcast_to(rows + cells.centre[i, 0], alpha.shape)[drawn],
            np.broadcast_to(cols + cells.centre[i, 1], alpha.shape)[drawn],
        ])
        ihc_pos = he_pos - shift[i]
        for key, pos in (("he", he_pos), ("ihc", ihc_pos)):
            visible = weight * np.all((pos >= lo - 0.5) & (pos < hi + 0.5), axis=1)
            total = visible.sum()
            truth[f"{key}_visible"][i] = total / weight.sum()
            if total > 0:
                truth[key][i] = (visible[:, None] * pos).sum(0) / total
    return hematoxylin, alpha_all, truth


# --------------------------------------------------------------------------- rendering


def _beer_lambert(od: np.ndarray, stain_matrix: np.ndarray, neutral: float | np.ndarray = 0.0) -> np.ndarray:
    """(H, W, 3) stain OD (rgb2hed unit) -> (H, W, 3) float64 transmitted light in (0, 1].

    I = exp(-ln(1e6) * (od @ stain_matrix + neutral)): scikit-image's ``hed2rgb``
    with a per-tile stain matrix and an optional grey (all-channel) absorbance.
    """
    absorbance = np.einsum("...s,sc->...c", od, stain_matrix)  # not '@': see smooth_noise
    if np.ndim(neutral) == 2:
        absorbance = absorbance + np.asarray(neutral)[..., None]
    else:
        absorbance = absorbance + neutral
    return np.exp(-_OD_UNIT * absorbance)


def _scan(rng: np.random.Generator, light: np.ndarray, blur_px: float, noise: float) -> np.ndarray:
    """Optical blur and sensor noise: (H, W, 3) float light in [0, 1] -> (H, W, 3) uint8 RGB."""
    if blur_px > 0:
        light = ndimage.gaussian_filter(light, (blur_px, blur_px, 0), mode="nearest")
    values = light * 255.0 + rng.normal(0, noise, light.shape) * np.sqrt(np.clip(light, 0.05, 1))
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    """(H, W, 3) uint8 -> the same after a JPEG round trip at ``quality`` (Pillow, 4:2:0 as scanners use)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB")).copy()


def _perturbed_stains(rng: np.random.Generator, spread: float) -> np.ndarray:
    """(3, 3) stain matrix: the Ruifrok vectors with small per-tile hue changes (lab-to-lab variation)."""
    return RGB_FROM_HED * np.exp(rng.normal(0, spread, (3, 3)))


def render_pair(
    seed: int,
    size: int = 256,
    her2: int | None = None,
    *,
    failure: str = "none",
    misregister: float = 3.0,
) -> SynthPair:
    """Draw one synthetic H&E / IHC pair with its truth; same arguments -> identical arrays.

    ``seed``: any non-negative int. ``size``: tile side in px (>= 32). ``her2``:
    score 0..3, or None to draw one. ``failure``: ``"none"``/``"clean"`` or one of
    ``FAILURES``. ``misregister``: maximum displacement (px) of the IHC section
    against the H&E; 0 gives pixel-aligned sections.
    """
    if not isinstance(size, (int, np.integer)) or size < 32:
        raise TdkstainError(f"tile size must be an integer >= 32 px, got {size!r}")
    if not (misregister >= 0 and math.isfinite(misregister)):
        raise TdkstainError(f"--misregister must be a finite number of pixels >= 0, got {misregister!r}")
    if seed < 0:
        raise TdkstainError(f"seed must be >= 0, got {seed}")
    failure = normalise_failure(failure)
    rng = np.random.default_rng(int(seed))
    # Failure draws come from their own stream, so a failure changes only its own effect:
    # render_pair(s, failure="blur") is render_pair(s) blurred, same tissue, same noise.
    failure_rng = np.random.default_rng([int(seed), 1])
    if her2 is None:
        her2 = int(rng.integers(0, 4))
    her2 = HER2_LABELS.index(her2_label(her2))
    size = int(size)
    mpp = MPP_40X if failure == "scale-40x" else MPP_20X
    px = 1.0 / mpp  # pixels per micron
    pad = int(math.ceil(misregister)) + int(math.ceil(10 * px))
    n = size + 2 * pad

    # -- layout. The weak H&E cue of HER2: tumour fraction, nuclear size, cytoplasm eosin.
    tumour_fraction = float(np.clip(0.30 + 0.10 * her2 + rng.normal(0, 0.07), 0.15, 0.85))
    tumour_diameter_um = 8.0 * (1 + 0.07 * her2) * math.exp(rng.normal(0, 0.06))
    cytoplasm_eosin = (0.018 + 0.004 * her2) * math.exp(rng.normal(0, 0.12))

    nest_field = smooth_noise(rng, n, 28 * px)
    nest = nest_field > np.quantile(nest_field, 1 - tumour_fraction)
    tissue = np.ones((n, n), bool)
    if rng.random() < 0.3:  # a tissue edge: white background over 8-30 % of the tile
        edge_field = smooth_noise(rng, n, 40 * px)
        angle = rng.uniform(0, 2 * math.pi)
        ramp = (np.arange(n)[:, None] * math.sin(angle) + np.arange(n)[None, :] * math.cos(angle)) / n
        edge_field = edge_field * 0.6 + ramp * 2.5
        tissue &= edge_field < np.quantile(edge_field, 1 - rng.uniform(0.08, 0.30))
    rows, cols = np.mgrid[0:n, 0:n].astype(np.float64)
    nest_depth = ndimage.distance_transform_edt(nest)
    for _ in range(int(rng.integers(0, 3))):  # glandular lumina inside nests
        deep = np.flatnonzero(nest_depth > 12 * px)
        if deep.size == 0:
            break
        centre = divmod(int(deep[rng.integers(deep.size)]), n)
        ra, rb, rt = rng.uniform(4, 9) * px, rng.uniform(3, 6) * px, rng.uniform(0, math.pi)
        du, dv = rows - centre[0], cols - centre[1]
        lumen = ((du * math.cos(rt) + dv * math.sin(rt)) / ra) ** 2 + ((-du * math.sin(rt) + dv * math.cos(rt)) / rb) ** 2 < 1
        tissue &= ~lumen
    nest &= tissue
    stroma = tissue & ~nest
    til = rng.uniform(0.05, 0.40)  # tumour-infiltrating lymphocyte zone fraction of stroma
    lymph_field = smooth_noise(rng, n, 18 * px)
    lymph_zone = lymph_field > np.quantile(lymph_field, 1 - til)

    cells = _place_cells(rng, nest, stroma, lymph_zone, tumour_diameter_um / 2 + 2.2, px)
    fibre_angle = rng.uniform(0, math.pi)
    chromatin = fine_noise(rng, n, 0.6 * px)
    warp = warp_field(rng, n, misregister)
    nuclei_h, nuclei_alpha, nuclei_truth = _render_nuclei(
        rng, cells, n, px, tumour_diameter_um, fibre_angle, chromatin, warp, (pad, pad + size - 1)
    )

    # -- tumour cells: Voronoi cells of their seeds, bounded by the nest and a radius.
    tumour = np.flatnonzero(cells.kind == 0)
    staining = _her2_staining(rng, her2, tumour.size)
    membrane_profile = np.zeros((n, n))  # 0..1, a thin ring on every tumour cell
    membrane_dab = np.zeros((n, n))
    membrane_truth = np.zeros((n, n))  # 0..1, the rings that carry DAB
    cytoplasm_dab = np.zeros((n, n))
    cytoplasm_e = np.zeros((n, n))
    in_cell = np.zeros((n, n), bool)
    if tumour.size:
        seeds = cells.centre[tumour]
        pix = np.flatnonzero(nest)
        pr, pc = pix // n, pix % n
        k = 2 if tumour.size > 1 else 1
        dist, nearest = cKDTree(seeds).query(np.column_stack([pr, pc]), k=k)
        dist = dist.reshape(len(pix), k)
        nearest = nearest.reshape(len(pix), k)
        d1, j1 = dist[:, 0], nearest[:, 0]
        if k == 2:
            separation = np.linalg.norm(seeds[j1] - seeds[nearest[:, 1]], axis=1)
            to_bisector = (dist[:, 1] ** 2 - d1**2) / (2 * np.maximum(separation, 1e-6))
        else:
            to_bisector = np.full(len(pix), np.inf)
        to_nest_edge = nest_depth[pr, pc] - 0.5
        to_rim = 1.9 * cells.radius[tumour][j1] - d1
        edge = np.minimum(np.minimum(to_bisector, to_nest_edge), to_rim)
        inside = to_rim >= 0
        width = (0.45 + 0.25 * staining["intensity"][j1] / 0.25) * px  # strong 3+ rings look thicker
        profile = np.exp(-0.5 * (np.maximum(edge, 0) / width) ** 2) * inside
        theta = np.arctan2(pr - seeds[j1, 0], pc - seeds[j1, 1])
        arc_fraction = staining["arc"][j1]
        on_arc = np.where(
            arc_fraction >= 1.0,
            1.0,
            1 / (1 + np.exp(-12 * (np.cos(theta - staining["phase"][j1]) - np.cos(math.pi * arc_fraction)))),
        )
        grain = 1 + 0.25 * chromatin[pr, pc]
        membrane_profile[pr, pc] = profile
        membrane_dab[pr, pc] = staining["intensity"][j1] * profile * on_arc * grain
        membrane_truth[pr, pc] = profile * on_arc * staining["stained"][j1]
        cell_shade = np.exp(rng.normal(0, 0.12, tumour.size))[j1]
        cytoplasm_dab[pr, pc] = staining["cytoplasm"] * inside * cell_shade
        cytoplasm_e[pr, pc] = cytoplasm_eosin * inside * cell_shade
        in_cell[pr, pc] = inside

    # -- H&E optical densities: collagen pink, cytoplasm pink-purple, nuclei blue.
    collagen = fibres(rng, n, fibre_angle, px)
    grain = fine_noise(rng, n, 1.5 * px)
    connective = tissue & ~in_cell
    stroma_eosin = rng.uniform(0.030, 0.045) * (0.40 + 0.80 * collagen) * connective
    he_eosin = (stroma_eosin + cytoplasm_e * (1 + 0.12 * grain) + 0.004 * membrane_profile) * (1 - 0.6 * nuclei_alpha)
    he_eosin += 0.010 * nuclei_alpha
    # cytoplasm and collagen take up some haematoxylin too: real H&E is purple-pink, not magenta
    # (rgb2hed H median 0.03-0.04 on the H&E tiles in shared/data)
    he_h = np.maximum(nuclei_h, tissue * (0.007 + 0.009 * in_cell) * (1 + 0.15 * grain))
    h_scale, e_scale = rng.uniform(0.85, 1.15), rng.uniform(0.80, 1.20)
    he_od = np.stack([he_h * h_scale, he_eosin * e_scale, np.zeros((n, n))], axis=-1)

    # -- IHC: consecutive section, lighter haematoxylin counterstain, DAB, no eosin.
    counterstain = rng.uniform(0.45, 0.65)
    if failure == "weak-counterstain":
        counterstain *= 0.35
    elif failure == "strong-counterstain":
        counterstain *= 1.9
    ihc_h = nuclei_h * counterstain + tissue * (0.003 + 0.002 * collagen)
    ihc_dab = (membrane_dab + cytoplasm_dab) * rng.uniform(0.9, 1.1) + tissue * 0.002 * (1 + 0.3 * grain)
    crop = (slice(pad, pad + size), slice(pad, pad + size))
    # IHC pixel q shows the tissue that sits at q + warp(q) in the H&E section
    warped = bilinear(
        [ihc_h, ihc_dab, membrane_truth, tissue.astype(np.float64)],
        (rows + warp[0])[crop],
        (cols + warp[1])[crop],
    )
    ihc_od = np.stack([warped[0], np.zeros((size, size)), warped[1]], axis=-1)
    tissue_mask = warped[3] > 0.5
    membrane_mask = (warped[2] > 0.5) & tissue_mask

    neutral_ihc: float | np.ndarray = 0.0
    if failure == "tint-dab":
        # BCI scans often carry a faint brown cast over background and stroma (issue 10)
        ihc_od[..., 2] += failure_rng.uniform(0.025, 0.035) * (1 + 0.08 * smooth_noise(failure_rng, size, 60 * px))
    elif failure == "tint-grey":
        neutral_ihc = failure_rng.uniform(0.012, 0.020) * (1 + 0.08 * smooth_noise(failure_rng, size, 60 * px))

    # -- truth nuclei: a nucleus counts when at least 40 % of it lies inside the tile in both sections
    # (a sliver at the edge is what detectors drop); its centroid is that of the visible part.
    keep = (nuclei_truth["he_visible"] >= 0.4) & (nuclei_truth["ihc_visible"] >= 0.4)
    he_points = nuclei_truth["he"][keep] - pad
    ihc_points = nuclei_truth["ihc"][keep] - pad

    # -- render both sections; scanner effects are shared by the pair.
    blur_px = 0.45 * px / 2.0  # a sharp 20x scan, scaled with the magnification
    if failure == "blur":
        blur_px = 1.8 * px / 2.0
    background_h = rng.uniform(0.0012, 0.0035)  # slide glass and mounting medium: off-white
    noise = rng.uniform(1.2, 2.2)
    he_light = _beer_lambert(he_od[crop], _perturbed_stains(rng, 0.03), background_h)
    ihc_light = _beer_lambert(ihc_od, _perturbed_stains(rng, 0.02), neutral_ihc + background_h)
    he = _scan(rng, he_light, blur_px, noise)
    ihc = _scan(rng, ihc_light, blur_px, noise)
    if failure == "jpeg":
        quality = int(failure_rng.integers(60, 76))
        he, ihc = _jpeg(he, quality), _jpeg(ihc, quality)

    return SynthPair(
        he=he,
        ihc=ihc,
        her2=her2,
        nuclei=ihc_points,
        cell_types=np.asarray(CELL_TYPES)[cells.kind[keep]],
        he_nuclei=he_points,
        membrane_mask=membrane_mask,
        tissue_mask=tissue_mask,
        mpp=mpp,
        failure=failure,
    )
