"""``tdkstain demo``: the main job end to end on data made on the spot (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HELP = "run the whole workflow on synthetic paired tissue: synth, check, extract, train, compare"

DESCRIPTION = """\
Runs the main job of tdkstain on a small paired dataset drawn on the spot
(no download), with the same commands you would use on real data:

  1. tdkstain synth    paired H&E / HER2 IHC tiles with known truth
  2. tdkstain check    validate the pairs
  3. tdkstain extract  DAB image, membrane mask, nuclei and density maps,
                       scored against the synthetic truth, quality report
  4. tdkstain train    TDKstain with the demo-cpu preset (a few minutes on
                       2 CPU cores; rerunning resumes)
  5. held-out L1 / PSNR / SSIM of the trained generator against the
     untrained generator and a mean-colour baseline

Every step is resumable: run it again and finished steps are skipped.

example:
  tdkstain demo --out demo_out
  tdkstain demo --out /tmp/quick --quick     # a minute: tiny data, 20 steps
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for everything (default: demo_out)")
    parser.add_argument("--pairs", type=int, default=48, help="synthetic pairs, 3/4 train, 1/4 test (default: 48)")
    parser.add_argument("--size", type=int, default=256, help="tile side in pixels (default: 256)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps (default: the demo-cpu preset's budget, train.max_steps)")
    parser.add_argument("--workers", type=int, default=2, help="extraction worker processes (default: 2)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke-test scale: 12 pairs of 128 px, 20 steps (overrides --pairs/--size/--steps)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _step(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def _synth_is_done(data: Path, pairs: int, size: int) -> bool:
    record = data / "synth.json"
    if not record.exists():
        return False
    saved = json.loads(record.read_text())
    return bool(saved.get("complete")) and saved.get("pairs") == pairs and saved.get("size") == size


def run(args: argparse.Namespace) -> int:
    from tdkstain.cli import main as tdkstain

    if args.quick:
        args.pairs, args.size, args.steps = 12, 128, 20
    out: Path = args.out
    data, run_dir = out / "data", out / "run"
    started = time.perf_counter()

    def call(*argv: str) -> None:
        code = tdkstain([str(a) for a in argv])
        if code not in (0, None):
            raise SystemExit(f"tdkstain demo: step `tdkstain {' '.join(map(str, argv))}` failed (exit {code})")

    _step("1/5 synthesize paired tissue")
    if _synth_is_done(data, args.pairs, args.size):
        print(f"already there: {data}")
    else:
        call("synth", data, "--pairs", args.pairs, "--size", args.size, "--seed", 0, "--force")

    _step("2/5 check the pairs")
    call("check", data, "--quiet")
    print("no problems found")

    _step("3/5 extract the domain knowledge (and score it against the truth)")
    call("extract", data, "--workers", args.workers, "--evaluate-against-truth")

    _step("4/5 train TDKstain (demo-cpu preset)")
    overrides = [f"train.max_steps={args.steps}"] if args.steps is not None else []
    if args.quick:
        overrides += ["train.checkpoint_every=10", "train.val_every=10", "data.val_pairs=3"]
    call("train", "--config", "demo-cpu", "--data", data, "--out", run_dir,
         *(["--no-progress"] if args.no_progress else []), *overrides)

    _step("5/5 held-out scores against two baselines")
    from tdkstain.atomic import write_text_atomic
    from tdkstain.training import baseline_scores, format_scores

    scores = baseline_scores(run_dir, data)
    print(format_scores(scores))
    write_text_atomic(out / "scores.json", json.dumps(scores, indent=2))
    trained = scores["trained"]
    beaten = [name for name in ("untrained", "mean_colour")
              if trained["l1"] < scores[name]["l1"] and trained["ssim"] > scores[name]["ssim"]]
    print(f"trained generator beats on L1 and SSIM: {', '.join(beaten) or 'neither baseline (train longer)'}")

    minutes = (time.perf_counter() - started) / 60
    print(f"\nDone in {minutes:.1f} min. Where things are:")
    for what, path in [
        ("paired tiles + truth", data),
        ("knowledge quality report", data / "extraction_report" / "index.html"),
        ("run folder (config, checkpoints, metrics.jsonl, TensorBoard)", run_dir),
        ("generator weights with model card", run_dir / "weights" / "generator.safetensors"),
        ("held-out scores", out / "scores.json"),
    ]:
        print(f"  {what:62s} {path}")
    print(f"  TensorBoard: tensorboard --logdir {run_dir}")
    return 0
