"""Instance-norm statistics that can be recorded on one tile and applied to another.

Instance normalisation (the release's ``InstanceNorm2d``, no affine, no
running statistics) normalises every feature map of every sample by that
sample's own mean and variance over space. Staining a large image tile by
tile therefore normalises each tile differently, and the tiles disagree where
they meet: the seams of naive tiled inference.

This module makes those statistics explicit. :func:`consistent_norm_copy`
returns a deep copy of a network whose ``InstanceNorm2d`` layers are
replaced by :class:`ConsistentInstanceNorm`, which can

- *record* the statistics it sees: per sample and channel, mean and biased
  (population) variance over ``(H, W)``, exactly what ``InstanceNorm2d``
  computes; and
- *apply* supplied statistics instead of its own, so that every tile of an
  image can be normalised with the same (global) or neighbourhood-smoothed
  (kernel) statistics.

:class:`NormStats` holds one set of statistics for every norm layer of the
network, in the network's module order; :func:`combine_stats` pools several
of them (law of total variance), :func:`neighbourhood_stats` does so over a
window of neighbouring grid tiles (the "kernel" mode, after kernelized
instance normalisation, Ho et al., ECCV 2022, with a constant kernel).

The user's network is never modified: the copy is made once per
:class:`tdkstain.inference.Stainer`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "NormStats",
    "ConsistentInstanceNorm",
    "consistent_norm_copy",
    "combine_stats",
    "neighbourhood_stats",
]


@dataclass(frozen=True)
class NormStats:
    """Instance-norm statistics of one tile (or pooled over several), for every norm layer.

    Attributes:
        mean: one ``(C_l,)`` float64 array per norm layer ``l`` (module order
            of the network), the mean of the layer's input over space.
        var: the same shapes, the biased (population) variance over space,
            as ``InstanceNorm2d`` uses; values >= 0.
        pixels: how many input pixels the statistics were gathered over (the
            default pooling weight of :func:`combine_stats`).
    """

    mean: tuple[np.ndarray, ...]
    var: tuple[np.ndarray, ...]
    pixels: float = 1.0

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.var):
            raise ValueError(f"NormStats: {len(self.mean)} means but {len(self.var)} variances")
        for l, (m, v) in enumerate(zip(self.mean, self.var)):
            if m.shape != v.shape or m.ndim != 1:
                raise ValueError(f"NormStats layer {l}: mean {m.shape} and var {v.shape} must be equal 1-D shapes")

    @property
    def num_layers(self) -> int:
        return len(self.mean)

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(int(m.shape[0]) for m in self.mean)


def combine_stats(stats: Sequence[NormStats], weights: Sequence[float] | None = None) -> NormStats:
    """Pool the statistics of several tiles as if their pixels were one sample.

    Per layer and channel, with normalised weights ``w_i`` (default: each
    tile's ``pixels``):
    ``mean = sum w_i m_i`` and ``var = sum w_i (v_i + m_i**2) - mean**2``, i.e.
    the within-tile variance plus the between-tile variance of the means (law
    of total variance). For tiles that partition an image with pixel-count
    weights this is exactly the statistics of the whole image.

    Args:
        stats: one :class:`NormStats` per tile, all with the same layers and channels.
        weights: one non-negative weight per tile, not all zero (default:
            their ``pixels``).

    Returns:
        The pooled :class:`NormStats` (float64), ``pixels`` the sum over tiles.
    """
    if len(stats) == 0:
        raise ValueError("combine_stats needs at least one NormStats")
    w = np.asarray([s.pixels for s in stats] if weights is None else weights, dtype=np.float64)
    if w.shape != (len(stats),):
        raise ValueError(f"combine_stats: {len(stats)} stats but weights of shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("combine_stats: weights must be finite, non-negative and not all zero")
    w = w / w.sum()
    channels = stats[0].channels
    for s in stats[1:]:
        if s.channels != channels:
            raise ValueError(f"combine_stats: layer channels differ ({s.channels} vs {channels}); stats of one network only")
    means: list[np.ndarray] = []
    variances: list[np.ndarray] = []
    for l in range(len(channels)):
        m = np.stack([s.mean[l] for s in stats])  # (N, C)
        v = np.stack([s.var[l] for s in stats])
        mean = w @ m
        second = w @ (v + m * m)
        means.append(mean)
        # float rounding can push a constant channel's variance a hair below 0
        variances.append(np.maximum(second - mean * mean, 0.0))
    return NormStats(tuple(means), tuple(variances), float(sum(s.pixels for s in stats)))


def neighbourhood_stats(
    stats: Mapping[tuple[int, int], NormStats], radius: int
) -> dict[tuple[int, int], NormStats]:
    """Kernel-mode statistics: every tile pools its grid neighbours within ``radius``.

    Kernelized instance normalisation (Ho et al., ECCV 2022) normalises each
    tile with statistics gathered from the tiles around it. Here the kernel
    is constant over the ``(2 * radius + 1)**2`` window (Chebyshev distance
    <= ``radius`` in grid units) and the pooling is :func:`combine_stats`
    (mean and variance of the union of pixels, not an average of variances).
    Tiles absent from ``stats`` (e.g. background skipped on a slide) simply
    do not contribute. ``radius`` 0 returns every tile's own statistics.

    Args:
        stats: ``(row, col)`` grid index -> that tile's :class:`NormStats`.
        radius: window half-width in tiles, >= 0.

    Returns:
        ``(row, col)`` -> pooled :class:`NormStats`, for every key of ``stats``.
    """
    if radius < 0:
        raise ValueError(f"neighbourhood_stats: radius must be >= 0, got {radius}")
    pooled: dict[tuple[int, int], NormStats] = {}
    for (row, col) in stats:
        members = [
            stats[(r, c)]
            for r in range(row - radius, row + radius + 1)
            for c in range(col - radius, col + radius + 1)
            if (r, c) in stats
        ]
        pooled[(row, col)] = members[0] if len(members) == 1 else combine_stats(members)
    return pooled


class ConsistentInstanceNorm(nn.Module):
    """``InstanceNorm2d`` whose statistics can be recorded, or supplied from outside.

    Input and output: ``(B, C, H, W)``, any float dtype (statistics and
    normalisation are computed in float32, as autocast does for instance
    norm; the output has the input's dtype).

    Behaviour per call, set by the owner between forward passes:
    - ``supplied`` None: normalise by the sample's own statistics (plain
      instance norm, bit-for-bit ``F.instance_norm`` when not recording);
    - ``supplied`` = ``(mean, var)``, both ``(B, C)`` float32 on the input's
      device: normalise by those instead;
    - ``recording`` True: also store the sample's own ``(mean, var)`` (each
      ``(B, C)`` float32) in ``recorded``, whatever is applied.
    """

    def __init__(self, source: nn.InstanceNorm2d) -> None:
        super().__init__()
        self.num_features = source.num_features
        self.eps = float(source.eps)
        self.affine = bool(source.affine)
        if self.affine:
            self.weight = source.weight
            self.bias = source.bias
        self.recording = False
        self.recorded: tuple[torch.Tensor, torch.Tensor] | None = None
        self.supplied: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.recording and self.supplied is None:
            y = torch.nn.functional.instance_norm(
                x.float(), weight=self.weight if self.affine else None, bias=self.bias if self.affine else None, eps=self.eps
            )
            return y.to(x.dtype)
        xf = x.float()
        if self.recording:
            var, mean = torch.var_mean(xf, dim=(2, 3), unbiased=False)
            self.recorded = (mean.detach(), var.detach())
        if self.supplied is not None:
            mean, var = self.supplied
            if mean.shape != (x.shape[0], x.shape[1]):
                raise ValueError(f"supplied statistics of shape {tuple(mean.shape)} for an input of shape {tuple(x.shape)}")
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            scale = scale * self.weight
            shift = shift * self.weight + self.bias
        y = torch.addcmul(shift[:, :, None, None], xf, scale[:, :, None, None])
        return y.to(x.dtype)


def consistent_norm_copy(network: nn.Module) -> tuple[nn.Module, list[ConsistentInstanceNorm]]:
    """A deep copy of ``network`` with every per-sample ``InstanceNorm2d`` made controllable.

    ``InstanceNorm2d`` layers that track running statistics are left alone in
    eval mode they already use fixed statistics, consistent across tiles.

    Returns:
        ``(copy, norms)``: the copy (same device and dtype as ``network``) and
        its :class:`ConsistentInstanceNorm` layers in module order (for
        ``nn.Sequential`` networks such as ``ResnetGenerator``, forward order).
        The statistics in a :class:`NormStats` follow this order.
    """
    clone = copy.deepcopy(network)
    norms: list[ConsistentInstanceNorm] = []

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, nn.InstanceNorm2d) and not child.track_running_stats:
                replacement = ConsistentInstanceNorm(child)
                setattr(parent, name, replacement)
                norms.append(replacement)
            else:
                swap(child)

    swap(clone)
    return clone, norms
