"""The staining engine: a generator, a device and a precision, applied to tiles and images.

See the package docstring (:mod:`tdkstain.inference`) for the norm modes and
how slides use these building blocks.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from tdkstain.plumbing.devices import resolve_device
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.plumbing.limits import MAX_TILE_SIDE, check_number
from tdkstain.inference.norm import (
    ConsistentInstanceNorm,
    NormStats,
    combine_stats,
    consistent_norm_copy,
    neighbourhood_stats,
)
from tdkstain.inference.tiling import Blender, TileGrid
from tdkstain.models.layers import ResnetBlock

__all__ = ["Stainer", "NORM_MODES", "PRECISIONS", "DEFAULT_NORM", "resolve_device", "downsampling_factor", "fit_tiling"]

NORM_MODES = ("tile", "global", "kernel")
PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# The default norm mode for images larger than a tile: chosen by measurement
# (benchmarks/seams.py; numbers in the package docstring).
DEFAULT_NORM = "global"


def downsampling_factor(network: nn.Module) -> int:
    """The factor tile sizes and tile positions must be multiples of.

    A network that declares ``size_multiple`` (the comparison methods'
    generators: 2**num_downs for pix2pix's U-Net, e.g. 256 for unet_256)
    needs that. A ``ResnetGenerator`` with ``n_downsampling`` d needs
    ``2**d`` (sizes that are not give a differently sized output, and tiles
    that start off that lattice subsample differently from the whole image).
    Other networks: the product of the strides of their strided convolutions.
    """
    declared = getattr(network, "size_multiple", None)
    if isinstance(declared, int) and declared >= 1:
        return declared
    kwargs = getattr(network, "init_kwargs", None)
    if isinstance(kwargs, dict) and "n_downsampling" in kwargs:
        return 2 ** int(kwargs["n_downsampling"])
    factor = 1
    for m in network.modules():
        if isinstance(m, nn.Conv2d):
            factor *= int(m.stride[0])
    return factor


def fit_tiling(tile: int, overlap: int, align: int) -> tuple[int, int]:
    """The tile side and overlap closest to the requested ones that a generator aligned to ``align`` takes.

    ``tile`` is rounded up to a multiple of ``align``; ``overlap`` up to a
    multiple of ``align`` but at most half the tile (so 0 when half a tile is
    less than ``align``: then tiles abut, e.g. unet_256 with 256 px tiles).
    Values that already fit are returned unchanged. Used by the CLIs so that
    ``--tile 512 --overlap 64`` works for every method's generator.
    """
    if tile < 1 or overlap < 0 or align < 1:
        raise TdkstainError(f"need tile >= 1, overlap >= 0, align >= 1; got {tile}, {overlap}, {align}")
    tile = _round_up(tile, align)
    overlap = min(_round_up(overlap, align), (tile // 2) // align * align)
    return tile, overlap


def _pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad an ``(H, W, C)`` image at the bottom and right to ``height x width`` by mirror reflection."""
    pad_h, pad_w = height - image.shape[0], width - image.shape[1]
    if pad_h == 0 and pad_w == 0:
        return image
    # reflect needs at least 2 pixels; np.pad repeats the reflection for pads larger than the image
    mode = "reflect" if min(image.shape[:2]) > 1 else "edge"
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode)


