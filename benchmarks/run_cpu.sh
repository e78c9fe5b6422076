#!/usr/bin/env bash
# Every CPU benchmark of benchmarks/README.md, one after the other, into one folder.
#   bash benchmarks/run_cpu.sh [OUT_DIR]        (default: benchmarks/results/cpu-DATE)
# Takes about 75 minutes on 2 cores. Run it on a quiet machine: these figures are
# compared with same-run limits, but a neighbour's load still skews them.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results/cpu-$(date -u +%Y%m%d-%H%M)}"
mkdir -p "$out"
py="${PYTHON:-.venv/bin/python}"
run() { local name=$1; shift; echo "== $name: $*" | tee -a "$out/log.txt"; "$py" "$@" 2>>"$out/log.txt" | tee "$out/$name.txt"; }
run train_step benchmarks/train_step.py --json "$out/train_step.json"
run train_step_allocator benchmarks/train_step.py --crops 256 512 --batches 1 --precisions fp32 --allocator default \
    --json "$out/train_step_allocator.json"
run infer benchmarks/infer.py --json "$out/infer.json"
run extract benchmarks/extract_speed.py
run slide benchmarks/slide_memory.py --sizes 3072 --ngf 64 --blocks 9 --tile 1024 --batch 1 --compile
run cohort_throughput benchmarks/cohort_throughput.py --json "$out/cohort_throughput.json"
run background_seams benchmarks/background_seams.py --out "$out"


echo "results in $out"
