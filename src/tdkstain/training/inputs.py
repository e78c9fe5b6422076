"""The training data of a run: which files, and the loader that batches them reproducibly."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from tdkstain.data.tiles import AlignedTiles, EpochBatchSampler, collate, split_pairs, split_unpaired, tile_files
from tdkstain.methods import METHODS
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.training.config import Config

__all__ = ["data_files", "make_loader"]


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
