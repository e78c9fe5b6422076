"""A generated IHC tile against the known truth of a ``tdkstain synth`` dataset (the ablation study's measures).

``tdkstain evaluate`` compares a generated tile with the real IHC, whose own
membranes and nuclei are only estimates. Synthetic data know the truth:
which pixels are stained membrane (``{split}_truth/STEM_membrane.png``),
where every nucleus is (``STEM.json``, in IHC and H&E coordinates) and the
HER2 score. :func:`truth_measures` measures one generated tile against it:

- **DAB error inside the true membranes** (decadic OD): over the true
  membrane pixels ``M``, ``mean |D_gen - D_real|`` and ``mean (D_gen -
  D_real)`` (under-staining is negative), ``D = rgb2hed DAB x 6``
  (:data:`tdkstain.knowledge.stain.OD_PER_HED_UNIT`); NaN without membrane.
- **stained-membrane IoU** at ``tau`` = the scorer's weak threshold
  (``ScoringParams.cells.thresholds[0]``, 0.2 OD): ``S_true = M_r and D_real
  >= tau``, ``S_gen = D_gen >= tau`` inside the tissue of the real IHC
  (:func:`tdkstain.knowledge.maps.tissue_mask`); the intersection and union
  pixel counts (pooled over tiles by the study: per-tile IoU is undefined
  on tiles where neither is stained) and the per-tile IoU where the union is
  non-empty. ``M_r`` is the true membrane widened by the reach the scorer
  reads as membrane DAB (``ScoringParams.cells.reach_um``, 1.5 um = 3 px at
  20x): the true mask holds only the part of each membrane above half its
  peak, and the optical spread of a strong membrane stays above tau beyond
  it, so with ``M`` itself the real IHC would score only 0.5-0.7 against
  its own truth on 2+ / 3+ tiles (measured on clean synthetic tiles; with
  ``M_r`` 0.97-1.0). ``membrane_reach_px=0`` gives ``S_true = M and D_real >= tau``.
- **nuclei**: the project's detector (``detect_nuclei`` at the dataset's
  ``extraction.json`` settings) on the generated tile, matched one to one
  (``match_centroids``) to the true nuclei in H&E coordinates (the generated
  tile is in the H&E's frame) within the radius the extraction's own truth
  scoring uses: count error (detected - true), precision, recall, F1.
- **HER2**: ``score_tile`` on the generated tile and on the real IHC: score
  and H-score (agreement over tiles is the study's).
- **SSIM, PSNR** against the real IHC (:mod:`tdkstain.metrics.image`).

The truth membrane is in IHC coordinates; it is the H&E's frame only when
the data were drawn with ``--misregister 0``. Misregistered data are refused
(:func:`check_truth_dataset`, and per tile in :func:`truth_measures`).

Images are ``(H, W, 3)`` uint8 RGB; masks ``(H, W)`` bool; centroids
``(N, 2)`` float64 ``(row, col)`` pixels.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tdkstain.knowledge.maps import ExtractionParams
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.scoring.her2 import SCORES, ScoringParams

__all__ = [
    "BY_HER2",
    "DEFINITIONS",
    "METRICS",
    "Metric",
    "finite_values",
    "her2_kappa",
    "mean_of",
    "run_values",
    "tile_values",
    "RealTile",
    "TruthParams",
    "TruthTile",
    "check_truth_dataset",
    "measures_from_json",
    "prepare_real",
    "read_truth",
    "truth_match_radius",
    "truth_measures",
]

MISREGISTER_FIX = "draw aligned data with `tdkstain synth DIR --misregister 0` (then `tdkstain extract DIR`)"

# What each per-tile number means (copied into the study's study.json and report).
DEFINITIONS: dict[str, str] = {
    "dab_abs_error": "mean |DAB_OD(generated) - DAB_OD(real)| over the true membrane pixels (STEM_membrane.png); "
                     "DAB_OD = skimage rgb2hed DAB x 6 (decadic OD, QuPath's units); NaN on tiles without membrane",
    "dab_signed_error": "mean (DAB_OD(generated) - DAB_OD(real)) over the true membrane pixels: negative = under-stained",
    "membrane_intersection": "pixels in S_gen and S_true; S_true = (true membrane widened by the scorer's membrane "
                             "reach, 1.5 um) AND DAB_OD(real) >= tau, S_gen = DAB_OD(generated) >= tau inside the real "
                             "IHC's tissue mask; tau = the scorer's weak threshold (0.2 OD)",
    "membrane_union": "pixels in S_gen or S_true (pixel-exact, no tolerance)",
    "membrane_iou": "intersection / union of this tile; NaN when the union is empty (nothing stained on either side)",
    "nuclei_count_error": "nuclei detected on the generated tile minus true nuclei (detector and settings of the "
                          "dataset's extraction.json)",
    "nuclei_precision": "true positives / detected; one-to-one matching (Hungarian) to the true nuclei in H&E "
                        "coordinates within the extraction's truth-scoring radius",
    "nuclei_recall": "true positives / true nuclei",
    "nuclei_f1": "2 TP / (2 TP + FP + FN)",
    "her2_generated": "tdkstain score's reading of the generated tile (0, 1+, 2+, 3+; null: not scorable)",
    "her2_real": "tdkstain score's reading of the real IHC tile (the scorer's own accuracy on real IHC)",
    "h_score_generated": "H-score of the generated tile (0-300)",
    "ssim": "skimage structural_similarity(real, generated, channel_axis=-1, data_range=255)",
    "psnr": "10 log10(255^2 / MSE) in dB; inf for identical tiles",
}


def truth_match_radius() -> float:
    """The matching radius (px) of the extraction's own truth scoring (``knowledge.extraction.truth``), one home."""
    from tdkstain.knowledge.extraction.truth import evaluate_against_truth

    return float(inspect.signature(evaluate_against_truth).parameters["radius"].default)


