"""Streaming writer of tiled, pyramidal, compressed TIFF slides.

Layout: a generic tiled TIFF (BigTIFF when large), one tiled RGB image per
pyramid level in the main IFD chain, each level half the size of the one
before (2x2 box average) until the longer side fits in one tile; levels after
the first are flagged reduced-resolution (NewSubfileType 1). Resolution is
written as XResolution/YResolution in pixels per centimetre, which OpenSlide
reports as ``openslide.mpp-x/y`` for generic TIFF and tiffslide as
``tiffslide.mpp-x/y``; QuPath reads the same tags. (SubIFD pyramids are read by
tiffslide and QuPath but not by OpenSlide 4's generic TIFF driver, so the main
chain it is.)

Streaming: level 0 arrives as horizontal bands one TIFF tile tall; their
tiles go to tifffile's tile iterator (tifffile encodes them, several threads
at a time), and each band is halved into the next level's band, which is
spilled to ``spill_dir`` as lossless PNG strips. Each lower level is then
written from its strips while building the next. Memory is a few bands
(``tile x width x 3`` bytes each), never a whole level.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from tdkstain.plumbing.errors import TdkstainError

COMPRESSIONS = ("jpeg", "deflate")
#: Uncompressed size beyond which BigTIFF (64-bit offsets) is used; classic TIFF stops at 4 GiB.
BIGTIFF_THRESHOLD_BYTES = 2**31
#: Raw tiles tifffile gathers before encoding them on its threads (its default, 512 MiB, would dominate memory).
ENCODE_BUFFER_BYTES = 16 * 2**20


@dataclass
class PyramidInfo:
    """What :func:`write_pyramid_tiff` wrote: ``level_dimensions`` as ``(width, height)``, and a thumbnail."""

    level_dimensions: list[tuple[int, int]] = field(default_factory=list)
    thumbnail: np.ndarray | None = None


def pyramid_dimensions(width: int, height: int, tile: int) -> list[tuple[int, int]]:
    """``(width, height)`` of every level: halving (rounding up) until the longer side fits one tile."""
    dims = [(width, height)]
    while max(dims[-1]) > tile:
        w, h = dims[-1]
        dims.append(((w + 1) // 2, (h + 1) // 2))
    return dims


def halve(band: np.ndarray) -> np.ndarray:
    """2x2 box average of ``(H, W, 3)`` uint8 (odd edges replicate) -> ``(ceil(H/2), ceil(W/2), 3)`` uint8."""
    if band.shape[0] % 2:
        band = np.concatenate([band, band[-1:]], axis=0)
    if band.shape[1] % 2:
        band = np.concatenate([band, band[:, -1:]], axis=1)
    total = (
        band[0::2, 0::2].astype(np.uint16)
        + band[1::2, 0::2]
        + band[0::2, 1::2]
        + band[1::2, 1::2]
    )
    return ((total + 2) // 4).astype(np.uint8)


def _band_tiles(band: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    """The ``tile x tile`` tiles of a band left to right, padded with white at the right and bottom."""
    rows, width = band.shape[:2]
    for x in range(0, width, tile):
        piece = band[:, x : x + tile]
        if piece.shape[0] != tile or piece.shape[1] != tile:
            padded = np.full((tile, tile, 3), 255, dtype=np.uint8)
            padded[: piece.shape[0], : piece.shape[1]] = piece
            piece = padded
        yield piece


class _Spill:
    """A level's bands kept on disk as PNG strips, read back in order."""

    def __init__(self, folder: Path, level: int) -> None:
        self.folder = folder
        self.level = level
        self.count = 0
        folder.mkdir(parents=True, exist_ok=True)

    def append(self, band: np.ndarray) -> None:
        # compress_level 1: lossless and ~5x faster than the default; these files are temporary.
        Image.fromarray(band).save(self.folder / f"level{self.level}_{self.count:06d}.png", compress_level=1)
        self.count += 1

    def __iter__(self) -> Iterator[np.ndarray]:
        for index in range(self.count):
            path = self.folder / f"level{self.level}_{index:06d}.png"
            with Image.open(path) as image:
                band = np.asarray(image.convert("RGB"))
            path.unlink()
            yield band


class _Halver:
    """Turns a level's bands (``tile`` rows each) into the next level's bands (``tile`` rows each)."""

    def __init__(self, tile: int, sink: _Spill) -> None:
        self.tile = tile
        self.sink = sink
        self.pending: list[np.ndarray] = []
        self.rows = 0

    def push(self, band: np.ndarray) -> None:
        # A full band has an even row count (tile is a multiple of 16), so halves line up.
        half = halve(band)
        self.pending.append(half)
        self.rows += half.shape[0]
        if self.rows >= self.tile:
            merged = np.concatenate(self.pending, axis=0)
            self.sink.append(merged[: self.tile])
            rest = merged[self.tile :]
            self.pending = [rest] if rest.shape[0] else []
            self.rows = rest.shape[0]

    def finish(self) -> None:
        if self.pending:
            self.sink.append(np.concatenate(self.pending, axis=0))
            self.pending, self.rows = [], 0


def _check_pyramid_options(tile: int, compression: str, jpeg_quality: int) -> None:
    if tile % 16 or tile <= 0:
        raise TdkstainError(f"TIFF tile size must be a positive multiple of 16, got {tile}")
    if compression not in COMPRESSIONS:
        raise TdkstainError(f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}")
    if not 1 <= jpeg_quality <= 100:
        raise TdkstainError(f"JPEG quality must be 1..100, got {jpeg_quality}")


