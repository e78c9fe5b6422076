"""``tdkstain benchmark``: train, translate and evaluate several methods on one split (Table 1), or the ablation
study on synthetic truth (``--study ablation``)."""

from __future__ import annotations

import argparse

HELP = ("reproduce Table 1: train each method on one split, translate the test set, evaluate all together; "
        "--study ablation: TDKstain's ablations over seeds against synthetic truth")

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

--study ablation: TDKstain, without the membrane branch, without the nuclei
branch and without both, each trained with several seeds on the same split
of synthetic data with known truth (drawn into OUT/data with --misregister 0
unless --data is given), from one base preset (--base-config, default
demo-cpu) with each variant's loss weights. Every generated test tile is
measured against the truth: DAB error inside the true membranes,
stained-membrane IoU, nuclei count error and F1, HER2 kappa (tdkstain score)
against the true score and the real IHC's, SSIM, PSNR. Reports the mean and
95 % CI over seeds per variant, paired differences to TDKstain with a paired
t-test over seeds (primary, Holm within each measure) and a Wilcoxon test over
tiles, a Fig. 3 style figure and OUT/index.html (docs/ablation.md). Rerun to
resume; other settings in the same --out are refused, except more seeds or
variants.

examples:
  tdkstain benchmark --data BCI --methods all --out bench/bci
  tdkstain benchmark --data synth --methods tdkstain,pix2pix,cyclegan --out bench/small --steps 200 \\
      --no-fid --no-perceptual data.crop=128 data.batch=2 pix2pix:model.n_downsampling=7
  tdkstain benchmark --study ablation --out bench/ablation                 # the whole study, data drawn here
  tdkstain benchmark --study ablation --out bench/abl2 --data synth0 --seeds 0,1,2,3,4 --steps 1000
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", choices=("table1", "ablation"), default="table1",
                        help="table1: the paper's Table 1 (default); ablation: TDKstain's ablations over seeds "
                             "against synthetic truth (see above)")
    parser.add_argument("--data", metavar="DIR",
                        help="dataset root with train and test splits (Table 1: required; ablation: a tdkstain synth "
                             "output drawn with --misregister 0 and extracted; default: draw one into OUT/data)")
    parser.add_argument("--methods", default=None, metavar="LIST",
                        help="Table 1: comma-separated methods (see above) or 'all' (default: all)")
    parser.add_argument("--out", required=True, metavar="DIR", help="benchmark folder (created; rerun to resume)")
    parser.add_argument("--steps", type=int, default=None, metavar="N",
                        help="training steps per method or run (train.max_steps; the lr schedule is the preset's). "
                             "Default: Table 1, each preset's full schedule; ablation, the study's budget (900)")
    study = parser.add_argument_group("ablation study (--study ablation)")
    study.add_argument("--seeds", default=None, metavar="LIST", help="training seeds per variant (default: 0,1,2)")
    study.add_argument("--variants", default=None, metavar="LIST",
                       help="comma-separated, tdkstain included: tdkstain, tdkstain-no-membrane, tdkstain-no-nuclei, "
                            "tdkstain-no-both (default: all four)")
    study.add_argument("--jobs", type=int, default=None, metavar="N",
                       help="runs trained at once, each in its own process on train.threads threads (demo-cpu: 1); "
                            "--jobs 2 on 2 cores about halves the study's time (default: 1)")
    study.add_argument("--base-config", default=None, metavar="PRESET",
                       help="preset every variant starts from before its loss weights are set (default: demo-cpu)")
    parser.add_argument("--device", default="auto", help="where the generators translate the test tiles: auto, cpu, cuda "
                                                         "(training uses train.device; default: auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    metrics = parser.add_argument_group("evaluation (as tdkstain evaluate)")
    metrics.add_argument("--no-fid", action="store_true", help="skip FID and KID")
    metrics.add_argument("--no-perceptual", action="store_true", help="skip DISTS and LPIPS")
    metrics.add_argument("--inception-weights", metavar="FILE", help="TF-ported Inception default_1.pt for FID/KID")
    metrics.add_argument("--vgg16-weights", metavar="FILE", help="torchvision VGG16 weights for DISTS/LPIPS")
    metrics.add_argument("--workers", type=int, default=1, metavar="N",
                         help="processes for the per-tile analyses (ablation: for extracting its own data) (default: 1)")
    parser.add_argument("config_overrides", nargs="*", metavar="[METHOD:]KEY=VALUE",
                        help="config overrides: KEY=VALUE for every method (e.g. data.crop=256), "
                             "METHOD:KEY=VALUE for one (e.g. pix2pix:model.n_downsampling=7)")


def run(args: argparse.Namespace) -> int:
    from tdkstain.plumbing.errors import TdkstainError
    from tdkstain.plumbing.limits import check_number

    if args.steps is not None:
        check_number("--steps", args.steps, 1, None, integer=True, hint="give at least 1 training step per method")
    check_number("--workers", args.workers, 1, 256, integer=True, hint="processes for the per-tile analyses")
    if args.study == "ablation":
        return run_ablation_study(args)
    given = [flag for flag, value in (("--seeds", args.seeds), ("--variants", args.variants),
                                      ("--base-config", args.base_config), ("--jobs", args.jobs)) if value is not None]
    if given:
        raise TdkstainError(f"{', '.join(given)}: options of the ablation study; add --study ablation")
    if args.data is None:
        raise TdkstainError("--data DIR is required for the Table 1 benchmark (the dataset root with train and test splits)")
    from tdkstain.workflows.table1 import run_benchmark
    from tdkstain.evaluation import EvaluationOptions

    options = EvaluationOptions(
        fid=not args.no_fid,
        perceptual=not args.no_perceptual,
        inception_weights=args.inception_weights,
        vgg16_weights=args.vgg16_weights,
        workers=args.workers,
        progress=not args.no_progress,
    )
    result = run_benchmark(args.data, args.methods or "all", args.out, steps=args.steps,
                           overrides=list(args.config_overrides), evaluation=options, device=args.device,
                           progress=not args.no_progress)
    print(result["files"]["table_md"].read_text(), end="")
    return 0


def run_ablation_study(args: argparse.Namespace) -> int:
    """``--study ablation``: :func:`tdkstain.workflows.ablation.run_ablation` with the command line's settings."""
    from tdkstain.plumbing.errors import TdkstainError
    from tdkstain.workflows import ablation

    table1_only = [flag for flag, value in (("--methods", args.methods is not None), ("--no-fid", args.no_fid),
                                            ("--no-perceptual", args.no_perceptual),
                                            ("--inception-weights", args.inception_weights),
                                            ("--vgg16-weights", args.vgg16_weights)) if value]
    if table1_only:
        raise TdkstainError(f"{', '.join(table1_only)}: Table 1 options; the ablation study trains TDKstain's variants "
                            "(--variants) and computes no FID or perceptual metric")
    settings = ablation.StudySettings(
        out=args.out, data=args.data,
        seeds=ablation.parse_seeds(args.seeds) if args.seeds is not None else ablation.DEFAULT_SEEDS,
        variants=ablation.parse_variants(args.variants) if args.variants is not None else ablation.VARIANTS,
        steps=args.steps if args.steps is not None else ablation.DEFAULT_STEPS,
        base=args.base_config or ablation.BASE_PRESET, overrides=tuple(args.config_overrides), device=args.device,
        workers=args.workers, jobs=args.jobs if args.jobs is not None else ablation.DEFAULT_JOBS, progress=not args.no_progress, pairs=ablation.DATA_PAIRS, size=ablation.DATA_SIZE,
        her2_cue=ablation.DATA_HER2_CUE, test_fraction=ablation.DATA_TEST_FRACTION,
    )
    result = ablation.run_ablation(settings)
    print(result["files"]["table_md"].read_text(), end="")
    print(f"report: {result['files']['report']}")
    return 0
