"""Whole slides: reading at a resolution, finding tissue, staining streamed and resumable, pyramidal TIFF out.

- :mod:`~tdkstain.slides.reader`: :class:`Slide` (OpenSlide or tiffslide),
  :class:`SlideAtMpp` (a slide seen at given microns per pixel),
  :func:`read_thumbnail`.
- :mod:`~tdkstain.slides.tissue`: :func:`tissue_mask` (Otsu on saturation).
- :mod:`~tdkstain.slides.writer`: :func:`write_pyramid_tiff` (streaming,
  tiled, JPEG or deflate, MPP metadata OpenSlide, tiffslide and QuPath read).
- :mod:`~tdkstain.slides.pipeline`: :func:`stain_slide`, what ``tdkstain slide`` runs.
"""

from __future__ import annotations

from tdkstain.slides.pipeline import SlideOptions, SlideResult, stain_slide, thumbnail_path_for, work_dir_for
from tdkstain.slides.reader import Slide, SlideAtMpp, choose_level, read_thumbnail
from tdkstain.slides.tissue import tissue_mask
from tdkstain.slides.writer import pyramid_dimensions, write_pyramid_tiff

__all__ = [
    "Slide",
    "SlideAtMpp",
    "choose_level",
    "read_thumbnail",
    "tissue_mask",
    "write_pyramid_tiff",
    "pyramid_dimensions",
    "SlideOptions",
    "SlideResult",
    "stain_slide",
    "work_dir_for",
    "thumbnail_path_for",
]
