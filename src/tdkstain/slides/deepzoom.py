"""Deep Zoom (DZI) tiles of a slide, written by libvips' ``dzsave`` through pyvips.

A Deep Zoom image is ``NAME.dzi`` (XML: tile size, overlap, tile format and
the level-0 size) plus ``NAME_files/LEVEL/COL_ROW.jpeg``: level ``L`` of
``max_level + 1`` is the image shrunk by ``2 ** (max_level - L)`` (sizes
rounded up), ``max_level = ceil(log2(max(width, height)))``, cut into
``tile_size`` squares, each with ``overlap`` extra pixels on the sides it
shares with a neighbour. Web viewers (OpenSeadragon, ``tdkstain view``) show it
without a server-side tile engine.

The tiles are cut from level 0 of a finished pyramid: a TIFF libvips reads
(tdkstain's own outputs, generic or OME-TIFF, Aperio SVS with JPEG tiles,
...) is read tile by tile; libvips streams it in strips, so memory is a few
rows of tiles whatever the slide's size. A slide libvips cannot read (NDPI,
MRXS, JPEG 2000 SVS, ...) goes through :class:`tdkstain.slides.reader.Slide`
(OpenSlide or tiffslide) into a temporary tiled TIFF first (band by band,
:func:`tdkstain.slides.writer.write_pyramid_tiff`). libvips also writes
``NAME_files/vips-properties.xml``; its ``xres`` (pixels per millimetre) is set
from the slide's microns per pixel, which is how :func:`read_deepzoom` finds
the resolution of a ``.dzi`` again.

Writes are atomic as a whole: the tiles are made in a temporary folder beside
the destination, and the ``.dzi`` file takes its name last.

pyvips is an optional dependency (``pip install pyvips pyvips-binary``, the
second a wheel with libvips inside); :func:`load_pyvips` says so when it is
missing.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from tdkstain.plumbing.errors import TdkstainError
from tdkstain.plumbing.limits import check_number, check_pixels

#: dzsave's defaults, which every Deep Zoom viewer expects: 254-pixel tiles plus 1 pixel of overlap (256 in all).
DZI_TILE_SIZE = 254
DZI_OVERLAP = 1
#: JPEG quality of the tiles (the slide itself is JPEG 90 by default).
DZI_QUALITY = 90
DZI_NAMESPACE = "http://schemas.microsoft.com/deepzoom/2008"
PYVIPS_INSTALL = "pip install pyvips pyvips-binary  (pyvips-binary is a wheel with libvips inside)"
#: Rows of level 0 per band when a slide libvips cannot read is copied into a temporary TIFF.
BRIDGE_TILE = 256


@dataclass(frozen=True)
class DeepZoom:
    """A Deep Zoom image on disk.

    Attributes:
        dzi: the ``.dzi`` XML file.
        width, height: level-0 size in pixels.
        tile_size: tile side in pixels, without the overlap.
        overlap: pixels each tile repeats of its neighbours, per side.
        format: the tiles' file suffix (``"jpeg"``, ``"png"``, ...).
        mpp: microns per level-0 pixel, or None when not recorded.
    """

    dzi: Path
    width: int
    height: int
    tile_size: int
    overlap: int
    format: str
    mpp: float | None = None

    @property
    def files(self) -> Path:
        """The tile folder ``NAME_files`` beside ``NAME.dzi``."""
        return files_dir_for(self.dzi)

    @property
    def max_level(self) -> int:
        """The finest level's number: ``ceil(log2(max(width, height)))``."""
        return max(0, math.ceil(math.log2(max(self.width, self.height))))

    def level_dimensions(self) -> list[tuple[int, int]]:
        """``(width, height)`` of every level, level 0 (one pixel) first, the full image last."""
        top = self.max_level
        return [(math.ceil(self.width / 2 ** (top - level)), math.ceil(self.height / 2 ** (top - level)))
                for level in range(top + 1)]

    def tile_count(self) -> int:
        """Tiles over all levels: ``ceil(w / tile_size) * ceil(h / tile_size)`` per level."""
        return sum(math.ceil(w / self.tile_size) * math.ceil(h / self.tile_size) for w, h in self.level_dimensions())


def files_dir_for(dzi: str | os.PathLike) -> Path:
    """``NAME.dzi`` -> ``NAME_files`` (the folder Deep Zoom viewers look for beside it)."""
    dzi = Path(dzi)
    return dzi.with_name(f"{dzi.stem}_files")


def dzi_path_for(image: str | os.PathLike) -> Path:
    """The ``.dzi`` beside an image: ``slide.tif`` -> ``slide.dzi``, ``slide.ome.tif`` -> ``slide.ome.dzi``."""
    return Path(image).with_suffix(".dzi")


