"""Scoring a generator on held-out pairs, as the trainer validates: L1, PSNR and SSIM per tile.

What ``tdkstain train`` logs as ``val/*`` and keeps the best generator by,
what ``train --reference-scores`` compares, and what the demo's headline
reads. PSNR and SSIM are :mod:`tdkstain.metrics.image`'s (scikit-image, as
the BCI/ASP scripts); L1 is in the networks' [-1, 1] units, like the
training term.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
from torch import nn

from tdkstain.data.images import read_rgb
from tdkstain.data.tiles import AlignedTiles
from tdkstain.metrics.image import psnr, ssim

__all__ = ["to_uint8", "image_scores", "evaluate_generator", "mean_ihc_colour"]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` float in [-1, 1] -> ``(B, H, W, 3)`` uint8 (rounded, clipped)."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_scores(generated: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """L1 (in the networks' [-1, 1] units, like the training term), PSNR and SSIM of two uint8 RGB tiles.

    PSNR and SSIM: :func:`tdkstain.metrics.image.psnr` / :func:`~tdkstain.metrics.image.ssim`.
    """
    l1 = float(np.abs(generated.astype(np.float64) - real.astype(np.float64)).mean() / 127.5)
    return {"l1": l1, "psnr": psnr(real, generated), "ssim": ssim(real, generated)}


def evaluate_generator(generator: nn.Module | None, dataset: AlignedTiles, *, device: torch.device | str = "cpu",
                       autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                       channels_last: bool = False, constant_rgb: np.ndarray | None = None,
                       grid_tiles: int = 0) -> tuple[dict[str, float], np.ndarray | None]:
    """Mean :func:`image_scores` over ``dataset`` (one tile at a time) and an image grid of the first tiles.

    ``generator`` runs on ``device`` under ``autocast()`` (the trainer passes
    its precision). ``generator`` None with ``constant_rgb`` (3,) uint8 scores
    the image painted in that colour. Grid rows: H&E | real IHC | generated,
    ``(rows*H, 3*W, 3)`` uint8.
    """
    was_training = generator.training if generator is not None else False
    if generator is not None:
        generator.eval()
    totals: dict[str, float] = {}
    rows = []
    try:
        with torch.no_grad():
            for i in range(len(dataset)):
                sample = dataset[i]
                real = to_uint8(sample["ihc"][None])[0]
                if generator is None:
                    generated = np.broadcast_to(np.asarray(constant_rgb, np.uint8), real.shape).copy()
                else:
                    he = sample["he"][None].to(device, non_blocking=True)
                    if channels_last:
                        he = he.contiguous(memory_format=torch.channels_last)
                    with autocast():
                        generated = to_uint8(generator(he))[0]
                for k, v in image_scores(generated, real).items():
                    totals[k] = totals.get(k, 0.0) + v
                if i < grid_tiles:
                    rows.append(np.concatenate([to_uint8(sample["he"][None])[0], real, generated], axis=1))
    finally:
        if generator is not None:
            generator.train(was_training)
    scores = {k: v / max(len(dataset), 1) for k, v in totals.items()}
    return scores, (np.concatenate(rows, axis=0) if rows else None)


def mean_ihc_colour(dataset: AlignedTiles) -> np.ndarray:
    """Mean RGB of the IHC tiles of ``dataset``, ``(3,)`` uint8 (whole tiles)."""
    total = np.zeros(3)
    pixels = 0
    for f in dataset.files:
        img = read_rgb(f.ihc).reshape(-1, 3)
        total += img.sum(0, dtype=np.float64)
        pixels += len(img)
    return np.round(total / max(pixels, 1)).astype(np.uint8)
