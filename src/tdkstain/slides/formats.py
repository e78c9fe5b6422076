"""The outputs of ``tdkstain slide`` besides its default generic TIFF: OME-TIFF (``--format``) and Deep Zoom (``--dzi``).

The pipeline (:func:`tdkstain.slides.pipeline.stain_slide`) always writes the
generic pyramidal TIFF. :func:`finish_formats` then, from that finished file:

- ``--format ome-tiff``: rewrites it in place as OME-TIFF
  (:func:`tdkstain.slides.writer.copy_pyramid_tiff`: the same compressed
  tiles, so the same pixels, in the OME layout; a temporary file beside it
  takes its name when complete, so for a moment the disk holds both);
- ``--dzi``: cuts level 0 into Deep Zoom tiles, ``OUT.dzi`` and ``OUT_files/``
  beside it (:func:`tdkstain.slides.deepzoom.write_deepzoom`).

:func:`check_formats` runs before anything is stained, so that a missing
pyvips is reported at once rather than after hours of staining.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from tdkstain.plumbing.atomic import atomic_path
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.slides.writer import LAYOUTS, copy_pyramid_tiff, stained_description


def check_formats(out: str | os.PathLike, layout: str, dzi: bool, *, cohort: bool = False) -> bool:
    """Check ``--format``/``--dzi`` before staining.

    Args:
        out: the output slide (one slide) or folder (a cohort).
        layout: ``"tiff"`` or ``"ome-tiff"``.
        dzi: Deep Zoom tiles are wanted (pyvips must load).
        cohort: several slides into the folder ``out``.
    Returns:
        True when ``out`` is an OME-TIFF that tdkstain slide wrote: a rerun may replace it as it
        replaces its own generic TIFF (the pipeline recognises only the latter's signature).
    Raises:
        TdkstainError: an unknown layout, ``dzi`` without pyvips (saying how to install it), or
            OME-TIFF for a cohort (whose reruns would not recognise OME-TIFF outputs as finished).
    """
    if layout not in LAYOUTS:
        raise TdkstainError(f"--format {layout!r} is unknown; choose one of {', '.join(LAYOUTS)}")
    if cohort and layout != "tiff":
        raise TdkstainError("--format ome-tiff takes one slide at a time for now: a rerun of a cohort would not "
                            "recognise its OME-TIFF outputs as finished and would stain them again; stain the cohort "
                            "with --format tiff")
    if dzi:
        from tdkstain.slides.deepzoom import load_pyvips

        load_pyvips()
    if cohort:
        return False
    from tdkstain.slides.pipeline import OUTPUT_SIGNATURE

    out = Path(out)
    return out.is_file() and OUTPUT_SIGNATURE in stained_description(out) and _is_ome(out)


def _is_ome(path: Path) -> bool:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return bool(tif.is_ome)
    except Exception:  # not a TIFF after all: not ours
        return False


def finish_formats(
    out: str | os.PathLike,
    layout: str,
    dzi: bool,
    mpp: float,
    *,
    log: Callable[[str], None] = lambda message: None,
) -> list[Path]:
    """Turn the finished generic TIFF ``out`` into the asked-for outputs (see the module docstring).

    Args:
        out: the pyramidal TIFF :func:`~tdkstain.slides.pipeline.stain_slide` wrote.
        layout: ``"tiff"`` (left as it is) or ``"ome-tiff"`` (rewritten in place).
        dzi: also write ``OUT.dzi`` and ``OUT_files/`` beside it.
        mpp: microns per level-0 pixel of ``out``.
        log: receives one line per file written.
    Returns:
        The files written (``out`` when rewritten, the ``.dzi``).
    """
    out = Path(out)
    written: list[Path] = []
    if layout == "ome-tiff":
        with atomic_path(out) as tmp:
            levels = copy_pyramid_tiff(out, tmp, layout="ome-tiff", mpp=mpp, name=out.name)
        log(f"rewrote {out.name} as OME-TIFF ({len(levels)} levels in SubIFDs, {mpp:.4g} um/px in its OME-XML)")
        written.append(out)
    if dzi:
        from tdkstain.slides.deepzoom import dzi_path_for, write_deepzoom

        zoom = write_deepzoom(out, dzi_path_for(out), mpp=mpp, log=log)
        log(f"wrote {zoom.dzi.name} and {zoom.files.name}/ ({zoom.tile_count()} Deep Zoom tiles of {zoom.tile_size} px)")
        written.append(zoom.dzi)
    return written
