"""Knowledge extraction for a whole dataset: every IHC tile -> DAB image, membrane mask, nuclei.

``extract_dataset`` runs ``knowledge.extract_tile`` over every pair that
``pairs.discover_pairs`` finds and writes, beside the data and in the
release's folder names (so data prepared by either tool works in both)::

    ROOT/{split}_IHC_dab/STEM.png         DAB-only RGB image K_M, uint8
    ROOT/{split}_IHC_dab_mask/STEM.png    membrane mask M, uint8 0..255
    ROOT/{split}_IHC_nuclei_map/STEM.png  nuclei density K_N, uint8 (min-max)
                          .../STEM.tif    or float32 (count-preserving)
    ROOT/{split}_IHC_nuclei/STEM.csv      centroids, header ``x,y`` (x = column)
    ROOT/extraction.json                  the parameters, calibration, status
    ROOT/extraction_report/               quality report (index.html, plots)

Rules that make a rerun cheap and an interruption harmless:

- Every file is written atomically (``atomic.atomic_path``); a killed run
  leaves at most ``.tmp-*`` files, which the next run deletes.
- ``extraction.json`` is written *before* the first tile with
  ``"complete": false`` and rewritten at the end, so an interrupted run
  resumes with the same parameters.
- A tile is skipped when all its outputs exist and are at least as new as
  its IHC file, and ``extraction.json`` holds the same parameters.
- Parameters that differ from those in ``extraction.json`` are refused
  unless ``force=True``, which then re-extracts every tile: a dataset never
  mixes maps made with two settings, since training reads one setting.
- Results do not depend on the number of workers: each tile is computed
  alone, from its own file, by the same deterministic function.

``evaluate_against_truth`` compares the extracted knowledge of a
``tdkstain synth`` dataset with its ground truth; ``write_quality_report``
summarises a dataset for a person (issue 10).

The package: ``records`` (results, CSV and ``extraction.json`` formats),
``dataset`` (the run), ``truth`` (evaluation against synth truth),
``report`` (the quality report).
"""

from __future__ import annotations

from tdkstain.knowledge.extraction.dataset import calibrate, extract_dataset
from tdkstain.knowledge.extraction.records import (
    CENTROID_DECIMALS,
    EXTRACTION_JSON,
    HER2_ORDER,
    REPORT_DIR,
    ExtractionSummary,
    TileResult,
    format_centroids_csv,
    load_extraction_params,
    parse_centroids_csv,
    read_centroids_csv,
    read_extraction_record,
)
from tdkstain.knowledge.extraction.report import stained_fraction_check, write_quality_report
from tdkstain.knowledge.extraction.truth import TruthEvaluation, evaluate_against_truth

__all__ = [
    "CENTROID_DECIMALS",
    "EXTRACTION_JSON",
    "HER2_ORDER",
    "REPORT_DIR",
    "ExtractionSummary",
    "TileResult",
    "TruthEvaluation",
    "calibrate",
    "evaluate_against_truth",
    "extract_dataset",
    "format_centroids_csv",
    "load_extraction_params",
    "parse_centroids_csv",
    "read_centroids_csv",
    "read_extraction_record",
    "stained_fraction_check",
    "write_quality_report",
]
