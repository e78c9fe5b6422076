"""``tdkstain demo``: the main job end to end on data made on the spot (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HELP = "run the whole workflow on synthetic paired tissue and real examples; write one HTML report"

DESCRIPTION = """\
Runs the main job of tdkstain on a small paired dataset drawn on the spot
(no download), with the same commands you would use on real data, and writes
OUT/report/index.html:

  1. tdkstain synth      paired H&E / HER2 IHC tiles with known truth
  2. tdkstain check      validate the pairs
  3. tdkstain extract    DAB, membrane masks, nuclei and density maps, scored
                         against the synthetic truth
  4. tdkstain train      TDKstain, demo-cpu preset (a few minutes on 2 cores)
  5. tdkstain translate  stain the held-out test tiles
  6. baselines           the untrained generator and a mean-colour guess
  7. tdkstain translate  stain a real H&E image (shipped example)
  8. tdkstain slide      stain a real SVS slide (shipped example) into a
                         pyramidal TIFF
  9. tdkstain evaluate   SSIM, PSNR, FID/KID, nuclei and membrane analyses
 10. report              one HTML page: PASS/FAIL against both baselines

Every step is resumable: run it again with the same --out and finished steps
are skipped.

example:
  tdkstain demo --out demo_out
  tdkstain demo --out /tmp/quick --quick     # about a minute: tiny data, 20 steps