def _compression_options(compression: str, jpeg_quality: int) -> dict:
    """tifffile's ``write`` arguments for ``compression``."""
    if compression == "jpeg":
        return dict(compression="jpeg", compressionargs={"level": int(jpeg_quality)})
    return dict(compression="zlib", compressionargs={"level": 6}, predictor=True)


def _encode_buffer_option() -> dict:
    import tifffile

    # tifffile otherwise gathers up to 512 MiB of tiles to encode them in parallel (older versions lack the option)
    return (
        {"buffersize": ENCODE_BUFFER_BYTES}
        if "buffersize" in inspect.signature(tifffile.TiffWriter.write).parameters
        else {}
    )


def _level_tiles(
    bands: Iterator[np.ndarray],
    tile: int,
    level_height: int,
    halver: _Halver | None,
    kept: list[np.ndarray] | None,
) -> Iterator[np.ndarray]:
    """One level's tiles, row by row; feeds each band to ``halver`` (the next level) and to ``kept``."""
    rows = 0
    for band in bands:
        rows += band.shape[0]
        if halver is not None:
            halver.push(band)
            # tifffile stops pulling after the last tile, so finish before yielding it.
            if rows == level_height:
                halver.finish()
        if kept is not None:
            kept.append(band)
        yield from _band_tiles(band, tile)


def _thumbnail(kept: list[np.ndarray], thumbnail_size: int) -> np.ndarray:
    """The kept level's bands as one image, shrunk (Lanczos) so its longer side is at most ``thumbnail_size``."""
    thumbnail = np.concatenate(kept, axis=0)
    scale = thumbnail_size / max(thumbnail.shape[:2])
    if scale < 1:
        size = (max(1, round(thumbnail.shape[1] * scale)), max(1, round(thumbnail.shape[0] * scale)))
        thumbnail = np.asarray(Image.fromarray(thumbnail).resize(size, Image.Resampling.LANCZOS))
    return thumbnail


def write_pyramid_tiff(
    path: str | os.PathLike,
    width: int,
    height: int,
    bands: Iterable[np.ndarray],
    *,
    mpp: float,
    spill_dir: str | os.PathLike,
    tile: int = 256,
    compression: str = "jpeg",
    jpeg_quality: int = 90,
    description: str = "",
    thumbnail_size: int = 1024,
    maxworkers: int | None = None,
) -> PyramidInfo:
    """Write a pyramidal tiled TIFF from level-0 bands.

    Args:
        path: the file to write (write to a temporary name and move it into place;
            see :func:`tdkstain.plumbing.atomic.atomic_path`).
        width, height: level-0 size in pixels.
        bands: level-0 ``(rows, width, 3)`` uint8 RGB bands, top to bottom, each
            ``tile`` rows except the last (``height - k * tile``).
        mpp: microns per level-0 pixel.
        spill_dir: a folder for temporary PNG strips of the lower levels.
        tile: TIFF tile side (multiple of 16).
        compression: ``"jpeg"`` (lossy, ``jpeg_quality``) or ``"deflate"`` (lossless).
        description: ImageDescription of level 0.
        thumbnail_size: longer side of the returned thumbnail.
        maxworkers: tile-encoding threads (None: tifffile's choice).
    Returns:
        :class:`PyramidInfo` with each level's size and an ``(h, w, 3)`` uint8 thumbnail.
    """
    import tifffile

    _check_pyramid_options(tile, compression, jpeg_quality)
    options = _compression_options(compression, jpeg_quality)
    dims = pyramid_dimensions(width, height, tile)
    spill_root = Path(spill_dir)
    # The thumbnail comes from the first level small enough to hold in memory cheaply.
    thumbnail_level = next((k for k, (w, h) in enumerate(dims) if max(w, h) <= 2 * thumbnail_size), len(dims) - 1)
    kept: list[np.ndarray] = []
    info = PyramidInfo(level_dimensions=dims)
    pixels_per_cm = 1e4 / mpp
    buffer_option = _encode_buffer_option()

    with tifffile.TiffWriter(path, bigtiff=width * height * 3 > BIGTIFF_THRESHOLD_BYTES) as tiff:
        level_bands: Iterable[np.ndarray] = bands
        for level, (level_width, level_height) in enumerate(dims):
            spill = _Spill(spill_root, level + 1) if level + 1 < len(dims) else None
            halver = _Halver(tile, spill) if spill is not None else None
            checked = _checked_bands(level_bands, level_width, level_height, tile, level)
            downsample = 2**level
            tiff.write(
                _level_tiles(checked, tile, level_height, halver, kept if level == thumbnail_level else None),
                shape=(level_height, level_width, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                resolution=(pixels_per_cm / downsample, pixels_per_cm / downsample),
                resolutionunit="CENTIMETER",
                subfiletype=1 if level else 0,
                description=description if level == 0 and description else None,
                software="tdkstain",
                metadata=None,
                maxworkers=maxworkers,
                **options,
                **buffer_option,
            )
            if spill is not None:
                level_bands = iter(spill)
    info.thumbnail = _thumbnail(kept, thumbnail_size)
    return info


def _checked_bands(bands: Iterable[np.ndarray], width: int, height: int, tile: int, level: int) -> Iterator[np.ndarray]:
    """Pass bands through, checking their shapes (a wrong band would corrupt the TIFF).

    Too few bands make tifffile fail on the exhausted iterator.
    """
    row = 0
    for band in bands:
        expected = min(tile, height - row)
        if band.dtype != np.uint8 or band.shape != (expected, width, 3):
            raise ValueError(
                f"level {level} band at row {row}: expected ({expected}, {width}, 3) uint8, "
                f"got {band.shape} {band.dtype}"
            )
        row += expected
        yield band

