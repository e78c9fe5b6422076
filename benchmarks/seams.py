"""Seams of tiled inference on real H&E: naive tiling vs consistent instance-norm statistics.

For each image (the tiatoolbox H&E target, 1000x1000, and a 1024x1024 region
of the CMU Aperio slide) and each generator, stains the image

- whole (one forward pass: the reference; instance norm sees the whole image),
- "naive": tiles without overlap, per-tile instance norm (what peers do),
- "tile+blend": overlapping tiles blended, per-tile instance norm,
- "global" (the default mode): overlapping tiles blended, the whole image's
  instance-norm statistics gathered layer by layer over all tiles' cores;
  "global, 16 tiles": the same from 16 tiles spread over the grid (the
  default ``stat_tiles``, what images with more tiles get),
- "kernel r1": statistics of one plain pass pooled over the 3x3 neighbourhood,

and prints the seam score (:func:`tdkstain.inference.seam_score`, bands 1, 4
and 16 px; ~1 = no visible border) at each mode's own tile borders, the whole
image's score at the default grid's borders (what "no seam" scores on this
image), and the mean absolute difference to whole-image inference (0..255).
Writes side-by-side pictures (H&E | naive | default | whole) and 256 px
zooms around a tile corner as PNG under --out (not in the repository).

    python benchmarks/seams.py --out /tmp/seams                       # the release-layout ngf 8 fixture
    python benchmarks/seams.py --out /tmp/seams --checkpoint runs/demo # a trained run folder too
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def real_images(size: int) -> dict[str, np.ndarray]:
    import tifffile

    from tdkstain.data.images import read_rgb

    images = {"tiatoolbox_target": read_rgb(SHARED / "data" / "he_tiatoolbox_target.png")}
    svs = SHARED / "data" / "he_cmu_small_region.svs"
    level0 = tifffile.imread(svs, key=0)  # Aperio level 0, JPEG tiles (imagecodecs)
    y, x = (level0.shape[0] - size) // 2, (level0.shape[1] - size) // 2
    images["cmu_svs_region"] = np.ascontiguousarray(level0[y : y + size, x : x + size, :3])
    return images


def side_by_side(panels: list[np.ndarray], gap: int = 8) -> np.ndarray:
    height = max(p.shape[0] for p in panels)
    parts = []
    for p in panels:
        parts += [np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0)), constant_values=255), np.full((height, gap, 3), 255, np.uint8)]
    return np.concatenate(parts[:-1], axis=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", type=Path, help="generator(s) to test (default: shared/fixtures/official/official_G_ngf8.pth)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the pictures")
    parser.add_argument("--tile", type=int, default=256, help="tile side (default 256: a 4x4 grid on these images)")
    parser.add_argument("--overlap", type=int, default=64, help="overlap of the blended modes (default 64)")
    parser.add_argument("--region", type=int, default=1024, help="side of the region read from the SVS slide (default 1024)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: PyTorch's choice)")
    args = parser.parse_args(argv)

    import torch

    from tdkstain.weights import load_generator
    from tdkstain.data.images import write_png
    from tdkstain.inference import DEFAULT_NORM, Stainer, seam_score

    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoints = args.checkpoint or [SHARED / "fixtures" / "official" / "official_G_ngf8.pth"]
    images = real_images(args.region)
    modes = {
        "naive": dict(overlap=0, norm="tile"),
        "tile+blend": dict(overlap=args.overlap, norm="tile"),
        "global": dict(overlap=args.overlap, norm="global", stat_tiles=10_000),
        "global, 16 tiles": dict(overlap=args.overlap, norm="global"),
        "kernel r1": dict(overlap=args.overlap, norm="kernel", kernel_radius=1),
    }
    default_name = DEFAULT_NORM
    print(f"tile {args.tile}, overlap {args.overlap} (naive: 0); seam score bands 1 / 4 / 16 px; MAE = mean |mode - whole image| (0..255)")
    for checkpoint in checkpoints:
        generator = load_generator(checkpoint)
        label = checkpoint.stem if checkpoint.is_file() else checkpoint.name
        print(f"\n== {checkpoint} (ngf {generator.init_kwargs['ngf']}, {generator.init_kwargs['n_blocks']} blocks)")
        for name, he in images.items():
            height, width = he.shape[:2]
            whole_stainer = Stainer(generator, device="cpu", tile=max(height, width) + 8)
            t0 = time.perf_counter()
            whole = whole_stainer.stain_image(he)
            print(f"-- {name} {height}x{width}: whole image in {time.perf_counter() - t0:.1f} s")
            outputs: dict[str, np.ndarray] = {}
            for mode, kwargs in modes.items():
                stainer = Stainer(generator, device="cpu", tile=args.tile, **kwargs)
                t0 = time.perf_counter()
                out = stainer.stain_image(he)
                elapsed = time.perf_counter() - t0
                grid = stainer.grid(height, width)
                scores = [seam_score(out, 0, grid=grid, band=b) for b in (1, 4, 16)]
                mae = float(np.abs(out.astype(np.float64) - whole).mean())
                outputs[mode] = out
                print(f"   {mode:17s} seam {scores[0]:5.2f} / {scores[1]:5.2f} / {scores[2]:5.2f}   MAE {mae:5.2f}   {elapsed:5.1f} s")
                if mode == "global":
                    reference = [seam_score(whole, 0, grid=grid, band=b) for b in (1, 4, 16)]
            print(f"   {'whole, same grid':17s} seam {reference[0]:5.2f} / {reference[1]:5.2f} / {reference[2]:5.2f}   (no tiles: what 'no seam' scores here)")

            panels = [he, outputs["naive"], outputs[default_name], whole]
            half = [p[::2, ::2] for p in panels]
            write_png(args.out / f"{label}_{name}_he_naive_{default_name}_whole.png", side_by_side(half))
            # 256 px around the first interior tile corner of the naive grid, full resolution
            cy, cx = args.tile, args.tile
            zoom = [p[cy - 128 : cy + 128, cx - 128 : cx + 128] for p in panels]
            write_png(args.out / f"{label}_{name}_zoom_corner.png", side_by_side(zoom))
    print(f"\npictures in {args.out} (panels: H&E | naive | {default_name} | whole image)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
