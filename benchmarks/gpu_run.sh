#!/usr/bin/env bash
# Every GPU case of issue 8 in one device-tool call (benchmarks/gpu_all.py; see benchmarks/README.md, "GPU").
#
# The exact call of the device tool, from the repository root (wheels in the git-ignored .whl/ travel with it):
#
#     run(command="bash benchmarks/gpu_run.sh", carry=[".whl"], timeout_s=560)
#
# .whl/ holds Python 3.12 (cp312 / abi3) wheels of what the device machine lacks: pydantic, pydantic_core, annotated_types,
# typing_inspection (tdkstain's config), openslide-python + openslide-bin (slide reader) and imagecodecs
# (JPEG in tifffile, for the synthetic slide and the stained output). Without them the slide case reports
# the missing reader and the rest still runs.
#
# On the device: installs those wheels into $SITE (default /tmp/site), records nvidia-smi, then runs
# gpu_all.py with a 450 s budget (BUDGET_S to change; arguments after the script's name go to
# gpu_all.py, e.g. `bash benchmarks/gpu_run.sh --only slide`), writing into $OUT:
#   gpu_table.md      the table (markdown), rewritten after every case
#   gpu_results.json  every figure, the environment (GPU, torch, CUDA, cuDNN, commit, packages)
#   gpu_log.txt       the workers' stderr (tracebacks of failed cases)
#   gpu_console.txt   this script's console output
#   nvidia_smi.txt    nvidia-smi before the run
# Wall: about 8 minutes at most (budget 450 s + 15 s grace + wheel install and start-up), so
# timeout_s=560 leaves the tool's 600 s limit unreached; the device lease (15 min) also pays the machine's start.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_out}"
SITE="${SITE:-/tmp/site}"
mkdir -p "$OUT"
{ date -u; nvidia-smi 2>&1 || echo "nvidia-smi unavailable"; } > "$OUT/nvidia_smi.txt"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        || echo "gpu_run.sh: installing .whl/*.whl failed; cases that need them will report it" >&2
    export PYTHONPATH="src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "gpu_run.sh: no .whl/ wheels carried (carry: [\".whl\"]); pydantic may be missing" >&2
    export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
python3 benchmarks/gpu_all.py --out "$OUT" --budget-s "${BUDGET_S:-450}" "$@" 2>&1 | tee "$OUT/gpu_console.txt"
exit "${PIPESTATUS[0]}"
