"""Extracted knowledge against the known truth of a ``tdkstain synth`` dataset."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tdkstain.plumbing.errors import TdkstainError
from tdkstain.knowledge.extraction.records import HER2_ORDER, load_extraction_params, read_centroids_csv

# --------------------------------------------------------------------------- evaluation against synthetic truth


@dataclass
class TruthEvaluation:
    """Extracted knowledge against the truth of a ``tdkstain synth`` dataset.

    ``rows``: one dict per group ("all", "failure=<case>", "her2=<score>")
    with ``tiles``, ``nuclei_precision``, ``nuclei_recall``, ``nuclei_f1``
    (pooled TP/FP/FN over the group's tiles, 6 px matching radius),
    ``count_error_median_pct`` and ``count_error_mean_pct`` (per tile
    ``|found - true| / max(true, 1) * 100``) and ``membrane_iou`` (pooled
    intersection over pooled union of the binary membrane masks).
    ``per_tile``: the same numbers per tile.
    """

    rows: list[dict]
    per_tile: list[dict]
    radius: float
    params: dict = field(default_factory=dict)

    def row(self, group: str = "all") -> dict:
        for r in self.rows:
            if r["group"] == group:
                return r
        raise KeyError(f"no group {group!r}; groups: {[r['group'] for r in self.rows]}")

    def to_markdown(self) -> str:
        head = ["group", "tiles", "nuclei F1", "precision", "recall", "count err median %", "count err mean %", "membrane IoU"]
        keys = ["group", "tiles", "nuclei_f1", "nuclei_precision", "nuclei_recall", "count_error_median_pct", "count_error_mean_pct", "membrane_iou"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for r in self.rows:
            cells = []
            for k in keys:
                v = r[k]
                if isinstance(v, float):
                    cells.append("n/a" if math.isnan(v) else (f"{v:.1f}" if k.endswith("_pct") else f"{v:.3f}"))
                else:
                    cells.append(str(v))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _truth_files(root: Path, split: str | None, stem: str) -> tuple[Path, Path]:
    folder = root / f"{split}_truth"
    return folder / f"{stem}.json", folder / f"{stem}_membrane.png"


def _group_row(group: str, tiles: list[dict]) -> dict:
    tp = sum(t["tp"] for t in tiles)
    fp = sum(t["fp"] for t in tiles)
    fn = sum(t["fn"] for t in tiles)
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    errors = np.array([t["count_error_pct"] for t in tiles], dtype=np.float64)
    intersection = sum(t["membrane_intersection"] for t in tiles)
    union = sum(t["membrane_union"] for t in tiles)
    return {
        "group": group,
        "tiles": len(tiles),
        "nuclei_precision": float(precision),
        "nuclei_recall": float(recall),
        "nuclei_f1": float(f1),
        "count_error_median_pct": float(np.median(errors)) if len(errors) else float("nan"),
        "count_error_mean_pct": float(np.mean(errors)) if len(errors) else float("nan"),
        "membrane_iou": float(intersection / union) if union else float("nan"),
    }


def evaluate_against_truth(
    root: str | os.PathLike,
    split: str | None = None,
    *,
    radius: float = 6.0,
    progress: bool = False,
) -> TruthEvaluation:
    """Compare the extracted centroids and membrane masks of a synth dataset with its truth.

    Nuclei: ``nuclei.match_centroids`` with ``radius`` px (6 px, issue 2).
    Membrane: the binary (unblurred) membrane mask recomputed from the IHC
    tile with the parameters in ``extraction.json``
    (``knowledge.membrane_mask_binary``) against the true stained membrane
    (``{split}_truth/STEM_membrane.png``) by ``knowledge.membrane_iou``, the
    protocol ``knowledge`` documents; intersection and union are pooled over
    the tiles of a group, so tiles without any true membrane (HER2 0) count.

    Raises:
        TdkstainError: no extraction yet, or no truth files (not a synth dataset).
    """
    from tqdm import tqdm

    from tdkstain.data import images
    from tdkstain.knowledge import maps as knowledge
    from tdkstain.knowledge.nuclei import match_centroids
    from tdkstain.data.pairs import discover_pairs, knowledge_paths

    root = Path(root)
    params = load_extraction_params(root)
    pairs = discover_pairs(root, split=split)
    with_truth = [p for p in pairs if _truth_files(root, p.split, p.stem)[0].exists()]
    if not with_truth:
        raise TdkstainError(
            f"{root}: no ground truth ({{split}}_truth/STEM.json) for any pair; "
            "--evaluate-against-truth works on data made by 'tdkstain synth'"
        )
    per_tile = []
    for pair in tqdm(with_truth, desc="evaluate", unit="tile", disable=None if progress else True, file=sys.stderr):
        truth_json, truth_membrane_png = _truth_files(root, pair.split, pair.stem)
        truth = json.loads(truth_json.read_text(encoding="utf-8"))
        truth_centroids = np.array([(n["y"], n["x"]) for n in truth.get("nuclei", [])], dtype=np.float64).reshape(-1, 2)
        paths = knowledge_paths(root, pair.split, pair.stem)
        if not Path(paths.nuclei_csv).exists():
            raise TdkstainError(f"{paths.nuclei_csv}: missing; run 'tdkstain extract {root}' first")
        found = read_centroids_csv(paths.nuclei_csv)
        match = match_centroids(found, truth_centroids, radius=radius)
        ihc = images.read_rgb(pair.ihc)
        membrane = knowledge.membrane_mask_binary(ihc, params.membrane)
        truth_membrane = images.read_gray(truth_membrane_png) > 0
        intersection, union = knowledge.membrane_overlap(membrane, truth_membrane)
        true_count = len(truth_centroids)
        per_tile.append(
            {
                "split": pair.split,
                "stem": pair.stem,
                "her2": truth.get("her2", pair.label),
                "failure": truth.get("failure") or "none",
                "true_nuclei": true_count,
                "found_nuclei": len(found),
                "tp": int(match.tp),
                "fp": int(match.fp),
                "fn": int(match.fn),
                "nuclei_f1": float(match.f1),
                "count_error_pct": abs(len(found) - true_count) / max(true_count, 1) * 100.0,
                "membrane_intersection": int(intersection),
                "membrane_union": int(union),
                "membrane_iou": float(intersection / union) if union else float("nan"),
            }
        )
    rows = [_group_row("all", per_tile)]
    failures = sorted({t["failure"] for t in per_tile}, key=lambda f: (f != "none", f))
    if len(failures) > 1:
        rows += [_group_row(f"failure={f}", [t for t in per_tile if t["failure"] == f]) for f in failures]
    scores = [s for s in HER2_ORDER if any(t["her2"] == s for t in per_tile)]
    rows += [_group_row(f"her2={s}", [t for t in per_tile if t["her2"] == s]) for s in scores]
    return TruthEvaluation(rows=rows, per_tile=per_tile, radius=radius, params=params.to_dict())

