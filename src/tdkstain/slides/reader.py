"""Reading whole slides at a chosen resolution (microns per pixel).

Two backends: OpenSlide (``openslide-python`` with the ``openslide-bin``
wheel; reads SVS, NDPI, MRXS, SCN, generic tiled TIFF, ...) and tiffslide
(pure Python over tifffile; TIFF-based formats only). ``backend="auto"``
tries OpenSlide first, then tiffslide.

A network is trained at one resolution (the model card's ``mpp``); a slide
holds a pyramid of resolutions. :class:`SlideAtMpp` picks the pyramid level
whose pixels are the closest *finer or equal* to the target (so the network
never sees pixels blurrier than the scan) and resamples that level by area
(Lanczos with antialiasing, Pillow) to the target microns per pixel. When the
level is within :data:`MPP_TOLERANCE` of the target it is used as is: a 2.5 %
scale change is below the spread of "20x" scanners (0.49-0.51 um/px) and
resampling would only blur.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tdkstain.plumbing.errors import TdkstainError
from tdkstain.plumbing.limits import check_pixels

#: Relative mismatch between a level's and the target's microns per pixel under which the
#: level is used without resampling (see the module docstring).
MPP_TOLERANCE = 0.025
#: Level pixels per output pixel beyond which a target is refused: coarser than the slide's coarsest
#: level by more than this, a "stain" is a thumbnail, and each tile would read a huge region.
MAX_DOWNSCALE = 32.0
#: Output pixels per level pixel beyond which a target is refused: finer than the scan by more than
#: this, the output is invented detail, and its size explodes.
MAX_UPSCALE = 4.0

BACKENDS = ("auto", "openslide", "tiffslide")
#: File name endings that are whole-slide formats whatever their content (OpenSlide's vendor formats).
SLIDE_SUFFIXES: tuple[str, ...] = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
#: TIFF endings, which may hold a slide (a pyramid) or a plain image.
TIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".btf")


def _open_backend(path: Path, backend: str) -> tuple[Any, str]:
    """An opened OpenSlide or TiffSlide handle and the backend's name."""
    if backend not in BACKENDS:
        raise TdkstainError(f"unknown slide backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    errors: list[str] = []
    if backend in ("auto", "openslide"):
        try:
            import openslide
        except ImportError as err:  # the wheel (openslide-bin) is missing or its library failed to load
            errors.append(f"openslide unavailable ({err}; pip install openslide-python openslide-bin)")
        else:
            try:
                return openslide.OpenSlide(str(path)), "openslide"
            except Exception as err:  # OpenSlideUnsupportedFormatError, OpenSlideError, ...
                errors.append(f"openslide: {type(err).__name__}: {err}")
    if backend in ("auto", "tiffslide"):
        try:
            import tiffslide
        except ImportError as err:
            errors.append(f"tiffslide unavailable ({err}; pip install tiffslide)")
        else:
            try:
                return tiffslide.TiffSlide(str(path)), "tiffslide"
            except Exception as err:
                errors.append(f"tiffslide: {type(err).__name__}: {err}")
    raise TdkstainError(
        f"{path}: cannot read as a slide ({'; '.join(errors)}). "
        "Pass a whole-slide image (SVS, NDPI, MRXS, SCN, tiled TIFF, ...) that OpenSlide or tiffslide opens."
    )


def _to_rgb_on_white(region: Image.Image | np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 RGB; transparent pixels (outside the scanned area) become white."""
    array = np.asarray(region)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.shape[2] == 4:
        # openslide-python returns non-premultiplied RGBA; composite over white glass.
        alpha = array[..., 3:4].astype(np.uint16)
        rgb = array[..., :3].astype(np.uint16)
        array = ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(array[..., :3], dtype=np.uint8)


class Slide:
    """A whole-slide image opened with OpenSlide or tiffslide.

    Args:
        path: the slide file.
        backend: ``"auto"`` (OpenSlide, then tiffslide), ``"openslide"`` or ``"tiffslide"``.
        slide_mpp: microns per pixel of level 0, overriding (or standing in for
            missing) metadata.

    Attributes:
        level_dimensions: ``(width, height)`` per level, level 0 first.
        level_downsamples: level-0 pixels per level pixel.
        mpp: microns per pixel of level 0 (mean of x and y), or None when the
            file records none and ``slide_mpp`` was not given.
    """

    def __init__(self, path: str | os.PathLike, backend: str = "auto", slide_mpp: float | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise TdkstainError(f"{self.path}: no such slide file")
        self._handle, self.backend = _open_backend(self.path, backend)
        try:  # backends parse lazily: a truncated header shows only here
            self.level_dimensions: tuple[tuple[int, int], ...] = tuple(
                (int(w), int(h)) for w, h in self._handle.level_dimensions
            )
            self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in self._handle.level_downsamples)
            self.vendor = self._property("vendor")
        except Exception as err:
            raise TdkstainError(
                f"{self.path}: cannot read its pyramid ({self.backend}: {type(err).__name__}: "
                f"{str(err).splitlines()[0][:200] if str(err) else 'no detail'}); the file is probably truncated or "
                "damaged: copy it again from its source"
            ) from None
        self._check_levels()
        if slide_mpp is not None:
            if not (0.01 <= slide_mpp <= 1000 and math.isfinite(slide_mpp)):
                raise TdkstainError(f"--slide-mpp must be microns per pixel between 0.01 and 1000 (0.25 at 40x, 0.5 at 20x), got {slide_mpp}")
            self.mpp: float | None = float(slide_mpp)
        else:
            self.mpp = self._metadata_mpp()

    def _check_levels(self) -> None:
        """The pyramid the file declares, checked before anything is planned from it."""
        if not self.level_dimensions or len(self.level_dimensions) != len(self.level_downsamples):
            raise TdkstainError(f"{self.path}: the file declares no consistent pyramid levels; it is damaged")
        for level, ((width, height), downsample) in enumerate(zip(self.level_dimensions, self.level_downsamples)):
            check_pixels(f"{self.path}: level {level}", height, width, hint="the file's header is damaged")
            if not (math.isfinite(downsample) and downsample >= 1.0 - 1e-6) or (level == 0 and abs(downsample - 1) > 1e-6):
                raise TdkstainError(f"{self.path}: level {level} declares a downsample of {downsample}; the file is damaged")

    def _property(self, name: str) -> Any:
        prefix = "openslide" if self.backend == "openslide" else "tiffslide"
        return self._handle.properties.get(f"{prefix}.{name}")

    def _metadata_mpp(self) -> float | None:
        values = []
        for axis in ("x", "y"):
            value = self._property(f"mpp-{axis}")
            try:
                value = float(value) if value is not None else None
            except (TypeError, ValueError):
                value = None
            # A scan is 0.05-50 um/px; anything else in the metadata is noise, read as "not recorded".
            if value is not None and 0.01 <= value <= 1000 and math.isfinite(value):
                values.append(value)
        return float(np.mean(values)) if values else None

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` of level 0."""
        return self.level_dimensions[0]

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """A region of one level, in that level's pixel coordinates.

        Parts outside the level are white (glass). Returns ``(height, width, 3)``
        uint8 RGB.
        """
        level_width, level_height = self.level_dimensions[level]
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, level_width), min(y + height, level_height)
        if x1 <= x0 or y1 <= y0:
            return out
        downsample = self.level_downsamples[level]
        # Both backends take the location in level-0 pixels and the size in level pixels.
        location = (int(round(x0 * downsample)), int(round(y0 * downsample)))
        try:
            region = self._handle.read_region(location, level, (x1 - x0, y1 - y0))
            pixels = _to_rgb_on_white(region)
        except Exception as err:  # truncated files, missing tiles, codec errors: each backend has its own types
            raise TdkstainError(
                f"{self.path}: cannot read level {level} at x={x0}, y={y0} ({x1 - x0}x{y1 - y0} px): "
                f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else 'no detail'}. "
                "The file is probably truncated or damaged: copy it again from its source"
            ) from None
        if pixels.shape[:2] != (y1 - y0, x1 - x0):
            raise TdkstainError(f"{self.path}: level {level} returned {pixels.shape[1]}x{pixels.shape[0]} px where "
                                f"{x1 - x0}x{y1 - y0} were asked; the file is damaged")
        out[y0 - y : y1 - y, x0 - x : x1 - x] = pixels
        return out

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Slide({str(self.path)!r}, backend={self.backend!r}, levels={self.level_dimensions}, "
            f"mpp={self.mpp})"
        )


