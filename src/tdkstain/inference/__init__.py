"""Inference on images of any size, without seams.

The engine (stable API; ``tdkstain translate`` and ``tdkstain slide`` use it)::

    from tdkstain.inference import Stainer
    stainer, card = Stainer.from_checkpoint("runs/her2", tile=512, overlap=64, norm="global")
    ihc = stainer.stain_image(he)            # (H, W, 3) uint8 -> (H, W, 3) uint8, any H, W

- :class:`Stainer` ``(generator, *, device="auto", precision="fp32"|"bf16"|"fp16",
  channels_last=None, tile=512, overlap=64, batch=4, norm="global"|"kernel"|"tile",
  kernel_radius=1, stat_passes=1, blend_margin=None, stat_tiles=16)``. The generator is copied, never modified.
  ``stain_image(he)`` stains an image whole when it fits in one tile, otherwise
  tiled, normalised per ``norm`` and blended.
- Building blocks for streaming slides (the caller owns I/O and assembly):
  ``stainer.tile_stats(tiles, stats=None) -> list[NormStats]`` (pass 1: the
  statistics every instance-norm layer sees on each tile; with ``stats``,
  applies those while recording: a refinement pass),
  ``stainer.stain_tiles(tiles, stats=None, *, as_float=False) -> list[ndarray]``
  (batched; ``stats`` None = plain per-tile instance norm), ``stainer.align``
  (tile sizes and positions must be multiples of it: 8 for the release's G),
  ``stainer.sequential_stats(tiles, regions=None) -> NormStats`` (exact
  consistent statistics of a set of tiles, layer by layer; for a slide, call it
  on ~16 tissue tiles spread over the slide and stain every tile with the
  result: "global" in constant memory), ``stainer.grid(H, W)``,
  ``stainer.pooled_stats(grid, stats)``.
- :func:`combine_stats` ``(stats, weights=None) -> NormStats`` pools tiles (mean
  and variance of the union of their pixels: within- plus between-tile
  variance); :func:`neighbourhood_stats` ``({(row, col): NormStats}, radius)``
  pools each tile's grid neighbours (absent tiles, e.g. background, skipped).
- :class:`TileGrid` ``(height, width, tile, overlap)``: ``positions``
  (:class:`TilePosition` with ``row, col, y, x, height, width``, ``crop(image)``),
  ``weights(position, margin)`` (ramps only on sides with a neighbour; all
  tiles' weights sum to exactly 1), ``core(position)``,
  ``row_borders`` / ``col_borders``; :func:`blend_weights` ``(tile, overlap,
  margin=0)``: an interior tile's ramps, which sum to 1 over a uniform grid;
  :class:`Blender` accumulates ``weight * tile`` and divides by the weight sum.
- :func:`seam_score` ``(image, tile, overlap=0, *, band=4, grid=None) -> float``:
  mean absolute intensity step across tile borders over the same step inside
  tiles (about 1: no visible border); :func:`border_steps` ``(image, grid,
  stained=None, *, band=4) -> BorderSteps`` scores borders between stained
  tiles and borders between a stained and a skipped tile (a slide's
  background) apart.

Norm modes. The release's generator uses instance norm (per sample, per
channel mean and variance over space, no running statistics), so staining
tiles separately normalises each tile by its own statistics and adjacent
tiles disagree: seams and level jumps ("tile" mode, what naive tiling does).
The other modes normalise every tile with statistics that agree across tiles:

- "global" (default): the statistics the generator would compute on the whole
  image. A later layer's statistics depend on how earlier layers were
  normalised, so they are gathered layer by layer
  (:meth:`Stainer.sequential_stats`): all tiles advance one module at a time,
  and at each norm layer the statistics of every tile's core (its share of a
  partition of the image, :meth:`TileGrid.core`) are pooled and applied to
  all tiles before the next layer runs. One extra forward pass; memory holds
  the activations of up to ``stat_tiles`` (16) tiles at one layer; images with
  more tiles take their statistics from 16 tiles spread evenly over the grid.
- "kernel": each tile pools the per-tile statistics of the tiles within
  ``kernel_radius`` (constant kernel, after kernelized instance normalisation,
  Ho et al., ECCV 2022), from one plain pass (:meth:`Stainer.tile_stats`: every
  layer recorded with per-tile normalisation, an approximation beyond the first
  layer). Local, streams in constant memory: for slides.

Measured on real H&E (benchmarks/seams.py; the 1000 px tiatoolbox target
and a 1024 px region of the CMU Aperio slide; tiles 256, overlap 64; mean
absolute difference to whole-image inference in grey levels 0..255):

=====================  ==========================  ===========================
mode                   demo generator (ngf 16,     release-layout fixture
                       trained briefly)            (ngf 8, untrained)
=====================  ==========================  ===========================
naive (no overlap)     6.9 / 10.3                  14.7 / 20.3
tile + blend           6.3 / 9.9                   11.5 / 17.8
global, all tiles      0.11 / 0.09                 1.5 / 1.6
global, 16 of 25 tiles 1.5 / 2.5                   4.8 / 4.0
kernel, radius 1       3.8 / 8.7                   8.2 / 15.2
=====================  ==========================  ===========================

Seam score (band 4 px): naive tiling 1.25 / 1.97 (demo), 1.12 / 1.40
(fixture); every blended mode 0.94-1.03, as the whole image scores at the same
borders (1.02-1.08). Hard seams come from the receptive field cut at tile
borders as much as from the statistics: overlap and blending remove those,
consistent statistics remove the level differences between tiles. Collecting
all layers' statistics in one plain pass and pooling them (what "kernel"
does) is a coarse approximation for deep layers; re-collecting them with the
pooled statistics applied (``stat_passes`` 2) measured worse (kernel: MAE
9.2-63 against 3.8-15.2 with one pass:
normalising with fixed statistics does not re-centre each layer as per-tile
normalisation does, so errors compound), hence the layer-by-layer "global".
"""

from __future__ import annotations

from tdkstain.inference.engine import DEFAULT_NORM, NORM_MODES, PRECISIONS, Stainer, downsampling_factor, fit_tiling, resolve_device
from tdkstain.inference.norm import ConsistentInstanceNorm, NormStats, combine_stats, consistent_norm_copy, neighbourhood_stats
from tdkstain.inference.seams import BorderSteps, border_steps, seam_score, seam_steps
from tdkstain.inference.tiling import Blender, TileGrid, TilePosition, blend_weights

__all__ = [
    "Stainer",
    "DEFAULT_NORM",
    "NORM_MODES",
    "PRECISIONS",
    "resolve_device",
    "downsampling_factor",
    "fit_tiling",
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
    "BorderSteps",
    "border_steps",
]
