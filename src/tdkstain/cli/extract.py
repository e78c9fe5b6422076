"""``tdkstain extract DATA_DIR``: knowledge maps for every IHC tile, written beside the data."""

from __future__ import annotations

import argparse

HELP = "extract DAB images, membrane masks, nuclei centroids and density maps from every IHC tile"

DESCRIPTION = """\
Extract the domain knowledge TDKstain trains with from every IHC tile of a
paired dataset (release, BCI, MIST layout or a CSV manifest), written beside
the data in the release's folder names, so data prepared by either tool works
in both:

  {split}_IHC_dab/STEM.png          DAB-only image K_M
  {split}_IHC_dab_mask/STEM.png     membrane mask M (uint8 0..255)
  {split}_IHC_nuclei_map/STEM.png   nuclei density K_N (.tif with --density count)
  {split}_IHC_nuclei/STEM.csv       nuclei centroids (x,y = column,row)
  extraction.json                   the parameters used (read by training)
  extraction_report/index.html      quality report per HER2 score

Reruns skip tiles whose outputs are up to date, so an interrupted run is
resumed by running the same command again. Options that change the
parameters recorded in extraction.json are refused unless --force is given,
which re-extracts every tile.

example:
  tdkstain synth data --pairs 32 --size 256
  tdkstain extract data --workers 2 --evaluate-against-truth
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_dir", metavar="DATA_DIR", help="dataset root; outputs are written under it")
    parser.add_argument("--split", action="append", metavar="S",
                        help="only this split (e.g. train); repeat for several (default: every split found)")
    parser.add_argument("--manifest", metavar="CSV", help="CSV with columns he,ihc[,label][,split] instead of a folder layout")
    # The defaults quoted below are those of knowledge.ExtractionParams (the
    # only copy; tests/test_cli_extract.py checks that this text agrees).
    group = parser.add_argument_group("knowledge parameters (unset options take knowledge.ExtractionParams' defaults)")
    group.add_argument("--mode", choices=("release", "adaptive"),
                       help="membrane mask recipe: 'release' = HSV saturation of the DAB-only image > threshold, "
                            "as the authors' release; 'adaptive' = DAB density above the tile's own background, "
                            "robust to tinted scans. Also sets the nuclei mode unless --nuclei-mode is given "
                            "(default: adaptive)")
    group.add_argument("--membrane-threshold", type=float, metavar="T",
                       help="membrane threshold of the chosen mode: release = saturation (default: 0.15), "
                            "adaptive = DAB density margin above background (default: 0.0231; --calibrate fits it)")
    group.add_argument("--no-blur", action="store_true",
                       help="store the binary membrane mask, without the release's 9x9 sigma 3 Gaussian blur "
                            "(default: blurred)")
    group.add_argument("--nuclei-mode", choices=("release", "adaptive"),
                       help="nuclei mask recipe: 'release' = Otsu on the rescaled haematoxylin channel; "
                            "'adaptive' = white-balanced, tissue-aware threshold and nucleus sizes in microns "
                            "(default: as --mode, else adaptive)")
    group.add_argument("--nuclei-backend", choices=("classical", "cellpose"),
                       help="nuclei instances: 'classical' watershed (no weights) or 'cellpose' (optional extra; "
                            "its weights must already be on disk) (default: classical)")
    group.add_argument("--mpp", type=float, metavar="M",
                       help="microns per pixel of the IHC tiles: nucleus sizes in adaptive mode "
                            "(default: 0.5, i.e. 20x; 40x is about 0.25)")
    group.add_argument("--density", choices=("minmax", "count"),
                       help="nuclei density map: 'minmax' = per-tile min-max, uint8 PNG as the release; "
                            "'count' = float32 TIFF summing to the nuclei count (default: minmax)")
    group.add_argument("--calibrate", action="store_true",
                       help="fit the adaptive membrane threshold on a sample of tiles first and store it in "
                            "extraction.json (implies --mode adaptive); later runs reuse it")
    group.add_argument("--calibrate-tiles", type=int, default=32, metavar="N",
                       help="tiles sampled evenly over the dataset by --calibrate (default: 32)")
    run_group = parser.add_argument_group("running")
    run_group.add_argument("--engine", choices=("torch", "numpy"),
                           help="'torch' = tdkstain.knowledge.extraction.fast: exact h-maxima in torch, shared deconvolution, "
                                "about 3x the tiles per second of 'numpy' on the CPU; 'numpy' = the scikit-image "
                                "path (knowledge.extract_tile). Both write identical files (tested bit for bit), so "
                                "a run may resume with either. Only 'numpy' runs --nuclei-backend cellpose "
                                "(default: torch, numpy with cellpose)")
    run_group.add_argument("--workers", type=int, default=1, metavar="W",
                           help="worker processes; results are identical for any number (default: 1)")
    run_group.add_argument("--force", action="store_true",
                           help="re-extract every tile, and replace knowledge made with other parameters")
    run_group.add_argument("--overlays", action="store_true",
                           help="also write {split}_IHC_overlay/STEM.png: IHC with membrane contour (green) and "
                                "nuclei (magenta) for a person to check")
    run_group.add_argument("--skip-bad", action="store_true",
                           help="go on past unreadable tiles and list them at the end (default: stop with an error "
                                "naming them, after writing the good tiles)")
    run_group.add_argument("--evaluate-against-truth", action="store_true",
                           help="afterwards, compare nuclei and membrane with the truth of a 'tdkstain synth' "
                                "dataset and print F1, count error and IoU per failure case and HER2 score")
    run_group.add_argument("--no-report", action="store_true",
                           help="do not write the quality report extraction_report/index.html")
    run_group.add_argument("--quiet", action="store_true", help="no progress bar")
    from tdkstain.cli import add_max_pixels_argument

    add_max_pixels_argument(run_group)


def build_params(args: argparse.Namespace, stored: dict | None = None):
    """ExtractionParams: the defaults, or an earlier calibration, with the command-line options applied."""
    from tdkstain.plumbing.errors import TdkstainError
    from tdkstain.knowledge.maps import ExtractionParams

    params = ExtractionParams().to_dict()
    membrane, nuclei = params["membrane"], params["nuclei"]
    mode = args.mode
    if args.calibrate:
        if mode == "release":
            raise TdkstainError("--calibrate fits the adaptive membrane threshold; it cannot be used with --mode release")
        mode = "adaptive"
    elif (
        stored is not None
        and stored.get("calibration")
        and args.membrane_threshold is None
        and mode in (None, stored["calibration"].get("membrane_mode"))
    ):
        # A threshold fitted by an earlier --calibrate is kept when the command
        # is rerun without threshold options: resuming needs no new flags.
        mode = stored["calibration"]["membrane_mode"]
        membrane["threshold"] = stored["calibration"]["membrane_threshold"]
        membrane["calibrated"] = True
    if mode is not None:
        membrane["mode"] = mode
        nuclei["mode"] = mode
    if args.membrane_threshold is not None:
        key = "saturation_threshold" if membrane["mode"] == "release" else "threshold"
        membrane[key] = args.membrane_threshold
    if args.no_blur:
        membrane["blur"] = False
    if args.nuclei_mode is not None:
        nuclei["mode"] = args.nuclei_mode
    if args.nuclei_backend is not None:
        nuclei["backend"] = args.nuclei_backend
    if args.mpp is not None:
        nuclei["mpp"] = args.mpp
    if args.density is not None:
        params["density_normalise"] = args.density
    return ExtractionParams.from_dict(params, source="command-line options")


def run(args: argparse.Namespace) -> int:
    from tdkstain.cli import max_pixels
    from tdkstain.knowledge import extraction
    from tdkstain.plumbing.errors import TdkstainError
    from tdkstain.data.pairs import detect_layout

    if args.workers < 1:
        raise TdkstainError(f"--workers must be at least 1, got {args.workers}")
    root = detect_layout(args.data_dir, manifest=args.manifest).root
    params = build_params(args, extraction.read_extraction_record(root))
    summary = extraction.extract_dataset(
        args.data_dir,
        params,
        splits=args.split,
        manifest=args.manifest,
        workers=args.workers,
        force=args.force,
        overlays=args.overlays,
        progress=not args.quiet,
        skip_bad=args.skip_bad,
        calibrate_sample=args.calibrate_tiles if args.calibrate else None,
        report=not args.no_report,
        engine=args.engine,
        max_pixels=max_pixels(args),
    )
    print(summary.describe())
    if summary.calibration and args.calibrate:
        print(f"calibrated membrane threshold: {summary.calibration['membrane_threshold']:.4f} "
              f"({len(summary.calibration['tiles'])} tiles)")
    if args.evaluate_against_truth:
        splits = args.split or [None]
        for split in splits:
            evaluation = extraction.evaluate_against_truth(root, split, progress=not args.quiet)
            where = f" (split {split})" if split else ""
            print(f"\nagainst synthetic truth{where}: nuclei matched within {evaluation.radius:g} px, "
                  "membrane IoU = unblurred mask vs true membrane, both dilated 2 px (knowledge.membrane_overlap)")
            print(evaluation.to_markdown())
    # With --skip-bad the user asked to go on; the bad tiles are listed above.
    return 0
