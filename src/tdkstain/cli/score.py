"""``tdkstain score``: HER2 scores of IHC tiles, folders and slides by the ASCO/CAP 2018 guideline."""

from __future__ import annotations

import argparse

HELP = "score HER2 on IHC tiles, folders or slides (ASCO/CAP 2018): per-cell membranes, scores, QuPath GeoJSON"

DESCRIPTION = """\
Score HER2 on real or virtual IHC the way the ASCO/CAP 2018 guideline (unchanged
in 2023) reads it, with every step visible:

  per cell    nucleus (the project's detector), the cell grown from it by at most
              --cell-expansion um (as QuPath's cell expansion), its membrane ring,
              the DAB optical density along the ring in --sectors sectors:
              intensity class (--thresholds, OD; QuPath's 0.2 0.4 0.6) and
              completeness (stained fraction of the ring; complete >= --complete-fraction)
  tumour      which cells count (--tumour-rule): epithelial (default: in dense nests,
              nuclei >= --min-nucleus um^2), dense, or all
  per tile    3+  complete strong membranes in > 10 % of tumour cells
              2+  complete weak-to-moderate membranes in > 10 %
              1+  faint or incomplete membranes in > 10 %
              0   staining in <= 10 %; fewer than --min-cells tumour cells: not scorable
              and the H-score (1 x %weak + 2 x %moderate + 3 x %strong, 0-300)

Tiles and folders (PNG, JPEG, TIFF) write to --out: scores.csv and scores.json
(one row per tile, with the reason for its score and every setting), cells/
(one CSV row per cell), geojson/ (cells for QuPath: File > Import objects),
overlays/ (each cell's membrane ring coloured by class) and index.html.

A slide (SVS, NDPI, MRXS, a pyramidal TIFF such as 'tdkstain slide' writes)
gets a HER2 map: the tissue is scored region by region (--region um squares),
written as SLIDE.her2.png (the map over the thumbnail), SLIDE.regions.csv,
SLIDE.geojson (regions with their measurements, for QuPath) and
SLIDE.her2.json (the slide's score by the guideline over all scored tumour
cells). Memory does not grow with the slide.

Research use only: an automated reading of membrane DAB, never a diagnosis.
See docs/her2_scoring.md for the method, its validation on known truth and its limits.

examples:
  tdkstain score real_ihc/ --out scores/real
  tdkstain score virtual/00012_fake_B.png --out scores/one --mpp 0.25
  tdkstain score stained/slide.tif --out scores/slide --region 256
"""


# tdkstain.scoring.TUMOUR_RULES, written out so that 'tdkstain --help' imports no science (tested equal).
TUMOUR_RULES = ("epithelial", "dense", "all")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tdkstain.cli import add_max_pixels_argument

    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="IHC image files, folders of them (their images, not subfolders), or whole slides")
    parser.add_argument("--out", required=True, help="output folder")
    cells = parser.add_argument_group("cells and membranes")
    cells.add_argument("--mpp", type=float, default=None,
                       help="microns per pixel of the tiles (default 0.5, 20x; slides: read at this resolution, "
                            "default 0.5)")
    cells.add_argument("--cell-expansion", type=float, default=5.0, metavar="UM",
                       help="largest distance a cell reaches from its nucleus, um (default 5, QuPath's)")
    cells.add_argument("--thresholds", type=float, nargs=3, default=(0.2, 0.4, 0.6), metavar=("WEAK", "MODERATE", "STRONG"),
                       help="membrane DAB optical density of 1+, 2+ and 3+ cells (default 0.2 0.4 0.6, QuPath's)")
    cells.add_argument("--complete-fraction", type=float, default=0.75, metavar="F",
                       help="stained fraction of a ring from which its membrane is complete (default 0.75)")
    cells.add_argument("--sectors", type=int, default=24, help="angular sectors of a ring (default 24)")
    cells.add_argument("--subtract-background", action="store_true",
                       help="subtract the tile's DAB background (median DAB inside nuclei) first, for scans with "
                            "a brown cast (default: off, absolute thresholds as QuPath's)")
    tumour = parser.add_argument_group("tumour cells and scores")
    tumour.add_argument("--tumour-rule", choices=TUMOUR_RULES, default="epithelial",
                        help="which cells are tumour cells: epithelial (dense nests of large nuclei, default), "
                             "dense (nests, any nucleus), all (tiles cropped to tumour)")
    tumour.add_argument("--min-nucleus", type=float, default=40.0, metavar="UM2",
                        help="smallest tumour nucleus for --tumour-rule epithelial, um^2 (default 40)")
    tumour.add_argument("--min-cells", type=int, default=20,
                        help="fewest tumour cells a tile or region needs to be scored (default 20)")
    slides = parser.add_argument_group("slides")
    slides.add_argument("--region", type=float, default=256.0, metavar="UM",
                        help="side of the square regions a slide is scored in, um (default 256)")
    slides.add_argument("--slide-mpp", type=float, default=None,
                        help="microns per pixel of a slide's level 0, when its metadata lacks it")
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--no-overlays", action="store_true", help="do not write overlays/ (tiles)")
    run_group.add_argument("--no-geojson", action="store_true", help="do not write geojson/ (tiles)")
    run_group.add_argument("--no-cells", action="store_true", help="do not write cells/ (tiles)")
    run_group.add_argument("--workers", type=int, default=0,
                           help="worker processes scoring tiles or slide regions (default 0: this process)")
    run_group.add_argument("--skip-bad", action="store_true",
                           help="leave out (and list) tiles that cannot be read instead of stopping")
    run_group.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    add_max_pixels_argument(parser)