def load_pyvips() -> Any:
    """The ``pyvips`` module, or a TdkstainError that says how to install it."""
    try:
        import pyvips
    except ImportError as err:
        raise TdkstainError(f"Deep Zoom tiles need pyvips, which is not installed ({err}); {PYVIPS_INSTALL}") from None
    except OSError as err:  # pyvips without a libvips it can load
        raise TdkstainError(f"pyvips cannot load libvips ({err}); {PYVIPS_INSTALL}") from None
    return pyvips


# --------------------------------------------------------------------------- reading


def _properties_mpp(files: Path) -> float | None:
    """Microns per pixel from ``vips-properties.xml`` (``xres`` in pixels per mm), or None when absent or unset."""
    path = files / "vips-properties.xml"
    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError):
        return None
    for prop in root.iter():
        if prop.tag.rsplit("}", 1)[-1] != "property":
            continue
        name = next((child.text for child in prop if child.tag.rsplit("}", 1)[-1] == "name"), None)
        value = next((child.text for child in prop if child.tag.rsplit("}", 1)[-1] == "value"), None)
        if name == "xres" and value:
            try:
                xres = float(value)
            except ValueError:
                return None
            # libvips' default of 1 pixel per mm means "unknown"; a scan is 0.05-50 um/px.
            mpp = 1000.0 / xres if xres > 0 else 0.0
            return mpp if 0.01 <= mpp <= 1000 and xres != 1.0 else None
    return None


def read_deepzoom(dzi: str | os.PathLike) -> DeepZoom:
    """Parse ``NAME.dzi`` and find its resolution in ``NAME_files/vips-properties.xml`` when libvips wrote one.

    Raises:
        TdkstainError: the file is missing, not Deep Zoom XML, or states impossible sizes; or its tile folder is missing.
    """
    dzi = Path(dzi)
    if not dzi.is_file():
        raise TdkstainError(f"{dzi}: no such Deep Zoom file")
    try:
        root = ET.parse(dzi).getroot()
    except (ET.ParseError, OSError) as err:
        raise TdkstainError(f"{dzi}: not Deep Zoom XML ({err}); pass a .dzi that libvips dzsave or tdkstain wrote") from None
    size = next((child for child in root if child.tag.rsplit("}", 1)[-1] == "Size"), None)
    if root.tag.rsplit("}", 1)[-1] != "Image" or size is None:
        raise TdkstainError(f"{dzi}: not Deep Zoom XML (no <Image> with a <Size>); pass a .dzi that libvips dzsave wrote")
    try:
        width, height = int(size.get("Width", "")), int(size.get("Height", ""))
        tile_size, overlap = int(root.get("TileSize", "")), int(root.get("Overlap", "0"))
    except ValueError:
        raise TdkstainError(f"{dzi}: its Width, Height, TileSize or Overlap is not a whole number; the file is damaged") from None
    check_pixels(f"{dzi}: Size", height, width, hint="the file is damaged")
    check_number(f"{dzi}: TileSize", tile_size, 1, 65536, integer=True)
    check_number(f"{dzi}: Overlap", overlap, 0, tile_size, integer=True)
    tile_format = root.get("Format", "")
    if not tile_format.isalnum():
        raise TdkstainError(f"{dzi}: tile Format {tile_format!r} is not a file suffix such as jpeg or png; the file is damaged")
    files = files_dir_for(dzi)
    if not files.is_dir():
        raise TdkstainError(f"{dzi}: its tile folder {files.name}/ is missing; copy it along with the .dzi")
    return DeepZoom(dzi=dzi, width=width, height=height, tile_size=tile_size, overlap=overlap, format=tile_format,
                    mpp=_properties_mpp(files))


# --------------------------------------------------------------------------- writing


def _vips_level0(pyvips: Any, path: Path, width: int, height: int) -> Any | None:
    """Level 0 of ``path`` as libvips reads it (flattened over white), or None when libvips cannot read it
    or reads another size than ``width x height`` (the slide reader's level 0)."""
    try:
        image = pyvips.Image.new_from_file(str(path), page=0, access="sequential")
    except pyvips.Error:
        return None
    if (image.width, image.height) != (width, height) or image.format != "uchar" or image.bands not in (3, 4):
        return None
    if image.bands == 4:
        image = image.flatten(background=[255, 255, 255])
    return image


def _dzsave(image: Any, destination: Path, mpp: float | None, tile_size: int, overlap: int, quality: int) -> None:
    """dzsave ``image`` into a temporary folder beside ``destination``, then move the tiles and the .dzi into place."""
    if mpp is not None:
        image = image.copy(xres=1000.0 / mpp, yres=1000.0 / mpp)  # pixels per mm, kept in vips-properties.xml
    with _staged(destination) as work:
        image.dzsave(str(work / destination.stem), tile_size=tile_size, overlap=overlap,
                     suffix=f".jpeg[Q={int(quality)}]", depth="onepixel", layout="dz")


