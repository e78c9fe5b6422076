"""``tdkstain train --reference-scores``: a trained run's held-out scores next to two references.

The untrained generator (same seed, same architecture, as at step 0) and the
mean IHC colour of the training tiles painted everywhere: what training
added, and what a constant guess already gets.
"""

from __future__ import annotations

import os
from pathlib import Path

from tdkstain.data.tiles import AlignedTiles, split_pairs, tile_files
from tdkstain.evaluation.validation import evaluate_generator, mean_ihc_colour
from tdkstain.methods import create_method
from tdkstain.training.config import read_run_config
from tdkstain.weights import load_generator

__all__ = ["reference_scores", "format_scores"]


def reference_scores(run_dir: str | os.PathLike, data_root: str | os.PathLike | None = None, *,
                    val_pairs: int | None = None, size: int | None = None) -> dict[str, dict[str, float]]:
    """Held-out scores of a trained run next to two references, to read what training added.

    - ``trained``: the run's ``weights/generator.safetensors``;
    - ``untrained``: the same architecture as initialised at step 0 (same seed);
    - ``mean_colour``: the mean IHC colour of the training tiles painted everywhere.

    Pairs and tile size are the run's validation settings (``data.val_split``,
    ``data.val_pairs``, ``data.val_size``) unless given. Returns
    ``{name: {"l1", "psnr", "ssim"}}``.
    """
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir / "config.yaml")
    root = Path(data_root or cfg.data.root)
    n_val = cfg.data.val_pairs if val_pairs is None else val_pairs
    train_pairs, val = split_pairs(root, cfg.data.train_split, cfg.data.val_split, max(n_val, 1))
    val_set = AlignedTiles(tile_files(root, val[: max(n_val, 1)], membrane=False, nuclei=False), size or cfg.data.val_size, flip=False, seed=0, center=True)
    train_set = AlignedTiles(tile_files(root, train_pairs, membrane=False, nuclei=False), None, flip=False, seed=0)
    untrained = create_method(cfg, 1).build_networks(cfg.train.seed)["generator"]
    return {
        "trained": evaluate_generator(load_generator(run_dir / "weights" / "generator.safetensors"), val_set)[0],
        "untrained": evaluate_generator(untrained, val_set)[0],
        "mean_colour": evaluate_generator(None, val_set, constant_rgb=mean_ihc_colour(train_set))[0],
    }


def format_scores(table: dict[str, dict[str, float]]) -> str:
    lines = [f"{'':14s} {'L1':>8s} {'PSNR':>8s} {'SSIM':>8s}"]
    for name, s in table.items():
        lines.append(f"{name:14s} {s['l1']:8.4f} {s['psnr']:8.2f} {s['ssim']:8.4f}")
    return "\n".join(lines)
