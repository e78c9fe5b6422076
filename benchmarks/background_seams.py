"""Background of a stained slide: white skipped tiles (before) against the glass fill blended in (after).

``tdkstain slide`` stains only tiles that touch tissue. Before issue 20 every
skipped tile was written pure white (255, 255, 255) while the generator stains
glass off-white, so a white frame outlined the tissue, its edge hard (a
stained tile whose neighbour is skipped covers the overlap up to its blending
margin). Now the skipped tiles are filled with the generator's own rendering
of the slide's glass and blended into the stained tiles with the engine's
weights (``tdkstain.slides.pipeline``).

On the demo slide (``tdkstain/examples/he_cmu_small_region.svs``, a real
Aperio SVS, 0.499 um/px) this script stains the slide at 0.5 um/px twice with
the same generator, settings and code:

- ``before``: the fill switched off (``pipeline._background_fill`` returns
  None), which is the previous assembly exactly: white wherever no stained
  tile has weight;
- ``after``: the pipeline as it is.

and measures both with :func:`tdkstain.inference.border_steps` (band 4 px):
the seam score of borders between two stained tiles (``stained``, the
measure of :func:`tdkstain.inference.seam_score`), the largest mean step
across the overlap of borders between a stained and a skipped tile
(``background``), both relative to the step inside stained tiles; ~1 means
the border does not show.

Generators (no trained weights ship with the repository):

- ``off-white``: an untrained ``ResnetGenerator`` with the demo preset's
  widths (ngf 16, 3 blocks, seed 0) whose output convolution is refitted by
  ridge regression, on a 512 px region of the slide, to a haematoxylin-only
  IHC rendering (HER2 score 0: ``hed2rgb`` of the H&E's haematoxylin, on glass
  tinted (230, 225, 233), the colour the release's trained model gives glass).
  So it stains glass off-white and tissue blue as a trained model would, and
  the white frame is as visible as on a real stained slide;
- ``untrained``: the same network before the refit (glass renders grey; the
  white frame is extreme).

Each at tile 512 (``tdkstain slide``'s default) and 256 (more
stained/skipped borders), overlap 64, global statistics. Writes
``background_seams.json`` into ``--out`` and the figure ``--figure`` (before
| after: the whole slide, and a crop of the tissue edge at the stained/skipped
border with the most stain beside it; ``off-white`` generator, first tile
size). About 4 min on 2 shared cores::

    .venv/bin/python benchmarks/background_seams.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _limits import machine  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SLIDE = REPO / "src" / "tdkstain" / "examples" / "he_cmu_small_region.svs"
GLASS_IHC = (230.0, 225.0, 233.0)  # what the release's model stains glass as (issue 20)
CALIBRATION_BOX = (600, 1200, 512)  # x, y, side of the slide region (level 0) the output layer is fitted on: tissue and glass


def untrained_generator(seed: int = 0):
    import torch

    from tdkstain.models.tdkstain import ResnetGenerator

    torch.manual_seed(seed)
    return ResnetGenerator(ngf=16, n_downsampling=3, n_blocks=3).eval()


def off_white_generator(he: np.ndarray, seed: int = 0, ridge: float = 1e-2, samples: int = 40_000):
    """The untrained generator with its last 7x7 convolution refitted to a haematoxylin-only IHC of ``he``.

    ``he``: ``(S, S, 3)`` uint8 H&E. Target: ``hed2rgb`` of the H&E's
    haematoxylin alone (``skimage.color``), times the glass tint
    :data:`GLASS_IHC` / 255; the convolution (every 7x7 tap of the last
    feature map, plus a bias) is fitted to ``atanh`` of it by ridge regression
    on ``samples`` random pixels.
    """
    import torch
    import torch.nn.functional as F
    from skimage.color import hed2rgb, rgb2hed

    generator = untrained_generator(seed)
    *_, pad, conv, _tanh = generator.model  # reflect-pad 3, conv 7x7 -> 3, tanh
    x = torch.from_numpy(he).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    with torch.no_grad():
        features = generator.model[:-3](x)  # (1, C, S, S)
        columns = F.unfold(pad(features), conv.kernel_size)[0].T.double().numpy()  # (S*S, C*49)
    haematoxylin = rgb2hed(he)[..., 0]
    target = hed2rgb(np.stack([haematoxylin, np.zeros_like(haematoxylin), np.zeros_like(haematoxylin)], -1))
    target = np.clip(target * np.asarray(GLASS_IHC) / 255.0, 0.0, 1.0) * 255.0
    z = np.arctanh(np.clip(target / 127.5 - 1.0, -0.97, 0.97)).reshape(-1, 3)
    pick = np.random.default_rng(seed).choice(columns.shape[0], min(samples, columns.shape[0]), replace=False)
    design = np.concatenate([columns[pick], np.ones((len(pick), 1))], axis=1)
    solution = np.linalg.solve(design.T @ design + ridge * np.eye(design.shape[1]), design.T @ z[pick])
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(solution[:-1].T.reshape(conv.weight.shape)).float())
        conv.bias.copy_(torch.from_numpy(solution[-1]).float())
    return generator


def stain(generator, out: Path, fill: bool, tile: int, overlap: int, batch: int):
    """``stain_slide`` on the demo slide at 0.5 um/px; ``fill`` False: the white background of before."""
    import tifffile

    from tdkstain.inference import Stainer
    from tdkstain.slides import SlideOptions, pipeline, stain_slide

    original = pipeline._background_fill
    if not fill:
        pipeline._background_fill = lambda *args, **kwargs: (None, 0)
    try:
        stainer = Stainer(generator, device="cpu", tile=tile, overlap=overlap, batch=batch)
        result = stain_slide(stainer, SLIDE, out, model_mpp=0.5, log=lambda m: print("   ", m) if fill else None,
                             options=SlideOptions(compression="deflate"), progress=False)
    finally:
        pipeline._background_fill = original
    return result, tifffile.imread(out, key=0)


def measure(image: np.ndarray, result) -> dict:
    from tdkstain.inference import border_steps

    steps = border_steps(image, result.grid, result.stained, band=4)
    return {
        "stained_seam_score": steps.stained,
        "background_step": steps.background,
        "stained_zone_step": steps.stained_zone,
        "background_midline_step": steps.background_midline,
        "inside_step_grey_levels": steps.inside,
        "stained_borders": steps.stained_borders,
        "background_borders": steps.background_borders,
        "offsets_px": list(steps.offsets),
        "background_profile_grey_levels": [round(v, 3) for v in steps.background_profile],
        "stained_profile_grey_levels": [round(v, 3) for v in steps.stained_profile],
    }


def edge_window(result, image: np.ndarray, side: int) -> tuple[int, int]:
    """``(y, x)``: the middle of the stained/skipped border piece with the most stain within ``side / 2`` px on its stained side."""
    grid, stained = result.grid, result.stained
    darkness = 255.0 - image.astype(np.float32).mean(axis=2)
    best, choice = -1.0, (image.shape[0] // 2, image.shape[1] // 2)
    for transposed, borders, cuts in ((False, grid.col_borders, grid.row_borders), (True, grid.row_borders, grid.col_borders)):
        mask, plane = (stained.T, darkness.T) if transposed else (stained, darkness)
        ends = [0, *[round(c) for c in cuts], plane.shape[0]]
        for c, border in enumerate(borders):
            middle = round(border)
            for r in range(len(ends) - 1):
                if mask[r, c] == mask[r, c + 1] or middle >= plane.shape[1]:
                    continue
                lo, hi = (max(0, middle - side // 2), middle) if mask[r, c] else (middle, middle + side // 2)
                strip = plane[ends[r] : ends[r + 1], lo:hi]  # the stained side
                if strip.size and float(strip.mean()) > best:
                    best, centre = float(strip.mean()), (ends[r] + ends[r + 1]) // 2
                    choice = (middle, centre) if transposed else (centre, middle)
    return choice


def crop(image: np.ndarray, cy: int, cx: int, side: int) -> np.ndarray:
    y0 = min(max(0, cy - side // 2), max(0, image.shape[0] - side))
    x0 = min(max(0, cx - side // 2), max(0, image.shape[1] - side))
    return image[y0 : y0 + side, x0 : x0 + side]


def figure(before: np.ndarray, after: np.ndarray, result, numbers: dict, path: Path, tile: int) -> None:
    """Before | after: the whole slide (top) and a crop of the tissue edge at a stained/skipped border (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    cy, cx = edge_window(result, after, tile)
    side = 3 * tile
    shrink = max(1, max(before.shape[:2]) // 900)
    panels = [
        [np.asarray(Image.fromarray(image).reduce(shrink)) for image in (before, after)],
        [crop(image, cy, cx, side) for image in (before, after)],
    ]
    b, a = numbers["before"], numbers["after"]
    fig, axes = plt.subplots(2, 2, figsize=(7.2, 9.4), dpi=100, gridspec_kw={"height_ratios": [before.shape[0] / before.shape[1], 1]})
    titles = [
        f"before: skipped tiles white\nstained/skipped step {b['background_step']:.2f}, stained seams {b['stained_seam_score']:.2f}",
        f"after: glass fill, blended\nstained/skipped step {a['background_step']:.2f}, stained seams {a['stained_seam_score']:.2f}",
    ]
    for row in range(2):
        for col in range(2):
            ax = axes[row][col]
            ax.imshow(panels[row][col])
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=9)
            else:
                ax.set_xlabel(f"{side} px at the tissue edge, {tile} px tiles", fontsize=8)
    fig.suptitle("tdkstain slide, demo SVS: step across borders / step inside tiles (band 4 px; ~1 = invisible)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "figure.png"
        fig.savefig(raw)
        plt.close(fig)
        # a 128-colour palette keeps the PNG small enough for the repository (< 300 kB)
        Image.open(raw).convert("RGB").quantize(128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cpu-20261207")
    parser.add_argument("--figure", type=Path, default=REPO / "docs" / "images" / "slide_background_seams.png")
    parser.add_argument("--tiles", default="512,256", help="tile sides to run, comma-separated; the figure shows the first "
                        "(default 512,256: tdkstain slide's default, and a finer grid with more stained/skipped borders)")
    parser.add_argument("--overlap", type=int, default=64, help="tile overlap (default 64, tdkstain slide's)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="also a trained generator: a run folder or weights file (e.g. the demo's demo_out/run); "
                        "measured as 'trained' after the two made here")
    args = parser.parse_args(argv)

    import torch

    from tdkstain.slides import Slide

    torch.set_num_threads(args.threads)
    header = machine()
    started = time.perf_counter()
    x, y, side = CALIBRATION_BOX
    with Slide(SLIDE) as slide:
        calibration = slide.read(0, x, y, side, side)
    generators = {"off-white": off_white_generator(calibration), "untrained": untrained_generator()}
    if args.checkpoint is not None:
        from tdkstain.weights import load_generator

        generators["trained"] = load_generator(args.checkpoint).eval()
    tiles = [int(t) for t in args.tiles.split(",")]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tile in tiles:
            for name, generator in generators.items():
                numbers: dict[str, dict] = {}
                images = {}
                for label, fill in (("before", False), ("after", True)):
                    print(f"tile {tile}, {name}, {label}:")
                    t0 = time.perf_counter()
                    result, image = stain(generator, Path(tmp) / f"{tile}-{name}-{label}.tif", fill, tile, args.overlap, args.batch)
                    numbers[label] = {**measure(image, result), "seconds": round(time.perf_counter() - t0, 1)}
                    images[label] = image
                    print(f"    stained seams {numbers[label]['stained_seam_score']:.3f}, stained/skipped step "
                          f"{numbers[label]['background_step']:.3f} (midline {numbers[label]['background_midline_step']:.3f})")
                numbers["fill_rgb"] = None if result.background_rgb is None else [round(v, 2) for v in result.background_rgb]
                numbers["tiles"] = {"total": result.tiles_total, "stained": result.tiles_tissue, "skipped": result.tiles_background}
                results[f"tile {tile}, {name}"] = numbers
                if name == "off-white" and tile == tiles[0]:
                    figure(images["before"], images["after"], result, numbers, args.figure, tile)
    report = {
        "machine": header,
        "seconds": round(time.perf_counter() - started, 1),
        "slide": str(SLIDE.relative_to(REPO)),
        "settings": {"mpp": 0.5, "tiles": tiles, "overlap": args.overlap, "batch": args.batch, "norm": "global", "band_px": 4,
                     "calibration_box_level0": {"x": x, "y": y, "side": side}},
        "measures": {
            "stained_seam_score": "mean step at the middle of stained/stained overlaps / inside step (seam_score)",
            "background_step": "largest mean step across the overlap of stained/skipped borders / inside step",
            "stained_zone_step": "the same largest-across-the-overlap step over stained/stained borders",
            "background_midline_step": "the step at the middle of stained/skipped overlaps / inside step",
        },
        "generators": {
            "off-white": "untrained ResnetGenerator (ngf 16, 3 blocks, seed 0), output conv refitted to a haematoxylin-only "
                         f"IHC of the calibration box on glass tinted {GLASS_IHC}",
            "untrained": "the same ResnetGenerator untrained",
            **({"trained": f"the generator of {args.checkpoint}"} if args.checkpoint is not None else {}),
        },
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "background_seams.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out / 'background_seams.json'} and {args.figure} in {report['seconds']:.0f} s")
    worse = [n for n, r in results.items() if not r["after"]["background_step"] <= r["after"]["stained_seam_score"]]
    if worse:
        print(f"stained/skipped step above the stained seam score for: {', '.join(worse)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
