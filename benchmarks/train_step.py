"""Seconds per TDKstain training step, achieved GFLOP/s and peak memory, paper preset.

One step is the full iteration of METHOD.md: estimator step, G(x) and
G(M * x), discriminator step, generator step (three backward passes and
three Adam updates), on random tensors of the crop size with batch 1.

FLOPs are counted once per case with ``torch.utils.flop_counter.FlopCounterMode``
(matmul / convolution forward and backward; elementwise ops not counted), on
the warm-up step, which is not timed. Each case runs in its own process so
that its peak memory is its own: peak RSS (``resource.getrusage``) on CPU,
``torch.cuda.max_memory_allocated`` on CUDA.

    python benchmarks/train_step.py                 # CPU: 256 and 512 crops, fp32 and bf16
    python benchmarks/train_step.py --quick         # fewer repeats
    python benchmarks/train_step.py --device cuda   # CUDA: bf16 + channels_last at 512 and 1024 (+ fp32 at 512)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def run_case(device: str, crop: int, precision: str, channels_last: bool, steps: int, threads: int | None) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from tdkstain.config import load_config
    from tdkstain.objective import Runtime, create_objective

    if threads:
        torch.set_num_threads(threads)
    cfg = load_config("tdkstain-paper")
    dev = torch.device(device)
    objective = create_objective(cfg, steps_per_epoch=1000)
    nets = objective.build_networks(0)
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    for net in nets.values():
        net.to(dev, memory_format=memory_format)
    optimizers = {k: torch.optim.Adam(n.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas)) for k, n in nets.items()}
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    rt = Runtime(device=dev, amp_dtype=amp, channels_last=channels_last,
                 scaler=torch.amp.GradScaler(device) if precision == "fp16" else None)
    g = torch.Generator().manual_seed(0)
    batch = rt.to_device({
        "he": torch.rand(1, 3, crop, crop, generator=g) * 2 - 1,
        "ihc": torch.rand(1, 3, crop, crop, generator=g) * 2 - 1,
        "dab": torch.rand(1, 3, crop, crop, generator=g) * 2 - 1,
        "membrane_mask": torch.rand(1, 1, crop, crop, generator=g),
        "nuclei_density": torch.rand(1, 1, crop, crop, generator=g),
    })

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    with FlopCounterMode(display=False) as counter:  # doubles as the warm-up step
        objective.train_step(0, nets, optimizers, batch, rt)
    flops = counter.get_total_flops()
    if dev.type == "cuda":
        objective.train_step(0, nets, optimizers, batch, rt)  # cuDNN autotuning / allocator warm-up
        torch.cuda.reset_peak_memory_stats()
    sync()
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        objective.train_step(step, nets, optimizers, batch, rt)
        sync()
        times.append(time.perf_counter() - t0)
    seconds = sorted(times)[len(times) // 2]  # median: the machine is shared and noisy
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return {
        "device": device, "crop": crop, "precision": precision, "channels_last": channels_last,
        "steps": steps, "sec_per_step": seconds, "min_sec": min(times), "gflop_per_step": flops / 1e9,
        "gflops": flops / seconds / 1e9, "peak_gib": peak, "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else os.uname().machine,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default: cpu")
    parser.add_argument("--crops", type=int, nargs="+", default=None, help="crop sizes (default: cpu 256 512; cuda 512 1024)")
    parser.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "bf16", "fp16"],
                        help="default: cpu fp32 bf16; cuda bf16 (+ fp32 at the smallest crop)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (default 5, --quick 2; cuda 20 / 5)")
    parser.add_argument("--quick", action="store_true", help="fewer timed steps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one case, JSON out
    args = parser.parse_args()

    if args.case:
        crop, precision, channels_last, steps = args.case.split(":")
        result = run_case(args.device, int(crop), precision, channels_last == "1", int(steps), args.threads)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    cuda = args.device == "cuda"
    crops = args.crops or ([512, 1024] if cuda else [256, 512])
    steps = args.steps or ((5 if args.quick else 20) if cuda else (2 if args.quick else 5))
    cases = []
    for crop in crops:
        for precision in args.precisions or (["bf16"] + (["fp32"] if crop == min(crops) else []) if cuda else ["fp32", "bf16"]):
            cases.append((crop, precision, cuda))  # channels_last on CUDA only (it slows CPU convs down)
    results = []
    for crop, precision, channels_last in cases:
        cmd = [sys.executable, __file__, "--device", args.device, "--case", f"{crop}:{precision}:{int(channels_last)}:{steps}"]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        print(f"running {args.device} crop {crop} {precision}{' channels_last' if channels_last else ''} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(proc.stderr[-2000:], file=sys.stderr)
            results.append({"device": args.device, "crop": crop, "precision": precision, "channels_last": channels_last, "error": proc.stderr.strip().splitlines()[-1:] })
            continue
        results.append(json.loads(lines[-1][len("RESULT "):]))

    print(f"\nTDKstain training step, paper preset (G ngf 64 / 9 blocks, D 3 scales, E nef 128), batch 1")
    print(f"{'device':8s} {'crop':>5s} {'precision':>9s} {'ch_last':>7s} {'s/step':>8s} {'GFLOP/step':>10s} {'GFLOP/s':>8s} {'peak GiB':>9s}")
    for r in results:
        if "error" in r:
            print(f"{r['device']:8s} {r['crop']:5d} {r['precision']:>9s} {str(r['channels_last']):>7s}  failed: {r['error']}")
            continue
        print(f"{r['device']:8s} {r['crop']:5d} {r['precision']:>9s} {str(r['channels_last']):>7s} {r['sec_per_step']:8.3f} "
              f"{r['gflop_per_step']:10.1f} {r['gflops']:8.1f} {r['peak_gib']:9.2f}")
    if results and "device_name" in results[0]:
        print(f"({results[0]['device_name']}, {results[0]['threads']} threads, median of {steps} steps; peak = "
              f"{'max_memory_allocated' if cuda else 'process peak RSS'})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
