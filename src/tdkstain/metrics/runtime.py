"""Where metric networks run: device choice and exact-float settings shared by the metric modules."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from tdkstain.errors import TdkstainError

__all__ = ["exact_float32", "resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> the first CUDA GPU when there is one, else the CPU; anything else as torch reads it."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise TdkstainError(f"device {device!r}: {exc}; use 'auto', 'cpu' or 'cuda[:N]'") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise TdkstainError(f"device {device!r}: CUDA is not available here; use --device cpu or auto")
    return resolved


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Disable TF32 while metric networks run, then restore the previous setting.

    On Ampere and newer GPUs PyTorch lets cuDNN convolutions use TF32 (10-bit
    mantissa) by default, which moves Inception features by ~1e-3 relative and
    FID with them; published FID/KID values are computed in full float32.
    """
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
