"""Synthetic datasets on disk: the release layout plus truth, deterministic for a seed."""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tdkstain.plumbing.atomic import atomic_path, write_text_atomic
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.synth.tissue import (
    CELL_TYPES,
    HER2_LABELS,
    MPP_20X,
    MPP_40X,
    SynthPair,
    _check_render_arguments,
    her2_label,
    parse_failures,
    render_pair,
)

# Folders of the release layout (docs/method.md "Data") plus our truth folders.
_SPLITS = ("train", "test")
_PAIR_DIRS = ("HE", "IHC", "truth")

@dataclass
class DatasetSummary:
    """What ``write_dataset`` wrote: counts per split and HER2 label, per failure, and the time taken."""

    root: Path
    pairs: int
    train: int
    test: int
    size: int
    seed: int
    scores: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> label -> count
    failures: dict[str, int] = field(default_factory=dict)  # failure -> count
    seconds: float = 0.0


@dataclass(frozen=True)
class _PairJob:
    index: int
    stem: str
    split: str
    her2: int
    failure: str
    seed: int  # the seed render_pair gets
    dataset_seed: int
    size: int
    misregister: float
    root: str
    cue: float = 1.0


def pair_seed(dataset_seed: int, index: int) -> int:
    """The ``render_pair`` seed of pair ``index`` in a dataset made with ``dataset_seed`` (independent streams)."""
    return int(np.random.SeedSequence([int(dataset_seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


def plan_dataset(
    pairs: int, seed: int = 0, *, test_fraction: float = 0.25, failures: Sequence[str] = ("none",)
) -> list[tuple[int, str, str, int, str, int]]:
    """The deterministic plan of a dataset: ``(index, stem, split, her2, failure, pair_seed)`` per pair.

    Scores cycle 0, 1+, 2+, 3+ with the index, so any run of consecutive pairs is
    balanced; the last ``round(pairs * test_fraction)`` pairs form the test split
    (balanced as well); failures cycle every four pairs, so each failure case gets
    all four scores.
    """
    failures = parse_failures(failures)
    n_test = int(round(pairs * test_fraction))
    if pairs >= 2 and 0 < test_fraction < 1:
        n_test = min(max(n_test, 1), pairs - 1)  # both splits non-empty when asked for
    plan = []
    for index in range(pairs):
        her2 = index % 4
        split = "test" if index >= pairs - n_test else "train"
        failure = failures[(index // 4) % len(failures)]
        stem = f"synth_{index:05d}_{HER2_LABELS[her2]}"
        plan.append((index, stem, split, her2, failure, pair_seed(seed, index)))
    return plan


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        # zlib level 1: 3x faster than Pillow's default 6 and only ~10 % larger on noisy tissue
        Image.fromarray(image).save(tmp, format="PNG", compress_level=1)


def _truth_json(job: _PairJob, pair: SynthPair) -> dict:
    counts = {kind: int((pair.cell_types == kind).sum()) for kind in CELL_TYPES}
    counts["total"] = int(len(pair.cell_types))
    return {
        "stem": job.stem,
        "split": job.split,
        "her2": her2_label(pair.her2),
        "her2_score": int(pair.her2),
        "mpp": pair.mpp,
        "failure": pair.failure,
        "seed": job.seed,
        "dataset_seed": job.dataset_seed,
        "index": job.index,
        "size": job.size,
        "misregister": job.misregister,
        "her2_cue": job.cue,
        "coordinates": "pixels; x = column, y = row, pixel centres at integers; x, y in the IHC image "
        "(the truth frame), he_x, he_y in the H&E image",
        "counts": counts,
        "membrane_pixels": int(pair.membrane_mask.sum()),
        "tissue_fraction": round(float(pair.tissue_mask.mean()), 4),
        "nuclei": [
            {
                "x": round(float(c[1]), 3),
                "y": round(float(c[0]), 3),
                "type": str(t),
                "he_x": round(float(h[1]), 3),
                "he_y": round(float(h[0]), 3),
            }
            for c, t, h in zip(pair.nuclei, pair.cell_types, pair.he_nuclei)
        ],
    }


def _write_pair(job: _PairJob) -> tuple[str, int, str]:
    pair = render_pair(job.seed, job.size, job.her2, failure=job.failure, misregister=job.misregister, cue=job.cue)
    root = Path(job.root)
    _save_png(root / f"{job.split}_HE" / f"{job.stem}.png", pair.he)
    _save_png(root / f"{job.split}_IHC" / f"{job.stem}.png", pair.ihc)
    _save_png(root / f"{job.split}_truth" / f"{job.stem}_membrane.png", pair.membrane_mask.astype(np.uint8) * 255)
    write_text_atomic(root / f"{job.split}_truth" / f"{job.stem}.json", json.dumps(_truth_json(job, pair), indent=1) + "\n")
    return job.split, job.her2, job.failure


def _synth_files(root: Path) -> list[Path]:
    """Files a previous ``write_dataset`` may have left in ``root`` (only those, never anything else)."""
    found = []
    for split in _SPLITS:
        for kind in _PAIR_DIRS:
            folder = root / f"{split}_{kind}"
            if folder.is_dir():
                found.extend(p for p in folder.iterdir() if p.is_file() and p.name.startswith("synth_"))
    return found


def _check_dataset_arguments(pairs: int, test_fraction: float, workers: int) -> None:
    """What only a dataset has; the tile's own settings are ``tissue._check_render_arguments``'s."""
    if not isinstance(pairs, (int, np.integer)) or pairs < 1:
        raise TdkstainError(f"--pairs must be a positive integer, got {pairs!r}")
    if not 0.0 <= test_fraction <= 1.0:
        raise TdkstainError(f"--test-fraction must lie in [0, 1], got {test_fraction!r}")
    if workers < 1:
        raise TdkstainError(f"--workers must be >= 1, got {workers}")


def _check_output_folder(out: Path, force: bool) -> None:
    """Refuse a folder that holds anything but a previous synth output, unless ``force``."""
    if out.exists() and not out.is_dir():
        raise TdkstainError(f"{out} exists and is not a folder; choose a folder for the synthetic dataset")
    if out.is_dir() and any(out.iterdir()) and not (out / "synth.json").is_file() and not force:
        raise TdkstainError(
            f"{out} is not empty and holds no synth.json (not a previous 'tdkstain synth' output); "
            "choose an empty or new folder, or pass --force to write into it anyway"
        )


def _remove_stale_pairs(out: Path, jobs: Sequence[_PairJob]) -> None:
    """A smaller rerun must not leave pairs of the old run behind."""
    wanted = {f"{j.split}_{kind}/{j.stem}{suffix}" for j in jobs for kind, suffix in (("HE", ".png"), ("IHC", ".png"), ("truth", ".json"), ("truth", "_membrane.png"))}
    stale = [p for p in _synth_files(out) if f"{p.parent.name}/{p.name}" not in wanted]
    for path in stale:
        path.unlink()


def _dataset_parameters(
    jobs: Sequence[_PairJob], pairs: int, size: int, seed: int, misregister: float, test_fraction: float,
    failures: Sequence[str], cue: float = 1.0,
) -> dict:
    """The contents of ``synth.json``: every parameter and the plan, less the ``complete`` flag."""
    return {
        "tool": "tdkstain synth",
        "format": 1,
        "pairs": int(pairs),
        "size": int(size),
        "seed": int(seed),
        "misregister": float(misregister),
        "her2_cue": float(cue),
        "test_fraction": float(test_fraction),
        "failures": list(failures),
        "mpp": {"default": MPP_20X, "scale-20x": MPP_20X, "scale-40x": MPP_40X},
        "layout": "release: {split}_HE/STEM.png, {split}_IHC/STEM.png; truth: {split}_truth/STEM.json, STEM_membrane.png",
        "reproduce": "tdkstain.synth.render_pair(seed, size, her2_score, failure=failure, misregister=misregister, "
                     "cue=her2_cue)",
        "pairs_plan": [
            {"stem": j.stem, "split": j.split, "her2": HER2_LABELS[j.her2], "failure": j.failure, "seed": j.seed}
            for j in jobs
        ],
    }


def _write_pairs(
    jobs: Sequence[_PairJob], workers: int, summary: DatasetSummary, progress: Callable[[int], None] | None
) -> None:
    """Write every pair (in worker processes when ``workers`` > 1), counting each in ``summary``."""

    def record(result: tuple[str, int, str]) -> None:
        split, her2, failure = result
        summary.scores[split][HER2_LABELS[her2]] += 1
        summary.failures[failure] += 1
        if progress is not None:
            progress(1)

    if workers == 1 or len(jobs) == 1:
        for job in jobs:
            record(_write_pair(job))
    else:
        with ProcessPoolExecutor(max_workers=int(workers)) as pool:
            for result in pool.map(_write_pair, jobs, chunksize=max(1, len(jobs) // (8 * workers))):
                record(result)


def write_dataset(
    out: Path,
    pairs: int,
    size: int = 256,
    seed: int = 0,
    *,
    misregister: float = 3.0,
    cue: float = 1.0,
    test_fraction: float = 0.25,
    failures: Sequence[str] = ("none",),
    workers: int = 1,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> DatasetSummary:
    """Write ``pairs`` synthetic pairs in the release layout, with truth, under ``out``.

    Layout: ``out/{train,test}_HE/STEM.png``, ``out/{train,test}_IHC/STEM.png``,
    ``out/{split}_truth/STEM.json`` and ``STEM_membrane.png`` (uint8 0/255, IHC
    coordinates), and ``out/synth.json`` with every parameter and the plan. STEM
    is ``synth_IIIII_LABEL`` (BCI-style, the HER2 label last). Same arguments ->
    byte-identical files, whatever ``workers`` is. ``out`` must be empty, missing,
    or a previous synth output (whose stale ``synth_*`` files are removed);
    ``force=True`` writes into any folder, touching only the files named above.
    ``progress`` is called with 1 after each pair. ``cue``: strength of the H&E's
    cue of the HER2 score (``render_pair``; 0: none, 1: the default).
    """
    out = Path(out)
    _check_dataset_arguments(pairs, test_fraction, workers)
    _check_render_arguments(seed, size, misregister, cue)
    failures = parse_failures(failures)
    _check_output_folder(out, force)
    start = time.perf_counter()
    plan = plan_dataset(pairs, seed, test_fraction=test_fraction, failures=failures)
    jobs = [
        _PairJob(index, stem, split, her2, failure, pseed, int(seed), int(size), float(misregister), str(out), float(cue))
        for index, stem, split, her2, failure, pseed in plan
    ]
    _remove_stale_pairs(out, jobs)
    parameters = _dataset_parameters(jobs, pairs, size, seed, misregister, test_fraction, failures, cue)
    previous = out / "synth.json"
    # written first as incomplete: an interrupted run is still recognised as ours and may be rerun
    write_text_atomic(previous, json.dumps({**parameters, "complete": False}, indent=1) + "\n")

    summary = DatasetSummary(root=out, pairs=int(pairs), train=0, test=0, size=int(size), seed=int(seed))
    summary.scores = {split: {label: 0 for label in HER2_LABELS} for split in _SPLITS}
    summary.failures = {name: 0 for name in failures}
    _write_pairs(jobs, workers, summary, progress)
    summary.train = sum(summary.scores["train"].values())
    summary.test = sum(summary.scores["test"].values())
    summary.seconds = time.perf_counter() - start
    write_text_atomic(previous, json.dumps({**parameters, "complete": True}, indent=1) + "\n")
    return summary
