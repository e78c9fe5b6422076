"""Which torch device a user's ``--device`` (or ``train.device``) means: the one place that decides it."""

from __future__ import annotations

import torch

from tdkstain.plumbing.errors import TdkstainError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device = "auto", *, local_rank: int | None = None, setting: str = "--device") -> torch.device:
    """``"auto"`` -> the first CUDA GPU when there is one, else the CPU; anything else as torch reads it.

    ``local_rank``: under torchrun, a bare ``cuda`` (or ``auto`` on a GPU
    machine) means this process's own GPU, ``cuda:<local_rank>``.
    ``setting`` names the option in messages. Raises ``TdkstainError`` for a
    name torch does not know and for CUDA asked for where PyTorch sees no
    GPU, so a typo never silently runs on the CPU.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise TdkstainError(f"{setting} {device!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise TdkstainError(f"{setting} {device!r}: PyTorch sees no CUDA device here; use {setting} cpu or auto")
    if resolved.type == "cuda" and resolved.index is None and local_rank is not None:
        resolved = torch.device("cuda", local_rank)
    return resolved
