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

The H&E carries a cue of the HER2 level (real morphology does too), of
adjustable strength (``cue``: 0 = none, the honest control; 1 = the default,
weak): tumour nuclear size, eosin of tumour cytoplasm and the tumour fraction
rise with the score, with per-tile spread so that neighbouring levels overlap.
``docs/synth.md`` documents every number.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from tdkstain.plumbing.errors import TdkstainError
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
class _Her2Cue:
    """The weak H&E cue of HER2: tumour fraction, nuclear size, cytoplasm eosin."""

    tumour_fraction: float
    tumour_diameter_um: float
    cytoplasm_eosin: float


#: Width (sigma) of the faint cell border an H&E shows on tumour cells, microns.
HE_BORDER_WIDTH_UM = 0.55
#: Default strength of the H&E cue of HER2 (``render_pair(cue=...)``, ``tdkstain synth --her2-cue``).
DEFAULT_HER2_CUE = 1.0
#: Largest cue strength (nuclei of 3+ tumour cells reach 8 um x (1 + 0.07 x 12) = 14.7 um).
MAX_HER2_CUE = 4.0


def _draw_her2_cue(rng: np.random.Generator, her2: int, strength: float = DEFAULT_HER2_CUE) -> _Her2Cue:
    """The H&E cue of the score; ``strength`` scales how far each quantity moves from its HER2 0 value.

    Strength 1 is the cue of tdkstain 0.2 (same numbers); 0 draws every tile as a HER2 0 tile
    looks (the same random draws): the score cannot be read from the H&E. Nuclear size and
    cytoplasm eosin rise with ``strength x score``; the tumour fraction with ``min(strength, 1) x
    score``, so that a strong cue does not empty HER2 0 tiles of tumour (whose score then could not
    be read from the IHC either).
    """
    level = strength * her2
    tumour_fraction = float(np.clip(0.30 + 0.10 * min(strength, 1.0) * her2 + rng.normal(0, 0.07), 0.15, 0.85))
    tumour_diameter_um = 8.0 * (1 + 0.07 * level) * math.exp(rng.normal(0, 0.06))
    cytoplasm_eosin = (0.018 + 0.004 * level) * math.exp(rng.normal(0, 0.12))
    return _Her2Cue(tumour_fraction, tumour_diameter_um, cytoplasm_eosin)


@dataclass
class _Layout:
    """Where the tissue, the tumour nests and the lymphocytes are on the (n, n) canvas."""

    tissue: np.ndarray  # bool: not background, not lumen
    nest: np.ndarray  # bool: tumour nests, inside the tissue
    nest_depth: np.ndarray  # float64: distance (px) into the nests before the tissue edge and lumina cut them
    stroma: np.ndarray  # bool: tissue outside the nests
    lymph_zone: np.ndarray  # bool: where stroma holds lymphocytes


def _tissue_edge(rng: np.random.Generator, n: int, px: float) -> np.ndarray:
    """(n, n) bool: tissue side of an edge leaving white background over 8-30 % of the tile."""
    edge_field = smooth_noise(rng, n, 40 * px)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.arange(n)[:, None] * math.sin(angle) + np.arange(n)[None, :] * math.cos(angle)) / n
    edge_field = edge_field * 0.6 + ramp * 2.5
    return edge_field < np.quantile(edge_field, 1 - rng.uniform(0.08, 0.30))


def _cut_lumina(
    rng: np.random.Generator, tissue: np.ndarray, nest_depth: np.ndarray, rows: np.ndarray, cols: np.ndarray, px: float
) -> None:
    """Remove up to two glandular lumina, deep inside nests, from ``tissue`` (in place)."""
    n = tissue.shape[0]
    for _ in range(int(rng.integers(0, 3))):
        deep = np.flatnonzero(nest_depth > 12 * px)
        if deep.size == 0:
            break
        centre = divmod(int(deep[rng.integers(deep.size)]), n)
        ra, rb, rt = rng.uniform(4, 9) * px, rng.uniform(3, 6) * px, rng.uniform(0, math.pi)
        du, dv = rows - centre[0], cols - centre[1]
        lumen = ((du * math.cos(rt) + dv * math.sin(rt)) / ra) ** 2 + ((-du * math.sin(rt) + dv * math.cos(rt)) / rb) ** 2 < 1
        tissue &= ~lumen