@dataclass(frozen=True)
class LevelChoice:
    """Which pyramid level serves a target resolution, and how it is resampled.

    ``scale``: level pixels per output pixel (1.0: used as is; > 1: downsampled;
    < 1: upsampled, only when the slide's finest level is coarser than the target).
    ``mpp``: microns per output pixel actually delivered.
    """

    level: int
    scale: float
    mpp: float


def choose_level(slide: Slide, target_mpp: float, tolerance: float = MPP_TOLERANCE) -> LevelChoice:
    """The coarsest level whose pixels are at least as fine as ``target_mpp`` (within ``tolerance``)."""
    if slide.mpp is None:
        raise TdkstainError(
            f"{slide.path}: the slide records no microns per pixel (no MPP metadata). "
            "Pass the scan resolution with --slide-mpp (e.g. --slide-mpp 0.25 for a 40x scan, 0.5 for 20x)."
        )
    if not (target_mpp > 0 and math.isfinite(target_mpp)):
        raise TdkstainError(f"target microns per pixel must be positive, got {target_mpp}")
    level_mpps = [slide.mpp * d for d in slide.level_downsamples]
    fine_enough = [k for k, m in enumerate(level_mpps) if m <= target_mpp * (1 + tolerance)]
    level = max(fine_enough, key=lambda k: level_mpps[k]) if fine_enough else 0
    scale = target_mpp / level_mpps[level]
    if scale > MAX_DOWNSCALE:
        raise TdkstainError(
            f"{slide.path}: staining at {target_mpp:g} um/px is {scale:.0f}x coarser than the slide's coarsest level "
            f"({level_mpps[level]:.4g} um/px), beyond {MAX_DOWNSCALE:g}x; give the resolution the model was trained "
            "at (--mpp, typically 0.25-2 um/px)"
        )
    if scale < 1 / MAX_UPSCALE:
        raise TdkstainError(
            f"{slide.path}: staining at {target_mpp:g} um/px is {1 / scale:.0f}x finer than the slide's finest level "
            f"({level_mpps[level]:.4g} um/px), beyond {MAX_UPSCALE:g}x; give the resolution the model was trained at "
            "(--mpp), or check --slide-mpp"
        )
    if abs(scale - 1.0) <= tolerance:
        return LevelChoice(level=level, scale=1.0, mpp=level_mpps[level])
    return LevelChoice(level=level, scale=scale, mpp=target_mpp)