@contextlib.contextmanager
def _staged(destination: Path) -> Iterator[Path]:
    """A temporary folder beside ``destination`` to make ``NAME.dzi`` and ``NAME_files/`` in; when the block
    succeeds they replace the old ones (tiles first, the .dzi last), and the folder is removed either way."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".tmp-{destination.stem}-"))
    try:
        yield work
        files = files_dir_for(destination)
        if files.exists():  # the old tiles go into the work folder, removed below
            os.replace(files, work / "replaced")
        os.replace(work / files.name, files)
        os.replace(work / destination.name, destination)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _link_or_copy(source: str, destination: str) -> None:
    """A hard link (no copy of the bytes) where the file system allows it, else a copy."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def copy_deepzoom(source: DeepZoom, dzi: str | os.PathLike) -> DeepZoom:
    """``source`` (its .dzi and tiles) under the name ``dzi``: tiles hard-linked where possible, else copied."""
    dzi = Path(dzi)
    if dzi.suffix != ".dzi":
        raise TdkstainError(f"{dzi}: a Deep Zoom file must end in .dzi")
    with _staged(dzi) as work:
        shutil.copytree(source.files, work / files_dir_for(dzi).name, copy_function=_link_or_copy)
        shutil.copy2(source.dzi, work / dzi.name)
    return replace(read_deepzoom(dzi), mpp=source.mpp)


def write_deepzoom(
    image_path: str | os.PathLike,
    dzi: str | os.PathLike,
    *,
    mpp: float | None = None,
    tile_size: int = DZI_TILE_SIZE,
    overlap: int = DZI_OVERLAP,
    quality: int = DZI_QUALITY,
    backend: str = "auto",
    log: Callable[[str], None] = lambda message: None,
) -> DeepZoom:
    """Cut level 0 of a slide into Deep Zoom tiles: ``dzi`` and its ``NAME_files/`` folder (JPEG tiles).

    Args:
        image_path: a slide (anything :class:`tdkstain.slides.reader.Slide` opens); libvips reads
            it directly when it can, else it is copied into a temporary tiled TIFF first.
        dzi: the ``.dzi`` to write; an existing one and its tiles are replaced.
        mpp: microns per level-0 pixel to record (default: the slide's metadata).
        tile_size, overlap: Deep Zoom tile side and overlap, pixels.
        quality: JPEG quality of the tiles, 1..100.
        backend: slide reader for the size check and the fallback (see :class:`~tdkstain.slides.reader.Slide`).
        log: receives one-line messages (the fallback, when taken).
    Returns:
        The :class:`DeepZoom` written.
    Raises:
        TdkstainError: pyvips is missing (how to install it), the slide cannot be read, or an option is out of range.
    """
    from tdkstain.slides.reader import Slide

    pyvips = load_pyvips()
    check_number("Deep Zoom tile size", tile_size, 16, 4096, integer=True)
    check_number("Deep Zoom overlap", overlap, 0, tile_size // 2, integer=True)
    check_number("Deep Zoom JPEG quality", quality, 1, 100, integer=True)
    image_path, dzi = Path(image_path), Path(dzi)
    if dzi.suffix != ".dzi":
        raise TdkstainError(f"{dzi}: a Deep Zoom file must end in .dzi")
    with Slide(image_path, backend=backend) as slide:
        width, height = slide.dimensions
        mpp = mpp if mpp is not None else slide.mpp
        level0 = _vips_level0(pyvips, image_path, width, height)
        if level0 is not None:
            try:
                _dzsave(level0, dzi, mpp, tile_size, overlap, quality)
                return read_deepzoom(dzi)
            except pyvips.Error as err:  # e.g. a tile compression libvips has no decoder for
                log(f"libvips could not read {image_path.name} ({str(err).splitlines()[0][:120]}); "
                    f"reading it with {slide.backend} instead")
        else:
            log(f"libvips cannot read {image_path.name} directly; copying level 0 through {slide.backend} into a "
                "temporary tiled TIFF first")
        _dzsave_through_tiff(pyvips, slide, dzi, mpp, tile_size, overlap, quality)
    return read_deepzoom(dzi)


def _dzsave_through_tiff(pyvips: Any, slide: Any, dzi: Path, mpp: float | None, tile_size: int, overlap: int,
                         quality: int) -> None:
    """Level 0 of ``slide`` band by band into a temporary deflate TIFF beside ``dzi``, then dzsave that."""
    from tdkstain.slides.writer import write_pyramid_tiff

    width, height = slide.dimensions
    dzi.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=dzi.parent, prefix=f".tmp-{dzi.stem}-bridge-"))
    try:
        bridge = work / "level0.tif"
        bands = (slide.read(0, 0, y, width, min(BRIDGE_TILE, height - y)) for y in range(0, height, BRIDGE_TILE))
        write_pyramid_tiff(bridge, width, height, bands, mpp=mpp or 1.0, spill_dir=work / "spill", tile=BRIDGE_TILE,
                           compression="deflate", thumbnail_size=64)
        image = pyvips.Image.new_from_file(str(bridge), page=0, access="sequential")
        _dzsave(image, dzi, mpp, tile_size, overlap, quality)
    finally:
        shutil.rmtree(work, ignore_errors=True)
