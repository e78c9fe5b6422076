"""HER2 scoring (``tdkstain.scoring``) on synthetic IHC of known score, per failure case.

The synthetic data (``tdkstain.synth.render_pair``) knows each tile's HER2
score and each nucleus's centroid and type (tumour, fibroblast, lymphocyte).
For clean tiles (``--clean``, balanced over the four scores) and every failure
case of ``synth.FAILURES`` (``--per-failure``, the first tiles of the clean
set, so the same tissue with the failure added), each tile's *real* IHC is
scored with:

- ``default``: the default settings (``ScoringParams()``), at the tile's
  scale (``mpp`` 0.5; 0.25 for ``scale-40x``, as ``--mpp 0.25`` would give);
- ``rule-all``: the same cells with ``--tumour-rule all``;
- ``subtract-bg``: ``CellParams(subtract_background=True)``;
- ``mpp-0.5`` (``scale-40x`` only): the 40x tile scored at the default 0.5
  um/px, i.e. a user who forgot ``--mpp``.

Per case and setting: tiles, scorable tiles, accuracy and quadratic kappa
(with a 2000-resample percentile bootstrap CI) over the scorable tiles
(``scoring.agreement.score_agreement``, truth as "real"), the confusion matrix
(rows truth, columns scored, plus not scorable), and the tumour rule's
precision / recall against the synthetic truth: detected cells are matched
one-to-one to true nuclei by centroid within 4 um (Hungarian assignment);
precision = rule-tumour cells matched to a true tumour nucleus / rule-tumour
cells; recall = true tumour nuclei matched to a rule-tumour cell / true tumour
nuclei (detector misses included); rule recall = the same over true tumour
nuclei the detector found (the rule alone).

Writes ``her2_scoring_truth.json``, ``her2_scoring_truth.md`` and
``her2_scoring_truth_confusion.png`` into ``--out``. Run from the repository
root (about 3 min on 2 cores at the defaults)::

    .venv/bin/python benchmarks/her2_scoring_truth.py --workers 2
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _limits import machine  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MATCH_UM = 4.0  # a detected cell and a true nucleus match when their centroids lie within this
CLASSES = ("0", "1+", "2+", "3+")

# What each failure case is (docs/synth.md) and the scale it is drawn at.
WHAT = {
    "none": "clean tiles",
    "tint-dab": "a faint brown cast over the whole tile, DAB OD 0.15-0.21 (rgb2hed 0.025-0.035)",
    "tint-grey": "a neutral grey cast, OD 0.07-0.12 on every channel (rgb2hed 0.012-0.020)",
    "weak-counterstain": "haematoxylin at 35 %",
    "strong-counterstain": "haematoxylin at 190 %",
    "blur": "out of focus, Gaussian sigma 0.9 um (1.8 px at 20x; clean 0.45 px)",
    "jpeg": "JPEG round trip, quality 60-75, 4:2:0",
    "scale-20x": "0.5 um/px (the default scale, listed for completeness)",
    "scale-40x": "0.25 um/px, scored with --mpp 0.25",
}


def _settings(failure: str, mpp: float):
    """(name, ScoringParams, reuse): ``reuse`` names the setting whose cells a setting rescores (tumour rule only)."""
    from tdkstain.scoring import CellParams, ScoringParams

    out = [
        ("default", ScoringParams(cells=CellParams(mpp=mpp)), None),
        ("rule-all", ScoringParams(cells=CellParams(mpp=mpp), tumour_rule="all"), "default"),
        ("subtract-bg", ScoringParams(cells=CellParams(mpp=mpp, subtract_background=True)), None),
    ]
    if failure == "scale-40x":
        out.append(("mpp-0.5", ScoringParams(), None))
    return out


def _match(detected: np.ndarray, truth: np.ndarray, radius_px: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matches of detected to true centroids ((N, 2), (M, 2) px) within ``radius_px``: index arrays."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    if len(detected) == 0 or len(truth) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    distance = cdist(detected, truth)
    cost = np.where(distance <= radius_px, distance, 1e6)
    rows, cols = linear_sum_assignment(cost)
    keep = distance[rows, cols] <= radius_px
    return rows[keep], cols[keep]


def _tumour_counts(tumour: np.ndarray, centroid: np.ndarray, truth_xy: np.ndarray, truth_types: np.ndarray,
                   mpp: float) -> dict[str, int]:
    """Counts behind the tumour rule's precision and recall on one tile."""
    det, tru = _match(centroid, truth_xy, MATCH_UM / mpp)
    true_tumour = truth_types == "tumour"
    matched_type = np.full(len(centroid), "", dtype=object)
    matched_type[det] = truth_types[tru]
    found_tumour = np.zeros(len(truth_xy), bool)  # true tumour nuclei matched to any detected cell
    found_tumour[tru[true_tumour[tru]]] = True
    called = np.zeros(len(truth_xy), bool)  # ... matched to a cell the rule calls tumour
    called[tru[true_tumour[tru] & tumour[det]]] = True
    return {
        "rule_tumour": int(tumour.sum()),
        "rule_tumour_true": int(np.sum(tumour & (matched_type == "tumour"))),
        "true_tumour": int(true_tumour.sum()),
        "true_tumour_found": int(found_tumour.sum()),
        "true_tumour_called": int(called.sum()),
        "detected": int(len(centroid)),
        "detected_matched": int(len(det)),
    }


