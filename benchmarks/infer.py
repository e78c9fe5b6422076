"""Inference throughput of the paper generator on 1024 px tiles, against the machine's own convolution rate.

Cases (each in its own process, so that its peak memory is its own: peak
RSS from ``resource.getrusage`` on CPU, ``torch.cuda.max_memory_allocated``
on CUDA):

- ``tiles``: :meth:`Stainer.stain_tiles` on ``batch`` 1024x1024 H&E tiles
  (plain per-tile instance norm; uint8 in, uint8 out, conversions included),
  the paper generator (ngf 64, 3 downsamplings, 9 blocks; weights drawn as
  the release initialises them: speed does not depend on them), eager or
  through ``torch.compile`` (``Stainer(compile=True)``; compilation is done
  in the warm-up, not timed, and reported on its own);
- ``image``: :meth:`Stainer.stain_image` of a 2048x2048 image in the default
  "global" mode (tiles 1024, overlap 64: 3x3 tiles, the layer-by-layer
  statistics pass, then staining with supplied statistics and blending), as
  ``tdkstain translate`` runs it.

The limit, measured in the same process before and after the case (the
faster of the two): the forward rate of G's dominant layer, the 3x3
512->512 residual convolution at 128x128 (18 of them carry 84 % of G's
FLOPs at 1024), at the case's batch and precision. ``%conv`` is the case's
GFLOP/s (best of the timed repeats) over that rate.

Accuracy of bf16: a bf16 case also stains the real H&E image
(``tdkstain/examples``, tiatoolbox 512 px, mirrored to 1024) in fp32 and bf16 in the
same process and reports the PSNR of the bf16 output against the fp32 one
(uint8 outputs, peak 255).

    python benchmarks/infer.py --quick                 # CPU: batch 1, fp32 and bf16, eager and compiled
    python benchmarks/infer.py                         # CPU: also batch 8 and the 2048 px image
    python benchmarks/infer.py --device cuda           # CUDA: fp32, bf16 and fp16 autocast, channels_last
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

def _generator():
    import torch

    from tdkstain.models.tdkstain import ResnetGenerator
    from tdkstain.models.layers import init_weights

    torch.manual_seed(0)
    generator = ResnetGenerator()  # the paper configuration (docs/method.md)
    init_weights(generator)
    return generator.eval()


def _gflop_per_1024_tile(generator) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        generator(torch.zeros(1, 3, 256, 256))
    return counter.get_total_flops() * 16 / 1e9


def _he_tile():
    """The real H&E example shipped in the package (tiatoolbox, 512 px), mirrored to 1024 px."""
    from importlib.resources import files

    import numpy as np

    from tdkstain.data.images import read_rgb

    he = read_rgb(files("tdkstain") / "examples" / "he_tiatoolbox_target_512.png")
    return np.pad(he, ((0, 1024 - he.shape[0]), (0, 1024 - he.shape[1]), (0, 0)), mode="symmetric")


def _psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def run_case(device: str, case: str, precision: str, channels_last: bool, batch: int, repeats: int, threads: int,
             compile: bool) -> dict:
    import numpy as np
    import torch

    from _limits import ConvShape, conv_rates
    from tdkstain.inference import Stainer

    if threads:
        torch.set_num_threads(threads)
    generator = _generator()
    gflop_tile = _gflop_per_1024_tile(generator)
    stainer = Stainer(generator, device=device, precision=precision, channels_last=channels_last, tile=1024, overlap=64,
                      batch=batch, compile=compile)
    dominant = ConvShape("G 3x3 512->512", batch, 512, 512, 3, 128)

    def measure_limit() -> float:
        return conv_rates(dominant, stainer.device, precision, passes=("fwd",), channels_last=stainer.channels_last)["fwd"]

    limit_before = measure_limit()
    rng = np.random.default_rng(0)

    def sync() -> None:
        if stainer.device.type == "cuda":
            torch.cuda.synchronize()

    if case == "tiles":
        tiles = [rng.integers(0, 256, size=(1024, 1024, 3), dtype=np.uint8) for _ in range(batch)]
        work = lambda: stainer.stain_tiles(tiles)  # noqa: E731
        pixels, gflop = batch * 1024 * 1024, batch * gflop_tile
    else:
        image = rng.integers(0, 256, size=(2048, 2048, 3), dtype=np.uint8)
        work = lambda: stainer.stain_image(image)  # noqa: E731
        pixels = 2048 * 2048
        gflop = stainer.passes_for(2048, 2048) * gflop_tile
    t0 = time.perf_counter()
    work()  # warm-up: compilation, allocator, cuDNN / oneDNN algorithm choice
    sync()
    warmup = time.perf_counter() - t0
    if stainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        work()
        sync()
        times.append(time.perf_counter() - t0)
    best = min(times)
    # Measured again after the case; the faster of the two is the limit, so a slow spell
    # during either measurement lowers the ratio rather than raising it.
    limit_after = measure_limit()
    limit = max(limit_before, limit_after)
    if stainer.device.type == "cuda":
        peak, peak_kind = torch.cuda.max_memory_allocated() / 2**30, "CUDA allocated"
    else:
        peak, peak_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process RSS"  # KiB on Linux
    psnr = None
    if precision != "fp32":
        he = _he_tile()
        reference = Stainer(generator, device=device, precision="fp32", tile=1024, overlap=64, batch=1).stain_tiles([he])[0]
        psnr = _psnr(stainer.stain_tiles([he])[0], reference)
    return {
        "device": stainer.device.type, "case": case, "precision": precision, "channels_last": stainer.channels_last,
        "compile": compile, "batch": batch, "seconds": best, "seconds_all": times, "warmup_seconds": warmup,
        "megapixels_per_second": pixels / best / 1e6, "gflop": gflop, "gflops": gflop / best,
        "limit_gflops": limit, "limit_before_after": [limit_before, limit_after], "ratio": gflop / best / limit, "psnr_vs_fp32": psnr,
        "peak_gib": peak, "peak_kind": peak_kind, "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--quick", action="store_true", help="batch 1 tiles only, 1 repeat after the warm-up")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default: 1 quick, 3 otherwise)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (default: PyTorch's choice)")
    parser.add_argument("--json", default=None, help="also write the results (and the machine) to this JSON file")
    parser.add_argument("--_case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._case:
        case, precision, channels_last, batch, compiled = args._case.split(",")
        result = run_case(args.device, case, precision, channels_last == "1", int(batch), args.repeats or 1, args.threads,
                          compiled == "1")
        print("RESULT " + json.dumps(result))
        return 0

    from _limits import machine

    repeats = args.repeats or (1 if args.quick else 3)
    if args.device.startswith("cuda"):
        cases = [("tiles", "fp32", 1, 1, 0), ("tiles", "bf16", 1, 1, 0), ("tiles", "bf16", 1, 8, 0), ("tiles", "fp16", 1, 8, 0),
                 ("tiles", "bf16", 1, 8, 1)]
        if not args.quick:
            cases += [("image", "bf16", 1, 4, 0)]
    else:
        cases = [("tiles", p, 0, 1, c) for c in (0, 1) for p in ("fp32", "bf16")]
        if not args.quick:
            cases += [("tiles", p, 0, 8, 1) for p in ("fp32", "bf16")] + [("image", "fp32", 0, 1, 1)]
    results = []
    for case, precision, channels_last, batch, compiled in cases:
        print(f"running {case} {precision} batch {batch}{' compiled' if compiled else ''} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--device", args.device, "--repeats", str(repeats), "--threads", str(args.threads),
               "--_case", f"{case},{precision},{channels_last},{batch},{compiled}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(proc.stderr[-2000:], file=sys.stderr)
            results.append({"case": case, "precision": precision, "batch": batch, "compile": bool(compiled),
                            "error": proc.stderr.strip().splitlines()[-1:] or [proc.returncode]})
            continue
        results.append(json.loads(lines[-1][len("RESULT "):]))

    info = machine(args.device)
    print(f"\npaper generator (ngf 64, 9 blocks), 1024 px tiles, best of {repeats} after a warm-up, device {args.device}")
    print("  " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print(f"{'case':6s} {'prec':5s} {'NHWC':4s} {'compiled':8s} {'batch':>5s} {'s':>7s} {'MP/s':>7s} {'GFLOP/s':>8s} "
          f"{'limit':>7s} {'%conv':>5s} {'PSNR dB':>8s} {'warm-up s':>9s} {'peak GiB':>8s}")
    for r in results:
        if "error" in r:
            print(f"{r['case']:6s} {r['precision']:5s} batch {r['batch']} {'compiled' if r['compile'] else 'eager'} failed: {r['error']}")
            continue
        psnr = "" if r["psnr_vs_fp32"] is None else f"{r['psnr_vs_fp32']:.1f}"
        print(f"{r['case']:6s} {r['precision']:5s} {'yes' if r['channels_last'] else 'no':4s} {'yes' if r['compile'] else 'no':8s} "
              f"{r['batch']:5d} {r['seconds']:7.2f} {r['megapixels_per_second']:7.3f} {r['gflops']:8.1f} {r['limit_gflops']:7.1f} "
              f"{100 * r['ratio']:4.0f}% {psnr:>8s} {r['warmup_seconds']:9.1f} {r['peak_gib']:8.2f}")
    ok = [r for r in results if "error" not in r and r["case"] == "tiles"]
    for r in ok:
        base = next((b for b in ok if b["precision"] == "fp32" and b["batch"] == r["batch"] and not b["compile"]), None)
        if base is not None and r is not base:
            print(f"{r['precision']}{' compiled' if r['compile'] else ''} batch {r['batch']} vs fp32 eager: "
                  f"{base['seconds'] / r['seconds']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "results": results}, f, indent=1)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
