"""What ``tdkstain translate`` and ``tdkstain slide`` share: the engine options into a Stainer."""

from __future__ import annotations

import argparse
from typing import Any


def stainer_from_args(args: argparse.Namespace, checkpoint: Any, **extra: Any) -> tuple[Any, dict[str, Any]]:
    """``Stainer.from_checkpoint`` with the engine options both commands take; ``extra``: the command's own.

    ``--compile on`` compiles from the start; ``auto`` is decided by the caller once the job's size is known.
    Tiles and overlap are rounded to what the generator takes (pix2pix's U-Net needs multiples of 256).
    """
    from tdkstain.inference import Stainer

    return Stainer.from_checkpoint(
        checkpoint,
        device=args.device,
        precision=args.precision,
        tile=args.tile,
        overlap=args.overlap,
        batch=args.batch,
        norm=args.norm,
        kernel_radius=args.kernel_radius,
        stat_tiles=args.stat_tiles,
        compile=args.compile == "on",
        fit_tiles=True,
        **extra,
    )
