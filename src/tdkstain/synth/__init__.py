"""Synthetic paired H&E / HER2 IHC tissue with known truth (``tdkstain synth``).

``render_pair`` draws one pair (H&E, warped consecutive IHC section, nuclei
centroids with cell types, true membrane mask, tissue mask, HER2 score);
``write_dataset`` writes many in the release layout with truth files. The
method and every number are documented in ``docs/synth.md``; modules:
``fields`` (random fields), ``tissue`` (one pair), ``dataset`` (files).
"""

from __future__ import annotations

from tdkstain.synth.dataset import DatasetSummary, pair_seed, plan_dataset, write_dataset
from tdkstain.synth.tissue import (
    CELL_TYPES,
    FAILURES,
    HER2_LABELS,
    MPP_20X,
    MPP_40X,
    RGB_FROM_HED,
    SynthPair,
    her2_label,
    normalise_failure,
    parse_failures,
    render_pair,
)

__all__ = [
    "CELL_TYPES",
    "FAILURES",
    "HER2_LABELS",
    "MPP_20X",
    "MPP_40X",
    "RGB_FROM_HED",
    "DatasetSummary",
    "SynthPair",
    "her2_label",
    "normalise_failure",
    "pair_seed",
    "parse_failures",
    "plan_dataset",
    "render_pair",
    "write_dataset",
]
