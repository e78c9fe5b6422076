"""Pixel-level similarity of a generated IHC tile to its real counterpart: SSIM and PSNR.

Definitions (exactly what the BCI and ASP evaluation scripts compute, so our
numbers sit in the same tables as theirs):

- **SSIM**: ``skimage.metrics.structural_similarity(real, fake,
  channel_axis=-1, data_range=255)`` on ``(H, W, 3)`` uint8 RGB: the mean over
  the three channels of the mean SSIM map, 7 x 7 uniform window, sample
  covariance, K1 = 0.01, K2 = 0.03 (Wang et al. 2004 constants, scikit-image
  defaults). No grey conversion, no border cropping.
- **PSNR**: ``skimage.metrics.peak_signal_noise_ratio(real, fake,
  data_range=255)`` = ``10 log10(255^2 / MSE)``, MSE over all pixels and
  channels. Identical images give ``+inf`` (MSE 0); JSON has no infinity, so
  write it with :func:`tdkstain.plumbing.jsonsafe.json_number` (``"inf"``) and leave such pairs out of a
  mean PSNR or report them separately.

Inputs are ``(H, W, 3)`` uint8 arrays or image files (read by
:func:`tdkstain.data.images.read_rgb`, so grey, palette or 16-bit files arrive as
8-bit RGB). A grey ``(H, W)`` or ``(H, W, 1)`` array is replicated to three
channels (what reading a grey file does). Float arrays are refused: their
value range is ambiguous.
"""

from __future__ import annotations

import math
import os
from typing import Union

import numpy as np

from tdkstain.plumbing.errors import TdkstainError

__all__ = ["ImageLike", "as_rgb_uint8", "psnr", "ssim"]

ImageLike = Union[np.ndarray, str, os.PathLike]

# skimage's default window (7) needs both sides >= 7.
_SSIM_WIN = 7


def as_rgb_uint8(image: ImageLike, what: str = "image") -> tuple[np.ndarray, str]:
    """Return ``(H, W, 3)`` uint8 RGB and a name for messages (the file path, or ``what``)."""
    if isinstance(image, (str, os.PathLike)):
        from tdkstain.data.images import read_rgb

        return read_rgb(image), str(image)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TdkstainError(
            f"{what}: expected uint8 RGB (0..255), got dtype {array.dtype}; convert with "
            "np.clip(x, 0, 255).round().astype(np.uint8) from 0..255 floats (or read the file with tdkstain.data.images.read_rgb)"
        )
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise TdkstainError(f"{what}: expected an (H, W, 3) RGB image, got shape {array.shape}")
    return array, what


def _pair(real: ImageLike, fake: ImageLike) -> tuple[np.ndarray, np.ndarray]:
    real_rgb, real_name = as_rgb_uint8(real, "real image")
    fake_rgb, fake_name = as_rgb_uint8(fake, "generated image")
    if real_rgb.shape != fake_rgb.shape:
        raise TdkstainError(
            f"{fake_name} is {fake_rgb.shape[1]}x{fake_rgb.shape[0]} px but {real_name} is "
            f"{real_rgb.shape[1]}x{real_rgb.shape[0]} px: a generated tile must match its real tile's size "
            "(generate at the real tile's size, or crop/resize both the same way before evaluating)"
        )
    return real_rgb, fake_rgb


def ssim(real: ImageLike, fake: ImageLike) -> float:
    """SSIM of a generated IHC image to the real one, as the BCI/ASP evaluation scripts compute it.

    ``skimage.metrics.structural_similarity(real, fake, channel_axis=-1,
    data_range=255)`` on ``(H, W, 3)`` uint8 RGB (default 7 x 7 window).
    Value in [-1, 1], 1 for identical images. Both images need sides >= 7 px.
    """
    from skimage.metrics import structural_similarity

    real_rgb, fake_rgb = _pair(real, fake)
    if min(real_rgb.shape[:2]) < _SSIM_WIN:
        raise TdkstainError(
            f"{fake if isinstance(fake, (str, os.PathLike)) else 'generated image'}: SSIM needs images of at least "
            f"{_SSIM_WIN}x{_SSIM_WIN} px (its window), got {real_rgb.shape[1]}x{real_rgb.shape[0]}"
        )
    return float(structural_similarity(real_rgb, fake_rgb, channel_axis=-1, data_range=255))


def psnr(real: ImageLike, fake: ImageLike) -> float:
    """PSNR in dB of a generated IHC image to the real one: ``10 log10(255^2 / MSE)``.

    Equal to ``skimage.metrics.peak_signal_noise_ratio(real, fake,
    data_range=255)``; returns ``math.inf`` for identical images (skimage
    does too, with a divide-by-zero warning that we avoid).
    """
    from skimage.metrics import peak_signal_noise_ratio

    real_rgb, fake_rgb = _pair(real, fake)
    if np.array_equal(real_rgb, fake_rgb):
        return math.inf
    return float(peak_signal_noise_ratio(real_rgb, fake_rgb, data_range=255))
