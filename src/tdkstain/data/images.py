"""Image files in and out: every image enters tdkstain here, once, as ``(H, W, 3)`` uint8 RGB.

Reading goes by the file's *content*, never its extension: the BCI dataset
ships JPEG bytes inside ``.png`` files, and Pillow identifies a file by its
magic bytes. Whatever the file holds (grey, palette, RGBA, CMYK, 16-bit,
float TIFF) is converted to 8-bit RGB here, so no other module handles
colour modes or bit depths.

Choices, and why:
- TIFF content is decoded with tifffile first, Pillow second. Pillow reads a
  16-bit RGB TIFF as 8-bit without a word and garbles a planar (``separate``)
  16-bit one; tifffile returns the stored numbers exactly. Pillow stays as the
  fallback for what tifffile cannot decode without ``imagecodecs`` (JPEG- or
  LZW-compressed tiles, palette, CMYK, YCbCr).
- Transparency is composited over white. Slide exports mark pixels outside
  the scanned tissue with alpha 0, and what lies under them is arbitrary
  (often black); white is what empty glass looks like in brightfield, so
  compositing gives the picture a stain-separation step expects.
- Where information is lost (transparency, bit depth above 8, float values,
  CMYK without a colour profile, extra TIFF pages) an
  :class:`ImageConversionWarning` names the file and what was lost. Lossless
  conversions (grey replicated to RGB, palette expanded) stay silent.
- Every decode is complete (``Image.load``), so a truncated file is an error
  here rather than a grey band in a training batch. Pillow's
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left at its default, False.
- A pixel limit (``max_pixels``) guards against decompression bombs; the
  error says how to raise it (``--max-pixels`` of the commands that read
  the user's images: check, extract, translate, evaluate).
- A file that cannot be *read* (permission denied, an I/O error, a symbolic
  link loop or a dangling link, a named pipe or device given as an image) is
  a :class:`TdkstainError` saying so ("cannot read it (permission denied)"),
  never an ``OSError`` that a caller could mistake for a failed write. Pipes
  and devices are refused before they are opened, so a FIFO cannot block.

Writing (:func:`write_image`) is atomic through :func:`tdkstain.plumbing.atomic.atomic_path`:
uint8 images as PNG, float maps as TIFF.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from tdkstain.plumbing.atomic import atomic_path, read_error
from tdkstain.plumbing.errors import TdkstainError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "ImageConversionWarning",
    "image_size",
    "read_float_map",
    "read_gray",
    "read_rgb",
    "read_rgb_with_notes",
    "write_image",
    "write_png",
]

# Pillow's own hard limit (2 * Image.MAX_IMAGE_PIXELS, about 13,400 x 13,400):
# far above any training tile (BCI and RegH2I tiles are 1024 x 1024), low
# enough that a malicious header cannot ask for tens of gigabytes.
DEFAULT_MAX_PIXELS = 178_956_970

# Extensions that dataset discovery treats as images (compared lower-case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

# Decoders Pillow may try, whatever the extension says. Leaving out formats
# without magic bytes (TGA, SPIDER, ...) keeps random bytes from "decoding".
_PILLOW_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "DIB", "WEBP", "GIF")

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

# Image.MAX_IMAGE_PIXELS is process-wide; it is lifted only while one of our
# threads parses a header (we then apply ``max_pixels`` ourselves), under a lock.
_PILLOW_LIMIT_LOCK = threading.Lock()


class ImageConversionWarning(UserWarning):
    """An image was converted to 8-bit RGB (or grey) and something was lost; the message says what."""


# --------------------------------------------------------------------------- reading


def read_rgb(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read any supported image file as RGB.

    Returns:
        ``(H, W, 3)`` uint8 array, values 0..255.

    Raises:
        TdkstainError: the file is missing, empty, not an image, truncated or
            corrupt, or larger than ``max_pixels``; the message names the file.

    Warns:
        ImageConversionWarning: when the conversion to 8-bit RGB loses
            information (transparency, bit depth, float values, CMYK, pages).
    """
    rgb, notes = read_rgb_with_notes(path, max_pixels=max_pixels)
    _warn(path, notes)
    return rgb


