"""Which torch device a user's ``--device`` means: the one place that decides it."""

from __future__ import annotations

import torch

from tdkstain.errors import TdkstainError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> the first CUDA GPU when there is one, else the CPU; anything else as torch reads it.

    Raises ``TdkstainError`` for a name torch does not know and for CUDA asked
    for where PyTorch sees no GPU, so a typo never silently runs on the CPU.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise TdkstainError(f"--device {device!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise TdkstainError(f"--device {device!r}: PyTorch sees no CUDA device here; use --device cpu or auto")
    return resolved