def _draw_layout(
    rng: np.random.Generator, n: int, px: float, tumour_fraction: float, rows: np.ndarray, cols: np.ndarray
) -> _Layout:
    """Tumour nests from a thresholded smooth field (``tumour_fraction`` of the canvas), stroma around them."""
    nest_field = smooth_noise(rng, n, 28 * px)
    nest = nest_field > np.quantile(nest_field, 1 - tumour_fraction)
    tissue = np.ones((n, n), bool)
    if rng.random() < 0.3:  # some tiles come from the edge of the section
        tissue &= _tissue_edge(rng, n, px)
    nest_depth = ndimage.distance_transform_edt(nest)
    _cut_lumina(rng, tissue, nest_depth, rows, cols, px)
    nest &= tissue
    stroma = tissue & ~nest
    til = rng.uniform(0.05, 0.40)  # tumour-infiltrating lymphocyte zone fraction of stroma
    lymph_field = smooth_noise(rng, n, 18 * px)
    lymph_zone = lymph_field > np.quantile(lymph_field, 1 - til)
    return _Layout(tissue=tissue, nest=nest, nest_depth=nest_depth, stroma=stroma, lymph_zone=lymph_zone)


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


@dataclass
class _TumourCells:
    """Stain of the tumour cells on the (n, n) canvas."""

    membrane_profile: np.ndarray  # 0..1, a thin ring on every tumour cell (the H&E's faint cell border)
    membrane_dab: np.ndarray  # DAB OD of the membranes
    membrane_truth: np.ndarray  # 0..1, the rings that carry DAB
    cytoplasm_dab: np.ndarray  # faint cytoplasmic DAB OD
    cytoplasm_eosin: np.ndarray  # eosin OD of the cytoplasm
    in_cell: np.ndarray  # bool: inside a tumour cell


