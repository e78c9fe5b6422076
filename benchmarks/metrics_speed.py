"""Throughput, memory and device agreement of the image-quality metrics (FID/KID, DISTS, LPIPS).

Measures, on the device given (CUDA when present):
1. Inception pool3 features of the same tiles on the CPU and on the device:
   largest relative feature difference, and FID/KID between two sets from
   each, with TF32 off (our setting) and, for comparison, on.
2. Inception throughput (tiles/s, resize included) at 1024 x 1024.
3. A streamed 600-pair FID/KID evaluation of 1024 x 1024 tiles generated on
   the fly: wall time and peak host memory (``ru_maxrss``), to show that the
   images are never all held (600 x 2 tiles would be 3.8 GB).
4. DISTS and LPIPS-vgg pairs/s and peak device memory at 1024 x 1024, and
   CPU vs device agreement; with stand-in VGG16 weights unless
   ``--vgg16-weights`` is given (speed and agreement do not depend on the values).

Tiles are synthetic: smooth random colour fields with texture, deterministic.

    python benchmarks/metrics_speed.py --inception-weights default_1.pt [--dists-weights weights.pt]
        [--lpips-weights vgg.pth] [--vgg16-weights vgg16-397923af.pth] [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def tiles(n: int, size: int, seed: int) -> "iter[np.ndarray]":
    """``n`` deterministic (size, size, 3) uint8 tiles: upsampled colour noise plus uniform fine noise."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        coarse = rng.integers(40, 200, (size // 32, size // 32, 3), dtype=np.uint8)
        image = np.repeat(np.repeat(coarse, 32, axis=0), 32, axis=1)
        yield image + rng.integers(0, 48, image.shape, dtype=np.uint8)  # at most 247: no overflow


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inception-weights", default=None)
    parser.add_argument("--vgg16-weights", default=None)
    parser.add_argument("--dists-weights", default=None)
    parser.add_argument("--lpips-weights", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="small sizes (a CPU smoke run)")
    parser.add_argument("--stream-pairs", type=int, default=600, help="pairs in the streamed FID/KID run (default 600)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    from tdkstain.metrics.fid import FeatureStats, fid_kid, frechet_distance, kernel_inception_distance
    from tdkstain.metrics.inception import InceptionFeatures
    from tdkstain.metrics.perceptual import DISTS, LPIPS, vgg16_features
    from tdkstain.metrics.runtime import resolve_device

    device = resolve_device(args.device)
    size = 256 if args.quick else 1024
    n_agree = 8 if args.quick else 32
    n_stream = 16 if args.quick else args.stream_pairs
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "tile": size}
    print(json.dumps(results), flush=True)

    # 1. CPU vs device features and FID.
    cpu = InceptionFeatures(args.inception_weights, device="cpu", batch_size=16)
    dev = InceptionFeatures(args.inception_weights, device=device, batch_size=32)
    set_a = np.stack(list(tiles(n_agree, 512 if not args.quick else 128, 1)))
    set_b = np.stack(list(tiles(n_agree, 512 if not args.quick else 128, 2)))
    fa_cpu, fb_cpu = cpu(set_a), cpu(set_b)
    fa_dev, fb_dev = dev(set_a), dev(set_b)

    def fid_of(fa, fb):
        a, b = FeatureStats(), FeatureStats()
        a.update(fa)
        b.update(fb)
        return frechet_distance(a, b), kernel_inception_distance(fa, fb, subsets=10, subset_size=len(fa))[0]

    fid_cpu, kid_cpu = fid_of(fa_cpu, fb_cpu)
    fid_dev, kid_dev = fid_of(fa_dev, fb_dev)
    results["inception_feature_max_rel_diff_device_vs_cpu"] = float(np.abs(fa_dev - fa_cpu).max() / np.abs(fa_cpu).max())
    results["fid_cpu"], results["fid_device"] = fid_cpu, fid_dev
    results["fid_rel_diff_device_vs_cpu"] = abs(fid_dev - fid_cpu) / fid_cpu
    results["kid_rel_diff_device_vs_cpu"] = abs(kid_dev - kid_cpu) / abs(kid_cpu)
    if device.type == "cuda":
        # What TF32 would do (why exact_float32 switches it off).
        import tdkstain.metrics.inception as inception_module
        from contextlib import nullcontext

        saved = inception_module.exact_float32
        inception_module.exact_float32 = nullcontext
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            fid_tf32, _ = fid_of(dev(set_a), dev(set_b))
        finally:
            inception_module.exact_float32 = saved
        results["fid_rel_diff_with_tf32_vs_cpu"] = abs(fid_tf32 - fid_cpu) / fid_cpu
    print(json.dumps(results), flush=True)

    # 2. Inception throughput at the tile size.
    batch = np.stack(list(tiles(32, size, 3)))
    dev(batch[:4])
    sync(device)
    start = time.perf_counter()
    repeats = 1 if args.quick else 4
    for _ in range(repeats):
        dev(batch)
    sync(device)
    results["inception_tiles_per_s"] = repeats * len(batch) / (time.perf_counter() - start)
    del batch
    print(json.dumps(results), flush=True)

    # 3. A streamed FID/KID evaluation; images made on the fly, never all in memory.
    rss_before = peak_rss_mb()
    start = time.perf_counter()
    out = fid_kid(tiles(n_stream, size, 4), tiles(n_stream, size, 5), dev, kid_subsets=100, kid_subset_size=1000)
    results["stream_pairs"] = n_stream
    results["stream_seconds"] = time.perf_counter() - start
    results["stream_fid"] = out["fid"]
    results["stream_peak_rss_mb_before"] = rss_before
    results["stream_peak_rss_mb_after"] = peak_rss_mb()
    results["stream_all_images_would_be_mb"] = 2 * n_stream * size * size * 3 / 2**20
    print(json.dumps(results), flush=True)

    # 4. DISTS and LPIPS-vgg.
    with tempfile.TemporaryDirectory() as tmp:
        vgg = args.vgg16_weights
        if vgg is None:
            torch.manual_seed(0)
            features = vgg16_features()
            vgg = Path(tmp) / "vgg16_stand_in.pth"
            torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, vgg)
        results["vgg16_weights"] = "given" if args.vgg16_weights else "random stand-in"
        for name, make in (
            ("dists", lambda d: DISTS(vgg, args.dists_weights, allow_noncanonical=True, device=d)),
            ("lpips_vgg", lambda d: LPIPS("vgg", vgg, args.lpips_weights, allow_noncanonical=True, device=d)),
        ):
            metric_dev = make(device)
            metric_cpu = make("cpu")
            small_real = np.stack(list(tiles(2, 256, 6)))
            small_fake = np.stack(list(tiles(2, 256, 7)))
            on_cpu = metric_cpu.score_images(small_real, small_fake)
            on_dev = metric_dev.score_images(small_real, small_fake)
            results[f"{name}_rel_diff_device_vs_cpu"] = float(np.abs(on_dev - on_cpu).max() / np.abs(on_cpu).max())
            real = np.stack(list(tiles(8, size, 8)))
            fake = np.stack(list(tiles(8, size, 9)))
            metric_dev.score_images(real[:2], fake[:2])
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            start = time.perf_counter()
            metric_dev.score_images(real, fake)
            sync(device)
            results[f"{name}_pairs_per_s"] = len(real) / (time.perf_counter() - start)
            if device.type == "cuda":
                results[f"{name}_peak_device_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            print(json.dumps(results), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
