"""The trainer: one loop, a checkpoint that knows everything, exact resume.

``train(cfg, out)`` trains the method named by ``cfg.method`` on
``cfg.data.root`` into the run folder ``out`` (its files: ``training.runfolder``,
``training.state``, ``training.log``). Rerunning the same command on the same
folder resumes from the newest checkpoint. Training randomness is a pure
function of (seed, epoch, index) (``tdkstain.data.tiles``) and the learning
rate a pure function of the step, so a resumed CPU run in deterministic mode
is bitwise the uninterrupted one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tdkstain.data.tiles import EpochBatchSampler, training_tiles
from tdkstain.inference.engine import downsampling_factor
from tdkstain.methods import create_method
from tdkstain.methods.base import NonFiniteLoss
from tdkstain.plumbing import distributed
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.training.config import Config
from tdkstain.training.inputs import batch_sizes, check_validation_multiple, data_files, make_loader, validation_sizes
from tdkstain.training.log import Logger
from tdkstain.training.runfolder import save_run, unwrap, validate
from tdkstain.training.setup import save_run_config, start_run
from tdkstain.training.state import TrainState, load_latest, newest_checkpoint, restore
from tdkstain.weights import load_release_training_state

__all__ = ["TrainResult", "train"]


@dataclass
class TrainResult:
    run_dir: Path
    nets: dict[str, nn.Module]
    step: int
    images: int
    best: dict[str, Any]
    last_val: dict[str, float] | None = None


def train(cfg: Config, out: str | os.PathLike, *, progress: bool = True) -> TrainResult:
    """Train (or resume) into run folder ``out``; returns the networks and counters.

    Everything that can be checked before a step is, before the run folder
    is written: the method's sizes on the meta device (networks too large,
    a ``data.crop`` they cannot take, :meth:`Method.check_sizes`) and the
    validation tiles' sizes from their headers.
    """
    run = start_run(cfg, Path(out))
    cfg, dist_info, rt = run.cfg, run.dist, run.runtime

    train_files, val_files = data_files(cfg)
    sampler = EpochBatchSampler(len(train_files), cfg.data.batch, seed=cfg.train.seed, rank=dist_info.rank, world=dist_info.world)
    method = create_method(cfg, sampler.steps_per_epoch)
    val_sizes = validation_sizes(cfg, val_files)
    method.check_sizes(batch_sizes(sampler), [size for size, _ in val_sizes])
    nets = method.build_networks(cfg.train.seed)
    check_validation_multiple(cfg, val_sizes, downsampling_factor(nets["generator"]))
    save_run_config(run)
    for net in nets.values():
        net.to(rt.device, memory_format=torch.channels_last if cfg.train.channels_last else torch.preserve_format)
    optimizers = {name: torch.optim.Adam(net.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas)) for name, net in nets.items()}
    state = TrainState()
    checkpoint = load_latest(run.run_dir)  # on CPU; load_state_dict copies onto the device
    if checkpoint is not None:
        restore(checkpoint, cfg, nets, optimizers, rt, state)
        del checkpoint  # the paper preset's state is ~0.7 GB
    else:
        if cfg.train.init_from is not None:
            start_from_release(cfg, nets, dist_info.is_main)
        if dist_info.enabled:
            for net in nets.values():
                distributed.broadcast_module(net)
    if cfg.train.compile:
        for net in nets.values():
            # Static shapes: G runs at two batch sizes (x with M*x, and the real IHC alone), and the
            # automatic dynamic-shape recompile this triggers fails in inductor on the paper preset
            # (torch 2.14.1 on CPU: "cannot determine truth value of Relational"). Each shape compiles once.
            net.compile(dynamic=False)

    stop = method.total_steps if cfg.train.max_steps is None else min(method.total_steps, cfg.train.max_steps)
    already_done = state.step > 0 and state.step == stop
    sampler.start_step = state.step
    batches = iter(make_loader(cfg, training_tiles(train_files, cfg.data.crop, flip=cfg.data.flip, seed=cfg.train.seed), sampler, rt.device))
    log = Logger(run, start=state.step, stop=stop, progress=progress)
    last_val = None
    try:
        for step in range(state.step, stop):
            batch = rt.to_device(next(batches))
            # The schedule is a pure function of the step: nothing to restore on resume.
            for name, optimizer in optimizers.items():
                for group in optimizer.param_groups:
                    group["lr"] = cfg.optim.lr * method.lr_factor(name, step)
            try:
                terms = method.train_step(step, nets, optimizers, batch, rt)
            except NonFiniteLoss as err:
                raise TdkstainError(
                    f"step {step}: {err}; stopped before applying it. The last good checkpoint is "
                    f"{newest_checkpoint(run.run_dir) or '(none yet)'}. Try a lower optim.lr, "
                    "train.precision=fp32, or train.nonfinite=skip."
                ) from None
            state.step = step + 1
            state.images += len(batch["he"]) * dist_info.world
            log.terms(terms)
            done = state.step == stop
            if state.step % cfg.train.log_every == 0 or done:
                log.write(state, sampler.steps_per_epoch, {k: g["lr"] for k, o in optimizers.items() for g in o.param_groups[:1]})
            if val_files and (state.step % cfg.train.val_every == 0 or done):
                last_val = validate(run, nets["generator"], val_files, state, log)
            if state.step % cfg.train.checkpoint_every == 0 or done:
                save_run(run, state, nets, optimizers, rt)
    finally:
        log.close()
        del batches  # shuts DataLoader workers down
    if already_done:
        save_run(run, state, nets, optimizers, rt)  # rerun of a finished run: make sure the weights exist
    distributed.barrier()
    return TrainResult(run.run_dir, nets, state.step, state.images, state.best(), last_val)


def start_from_release(cfg: Config, nets: dict[str, nn.Module], announce: bool) -> None:
    """Fine-tuning the authors' model: G, D and E of a new run take the release's weights (``train.init_from``)."""
    if cfg.method != "tdkstain":
        raise TdkstainError(
            f"train.init_from loads the authors' TDKstain release (G, D, E); method {cfg.method} has other networks"
        )
    files = load_release_training_state(cfg.train.init_from, {k: unwrap(v) for k, v in nets.items()})
    if announce:
        import sys

        print(f"train: starting from the authors' release: {', '.join(str(f) for f in files.values())}", file=sys.stderr)