class SlideAtMpp:
    """A slide seen at one resolution: ``read(x, y, w, h)`` in output pixels.

    Args:
        slide: an open :class:`Slide`.
        target_mpp: wanted microns per pixel (e.g. the model card's ``mpp``).

    Attributes:
        width, height: output image size at ``mpp``.
        mpp: microns per output pixel (the level's own when within tolerance).
        choice: the :class:`LevelChoice`.
    """

    def __init__(self, slide: Slide, target_mpp: float, tolerance: float = MPP_TOLERANCE) -> None:
        self.slide = slide
        self.choice = choose_level(slide, target_mpp, tolerance)
        level_width, level_height = slide.level_dimensions[self.choice.level]
        self.width = max(1, int(round(level_width / self.choice.scale)))
        self.height = max(1, int(round(level_height / self.choice.scale)))
        self.mpp = self.choice.mpp
        check_pixels(f"{slide.path} at {self.mpp:.4g} um/px", self.height, self.width,
                     hint="stain at the model's resolution (--mpp) or a region of the slide")

    def read(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """``(height, width, 3)`` uint8 RGB of output pixels ``[y, y+height) x [x, x+width)``; white outside.

        Resampling reads a margin around the region so that Lanczos sees the same
        source pixels whichever tile asks: overlapping tiles agree on shared pixels
        (up to Pillow's fixed-point rounding).
        """
        level, scale = self.choice.level, self.choice.scale
        if scale == 1.0:
            return self.slide.read(level, x, y, width, height)
        source_x0, source_y0 = x * scale, y * scale
        source_x1, source_y1 = (x + width) * scale, (y + height) * scale
        margin = int(math.ceil(3 * max(scale, 1.0))) + 2  # Lanczos-3 support in source pixels, plus slack
        read_x0, read_y0 = int(math.floor(source_x0)) - margin, int(math.floor(source_y0)) - margin
        read_x1, read_y1 = int(math.ceil(source_x1)) + margin, int(math.ceil(source_y1)) + margin
        region = self.slide.read(level, read_x0, read_y0, read_x1 - read_x0, read_y1 - read_y0)
        image = Image.fromarray(region).resize(
            (width, height),
            resample=Image.Resampling.LANCZOS,
            box=(source_x0 - read_x0, source_y0 - read_y0, source_x1 - read_x0, source_y1 - read_y0),
        )
        return np.array(image, dtype=np.uint8)  # writable: callers paint padding white


def read_thumbnail(slide: Slide, max_side: int) -> np.ndarray:
    """A downsampled whole-slide image whose longer side is at most ``max_side`` pixels.

    Reads the coarsest level that is still at least ``max_side`` on its longer
    side, in horizontal strips (so a single-level 100k-pixel slide does not load
    whole), and shrinks each strip by area. Returns ``(h, w, 3)`` uint8 RGB.
    """
    width0, height0 = slide.dimensions
    factor = max(width0, height0) / max_side
    if factor <= 1:
        level = 0
        out_width, out_height = width0, height0
    else:
        out_width = max(1, int(round(width0 / factor)))
        out_height = max(1, int(round(height0 / factor)))
        candidates = [k for k, d in enumerate(slide.level_downsamples) if d <= factor]
        level = max(candidates) if candidates else 0
    level_width, level_height = slide.level_dimensions[level]
    # Strips a whole number of output rows tall, ~512 level rows each: memory bounded by
    # 512 x level width (e.g. 80 MB RGBA for a 40k-pixel single-level slide).
    rows_per_output = level_height / out_height
    out_rows_per_strip = max(1, int(512 // max(rows_per_output, 1e-9)))
    thumbnail = np.empty((out_height, out_width, 3), dtype=np.uint8)
    for out_y0 in range(0, out_height, out_rows_per_strip):
        out_y1 = min(out_height, out_y0 + out_rows_per_strip)
        level_y0 = int(math.floor(out_y0 * rows_per_output))
        level_y1 = min(level_height, int(math.ceil(out_y1 * rows_per_output)))
        strip = slide.read(level, 0, level_y0, level_width, max(1, level_y1 - level_y0))
        image = Image.fromarray(strip).resize(
            (out_width, out_y1 - out_y0),
            resample=Image.Resampling.BOX,
            box=(0, out_y0 * rows_per_output - level_y0, level_width, out_y1 * rows_per_output - level_y0),
        )
        thumbnail[out_y0:out_y1] = np.asarray(image)
    return thumbnail
