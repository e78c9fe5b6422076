"""Peak memory and throughput of ``tdkstain slide`` on synthetic slides of growing size.

For each size, a synthetic H&E-like pyramidal TIFF (glass with an elliptic
tissue region over about half the area, 0.5 um/px) is written tile by tile
(never whole in memory), then stained in a fresh process whose peak resident
memory (``ru_maxrss``) and memory after imports and model construction are
reported, with the time of each phase and megapixels per second. Memory that
grows with the slide's *area* would show as a peak that quadruples when the
side doubles; the pipeline's only size-dependent buffers grow with its *width*
(one band of TIFF tiles per pyramid level).

    python benchmarks/slide_memory.py                      # 4096 and 8192 px, tiny generator, CPU
    python benchmarks/slide_memory.py --sizes 8192 --ngf 64 --blocks 9 --device cuda --precision bf16 --batch 16
    python benchmarks/slide_memory.py --sizes 4096 --ngf 64 --blocks 9 --tile 1024 --batch 1 --compile   # the paper G on CPU

Prints one JSON line per run and a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MPP = 0.5


def synthetic_tile(y0: int, x0: int, tile: int, height: int, width: int, downsample: int) -> np.ndarray:
    """One tile of the synthetic slide at a level (procedural, so the slide is never held whole)."""
    yy, xx = np.mgrid[y0 : y0 + tile, x0 : x0 + tile].astype(np.float64) * downsample
    inside = ((yy - height * 0.5) / (height * 0.42)) ** 2 + ((xx - width * 0.45) / (width * 0.4)) ** 2 < 1
    # deterministic texture: sums of sines at nucleus (~8 um) and gland (~80 um) scales
    nuclei = 0.5 + 0.25 * (np.sin(yy * 0.39) * np.sin(xx * 0.41) + np.sin((yy + xx) * 0.05))
    pink = np.array([228, 150, 195.0])
    purple = np.array([100, 55, 150.0])
    tissue = pink * (1 - nuclei[..., None]) + purple * nuclei[..., None]
    image = np.where(inside[..., None], tissue, 243.0)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_slide(path: Path, size: int, tile: int = 512) -> None:
    import tifffile

    with tifffile.TiffWriter(path, bigtiff=True) as tiff:
        for level, downsample in enumerate((1, 4)):
            side = size // downsample

            def tiles() -> object:
                for y in range(0, side, tile):
                    for x in range(0, side, tile):
                        yield synthetic_tile(y, x, tile, size, size, downsample)

            tiff.write(tiles(), shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                       compression="zlib", resolution=(1e4 / (MPP * downsample),) * 2, resolutionunit="CENTIMETER",
                       subfiletype=1 if level else 0, metadata=None)


CHILD = r"""
import json, resource, sys, time, torch
from pathlib import Path
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
from tdkstain.inference import Stainer
from tdkstain.models.tdkstain import ResnetGenerator
from tdkstain.slides import SlideOptions, stain_slide

def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")

torch.manual_seed(0)
generator = ResnetGenerator(ngf=args["ngf"], n_blocks=args["blocks"]).eval()
stainer = Stainer(generator, device=args["device"], precision=args["precision"], tile=args["tile"],
                  overlap=args["overlap"], batch=args["batch"], norm=args["norm"], compile=args["compile"])
baseline = rss_mib()
t0 = time.perf_counter()
result = stain_slide(stainer, args["slide"], args["out"], model_mpp=0.5, log=lambda m: None, progress=False,
                     options=SlideOptions(compression="jpeg"))
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
# The model alone on in-memory tiles, as many as the staining pass stained: how close the pipeline
# (reading, resampling, PNG encoding on threads) comes to pure model throughput.
import numpy as np
tiles = [np.random.default_rng(i).integers(0, 256, (args["tile"], args["tile"], 3), dtype=np.uint8) for i in range(args["batch"])]
stats = stainer.tile_stats(tiles) if args["norm"] != "tile" else None
if torch.cuda.is_available():
    torch.cuda.synchronize()
t1 = time.perf_counter()
for _ in range(0, result.tiles_tissue, args["batch"]):
    stainer.stain_tiles(tiles, stats)
model_only = time.perf_counter() - t1
print(json.dumps({
    "size": args["size"], "ngf": args["ngf"], "blocks": args["blocks"], "device": str(stainer.device),
    "precision": args["precision"], "compile": args["compile"], "tile": args["tile"], "batch": args["batch"], "norm": args["norm"],
    "tiles_total": result.tiles_total, "tiles_tissue": result.tiles_tissue, "forward_passes": result.forward_passes,
    "seconds": round(seconds, 2), "timings": {k: round(v, 2) for k, v in result.timings.items()},
    "megapixels_per_second": round(result.width * result.height / 1e6 / seconds, 3),
    "tissue_megapixels_per_second": round(result.tiles_tissue * args["tile"] ** 2 / 1e6 / seconds, 3),
    "rss_after_setup_mib": round(baseline, 1), "peak_rss_mib": round(peak, 1),
    "peak_over_setup_mib": round(peak - baseline, 1), "gpu_peak_mib": round(gpu_peak, 1),
    "model_only_staining_seconds": round(model_only, 2),
    "staining_pass_over_model_only": round(result.timings.get("staining", float("nan")) / max(model_only, 1e-9), 3),
}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192], help="slide sides in pixels")
    parser.add_argument("--ngf", type=int, default=4, help="generator width (64: the release)")
    parser.add_argument("--blocks", type=int, default=1, help="residual blocks (9: the release)")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--norm", default="global")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--compile", action="store_true", help="Stainer(compile=True), as tdkstain slide --compile")
    parser.add_argument("--workdir", default=None, help="where slides and outputs go (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.workdir or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for size in args.sizes:
            slide = folder / f"synthetic_{size}.tif"
            if not slide.is_file():
                write_slide(slide, size)
            child_args = {**vars(args), "size": size, "slide": str(slide), "out": str(folder / f"stained_{size}.tif")}
            proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(child_args)], capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
    print("\n| slide | tiles (tissue) | time s | Mpx/s | staining pass / model alone | RSS after setup MiB "
          "| peak RSS MiB | peak - setup MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['size']}x{r['size']} | {r['tiles_total']} ({r['tiles_tissue']}) | {r['seconds']} | "
              f"{r['megapixels_per_second']} | {r['staining_pass_over_model_only']} | {r['rss_after_setup_mib']} | "
              f"{r['peak_rss_mib']} | {r['peak_over_setup_mib']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
