"""``tdkstain synth``: write a synthetic paired H&E / HER2 IHC dataset whose truth is known."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "write synthetic paired H&E / HER2 IHC tiles with known nuclei, membranes and scores (release layout)"

DESCRIPTION = """\
Draw synthetic tissue (tumour nests with membranes, stroma with fibroblasts,
lymphocytes, lumina, background) and render each tile twice with the
Beer-Lambert law: as H&E, and as a consecutive HER2 IHC section (lighter
haematoxylin counterstain, DAB on tumour-cell membranes following ASCO/CAP
scores 0, 1+, 2+, 3+), moved by a small smooth warp. Scores are balanced over
pairs and splits. Truth (HER2 label, nuclei centroids with cell type in IHC
and H&E coordinates, true membrane mask) lies beside the images:

  OUT/{train,test}_HE/synth_00007_3+.png     H&E
  OUT/{train,test}_IHC/synth_00007_3+.png    IHC (the truth frame)
  OUT/{train,test}_truth/synth_00007_3+.json and synth_00007_3+_membrane.png
  OUT/synth.json                             every parameter, to reproduce

Failure cases (--failures) make stains that are not clean while the truth
stays known: tint-dab, tint-grey, weak-counterstain, strong-counterstain,
blur, jpeg, scale-20x, scale-40x; 'all' means none plus every failure,
assigned in turn, four pairs (one of each score) per failure.
The same arguments give byte-identical files.

Example:
  tdkstain synth data/synth --pairs 64 --size 256 --seed 0 --failures none,tint-dab
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="output folder (created; must be empty or a previous synth output)")
    parser.add_argument("--pairs", type=int, default=64, help="number of H&E/IHC pairs (default: 64)")
    parser.add_argument("--size", type=int, default=256, help="tile side in pixels, >= 32 (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed -> same files (default: 0)")
    parser.add_argument(
        "--misregister",
        type=float,
        default=3.0,
        metavar="PX",
        help="largest displacement of the IHC section against the H&E, in pixels; 0 aligns them (default: 3)",
    )
    parser.add_argument(
        "--her2-cue",
        type=float,
        default=1.0,
        metavar="S",
        help="strength of the H&E's cue of the HER2 score (tumour fraction, nuclear size and cytoplasm eosin rise "
        "with 1.5 + S x (score - 1.5)): 0 = none, the score cannot be read from the H&E (the honest control); "
        "1 = the default, weak and overlapping; 3 = the demo's, learnable by a small model (0 to 4; default: 1)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.25,
        metavar="F",
        help="fraction of pairs in the test split (default: 0.25)",
    )
    parser.add_argument(
        "--failures",
        default="none",
        metavar="LIST",
        help="comma-separated failure cases assigned in turn (none, tint-dab, tint-grey, weak-counterstain, "
        "strong-counterstain, blur, jpeg, scale-20x, scale-40x) or 'all' (default: none)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processes rendering pairs in parallel (default: 1)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty folder that is not a previous synth output (default: refuse)",
    )


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from tdkstain.synth import parse_failures, write_dataset

    failures = parse_failures(args.failures)
    with tqdm(total=args.pairs, desc="synth", unit="pair", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        summary = write_dataset(
            args.out,
            args.pairs,
            args.size,
            args.seed,
            misregister=args.misregister,
            cue=args.her2_cue,
            test_fraction=args.test_fraction,
            failures=failures,
            workers=args.workers,
            force=args.force,
            progress=bar.update,
        )
    per_label = ", ".join(
        f"{label}: {summary.scores['train'][label] + summary.scores['test'][label]}" for label in summary.scores["train"]
    )
    print(
        f"wrote {summary.pairs} pairs of {summary.size}x{summary.size} px in {summary.seconds:.1f} s "
        f"(train {summary.train}, test {summary.test}; HER2 {per_label}) to {summary.root}: "
        f"images in {{train,test}}_HE/ and {{train,test}}_IHC/, truth in {{train,test}}_truth/, "
        f"parameters in {summary.root / 'synth.json'}"
    )
    return 0
