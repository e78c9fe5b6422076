"""``tdkstain benchmark``: train, translate and evaluate several methods on one split (Table 1)."""

from __future__ import annotations

import argparse

HELP = "reproduce Table 1: train each method on one split, translate the test set, evaluate all together"

DESCRIPTION = """\
Train every listed method with the same trainer on the same data split,
translate every test H&E tile with each trained generator, evaluate all of
them together with `tdkstain evaluate` (same tiles, same metrics) and write
a Table 1 style table (table.md, table.csv), comparison plots
(comparison.png, report/plots/) and the HTML report (report/index.html).
Rerun the same command to resume: finished methods are not retrained.

Methods: cyclegan, pix2pix, pix2pixhd, pyramidpix2pix, asp, tdkstain, and the
ablations tdkstain-no-nuclei, tdkstain-no-membrane, tdkstain-no-both (presets in
configs/, each citing its source), `all`, or NAME=CONFIG.yaml for your own.
TDKstain variants need the knowledge maps of `tdkstain extract DATA`.

examples:
  tdkstain benchmark --data BCI --methods all --out bench/bci
  tdkstain benchmark --data synth --methods tdkstain,pix2pix,cyclegan --out bench/small --steps 200 \\
      --no-fid --no-perceptual data.crop=128 data.batch=2 pix2pix:model.n_downsampling=7
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR", help="dataset root with train and test splits")
    parser.add_argument("--methods", default="all", metavar="LIST",
                        help="comma-separated methods (see above) or 'all' (default: all)")
    parser.add_argument("--out", required=True, metavar="DIR", help="benchmark folder (created; rerun to resume)")
    parser.add_argument("--steps", type=int, default=None, metavar="N",
                        help="training steps per method (train.max_steps; the lr schedule is the preset's). "
                             "Default: each preset's full schedule")
    parser.add_argument("--device", default="auto", help="where the generators translate the test tiles: auto, cpu, cuda "
                                                         "(training uses train.device; default: auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    metrics = parser.add_argument_group("evaluation (as tdkstain evaluate)")
    metrics.add_argument("--no-fid", action="store_true", help="skip FID and KID")
    metrics.add_argument("--no-perceptual", action="store_true", help="skip DISTS and LPIPS")
    metrics.add_argument("--inception-weights", metavar="FILE", help="TF-ported Inception default_1.pt for FID/KID")
    metrics.add_argument("--vgg16-weights", metavar="FILE", help="torchvision VGG16 weights for DISTS/LPIPS")
    metrics.add_argument("--workers", type=int, default=1, metavar="N", help="processes for the per-tile analyses (default: 1)")
    parser.add_argument("config_overrides", nargs="*", metavar="[METHOD:]KEY=VALUE",
                        help="config overrides: KEY=VALUE for every method (e.g. data.crop=256), "
                             "METHOD:KEY=VALUE for one (e.g. pix2pix:model.n_downsampling=7)")


def run(args: argparse.Namespace) -> int:
    from tdkstain.workflows.table1 import run_benchmark
    from tdkstain.evaluation import EvaluationOptions

    from tdkstain.plumbing.limits import check_number

    if args.steps is not None:
        check_number("--steps", args.steps, 1, None, integer=True, hint="give at least 1 training step per method")
    check_number("--workers", args.workers, 1, 256, integer=True, hint="processes for the per-tile analyses")
    options = EvaluationOptions(
        fid=not args.no_fid,
        perceptual=not args.no_perceptual,
        inception_weights=args.inception_weights,
        vgg16_weights=args.vgg16_weights,
        workers=args.workers,
        progress=not args.no_progress,
    )
    result = run_benchmark(args.data, args.methods, args.out, steps=args.steps, overrides=list(args.config_overrides),
                           evaluation=options, device=args.device, progress=not args.no_progress)
    print(result["files"]["table_md"].read_text(), end="")
    return 0