"""

EXAMPLE_HE = "he_tiatoolbox_target_512.png"
EXAMPLE_SLIDE = "he_cmu_small_region.svs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for everything (default: demo_out)")
    parser.add_argument("--pairs", type=int, default=48, help="synthetic pairs, 3/4 train, 1/4 test (default: 48)")
    parser.add_argument("--size", type=int, default=256, help="tile side in pixels (default: 256)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps (default: the demo-cpu preset's budget, train.max_steps = 300)")
    parser.add_argument("--workers", type=int, default=2, help="extraction worker processes (default: 2)")
    parser.add_argument("--no-fid", action="store_true",
                        help="skip FID/KID in the evaluation (default: computed when the Inception network is "
                        "installed, about a second per tile on CPU)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke-test scale: 12 pairs of 128 px, 20 steps, the slide at 2 um/px, no FID "
                        "(overrides --pairs/--size/--steps)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _settings_key(args: argparse.Namespace) -> dict:
    return {"pairs": args.pairs, "size": args.size, "steps": args.steps, "quick": bool(args.quick)}


def run(args: argparse.Namespace) -> int:
    import importlib.resources
    import shlex
    from contextlib import ExitStack

    from tdkstain.atomic import write_text_atomic
    from tdkstain.cli import main as tdkstain
    from tdkstain.errors import TdkstainError

    if args.quick:
        args.pairs, args.size, args.steps = 12, 128, 20
    if args.pairs < 8 or args.size < 64:
        raise TdkstainError(f"--pairs must be >= 8 and --size >= 64 (got {args.pairs}, {args.size})")
    out: Path = args.out
    data, run_dir, virtual = out / "data", out / "run", out / "virtual"
    evaluation = out / "evaluation"
    record_path = out / "demo_steps.json"
    out.mkdir(parents=True, exist_ok=True)

    # Steps finished in an earlier run are skipped, but only if that run used the same
    # settings: otherwise later steps would reuse outputs of another dataset.
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    settings_key = _settings_key(args)
    if record and record.get("settings") != settings_key:
        raise TdkstainError(
            f"{out} holds a demo run with other settings ({record.get('settings')}, now {settings_key}): "
            "use another --out, or delete that folder to start again"
        )
    record = {"settings": settings_key, "steps": record.get("steps", {})}
    progress = ["--no-progress"] if args.no_progress else []
    steps: list[dict] = []
    started = time.perf_counter()

    def save_record() -> None:
        write_text_atomic(record_path, json.dumps(record, indent=1))

    def step(key: str, title: str, command: str, work, outputs: list[Path]) -> None:
        number = len(steps) + 1
        print(f"\n== {number}. {title} ==", flush=True)
        earlier = record["steps"].get(key)
        if earlier and all(p.exists() for p in outputs):
            print(f"done in an earlier run ({earlier['seconds']:.1f} s): skipped", flush=True)
            steps.append({"title": title, "command": command, "seconds": earlier["seconds"], "status": "done before"})
            return
        t0 = time.perf_counter()
        work()
        seconds = time.perf_counter() - t0
        record["steps"][key] = {"seconds": seconds}
        save_record()
        steps.append({"title": title, "command": command, "seconds": seconds, "status": "ran"})
        print(f"({seconds:.1f} s)", flush=True)

    def call(*argv: object) -> None:
        code = tdkstain([str(a) for a in argv])
        if code not in (0, None):
            raise TdkstainError(f"tdkstain demo: step `tdkstain {' '.join(map(str, argv))}` failed (exit {code})")

    def line(*argv: object) -> str:
        return "tdkstain " + " ".join(shlex.quote(str(a)) for a in argv)

    # ---- 1-4: data, knowledge, training
    synth_argv = ("synth", data, "--pairs", args.pairs, "--size", args.size, "--seed", 0, "--force")
    step("synth", "synthesize paired H&E / IHC tissue with known truth", line(*synth_argv),
         lambda: call(*synth_argv), [data / "synth.json"])
    check_argv = ("check", data, "--quiet")
    step("check", "check the pairs", line(*check_argv), lambda: call(*check_argv), [data / "synth.json"])
    extract_argv = ("extract", data, "--workers", args.workers, "--evaluate-against-truth")
    step("extract", "extract the domain knowledge (DAB, membrane, nuclei) and score it against the truth",
         line(*extract_argv), lambda: call(*extract_argv), [data / "extraction.json"])

    overrides = [f"train.max_steps={args.steps}"] if args.steps is not None else []
    if args.quick:
        overrides += ["train.checkpoint_every=10", "train.val_every=10", "data.val_pairs=3"]
    train_argv = ("train", "--config", "demo-cpu", "--data", data, "--out", run_dir, *progress, *overrides)
    weights = run_dir / "weights" / "generator.safetensors"
    step("train", "train TDKstain (demo-cpu preset)", line(*train_argv), lambda: call(*train_argv), [weights])

    # ---- 5-6: stain the test tiles; the two baselines
    test_he, test_ihc = data / "test_HE", data / "test_IHC"
    translate_argv = ("translate", "--checkpoint", run_dir, test_he, "--out", virtual / "TDKstain", *progress)
    step("translate", "stain the held-out test tiles", line(*translate_argv), lambda: call(*translate_argv),
         [virtual / "TDKstain"])

    def baselines() -> None:
        from tdkstain.config import read_run_config
        from tdkstain.data import AlignedTiles, split_pairs, tile_files
        from tdkstain.demo_report import write_constant_tiles
        from tdkstain.images import read_rgb, write_png
        from tdkstain.inference import Stainer
        from tdkstain.objective import create_objective
        from tdkstain.training import mean_ihc_colour

        cfg = read_run_config(run_dir / "config.yaml")
        # The generator as training started (same seed, same architecture): what training added.
        untrained = create_objective(cfg, 1).build_networks(cfg.train.seed)["generator"]
        stainer = Stainer(untrained, device="cpu")
        for he in sorted(test_he.glob("*.png")):
            target = virtual / "untrained" / he.name
            if not target.is_file():
                write_png(target, stainer.stain_image(read_rgb(he)))
        train_pairs, _ = split_pairs(data, cfg.data.train_split, cfg.data.val_split, 1)
        colour = mean_ihc_colour(AlignedTiles(tile_files(data, train_pairs, membrane=False, nuclei=False), None,
                                              flip=False, seed=0))
        write_constant_tiles(test_he, virtual / "mean-colour", colour)
        print(f"untrained generator -> {virtual / 'untrained'}; mean IHC colour {colour.tolist()} -> "
              f"{virtual / 'mean-colour'}")

    step("baselines", "the two baselines on the same tiles: untrained generator, mean IHC colour",
         "tdkstain.demo (Python: the step-0 generator; the training tiles' mean IHC colour)", baselines,
         [virtual / "untrained", virtual / "mean-colour"])

    # ---- 7-8: real H&E examples shipped in the package
    examples = importlib.resources.files("tdkstain") / "examples"
    real_dir, slide_dir = out / "real_he", out / "slide"
    stained_he = real_dir / Path(EXAMPLE_HE).with_suffix(".png").name
    slide_tif = slide_dir / (Path(EXAMPLE_SLIDE).stem + ".tif")
    slide_thumb = slide_tif.with_suffix(".thumbnail.png")
    he_thumb = slide_dir / (Path(EXAMPLE_SLIDE).stem + ".he_thumbnail.png")
    synth_record = json.loads((data / "synth.json").read_text())
    model_mpp = float(synth_record.get("mpp", {}).get("default", 0.5))
    # --quick stains the slide at 4x coarser resolution: 4 tiles instead of 29, to keep the test short.
    slide_mpp = 2.0 if args.quick else model_mpp
    with ExitStack() as stack:
        example_he = stack.enter_context(importlib.resources.as_file(examples / EXAMPLE_HE))
        example_slide = stack.enter_context(importlib.resources.as_file(examples / EXAMPLE_SLIDE))
        real_argv = ("translate", "--checkpoint", run_dir, example_he, "--out", real_dir, *progress)
        step("real_he", "stain a real H&E image (tiatoolbox sample, shipped in tdkstain/examples)",
             line("translate", "--checkpoint", run_dir, EXAMPLE_HE, "--out", real_dir),
             lambda: call(*real_argv), [stained_he])

        slide_argv = ("slide", "--checkpoint", run_dir, example_slide, "--out", slide_tif, "--mpp", slide_mpp,
                      *progress)

        def stain_slide() -> None:
            from tdkstain.images import write_png
            from tdkstain.slides.reader import Slide, read_thumbnail

            call(*slide_argv)
            write_png(he_thumb, read_thumbnail(Slide(example_slide), 1024))

        step("slide", "stain a real H&E slide (Aperio SVS, a region of CMU-1) into a pyramidal TIFF",
             line("slide", "--checkpoint", run_dir, EXAMPLE_SLIDE, "--out", slide_tif, "--mpp", slide_mpp),
             stain_slide, [slide_tif, slide_thumb, he_thumb])

    # ---- 9: evaluation
    fid = ["--no-fid"] if (args.no_fid or args.quick) else []
    evaluate_argv = ("evaluate", "--real", test_ihc, "--fake", virtual / "TDKstain", "--name", "TDKstain",
                     "--compare", f"untrained={virtual / 'untrained'}",
                     "--compare", f"mean-colour={virtual / 'mean-colour'}",
                     "--he", test_he, "--out", evaluation, "--grid-tiles", 1, "--no-perceptual", *fid)
    step("evaluate", "evaluate against the real test IHC (image metrics, nuclei and membrane analyses)",
         line(*evaluate_argv), lambda: call(*evaluate_argv), [evaluation / "metrics.json", evaluation / "index.html"])

    # ---- 10: scores and report (always rebuilt: a few seconds)
    from tdkstain.demo_report import METHOD_NAMES, DemoFacts, beats_baselines, tile_scores, write_report

    print(f"\n== {len(steps) + 1}. held-out scores and the report ==", flush=True)
    t0 = time.perf_counter()
    scores = {name: tile_scores(test_ihc, virtual / name) for name in METHOD_NAMES}
    write_text_atomic(out / "scores.json", json.dumps(scores, indent=2))
    print(f"{'':12s} {'L1':>8s} {'PSNR':>8s} {'SSIM':>8s}")
    for name, s in scores.items():
        print(f"{name:12s} {s['l1']:8.4f} {s['psnr']:8.2f} {s['ssim']:8.4f}")
    passed, failures = beats_baselines(scores)
    print("PASS: the trained generator beats both baselines on L1 and SSIM" if passed
          else "FAIL: " + "; ".join(failures))
    steps.append({"title": "score the test tiles and write this report", "command": "tdkstain.demo_report",
                  "seconds": None, "status": "ran"})
    from tdkstain.config import read_run_config

    cfg = read_run_config(run_dir / "config.yaml")
    settings = {
        "synthetic pairs (train + test)": f"{args.pairs} ({synth_record.get('test_fraction', 0.25):.0%} test)",
        "tile side": f"{args.size} px at {model_mpp} um/px",
        "preset": "demo-cpu" + (" (--quick overrides)" if args.quick else ""),
        "training steps": cfg.train.max_steps,
        "generator": f"pix2pixHD global, ngf {cfg.model.ngf}, {cfg.model.n_blocks} residual blocks",
        "loss weights (GAN, L1, membrane, nuclei, estimator)":
            f"1, {cfg.loss.l1}, {cfg.loss.membrane}, {cfg.loss.nuclei}, {cfg.loss.estimator}",
        "crop, batch": f"{cfg.data.crop}, {cfg.data.batch}",
        "device, threads": f"{cfg.train.device}, {cfg.train.threads}",
        "slide staining resolution": f"{slide_mpp} um/px",
        "FID/KID": "skipped" if fid else "computed if the Inception network is installed",
    }
    facts = DemoFacts(out=out, settings=settings, steps=steps, scores=scores,
                      real_he=(examples_copy(out, EXAMPLE_HE), stained_he), slide=(he_thumb, slide_thumb, slide_tif),
                      total_seconds=time.perf_counter() - started)
    steps[-1]["seconds"] = time.perf_counter() - t0  # scoring; the page itself takes well under a second
    report = write_report(facts)

    minutes = (time.perf_counter() - started) / 60
    print(f"\nDone in {minutes:.1f} min. Where things are:")
    for what, path in [
        ("paired tiles + truth", data),
        ("knowledge quality report", data / "extraction_report" / "index.html"),
        ("run folder (config, checkpoints, metrics.jsonl, TensorBoard)", run_dir),
        ("virtual IHC of the test tiles (and of the baselines)", virtual),
        ("stained slide (pyramidal TIFF)", slide_tif),
        ("evaluation report", evaluation / "index.html"),
    ]:
        print(f"  {what:62s} {path}")
    print(f"\nReport: {report.resolve()}")
    return 0 if passed or args.quick else 1


def examples_copy(out: Path, name: str) -> Path:
    """A copy of the packaged example ``name`` under ``out/real_he/input/`` (the report shows it beside its stain)."""
    import importlib.resources
    import shutil

    target = out / "real_he" / "input" / name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with importlib.resources.as_file(importlib.resources.files("tdkstain") / "examples" / name) as source:
            shutil.copyfile(source, target)
    return target
