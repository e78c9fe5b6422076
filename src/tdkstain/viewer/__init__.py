"""``tdkstain view``: an H&E slide and its virtual IHC side by side in the browser, panning and zooming together.

- :mod:`~tdkstain.viewer.build`: :func:`build_view` writes a self-contained folder
  (``index.html``, Deep Zoom tiles of both slides, OpenSeadragon and its licence,
  the HER2 map of ``tdkstain score`` as an overlay) that works opened from disk
  (``file://``) and behind any static web server.
- ``assets/``: OpenSeadragon (``assets/openseadragon/SOURCE.md``: version, origin,
  checksums) and the page's own ``viewer.js`` and ``viewer.css``.

docs/viewer.md explains how the page works and what it needs.
"""

from __future__ import annotations

from tdkstain.viewer.build import OPENSEADRAGON_VERSION, ViewOptions, ViewResult, build_view

__all__ = ["OPENSEADRAGON_VERSION", "ViewOptions", "ViewResult", "build_view"]