def scoring_params(args: argparse.Namespace):
    """The ScoringParams the arguments ask for (checked: a bad value is an error naming the option)."""
    import math

    from tdkstain.plumbing.errors import TdkstainError
    from tdkstain.scoring import CellParams, ScoringParams

    for option, value, low, high in (("--mpp", args.mpp, 0.05, 10), ("--cell-expansion", args.cell_expansion, 0.5, 50),
                                     ("--complete-fraction", args.complete_fraction, 0.01, 1),
                                     ("--min-nucleus", args.min_nucleus, 0, 10_000)):
        if value is not None and not (math.isfinite(value) and low <= value <= high):
            raise TdkstainError(f"{option} {value:g} is out of range: expected {low:g} to {high:g}")
    if not 4 <= args.sectors <= 360:
        raise TdkstainError(f"--sectors {args.sectors} is out of range: expected 4 to 360")
    if not 1 <= args.min_cells <= 100_000:
        raise TdkstainError(f"--min-cells {args.min_cells} is out of range: expected 1 to 100000")
    t = tuple(args.thresholds)
    if not all(math.isfinite(v) and v > 0 for v in t) or not t[0] < t[1] < t[2]:
        raise TdkstainError(f"--thresholds {' '.join(f'{v:g}' for v in t)}: expected three increasing positive "
                            "optical densities, e.g. 0.2 0.4 0.6")
    cells = CellParams(mpp=args.mpp or 0.5, cell_expansion_um=args.cell_expansion, thresholds=t,
                       complete_fraction=args.complete_fraction, sectors=args.sectors,
                       subtract_background=args.subtract_background)
    return ScoringParams(cells=cells, tumour_rule=args.tumour_rule, min_nucleus_um2=args.min_nucleus,
                         min_cells=args.min_cells).validate()


def _expand(inputs: list[str]):
    """Tiles (image files, folders' images) and slides among the inputs, in the order given."""
    from pathlib import Path

    from tdkstain.evaluation.pairing import list_images
    from tdkstain.plumbing.errors import TdkstainError
    from tdkstain.scoring.slide import is_slide

    tiles, slides = [], []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            tiles.extend(list_images(path, "IHC").values())
        elif not path.exists():
            raise TdkstainError(f"{text}: no such file or folder")
        elif is_slide(path):
            slides.append(path)
        else:
            tiles.append(path)
    return tiles, slides


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tdkstain.cli import max_pixels
    from tdkstain.plumbing.errors import TdkstainError
    from tdkstain.scoring.run import ScoreOutputs, score_images

    if args.workers < 0 or args.workers > 256:
        raise TdkstainError(f"--workers {args.workers} is out of range: expected 0 to 256")
    params = scoring_params(args)
    tiles, slides = _expand(args.inputs)
    out = Path(args.out)
    log = (lambda message: None) if args.quiet else (lambda message: print(message, flush=True))
    status = 0
    if tiles:
        outputs = ScoreOutputs(cells=not args.no_cells, geojson=not args.no_geojson, overlays=not args.no_overlays)
        result = score_images(tiles, out, params, outputs=outputs, workers=args.workers, skip_bad=args.skip_bad,
                              max_pixels=max_pixels(args), progress=not args.quiet, log=log)
        if not args.quiet:
            counts = ", ".join(f"{k}: {v}" for k, v in result.counts.items() if v)
            print(f"scored {len(result.rows)} tiles ({counts}) -> {out}/scores.csv, {out}/index.html")
        if result.skipped:
            print(f"{len(result.skipped)} tile(s) skipped (listed in {out}/scores.json)")
            status = 1
    from tdkstain.scoring.run import unique_stems

    for slide, stem in zip(slides, unique_stems(slides)):
        from tdkstain.scoring.slide import SlideScoreOptions, score_slide

        options = SlideScoreOptions(region_um=args.region, slide_mpp=args.slide_mpp, workers=args.workers)
        summary = score_slide(slide, out, params, options, progress=not args.quiet, log=log, stem=stem)
        if not args.quiet:
            print(summary.line())
    return status
