"""Seconds per TDKstain training step, achieved GFLOP/s against the machine's own limit, and peak memory.

One step is the full iteration of docs/method.md: estimator step, G(x) and
G(M * x), discriminator step, generator step (three backward passes and
three Adam updates), paper preset, on random tensors of the crop size.

FLOPs are counted once per case with ``torch.utils.flop_counter.FlopCounterMode``
(matmul / convolution forward and backward; elementwise ops not counted) on
the warm-up step, which is not timed. The limit is measured in the same
process just before and just after the timed steps (``_limits.py``; each
pass keeps the faster of the two): the two layers that carry most of the
FLOPs at the case's own batch, the estimator's 7x7 896->128 convolution at
half the crop (~45 %) and G's 3x3 512->512 residual convolutions at an eighth
(~35 %; twice the batch, as G runs x and M*x together), each timed alone for
forward, input gradient and weight gradient. s/step is the median of the
timed steps. Two ratios:
``%fwd``, to the 7x7 forward rate alone (the largest single kernel), and
``%mix``, to the rate of running those six passes once each (what a step
made only of its dominant layers would reach). Each case runs in its own
process so that its peak memory is its own: peak RSS on CPU,
``torch.cuda.max_memory_allocated`` on CUDA. On CPU the step runs with
``tdkstain.plumbing.allocator.keep_freed_memory`` as ``tdkstain train`` does
(``--allocator default`` to compare).

    python benchmarks/train_step.py                          # CPU: 256 and 512, batch 1 and 4, fp32 and bf16
    python benchmarks/train_step.py --quick                  # 256 batch 1 only
    python benchmarks/train_step.py --crops 512 --batches 1 --allocator default
    python benchmarks/train_step.py --device cuda            # CUDA: bf16 + channels_last at 512 and 1024 (+ fp32 at 512)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def run_case(device: str, crop: int, batch_size: int, precision: str, channels_last: bool, steps: int,
             threads: int | None, allocator: str, memory_only: bool = False) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from _limits import ConvShape, conv_rates, mixed_rate
    from tdkstain.plumbing.allocator import keep_freed_memory
    from tdkstain.training.config import load_config
    from tdkstain.methods import Runtime, create_method

    if threads:
        torch.set_num_threads(threads)
    kept = keep_freed_memory() if allocator == "keep" and device == "cpu" else False
    dev = torch.device(device)
    # The case's own shapes: E sees the batch once per pass, G twice (x and M*x in one batch).
    shapes = [ConvShape("E 7x7 896->128", batch_size, 896, 128, 7, crop // 2),
              ConvShape("G 3x3 512->512", 2 * batch_size, 512, 512, 3, crop // 8)]

    def measure_limits() -> dict[str, dict[str, float]]:
        return {} if memory_only else {s.name: conv_rates(s, dev, precision, channels_last=channels_last) for s in shapes}

    limits_before = measure_limits()

    cfg = load_config("tdkstain-paper")
    objective = create_method(cfg, steps_per_epoch=1000)
    nets = objective.build_networks(0)
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    for net in nets.values():
        net.to(dev, memory_format=memory_format)
    optimizers = {k: torch.optim.Adam(n.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas)) for k, n in nets.items()}
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    rt = Runtime(device=dev, amp_dtype=amp, channels_last=channels_last,
                 scaler=torch.amp.GradScaler(device) if precision == "fp16" else None)
    g = torch.Generator().manual_seed(0)
    shape = (batch_size, 3, crop, crop)
    batch = rt.to_device({
        "he": torch.rand(*shape, generator=g) * 2 - 1,
        "ihc": torch.rand(*shape, generator=g) * 2 - 1,
        "dab": torch.rand(*shape, generator=g) * 2 - 1,
        "membrane_mask": torch.rand(batch_size, 1, crop, crop, generator=g),
        "nuclei_density": torch.rand(batch_size, 1, crop, crop, generator=g),
    })

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if memory_only:  # one untimed-warm-up-free step: its peak memory, and a first-step time
        flops = float("nan")
    else:
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
    # Measured again after the steps; each pass keeps the faster of its two rates, so a slow
    # spell during either measurement lowers the ratio rather than raising it.
    limits_after = measure_limits()
    limits = {name: {p: max(r, limits_after[name][p]) for p, r in passes.items()} for name, passes in limits_before.items()}
    seconds = statistics.median(times)  # the machine is shared and noisy
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    gflops = flops / seconds / 1e9
    fwd_limit = limits[shapes[0].name]["fwd"] if limits else float("nan")
    mix_limit = mixed_rate(limits, shapes) if limits else float("nan")
    return {
        "device": device, "crop": crop, "batch": batch_size, "precision": precision, "channels_last": channels_last,
        "allocator": "keep" if kept else "default", "memory_only": memory_only,
        "steps": steps, "sec_per_step": seconds, "min_sec": min(times), "gflop_per_step": flops / 1e9,
        "step_seconds": times, "gflops": gflops, "limit_fwd_gflops": fwd_limit, "limit_mix_gflops": mix_limit,
        "limits": limits, "limits_before": limits_before, "limits_after": limits_after,
        "ratio_fwd": gflops / fwd_limit, "ratio_mix": gflops / mix_limit,
        "peak_gib": peak, "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else os.uname().machine,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default: cpu")
    parser.add_argument("--crops", type=int, nargs="+", default=None, help="crop sizes (default: cpu 256 512; cuda 512 1024)")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default: 1 4; --quick 1)")
    parser.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "bf16", "fp16"],
                        help="default: cpu fp32 bf16; cuda bf16 (+ fp32 at the smallest crop)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per case (default: cpu 3, 2 for 512 batch 4; cuda 20; --quick 2 / 5)")
    parser.add_argument("--quick", action="store_true", help="the smallest crop, batch 1, fewer timed steps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--allocator", choices=["keep", "default"], default="keep",
                        help="keep: tdkstain.plumbing.allocator.keep_freed_memory() as tdkstain train does on CPU (default); "
                             "default: glibc as it comes")
    parser.add_argument("--memory-only", action="store_true",
                        help="no FLOP count, no limits, no warm-up: one step per case, for its peak memory (e.g. --crops 1024)")
    parser.add_argument("--json", default=None, help="also write the results (and the machine) to this JSON file")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one case, JSON out
    args = parser.parse_args()

    if args.case:
        crop, batch, precision, channels_last, steps = args.case.split(":")
        result = run_case(args.device, int(crop), int(batch), precision, channels_last == "1", int(steps), args.threads,
                          args.allocator, args.memory_only)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    from _limits import machine

    cuda = args.device == "cuda"
    crops = args.crops or ([512, 1024] if cuda else [256, 512])
    if args.quick and not args.crops:
        crops = crops[:1]
    batches = args.batches or ([1] if args.quick else [1, 4])
    cases = []
    for crop in crops:
        for batch in batches:
            precisions = args.precisions or (["bf16"] + (["fp32"] if crop == min(crops) else []) if cuda else ["fp32", "bf16"])
            for precision in precisions:
                if args.memory_only:
                    steps = 1
                elif args.steps:
                    steps = args.steps
                elif cuda:
                    steps = 5 if args.quick else 20
                else:
                    steps = 2 if args.quick or crop * crop * batch >= 512 * 512 * 4 else 3
                cases.append((crop, batch, precision, cuda, steps))  # channels_last on CUDA only (it slows CPU convs down)
    results = []
    for crop, batch, precision, channels_last, steps in cases:
        cmd = [sys.executable, __file__, "--device", args.device, "--allocator", args.allocator,
               *(["--memory-only"] if args.memory_only else []),
               "--case", f"{crop}:{batch}:{precision}:{int(channels_last)}:{steps}"]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        print(f"running {args.device} crop {crop} batch {batch} {precision}{' channels_last' if channels_last else ''} ...",
              file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(proc.stderr[-2000:], file=sys.stderr)
            results.append({"device": args.device, "crop": crop, "batch": batch, "precision": precision,
                            "channels_last": channels_last, "error": proc.stderr.strip().splitlines()[-1:]})
            continue
        results.append(json.loads(lines[-1][len("RESULT "):]))

    info = machine(args.device)
    print("\nTDKstain training step, paper preset (G ngf 64 / 9 blocks, D 3 scales, E nef 128)")
    print("  " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print(f"{'crop':>5s} {'batch':>5s} {'prec':>5s} {'s/step':>8s} {'GFLOP':>8s} {'GFLOP/s':>8s} {'limit fwd':>9s} "
          f"{'limit mix':>9s} {'%fwd':>5s} {'%mix':>5s} {'peak GiB':>9s} {'alloc':>7s}")
    for r in results:
        if "error" in r:
            print(f"{r['crop']:5d} {r['batch']:5d} {r['precision']:>5s}  failed: {r['error']}")
            continue
        if r.get("memory_only"):
            print(f"{r['crop']:5d} {r['batch']:5d} {r['precision']:>5s} {r['sec_per_step']:8.2f} (first step, memory only)"
                  f"{'':>38s} {r['peak_gib']:9.2f} {r['allocator']:>7s}")
            continue
        print(f"{r['crop']:5d} {r['batch']:5d} {r['precision']:>5s} {r['sec_per_step']:8.2f} {r['gflop_per_step']:8.0f} "
              f"{r['gflops']:8.1f} {r['limit_fwd_gflops']:9.1f} {r['limit_mix_gflops']:9.1f} {100 * r['ratio_fwd']:4.0f}% "
              f"{100 * r['ratio_mix']:4.0f}% {r['peak_gib']:9.2f} {r['allocator']:>7s}")
    print(f"(median of the timed steps; peak = {'max_memory_allocated' if cuda else 'process peak RSS'}; "
          "limits: same-process single-convolution rates at the dominant shapes, see the module docstring)")
    for precision in sorted({r["precision"] for r in results if "error" not in r}):
        if precision == "fp32":
            continue
        for r in results:
            base = next((b for b in results if "error" not in b and "error" not in r and b["precision"] == "fp32"
                         and (b["crop"], b["batch"]) == (r["crop"], r["batch"])), None)
            if r.get("precision") == precision and base is not None:
                print(f"{precision} vs fp32 at crop {r['crop']} batch {r['batch']}: {base['sec_per_step'] / r['sec_per_step']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "results": results}, f, indent=1)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
