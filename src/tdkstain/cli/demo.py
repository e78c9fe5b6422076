"""``tdkstain demo``: the main job end to end on data made on the spot (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "run the whole workflow on synthetic paired tissue and real examples; write one HTML report"

DESCRIPTION = """\
Runs the main job of tdkstain on a small paired dataset drawn on the spot
(no download), with the same commands you would use on real data, and writes
OUT/report/index.html:

  1. tdkstain synth      paired H&E / HER2 IHC tiles with known truth
  2. tdkstain check      validate the pairs
  3. tdkstain extract    DAB, membrane masks, nuclei and density maps, scored
                         against the synthetic truth
  4. tdkstain train      TDKstain, demo-cpu preset (a few minutes on 2 cores)
  5. tdkstain translate  stain the held-out test tiles
  6. baselines           the untrained generator and a mean-colour guess
  7. tdkstain translate  stain a real H&E image (shipped example)
  8. tdkstain slide      stain a real SVS slide (shipped example) into a
                         pyramidal TIFF
  9. tdkstain evaluate   SSIM, PSNR, FID/KID, nuclei and membrane analyses
 10. report              one HTML page: PASS/FAIL against both baselines

Every step is resumable: run it again with the same --out and finished steps
are skipped.

example:
  tdkstain demo --out demo_out
  tdkstain demo --out /tmp/quick --quick     # about a minute: tiny data, 20 steps
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for everything (default: demo_out)")
    parser.add_argument("--pairs", type=int, default=48, help="synthetic pairs, 3/4 train, 1/4 test (default: 48)")
    parser.add_argument("--size", type=int, default=512,
                        help="tile side in pixels (default: 512, enough tumour cells per tile to score HER2)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps (default: the demo-cpu preset's schedule, 50 epochs: about 900 steps on "
                        "36 training pairs; a smaller number shrinks the schedule, decay included)")
    parser.add_argument("--workers", type=int, default=2, help="extraction worker processes (default: 2)")
    parser.add_argument("--no-fid", action="store_true",
                        help="skip FID/KID in the evaluation (default: computed when the Inception network is "
                        "installed, about a second per tile on CPU)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke-test scale: 12 pairs of 128 px, 20 steps, the slide at 2 um/px, no FID "
                        "(overrides --pairs/--size/--steps)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from tdkstain.workflows.demo import DemoSettings, run_demo

    return run_demo(DemoSettings(out=args.out, pairs=args.pairs, size=args.size, steps=args.steps, workers=args.workers,
                                 no_fid=args.no_fid, quick=args.quick, progress=not args.no_progress))
