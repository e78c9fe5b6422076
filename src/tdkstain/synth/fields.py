"""Random fields for synthetic tissue: smooth noise, chromatin grain, collagen fibres, section warps.

All return float64 arrays on a square (n, n) canvas and draw only from the
``numpy.random.Generator`` they are given, so a tile is a pure function of its seed.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

def smooth_noise(rng: np.random.Generator, n: int, scale_px: float) -> np.ndarray:
    """(n, n) float64 smooth random field, zero mean, unit std, correlation length ~``scale_px``.

    Gaussian bumps on a coarse grid (spacing ``scale_px``) with random weights,
    summed as two small matrix products on a grid of ``scale_px / 6`` steps and
    upsampled bilinearly: far cheaper than a Gaussian filter of white noise with
    a kernel hundreds of pixels long. ``einsum`` rather than ``@`` because a
    multi-threaded BLAS on tiny matrices stalls when the cores are busy.
    """
    spacing = max(float(scale_px), 1.0)
    step = max(1, int(spacing / 6))
    knots = np.arange(-2 * spacing, n + 2 * spacing, spacing)
    x = np.arange(0, n + 2 * step, step, dtype=np.float64)
    basis = np.exp(-0.5 * ((x[:, None] - knots[None, :]) / (0.7 * spacing)) ** 2)
    weights = rng.standard_normal((knots.size, knots.size))
    field = np.einsum("ik,jk->ij", np.einsum("ik,kl->il", basis, weights), basis)
    if step > 1:
        field = ndimage.zoom(field, step, order=1, grid_mode=False)
    field = field[:n, :n]
    return (field - field.mean()) / (field.std() + 1e-12)


def fine_noise(rng: np.random.Generator, n: int, sigma_px: float) -> np.ndarray:
    """(n, n) float64 Gaussian-filtered white noise, zero mean, unit std (chromatin, grain)."""
    field = ndimage.gaussian_filter(rng.standard_normal((n, n)), sigma_px, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def fibres(rng: np.random.Generator, n: int, angle: float, px: float) -> np.ndarray:
    """(n, n) float64 in [0, 1]: wavy collagen fibres running along ``angle`` (radians).

    White noise smoothed much more along the fibre than across it (0.5 vs 5 um),
    sampled on rotated coordinates that a smooth random displacement (~4 um
    over ~25 um) bends into irregular wavy bundles; a second smooth field makes
    some stroma looser than other.
    """
    m = int(math.ceil(n * 1.5)) + 8
    noise = ndimage.gaussian_filter(rng.standard_normal((m, m)), (0.5 * px, 5.0 * px), mode="wrap", truncate=2.5)
    rows, cols = np.mgrid[0:n, 0:n].astype(np.float64) - n / 2
    along = cols * math.cos(angle) + rows * math.sin(angle)
    across = -cols * math.sin(angle) + rows * math.cos(angle)
    across += 4.0 * px * smooth_noise(rng, n, 25.0 * px)
    along += 4.0 * px * smooth_noise(rng, n, 25.0 * px)
    sample = np.stack([across + m / 2, along + m / 2])
    fib = ndimage.map_coordinates(noise, sample, order=1, mode="wrap")
    fib = (fib - fib.mean()) / (fib.std() + 1e-12)
    density = 0.8 + 0.2 * np.tanh(smooth_noise(rng, n, 30.0 * px))
    return density / (1.0 + np.exp(-2.0 * fib))


def warp_field(rng: np.random.Generator, n: int, misregister: float) -> np.ndarray:
    """(2, n, n) float64 smooth displacement (rows, cols) in px with max magnitude <= ``misregister``.

    A consecutive section is never pixel-perfect (docs/method.md "Data"): a global shift
    plus a gentle deformation, both scaled so the largest displacement is 50-100 %
    of ``misregister``.
    """
    if misregister <= 0:
        return np.zeros((2, n, n))
    disp = np.stack([smooth_noise(rng, n, n / 2.0) + rng.normal(0, 1.0) for _ in range(2)])
    magnitude = np.sqrt((disp**2).sum(0)).max()
    return disp * (misregister * rng.uniform(0.5, 1.0) / (magnitude + 1e-12))


def bilinear(images: np.ndarray | list[np.ndarray], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sample C images of shape (n0, n1) at float positions ``rows``, ``cols`` (any shape S), bilinear,
    edges clamped -> (C, *S) float64.

    Weights and flat indices are computed once and shared by all channels; a
    flat ``take`` per 2-D channel is ~3x faster than fancy indexing an
    (n, n, C) stack and ~2x faster than ``ndimage.map_coordinates(order=1)``.
    """
    n0, n1 = images[0].shape
    rows = np.clip(rows, 0, n0 - 1.000001)
    cols = np.clip(cols, 0, n1 - 1.000001)
    r0 = rows.astype(np.intp)
    c0 = cols.astype(np.intp)
    fr = rows - r0
    fc = cols - c0
    index = r0 * n1 + c0
    weights = ((1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc)
    offsets = (0, 1, n1, n1 + 1)
    out = []
    for image in images:
        flat = np.ascontiguousarray(image, dtype=np.float64).ravel()
        out.append(sum(w * flat[index + o] for w, o in zip(weights, offsets)))
    return np.stack(out)