# --------------------------------------------------------------------------- truth files


@dataclass
class TruthTile:
    """One tile's truth as ``tdkstain synth`` wrote it (``{split}_truth/STEM.json`` and ``STEM_membrane.png``)."""

    stem: str
    path: Path  # the JSON file
    her2: str  # "0", "1+", "2+", "3+"
    size: int  # tile side, px
    mpp: float
    misregister: float  # px; the membrane mask is in the H&E's frame only at 0
    nuclei: np.ndarray  # (N, 2) float64 (row, col), IHC coordinates
    he_nuclei: np.ndarray  # (N, 2) float64 (row, col), H&E coordinates
    cell_types: tuple[str, ...]
    membrane: np.ndarray = field(repr=False)  # (size, size) bool, IHC coordinates


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_truth(truth_dir: str | os.PathLike, stem: str) -> TruthTile:
    """Read and check the truth of tile ``stem``: its HER2 label, size, nuclei (inside the tile) and membrane mask.

    Raises:
        TdkstainError: naming the file and what is wrong (missing, not JSON, a bad label, a nucleus outside
        the tile, a membrane mask of another size).
    """
    from tdkstain.data.images import read_gray

    folder = Path(truth_dir)
    path = folder / f"{stem}.json"
    if not path.is_file():
        raise TdkstainError(f"{path}: missing: the truth of tile {stem}; measures against truth need data drawn by "
                            "`tdkstain synth` (its {split}_truth/ folders)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TdkstainError(f"{path}: not a readable truth record ({err}); redraw the data with tdkstain synth") from None
    if not isinstance(record, dict):
        raise TdkstainError(f"{path}: a truth record is a JSON object, got {type(record).__name__}")
    her2 = record.get("her2")
    if her2 not in SCORES:
        raise TdkstainError(f"{path}: her2 {her2!r} is not a HER2 score ({', '.join(SCORES)})")
    size = record.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise TdkstainError(f"{path}: size {size!r} is not a tile side in pixels")
    mpp, misregister = record.get("mpp"), record.get("misregister")
    if not (_number(mpp) and mpp > 0):
        raise TdkstainError(f"{path}: mpp {mpp!r} is not a positive number of microns per pixel")
    if not (_number(misregister) and misregister >= 0):
        raise TdkstainError(f"{path}: misregister {misregister!r} is not a displacement in pixels >= 0")
    nuclei = record.get("nuclei")
    if not isinstance(nuclei, list):
        raise TdkstainError(f"{path}: nuclei must be a list of {{x, y, he_x, he_y, type}}, got {type(nuclei).__name__}")
    ihc_xy, he_xy, types = [], [], []
    for i, nucleus in enumerate(nuclei):
        values = [nucleus.get(k) for k in ("x", "y", "he_x", "he_y")] if isinstance(nucleus, dict) else None
        if values is None or not all(_number(v) for v in values) or not isinstance(nucleus.get("type"), str):
            raise TdkstainError(f"{path}: nucleus {i} is not {{x, y, he_x, he_y: numbers, type: text}}: {nucleus!r}")
        if not all(-0.5 <= v <= size - 0.5 for v in values):
            raise TdkstainError(f"{path}: nucleus {i} at {values} lies outside the {size} x {size} px tile")
        ihc_xy.append((values[1], values[0]))
        he_xy.append((values[3], values[2]))
        types.append(nucleus["type"])
    membrane_path = folder / f"{stem}_membrane.png"
    if not membrane_path.is_file():
        raise TdkstainError(f"{membrane_path}: missing: the true membrane mask of tile {stem} (tdkstain synth writes it)")
    membrane = read_gray(membrane_path) > 0
    if membrane.shape != (size, size):
        raise TdkstainError(f"{membrane_path}: {membrane.shape[1]} x {membrane.shape[0]} px, but {path.name} says the "
                            f"tile is {size} x {size} px")
    return TruthTile(stem=stem, path=path, her2=her2, size=size, mpp=float(mpp), misregister=float(misregister),
                     nuclei=np.asarray(ihc_xy, np.float64).reshape(-1, 2),
                     he_nuclei=np.asarray(he_xy, np.float64).reshape(-1, 2), cell_types=tuple(types), membrane=membrane)


def check_truth_dataset(root: str | os.PathLike) -> dict:
    """``ROOT/synth.json``, checked: a complete ``tdkstain synth`` output drawn with ``--misregister 0``.

    Returns the parameters. Raises TdkstainError naming the file, why, and how to make suitable data.
    """
    path = Path(root) / "synth.json"
    if not path.is_file():
        raise TdkstainError(f"{root}: no synth.json: measures against truth need data drawn by tdkstain synth; "
                            f"{MISREGISTER_FIX}")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TdkstainError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(record, dict) or not record.get("complete"):
        raise TdkstainError(f"{path}: the synthetic data are incomplete (an interrupted tdkstain synth): rerun that "
                            "command to finish them")
    misregister = record.get("misregister")
    if not _number(misregister) or misregister != 0:
        raise TdkstainError(
            f"{path}: misregister is {misregister!r} px: the true membrane mask is in the IHC's frame, the generated "
            "tile in the H&E's, and the two coincide only for data drawn without misregistration, so pixel measures "
            f"(DAB error inside the membranes, stained-membrane IoU) would be wrong; {MISREGISTER_FIX}"
        )
    return record


# --------------------------------------------------------------------------- measures


@dataclass
class TruthParams:
    """Settings of the measures: the extraction (nuclei detector) and the HER2 scorer (tau = its weak threshold)."""

    extraction: ExtractionParams = field(default_factory=ExtractionParams)
    scoring: ScoringParams | None = None  # None: ScoringParams at the extraction's nuclei mpp (as tdkstain evaluate)
    match_radius_px: float = field(default_factory=truth_match_radius)
    membrane_reach_px: float | None = None  # None: the scorer's reach_um at its mpp; 0: the true mask as it is
    extraction_source: str = "defaults"

    def __post_init__(self) -> None:
        if self.scoring is None:
            from tdkstain.scoring import CellParams

            self.scoring = ScoringParams(cells=CellParams(mpp=self.extraction.nuclei.mpp))
        self.scoring.validate()
        if self.membrane_reach_px is None:
            self.membrane_reach_px = self.scoring.cells.px(self.scoring.cells.reach_um)
        if not (_number(self.membrane_reach_px) and 0 <= self.membrane_reach_px <= 100):
            raise TdkstainError(f"membrane_reach_px must be 0 to 100 px, got {self.membrane_reach_px!r}")

    @property
    def stained_od(self) -> float:
        """tau: the scorer's weak (1+) membrane threshold, decadic DAB OD."""
        return float(self.scoring.cells.thresholds[0])

    @classmethod
    def for_dataset(cls, root: str | os.PathLike, split: str = "test") -> "TruthParams":
        """The settings of a dataset, as ``tdkstain evaluate`` resolves them (``resolve_extraction_params``)."""
        from tdkstain.evaluation.runner import resolve_extraction_params

        extraction, source = resolve_extraction_params(Path(root) / f"{split}_IHC", None)
        return cls(extraction=extraction, extraction_source=source)

    def to_dict(self) -> dict:
        return {"extraction": self.extraction.to_dict(), "extraction_source": self.extraction_source,
                "scoring": self.scoring.to_dict(), "stained_od": self.stained_od, "match_radius_px": self.match_radius_px,
                "membrane_reach_px": self.membrane_reach_px}


@dataclass
class RealTile:
    """What the measures need from the real IHC tile, computed once for every generated version of it."""

    rgb: np.ndarray = field(repr=False)  # (H, W, 3) uint8
    dab: np.ndarray = field(repr=False)  # (H, W) float64 decadic DAB OD
    tissue: np.ndarray = field(repr=False)  # (H, W) bool
    stained_truth: np.ndarray = field(repr=False)  # (H, W) bool: S_true (true membrane within reach, stained)
    her2: str | None  # the scorer's reading of the real tile
    h_score: float
    tumour_cells: int


def _rgb(image: Any, what: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise TdkstainError(f"{what}: expected an (H, W, 3) uint8 RGB image, got shape {image.shape} dtype {image.dtype}")
    return image


def _decadic_dab(rgb: np.ndarray) -> np.ndarray:
    from tdkstain.knowledge.stain import OD_PER_HED_UNIT, dab_od

    return dab_od(rgb) * OD_PER_HED_UNIT


def _check_frame(truth: TruthTile, shape: tuple[int, ...], what: str) -> None:
    if truth.misregister != 0:
        raise TdkstainError(f"{truth.path}: misregister {truth.misregister:g} px: the true membrane is not in the "
                            f"H&E's frame, so pixel measures against it would be wrong; {MISREGISTER_FIX}")
    if tuple(shape[:2]) != (truth.size, truth.size):
        raise TdkstainError(f"{what} is {shape[1]} x {shape[0]} px but {truth.path.name} describes a "
                            f"{truth.size} x {truth.size} px tile")


def prepare_real(real: np.ndarray, truth: TruthTile, params: TruthParams) -> RealTile:
    """DAB OD, tissue mask, ``S_true`` and the HER2 reading of the real IHC tile ``(H, W, 3)`` uint8."""
    from tdkstain.knowledge.maps import _dilate, tissue_mask
    from tdkstain.scoring import score_tile

    real = _rgb(real, f"real IHC of {truth.stem}")
    _check_frame(truth, real.shape, f"the real IHC of {truth.stem}")
    dab = _decadic_dab(real)
    result = score_tile(real, params.scoring).result
    membrane = _dilate(truth.membrane, int(round(params.membrane_reach_px)))  # a disk, radius in whole pixels
    return RealTile(rgb=real, dab=dab, tissue=tissue_mask(real), stained_truth=membrane & (dab >= params.stained_od),
                    her2=result.score, h_score=float(result.h_score), tumour_cells=int(result.tumour_cells))


def truth_measures(generated: np.ndarray, real: np.ndarray | RealTile, truth: TruthTile, params: TruthParams) -> dict:
    """Every measure of one generated tile against the truth (see the module docstring and :data:`DEFINITIONS`).

    Args:
        generated: ``(H, W, 3)`` uint8, the virtual IHC of the tile's H&E (H&E frame).
        real: the real IHC ``(H, W, 3)`` uint8, or its :func:`prepare_real` (computed once per tile).
        truth: :func:`read_truth` of the tile (``misregister`` must be 0).
        params: :class:`TruthParams` (``TruthParams.for_dataset(root)``).
    Returns:
        A flat dict of JSON-able numbers (NaN where undefined, ``inf`` PSNR for identical tiles).
    """
    from tdkstain.knowledge.nuclei import detect_nuclei, match_centroids
    from tdkstain.metrics.image import psnr, ssim
    from tdkstain.scoring import score_tile

    generated = _rgb(generated, f"generated tile {truth.stem}")
    _check_frame(truth, generated.shape, f"the generated tile {truth.stem}")
    real_tile = real if isinstance(real, RealTile) else prepare_real(real, truth, params)
    dab = _decadic_dab(generated)
    membrane = truth.membrane
    difference = dab[membrane] - real_tile.dab[membrane]
    stained = (dab >= params.stained_od) & real_tile.tissue
    intersection = int(np.count_nonzero(stained & real_tile.stained_truth))
    union = int(np.count_nonzero(stained | real_tile.stained_truth))
    found = detect_nuclei(generated, params.extraction.nuclei)
    match = match_centroids(found, truth.he_nuclei, radius=params.match_radius_px)
    score = score_tile(generated, params.scoring).result
    return {
        "stem": truth.stem,
        "her2": truth.her2,
        "membrane_pixels": int(membrane.sum()),
        "dab_abs_error": float(np.abs(difference).mean()) if difference.size else math.nan,
        "dab_signed_error": float(difference.mean()) if difference.size else math.nan,
        "membrane_intersection": intersection,
        "membrane_union": union,
        "membrane_iou": intersection / union if union else math.nan,
        "nuclei_true": len(truth.he_nuclei),
        "nuclei_detected": len(found),
        "nuclei_count_error": len(found) - len(truth.he_nuclei),
        "nuclei_tp": match.tp,
        "nuclei_precision": match.precision,
        "nuclei_recall": match.recall,
        "nuclei_f1": match.f1,
        "her2_generated": score.score,
        "h_score_generated": float(score.h_score),
        "tumour_cells_generated": int(score.tumour_cells),
        "her2_real": real_tile.her2,
        "h_score_real": real_tile.h_score,
        "tumour_cells_real": real_tile.tumour_cells,
        "ssim": ssim(real_tile.rgb, generated),
        "psnr": psnr(real_tile.rgb, generated),
    }


# Fields of a truth_measures dict that are labels, not numbers (None there means "not scorable").
LABEL_FIELDS = ("stem", "her2", "her2_generated", "her2_real")


def measures_from_json(row: dict) -> dict:
    """A :func:`truth_measures` dict read back from JSON written with ``plumbing.jsonsafe.json_safe``:
    numbers' ``null`` -> NaN and ``"inf"`` -> inf; labels as they are."""
    def number(value: Any) -> Any:
        if value is None:
            return math.nan
        return float(value) if isinstance(value, str) else value

    return {key: value if key in LABEL_FIELDS else number(value) for key, value in row.items()}


# ----------------------------------------------------------------------------- one run's summary (the study, the demo)


def finite_values(values: Any) -> np.ndarray:
    """The finite entries of ``values`` (None counts as NaN), as a flat float64 array."""
    array = np.asarray([np.nan if v is None else v for v in values], np.float64).reshape(-1)
    return array[np.isfinite(array)]


def mean_of(values: Any) -> float:
    """Mean of the finite entries of ``values``; NaN when there is none."""
    array = finite_values(values)
    return float(array.mean()) if array.size else math.nan


@dataclass(frozen=True)
class Metric:
    """One measure of a run: its per-run value, direction and (for per-tile measures) the tile field."""

    key: str
    label: str
    better: str  # "higher", "lower", or "zero" (a signed error)
    digits: int
    definition: str  # of the per-run value
    per_tile: bool = True  # a per-tile value exists (for the Wilcoxon test over tiles)


METRICS: tuple[Metric, ...] = (
    Metric("dab_abs_error", "DAB error in true membranes (OD)", "lower", 3,
           "mean over the run's test tiles with membrane of dab_abs_error"),
    Metric("dab_signed_error", "DAB bias in true membranes (OD)", "zero", 3,
           "mean over the run's test tiles with membrane of dab_signed_error (negative: under-stained)"),
    Metric("membrane_iou", "stained-membrane IoU", "higher", 3,
           "pooled over the run's test tiles: sum of intersections / sum of unions (the per-tile IoU, where "
           "defined, is what the Wilcoxon test compares)"),
    Metric("nuclei_count_error", "nuclei count error", "zero", 2,
           "mean over test tiles of detected - true nuclei"),
    Metric("nuclei_count_abs_error", "nuclei count MAE", "lower", 2, "mean over test tiles of |detected - true|"),
    Metric("nuclei_f1", "nuclei F1", "higher", 3, "mean over test tiles of the per-tile F1"),
    Metric("nuclei_precision", "nuclei precision", "higher", 3, "mean over test tiles"),
    Metric("nuclei_recall", "nuclei recall", "higher", 3, "mean over test tiles"),
    Metric("her2_kappa_truth", "HER2 kappa vs truth", "higher", 3,
           "quadratic-weighted kappa of the generated tiles' HER2 score (tdkstain score) against the true label, "
           "over the run's tiles scorable on the generated side", per_tile=False),
    Metric("her2_kappa_real", "HER2 kappa vs real IHC", "higher", 3,
           "quadratic-weighted kappa of the generated tiles' HER2 score against the real IHC's score, over tiles "
           "scorable on both", per_tile=False),
    Metric("ssim", "SSIM", "higher", 4, "mean over test tiles"),
    Metric("psnr", "PSNR (dB)", "higher", 2, "mean over test tiles with finite PSNR"),
)
BY_HER2 = ("dab_abs_error", "membrane_iou")  # also reported per true HER2 score

def tile_values(row: dict) -> dict[str, float]:
    """The per-tile value of every per-tile metric (NaN where undefined)."""
    return {
        "dab_abs_error": row["dab_abs_error"], "dab_signed_error": row["dab_signed_error"],
        "membrane_iou": row["membrane_iou"], "nuclei_count_error": float(row["nuclei_count_error"]),
        "nuclei_count_abs_error": float(abs(row["nuclei_count_error"])), "nuclei_f1": row["nuclei_f1"],
        "nuclei_precision": row["nuclei_precision"], "nuclei_recall": row["nuclei_recall"], "ssim": row["ssim"],
        "psnr": row["psnr"] if math.isfinite(row["psnr"]) else math.nan,
    }


def her2_kappa(rows: list[dict], reference: str) -> tuple[float, int]:
    """Quadratic kappa of ``her2_generated`` against ``rows[reference]`` over the tiles scorable on both; (kappa, n)."""
    from tdkstain.scoring.agreement import quadratic_kappa
    from tdkstain.scoring.her2 import SCORES

    both = [(r[reference], r["her2_generated"]) for r in rows if r[reference] in SCORES and r["her2_generated"] in SCORES]
    return quadratic_kappa([SCORES.index(a) for a, _ in both], [SCORES.index(b) for _, b in both]), len(both)


def _pooled_iou(rows: list[dict]) -> float:
    union = sum(r["membrane_union"] for r in rows)
    return sum(r["membrane_intersection"] for r in rows) / union if union else math.nan


def run_values(rows: list[dict]) -> dict[str, Any]:
    """One run's value of every metric (see :data:`METRICS`), per-HER2 values and the kappas' tile counts."""
    from tdkstain.scoring.her2 import SCORES

    tiles = [tile_values(r) for r in rows]
    values = {m.key: mean_of([t[m.key] for t in tiles]) for m in METRICS if m.per_tile}
    values["membrane_iou"] = _pooled_iou(rows)
    values["her2_kappa_truth"], scored_truth = her2_kappa(rows, "her2")
    values["her2_kappa_real"], scored_real = her2_kappa(rows, "her2_real")
    by_her2 = {}
    for label in SCORES:
        group = [r for r in rows if r["her2"] == label]
        if group:
            by_her2[label] = {"tiles": len(group), "dab_abs_error": mean_of([r["dab_abs_error"] for r in group]),
                              "membrane_iou": _pooled_iou(group)}
    return {"values": values, "by_her2": by_her2, "her2_scored_vs_truth": scored_truth,
            "her2_scored_vs_real": scored_real, "tiles": len(rows)}
