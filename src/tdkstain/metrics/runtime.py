"""Where metric networks run: device choice and exact-float settings shared by the metric modules."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from tdkstain.devices import resolve_device

__all__ = ["exact_float32", "resolve_device"]


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
