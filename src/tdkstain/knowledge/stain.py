"""Colour deconvolution of IHC images, in numpy (one tile) and torch (batched, differentiable).

Haematoxylin / Eosin / DAB separation follows Ruifrok & Johnston (2001) with
the stain matrix and the log scaling of ``skimage.color.rgb2hed`` /
``hed2rgb``: the "optical density" values here are ``log(rgb) / log(1e-6)``,
i.e. decadic optical density divided by 6, so that an intensity of 1e-6 has
density 1. Every number in this file is checked against scikit-image and the
authors' release (``tests/test_stain.py``).

The release's DAB knowledge (docs/method.md steps 2-3, ``preprocess/get_dab_mask.py``):
the DAB channel alone is turned back into RGB (``K_M``), and the membrane
mask ``M`` is the HSV saturation of that image above 0.15, then blurred with
OpenCV's 9x9, sigma 3 Gaussian. Because the DAB-only image has
``rgb_c = exp(-dab * ln(1e6) * rgb_from_hed[2, c])``, its saturation is
``1 - exp(-dab * ln(1e6) * (0.78 - 0.27))``: the release mask is simply
``dab > 0.0231`` (``RELEASE_DAB_THRESHOLD``), a fixed threshold on DAB
density that ignores any uniform DAB cast of the tile (see ``knowledge``).

This module imports nothing else of tdkstain (``docs/ARCHITECTURE.md``), so
it raises ``ValueError`` for bad input; callers turn that into
``TdkstainError`` with the file name.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch

# Ruifrok & Johnston 2001, as in skimage.color: rows are the RGB absorbance
# vectors of haematoxylin, eosin and DAB. skimage inverts it with scipy.linalg;
# we do the same so that our densities are bit-identical to rgb2hed.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = scipy.linalg.inv(RGB_FROM_HED)

# skimage clips intensities at 1e-6 before the log and divides by log(1e-6).
_MIN_INTENSITY = 1e-6
_LOG_ADJUST = math.log(_MIN_INTENSITY)  # negative: ln(1e-6)

# Release (docs/method.md step 3, get_dab_mask.py): saturation of the DAB-only RGB
# image strictly greater than 0.15 is membrane.
RELEASE_SATURATION_THRESHOLD = 0.15
# The same threshold expressed on the DAB density (see module docstring).
RELEASE_DAB_THRESHOLD = -math.log(1.0 - RELEASE_SATURATION_THRESHOLD) / (
    -_LOG_ADJUST * (RGB_FROM_HED[2].max() - RGB_FROM_HED[2].min())
)


def _release_blur_kernel() -> np.ndarray:
    """OpenCV's fixed-point Gaussian kernel for ksize 9, sigma 3 on uint8 images.

    ``cv2.GaussianBlur`` on uint8 runs in fixed point: the float kernel
    ``exp(-x^2 / (2 sigma^2))`` (normalised) is quantised to 8 fractional bits
    by error diffusion over the left half, the centre tap taking whatever
    makes the sum exactly 256. Reproducing that (not the float kernel) makes
    our blur bit-identical to the release's (``cv2.GaussianBlur(mask, (9, 9), 3)``,
    checked against the official fixture).

    Returns:
        (9,) int64 taps summing to 256.
    """
    size, sigma = 9, 3.0
    x = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    taps = np.zeros(size, dtype=np.int64)
    error = 0.0
    for i in range(size // 2):
        value = kernel[i] * 256 + error
        taps[i] = taps[size - 1 - i] = int(np.rint(value))
        error = value - taps[i]
    taps[size // 2] = 256 - 2 * taps[: size // 2].sum()
    return taps


RELEASE_BLUR_TAPS = _release_blur_kernel()
RELEASE_BLUR_RADIUS = len(RELEASE_BLUR_TAPS) // 2


# --------------------------------------------------------------------------- numpy


def _as_float_rgb(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 / uint16 / float in [0, 1] -> float64 in [0, 1] (skimage img_as_float)."""
    rgb = np.asarray(rgb)
    if rgb.ndim < 1 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an RGB image with 3 channels last, got shape {rgb.shape}")
    # Multiply by the reciprocal as skimage's img_as_float does: bit-identical densities.
    if rgb.dtype == np.uint8:
        return np.multiply(rgb, 1.0 / 255.0, dtype=np.float64)
    if rgb.dtype == np.uint16:
        return np.multiply(rgb, 1.0 / 65535.0, dtype=np.float64)
    if np.issubdtype(rgb.dtype, np.floating):
        return rgb.astype(np.float64, copy=True)
    raise ValueError(f"expected uint8, uint16 or float RGB, got dtype {rgb.dtype}")


