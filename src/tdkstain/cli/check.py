"""``tdkstain check DATA_DIR``: find every problem of a paired dataset in one run."""

from __future__ import annotations

import argparse

HELP = "check a paired H&E/IHC dataset: layout, partners, sizes, labels, and that every image decodes"

DESCRIPTION = """\
Check a paired H&E/IHC dataset before extracting knowledge or training.

Finds the layout (release: {split}_HE/ + {split}_IHC/; BCI: HE/{split}/ +
IHC/{split}/; MIST: {split}A/ + {split}B/; or a CSV manifest with columns
he,ihc[,label][,split]), pairs files by stem, decodes every image completely,
and reports ALL problems in one run, each with its file:

  missing_ihc / missing_he   an image without its partner
  size_mismatch              partners of different pixel sizes
  unreadable                 cannot be read (permission denied, a broken link, a
                             pipe), empty, truncated, corrupt, or not an image;
                             or a folder that cannot be listed
  duplicate_stem             two files that would be the same pair (a.png, a.jpg)
  odd_label / missing_label  a BCI-style name without a valid HER2 score
  bad_label / manifest / missing_file   problems in a CSV manifest

It also prints pairs and HER2 labels per split, the image sizes seen, and
notes on conversions that lose information (e.g. 16-bit images read as 8-bit).
A file that cannot be read is listed with the others; the check goes on.

Exit status: 0 when no problem was found, 1 when some were, 2 when the
dataset could not be read at all (no layout, unreadable manifest).

examples:
  tdkstain check BCI_dataset
  tdkstain check data --split train --quiet
  tdkstain check data --manifest data/pairs.csv
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_dir", metavar="DATA_DIR",
                        help="dataset root in any supported layout, or a CSV manifest")
    parser.add_argument("--manifest", metavar="CSV",
                        help="CSV with columns he,ihc[,label][,split], paths relative to the CSV's folder, "
                             "instead of a folder layout (looked up from the working folder, then in DATA_DIR; "
                             "default: none)")
    parser.add_argument("--split", metavar="S",
                        help="check only this split, e.g. train (default: every split found)")
    parser.add_argument("--quiet", action="store_true",
                        help="print only the problems, no summary or progress bar")
    parser.add_argument("--allow-outside", action="store_true",
                        help="accept manifest paths that are absolute or leave the CSV's folder (default: refuse)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="threads decoding images (default: min(8, CPU count))")
    from tdkstain.cli import add_max_pixels_argument

    add_max_pixels_argument(parser)


def run(args: argparse.Namespace) -> int:
    import sys

    from tdkstain.cli import max_pixels
    from tdkstain.data.pairs import check_dataset

    report = check_dataset(
        args.data_dir,
        manifest=args.manifest,
        split=args.split,
        allow_outside=args.allow_outside,
        max_pixels=max_pixels(args),
        workers=args.workers,
        progress=not args.quiet,
    )
    if not args.quiet:
        print(report.summary())
    if report.problems:
        if not args.quiet:
            print(f"problems ({len(report.problems)}):")
        for line in report.problem_lines():
            print(f"  {line}" if not args.quiet else line)
        sys.stdout.flush()
        return 1
    return 0
