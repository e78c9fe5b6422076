"""Knowledge extraction speed per 1024 px tile: the numpy/scikit-image path against the torch path.

- numpy path: ``tdkstain.knowledge.extract_tile`` (one tile per call);
- torch path: ``tdkstain.knowledge.extraction.fast.extract_tiles_torch`` (one tile per
  call, and all tiles in one call), on the CPU or ``--device cuda``.

For each: seconds per tile (median of the repeats), tiles per second, the
ratio torch / numpy in tiles per second, seconds per stage, and the peak
resident memory of a process that runs only that engine (``ru_maxrss``, each
engine in its own subprocess). Before timing, every output of the two paths is
compared element for element on every tile (``identical`` column).

Tiles: synthetic IHC (``tdkstain.synth.tissue.render_pair``), HER2 0..3,
default extraction parameters (adaptive membrane and nuclei, classical
backend) unless ``--mode release``. Threads: ``--threads`` (default 2) for
torch; numpy and scipy run on one thread whatever the setting.

    python benchmarks/extract_speed.py [--size 1024] [--tiles 4] [--repeats 3] [--threads 2]
        [--device cpu|cuda] [--mode adaptive|release] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FIELDS = ("dab_rgb", "membrane_mask", "nuclei_mask", "centroids", "density")


def make_tiles(count: int, size: int) -> list[np.ndarray]:
    from tdkstain.synth.tissue import render_pair

    return [render_pair(seed, size, her2=seed % 4).ihc for seed in range(count)]


def load_tiles(args: argparse.Namespace) -> list[np.ndarray]:
    """The tiles the parent rendered (rendering peaks at ~1.1 GB at 1024 px: kept out of the workers' RSS)."""
    return list(np.load(args.tiles_file))


def make_params(mode: str):
    from tdkstain.knowledge.maps import ExtractionParams

    return ExtractionParams.from_dict({"membrane": {"mode": mode}, "nuclei": {"mode": mode}})


def numpy_stages(ihc: np.ndarray, params, timer) -> object:
    """``knowledge.extract_tile`` step by step, timed; returns its TileKnowledge (checked equal by the caller)."""
    from skimage.morphology import h_maxima

    from tdkstain.knowledge import maps as knowledge
    from tdkstain.knowledge import nuclei
    from tdkstain.knowledge import stain

    with timer("membrane"):
        membrane = knowledge.membrane_mask(ihc, params.membrane)
    with timer("nuclei mask"):
        mask = nuclei.nuclei_mask(ihc, params.nuclei)
    if mask.any():
        with timer("relief"):
            relief, levels, h = nuclei._classical_relief(ihc, mask, params.nuclei)
        with timer("h-maxima"):
            seeds = h_maxima(levels, h).astype(bool)
        with timer("watershed"):
            labels = nuclei._watershed_from_seeds(relief, mask, seeds)
    else:
        labels = np.zeros(mask.shape, np.int32)
    with timer("centroids"):
        centroids = nuclei._region_centroids(labels, params.nuclei)
    with timer("deconvolution"):  # the DAB-only image
        dab = stain.dab_rgb(ihc)
    with timer("density"):
        density = knowledge.density_map(centroids, ihc.shape[:2], params.density_sigma, params.density_normalise)
    return knowledge.TileKnowledge(dab, membrane, mask, np.asarray(centroids, np.float64).reshape(-1, 2), density)


def run_engine(engine: str, args: argparse.Namespace) -> dict:
    """Time one engine in this process; returns seconds per tile, per stage, peak RSS."""
    import torch

    from tdkstain.knowledge import maps as knowledge
    from tdkstain.knowledge.extraction.fast import StageTimer, extract_tiles_torch

    torch.set_num_threads(args.threads)
    tiles = load_tiles(args)
    params = make_params(args.mode)
    device = torch.device(args.device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    per_tile, batch_times = [], []
    stages = StageTimer()
    # Warm-up on one tile: imports, kernel caches, allocator.
    if engine == "numpy":
        knowledge.extract_tile(tiles[0], params)
    else:
        extract_tiles_torch(tiles[:1], params, device)
    for _ in range(args.repeats):
        for tile in tiles:
            start = time.perf_counter()
            if engine == "numpy":
                knowledge.extract_tile(tile, params)
            else:
                extract_tiles_torch([tile], params, device)
            sync()
            per_tile.append(time.perf_counter() - start)
    peak_single = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if engine == "torch":
        for _ in range(args.repeats):
            start = time.perf_counter()
            extract_tiles_torch(tiles, params, device, batch=len(tiles))
            sync()
            batch_times.append((time.perf_counter() - start) / len(tiles))
    # Stage breakdown: one more pass, instrumented (timers cost microseconds).
    for tile in tiles:
        if engine == "numpy":
            numpy_stages(tile, params, stages)
        else:
            extract_tiles_torch([tile], params, device, timer=stages)
    sync()
    return {
        "engine": engine,
        "s_per_tile": statistics.median(per_tile),
        "s_per_tile_batched": statistics.median(batch_times) if batch_times else None,
        "stages": {k: v / len(tiles) for k, v in stages.seconds.items()},
        "peak_rss_mb": peak_single,
        "peak_rss_mb_batched": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def check_identical(args: argparse.Namespace) -> tuple[bool, str]:
    """Both engines on every tile; also that ``numpy_stages`` is ``extract_tile`` (so its breakdown is honest)."""
    import torch

    from tdkstain.knowledge import maps as knowledge
    from tdkstain.knowledge.extraction.fast import StageTimer, extract_tiles_torch

    tiles = load_tiles(args)
    params = make_params(args.mode)
    fast = extract_tiles_torch(tiles, params, torch.device(args.device))
    problems = []
    for index, tile in enumerate(tiles):
        reference = knowledge.extract_tile(tile, params)
        staged = numpy_stages(tile, params, StageTimer())
        for name in FIELDS:
            a = getattr(reference, name)
            for other, label in ((fast[index], "torch"), (staged, "staged numpy")):
                b = getattr(other, name)
                if a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(a, b):
                    problems.append(f"tile {index} {name} ({label})")
    nuclei = sum(len(k.centroids) for k in fast)
    return not problems, "; ".join(problems) or f"all {len(FIELDS)} outputs of {len(tiles)} tiles equal ({nuclei} nuclei)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--tiles", type=int, default=4, help="distinct synthetic tiles (HER2 = index mod 4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="torch path device: cpu or cuda")
    parser.add_argument("--mode", choices=("adaptive", "release"), default="adaptive")
    parser.add_argument("--quick", action="store_true", help="2 tiles of 512 px, 1 repeat (a smoke run)")
    parser.add_argument("--worker", choices=("numpy", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--tiles-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.size, args.tiles, args.repeats = 512, 2, 1
    if args.worker:
        print(json.dumps(run_engine(args.worker, args)))
        return 0

    # Tiles rendered once, in a child (rendering's peak memory is not the engines'), then each
    # engine in its own process: its ru_maxrss is then its own (imports + tiles + work).
    scratch = tempfile.mkdtemp(prefix="extract_speed_")
    args.tiles_file = str(Path(scratch) / "tiles.npy")
    subprocess.run([sys.executable, "-c", f"import sys, numpy as np; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                    f"from extract_speed import make_tiles; np.save({args.tiles_file!r}, np.stack(make_tiles({args.tiles}, {args.size})))"],
                   check=True)
    results = {}
    for engine in ("numpy", "torch"):
        command = [sys.executable, __file__, "--worker", engine, "--tiles-file", args.tiles_file,
                   "--repeats", str(args.repeats), "--threads", str(args.threads), "--device", args.device,
                   "--mode", args.mode]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[engine] = json.loads(out.strip().splitlines()[-1])
    import torch

    torch.set_num_threads(args.threads)
    identical, detail = check_identical(args)
    numpy_s, torch_s = results["numpy"]["s_per_tile"], results["torch"]["s_per_tile"]
    batched = results["torch"]["s_per_tile_batched"]

    load = os.getloadavg()
    print(f"# knowledge extraction, {args.tiles} synthetic {args.size}^2 IHC tiles x {args.repeats} repeats, "
          f"mode {args.mode}, torch device {args.device}, torch threads {args.threads}, "
          f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"identical outputs: {identical} ({detail})")
    print("peak RSS: ru_maxrss of a process that loads the tiles and runs one engine (torch imported in both)\n")
    print("| engine | s / tile | tiles / s | ratio (tiles/s vs numpy) | peak RSS MB |")
    print("|---|---:|---:|---:|---:|")
    print(f"| numpy (extract_tile) | {numpy_s:.3f} | {1 / numpy_s:.2f} | 1.00 | {results['numpy']['peak_rss_mb']:.0f} |")
    print(f"| torch, 1 tile per call | {torch_s:.3f} | {1 / torch_s:.2f} | {numpy_s / torch_s:.2f} | "
          f"{results['torch']['peak_rss_mb']:.0f} |")
    if batched:
        print(f"| torch, {args.tiles} tiles per call | {batched:.3f} | {1 / batched:.2f} | {numpy_s / batched:.2f} | "
              f"{results['torch']['peak_rss_mb_batched']:.0f} |")
    stages = sorted(set(results["numpy"]["stages"]) | set(results["torch"]["stages"]),
                    key=lambda s: -results["numpy"]["stages"].get(s, 0.0))
    print("\n| stage | numpy ms / tile | torch ms / tile |")
    print("|---|---:|---:|")
    for stage in stages:
        a, b = results["numpy"]["stages"].get(stage), results["torch"]["stages"].get(stage)
        print(f"| {stage} | {'' if a is None else f'{a * 1000:.1f}'} | {'' if b is None else f'{b * 1000:.1f}'} |")
    total_a, total_b = sum(results["numpy"]["stages"].values()), sum(results["torch"]["stages"].values())
    print(f"| total (instrumented pass) | {total_a * 1000:.1f} | {total_b * 1000:.1f} |")
    print("\nnumpy stages: extract_tile's steps timed one by one (checked equal to extract_tile); 'deconvolution' "
          "there is the DAB-only image, the membrane and nuclei stages deconvolve on their own.")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
