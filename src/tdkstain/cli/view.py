"""``tdkstain view``: the H&E and its virtual IHC side by side in a browser, panning and zooming together."""

from __future__ import annotations

import argparse

HELP = "write a web page (a folder) showing the H&E and the virtual IHC side by side, with the HER2 map"
DESCRIPTION = """\
Write a self-contained folder whose index.html shows an H&E slide and its
virtual IHC side by side: pan or zoom one and the other follows, point for
point (both are laid out in microns, whatever each slide's resolution). With
--her2, the HER2 map of 'tdkstain score' lies over the IHC, to switch on and off.

Both slides are cut into Deep Zoom tiles (libvips dzsave, through pyvips:
pip install pyvips pyvips-binary), level 0 streamed, never a whole slide in
memory. A .dzi given as input, or one that 'tdkstain slide --dzi' wrote beside
the slide, is linked instead of cut again, and so are the tiles of an earlier
run into the same --out whose slide has not changed.

Open OUT/index.html in a browser straight from the disk, or serve the folder:
  python -m http.server --bind 127.0.0.1 --directory OUT 8000    # then http://localhost:8000
The folder carries OpenSeadragon (BSD-3-Clause) with its licence.

examples:
  tdkstain view --he slide.svs --ihc stained/slide.tif --out view/
  tdkstain view --he slide.svs --ihc stained/slide.tif --her2 scores/slide --out view/
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--he", required=True, help="the H&E slide (SVS, NDPI, TIFF, ... or a .dzi)")
    parser.add_argument("--ihc", required=True, help="the virtual IHC: 'tdkstain slide' output (TIFF or OME-TIFF) or a .dzi")
    parser.add_argument("--her2", default=None,
                        help="the HER2 map to overlay: the --out folder of 'tdkstain score' on the IHC, or its STEM.her2.json")
    parser.add_argument("--out", required=True, help="output folder (index.html, tiles, OpenSeadragon)")
    parser.add_argument("--title", default=None, help="the page's title (default: from the H&E's file name)")
    parser.add_argument("--he-mpp", type=float, default=None,
                        help="microns per pixel of the H&E's level 0, when its file does not record it")
    parser.add_argument("--ihc-mpp", type=float, default=None,
                        help="microns per pixel of the IHC's level 0, when its file does not record it")
    tiles = parser.add_argument_group("Deep Zoom tiles")
    tiles.add_argument("--tile-size", type=int, default=254, help="tile side in pixels, without overlap (default 254)")
    tiles.add_argument("--overlap", type=int, default=1, help="pixels each tile shares with its neighbours (default 1)")
    tiles.add_argument("--quality", type=int, default=90, help="JPEG quality of the tiles, 1-100 (default 90)")
    tiles.add_argument("--backend", choices=("auto", "openslide", "tiffslide"), default="auto",
                       help="slide reader for sizes, resolutions and slides libvips cannot read (default auto)")
    parser.add_argument("--force", action="store_true",
                        help="write into a --out folder that holds other files (refused otherwise)")


def run(args: argparse.Namespace) -> int:
    import sys

    from tdkstain.plumbing.atomic import display_name
    from tdkstain.viewer import ViewOptions, build_view

    options = ViewOptions(tile_size=args.tile_size, overlap=args.overlap, quality=args.quality, he_mpp=args.he_mpp,
                          ihc_mpp=args.ihc_mpp, backend=args.backend, title=args.title, force=args.force)
    log = lambda message: print(f"tdkstain view: {message}", file=sys.stderr)  # noqa: E731
    result = build_view(args.he, args.ihc, args.out, her2=args.her2, options=options, log=log)
    log(f"wrote {display_name(result.index)}: H&E {result.he.width}x{result.he.height} px, virtual IHC "
        f"{result.ihc.width}x{result.ihc.height} px" + (", HER2 map" if result.her2_map else "")
        + "; open it in a browser, or serve the folder: python -m http.server --bind 127.0.0.1 --directory "
        + display_name(args.out))
    return 0
