"""HER2 scoring of IHC by the ASCO/CAP 2018 guideline: cells, membranes, scores, agreement.

- :mod:`.cells`: nuclei, cells grown from them, membrane rings and their DAB.
- :mod:`.her2`: which cells are tumour cells, and the guideline's score of a region.
- :mod:`.tile`: :func:`score_tile`, both for one tile.
- :mod:`.outputs`: cells table, QuPath GeoJSON, ring overlay.
- :mod:`.run`: :func:`score_images`, ``tdkstain score`` on files and folders.

Research use only: an automated reading of membrane DAB, never a diagnosis.
See docs/her2_scoring.md for the method, its validation and its limits.
"""

from tdkstain.scoring.cells import CellParams, Cells, measure_cells
from tdkstain.scoring.her2 import SCORES, TUMOUR_RULES, RegionScore, ScoringParams, pooled_score, score_cells, tumour_cells
from tdkstain.scoring.tile import TileScore, score_tile

__all__ = [
    "SCORES",
    "TUMOUR_RULES",
    "CellParams",
    "Cells",
    "RegionScore",
    "ScoringParams",
    "TileScore",
    "measure_cells",
    "pooled_score",
    "score_cells",
    "score_tile",
    "tumour_cells",
]
