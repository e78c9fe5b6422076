"""Knowledge analyses of generated IHC (the paper's Fig. 3), per tile and aggregated.

Both real and generated IHC go through the same extraction code as training
(``tdkstain.knowledge.stain``, ``tdkstain.knowledge.nuclei`` with the dataset's ``extraction.json``
settings), so an error here is an error the training losses would see.

- Nuclei (Fig. 3a): ``nuclei.detect_nuclei`` on the real and on the
  generated tile; the per-tile count difference ``generated - real``; its
  histogram and mean absolute value.
- Membrane staining intensity (Fig. 3b-e): for every DAB saturation threshold
  ``t`` in 0.10, 0.12, ..., 0.50 the release's recipe gives a binary mask
  ``saturation(hed2rgb([0, 0, DAB])) > t`` of each tile. Two discrepancies
  per threshold: the pixel-wise mean absolute difference of the real and
  generated masks (the share of pixels where they disagree) and the
  difference of their stained-area fractions (generated - real, share of the
  whole tile). Curves are averaged over tiles, per HER2 score when labels exist.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tdkstain.knowledge import stain
from tdkstain.knowledge.maps import ExtractionParams, membrane_mask_binary
from tdkstain.knowledge.nuclei import detect_nuclei

# Fig. 3b-e of the paper: DAB saturation thresholds 0.10 to 0.50, step 0.02 (21 values).
MEMBRANE_THRESHOLDS: tuple[float, ...] = tuple(round(0.10 + 0.02 * i, 2) for i in range(21))

NUCLEI_DEFINITION = (
    "per tile: number of nuclei detected by tdkstain.knowledge.nuclei.detect_nuclei (extraction.json settings) on the "
    "generated IHC minus that on the real IHC; MAE = mean over tiles of its absolute value"
)
MEMBRANE_MAE_DEFINITION = (
    "per tile and threshold t in 0.10:0.02:0.50: mean over pixels of |M_real(t) - M_generated(t)| where "
    "M(t) = HSV saturation of hed2rgb([0, 0, DAB]) > t (the release's membrane recipe), then mean over tiles"
)
MEMBRANE_FRACTION_DEFINITION = (
    "per tile and threshold t: mean(M_generated(t)) - mean(M_real(t)), the difference of stained-area fractions "
    "of the whole tile (negative: the generator under-stains), then mean over tiles"
)
TRAINING_MASK_DEFINITION = (
    "per tile: mean over pixels of |M_real - M_generated| with the unblurred membrane mask of the training "
    "extraction settings (knowledge.membrane_mask_binary), then mean over tiles"
)


def dab_saturation(ihc: np.ndarray) -> np.ndarray:
    """HSV saturation of the DAB-only image (the quantity the release thresholds).

    Args:
        ihc: (H, W, 3) uint8 RGB IHC tile.
    Returns:
        (H, W) float64 in [0, 1].
    """
    return stain.saturation(stain.dab_rgb_float(ihc))


def membrane_masks(ihc: np.ndarray, thresholds: tuple[float, ...] = MEMBRANE_THRESHOLDS) -> np.ndarray:
    """Binary membrane masks of one tile at every threshold.

    Returns:
        (T, H, W) bool, ``[i] = dab_saturation(ihc) > thresholds[i]``.
    """
    sat = dab_saturation(ihc)
    return sat[None] > np.asarray(thresholds, np.float64)[:, None, None]


@dataclass
class TileAnalysis:
    """Knowledge comparison of one generated tile against its real tile."""

    nuclei_real: int
    nuclei_generated: int
    membrane_mae: np.ndarray  # (T,) float64, pixel-wise mean |M_real - M_gen| per threshold
    fraction_real: np.ndarray  # (T,) float64, stained-area fraction of the real tile per threshold
    fraction_generated: np.ndarray  # (T,) float64, same for the generated tile
    membrane_mae_training: float  # at the training extraction settings

    @property
    def nuclei_difference(self) -> int:
        return self.nuclei_generated - self.nuclei_real

    @property
    def fraction_difference(self) -> np.ndarray:
        return self.fraction_generated - self.fraction_real


@dataclass
class RealKnowledge:
    """What the analyses need from a real tile, computed once and reused for every compared method."""

    nuclei: int
    masks: np.ndarray  # (T, H, W) bool
    training_mask: np.ndarray  # (H, W) bool


def real_knowledge(ihc: np.ndarray, params: ExtractionParams, thresholds: tuple[float, ...] = MEMBRANE_THRESHOLDS) -> RealKnowledge:
    """Nuclei count and membrane masks of a real IHC tile ((H, W, 3) uint8)."""
    return RealKnowledge(
        nuclei=len(detect_nuclei(ihc, params.nuclei)),
        masks=membrane_masks(ihc, thresholds),
        training_mask=membrane_mask_binary(ihc, params.membrane),
    )


def compare_tile(
    real: RealKnowledge | np.ndarray,
    generated: np.ndarray,
    params: ExtractionParams | None = None,
    thresholds: tuple[float, ...] = MEMBRANE_THRESHOLDS,
) -> TileAnalysis:
    """Compare a generated IHC tile with its real tile.

    Args:
        real: the real tile, (H, W, 3) uint8, or its ``RealKnowledge``.
        generated: (H, W, 3) uint8 generated tile of the same size.
        params: extraction settings (default: the release's).
    """
    params = params or ExtractionParams()
    if isinstance(real, np.ndarray):
        real = real_knowledge(real, params, thresholds)
    masks = membrane_masks(generated, thresholds)
    if masks.shape != real.masks.shape:
        raise ValueError(f"generated tile {generated.shape[:2]} and real tile {real.masks.shape[1:]} differ in size")
    area = masks.shape[1] * masks.shape[2]
    disagree = np.count_nonzero(masks != real.masks, axis=(1, 2))
    training_mask = membrane_mask_binary(generated, params.membrane)
    return TileAnalysis(
        nuclei_real=real.nuclei,
        nuclei_generated=len(detect_nuclei(generated, params.nuclei)),
        membrane_mae=disagree / area,
        fraction_real=np.count_nonzero(real.masks, axis=(1, 2)) / area,
        fraction_generated=np.count_nonzero(masks, axis=(1, 2)) / area,
        membrane_mae_training=float(np.count_nonzero(training_mask != real.training_mask) / area),
    )


def remove_dab(ihc: np.ndarray) -> np.ndarray:
    """The IHC tile re-rendered without its DAB (Beer-Lambert with the DAB density set to 0).

    What a generator that ignores membranes produces. Args: (H, W, 3) uint8.
    Returns: (H, W, 3) uint8, rounded.
    """
    hed = stain.rgb_to_hed(ihc, clip=False)
    hed[..., 2] = 0.0
    return np.clip(np.rint(stain.hed_to_rgb(hed) * 255.0), 0, 255).astype(np.uint8)


def aggregate(
    analyses: list[TileAnalysis], labels: list[str | None], thresholds: tuple[float, ...] = MEMBRANE_THRESHOLDS
) -> dict:
    """Summaries of many tiles: nuclei MAE and histogram data, membrane curves overall and per HER2 score.

    Returns a JSON-able dict::

        {"tiles": N,
         "nuclei": {"mae", "mean_difference", "std_difference", "differences": [...], "definition"},
         "membrane": {"thresholds": [...],
                      "mask_mae": {"all": [...T], "0": [...], ...},
                      "fraction_difference": {...}, "abs_fraction_difference": {...},
                      "tiles_per_group": {...}, "mean_mask_mae": float,
                      "training_mask_mae": float, definitions...}}
    """
    if not analyses:
        raise ValueError("aggregate needs at least one tile")
    differences = np.array([a.nuclei_difference for a in analyses], np.float64)
    groups: dict[str, list[int]] = {"all": list(range(len(analyses)))}
    for label in ("0", "1+", "2+", "3+"):
        members = [i for i, lab in enumerate(labels) if lab == label]
        if members:
            groups[label] = members
    mae = np.stack([a.membrane_mae for a in analyses])
    diff = np.stack([a.fraction_difference for a in analyses])
    return {
        "tiles": len(analyses),
        "nuclei": {
            "mae": float(np.abs(differences).mean()),
            "mean_difference": float(differences.mean()),
            "std_difference": float(differences.std()),
            "differences": [int(d) for d in differences],
            "definition": NUCLEI_DEFINITION,
        },
        "membrane": {
            "thresholds": list(thresholds),
            "tiles_per_group": {g: len(m) for g, m in groups.items()},
            "mask_mae": {g: mae[m].mean(axis=0).tolist() for g, m in groups.items()},
            "fraction_difference": {g: diff[m].mean(axis=0).tolist() for g, m in groups.items()},
            "abs_fraction_difference": {g: np.abs(diff[m]).mean(axis=0).tolist() for g, m in groups.items()},
            "mean_mask_mae": float(mae.mean()),
            "training_mask_mae": float(np.mean([a.membrane_mae_training for a in analyses])),
            "mask_mae_definition": MEMBRANE_MAE_DEFINITION,
            "fraction_difference_definition": MEMBRANE_FRACTION_DEFINITION,
            "training_mask_mae_definition": TRAINING_MASK_DEFINITION,
        },
    }
