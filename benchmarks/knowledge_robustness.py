"""How well the knowledge maps survive scanner and staining failures, on synth tiles with known truth.

For every failure case (clean plus ``synth.FAILURES``) it draws ``--tiles``
tiles per HER2 score and measures, for each membrane setting (the release,
our adaptive mode, adaptive with a margin calibrated on that case's tiles):

- membrane IoU against the true stained membrane, pooled over the tiles
  (``knowledge.membrane_overlap``: both masks dilated by 2 px, unblurred mask);
- mean stained fraction of the tissue per HER2 score (should rise 0 < 1+ < 2+ < 3+).

Prints a markdown table. Run from the repository root::

    .venv/bin/python benchmarks/knowledge_robustness.py --tiles 3 --size 256

Extend it by adding a function ``metric(case: Case, setting: Setting) -> dict[str, str]``
to ``METRICS``: each returns its table cells by column name.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from tdkstain.knowledge import maps as knowledge
from tdkstain import synth
from tdkstain.knowledge.maps import MembraneParams

HER2_SCORES = (0, 1, 2, 3)


@dataclass
class Case:
    """The synth tiles of one failure case."""

    failure: str
    pairs: list  # synth.SynthPair


@dataclass
class Setting:
    """One way of extracting knowledge, a column group of the table."""

    name: str
    membrane: MembraneParams


def make_case(failure: str, tiles_per_score: int, size: int, seed: int) -> Case:
    """``tiles_per_score`` tiles of each HER2 score; the same seeds for every failure case."""
    pairs = [
        synth.render_pair(seed + 4 * index + score, size, score, failure=failure)
        for index in range(tiles_per_score)
        for score in HER2_SCORES
    ]
    return Case(failure, pairs)


def settings_for(case: Case) -> list[Setting]:
    """Release, adaptive (default margin), adaptive with a margin calibrated on the case's own tiles."""
    adaptive = MembraneParams(mode="adaptive")
    margin = knowledge.calibrate_membrane([p.ihc for p in case.pairs], adaptive)
    return [
        Setting("release", MembraneParams(mode="release")),
        Setting("adaptive", adaptive),
        Setting("adaptive+cal", replace(adaptive, threshold=margin, calibrated=True)),
    ]


# --------------------------------------------------------------------------- metrics


def membrane_iou_metric(case: Case, setting: Setting) -> dict[str, str]:
    """Membrane IoU (2 px tolerance) pooled over all tiles of the case."""
    intersection = union = 0
    for pair in case.pairs:
        mask = knowledge.membrane_mask_binary(pair.ihc, setting.membrane)
        i, u = knowledge.membrane_overlap(mask, pair.membrane_mask)
        intersection, union = intersection + i, union + u
    return {"IoU": f"{intersection / union:.3f}" if union else "n/a"}


def stained_fraction_metric(case: Case, setting: Setting) -> dict[str, str]:
    """Mean stained fraction of the tissue per HER2 score, and whether it rises with the score."""
    per_score: dict[int, list[float]] = {score: [] for score in HER2_SCORES}
    for pair in case.pairs:
        mask = knowledge.membrane_mask(pair.ihc, setting.membrane)
        per_score[pair.her2].append(knowledge.stained_fraction(mask, knowledge.tissue_mask(pair.ihc)))
    means = [float(np.mean(per_score[score])) for score in HER2_SCORES]
    rising = all(a < b for a, b in zip(means, means[1:]))
    return {"fraction 0/1+/2+/3+": "/".join(f"{m:.2f}" for m in means), "rises": "yes" if rising else "no"}


def nuclei_f1_metric(case: Case, setting: Setting) -> dict[str, str]:
    """Nuclei F1 (6 px, pooled TP/FP/FN) and median count error, nuclei mode = the setting's membrane mode.

    The adaptive nuclei mask sizes nuclei in microns; it is given each tile's
    true scale (``pair.mpp``), as a user states ``--mpp`` for a dataset. The
    release mode uses its pixel constants whatever the scale, as the release.
    """
    from tdkstain.knowledge.nuclei import NucleiParams, detect_nuclei, match_centroids

    # adaptive and adaptive+cal share the nuclei mode: detect once per case and mode.
    cache = case.__dict__.setdefault("_nuclei_cells", {})
    if setting.membrane.mode in cache:
        return cache[setting.membrane.mode]
    tp = fp = fn = 0
    errors = []
    for pair in case.pairs:
        found = detect_nuclei(pair.ihc, NucleiParams(mode=setting.membrane.mode, mpp=pair.mpp))
        match = match_centroids(found, pair.nuclei, radius=6.0)
        tp, fp, fn = tp + match.tp, fp + match.fp, fn + match.fn
        errors.append(abs(len(found) - len(pair.nuclei)) / max(len(pair.nuclei), 1) * 100.0)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    cache[setting.membrane.mode] = {"nuclei F1": f"{f1:.3f}", "count err %": f"{np.median(errors):.1f}"}
    return cache[setting.membrane.mode]


METRICS: list[Callable[[Case, Setting], dict[str, str]]] = [membrane_iou_metric, stained_fraction_metric, nuclei_f1_metric]


def truth_fraction_cells(case: Case) -> str:
    """The true stained fraction per score (synth truth masks), for reference."""
    per_score: dict[int, list[float]] = {score: [] for score in HER2_SCORES}
    for pair in case.pairs:
        per_score[pair.her2].append(knowledge.stained_fraction(pair.membrane_mask, pair.tissue_mask))
    return "/".join(f"{np.mean(per_score[s]):.2f}" for s in HER2_SCORES)


# --------------------------------------------------------------------------- table


def run(failures: list[str], tiles_per_score: int, size: int, seed: int) -> str:
    rows = []
    for failure in failures:
        start = time.perf_counter()
        case = make_case(failure, tiles_per_score, size, seed)
        for setting in settings_for(case):
            cells: dict[str, str] = {"case": failure, "setting": setting.name}
            if setting.membrane.mode == "adaptive":
                cells["margin"] = f"{setting.membrane.threshold:.4f}"
            else:
                cells["margin"] = "sat>0.15"
            for metric in METRICS:
                cells.update(metric(case, setting))
            cells["truth fraction"] = truth_fraction_cells(case)
            rows.append(cells)
        print(f"# {failure}: {time.perf_counter() - start:.1f} s", flush=True)
    columns = list(dict.fromkeys(name for row in rows for name in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row.get(c, "") for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", type=int, default=3, help="tiles per HER2 score and failure case (default 3)")
    parser.add_argument("--size", type=int, default=256, help="tile side in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=1000, help="first synth seed (default 1000)")
    parser.add_argument(
        "--failures", default="all", help="comma-separated failure cases, 'none' for clean, or 'all' (default)"
    )
    args = parser.parse_args()
    failures = list(synth.parse_failures(args.failures))
    print(run(failures, args.tiles, args.size, args.seed))


if __name__ == "__main__":
    main()
