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

OME-TIFF (``layout="ome-tiff"``, ``tdkstain slide --format ome-tiff``): the
same levels, tiles and compression, laid out as the OME-TIFF pyramid
convention wants: OME-XML in level 0's ImageDescription (one Image, axes YXS,
uint8 RGB, ``PhysicalSizeX/Y`` in µm, the tdkstain description as the
Image's Description), and levels 1.. as SubIFDs of level 0 rather than in
the main chain. Bio-Formats (QuPath), tifffile and tiffslide read it as a
pyramid; OpenSlide 4 reads only the main chain, so it sees level 0 alone
(see docs/viewer.md). :func:`copy_pyramid_tiff` turns a finished generic
pyramid into the OME layout by copying its compressed tiles, so both files
hold the same pixels to the bit, whatever the compression; memory is a few
MiB of tiles at a time.
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
#: File layouts: a generic pyramid in the main IFD chain (OpenSlide, tiffslide, QuPath), or OME-TIFF
#: (OME-XML with the pixel size, the pyramid in SubIFDs: Bio-Formats/QuPath, tifffile, tiffslide).
LAYOUTS = ("tiff", "ome-tiff")
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


def _check_pyramid_options(tile: int, compression: str, jpeg_quality: int, layout: str = "tiff") -> None:
    if layout not in LAYOUTS:
        raise TdkstainError(f"unknown slide format {layout!r}; choose one of {', '.join(LAYOUTS)}")
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


def _ome_metadata(mpp: float, description: str, name: str) -> dict:
    """tifffile's OME-XML items for level 0: one RGB image with its pixel size in µm and its description."""
    metadata = {"axes": "YXS", "PhysicalSizeX": float(mpp), "PhysicalSizeXUnit": "µm",
                "PhysicalSizeY": float(mpp), "PhysicalSizeYUnit": "µm"}
    if name:
        metadata["Name"] = name
    if description:
        metadata["Description"] = description
    return metadata


def _level_options(layout: str, level: int, levels: int, mpp: float, description: str, name: str) -> dict:
    """tifffile ``write`` arguments that place pyramid level ``level`` (of ``levels``) in ``layout``.

    Both layouts record the resolution as XResolution/YResolution in pixels per
    centimetre (``1e4 / (mpp * 2**level)``) and flag levels after the first as
    reduced-resolution; "tiff" puts ``description`` in level 0's ImageDescription,
    "ome-tiff" puts it in the OME-XML and makes levels 1.. SubIFDs of level 0.
    """
    pixels_per_cm = 1e4 / (mpp * 2**level)
    options = dict(
        photometric="rgb",
        resolution=(pixels_per_cm, pixels_per_cm),
        resolutionunit="CENTIMETER",
        subfiletype=1 if level else 0,
        software="tdkstain",
        metadata=None,
    )
    if layout == "tiff":
        options["description"] = description if level == 0 and description else None
    elif level == 0:
        options.update(subifds=levels - 1, metadata=_ome_metadata(mpp, description, name))
    return options