def _voronoi_geometry(
    seeds: np.ndarray, radius: np.ndarray, nest: np.ndarray, nest_depth: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each nest pixel's tumour cell and distance to that cell's membrane.

    Returns the pixel rows and cols, the distance to the seed, the index of the
    cell (into ``seeds``), the distance to the membrane (the nearest of the
    bisector with the next cell, the nest edge and the cell's rim) and whether
    the pixel lies within the rim.
    """
    n = nest.shape[0]
    pix = np.flatnonzero(nest)
    pr, pc = pix // n, pix % n
    k = 2 if seeds.shape[0] > 1 else 1
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
    to_rim = 1.9 * radius[j1] - d1
    edge = np.minimum(np.minimum(to_bisector, to_nest_edge), to_rim)
    inside = to_rim >= 0
    return pr, pc, d1, j1, edge, inside


def _stain_tumour_cells(
    rng: np.random.Generator,
    her2: int,
    cells: _Cells,
    layout: _Layout,
    chromatin: np.ndarray,
    cytoplasm_eosin: float,
    px: float,
) -> _TumourCells:
    """Tumour cells are the Voronoi cells of their seeds, bounded by the nest and a radius."""
    n = layout.nest.shape[0]
    tumour = np.flatnonzero(cells.kind == 0)
    staining = _her2_staining(rng, her2, tumour.size)
    out = _TumourCells(
        membrane_profile=np.zeros((n, n)),
        membrane_dab=np.zeros((n, n)),
        membrane_truth=np.zeros((n, n)),
        cytoplasm_dab=np.zeros((n, n)),
        cytoplasm_eosin=np.zeros((n, n)),
        in_cell=np.zeros((n, n), bool),
    )
    if not tumour.size:
        return out
    seeds = cells.centre[tumour]
    pr, pc, _, j1, edge, inside = _voronoi_geometry(seeds, cells.radius[tumour], layout.nest, layout.nest_depth)
    width = (0.45 + 0.25 * staining["intensity"][j1] / 0.25) * px  # strong 3+ rings look thicker
    profile = np.exp(-0.5 * (np.maximum(edge, 0) / width) ** 2) * inside
    # The H&E shows the cell border, not the DAB: its ring has one width whatever the score, so that
    # nothing of the IHC staining leaks into the H&E (the HER2 cue is _draw_her2_cue's alone).
    he_profile = np.exp(-0.5 * (np.maximum(edge, 0) / (HE_BORDER_WIDTH_UM * px)) ** 2) * inside
    theta = np.arctan2(pr - seeds[j1, 0], pc - seeds[j1, 1])
    arc_fraction = staining["arc"][j1]
    on_arc = np.where(
        arc_fraction >= 1.0,
        1.0,
        1 / (1 + np.exp(-12 * (np.cos(theta - staining["phase"][j1]) - np.cos(math.pi * arc_fraction)))),
    )
    grain = 1 + 0.25 * chromatin[pr, pc]
    out.membrane_profile[pr, pc] = he_profile
    out.membrane_dab[pr, pc] = staining["intensity"][j1] * profile * on_arc * grain
    out.membrane_truth[pr, pc] = profile * on_arc * staining["stained"][j1]
    cell_shade = np.exp(rng.normal(0, 0.12, tumour.size))[j1]
    out.cytoplasm_dab[pr, pc] = staining["cytoplasm"] * inside * cell_shade
    out.cytoplasm_eosin[pr, pc] = cytoplasm_eosin * inside * cell_shade
    out.in_cell[pr, pc] = inside
    return out


# --------------------------------------------------------------------------- nuclei


@dataclass
class _NucleusShapes:
    """Shape and stain of every nucleus, drawn for all cells at once (px and OD units)."""

    semi_major: np.ndarray  # (N,) px
    semi_minor: np.ndarray  # (N,) px
    angle: np.ndarray  # (N,) radians
    level: np.ndarray  # (N,) haematoxylin OD
    texture: np.ndarray  # (N,) chromatin contrast
    harm: np.ndarray  # (N, 2) amplitudes of the 2nd and 3rd angular harmonics
    harm_phase: np.ndarray  # (N, 2)
    nucleolus: np.ndarray  # (N,) bool
    nucleolus_offset: np.ndarray  # (N, 2) in units of the semi-axes


def _draw_nucleus_shapes(
    rng: np.random.Generator, kind: np.ndarray, px: float, tumour_diameter_um: float, fibre_angle: float
) -> _NucleusShapes:
    count = kind.shape[0]
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
    return _NucleusShapes(semi_major, semi_minor, angle, level, texture, harm, harm_phase, nucleolus, nucleolus_offset)


def _ihc_shifts(cells: _Cells, warp: np.ndarray) -> np.ndarray:
    """(N, 2) displacement of each nucleus from the H&E into the IHC section.

    The warp varies over ~n/2 px, so one shift per nucleus (at its seed) moves
    its pixels to within ~0.2 px of a per-pixel mapping.
    """
    shift = np.zeros((cells.kind.shape[0], 2))
    for _ in range(4):  # fixed point of q = x - warp(q)
        shift = bilinear(warp, cells.centre[:, 0] - shift[:, 0], cells.centre[:, 1] - shift[:, 1]).T
    return shift


@dataclass
class _NucleusPatch:
    """One nucleus drawn on the canvas rows ``top:bottom``, cols ``left:right``."""

    top: int
    bottom: int
    left: int
    right: int
    rows: np.ndarray  # (h, 1) row offsets from the seed
    cols: np.ndarray  # (1, w) column offsets from the seed
    alpha: np.ndarray  # (h, w) coverage in [0, 1]
    od: np.ndarray  # (h, w) haematoxylin OD


def _nucleus_patch(
    i: int, centre: np.ndarray, kind: int, shapes: _NucleusShapes, n: int, px: float, chromatin: np.ndarray
) -> _NucleusPatch | None:
    """Nucleus ``i`` as a patch, or None when none of it lands on the canvas."""
    semi_major, semi_minor = shapes.semi_major[i], shapes.semi_minor[i]
    level = shapes.level[i]
    edge_px = 0.7  # soft boundary width, px: the focus of a 20x scan
    half = int(math.ceil(semi_major * 1.25)) + 2
    r0, c0 = int(round(centre[0])), int(round(centre[1]))
    top, bottom = max(r0 - half, 0), min(r0 + half + 1, n)
    left, right = max(c0 - half, 0), min(c0 + half + 1, n)
    if top >= bottom or left >= right:
        return None
    rows = np.arange(top, bottom, dtype=np.float64)[:, None] - centre[0]
    cols = np.arange(left, right, dtype=np.float64)[None, :] - centre[1]
    ca, sa = math.cos(shapes.angle[i]), math.sin(shapes.angle[i])
    u = (cols * ca + rows * sa) / semi_major
    v = (-cols * sa + rows * ca) / semi_minor
    rho = np.sqrt(u * u + v * v)
    if kind == 0:
        harm, harm_phase = shapes.harm[i], shapes.harm_phase[i]
        theta = np.arctan2(v, u)
        rho = rho / (1 + harm[0] * np.cos(2 * theta + harm_phase[0]) + harm[1] * np.cos(3 * theta + harm_phase[1]))
    # distance to the boundary in px, approximately, along the minor axis
    inside = (1.0 - rho) * semi_minor
    alpha = np.clip(inside / edge_px + 0.5, 0.0, 1.0)
    if not alpha.any():
        return None
    od = level * (1.0 + shapes.texture[i] * chromatin[top:bottom, left:right])
    if kind == 0:
        # chromatin condenses along the nuclear membrane; a nucleolus is a dense dot
        od = od + 0.35 * level * np.exp(-((inside / (0.8 * px)) ** 2))
        if shapes.nucleolus[i]:
            offset = shapes.nucleolus_offset[i]
            du = u - offset[0]
            dv = (v - offset[1]) * semi_minor / semi_major
            od = od + 0.6 * level * np.exp(-((du * semi_major) ** 2 + (dv * semi_major) ** 2) / (2 * (0.6 * px) ** 2))
    return _NucleusPatch(top, bottom, left, right, rows, cols, alpha, od * alpha)


def _record_visible_centroid(
    truth: dict[str, np.ndarray],
    i: int,
    patch: _NucleusPatch,
    centre: np.ndarray,
    shift: np.ndarray,
    window: tuple[int, int],
) -> None:
    """Store nucleus ``i``'s visible fraction and the centroid of its visible part, in both sections."""
    lo, hi = window
    drawn = patch.alpha > 0
    weight = patch.alpha[drawn]
    he_pos = np.column_stack([
        np.broadcast_to(patch.rows + centre[0], patch.alpha.shape)[drawn],
        np.broadcast_to(patch.cols + centre[1], patch.alpha.shape)[drawn],
    ])
    ihc_pos = he_pos - shift
    for key, pos in (("he", he_pos), ("ihc", ihc_pos)):
        visible = weight * np.all((pos >= lo - 0.5) & (pos < hi + 0.5), axis=1)
        total = visible.sum()
        truth[f"{key}_visible"][i] = total / weight.sum()
        if total > 0:
            truth[key][i] = (visible[:, None] * pos).sum(0) / total


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
    shift = _ihc_shifts(cells, warp)
    shapes = _draw_nucleus_shapes(rng, cells.kind, px, tumour_diameter_um, fibre_angle)
    for i in range(count):
        patch = _nucleus_patch(i, cells.centre[i], cells.kind[i], shapes, n, px, chromatin)
        if patch is None:
            continue
        h_target = hematoxylin[patch.top : patch.bottom, patch.left : patch.right]
        np.maximum(h_target, patch.od, out=h_target)
        a_target = alpha_all[patch.top : patch.bottom, patch.left : patch.right]
        np.maximum(a_target, patch.alpha, out=a_target)
        _record_visible_centroid(truth, i, patch, cells.centre[i], shift[i], window)
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


def _check_render_arguments(seed: int, size: int, misregister: float, cue: float = DEFAULT_HER2_CUE) -> None:
    if not (isinstance(cue, (int, float, np.integer, np.floating)) and math.isfinite(cue) and 0 <= cue <= MAX_HER2_CUE):
        raise TdkstainError(f"--her2-cue must be a number from 0 to {MAX_HER2_CUE:g}, got {cue!r}")
    if not isinstance(size, (int, np.integer)) or size < 32:
        raise TdkstainError(f"--size (the tile side) must be an integer >= 32 px, got {size!r}")
    if not (misregister >= 0 and math.isfinite(misregister)):
        raise TdkstainError(f"--misregister must be a finite number of pixels >= 0, got {misregister!r}")
    if seed < 0:
        raise TdkstainError(f"--seed must be >= 0, got {seed}")


def _he_optical_density(
    rng: np.random.Generator,
    tissue: np.ndarray,
    tumour: _TumourCells,
    nuclei_h: np.ndarray,
    nuclei_alpha: np.ndarray,
    collagen: np.ndarray,
    grain: np.ndarray,
) -> np.ndarray:
    """(n, n, 3) H&E stain OD: collagen pink, cytoplasm pink-purple, nuclei blue."""
    n = tissue.shape[0]
    connective = tissue & ~tumour.in_cell
    stroma_eosin = rng.uniform(0.030, 0.045) * (0.40 + 0.80 * collagen) * connective
    he_eosin = (stroma_eosin + tumour.cytoplasm_eosin * (1 + 0.12 * grain) + 0.004 * tumour.membrane_profile) * (1 - 0.6 * nuclei_alpha)
    he_eosin += 0.010 * nuclei_alpha
    # cytoplasm and collagen take up some haematoxylin too: real H&E is purple-pink, not magenta
    # (rgb2hed H median 0.03-0.04 on the H&E tiles in shared/data)
    he_h = np.maximum(nuclei_h, tissue * (0.007 + 0.009 * tumour.in_cell) * (1 + 0.15 * grain))
    h_scale, e_scale = rng.uniform(0.85, 1.15), rng.uniform(0.80, 1.20)
    return np.stack([he_h * h_scale, he_eosin * e_scale, np.zeros((n, n))], axis=-1)


@dataclass
class _IhcSection:
    """The consecutive IHC section, warped and cropped to the tile, before rendering."""

    od: np.ndarray  # (size, size, 3) stain OD
    neutral: float | np.ndarray  # grey absorbance of a tint failure
    tissue_mask: np.ndarray  # (size, size) bool
    membrane_mask: np.ndarray  # (size, size) bool


def _ihc_section(
    rng: np.random.Generator,
    failure_rng: np.random.Generator,
    failure: str,
    tissue: np.ndarray,
    tumour: _TumourCells,
    nuclei_h: np.ndarray,
    collagen: np.ndarray,
    grain: np.ndarray,
    sample_at: tuple[np.ndarray, np.ndarray],
    px: float,
) -> _IhcSection:
    """Consecutive section: lighter haematoxylin counterstain, DAB, no eosin.

    ``sample_at``: (size, size) canvas rows and cols of the H&E tissue each IHC pixel shows.
    """
    size = sample_at[0].shape[0]
    counterstain = rng.uniform(0.45, 0.65)
    if failure == "weak-counterstain":
        counterstain *= 0.35
    elif failure == "strong-counterstain":
        counterstain *= 1.9
    ihc_h = nuclei_h * counterstain + tissue * (0.003 + 0.002 * collagen)
    ihc_dab = (tumour.membrane_dab + tumour.cytoplasm_dab) * rng.uniform(0.9, 1.1) + tissue * 0.002 * (1 + 0.3 * grain)
    warped = bilinear([ihc_h, ihc_dab, tumour.membrane_truth, tissue.astype(np.float64)], *sample_at)
    ihc_od = np.stack([warped[0], np.zeros((size, size)), warped[1]], axis=-1)
    tissue_mask = warped[3] > 0.5
    membrane_mask = (warped[2] > 0.5) & tissue_mask

    neutral_ihc: float | np.ndarray = 0.0
    if failure == "tint-dab":
        # BCI scans often carry a faint brown cast over background and stroma (issue 10)
        ihc_od[..., 2] += failure_rng.uniform(0.025, 0.035) * (1 + 0.08 * smooth_noise(failure_rng, size, 60 * px))
    elif failure == "tint-grey":
        neutral_ihc = failure_rng.uniform(0.012, 0.020) * (1 + 0.08 * smooth_noise(failure_rng, size, 60 * px))
    return _IhcSection(od=ihc_od, neutral=neutral_ihc, tissue_mask=tissue_mask, membrane_mask=membrane_mask)


def _scan_pair(
    rng: np.random.Generator,
    failure_rng: np.random.Generator,
    failure: str,
    he_od: np.ndarray,
    ihc: _IhcSection,
    px: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Render both sections to uint8 RGB; scanner effects are shared by the pair."""
    blur_px = 0.45 * px / 2.0  # a sharp 20x scan, scaled with the magnification
    if failure == "blur":
        blur_px = 1.8 * px / 2.0
    background_h = rng.uniform(0.0012, 0.0035)  # slide glass and mounting medium: off-white
    noise = rng.uniform(1.2, 2.2)
    he_light = _beer_lambert(he_od, _perturbed_stains(rng, 0.03), background_h)
    ihc_light = _beer_lambert(ihc.od, _perturbed_stains(rng, 0.02), ihc.neutral + background_h)
    he = _scan(rng, he_light, blur_px, noise)
    ihc_rgb = _scan(rng, ihc_light, blur_px, noise)
    if failure == "jpeg":
        quality = int(failure_rng.integers(60, 76))
        he, ihc_rgb = _jpeg(he, quality), _jpeg(ihc_rgb, quality)
    return he, ihc_rgb


def render_pair(
    seed: int,
    size: int = 256,
    her2: int | None = None,
    *,
    failure: str = "none",
    misregister: float = 3.0,
    cue: float = DEFAULT_HER2_CUE,
) -> SynthPair:
    """Draw one synthetic H&E / IHC pair with its truth; same arguments -> identical arrays.

    ``seed``: any non-negative int. ``size``: tile side in px (>= 32). ``her2``:
    score 0..3, or None to draw one. ``failure``: ``"none"``/``"clean"`` or one of
    ``FAILURES``. ``misregister``: maximum displacement (px) of the IHC section
    against the H&E; 0 gives pixel-aligned sections. ``cue``: strength of the
    H&E's cue of the score (0 to ``MAX_HER2_CUE``; 0: the H&E does not depend on
    the score; see ``_draw_her2_cue`` and docs/synth.md). The random draws are the
    same whatever the cue; the cue moves tumour fraction, nuclear size and cytoplasm
    eosin, and the layout follows the tumour fraction.
    """
    _check_render_arguments(seed, size, misregister, cue)
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
    crop = (slice(pad, pad + size), slice(pad, pad + size))
    rows, cols = np.mgrid[0:n, 0:n].astype(np.float64)

    cue = _draw_her2_cue(rng, her2, float(cue))
    layout = _draw_layout(rng, n, px, cue.tumour_fraction, rows, cols)
    cells = _place_cells(rng, layout.nest, layout.stroma, layout.lymph_zone, cue.tumour_diameter_um / 2 + 2.2, px)
    fibre_angle = rng.uniform(0, math.pi)
    chromatin = fine_noise(rng, n, 0.6 * px)
    warp = warp_field(rng, n, misregister)
    nuclei_h, nuclei_alpha, nuclei_truth = _render_nuclei(
        rng, cells, n, px, cue.tumour_diameter_um, fibre_angle, chromatin, warp, (pad, pad + size - 1)
    )
    tumour = _stain_tumour_cells(rng, her2, cells, layout, chromatin, cue.cytoplasm_eosin, px)
    collagen = fibres(rng, n, fibre_angle, px)
    grain = fine_noise(rng, n, 1.5 * px)
    he_od = _he_optical_density(rng, layout.tissue, tumour, nuclei_h, nuclei_alpha, collagen, grain)
    # IHC pixel q shows the tissue that sits at q + warp(q) in the H&E section
    ihc_sample_at = ((rows + warp[0])[crop], (cols + warp[1])[crop])
    ihc = _ihc_section(rng, failure_rng, failure, layout.tissue, tumour, nuclei_h, collagen, grain, ihc_sample_at, px)

    # -- truth nuclei: a nucleus counts when at least 40 % of it lies inside the tile in both sections
    # (a sliver at the edge is what detectors drop); its centroid is that of the visible part.
    keep = (nuclei_truth["he_visible"] >= 0.4) & (nuclei_truth["ihc_visible"] >= 0.4)
    he_points = nuclei_truth["he"][keep] - pad
    ihc_points = nuclei_truth["ihc"][keep] - pad

    he_rgb, ihc_rgb = _scan_pair(rng, failure_rng, failure, he_od[crop], ihc, px)
    return SynthPair(
        he=he_rgb,
        ihc=ihc_rgb,
        her2=her2,
        nuclei=ihc_points,
        cell_types=np.asarray(CELL_TYPES)[cells.kind[keep]],
        he_nuclei=he_points,
        membrane_mask=ihc.membrane_mask,
        tissue_mask=ihc.tissue_mask,
        mpp=mpp,
        failure=failure,
    )