# rgb2hed's densities are decadic optical density / 6 (log base 1e-6): x 6 gives the OD that
# QuPath's stain vectors and thresholds (e.g. positive cell detection's 0.2 / 0.4 / 0.6) are in.
OD_PER_HED_UNIT = 6.0


def rgb_to_hed(rgb: np.ndarray, clip: bool = True) -> np.ndarray:
    """Haematoxylin, eosin, DAB densities of an RGB image (``skimage.color.rgb2hed``).

    Args:
        rgb: (..., 3) uint8 (0..255), uint16 or float in [0, 1].
        clip: clamp negative densities to 0 as rgb2hed does; ``False`` keeps them
            (noise statistics need both sides of the background).
    Returns:
        (..., 3) float64: H, E, DAB density in rgb2hed units (decadic OD / 6), >= 0 when clipped.
    """
    intensity = np.maximum(_as_float_rgb(rgb), _MIN_INTENSITY)
    stains = (np.log(intensity) / _LOG_ADJUST) @ HED_FROM_RGB
    return np.maximum(stains, 0.0) if clip else stains


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """RGB image of stain densities (``skimage.color.hed2rgb``).

    Args:
        hed: (..., 3) float densities in rgb2hed units.
    Returns:
        (..., 3) float64 RGB in [0, 1].
    """
    hed = np.asarray(hed, dtype=np.float64)
    if hed.ndim < 1 or hed.shape[-1] != 3:
        raise ValueError(f"expected stain densities with 3 channels last, got shape {hed.shape}")
    log_rgb = -(hed * -_LOG_ADJUST) @ RGB_FROM_HED
    return np.clip(np.exp(log_rgb), 0.0, 1.0)


def hematoxylin_od(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W) float64 haematoxylin density (rgb2hed channel 0), >= 0."""
    return rgb_to_hed(rgb)[..., 0]


def dab_od(rgb: np.ndarray, clip: bool = True) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W) float64 DAB density (rgb2hed channel 2), >= 0 unless ``clip=False``."""
    return rgb_to_hed(rgb, clip=clip)[..., 2]


def dab_rgb_float(rgb: np.ndarray) -> np.ndarray:
    """The DAB channel alone back in RGB: ``hed2rgb([0, 0, dab])``, (..., 3) float64 in [0, 1]."""
    dab = dab_od(rgb)
    zeros = np.zeros_like(dab)
    return hed_to_rgb(np.stack((zeros, zeros, dab), axis=-1))


def dab_rgb(ihc: np.ndarray) -> np.ndarray:
    """DAB channel image ``K_M`` exactly as the release writes it (docs/method.md step 2).

    The release converts with ``np.array(x * 255, dtype=np.uint8)``, which
    truncates; we do the same (verified pixel-identical on the official fixture).

    Args:
        ihc: (H, W, 3) uint8 RGB IHC tile.
    Returns:
        (H, W, 3) uint8 brown-on-white DAB-only image.
    """
    return (dab_rgb_float(ihc) * 255).astype(np.uint8)


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (``skimage.color.rgb2hsv(rgb)[..., 1]``).

    Args:
        rgb: (..., 3) uint8 / uint16 / float in [0, 1].
    Returns:
        (...) float64 in [0, 1]; 0 where the pixel is grey (max == min).
    """
    rgb = _as_float_rgb(rgb)
    value = rgb.max(axis=-1)
    delta = np.ptp(rgb, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sat = delta / value
    sat[delta == 0.0] = 0.0
    return sat


def release_blur(mask: np.ndarray) -> np.ndarray:
    """The release's mask blur, bit-identical to ``cv2.GaussianBlur(mask, (9, 9), 3)`` on uint8.

    Separable fixed-point convolution (``RELEASE_BLUR_TAPS``, sum 256 per
    pass) with OpenCV's default border BORDER_REFLECT_101 (numpy ``reflect``);
    exact integer arithmetic, then round half up of the 16-bit fraction.

    Args:
        mask: (H, W) uint8.
    Returns:
        (H, W) uint8.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"expected an (H, W) uint8 mask, got shape {mask.shape} dtype {mask.dtype}")
    height, width = mask.shape
    r = RELEASE_BLUR_RADIUS
    padded = np.pad(mask.astype(np.int64), r, mode="reflect")
    rows = np.zeros((height + 2 * r, width), dtype=np.int64)
    for i, tap in enumerate(RELEASE_BLUR_TAPS):
        rows += tap * padded[:, i : i + width]
    out = np.zeros((height, width), dtype=np.int64)
    for i, tap in enumerate(RELEASE_BLUR_TAPS):
        out += tap * rows[i : i + height, :]
    return ((out + (1 << 15)) >> 16).astype(np.uint8)