def score_one(job: tuple[int, int, str, int]) -> list[dict]:
    """Worker: render one synthetic pair and score its IHC with every setting of its case."""
    import torch

    from tdkstain.scoring import measure_cells, score_cells, tumour_cells
    from tdkstain.synth import render_pair

    torch.set_num_threads(1)
    seed, her2, failure, size = job
    pair = render_pair(seed, size, her2, failure=failure)
    measured = {}
    rows = []
    for name, params, reuse in _settings(failure, pair.mpp):
        start = time.perf_counter()
        cells = measured[reuse] if reuse else measure_cells(pair.ihc, params.cells)
        measured[name] = cells
        tumour = tumour_cells(cells, params)
        result = score_cells(cells, params, tumour)
        rows.append({
            "seed": seed, "her2": CLASSES[her2], "failure": failure, "setting": name, "score": result.score,
            "reason": result.reason, "h_score": result.h_score, "cells": result.cells,
            "tumour_cells": result.tumour_cells, "seconds": time.perf_counter() - start,
            **_tumour_counts(tumour, cells.centroid, pair.nuclei, np.asarray(pair.cell_types), pair.mpp),
        })
    return rows


def _ratio(a: int, b: int) -> float:
    return a / b if b else math.nan


def summarise(rows: list[dict], resamples: int) -> list[dict]:
    """Per (case, setting): counts, accuracy, kappa and CI, confusion, tumour precision / recall."""
    from tdkstain.scoring.agreement import score_agreement

    out = []
    keys = list(dict.fromkeys((r["failure"], r["setting"]) for r in rows))
    for failure, setting in keys:
        group = [r for r in rows if r["failure"] == failure and r["setting"] == setting]
        truth = [r["her2"] for r in group]
        scored = [r["score"] for r in group]
        agreement = score_agreement(truth, scored, resamples=resamples, seed=0)
        confusion = [[sum(1 for t, s in zip(truth, scored) if t == a and s == b) for b in (*CLASSES, None)]
                     for a in CLASSES]
        sums = {k: sum(r[k] for r in group) for k in ("rule_tumour", "rule_tumour_true", "true_tumour",
                                                      "true_tumour_found", "true_tumour_called", "detected",
                                                      "detected_matched")}
        out.append({
            "failure": failure, "setting": setting, "what": WHAT.get(failure, failure), "tiles": len(group),
            "scorable": agreement.scored, "accuracy": agreement.accuracy,
            "accuracy_all_tiles": sum(t == s for t, s in zip(truth, scored)) / len(group),
            "kappa": agreement.kappa, "kappa_ci95": list(agreement.kappa_ci95), "recall": agreement.recall,
            "confusion": confusion, "confusion_columns": [*CLASSES, "not scorable"],
            "tumour_precision": _ratio(sums["rule_tumour_true"], sums["rule_tumour"]),
            "tumour_recall": _ratio(sums["true_tumour_called"], sums["true_tumour"]),
            "rule_recall": _ratio(sums["true_tumour_called"], sums["true_tumour_found"]),
            "detection_recall": _ratio(sums["true_tumour_found"], sums["true_tumour"]),
            "mean_tumour_cells": float(np.mean([r["tumour_cells"] for r in group])),
            "mean_h_score": {c: float(np.mean([r["h_score"] for r in group if r["her2"] == c] or [math.nan]))
                             for c in CLASSES},
            "counts": sums,
            "seconds_per_tile": float(np.mean([r["seconds"] for r in group])),
        })
    return out


