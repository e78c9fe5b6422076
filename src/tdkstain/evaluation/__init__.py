"""Evaluation of generated IHC (``tdkstain evaluate``): the paper's metrics and knowledge analyses.

Modules: ``pairing`` (real / generated files by stem, HER2 labels),
``analyses`` (nuclei count and membrane error curves, Fig. 3),
``runner`` (streaming evaluation of one or several methods, metrics.json,
per_image.csv), ``report`` (plots, tile grids, index.html). The downstream
HER2 classifier (Table 2) lives in ``tdkstain.evaluation.classifier``.
"""

from __future__ import annotations

from tdkstain.evaluation.analyses import (
    MEMBRANE_THRESHOLDS,
    TileAnalysis,
    aggregate,
    compare_tile,
    dab_saturation,
    membrane_masks,
    real_knowledge,
    remove_dab,
)
from tdkstain.evaluation.pairing import ImagePair, Pairing, pair_by_stem, read_labels_csv
from tdkstain.evaluation.runner import EvaluationOptions, evaluate, parse_compare

__all__ = [
    "MEMBRANE_THRESHOLDS",
    "EvaluationOptions",
    "ImagePair",
    "Pairing",
    "TileAnalysis",
    "aggregate",
    "compare_tile",
    "dab_saturation",
    "evaluate",
    "membrane_masks",
    "pair_by_stem",
    "parse_compare",
    "read_labels_csv",
    "real_knowledge",
    "remove_dab",
]
