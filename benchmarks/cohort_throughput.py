"""Throughput of ``tdkstain slide`` on a cohort: slides per hour and megapixels per second, 1 process against 2.

A cohort of ``--slides`` synthetic pyramidal TIFFs (glass with an elliptic
tissue region, 0.5 um/px, sides cycling through ``--sizes``, so the shares
are unequal and the split by bytes matters) is stained by the real command,
each configuration in fresh processes, end to end (interpreter start-up,
model load, every slide, the manifest):

- ``1 process x 1 thread``: ``tdkstain slide`` with ``OMP_NUM_THREADS=1``;
- ``1 process x T threads``: the same with all ``T`` cores for one process;
- ``P processes x 1 thread``: ``torchrun --nproc_per_node P --standalone -m tdkstain slide``.

Figures: wall seconds, slides per hour (slides / wall), MP/s (output
megapixels at the staining resolution / wall), the staining MP/s inside the
processes (megapixels / the sum of the per-slide seconds of cohort.json:
what one process stains per second of its own staining), the split of the work (slides and seconds per
rank) and whether the outputs are byte-identical to the first
configuration's. With ``--repeats N`` each configuration runs N times, in
alternating order, and the fastest run is reported (all walls are kept). ``--compile off`` by default: compiling costs 10-30 s per
process and tile shape, which would dominate a small cohort (a real cohort
pays it once per process).

    python benchmarks/cohort_throughput.py                        # 8 slides, tiny generator, CPU
    python benchmarks/cohort_throughput.py --json benchmarks/results/cpu-20261207/cohort_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from slide_memory import write_slide  # noqa: E402  (the same synthetic slide, written tile by tile)


def _checkpoint(path: Path, ngf: int, blocks: int) -> None:
    import torch

    from tdkstain.models.tdkstain import ResnetGenerator
    from tdkstain.weights import save_network

    torch.manual_seed(0)
    save_network(path, ResnetGenerator(ngf=ngf, n_blocks=blocks).eval(), tile_size=256, mpp=0.5)


def _run(label: str, command: list[str], threads: int, out: Path, log: Path) -> dict:
    """One configuration end to end: wall seconds and what its manifest says."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    with open(log, "a") as f:
        f.write(f"== {label}: {' '.join(command)}\n{proc.stdout}\n{proc.stderr}\n")
    if proc.returncode:
        raise SystemExit(f"{label} failed (exit {proc.returncode}); see {log}\n{proc.stderr[-2000:]}")
    manifest = json.loads((out / "cohort.json").read_text())
    slides = manifest["slides"]
    megapixels = sum(row["megapixels"] for row in slides)
    busy = sum(row["seconds"] for row in slides)
    per_rank: dict[int, dict] = {}
    for row in slides:
        share = per_rank.setdefault(row["stained_by"]["rank"], {"slides": 0, "seconds": 0.0, "megapixels": 0.0})
        share["slides"] += 1
        share["seconds"] = round(share["seconds"] + row["seconds"], 2)
        share["megapixels"] = round(share["megapixels"] + row["megapixels"], 3)
    processes = manifest["world_size"]
    return {
        "config": label, "processes": processes, "threads_per_process": threads, "wall_s": round(wall, 2),
        "slides": len(slides), "done": manifest["counts"]["done"], "megapixels": round(megapixels, 3),
        "slides_per_hour": round(len(slides) / wall * 3600, 1), "mp_per_s": round(megapixels / wall, 4),
        "staining_s_sum": round(busy, 2), "staining_mp_per_s_per_process": round(megapixels / busy, 4),
        "per_rank": {str(k): v for k, v in sorted(per_rank.items())},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slides", type=int, default=8, help="slides in the cohort (default 8)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 1536, 2048], help="slide sides, cycled (pixels)")
    parser.add_argument("--ngf", type=int, default=8, help="generator width (64: the release; default 8)")
    parser.add_argument("--blocks", type=int, default=2, help="residual blocks (9: the release; default 2)")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--processes", type=int, default=2, help="torchrun processes (default 2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="threads of the 1-process run with all cores")
    parser.add_argument("--compile", choices=("on", "off"), default="off")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each configuration, in alternating order (ABC CBA ...); the fastest is reported")
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--workdir", default=None, help="slides, outputs and log (default: a temporary folder)")
    args = parser.parse_args()

    import torch
    from _limits import machine

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        slides = work / "slides"
        slides.mkdir(parents=True, exist_ok=True)
        sizes = [args.sizes[i % len(args.sizes)] for i in range(args.slides)]
        for i, size in enumerate(sizes):
            path = slides / f"slide{i:02d}_{size}.tif"
            if not path.is_file():
                write_slide(path, size)
        checkpoint = work / "generator.safetensors"
        _checkpoint(checkpoint, args.ngf, args.blocks)
        common = ["slide", "--checkpoint", str(checkpoint), str(slides), "--tile", str(args.tile), "--overlap",
                  str(args.overlap), "--batch", str(args.batch), "--compile", args.compile, "--device", "cpu",
                  "--no-progress"]
        single = [sys.executable, "-m", "tdkstain", *common]
        multi = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.processes), "--standalone",
                 "-m", "tdkstain", *common]
        log = work / "cohort_throughput.log"
        configs = [("1 process x 1 thread", single, 1), (f"1 process x {args.threads} threads", single, args.threads),
                   (f"{args.processes} processes x 1 thread", multi, 1)]
        runs: dict[int, list[dict]] = {k: [] for k in range(len(configs))}
        for repeat in range(args.repeats):  # alternating order: a slow spell of the shared machine hits every config
            order = range(len(configs)) if repeat % 2 == 0 else reversed(range(len(configs)))
            for k in order:
                label, command, threads = configs[k]
                out = work / f"out{k}_{repeat}"
                row = _run(label, command, threads, out, log)
                first = work / "out0_0"
                if first.is_dir():
                    row["identical_to_first"] = all((out / p.name).read_bytes() == p.read_bytes()
                                                    for p in sorted(first.glob("*.tif")) + sorted(first.glob("*.png")))
                runs[k].append(row)
                print(json.dumps(row), flush=True)
        rows = []
        for k in range(len(configs)):
            best = min(runs[k], key=lambda r: r["wall_s"])
            rows.append({**best, "wall_s_all": [r["wall_s"] for r in runs[k]],
                         "identical_to_first": all(r.get("identical_to_first", True) for r in runs[k])})
        header = {**machine("cpu"), "torch": torch.__version__, "slides": args.slides, "sizes": sizes,
                  "slide_bytes": {p.name: p.stat().st_size for p in sorted(slides.glob("*.tif"))},
                  "generator": f"ResnetGenerator(ngf={args.ngf}, n_blocks={args.blocks}), random weights",
                  "tile": args.tile, "overlap": args.overlap, "batch": args.batch, "compile": args.compile,
                  "repeats": args.repeats, "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    print(f"\n{args.slides} slides ({', '.join(str(s) for s in sorted(set(sizes)))} px sides, 0.5 um/px), "
          f"{header['generator']}, tile {args.tile}, {header['cpu']}, load {header['load']}\n")
    print("| configuration | wall s (all runs) | slides / h | MP/s | staining MP/s per process | slides (s) per rank | identical |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        split = ", ".join(f"{v['slides']} ({v['seconds']:.1f} s)" for v in r["per_rank"].values())
        walls = ", ".join(f"{w:.1f}" for w in r["wall_s_all"])
        print(f"| {r['config']} | {r['wall_s']:.1f} ({walls}) | {r['slides_per_hour']:.0f} | {r['mp_per_s']:.3f} | "
              f"{r['staining_mp_per_s_per_process']:.3f} | {split} | {'yes' if r['identical_to_first'] else 'no'} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": header, "results": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