class Stainer:
    """Stains H&E with a generator: whole images, tiled images, or tiles for slides.

    Not thread-safe: the norm layers of its network copy carry per-call
    state. Call it from one thread (decode and encode in others), or make
    one Stainer per thread.

    Args:
        generator: an H&E -> IHC network, ``(B, 3, H, W)`` -> ``(B, 3, H, W)``
            in [-1, 1] (e.g. ``tdkstain.models.tdkstain.ResnetGenerator``, or a
            comparison method's generator). Not modified: the Stainer works
            on a copy in eval mode. A network without per-sample instance
            norm (pix2pix's U-Net and PyramidPix2pix's ResNet use batch norm,
            whose running statistics are already the same for every tile)
            has nothing for ``norm`` to make consistent: every mode stains
            each tile once and blends the tiles.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        precision: ``"fp32"``; ``"bf16"`` or ``"fp16"`` run the convolutions
            under ``torch.autocast`` (instance norm stays float32).
        channels_last: memory format of weights and inputs; None -> True on
            CUDA (tensor cores prefer NHWC), False on CPU.
        tile: tile side in pixels for images larger than one tile; a multiple
            of :func:`downsampling_factor` (8 for the release's generator,
            256 for pix2pix's unet_256; :func:`fit_tiling` rounds to fit).
        overlap: overlap of neighbouring tiles, a multiple of that factor, < tile.
        batch: tiles per forward pass.
        norm: ``"tile"`` (plain instance norm per tile, the naive way),
            ``"global"`` (the statistics of the whole image, gathered layer by
            layer by :meth:`sequential_stats` over the tiles' cores) or
            ``"kernel"`` (pooled over the tiles within ``kernel_radius``, from
            :meth:`tile_stats`).
        kernel_radius: window half-width in tiles for ``"kernel"``.
        stat_passes: statistics passes for ``"kernel"``: 1 collects every
            layer's statistics in one plain-instance-norm pass; each further
            pass re-collects them with the previous pooled statistics applied
            (layer k is exact after k passes, but deeper layers measured worse).
        blend_margin: outer pixels of a tile side with a neighbour that get
            blending weight 0; default ``overlap // 4`` (ramps across the
            middle half of the overlap, away from the tile borders where the
            receptive field is cut off).
        stat_tiles: "global" gathers statistics over at most this many tiles
            (evenly spread over the grid; all of them when the image has no
            more): their activations are held together, layer by layer.
        compile: stain through ``torch.compile`` (inductor, weights frozen
            as constants): fuses instance norm, ReLU, padding and the layout
            changes around the convolutions: on a 2-core CPU 1.3x faster
            in fp32 and 1.75x in bf16 at 1024 px tiles (benchmarks/README.md),
            after a one-off compilation of 10-30 s per tile shape and batch
            size. Outputs differ from eager by float rounding. Worth it for
            slides and folders of images; statistics gathering stays eager.
            Falls back to eager (with a warning) where compilation fails,
            e.g. without a C++ compiler.
    """

    def __init__(
        self,
        generator: nn.Module,
        *,
        device: str | torch.device = "auto",
        precision: str = "fp32",
        channels_last: bool | None = None,
        tile: int = 512,
        overlap: int = 64,
        batch: int = 4,
        norm: str = DEFAULT_NORM,
        kernel_radius: int = 1,
        stat_passes: int = 1,
        blend_margin: int | None = None,
        stat_tiles: int = 16,
        compile: bool = False,
    ) -> None:
        if precision not in PRECISIONS:
            raise TdkstainError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if norm not in NORM_MODES:
            raise TdkstainError(f"norm must be one of {', '.join(NORM_MODES)}, got {norm!r}")
        self.align = downsampling_factor(generator)
        # Bounds before anything is allocated (tdkstain.plumbing.limits): a tile of 10^6 px or a batch of
        # 10^6 tiles would exhaust memory long before failing on its own.
        check_number("tile", tile, 1, MAX_TILE_SIDE, integer=True, hint="a tile side in pixels such as 512 or 1024")
        check_number("overlap", overlap, 0, MAX_TILE_SIDE, integer=True)
        check_number("batch", batch, 1, 1024, integer=True, hint="tiles per forward pass, e.g. 4")
        check_number("stat_tiles", stat_tiles, 1, 4096, integer=True)
        check_number("kernel_radius", kernel_radius, 0, 64, integer=True)
        check_number("stat_passes", stat_passes, 1, 16, integer=True)
        if tile < self.align or tile % self.align:
            raise TdkstainError(f"tile {tile} must be a positive multiple of {self.align} (the generator downsamples by {self.align})")
        if not 0 <= overlap < tile or overlap % self.align:
            raise TdkstainError(f"overlap {overlap} must be a multiple of {self.align} in [0, tile {tile})")
        if overlap > tile // 2:
            raise TdkstainError(f"overlap {overlap} must be at most half the tile ({tile // 2}); larger overlaps waste work")
        if stat_tiles < 1:
            raise TdkstainError(f"stat_tiles must be >= 1, got {stat_tiles}")
        if batch < 1 or kernel_radius < 0 or stat_passes < 1:
            raise TdkstainError(f"need batch >= 1, kernel_radius >= 0, stat_passes >= 1; got {batch}, {kernel_radius}, {stat_passes}")
        margin = overlap // 4 if blend_margin is None else int(blend_margin)
        if not 0 <= 2 * margin <= overlap:
            raise TdkstainError(f"blend_margin {margin} must be in [0, overlap / 2 = {overlap // 2}]")
        self.device = resolve_device(device)
        if precision == "fp16" and self.device.type == "cpu":
            raise TdkstainError("precision fp16 needs CUDA; on CPU use bf16 or fp32")
        self.precision = precision
        self.channels_last = (self.device.type == "cuda") if channels_last is None else bool(channels_last)
        self.tile, self.overlap, self.batch = int(tile), int(overlap), int(batch)
        self.norm, self.kernel_radius, self.stat_passes = norm, int(kernel_radius), int(stat_passes)
        self.blend_margin = margin
        self.stat_tiles = int(stat_tiles)

        network, norms = consistent_norm_copy(generator)
        network = network.to(self.device).eval()
        for p in network.parameters():
            p.requires_grad_(False)
        if self.channels_last:
            network = network.to(memory_format=torch.channels_last)
        self.network: nn.Module = network
        self._norms: list[ConsistentInstanceNorm] = norms
        self.compile = bool(compile)
        self._compiled: dict[str, Callable[..., torch.Tensor]] = {}
        self._compile_error: Exception | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, fit_tiles: bool = False, **kwargs: Any) -> tuple["Stainer", dict[str, Any]]:
        """A Stainer for a run folder, our safetensors (any method's generator), or the authors' ``latest_net_G.pth``.

        Returns ``(stainer, model_card)``; keyword arguments go to the
        constructor. ``fit_tiles``: round ``tile`` and ``overlap`` to what
        the generator takes (:func:`fit_tiling`) instead of refusing them.
        """
        from tdkstain.weights import load_generator_with_card

        generator, card = load_generator_with_card(path)
        if fit_tiles:
            align = downsampling_factor(generator)
            kwargs["tile"], kwargs["overlap"] = fit_tiling(kwargs.get("tile", 512), kwargs.get("overlap", 64), align)
        return cls(generator, **kwargs), card

    def __repr__(self) -> str:
        return (
            f"Stainer(device={self.device}, precision={self.precision}, channels_last={self.channels_last}, "
            f"tile={self.tile}, overlap={self.overlap}, batch={self.batch}, norm={self.norm!r}, "
            f"kernel_radius={self.kernel_radius}, stat_passes={self.stat_passes}, compile={self.compile})"
        )

    @property
    def num_norm_layers(self) -> int:
        """Instance-norm layers whose statistics a :class:`NormStats` holds (25 for the release's G)."""
        return len(self._norms)

    # ------------------------------------------------------------------ tensors

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_AUTOCAST_DTYPES[self.precision])

    def _to_tensor(self, tiles: Sequence[np.ndarray]) -> torch.Tensor:
        shape = tiles[0].shape
        for t in tiles:
            if t.dtype != np.uint8 or t.ndim != 3 or t.shape[2] != 3:
                raise TdkstainError(f"tiles must be (H, W, 3) uint8 RGB arrays, got {t.dtype} of shape {t.shape}")
            if t.shape != shape:
                raise TdkstainError(f"tiles of one call must have one shape; got {shape} and {t.shape}")
        if shape[0] % self.align or shape[1] % self.align:
            raise TdkstainError(f"tile size {shape[0]}x{shape[1]} is not a multiple of {self.align}; pad it (stain_image does)")
        batch = torch.from_numpy(np.stack(tiles)).to(self.device, non_blocking=True)
        # (B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1] (x / 127.5 - 1, docs/ARCHITECTURE.md)
        x = batch.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def _stats_tensors(self, stats: Sequence[NormStats]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per norm layer, the ``(B, C)`` float32 means and variances of a batch's statistics, on the device."""
        means, variances = [], []
        for l in range(len(self._norms)):
            means.append(torch.from_numpy(np.stack([s.mean[l] for s in stats])).to(self.device, torch.float32))
            variances.append(torch.from_numpy(np.stack([s.var[l] for s in stats])).to(self.device, torch.float32))
        return means, variances

    def _set_norms(self, stats: Sequence[NormStats] | None, record: bool) -> None:
        means, variances = self._stats_tensors(stats) if stats is not None else ([], [])
        for l, norm in enumerate(self._norms):
            norm.recording = record
            norm.recorded = None
            norm.supplied = None if stats is None else (means[l], variances[l])

    def _check_stats(self, stats: Sequence[NormStats] | None, count: int) -> None:
        if stats is None:
            return
        if len(stats) != count:
            raise TdkstainError(f"got {len(stats)} NormStats for {count} tiles; pass one per tile")
        for s in stats:
            if s.num_layers != len(self._norms):
                raise TdkstainError(f"NormStats has {s.num_layers} layers, the generator {len(self._norms)}; stats of another network?")

    def _forward(
        self,
        tiles: Sequence[np.ndarray],
        stats: Sequence[NormStats] | None,
        record: bool,
    ) -> tuple[torch.Tensor, list[NormStats] | None]:
        x = self._to_tensor(tiles)
        pixels = float(tiles[0].shape[0] * tiles[0].shape[1])
        if self.compile and not record:
            y = self._compiled_forward(x, stats)
            if y is not None:
                return y, None
        self._set_norms(stats, record)
        try:
            with torch.inference_mode(), self._autocast():
                y = self.network(x)
            recorded = None
            if record:
                layers = [(n.recorded[0].double().cpu().numpy(), n.recorded[1].double().cpu().numpy()) for n in self._norms]
                recorded = [
                    NormStats(tuple(m[b] for m, _ in layers), tuple(v[b] for _, v in layers), pixels)
                    for b in range(len(tiles))
                ]
        finally:
            self._set_norms(None, False)
        return y, recorded

    def _compiled_forward(self, x: torch.Tensor, stats: Sequence[NormStats] | None) -> torch.Tensor | None:
        """The network through ``torch.compile``; None once compilation has failed (the caller runs eager)."""
        if self._compile_error is not None:
            return None
        import torch._inductor.config as inductor_config

        key = "plain" if stats is None or not self._norms else "supplied"
        try:
            if key not in self._compiled:
                self._compiled[key] = torch.compile(self.network if key == "plain" else self._supplied_forward,
                                                    fullgraph=True, dynamic=False)
            args = (x,) if key == "plain" else (x, *self._stats_tensors(stats or []))
            # freezing: the weights become constants, which lets inductor prepack them for oneDNN;
            # it applies only under no_grad / inference mode, as here.
            with torch.inference_mode(), self._autocast(), inductor_config.patch(freezing=True):
                return self._compiled[key](*args)
        except Exception as error:  # noqa: BLE001 - any backend failure (no C++ compiler, unsupported op) -> eager
            import warnings

            self._compile_error = error
            warnings.warn(f"torch.compile failed ({type(error).__name__}: {str(error)[:200]}); staining eagerly instead", stacklevel=3)
            return None

    def _supplied_forward(self, x: torch.Tensor, means: list[torch.Tensor], variances: list[torch.Tensor]) -> torch.Tensor:
        """The network with each norm layer's statistics given as arguments (what ``compile`` traces).

        As arguments they become inputs of the compiled graph; set as module
        attributes before the call, inductor's freezing would bake the first
        batch's statistics into the weights.
        """
        for norm, mean, var in zip(self._norms, means, variances):
            norm.supplied = (mean, var)
        try:
            return self.network(x)
        finally:
            for norm in self._norms:
                norm.supplied = None

    @staticmethod
    def _to_rgb_float(y: torch.Tensor) -> np.ndarray:
        # (B, 3, H, W) in [-1, 1] -> (B, H, W, 3) float32 in [0, 255]
        return ((y.float().clamp(-1, 1) + 1.0) * 127.5).permute(0, 2, 3, 1).cpu().numpy()

    def _batches(self, count: int) -> Iterator[slice]:
        for start in range(0, count, self.batch):
            yield slice(start, min(start + self.batch, count))

    # ------------------------------------------------------------------ building blocks (slides)

    def tile_stats(
        self,
        tiles: Sequence[np.ndarray],
        stats: Sequence[NormStats] | None = None,
    ) -> list[NormStats]:
        """Pass 1: the instance-norm statistics every norm layer sees on each tile.

        Args:
            tiles: ``(h, w, 3)`` uint8 RGB arrays of one shape, h and w
                multiples of :attr:`align`.
            stats: None -> each tile normalised by its own statistics while
                recording (one plain pass). Or one :class:`NormStats` per tile
                to apply while recording: a refinement pass, whose recorded
                statistics of layer k follow from consistent statistics in
                layers < k (measured worse than one pass; see the package docstring).

        Returns:
            One :class:`NormStats` per tile (float64, module order), ``pixels``
            the tile's area.
        """
        self._check_stats(stats, len(tiles))
        if not self._norms:  # nothing to record: no forward pass needed
            return [NormStats((), (), float(t.shape[0] * t.shape[1])) for t in tiles]
        out: list[NormStats] = []
        for s in self._batches(len(tiles)):
            _, recorded = self._forward(tiles[s], None if stats is None else stats[s], record=True)
            out.extend(recorded or [])
        return out

    def stain_tiles(
        self, tiles: Sequence[np.ndarray], stats: Sequence[NormStats] | None = None, *, as_float: bool = False
    ) -> list[np.ndarray]:
        """Stain tiles in batches of :attr:`batch`.

        Args:
            tiles: ``(h, w, 3)`` uint8 RGB H&E of one shape (multiples of :attr:`align`).
            stats: None -> plain per-tile instance norm; else one
                :class:`NormStats` per tile to normalise with (e.g. from
                :func:`combine_stats` or :func:`neighbourhood_stats`).
            as_float: return float32 in [0, 255] (for blending) instead of uint8.

        Returns:
            One ``(h, w, 3)`` IHC tile per input, uint8 (rounded) or float32.
        """
        self._check_stats(stats, len(tiles))
        out: list[np.ndarray] = []
        for s in self._batches(len(tiles)):
            y, _ = self._forward(tiles[s], None if stats is None else stats[s], record=False)
            rgb = self._to_rgb_float(y)
            out.extend(rgb if as_float else np.rint(rgb).astype(np.uint8))
        return out

    def sequential_stats(
        self, tiles: Sequence[np.ndarray], regions: Sequence[tuple[float, float, float, float]] | None = None
    ) -> NormStats:
        """Exact consistent statistics of a set of tiles, layer by layer ("global" mode).

        Runs the network one module at a time over *all* tiles together: at
        each instance-norm layer the statistics of every tile are pooled
        (:func:`combine_stats`, pixel-weighted) and every tile is normalised
        with the pool before the next layer runs. So each layer's statistics
        follow from consistent normalisation of all earlier layers, as when
        the union of the tiles goes through the network in one piece (only
        the receptive field cut at tile borders differs). One forward pass of
        work; memory holds the activations of all ``tiles`` at one layer:
        about 0.19 GiB per 512 px tile for the release's G in fp32 (measured
        on CPU: 4 tiles added 0.76 GiB to the peak RSS, as much as one batch
        of 4 in :meth:`stain_tiles`), so about 3 GiB for 16; pass a subset
        for big images.

        Args:
            tiles: ``(h, w, 3)`` uint8 RGB tiles of one shape (multiples of :attr:`align`).
            regions: optional ``(top, bottom, left, right)`` box per tile in
                tile pixels (:meth:`TileGrid.core`): statistics are gathered
                over that part only (scaled to each layer's resolution) and
                pooled by its area, so overlaps count once and the pixels near
                tile borders, where the receptive field is cut, count least.
                With the cores of a whole grid the statistics match whole-image
                inference to about 1e-3 of a standard deviation (measured on
                real H&E; tests/test_inference.py checks it).

        Returns:
            The pooled :class:`NormStats`, ``pixels`` the pixels it pooled.
        """
        if len(tiles) == 0:
            raise TdkstainError("sequential_stats needs at least one tile")
        if regions is not None and len(regions) != len(tiles):
            raise TdkstainError(f"got {len(regions)} regions for {len(tiles)} tiles; pass one per tile")
        height, width = tiles[0].shape[:2]
        if not self._norms:  # nothing to gather: no forward pass needed
            pixels = float(len(tiles) * height * width) if regions is None else float(sum((b - t) * (r - l) for t, b, l, r in regions))
            return NormStats((), (), pixels)
        activations = [self._to_tensor(tiles[s]) for s in self._batches(len(tiles))]
        boxes = None
        if regions is not None:
            fractions = [(t / height, b / height, l / width, r / width) for t, b, l, r in regions]
            boxes = [fractions[s] for s in self._batches(len(tiles))]
        layers: list[tuple[np.ndarray, np.ndarray]] = []
        with torch.inference_mode():
            _layerwise(self.network, activations, layers, self._autocast, boxes)
        if len(layers) != len(self._norms):
            raise TdkstainError(f"sequential_stats visited {len(layers)} of {len(self._norms)} norm layers; the network is not a plain sequence")
        if regions is None:
            pixels = float(len(tiles) * height * width)
        else:
            pixels = float(sum((b - t) * (r - l) for t, b, l, r in regions))
        return NormStats(tuple(m for m, _ in layers), tuple(v for _, v in layers), pixels)

    def grid(self, height: int, width: int) -> TileGrid:
        """The tile grid :meth:`stain_image` uses for an image of this size (after padding to :attr:`align`)."""
        return TileGrid(*self._padded_size(height, width), self.tile, self.overlap)

    def pooled_stats(self, grid: TileGrid, stats: Sequence[NormStats]) -> list[NormStats]:
        """Per-tile statistics -> the statistics each tile is stained with, per :attr:`norm`.

        ``stats`` follows ``grid.positions``. "global": every tile gets the
        pool of all; "kernel": its neighbourhood's pool; "tile": its own.
        """
        if self.norm == "global":
            pooled = combine_stats(stats)
            return [pooled] * len(stats)
        if self.norm == "kernel":
            by_index = neighbourhood_stats({p.index: s for p, s in zip(grid.positions, stats)}, self.kernel_radius)
            return [by_index[p.index] for p in grid.positions]
        return list(stats)

    # ------------------------------------------------------------------ images

    def stain_image(self, he: np.ndarray, *, progress: Callable[[int], Any] | None = None, as_float: bool = False) -> np.ndarray:
        """Stain an H&E image of any size.

        Images that fit in one tile go through the generator whole (padded by
        reflection to a multiple of :attr:`align`, then cropped). Larger
        images are tiled (:meth:`grid`), normalised per :attr:`norm`, and the
        tiles blended with :meth:`TileGrid.weights`.

        Args:
            he: ``(H, W, 3)`` uint8 RGB.
            progress: called with the number of tile forward passes just done
                (for a progress bar); :meth:`passes_for` says how many in all.
            as_float: return float32 in [0, 255] instead of rounding to uint8.

        Returns:
            ``(H, W, 3)`` uint8 RGB virtual IHC (float32 with ``as_float``).
        """
        if not isinstance(he, np.ndarray) or he.dtype != np.uint8 or he.ndim != 3 or he.shape[2] != 3 or 0 in he.shape:
            got = f"{he.dtype} array of shape {he.shape}" if isinstance(he, np.ndarray) else type(he).__name__
            raise TdkstainError(f"stain_image takes an (H, W, 3) uint8 RGB image, got {got}")
        height, width = he.shape[:2]
        padded = _pad_to(he, *self._padded_size(height, width))
        tick = progress or (lambda n: None)
        if padded.shape[0] <= self.tile and padded.shape[1] <= self.tile:
            out = self.stain_tiles([padded], as_float=as_float)[0]
            tick(1)
            return out[:height, :width]

        grid = TileGrid(padded.shape[0], padded.shape[1], self.tile, self.overlap)
        positions = grid.positions
        tiles = [p.crop(padded) for p in positions]
        applied: list[NormStats] | None = None
        if not self._norms:
            pass  # no per-sample instance norm (e.g. batch norm): nothing to make consistent, tiles are only blended
        elif self.norm == "global":
            chosen = _spread(len(tiles), self.stat_tiles)
            pooled = self.sequential_stats([tiles[i] for i in chosen], [grid.core(positions[i]) for i in chosen])
            tick(len(chosen))
            applied = [pooled] * len(tiles)
        elif self.norm == "kernel":
            for _ in range(self.stat_passes):
                recorded: list[NormStats] = []
                for s in self._batches(len(tiles)):
                    recorded += self.tile_stats(tiles[s], None if applied is None else applied[s])
                    tick(s.stop - s.start)
                applied = self.pooled_stats(grid, recorded)
        blender = Blender(padded.shape[0], padded.shape[1])
        for s in self._batches(len(tiles)):
            stained = self.stain_tiles(tiles[s], None if applied is None else applied[s], as_float=True)
            for p, t in zip(positions[s], stained):
                blender.add(t, p.y, p.x, grid.weights(p, self.blend_margin))
            tick(s.stop - s.start)
        return blender.result(uint8=not as_float)[:height, :width]

    def _padded_size(self, height: int, width: int) -> tuple[int, int]:
        # multiples of align, and with instance norm at least 2 * align so the deepest feature map has
        # more than one pixel (instance norm of a single value is undefined); batch norm in eval mode
        # takes a 1x1 map (pix2pix's unet_256 runs 256 px images down to 1x1)
        least = (2 if self._norms else 1) * self.align
        return (max(_round_up(height, self.align), least), max(_round_up(width, self.align), least))

    def passes_for(self, height: int, width: int) -> int:
        """Tile forward passes :meth:`stain_image` makes for an image of this size (for progress bars)."""
        padded_height, padded_width = self._padded_size(height, width)
        if padded_height <= self.tile and padded_width <= self.tile:
            return 1
        n = len(self.grid(height, width))
        if not self._norms or self.norm == "tile":
            return n
        if self.norm == "global":
            return n + min(n, self.stat_tiles)
        return n * (1 + (0 if self.norm == "tile" else self.stat_passes))


def _spread(count: int, limit: int) -> list[int]:
    """At most ``limit`` indices out of ``range(count)``, evenly spaced (all of them when they fit)."""
    if count <= limit:
        return list(range(count))
    return sorted({int(round(i * (count - 1) / (limit - 1))) for i in range(limit)}) if limit > 1 else [count // 2]


def _contains_norm(module: nn.Module) -> bool:
    return any(isinstance(m, ConsistentInstanceNorm) for m in module.modules())


def _layerwise(
    module: nn.Module,
    chunks: list[torch.Tensor],
    layers: list[tuple[np.ndarray, np.ndarray]],
    autocast: Callable[[], contextlib.AbstractContextManager],
    boxes: list[list[tuple[float, float, float, float]]] | None = None,
) -> list[torch.Tensor]:
    """Apply ``module`` to every chunk of tiles, pooling instance-norm statistics over all chunks.

    Knows ``nn.Sequential``, ``ResnetBlock`` (x + conv_block(x)) and
    :class:`ConsistentInstanceNorm`; any other module must hold no norm layer.
    Appends each norm layer's pooled ``(mean, var)`` (float64 ``(C,)``) to ``layers``.
    """
    if isinstance(module, ConsistentInstanceNorm):
        per_tile = []
        for i, x in enumerate(chunks):
            if boxes is None:
                var, mean = torch.var_mean(x.float(), dim=(2, 3), unbiased=False)
                per_tile += [
                    NormStats((m,), (v,), float(x.shape[2] * x.shape[3])) for m, v in zip(mean.double().cpu().numpy(), var.double().cpu().numpy())
                ]
                continue
            h, w = x.shape[2], x.shape[3]
            for b, (top, bottom, left, right) in enumerate(boxes[i]):
                y0, y1 = int(round(top * h)), max(int(round(bottom * h)), int(round(top * h)) + 1)
                x0, x1 = int(round(left * w)), max(int(round(right * w)), int(round(left * w)) + 1)
                var, mean = torch.var_mean(x[b, :, y0:y1, x0:x1].float(), dim=(1, 2), unbiased=False)
                per_tile.append(NormStats((mean.double().cpu().numpy(),), (var.double().cpu().numpy(),), float((y1 - y0) * (x1 - x0))))
        pooled = combine_stats(per_tile)
        layers.append((pooled.mean[0], pooled.var[0]))
        out = []
        for x in chunks:
            stats = (
                torch.from_numpy(np.repeat(pooled.mean[0][None], x.shape[0], 0)).to(x.device, torch.float32),
                torch.from_numpy(np.repeat(pooled.var[0][None], x.shape[0], 0)).to(x.device, torch.float32),
            )
            module.supplied = stats
            try:
                out.append(module(x))
            finally:
                module.supplied = None
        return out
    if not _contains_norm(module):
        with autocast():
            return [module(x) for x in chunks]
    if isinstance(module, nn.Sequential):
        for child in module:
            chunks = _layerwise(child, chunks, layers, autocast, boxes)
        return chunks
    if isinstance(module, ResnetBlock):
        residual = _layerwise(module.conv_block, chunks, layers, autocast, boxes)
        return [x + r for x, r in zip(chunks, residual)]
    if isinstance(getattr(module, "model", None), nn.Sequential):  # the generators: ResnetGenerator, CUTResnetGenerator, ...
        return _layerwise(module.model, chunks, layers, autocast, boxes)
    raise TdkstainError(
        f"sequential statistics do not know how {type(module).__name__} runs its layers; use norm='kernel' or 'tile'"
    )


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)
