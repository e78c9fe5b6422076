"""``tdkstain import-checkpoint``: the authors' latest_net_G.pth -> our safetensors with a model card."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "convert the authors' generator checkpoint (latest_net_G.pth) to tdkstain safetensors weights"

DESCRIPTION = """\
Convert a generator checkpoint saved by the authors' TDKstain release
(checkpoints/NAME/latest_net_G.pth, a plain PyTorch state_dict) into a
tdkstain weights file: safetensors plus a model card (architecture, value
range [-1, 1], tile size, microns per pixel, provenance). The .pth is read
with torch.load(weights_only=True), so a file that would run code is refused.
The architecture (ngf, downsamplings, residual blocks) is read from the keys.

Example:
  tdkstain import-checkpoint checkpoints/her2/latest_net_G.pth \\
      --out weights/generator.safetensors --mpp 0.5 --tile-size 1024
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="the release's generator checkpoint, e.g. latest_net_G.pth")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output .safetensors file (default: the checkpoint's name with suffix .safetensors, beside it)",
    )
    parser.add_argument(
        "--mpp",
        type=float,
        default=None,
        help="microns per pixel of the images the model was trained on, stored in the model card "
        "(default: unknown; RegH2I and BCI tiles are 20x, about 0.5)",
    )
    parser.add_argument(
        "--tile-size",
        type=int,
        default=1024,
        help="training tile side in pixels, stored in the model card (default: 1024, the release's tiles)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists (default: refuse)")


def run(args: argparse.Namespace) -> int:
    from tdkstain.weights import sha256_of as file_sha256, load_official_generator, load_weights, save_network
    from tdkstain.plumbing.errors import TdkstainError
    from tdkstain.models.layers import count_parameters

    checkpoint: Path = args.checkpoint
    out: Path = args.out if args.out is not None else checkpoint.with_suffix(".safetensors")
    if out.suffix != ".safetensors":
        raise TdkstainError(f"{out}: the output name must end in .safetensors")
    if out.resolve() == checkpoint.resolve():
        raise TdkstainError(f"{out}: the output would overwrite the input checkpoint; choose another --out")
    if out.exists() and not args.force:
        raise TdkstainError(f"{out}: exists already; pass --force to overwrite it")
    if args.mpp is not None and not args.mpp > 0:
        raise TdkstainError(f"--mpp must be positive, got {args.mpp}")
    if args.tile_size is not None and args.tile_size < 1:
        raise TdkstainError(f"--tile-size must be positive, got {args.tile_size}")

    generator = load_official_generator(checkpoint)
    source = {
        "file": checkpoint.name,
        "sha256": file_sha256(checkpoint),
        "kind": "authors' release checkpoint (.pth), imported by tdkstain import-checkpoint",
    }
    save_network(out, generator, tile_size=args.tile_size, mpp=args.mpp, source=source)
    load_weights(out)  # read back once: a file we cannot load must not be reported as written
    kwargs = ", ".join(f"{k}={v}" for k, v in generator.init_kwargs.items())
    print(
        f"wrote {out}: ResnetGenerator({kwargs}), {count_parameters(generator) / 1e6:.1f} M parameters, "
        f"tile size {args.tile_size}, mpp {args.mpp if args.mpp is not None else 'unknown'}",
        file=sys.stdout,
    )
    return 0