def _writer_options(layout: str, width: int, height: int) -> dict:
    """tifffile ``TiffWriter`` arguments: BigTIFF beyond :data:`BIGTIFF_THRESHOLD_BYTES` of level-0 RGB, and OME
    when asked for (not left to the file name: an atomic write's temporary name does not end in ``.ome.tif``)."""
    options: dict = {"bigtiff": width * height * 3 > BIGTIFF_THRESHOLD_BYTES}
    if layout == "ome-tiff":
        options["ome"] = True
    return options


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
    layout: str = "tiff",
    name: str = "",
) -> PyramidInfo:
    """Write a pyramidal tiled TIFF (generic or OME-TIFF, see the module docstring) from level-0 bands.

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
        layout: ``"tiff"`` (generic, the pyramid in the main IFD chain) or ``"ome-tiff"``
            (OME-XML with the pixel size, the pyramid in SubIFDs).
        name: the OME Image's Name (ignored by ``"tiff"``), e.g. the output's file name.
    Returns:
        :class:`PyramidInfo` with each level's size and an ``(h, w, 3)`` uint8 thumbnail.
    """
    import tifffile

    _check_pyramid_options(tile, compression, jpeg_quality, layout)
    options = _compression_options(compression, jpeg_quality)
    dims = pyramid_dimensions(width, height, tile)
    spill_root = Path(spill_dir)
    # The thumbnail comes from the first level small enough to hold in memory cheaply.
    thumbnail_level = next((k for k, (w, h) in enumerate(dims) if max(w, h) <= 2 * thumbnail_size), len(dims) - 1)
    kept: list[np.ndarray] = []
    info = PyramidInfo(level_dimensions=dims)
    buffer_option = _encode_buffer_option()

    with tifffile.TiffWriter(path, **_writer_options(layout, width, height)) as tiff:
        level_bands: Iterable[np.ndarray] = bands
        for level, (level_width, level_height) in enumerate(dims):
            spill = _Spill(spill_root, level + 1) if level + 1 < len(dims) else None
            halver = _Halver(tile, spill) if spill is not None else None
            checked = _checked_bands(level_bands, level_width, level_height, tile, level)
            tiff.write(
                _level_tiles(checked, tile, level_height, halver, kept if level == thumbnail_level else None),
                shape=(level_height, level_width, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                maxworkers=maxworkers,
                **_level_options(layout, level, len(dims), mpp, description, name),
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



# --------------------------------------------------------------------------- another layout, same tiles


def _resolution_mpp(page) -> float | None:
    """Microns per pixel from a page's XResolution and ResolutionUnit (centimetre or inch), or None."""
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    numerator, denominator = tags["XResolution"].value
    unit = int(tags["ResolutionUnit"].value)
    pixels_per_unit = numerator / denominator if denominator else 0.0
    microns_per_unit = {2: 25400.0, 3: 1e4}.get(unit)
    if microns_per_unit is None or pixels_per_unit <= 0:
        return None
    return microns_per_unit / pixels_per_unit


def _pyramid_pages(tif, path: Path) -> list:
    """The levels of a generic pyramidal TIFF: its main-chain pages, tiled uint8 RGB, each smaller than the one before."""
    pages = [page for page in tif.pages if page.is_tiled]  # not a stripped label or macro image
    if not pages:
        raise TdkstainError(f"{path}: has no tiled image; pass a pyramidal TIFF that tdkstain slide wrote")
    for level, page in enumerate(pages):
        if page.dtype != np.uint8 or page.samplesperpixel != 3 or page.planarconfig != 1:
            raise TdkstainError(
                f"{path}: level {level} is not 8-bit interleaved RGB ({page.dtype}, {page.samplesperpixel} samples); "
                "pass a pyramidal TIFF that tdkstain slide wrote"
            )
        if level and (page.imagewidth >= pages[level - 1].imagewidth or page.imagelength >= pages[level - 1].imagelength):
            raise TdkstainError(f"{path}: page {level} is not smaller than the page before it, so it is no pyramid level")
    return pages


def copy_pyramid_tiff(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    layout: str = "ome-tiff",
    mpp: float | None = None,
    name: str = "",
) -> list[tuple[int, int]]:
    """Write the pyramid of a generic pyramidal TIFF again in ``layout``, copying its compressed tiles.

    Nothing is decoded or re-encoded: every level keeps its size, tile size,
    compression (JPEG, deflate with its predictor, ...) and bytes, so the two
    files hold identical pixels. Memory: tifffile reads at most a few MiB of
    tiles at a time (:data:`ENCODE_BUFFER_BYTES`), whatever the slide's size.

    Args:
        source: a generic pyramidal TIFF (levels in the main IFD chain), e.g. what
            ``tdkstain slide`` writes with ``--format tiff``.
        destination: the file to write (write to a temporary name and move it into
            place: :func:`tdkstain.plumbing.atomic.atomic_path`); not ``source``.
        layout: ``"ome-tiff"`` or ``"tiff"`` (see the module docstring).
        mpp: microns per level-0 pixel (default: the source's XResolution and ResolutionUnit).
        name: the OME Image's Name (ignored by ``"tiff"``).
    Returns:
        ``(width, height)`` of every level, level 0 first.
    Raises:
        TdkstainError: the source is no tiled 8-bit RGB pyramid or records no resolution and ``mpp`` is not given.
    """
    import tifffile

    _check_pyramid_options(16, "jpeg", 90, layout)
    source = Path(source)
    with tifffile.TiffFile(source) as tif:
        pages = _pyramid_pages(tif, source)
        level_mpp = mpp if mpp is not None else _resolution_mpp(pages[0])
        if level_mpp is None or not level_mpp > 0:
            raise TdkstainError(f"{source}: records no resolution (XResolution in pixels per cm or inch); pass its mpp")
        description = pages[0].description if pages[0].description.startswith("tdkstain ") else ""
        dims = [(int(page.imagewidth), int(page.imagelength)) for page in pages]
        handle = tif.filehandle
        with tifffile.TiffWriter(destination, **_writer_options(layout, *dims[0])) as tiff:
            for level, page in enumerate(pages):
                tiles = (
                    segment
                    for segment, _ in handle.read_segments(
                        page.dataoffsets, page.databytecounts, sort=False, buffersize=ENCODE_BUFFER_BYTES
                    )
                )
                options = _level_options(layout, level, len(pages), level_mpp, description, name)
                options["photometric"] = page.photometric
                tiff.write(
                    tiles,
                    shape=page.shape,
                    dtype=page.dtype,
                    tile=(page.tilelength, page.tilewidth),
                    compression=page.compression,
                    predictor=page.predictor,
                    jpegtables=page.jpegtables,
                    subsampling=page.subsampling if page.photometric == 6 else None,
                    **options,
                )
    return dims


def stained_description(path: str | os.PathLike) -> str:
    """The description tdkstain wrote into a slide it stained (either layout), or ``""``.

    Generic TIFF: level 0's ImageDescription. OME-TIFF: the Description of the
    OME-XML's Image. Anything unreadable, or a file tdkstain did not write, gives ``""``.
    """
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            text = tif.pages[0].description or ""
            if tif.is_ome:
                text = _ome_description(tif.ome_metadata or "")
    except Exception:  # not a TIFF, damaged, unreadable: not ours
        return ""
    return text if text.startswith("tdkstain ") else ""


def _ome_description(text: str) -> str:
    """The first Image's Description in OME-XML text, or ``""``."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return ""
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "Description" and element.text:
            return element.text
    return ""
