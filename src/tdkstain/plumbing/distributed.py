"""Many processes, one model: explicit gradient averaging instead of DDP wrappers.

A TDKstain iteration has three optimisers and networks that are frozen in
some phases and run twice (on ``G(x)`` and on its encoder taps) in others;
``DistributedDataParallel`` with its bucket hooks fits that poorly (unused
parameters, reentrant backward). So after each phase's backward we
all-reduce that phase's gradients ourselves, averaged over processes: the
result is the gradient of the mean loss over the global batch, which is what
one process with the whole batch computes, so every rank applies the same
update and the weights stay identical. Weights are broadcast from rank 0
once at start.

Launch: ``torchrun --nproc_per_node K -m tdkstain train ...`` sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``PORT``;
:func:`init_from_env` reads them (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

# Gradients are all-reduced in buckets of about this many elements: fewer
# collective calls than one per tensor, bounded extra memory.
BUCKET_ELEMENTS = 8 * 1024 * 1024


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Where torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) places this process, joining nothing.

    Single-process (rank 0 of 1) when ``WORLD_SIZE`` is unset or 1.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    return DistInfo(rank=rank, world=world, local_rank=int(os.environ.get("LOCAL_RANK", rank)))


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment, or stay single.

    ``device_type``: "cuda" picks NCCL and this process's GPU (``LOCAL_RANK``);
    anything else picks gloo.
    """
    info = env_info()
    if not info.enabled:
        return info
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def current() -> DistInfo:
    """The process group already joined (by :func:`init_from_env` or a test), else single-process."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return DistInfo()


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy parameters and buffers of ``module`` from rank ``src`` to every rank."""
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src)


def average_gradients(module: nn.Module) -> None:
    """All-reduce the existing gradients of ``module`` to their mean over processes.

    Every rank runs the same phases, so the set of parameters with a gradient
    is the same on every rank and the buckets line up.
    """
    world = dist.get_world_size()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    bucket: list[torch.Tensor] = []
    size = 0
    for g in grads + [None]:
        if g is not None:
            bucket.append(g)
            size += g.numel()
        if bucket and (g is None or size >= BUCKET_ELEMENTS):
            flat = _flatten_dense_tensors(bucket)
            dist.all_reduce(flat)
            flat.div_(world)
            for g_old, g_new in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                g_old.copy_(g_new)
            bucket, size = [], 0


def all_true(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on every process."""
    t = torch.tensor([0.0 if flag else 1.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() == 0.0)


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average logged scalars over processes (same keys on every rank)."""
    if not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
