"""Bounds on every size that follows from what a user or a file says, checked before anything is allocated.

One place for the question "is this number sane?": a command-line value, a
config value, a model card's architecture, a slide's planned output. Each
check raises :class:`~tdkstain.plumbing.errors.TdkstainError` naming the
setting (or file), the value, the bound and what to do, so no request can
make tdkstain allocate tens of GB before it fails.
"""

from __future__ import annotations

import math

from tdkstain.plumbing.errors import TdkstainError

__all__ = [
    "MAX_IMAGE_SIDE",
    "MAX_OUTPUT_PIXELS",
    "MAX_TILE_SIDE",
    "MAX_CARD_BYTES",
    "MAX_CONFIG_NODES",
    "check_number",
    "check_pixels",
]

# A whole-slide image at 40x is ~100k x 100k px; ten times that side is no real slide.
MAX_IMAGE_SIDE = 1_000_000
# The largest output image (pixels) tdkstain plans: a 200k x 200k slide at the stained resolution.
MAX_OUTPUT_PIXELS = 200_000 * 200_000
# A tile side beyond this holds more than a GPU can stain in one pass.
MAX_TILE_SIDE = 16_384
# A model card (safetensors metadata, JSON) is a few kB; a config inside it some more.
MAX_CARD_BYTES = 4 * 2**20
# A YAML config expands (aliases included) to at most this many nodes: presets have ~150.
MAX_CONFIG_NODES = 100_000


def check_number(name: str, value: float, low: float | None = None, high: float | None = None, *,
                 hint: str = "", integer: bool = False) -> float:
    """``value`` if it is a finite number in ``[low, high]`` (an int when ``integer``), else a TdkstainError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TdkstainError(f"{name}: expected a number, got {value!r}{'; ' + hint if hint else ''}")
    if integer and (not float(value).is_integer() or isinstance(value, float) and not math.isfinite(value)):
        raise TdkstainError(f"{name}: expected a whole number, got {value!r}{'; ' + hint if hint else ''}")
    if not math.isfinite(value):
        raise TdkstainError(f"{name}: expected a finite number, got {value!r}{'; ' + hint if hint else ''}")
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"between {low:g} and {high:g}" if low is not None and high is not None else (
            f"at least {low:g}" if low is not None else f"at most {high:g}")
        raise TdkstainError(f"{name}={value:g} is out of range: must be {span}{'; ' + hint if hint else ''}")
    return value


def check_pixels(name: str, height: float, width: float, limit: int = MAX_OUTPUT_PIXELS, *, hint: str = "") -> None:
    """Refuse an image of ``height`` x ``width`` pixels that is empty or larger than ``limit`` pixels."""
    if not (height >= 1 and width >= 1):
        raise TdkstainError(f"{name}: {width:.0f} x {height:.0f} px is empty{'; ' + hint if hint else ''}")
    if height * width > limit or max(height, width) > MAX_IMAGE_SIDE:
        raise TdkstainError(
            f"{name}: {width:,.0f} x {height:,.0f} px ({height * width:,.0f} pixels) exceeds the limit of "
            f"{limit:,} pixels ({MAX_IMAGE_SIDE:,} px per side){'; ' + hint if hint else ''}"
        )
