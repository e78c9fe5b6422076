"""Exact float32 while metric networks run (no TF32), shared by the metric modules."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["exact_float32"]


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
