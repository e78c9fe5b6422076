"""Inference on images of any size, without seams.

The engine (stable API; ``tdkstain translate`` and ``tdkstain slide`` use it)::

    from tdkstain.inference import Stainer
    stainer, card = Stainer.from_checkpoint("runs/her2", tile=512, overlap=64, norm="global")
    ihc = stainer.stain_image(he)            # (H, W, 3) uint8 -> (H, W, 3) uint8, any H, W

- :class:`Stainer` ``(generator, *, device="auto", precision="fp32"|"bf16"|"fp16",
  channels_last=None, tile=512, overlap=64, batch=4, norm="global"|"kernel"|"tile",
  kernel_radius=1, stat_passes=1, blend_margin=None)``. The generator is copied, never modified.
  ``stain_image(he)`` stains an image whole when it fits in one tile, otherwise
  tiled, normalised per ``norm`` and blended.
- Building blocks for streaming slides (the caller owns I/O and assembly):
  ``stainer.tile_stats(tiles, stats=None) -> list[NormStats]`` (pass 1: the
  statistics every instance-norm layer sees on each tile; with ``stats``,
  applies those while recording: a refinement pass),
  ``stainer.stain_tiles(tiles, stats=None, *, as_float=False) -> list[ndarray]``
  (batched; ``stats`` None = plain per-tile instance norm), ``stainer.align``
  (tile sizes and positions must be multiples of it: 8 for the release's G),
  ``stainer.grid(H, W)``, ``stainer.pooled_stats(grid, stats)``.
- :func:`combine_stats` ``(stats, weights=None) -> NormStats`` pools tiles (mean
  and variance of the union of their pixels: within- plus between-tile
  variance); :func:`neighbourhood_stats` ``({(row, col): NormStats}, radius)``
  pools each tile's grid neighbours (absent tiles, e.g. background, skipped).
- :class:`TileGrid` ``(height, width, tile, overlap)``: ``positions``
  (:class:`TilePosition` with ``row, col, y, x, height, width``, ``crop(image)``),
  ``weights(position, margin)`` (ramps only on sides with a neighbour),
  ``row_borders`` / ``col_borders``; :func:`blend_weights` ``(tile, overlap,
  margin=0)``: an interior tile's ramps, which sum to 1 over a uniform grid;
  :class:`Blender` accumulates ``weight * tile`` and divides by the weight sum.
- :func:`seam_score` ``(image, tile, overlap=0, *, band=4, grid=None) -> float``:
  mean absolute intensity step across tile borders over the same step inside
  tiles (about 1: no visible border).

Norm modes. The release's generator uses instance norm (per sample, per
channel mean and variance over space, no running statistics), so staining
tiles separately normalises each tile by its own statistics and adjacent
tiles disagree: seams ("tile" mode, what naive tiling does). The other modes
normalise every tile with statistics that are consistent across tiles:

- "global": statistics pooled over all tiles of the image (:func:`combine_stats`),
  which approximates what the generator computes on the whole image at once.
- "kernel": each tile pools the tiles within ``kernel_radius`` (constant
  kernel, after kernelized instance normalisation, Ho et al., ECCV 2022):
  stays local on large, heterogeneous slides, while neighbouring tiles share
  most of their pools.

A later layer's statistics depend on how earlier layers were normalised, so
exact consistent statistics would need one pass per norm layer. Pass 1
records every layer's statistics with plain per-tile normalisation (an
approximation for all but the first layer); each further ``stat_passes``
re-records them with the previous pooled statistics applied, so that layer k
is exact after k passes. Measured (benchmarks/seams.py): see the figures below.
"""

from __future__ import annotations

from tdkstain.inference.engine import DEFAULT_NORM, NORM_MODES, PRECISIONS, Stainer, downsampling_factor, resolve_device
from tdkstain.inference.norm import ConsistentInstanceNorm, NormStats, combine_stats, consistent_norm_copy, neighbourhood_stats
from tdkstain.inference.seams import seam_score, seam_steps
from tdkstain.inference.tiling import Blender, TileGrid, TilePosition, blend_weights

__all__ = [
    "Stainer",
    "DEFAULT_NORM",
    "NORM_MODES",
    "PRECISIONS",
    "resolve_device",
    "downsampling_factor",
    "NormStats",
    "ConsistentInstanceNorm",
    "consistent_norm_copy",
    "combine_stats",
    "neighbourhood_stats",
    "TileGrid",
    "TilePosition",
    "blend_weights",
    "Blender",
    "seam_score",
    "seam_steps",
]