def read_rgb_with_notes(
    path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, list[str]]:
    """Like :func:`read_rgb`, but return the information-loss notes instead of warning.

    Thread-safe (``warnings`` filters are not), for readers that decode many
    files at once and report the notes themselves.

    Returns:
        ``((H, W, 3) uint8 RGB, notes)``; ``notes`` is empty for a lossless read.
    """
    path = Path(path)
    data, notes = _load(path, max_pixels)
    rgb = _rgb_from_stored(data, path, notes)
    return rgb, list(dict.fromkeys(notes))


def read_gray(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a single-channel image (a mask or an 8-bit map).

    An alpha channel is dropped, not composited (a mask is data, not a
    picture); an RGB file whose three channels are equal gives one of them
    losslessly; a coloured RGB file is converted with the ITU-R 601-2 luma
    weights (0.299, 0.587, 0.114, as Pillow's ``"L"``) and warns.

    Returns:
        ``(H, W)`` uint8 array, values 0..255.
    """
    path = Path(path)
    data, notes = _load(path, max_pixels)
    if data.ndim == 3 and data.shape[2] in (2, 4):
        alpha = data[:, :, -1]
        if alpha.min() < _opaque_value(alpha):
            notes.append("the alpha channel (transparency) was dropped")
        data = data[:, :, :-1]
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    if data.ndim == 3 and data.shape[2] == 3:
        if np.array_equal(data[:, :, 0], data[:, :, 1]) and np.array_equal(data[:, :, 0], data[:, :, 2]):
            data = data[:, :, 0]
        else:
            notes.append("colour RGB was converted to grey (ITU-R 601-2 luma)")
            unit = _to_unit(data, path, notes)
            luma = unit @ np.array([0.299, 0.587, 0.114], dtype=np.float64)
            data = np.clip(np.rint(luma * 255.0), 0, 255).astype(np.uint8)
    if data.ndim != 2:
        raise TdkstainError(f"{path}: has {data.shape[2]} channels; expected a single-channel (grey) image.")
    gray = _to_uint8(data, path, notes)
    _warn(path, notes)
    return gray


def read_float_map(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a single-channel map with its stored values, unscaled.

    Meant for the count-preserving nuclei density maps (float32 TIFF), whose
    values are densities, not grey levels. An 8-bit PNG map comes back as
    its 0..255 values in float32: no rescaling happens here.

    Returns:
        ``(H, W)`` float32 array, the stored values.
    """
    path = Path(path)
    data, notes = _load(path, max_pixels)
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    if data.ndim != 2:
        raise TdkstainError(
            f"{path}: has {data.shape[2]} channels; a map must be a single-channel image (float32 TIFF or grey PNG)."
        )
    if data.dtype == np.float64:
        notes.append("float64 values were stored as float32")
    _warn(path, notes)
    values = data.astype(np.float32)
    if not np.isfinite(values).all():
        raise TdkstainError(f"{path}: the map holds NaN or infinite values; regenerate it.")
    return values


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image from its header, without decoding the pixels.

    Raises:
        TdkstainError: missing, empty or unrecognised file (named in the message).
    """
    path = Path(path)
    with _reading(path):
        _check_file(path)
        if _is_tiff(path):
            try:
                with tifffile.TiffFile(path) as tif:
                    page = tif.pages[0]
                    return int(page.imagelength), int(page.imagewidth)
            except Exception:  # noqa: BLE001 - fall through to Pillow, which names the failure
                pass
        try:
            with _pillow_limit_lifted():
                with Image.open(path, formats=_PILLOW_FORMATS) as img:
                    width, height = img.size
        except Exception as err:  # noqa: BLE001 - any decoder failure means "not a readable image"
            _raise_if_unreadable(path, err)
            raise _not_an_image(path, err) from err
    return int(height), int(width)


# --------------------------------------------------------------------------- writing


def write_image(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write an image atomically; the suffix picks the format.

    - ``.png``: uint8 ``(H, W)`` grey, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA
      (bool is written as 0/255).
    - ``.tif`` / ``.tiff``: any ``(H, W)`` or ``(H, W, 3)`` array of uint8,
      uint16 or float32 (zlib-compressed, values stored exactly).

    Returns:
        The final path.
    """
    path = Path(path)
    array = np.asarray(array)
    suffix = path.suffix.lower()
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise TdkstainError(f"cannot write {path}: expected an (H, W) or (H, W, 3) array, got shape {array.shape}.")
    if suffix == ".png":
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        if array.dtype != np.uint8:
            raise TdkstainError(
                f"cannot write {path}: PNG output takes uint8 values 0..255, got {array.dtype}; "
                "convert explicitly or write a .tif to keep the values."
            )
        with atomic_path(path) as tmp:
            Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")
    elif suffix in (".tif", ".tiff"):
        if array.dtype not in (np.uint8, np.uint16, np.float32):
            raise TdkstainError(
                f"cannot write {path}: TIFF output takes uint8, uint16 or float32, got {array.dtype}."
            )
        photometric = "rgb" if array.ndim == 3 else "minisblack"
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, array, photometric=photometric, compression="zlib")
    else:
        raise TdkstainError(f"cannot write {path}: unsupported suffix {path.suffix!r}; use .png or .tif.")
    return path


def write_png(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a uint8 grey ``(H, W)`` or RGB ``(H, W, 3)`` array as a PNG, atomically."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise TdkstainError(f"cannot write {path}: write_png needs a .png file name.")
    return write_image(path, array)


# --------------------------------------------------------------------------- internals


def _warn(path: str | os.PathLike, notes: list[str]) -> None:
    for note in dict.fromkeys(notes):
        warnings.warn(f"{path}: {note}", ImageConversionWarning, stacklevel=3)


@contextlib.contextmanager
def _pillow_limit_lifted() -> Iterator[None]:
    """Let Pillow parse any header; ``max_pixels`` is checked by us right after."""
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Any ``OSError`` of the block (opening or reading ``path``) becomes a TdkstainError about reading it."""
    try:
        yield
    except OSError as err:
        raise read_error(path, err) from err


def _raise_if_unreadable(path: Path, err: BaseException) -> None:
    """Re-raise a decoder failure that was the file system's (errno set) as a read error, not "corrupt".

    Pillow reports corrupt data as ``OSError`` too, but without an errno.
    """
    if isinstance(err, OSError) and err.errno is not None:
        raise read_error(path, err) from err


# What a path that is no regular file is, in words.
_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _check_file(path: Path) -> None:
    """Refuse what is not a readable, non-empty regular file, before opening it (a FIFO would block)."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):
            raise TdkstainError(
                f"{path}: a symbolic link to {os.readlink(path)}, which does not exist; fix or remove the link."
            ) from None
        raise TdkstainError(f"{path}: no such file; check the path (and the dataset folder names).") from None
    except OSError as err:  # permission denied on a folder above it, a symbolic link loop, an I/O error
        raise read_error(path, err) from err
    if stat.S_ISDIR(info.st_mode):
        raise TdkstainError(f"{path}: is a folder, not a file; expected an image file.")
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _SPECIAL_FILES if test(info.st_mode)), "not a regular file")
        raise TdkstainError(
            f"{path}: is {kind}, not a regular file; tdkstain reads images from files only. "
            "Save the image to a file and pass that."
        )
    if info.st_size == 0:
        raise TdkstainError(
            f"{path}: the file is empty (0 bytes); an interrupted copy or download leaves such files. "
            "Copy it again or remove it."
        )


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in _TIFF_MAGIC