def _f(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown(summary: list[dict], header: dict) -> str:
    lines = [
        "# HER2 scoring on synthetic IHC of known score",
        "",
        f"`benchmarks/her2_scoring_truth.py`, {header['date']}, commit {header['commit']}, {header['cpu']}, "
        f"{header['workers']} workers, {header['seconds']:.0f} s. {header['tiles_clean']} clean tiles "
        f"({header['tiles_clean'] // 4} per score) and {header['tiles_failure']} per failure case (the first "
        f"clean tiles' tissue with the failure added), {header['size']} px. kappa: quadratic-weighted over the "
        "scorable tiles, 95 % percentile bootstrap CI (2000 resamples). Tumour precision / recall: the "
        f"tumour rule against the synthetic cell types (centroids matched within {MATCH_UM:g} um); rule recall "
        "counts only the true tumour nuclei the detector found.",
        "",
        "| case | setting | tiles | scorable | accuracy | kappa [95 % CI] | tumour precision | tumour recall | rule recall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        low, high = s["kappa_ci95"]
        ci = f" [{_f(low)}, {_f(high)}]" if not math.isnan(low) else ""
        lines.append(
            f"| {s['failure']} | {s['setting']} | {s['tiles']} | {s['scorable']} | {_f(s['accuracy'])} | "
            f"{_f(s['kappa'])}{ci} | {_f(s['tumour_precision'])} | {_f(s['tumour_recall'])} | {_f(s['rule_recall'])} |"
        )
    lines += ["", "## Confusion matrices, default setting (rows: truth 0, 1+, 2+, 3+; columns: scored 0, 1+, 2+, 3+, "
              "not scorable)", ""]
    for s in summary:
        if s["setting"] != "default":
            continue
        rows = "; ".join(f"{c}: {' '.join(str(v) for v in row)}" for c, row in zip(CLASSES, s["confusion"]))
        lines.append(f"- **{s['failure']}** ({s['what']}): {rows}")
    lines.append("")
    return "\n".join(lines)


def figure(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [s for s in summary if s["setting"] == "default"]
    cols = 3
    rows = math.ceil(len(cases) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.0 * rows), squeeze=False)
    for ax, s in zip(axes.ravel(), cases):
        matrix = np.asarray(s["confusion"], float)
        ax.imshow(matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                if matrix[i, j]:
                    ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=9,
                            color="white" if matrix[i, j] > 0.6 * matrix[i].sum() else "black")
        ax.set_xticks(range(5), ["0", "1+", "2+", "3+", "n/s"])
        ax.set_yticks(range(4), list(CLASSES))
        ax.set_title(f"{s['failure']}: kappa {_f(s['kappa'])}", fontsize=10)
        ax.set_xlabel("scored", fontsize=8)
        ax.set_ylabel("truth", fontsize=8)
    for ax in axes.ravel()[len(cases):]:
        ax.axis("off")
    fig.suptitle("HER2 scoring of synthetic IHC (default settings); n/s: not scorable", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clean", type=int, default=48, help="clean tiles, a multiple of 4 (default 48)")
    parser.add_argument("--per-failure", type=int, default=24, help="tiles per failure case, multiple of 4 (default 24)")
    parser.add_argument("--size", type=int, default=512, help="tile side, px (default 512)")
    parser.add_argument("--seed", type=int, default=20261207, help="first synth seed (default 20261207)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of kappa's CI (default 2000)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cpu-20261207"), help="output folder")
    args = parser.parse_args()
    if args.clean % 4 or args.per_failure % 4 or args.per_failure > args.clean:
        parser.error("--clean and --per-failure must be multiples of 4, --per-failure at most --clean")

    from tdkstain.plumbing.jsonsafe import json_safe
    from tdkstain.synth import FAILURES

    # tile i has score i % 4 and seed seed + i: any first k tiles are balanced
    jobs = [(args.seed + i, i % 4, "none", args.size) for i in range(args.clean)]
    jobs += [(args.seed + i, i % 4, failure, args.size) for failure in FAILURES for i in range(args.per_failure)]
    start = time.perf_counter()
    if args.workers > 0:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
            rows = [row for result in pool.map(score_one, jobs, chunksize=4) for row in result]
    else:
        rows = [row for job in jobs for row in score_one(job)]
    seconds = time.perf_counter() - start
    summary = summarise(rows, args.resamples)
    header = {**machine(), "workers": args.workers, "seconds": seconds, "tiles_clean": args.clean,
              "tiles_failure": args.per_failure, "size": args.size, "seed": args.seed}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "her2_scoring_truth.json").write_text(json.dumps(
        json_safe({"machine": header, "summary": summary, "tiles": rows}), separators=(",", ":")))
    text = markdown(summary, header)
    (out / "her2_scoring_truth.md").write_text(text)
    figure(summary, out / "her2_scoring_truth_confusion.png")
    print(text)


if __name__ == "__main__":
    main()
