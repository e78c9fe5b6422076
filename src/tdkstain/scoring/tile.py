"""Score one IHC tile: its cells (``scoring.cells``), its tumour cells and the guideline's reading (``scoring.her2``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tdkstain.scoring.cells import Cells, measure_cells
from tdkstain.scoring.her2 import RegionScore, ScoringParams, score_cells, tumour_cells

__all__ = ["EOSIN_LIMIT_OD", "TileScore", "he_warning", "score_tile"]


# Median eosin optical density over tissue above which an image is H&E rather than IHC. On IHC (haematoxylin
# counterstain + DAB) colour deconvolution leaves ~0 in the eosin channel (0.00 on the synthetic and the
# real colon IHC); H&E tissue holds 0.12-0.21 (the synthetic H&E, the TIAToolbox H&E tiles). Halfway-ish.
EOSIN_LIMIT_OD = 0.08
# Pixels darker than this optical density (sum over RGB channels) are tissue for the check above.
TISSUE_OD = 0.3


def he_warning(rgb: np.ndarray) -> str | None:
    """A warning when ``rgb`` looks like H&E, not IHC (eosin on its tissue), else None.

    Scoring reads the DAB channel of a colour deconvolution; eosin's pink puts
    brown-channel density into every cell of an H&E image, so an H&E scored by
    mistake reads as HER2-positive.
    """
    from tdkstain.knowledge.stain import OD_PER_HED_UNIT, rgb_to_hed

    rgb = np.asarray(rgb)
    step = max(1, int(max(rgb.shape[:2]) // 512))  # a subsample is enough for a median
    small = rgb[::step, ::step]
    od = -np.log10(np.maximum(small.astype(np.float64) / 255.0, 1 / 255.0)).sum(axis=-1)
    tissue = od > TISSUE_OD
    if tissue.mean() < 0.05:
        return None
    eosin = float(np.median(rgb_to_hed(small)[..., 1][tissue])) * OD_PER_HED_UNIT
    if eosin <= EOSIN_LIMIT_OD:
        return None
    return (f"looks like H&E, not IHC: its tissue holds eosin (median OD {eosin:.2f}; IHC has ~0), which scoring "
            "would read as DAB; score the IHC (real, or translated from this H&E)")


@dataclass
class TileScore:
    """Everything scoring found in one tile: the cells, which are tumour cells, and the score."""

    cells: Cells
    tumour: np.ndarray  # (N,) bool
    result: RegionScore
    params: ScoringParams

    @property
    def score(self) -> str | None:
        return self.result.score


def score_tile(ihc: np.ndarray, params: ScoringParams | None = None, device: str = "cpu") -> TileScore:
    """Measure the cells of an IHC tile and score its tumour cells by the guideline.

    Args:
        ihc: (H, W, 3) uint8 RGB IHC at ``params.cells.mpp`` microns per pixel.
        params: scoring settings (default :class:`ScoringParams`).
        device: where nuclei seeds are found (``"cpu"`` or a torch device).
    """
    params = (params or ScoringParams()).validate()
    cells = measure_cells(ihc, params.cells, device=device)
    tumour = tumour_cells(cells, params)
    return TileScore(cells=cells, tumour=tumour, result=score_cells(cells, params, tumour), params=params)