def _not_an_image(path: Path, err: BaseException) -> TdkstainError:
    if isinstance(err, UnidentifiedImageError):
        detail = "unknown file format"
    else:
        # Pillow's messages repeat the path, which the message already starts with.
        detail = (str(err) or type(err).__name__).replace(f"'{path}'", "").replace(str(path), "").strip()
    return TdkstainError(
        f"{path}: not a readable image ({detail}). Formats read: PNG, JPEG, TIFF, BMP, WebP, GIF, "
        "whatever the extension says. Replace or remove the file."
    )


# Where the pixel limit can be raised, for the messages below.
_RAISE_LIMIT = ("--max-pixels {n} (tdkstain check, extract, translate and evaluate take it) or "
                "max_pixels={n} in Python (tdkstain.data.images)")


def _too_large(path: Path, height: int, width: int, max_pixels: int) -> TdkstainError:
    return TdkstainError(
        f"{path}: {width} x {height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} pixels "
        "(a guard against decompression bombs). If the image is genuine, raise the limit: "
        f"{_RAISE_LIMIT.format(n=width * height)}; or cut the image into tiles first."
    )


def _load(path: Path, max_pixels: int) -> tuple[np.ndarray, list[str]]:
    """Decode a whole file into its native numbers.

    Returns:
        ``(array, notes)``: array ``(H, W)`` or ``(H, W, C)`` with C in 1..4
        (grey, grey+alpha, RGB, RGBA), dtype as stored (bool, uint8, uint16,
        int32, float32, float64); ``notes`` lists what was already lost.
    """
    with _reading(path):
        _check_file(path)
        notes: list[str] = []
        if _is_tiff(path):
            array = _load_tiff(path, max_pixels, notes)
            if array is not None:
                return array, notes
        return _load_pillow(path, max_pixels, notes), notes


