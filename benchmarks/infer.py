"""Inference throughput: megapixels per second of the paper generator on 1024 px tiles, and peak memory.

Cases (each in its own process, so that its peak memory is its own: peak
RSS from ``resource.getrusage`` on CPU, ``torch.cuda.max_memory_allocated``
on CUDA):

- ``tiles``: :meth:`Stainer.stain_tiles` on ``batch`` random 1024x1024 H&E
  tiles (plain per-tile instance norm; uint8 in, uint8 out, conversions
  included), the paper generator (ngf 64, 3 downsamplings, 9 blocks, random
  weights: speed does not depend on them);
- ``image``: :meth:`Stainer.stain_image` of a 2048x2048 image in the default
  "global" mode (tiles 1024, overlap 64: 3x3 tiles, the layer-by-layer
  statistics pass over all 9 tiles, then staining and blending), as
  ``tdkstain translate`` runs it.

    python benchmarks/infer.py --quick                 # CPU: fp32 and bf16 autocast, tiles only
    python benchmarks/infer.py                         # CPU: also the 2048 px image
    python benchmarks/infer.py --device cuda           # CUDA: fp32, bf16 and fp16 autocast, channels_last

CPU figures depend on the cores you get; on a shared machine repeat and take
the best.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run_case(device: str, case: str, precision: str, channels_last: bool, batch: int, repeats: int, threads: int) -> dict:
    import numpy as np
    import torch

    from tdkstain.inference import Stainer
    from tdkstain.networks import ResnetGenerator

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    generator = ResnetGenerator()  # the paper configuration (METHOD.md): ngf 64, 3 downsamplings, 9 blocks
    stainer = Stainer(generator, device=device, precision=precision, channels_last=channels_last, tile=1024, overlap=64, batch=batch)
    rng = np.random.default_rng(0)

    def sync() -> None:
        if stainer.device.type == "cuda":
            torch.cuda.synchronize()

    if case == "tiles":
        tiles = [rng.integers(0, 256, size=(1024, 1024, 3), dtype=np.uint8) for _ in range(batch)]
        work = lambda: stainer.stain_tiles(tiles)  # noqa: E731
        pixels = batch * 1024 * 1024
    else:
        image = rng.integers(0, 256, size=(2048, 2048, 3), dtype=np.uint8)
        work = lambda: stainer.stain_image(image)  # noqa: E731
        pixels = 2048 * 2048
    work()  # warm-up: allocator, cuDNN / oneDNN algorithm choice
    sync()
    if stainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        work()
        sync()
        times.append(time.perf_counter() - t0)
    best = min(times)
    if stainer.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
        peak_kind = "CUDA allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        peak_kind = "process RSS"
    return {
        "device": stainer.device.type,
        "case": case,
        "precision": precision,
        "channels_last": stainer.channels_last,
        "batch": batch,
        "seconds": best,
        "seconds_all": times,
        "megapixels_per_second": pixels / best / 1e6,
        "peak_gib": peak,
        "peak_kind": peak_kind,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--quick", action="store_true", help="tiles only, 1 repeat after the warm-up")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default: 1 quick, 3 otherwise)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (default: PyTorch's choice)")
    parser.add_argument("--_case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._case:
        case, precision, channels_last, batch = args._case.split(",")
        result = run_case(args.device, case, precision, channels_last == "1", int(batch), args.repeats or 1, args.threads)
        print(json.dumps(result))
        return 0

    repeats = args.repeats or (1 if args.quick else 3)
    if args.device.startswith("cuda"):
        cases = [("tiles", "fp32", 1, 4), ("tiles", "bf16", 1, 4), ("tiles", "fp16", 1, 4), ("tiles", "bf16", 1, 8)]
        if not args.quick:
            cases += [("image", "bf16", 1, 4), ("image", "fp32", 1, 4)]
    else:
        cases = [("tiles", "fp32", 0, 1), ("tiles", "bf16", 0, 1)]
        if not args.quick:
            cases += [("tiles", "fp32", 1, 1), ("image", "fp32", 0, 1)]
    print(f"paper generator (ngf 64, 9 blocks), 1024 px tiles, best of {repeats} after a warm-up, device {args.device}")
    print(f"{'case':6s} {'precision':9s} {'NHWC':4s} {'batch':5s} {'s':>8s} {'MP/s':>8s} {'peak GiB':>9s}")
    for case, precision, channels_last, batch in cases:
        cmd = [sys.executable, __file__, "--device", args.device, "--repeats", str(repeats), "--threads", str(args.threads),
               "--_case", f"{case},{precision},{channels_last},{batch}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{case:6s} {precision:9s} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{case:6s} {precision:9s} {'yes' if r['channels_last'] else 'no':4s} {batch:5d} {r['seconds']:8.2f} "
              f"{r['megapixels_per_second']:8.3f} {r['peak_gib']:9.2f}  ({r['peak_kind']}, {r['threads']} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
