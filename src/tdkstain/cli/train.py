"""``tdkstain train``: train TDKstain on paired tiles with knowledge maps; rerun to resume."""

from __future__ import annotations

import argparse

HELP = "train a virtual-staining generator (resumes when the run folder has a checkpoint)"

DESCRIPTION = """\
Train TDKstain (generator, multi-scale discriminator, nuclei density
estimator; docs/method.md) on paired H&E / IHC tiles whose knowledge maps
were made by `tdkstain extract DATA`.

The configuration is a preset name (tdkstain-paper, demo-cpu) or a YAML
file, plus dotted overrides KEY=VALUE (values read as YAML), e.g.:

  tdkstain train --config demo-cpu --data synth_data --out runs/demo
  tdkstain train --config tdkstain-paper --data BCI --out runs/bci \\
      train.precision=bf16 train.channels_last=true loss.membrane=0

Fine-tune the authors' model on your data: --init-from checkpoints/NAME
(their latest_net_G.pth, latest_net_D.pth, latest_net_E.pth start G, D, E).

The run folder gets config.yaml, checkpoints/step_*.pt (full state, last K
kept), weights/generator.safetensors (+ generator_best.safetensors by
validation), metrics.jsonl and tensorboard/. Rerunning the same command on
the same folder resumes exactly where it stopped. Several GPUs:
  torchrun --nproc_per_node 4 -m tdkstain train ...
(data.batch is per process).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="tdkstain-paper",
                        help="preset name (tdkstain-paper, demo-cpu) or path to a YAML config (default: tdkstain-paper)")
    parser.add_argument("--data", default=None,
                        help="dataset root (any layout `tdkstain check` accepts, with `tdkstain extract` outputs); "
                             "default: data.root of the config")
    parser.add_argument("--out", required=True, help="run folder; an existing one with checkpoints is resumed")
    parser.add_argument("--init-from", default=None, metavar="PATH",
                        help="fine-tune the authors' model: their checkpoint folder with latest_net_G.pth, latest_net_D.pth "
                             "and latest_net_E.pth (or one of those files) initialises G, D and E of a new run "
                             "(train.init_from; the config's sizes must match the files')")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")
    parser.add_argument("--show-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--reference-scores", "--baselines", dest="reference_scores", action="store_true",
                        help="at the end, print held-out L1 / PSNR / SSIM of the trained generator next to the "
                             "untrained one and a mean-IHC-colour image (--baselines: the older name)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides such as loss.membrane=5 train.max_steps=1000 (see --show-config)")


def run(args: argparse.Namespace) -> int:
    import sys

    from tdkstain.training.config import load_config

    # Paths from flags are set verbatim, never read as YAML ('ds #1', '2024-01-01', 'on' stay strings).
    values = {key: value for key, value in (("data.root", args.data), ("train.init_from", args.init_from)) if value is not None}
    cfg = load_config(args.config, list(args.overrides), values=values)
    if args.show_config:
        print(cfg.to_yaml(), end="")
        return 0

    from tdkstain.training import train

    result = train(cfg, args.out, progress=not args.no_progress and sys.stderr.isatty())
    if result.step == 0 or not (result.run_dir / "weights").is_dir():
        return 0
    if result.last_val is not None:
        scores = ", ".join(f"{k} {v:.4g}" for k, v in result.last_val.items())
        print(f"step {result.step}: validation {scores}", file=sys.stderr)
    if args.reference_scores and result.step > 0:
        from tdkstain.plumbing.distributed import current
        from tdkstain.training import format_scores, reference_scores

        if current().is_main:
            print(format_scores(reference_scores(result.run_dir)), file=sys.stderr)
    print(result.run_dir / "weights" / "generator.safetensors")
    return 0