def _load_tiff(path: Path, max_pixels: int, notes: list[str]) -> np.ndarray | None:
    """Decode a grey or RGB(A) TIFF with tifffile; None hands the file to Pillow."""
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            photometric = int(page.photometric)
            if photometric not in (1, 2):  # MINISBLACK, RGB; the rest (palette, CMYK, YCbCr...) to Pillow
                return None
            if page.imagelength * page.imagewidth > max_pixels:
                raise _too_large(path, page.imagelength, page.imagewidth, max_pixels)
            # Samples and bit depth multiply the pixel count: cap the decoded
            # bytes at what max_pixels of 16-bit RGBA would take.
            if page.nbytes > 8 * max_pixels:
                needed = -(-page.nbytes // 8)
                raise TdkstainError(
                    f"{path}: decoding would take {page.nbytes:,} bytes ({page.samplesperpixel} samples of "
                    f"{page.dtype}), more than 8 bytes per pixel of the limit of {max_pixels:,} pixels; "
                    f"if the image is genuine, raise the limit: {_RAISE_LIMIT.format(n=needed)}."
                )
            array = page.asarray()
            axes = page.axes
            n_pages = len(tif.pages)
            extrasamples = tuple(int(e) for e in page.extrasamples)
    except (TdkstainError, MemoryError):
        raise
    except Exception:  # noqa: BLE001 - e.g. a codec that needs imagecodecs; Pillow may still decode it
        return None
    if array.ndim != len(axes) or array.size == 0 or "Y" not in axes or "X" not in axes:
        # Damaged tags (found by fuzzing): the decoded data do not have the shape the tags describe.
        raise TdkstainError(
            f"{path}: the TIFF is corrupt (decoded shape {array.shape} does not match its tags, axes {axes!r}); "
            "copy the file again or remove it."
        )
    # Bring the samples axis last, whatever the planar configuration, and drop
    # length-1 axes other than rows, columns and samples.
    if "S" in axes:
        i = axes.index("S")
        array = np.moveaxis(array, i, -1)
        axes = axes[:i] + axes[i + 1 :] + "S"
    keep = [i for i, a in enumerate(axes) if a in "YXS" or array.shape[i] != 1]
    array = array.reshape([array.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if axes not in ("YX", "YXS"):
        raise TdkstainError(f"{path}: a TIFF with axes {axes!r} is not a single 2-D image; export one plane.")
    if n_pages > 1:
        notes.append(f"only the first of {n_pages} TIFF pages was read")
    if extrasamples and extrasamples[0] == 1 and array.ndim == 3:
        # Associated (premultiplied) alpha: undo the premultiplication so that
        # every alpha path below sees straight colour.
        array = _unpremultiply(array)
    return array


def _rgb_from_stored(data: np.ndarray, path: Path, notes: list[str]) -> np.ndarray:
    if data.ndim == 2:
        return np.repeat(_to_uint8(data, path, notes)[:, :, None], 3, axis=2)
    channels = data.shape[2]
    if channels == 1:
        return np.repeat(_to_uint8(data[:, :, 0], path, notes)[:, :, None], 3, axis=2)
    if channels == 3:
        return _to_uint8(data, path, notes)
    if channels in (2, 4):
        colour, alpha = data[:, :, :-1], data[:, :, -1]
        rgb = _composite_over_white(colour, alpha, path, notes)
        if rgb.shape[2] == 1:
            rgb = np.repeat(rgb, 3, axis=2)
        return rgb
    raise TdkstainError(
        f"{path}: has {channels} channels per pixel; tdkstain reads grey, grey+alpha, RGB or RGBA images. "
        "Export the file as an RGB PNG or TIFF."
    )


def _unpremultiply(array: np.ndarray) -> np.ndarray:
    full = float(_opaque_value(array[:, :, -1]))
    unit = array.astype(np.float64) / full
    alpha = unit[:, :, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        colour = np.where(alpha > 0, unit[:, :, :-1] / np.maximum(alpha, 1e-12), 0.0)
    out = np.concatenate([np.clip(colour, 0, 1), alpha], axis=2) * full
    return np.rint(out).astype(array.dtype) if np.issubdtype(array.dtype, np.integer) else out.astype(array.dtype)


def _load_pillow(path: Path, max_pixels: int, notes: list[str]) -> np.ndarray:
    try:
        with _pillow_limit_lifted():
            img = Image.open(path, formats=_PILLOW_FORMATS)
    except Exception as err:  # noqa: BLE001
        _raise_if_unreadable(path, err)
        raise _not_an_image(path, err) from err
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise _too_large(path, height, width, max_pixels)
        rawmode = _pillow_rawmode(img)
        try:
            if img.format == "TIFF":
                with _pillow_limit_lifted():  # Pillow's TIFF reader checks the limit again in seek() and load()
                    n_pages = getattr(img, "n_frames", 1)
                    img.load()
                if n_pages > 1:
                    notes.append(f"only the first of {n_pages} TIFF pages was read")
            else:
                img.load()
        except MemoryError:
            raise
        except Exception as err:  # noqa: BLE001
            _raise_if_unreadable(path, err)
            reason = str(err) or type(err).__name__
            raise TdkstainError(
                f"{path}: the image data are truncated or corrupt ({reason}); "
                "copy the file again or remove it."
            ) from err
        return _pillow_to_array(img, path, rawmode, notes)


def _pillow_rawmode(img: Image.Image) -> str:
    """The raw pixel layout of the first tile, e.g. ``"RGB;16B"`` for a 48-bit PNG."""
    try:
        args = img.tile[0][3]
        return args if isinstance(args, str) else str(args[0])
    except (IndexError, TypeError, AttributeError):
        return ""


def _pillow_to_array(img: Image.Image, path: Path, rawmode: str, notes: list[str]) -> np.ndarray:
    mode = img.mode
    if mode in ("1", "L", "LA", "RGB", "RGBA", "I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        if mode in ("RGB", "RGBA", "LA") and ";16" in rawmode:
            notes.append(
                "16 bits per channel were reduced to 8 by the decoder (Pillow keeps the high byte)"
            )
        return np.asarray(img)
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        return np.asarray(img.convert("RGBA" if has_alpha else "RGB"))
    if mode == "RGBa":
        return np.asarray(img.convert("RGBA"))
    if mode == "La":
        return np.asarray(img.convert("LA"))
    if mode == "CMYK":
        notes.append("CMYK was converted to RGB without a colour profile; colours are approximate")
        return np.asarray(img.convert("RGB"))
    try:
        converted = img.convert("RGB")
    except Exception as err:  # noqa: BLE001
        raise TdkstainError(
            f"{path}: colour mode {mode!r} cannot be converted to RGB; export the file as RGB."
        ) from err
    if mode not in ("YCbCr",):
        notes.append(f"colour mode {mode} was converted to RGB")
    return np.asarray(converted)


def _opaque_value(alpha: np.ndarray) -> float:
    """The alpha value meaning "fully opaque" for this dtype."""
    if alpha.dtype == np.uint8:
        return 255
    if alpha.dtype == np.uint16:
        return 65535
    if alpha.dtype == bool:
        return True
    if np.issubdtype(alpha.dtype, np.floating):
        return 1.0
    return 65535


def _to_unit(data: np.ndarray, path: Path, notes: list[str]) -> np.ndarray:
    """Stored values -> float64 in [0, 1], noting bit depths above 8."""
    if data.dtype == bool:
        return data.astype(np.float64)
    if data.dtype == np.uint8:
        return data.astype(np.float64) / 255.0
    if data.dtype == np.uint16:
        notes.append("16-bit values were reduced to 8 bits")
        return data.astype(np.float64) / 65535.0
    if np.issubdtype(data.dtype, np.integer):
        low, high = int(data.min()), int(data.max())
        if low < 0 or high > 65535:
            raise TdkstainError(
                f"{path}: integer pixel values span [{low}, {high}]; tdkstain reads 8- or 16-bit images. "
                "Rescale and save as 8-bit."
            )
        notes.append(f"{data.dtype} values were read as 16-bit and reduced to 8 bits")
        return data.astype(np.float64) / 65535.0
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all():
            raise TdkstainError(f"{path}: the image holds NaN or infinite values.")
        low, high = float(data.min()), float(data.max())
        if low >= 0.0 and high <= 1.0:
            notes.append("float values were taken to lie in [0, 1] and quantised to 8 bits")
            return data.astype(np.float64)
        if low >= 0.0 and high <= 255.0:
            notes.append("float values were taken to lie in [0, 255] and quantised to 8 bits")
            return data.astype(np.float64) / 255.0
        raise TdkstainError(
            f"{path}: float pixel values span [{low:g}, {high:g}]; expected [0, 1] or [0, 255]. "
            "Rescale the image before saving it."
        )
    raise TdkstainError(f"{path}: unsupported pixel type {data.dtype}.")


def _to_uint8(data: np.ndarray, path: Path, notes: list[str]) -> np.ndarray:
    if data.dtype == np.uint8:
        return data
    if data.dtype == np.uint16:
        notes.append("16-bit values were reduced to 8 bits")
        # round(x * 255 / 65535) == round(x / 257), in integers to stay exact.
        return ((data.astype(np.uint32) + 128) // 257).astype(np.uint8)
    unit = _to_unit(data, path, notes)
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def _composite_over_white(colour: np.ndarray, alpha: np.ndarray, path: Path, notes: list[str]) -> np.ndarray:
    """Composite straight (unassociated) colour over white; ``(H, W, C)`` uint8 out, C = channels of ``colour``."""
    if alpha.min() >= _opaque_value(alpha):
        return _to_uint8(colour, path, notes)
    notes.append("transparent pixels were composited over white (the alpha channel was dropped)")
    unit = _to_unit(colour, path, notes)
    a = _to_unit(alpha, path, [])[:, :, None]
    blended = unit * a + (1.0 - a)
    return np.clip(np.rint(blended * 255.0), 0, 255).astype(np.uint8)
