"""The training data of a run: which files, the loader that batches them reproducibly, and the checks of
their sizes made before the first step (image headers only)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch.utils.data import DataLoader

from tdkstain.data.images import image_size
from tdkstain.data.tiles import (AlignedTiles, EpochBatchSampler, TileFiles, collate, split_pairs, split_unpaired,
                                 tile_files)
from tdkstain.methods import METHODS
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.training.config import Config

__all__ = ["data_files", "make_loader", "batch_sizes", "validation_sizes", "check_validation_multiple"]


def data_files(cfg: Config):
    """``(training files, validation files)``: aligned pairs with the knowledge maps the method needs,
    or, for a method that trains on unpaired data with ``options.unpaired``, H&E and IHC listed apart."""
    method = METHODS[cfg.method]
    if getattr(cfg.options, "unpaired", False):  # H&E and IHC listed separately
        if not method.unpaired_data:
            raise TdkstainError(
                f"options.unpaired=true: method {cfg.method} learns from aligned pairs (set options.unpaired=false)"
            )
        unpaired, val_pairs = split_unpaired(cfg.data.root, cfg.data.train_split, cfg.data.val_split, cfg.data.val_pairs)
        return unpaired, tile_files(cfg.data.root, val_pairs, membrane=False, nuclei=False)
    train_pairs, val_pairs = split_pairs(cfg.data.root, cfg.data.train_split, cfg.data.val_split, cfg.data.val_pairs)
    needs = method.needs(cfg)  # a zero-weight branch loads no maps
    train_files = tile_files(cfg.data.root, train_pairs, **needs, density_format=cfg.data.nuclei_density_format)
    val_files = tile_files(cfg.data.root, val_pairs, membrane=False, nuclei=False)
    return train_files, val_files


def make_loader(cfg: Config, dataset: AlignedTiles, sampler: EpochBatchSampler, device: torch.device) -> DataLoader:
    workers = cfg.data.workers
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if workers else None,
        # Its own generator: creating the iterator draws a base seed, which must not come from the
        # global stream (a resumed run creates it after restoring that stream, an uninterrupted one
        # before step 0; methods that draw random numbers per step would then diverge). The data
        # themselves are a pure function of (seed, epoch, index), see tdkstain.data.tiles.
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )


def batch_sizes(sampler: EpochBatchSampler) -> list[int]:
    """Every batch size ``sampler`` yields on one process: ``data.batch`` and a shorter last batch of an epoch, if any."""
    per_process = math.ceil(sampler.n / sampler.world)
    last = per_process - (sampler.steps_per_epoch - 1) * sampler.batch
    return sorted({min(sampler.batch, per_process), last} - {0})


# Validation shows its first tiles side by side in one image (training.runfolder.validate: grid_tiles=4).
GRID_TILES = 4


def validation_sizes(cfg: Config, val_files: Sequence[TileFiles]) -> list[tuple[tuple[int, int], TileFiles]]:
    """The ``(height, width)`` each validation tile feeds the generator, in order, from the image headers
    (no pixels decoded), before any step.

    Refused, naming the file: an H&E tile whose IHC partner has another size,
    a tile smaller than ``data.val_size``. Whole tiles (``data.val_size``
    unset) are checked further by :func:`check_validation_multiple`.
    """
    sizes: list[tuple[tuple[int, int], TileFiles]] = []
    val = cfg.data.val_size
    for f in val_files:
        he, ihc = image_size(f.he), image_size(f.ihc)
        if he != ihc:
            raise TdkstainError(
                f"{f.he}: validation H&E tile is {he[1]}x{he[0]} px but its IHC tile {f.ihc} is {ihc[1]}x{ihc[0]}; "
                "aligned images must have one size"
            )
        if val is not None and min(he) < val:
            raise TdkstainError(
                f"{f.he}: validation tile is {he[1]}x{he[0]} px, smaller than data.val_size={val}; "
                f"use data.val_size={min(he)} or less"
            )
        sizes.append(((val, val) if val is not None else he, f))
    return sizes


def check_validation_multiple(cfg: Config, sizes: Sequence[tuple[tuple[int, int], TileFiles]], multiple: int) -> None:
    """Refuse, before a step (not at the first validation, after hours of training), validation sizes that
    are not multiples of the generator's size ``multiple``, or first tiles of different widths (validation
    shows them one above the other in one image); the message suggests a ``data.val_size`` that works."""
    if not sizes:
        return
    side = min(min(size) for size, _ in sizes) // multiple * multiple
    fix = (f"set data.val_size={side} (a centre crop of every validation tile)" if side >= 8 else
           f"the tiles are smaller than {max(multiple, 8)} px: use larger validation tiles or data.val_pairs=0")
    for (height, width), f in sizes:
        if height % multiple or width % multiple:
            if cfg.data.val_size is not None:  # the methods' check refuses this first; kept for methods without one
                raise TdkstainError(
                    f"data.val_size={cfg.data.val_size} is not a multiple of {multiple} (the generator's size "
                    f"multiple); use data.val_size={max(cfg.data.val_size // multiple * multiple, multiple)}"
                )
            raise TdkstainError(
                f"{f.he}: validation tile is {width}x{height} px, not a multiple of {multiple} (the generator's size "
                f"multiple), and data.val_size is unset (tiles used whole); {fix}"
            )
    (a, fa), *others = sizes[:GRID_TILES]
    for b, fb in others:
        if b[1] != a[1]:
            raise TdkstainError(
                f"validation tiles used whole (data.val_size unset) differ in width: {fa.he} is {a[1]}x{a[0]} px, "
                f"{fb.he} {b[1]}x{b[0]}, and validation shows its first {GRID_TILES} one above the other; {fix}"
            )