def release_membrane_mask(ihc: np.ndarray, blur: bool = True) -> np.ndarray:
    """The release's membrane mask ``M`` (docs/method.md step 3, ``get_dab_mask.py``).

    Saturation of the float DAB-only image (before uint8 truncation, as the
    release does) strictly above 0.15 -> 255, else 0; optionally blurred.

    Args:
        ihc: (H, W, 3) uint8 RGB IHC tile.
        blur: apply the release's 9x9, sigma 3 Gaussian (its default for training).
    Returns:
        (H, W) uint8 in 0..255 (only 0 / 255 without blur).
    """
    mask = np.where(saturation(dab_rgb_float(ihc)) > RELEASE_SATURATION_THRESHOLD, 255, 0).astype(np.uint8)
    return release_blur(mask) if blur else mask


# --------------------------------------------------------------------------- torch


def _check_image_tensor(rgb: torch.Tensor, name: str = "rgb") -> None:
    if not isinstance(rgb, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(rgb).__name__}")
    if rgb.ndim < 3 or rgb.shape[-3] != 3:
        raise ValueError(f"{name} must have shape (*, 3, H, W), got {tuple(rgb.shape)}")
    if not rgb.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [0, 1], got dtype {rgb.dtype}")


def _apply_matrix(x: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    """out[..., j, h, w] = sum_i x[..., i, h, w] * matrix[i, j] (a row-vector @ matrix per pixel)."""
    m = torch.as_tensor(matrix, dtype=x.dtype, device=x.device)
    return torch.einsum("...ihw,ij->...jhw", x, m)


def rgb_to_hed_torch(rgb: torch.Tensor) -> torch.Tensor:
    """Batched, differentiable ``skimage.color.rgb2hed``.

    Args:
        rgb: (*, 3, H, W) float in [0, 1], any device.
    Returns:
        (*, 3, H, W) same dtype: H, E, DAB density >= 0 (rgb2hed units).
    """
    _check_image_tensor(rgb)
    intensity = rgb.clamp_min(_MIN_INTENSITY)
    return _apply_matrix(torch.log(intensity) / _LOG_ADJUST, HED_FROM_RGB).clamp_min(0.0)


def hed_to_rgb_torch(hed: torch.Tensor) -> torch.Tensor:
    """Batched, differentiable ``skimage.color.hed2rgb``.

    Args:
        hed: (*, 3, H, W) float stain densities (rgb2hed units).
    Returns:
        (*, 3, H, W) same dtype, RGB in [0, 1].
    """
    _check_image_tensor(hed, "hed")
    return torch.exp(_apply_matrix(hed * _LOG_ADJUST, RGB_FROM_HED)).clamp(0.0, 1.0)


def dab_od_torch(rgb: torch.Tensor) -> torch.Tensor:
    """(*, 3, H, W) RGB in [0, 1] -> (*, 1, H, W) DAB density >= 0 (rgb2hed channel 2)."""
    _check_image_tensor(rgb)
    intensity = rgb.clamp_min(_MIN_INTENSITY)
    weights = torch.as_tensor(HED_FROM_RGB[:, 2], dtype=rgb.dtype, device=rgb.device)
    dab = torch.einsum("...ihw,i->...hw", torch.log(intensity) / _LOG_ADJUST, weights)
    return dab.clamp_min(0.0).unsqueeze(-3)


def hematoxylin_od_torch(rgb: torch.Tensor) -> torch.Tensor:
    """(*, 3, H, W) RGB in [0, 1] -> (*, 1, H, W) haematoxylin density >= 0 (rgb2hed channel 0)."""
    _check_image_tensor(rgb)
    intensity = rgb.clamp_min(_MIN_INTENSITY)
    weights = torch.as_tensor(HED_FROM_RGB[:, 0], dtype=rgb.dtype, device=rgb.device)
    hematoxylin = torch.einsum("...ihw,i->...hw", torch.log(intensity) / _LOG_ADJUST, weights)
    return hematoxylin.clamp_min(0.0).unsqueeze(-3)


def dab_rgb_torch(rgb: torch.Tensor) -> torch.Tensor:
    """DAB channel image ``K_M`` (``hed2rgb([0, 0, dab])``), batched and differentiable.

    Args:
        rgb: (*, 3, H, W) float in [0, 1].
    Returns:
        (*, 3, H, W) same dtype, brown-on-white RGB in [0, 1] (no uint8 truncation).
    """
    dab = dab_od_torch(rgb)
    vector = torch.as_tensor(RGB_FROM_HED[2], dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)
    return torch.exp(dab * _LOG_ADJUST * vector).clamp(0.0, 1.0)


def saturation_torch(rgb: torch.Tensor) -> torch.Tensor:
    """HSV saturation (``rgb2hsv(...)[..., 1]``), batched.

    Args:
        rgb: (*, 3, H, W) float in [0, 1].
    Returns:
        (*, 1, H, W) same dtype in [0, 1]; 0 for grey pixels, whose gradient is 0 too
        (the division is guarded so that no NaN reaches the backward pass).
    """
    _check_image_tensor(rgb)
    value = rgb.amax(dim=-3, keepdim=True)
    delta = value - rgb.amin(dim=-3, keepdim=True)
    grey = delta == 0
    safe_value = torch.where(grey, torch.ones_like(value), value)
    return torch.where(grey, torch.zeros_like(delta), delta / safe_value)


def release_blur_torch(mask: torch.Tensor) -> torch.Tensor:
    """The release's 9x9, sigma 3 Gaussian blur on float masks, batched.

    Same taps as ``release_blur`` (OpenCV's fixed-point kernel / 256) and the
    same BORDER_REFLECT_101 border, in floating point (no uint8 rounding).

    Args:
        mask: (*, 1, H, W) float, H and W at least 5.
    Returns:
        (*, 1, H, W) same dtype.
    """
    if mask.ndim < 3 or mask.shape[-3] != 1:
        raise ValueError(f"mask must have shape (*, 1, H, W), got {tuple(mask.shape)}")
    height, width = mask.shape[-2:]
    r = RELEASE_BLUR_RADIUS
    if height <= r or width <= r:
        raise ValueError(f"mask must be at least {r + 1}x{r + 1} for the 9x9 blur, got {height}x{width}")
    batch_shape = mask.shape[:-3]
    flat = mask.reshape(-1, 1, height, width)
    taps = torch.as_tensor(RELEASE_BLUR_TAPS / 256.0, dtype=mask.dtype, device=mask.device)
    flat = torch.nn.functional.pad(flat, (r, r, r, r), mode="reflect")
    flat = torch.nn.functional.conv2d(flat, taps.view(1, 1, 1, -1))
    flat = torch.nn.functional.conv2d(flat, taps.view(1, 1, -1, 1))
    return flat.reshape(*batch_shape, 1, height, width)


def release_membrane_mask_torch(
    rgb: torch.Tensor,
    saturation_threshold: float = RELEASE_SATURATION_THRESHOLD,
    blur: bool = True,
) -> torch.Tensor:
    """The release's membrane mask on a batch of images (e.g. generated IHC on the GPU).

    Args:
        rgb: (*, 3, H, W) float in [0, 1].
        saturation_threshold: DAB-image saturation above which a pixel is membrane
            (release 0.15; the paper's analysis sweeps 0.10..0.50).
        blur: apply the release's 9x9, sigma 3 Gaussian.
    Returns:
        (*, 1, H, W) same dtype in [0, 1] (exactly {0, 1} without blur). Not
        differentiable (a hard threshold); use ``dab_od_torch`` for a smooth signal.
    """
    mask = (saturation_torch(dab_rgb_torch(rgb)) > saturation_threshold).to(rgb.dtype)
    return release_blur_torch(mask) if blur else mask
