"""``tdkstain translate``: H&E image files of any size -> virtual IHC PNGs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

HELP = "stain H&E images of any size with a trained generator (tiled, blended, without seams)"

DESCRIPTION = """\
Stain H&E image files (PNG, JPEG, TIFF, BMP) with a generator and write
OUT/STEM.png for each. Images that fit in one tile go through the generator
whole; larger ones are cut into overlapping tiles, normalised with
instance-norm statistics that are consistent across tiles (--norm global,
the default; 'tile' is the naive per-tile normalisation that shows seams)
and blended. CHECKPOINT is a run folder of 'tdkstain train' (any method:
TDKstain or a baseline), a tdkstain .safetensors weights file, or the
authors' latest_net_G.pth. Generators without instance norm (pix2pix's
U-Net, PyramidPix2pix's batch-norm ResNet) have nothing for --norm to make
consistent: their tiles are stained once and blended, whatever --norm says.
--tile and --overlap are rounded to what the generator takes (multiples of
256 for unet_256). Existing outputs are skipped (rerun to continue an
interrupted job) unless --force.

Example:
  tdkstain translate --checkpoint runs/her2 slides/crops/ extra.png --out stained/ \\
      --tile 512 --overlap 64 --precision bf16
"""

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="H&E image files or folders of them")
    parser.add_argument("--checkpoint", type=Path, required=True, help="run folder, .safetensors weights, or the authors' latest_net_G.pth")
    parser.add_argument("--out", type=Path, required=True, help="output folder; each input becomes OUT/STEM.png")
    parser.add_argument("--recursive", action="store_true", help="also take images in subfolders of INPUT folders, mirrored under OUT (default: the folder itself only)")
    parser.add_argument("--tile", type=int, default=512, help="tile side in pixels, a multiple of the generator's downsampling (8 for TDKstain; rounded up to fit); larger images are tiled (default: 512)")
    parser.add_argument("--overlap", type=int, default=64, help="overlap of neighbouring tiles in pixels, at most tile/2 (rounded to the generator's multiple) (default: 64)")
    parser.add_argument("--batch", type=int, default=4, help="tiles per forward pass (default: 4)")
    parser.add_argument(
        "--norm",
        choices=("global", "kernel", "tile"),
        default="global",
        help="instance-norm statistics of tiled images: global = the whole image's, gathered layer by layer "
        "(matches staining it in one piece), kernel = pooled over neighbouring tiles (--kernel-radius), "
        "tile = each tile its own (naive: level jumps between tiles); no effect on generators without instance norm "
        "(pix2pix, PyramidPix2pix) (default: global)",
    )
    parser.add_argument(
        "--stat-tiles",
        type=int,
        default=16,
        help="--norm global gathers its statistics over at most this many tiles, spread over the image; "
        "their activations are held in memory together (default: 16)",
    )
    parser.add_argument("--kernel-radius", type=int, default=1, help="neighbourhood half-width in tiles for --norm kernel (default: 1)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N (default: auto)")
    parser.add_argument(
        "--compile", choices=("auto", "on", "off"), default="auto",
        help="run the generator through torch.compile (inductor, frozen weights): on CPU 1.3x faster in fp32 and "
        "1.7x in bf16 (benchmarks/README.md) after a one-off compilation of 10-30 s per tile shape; "
        "auto = on for CPU jobs of at least 16 tile passes, where it pays back; off for CUDA, where it is "
        "not measured yet (default: auto)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="fp32, or autocast bf16 (CUDA and CPU) / fp16 (CUDA only) for speed (default: fp32)",
    )
    parser.add_argument("--workers", type=int, default=2, help="threads that decode and write images beside the model (default: 2)")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs (default: skip them)")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable inputs (corrupt, too large, permission denied, a broken link or a pipe) and list them at the end (default: stop at the first)")
    from tdkstain.cli import add_max_pixels_argument

    add_max_pixels_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


#: ``--compile auto`` compiles CPU jobs of at least this many tile passes: compiling costs about as much
#: as 2-3 passes of a 1024 tile, and saves ~25 % of each (benchmarks/README.md).
COMPILE_MIN_PASSES = 16


def collect_inputs(inputs: list[Path], recursive: bool) -> list[tuple[Path, Path]]:
    """``(input file, output path relative to OUT)`` for every image named or found in a folder.

    Raises TdkstainError for a missing input, an empty folder, a folder that
    cannot be listed, or two inputs that would write the same output. A named
    path that is no regular file (a broken link, a pipe) is kept: reading it
    reports what is wrong, and ``--skip-bad`` skips it like any unreadable image.
    """
    import os

    from tdkstain.plumbing.files import list_files, named_path_exists
    from tdkstain.plumbing.errors import TdkstainError

    found: list[tuple[Path, Path]] = []
    for item in inputs:
        if os.path.isdir(item):
            files = list_files(item, _IMAGE_SUFFIXES, recursive=recursive)
            if not files:
                hint = "" if recursive else " (pass --recursive to look into subfolders)"
                raise TdkstainError(f"{item}: no image files ({', '.join(_IMAGE_SUFFIXES)}) in this folder{hint}")
            found += [(p, p.relative_to(item).with_suffix(".png")) for p in files]
        elif named_path_exists(item):
            found.append((item, Path(item.stem + ".png")))
        else:
            raise TdkstainError(f"{item}: no such file or folder")
    owners: dict[Path, Path] = {}
    for source, rel in found:
        if rel in owners and owners[rel] != source:
            raise TdkstainError(f"{owners[rel]} and {source} would both be written to {rel}; rename one or stain them into different --out folders")
        owners[rel] = source
    return list(dict.fromkeys(found))


def _remove_stale_temporaries(todo: list[tuple[Path, Path]]) -> None:
    """A run killed mid-write left temporaries (.tmp-STEM-*.png) beside the outputs it is about to redo."""
    import glob

    for _, dst in todo:
        for stale in dst.parent.glob(f".tmp-{glob.escape(dst.stem)}-*.png"):
            stale.unlink(missing_ok=True)


def _announce(args: argparse.Namespace, stainer: Any, card: dict[str, Any], images: int, skipped_existing: int) -> None:
    """Say on stderr what is about to run, so a rounded --tile or --overlap is not a surprise."""
    kwargs = card.get("kwargs", {})
    if (stainer.tile, stainer.overlap) != (args.tile, args.overlap):
        print(f"{card.get('network')} takes sides that are multiples of {stainer.align}: tile {stainer.tile}, overlap {stainer.overlap}", file=sys.stderr)
    print(
        f"{args.checkpoint}: {card.get('network', 'ResnetGenerator')} ngf {kwargs.get('ngf', '?')}, {stainer.num_norm_layers} instance-norm layers; "
        f"{images} image(s) to stain on {stainer.device} ({stainer.precision}), tile {stainer.tile}, "
        f"overlap {stainer.overlap}, norm {stainer.norm}" + (f"; {skipped_existing} already done" if skipped_existing else ""),
        file=sys.stderr,
    )


def _count_tile_passes(stainer: Any, todo: list[tuple[Path, Path]]) -> int:
    """Tile passes of the whole job from the image headers, so the progress bar counts passes, not images."""
    from tdkstain.data.images import image_size
    from tdkstain.plumbing.errors import TdkstainError

    total = 0
    for src, _ in todo:
        try:
            total += stainer.passes_for(*image_size(src))
        except TdkstainError:
            total += 1  # reported when it is read
    return total


def _stain_images(args: argparse.Namespace, stainer: Any, todo: list[tuple[Path, Path]], bar: Any) -> tuple[int, list[str]]:
    """Stain each ``(input, output)`` in order; returns the count stained and a line per unreadable input skipped."""
    from concurrent.futures import ThreadPoolExecutor

    from tdkstain.cli import max_pixels
    from tdkstain.data.images import read_rgb_with_notes, write_png
    from tdkstain.plumbing.errors import TdkstainError

    limit = max_pixels(args)

    def read(src: Path) -> tuple[Any, list[str]]:
        return read_rgb_with_notes(src, max_pixels=limit)

    bad: list[str] = []
    done = 0
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        # decode ahead of the model, a bounded number of images at a time
        window = args.workers + 1
        pending = [pool.submit(read, src) for src, _ in todo[:window]]
        writes = []
        for i, (src, dst) in enumerate(todo):
            future = pending.pop(0)
            if i + window < len(todo):
                pending.append(pool.submit(read, todo[i + window][0]))
            try:
                he, notes = future.result()
            except TdkstainError as err:
                if not args.skip_bad:
                    raise TdkstainError(f"{err} (pass --skip-bad to skip unreadable inputs)") from err
                message = str(err)
                bad.append(message if message.startswith(str(src)) else f"{src}: {message}")
                bar.update(1)
                continue
            for note in notes:
                print(f"{src}: {note}", file=sys.stderr)
            bar.set_postfix_str(src.name, refresh=False)
            ihc = stainer.stain_image(he, progress=bar.update)
            writes.append(pool.submit(write_png, dst, ihc))
            done += 1
        for w in writes:
            w.result()
    return done, bad


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from tdkstain.cli._staining import stainer_from_args
    from tdkstain.plumbing.errors import TdkstainError

    if args.workers < 1:
        raise TdkstainError(f"--workers must be >= 1, got {args.workers}")
    jobs = collect_inputs(list(args.inputs), args.recursive)
    out_dir: Path = args.out
    todo = [(src, out_dir / rel) for src, rel in jobs if args.force or not (out_dir / rel).exists()]
    skipped_existing = len(jobs) - len(todo)
    _remove_stale_temporaries(todo)
    if not todo:
        print(f"nothing to do: all {len(jobs)} outputs exist in {out_dir} (pass --force to redo them)")
        return 0

    stainer, card = stainer_from_args(args, args.checkpoint)
    _announce(args, stainer, card, len(todo), skipped_existing)
    total = _count_tile_passes(stainer, todo)
    if args.compile == "auto" and stainer.device.type == "cpu" and total >= COMPILE_MIN_PASSES:
        stainer.compile = True
        print(f"compiling the generator ({total} tile passes on the CPU; --compile off to skip)", file=sys.stderr)
    bar = tqdm(total=total, unit="tile", disable=True if args.no_progress else None, file=sys.stderr)
    done, bad = _stain_images(args, stainer, todo, bar)
    bar.close()

    summary = f"stained {done} image(s) into {out_dir}"
    if skipped_existing:
        summary += f"; skipped {skipped_existing} existing (pass --force to redo)"
    if bad:
        from tdkstain.plumbing.atomic import display_name

        summary += f"; skipped {len(bad)} unreadable:\n  " + "\n  ".join(display_name(line) for line in bad)
    print(summary)
    return 0
