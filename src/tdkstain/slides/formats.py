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
from tdkstain.slides.writer import LAYOUTS, copy_pyramid_tiff


def check_formats(layout: str, dzi: bool) -> None:
    """Check ``--format``/``--dzi`` before staining.

    Args:
        layout: ``"tiff"`` or ``"ome-tiff"``.
        dzi: Deep Zoom tiles are wanted (pyvips must load).
    Raises:
        TdkstainError: an unknown layout, or ``dzi`` without pyvips (saying how to install it).

    Either layout's earlier output is recognised as tdkstain's (``pipeline.is_stained_slide``), so a rerun
    replaces it, and a cohort's rerun skips it, as it does the default TIFF.
    """
    if layout not in LAYOUTS:
        raise TdkstainError(f"--format {layout!r} is unknown; choose one of {', '.join(LAYOUTS)}")
    if dzi:
        from tdkstain.slides.deepzoom import load_pyvips

        load_pyvips()


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
