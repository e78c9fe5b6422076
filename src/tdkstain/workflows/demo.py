"""``tdkstain demo``: the main job end to end on data made on the spot, as named, resumable steps.

Each step is the command a user would type (run through ``tdkstain.cli.main``),
recorded in ``OUT/demo_steps.json`` when it finishes, so a rerun with the
same settings skips what is done. :func:`run_demo` reads top to bottom:
data, training, staining, evaluation, report.
"""

from __future__ import annotations

import importlib.resources
import json
import shlex
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tdkstain.plumbing.atomic import write_text_atomic
from tdkstain.plumbing.errors import TdkstainError

__all__ = ["DemoSettings", "run_demo", "EXAMPLE_HE", "EXAMPLE_SLIDE", "examples_copy"]

# The demo's tissue: the H&E shows the HER2 level clearly enough for a small model to learn it in
# minutes (tdkstain synth --her2-cue; docs/synth.md), and the sections are aligned, so that the
# generated tiles can be measured against the synthetic truth pixel by pixel (evaluation.truth).
DEMO_HER2_CUE = 3.0
DEMO_MISREGISTER = 0.0

EXAMPLE_HE = "he_tiatoolbox_target_512.png"
EXAMPLE_SLIDE = "he_cmu_small_region.svs"


@dataclass
class DemoSettings:
    out: Path
    pairs: int = 48
    size: int = 512  # 512 px tiles hold enough tumour cells for every score to be scorable (docs/her2_scoring.md)
    steps: int | None = None
    her2_cue: float = DEMO_HER2_CUE
    workers: int = 2
    no_fid: bool = False
    quick: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.quick:
            self.pairs, self.size, self.steps = 12, 128, 20
        if self.pairs < 8 or self.size < 64:
            raise TdkstainError(f"--pairs must be >= 8 and --size >= 64 (got {self.pairs}, {self.size})")

    def key(self) -> dict:
        """What an earlier run must have used for its finished steps to be reused."""
        return {"pairs": self.pairs, "size": self.size, "steps": self.steps, "quick": bool(self.quick),
                "her2_cue": self.her2_cue, "misregister": DEMO_MISREGISTER}


@dataclass
class Paths:
    out: Path

    def __post_init__(self) -> None:
        self.data, self.run_dir, self.virtual = self.out / "data", self.out / "run", self.out / "virtual"
        self.evaluation = self.out / "evaluation"
        self.test_he, self.test_ihc = self.data / "test_HE", self.data / "test_IHC"
        self.real_dir, self.slide_dir = self.out / "real_he", self.out / "slide"
        self.stained_he = self.real_dir / Path(EXAMPLE_HE).with_suffix(".png").name
        self.slide_tif = self.slide_dir / (Path(EXAMPLE_SLIDE).stem + ".tif")
        self.slide_thumb = self.slide_tif.with_suffix(".thumbnail.png")
        self.he_thumb = self.slide_dir / (Path(EXAMPLE_SLIDE).stem + ".he_thumbnail.png")


@dataclass
class Steps:
    """Runs the demo's steps, skipping those an earlier run with the same settings finished."""

    out: Path
    settings_key: dict
    done: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.record_path = self.out / "demo_steps.json"
        self.out.mkdir(parents=True, exist_ok=True)
        # Steps finished in an earlier run are skipped, but only if that run used the same
        # settings: otherwise later steps would reuse outputs of another dataset.
        record = json.loads(self.record_path.read_text()) if self.record_path.is_file() else {}
        if record and record.get("settings") != self.settings_key:
            raise TdkstainError(
                f"{self.out} holds a demo run with other settings ({record.get('settings')}, now {self.settings_key}): "
                "use another --out, or delete that folder to start again"
            )
        self.record = {"settings": self.settings_key, "steps": record.get("steps", {})}

    def run(self, key: str, title: str, command: str, work: Callable[[], None], outputs: list[Path]) -> None:
        print(f"\n== {len(self.done) + 1}. {title} ==", flush=True)
        earlier = self.record["steps"].get(key)
        if earlier and all(p.exists() for p in outputs):
            print(f"done in an earlier run ({earlier['seconds']:.1f} s): skipped", flush=True)
            self.done.append({"title": title, "command": command, "seconds": earlier["seconds"], "status": "done before"})
            return
        t0 = time.perf_counter()
        work()
        seconds = time.perf_counter() - t0
        self.record["steps"][key] = {"seconds": seconds}
        write_text_atomic(self.record_path, json.dumps(self.record, indent=1))
        self.done.append({"title": title, "command": command, "seconds": seconds, "status": "ran"})
        print(f"({seconds:.1f} s)", flush=True)

    def command(self, key: str, title: str, argv: tuple, outputs: list[Path], shown: tuple | None = None) -> None:
        """A step that is one ``tdkstain`` command (``shown``: how the report prints it, if not ``argv``)."""
        self.run(key, title, line(*(shown or argv)), lambda: call(*argv), outputs)


def call(*argv: object) -> None:
    from tdkstain.cli import main as tdkstain

    code = tdkstain([str(a) for a in argv])
    if code not in (0, None):
        raise TdkstainError(f"tdkstain demo: step `tdkstain {' '.join(map(str, argv))}` failed (exit {code})")


def line(*argv: object) -> str:
    return "tdkstain " + " ".join(shlex.quote(str(a)) for a in argv)


def run_demo(settings: DemoSettings) -> int:
    """The whole demo; returns the exit status (1 when the trained model does not pass)."""
    started = time.perf_counter()
    paths = Paths(settings.out)
    steps = Steps(settings.out, settings.key())
    progress = () if settings.progress else ("--no-progress",)
    prepare_data(steps, paths, settings)
    train_model(steps, paths, settings, progress)
    stain_test_tiles(steps, paths, progress)
    model_mpp, slide_mpp = stain_real_examples(steps, paths, settings, progress)
    no_fid = settings.no_fid or settings.quick
    evaluate_tiles(steps, paths, no_fid)
    measure_against_truth(steps, paths)
    return report(steps, paths, settings, model_mpp, slide_mpp, no_fid, started)


def prepare_data(steps: Steps, paths: Paths, settings: DemoSettings) -> None:
    """Steps 1-3: synthetic pairs with known truth, checked, and their knowledge extracted and scored."""
    synth_argv = ("synth", paths.data, "--pairs", settings.pairs, "--size", settings.size, "--seed", 0,
                  "--her2-cue", settings.her2_cue, "--misregister", DEMO_MISREGISTER, "--force")
    steps.command("synth", "synthesize paired H&E / IHC tissue with known truth", synth_argv, [paths.data / "synth.json"])
    steps.command("check", "check the pairs", ("check", paths.data, "--quiet"), [paths.data / "synth.json"])
    steps.command("extract", "extract the domain knowledge (DAB, membrane, nuclei) and score it against the truth",
                  ("extract", paths.data, "--workers", settings.workers, "--evaluate-against-truth"),
                  [paths.data / "extraction.json"])


def train_model(steps: Steps, paths: Paths, settings: DemoSettings, progress: tuple) -> None:
    """Step 4: TDKstain, the demo-cpu preset."""
    overrides = schedule_for(paths, settings.steps) if settings.steps is not None else []
    if settings.quick:
        overrides += ["train.checkpoint_every=10", "train.val_every=10", "data.val_pairs=3"]
    argv = ("train", "--config", "demo-cpu", "--data", paths.data, "--out", paths.run_dir, *progress, *overrides)
    steps.command("train", "train TDKstain (demo-cpu preset)", argv, [paths.run_dir / "weights" / "generator.safetensors"])


def schedule_for(paths: Paths, steps: int) -> list[str]:
    """``--steps N``: the demo-cpu schedule stretched over N steps on the demo's training pairs."""
    from tdkstain.data.tiles import split_pairs
    from tdkstain.training.config import load_config, schedule_over_steps

    cfg = load_config("demo-cpu", values={"data.root": str(paths.data)})
    train, _ = split_pairs(paths.data, cfg.data.train_split, cfg.data.val_split, cfg.data.val_pairs)
    return schedule_over_steps(cfg, len(train), steps)


def stain_test_tiles(steps: Steps, paths: Paths, progress: tuple) -> None:
    """Steps 5-6: the held-out tiles stained by the trained model, and by the two references."""
    argv = ("translate", "--checkpoint", paths.run_dir, paths.test_he, "--out", paths.virtual / "TDKstain", *progress)
    steps.command("translate", "stain the held-out test tiles", argv, [paths.virtual / "TDKstain"])
    steps.run("baselines", "the two baselines on the same tiles: untrained generator, mean IHC colour",
              "tdkstain.workflows.demo (Python: the step-0 generator; the training tiles' mean IHC colour)",
              lambda: stain_with_references(paths), [paths.virtual / "untrained", paths.virtual / "mean-colour"])


def stain_with_references(paths: Paths) -> None:
    from tdkstain.data.images import read_rgb, write_png
    from tdkstain.data.tiles import AlignedTiles, split_pairs, tile_files
    from tdkstain.evaluation.validation import mean_ihc_colour
    from tdkstain.inference import Stainer
    from tdkstain.methods import create_method
    from tdkstain.training.config import read_run_config
    from tdkstain.workflows.demo_report import write_constant_tiles

    cfg = read_run_config(paths.run_dir / "config.yaml")
    # The generator as training started (same seed, same architecture): what training added.
    untrained = create_method(cfg, 1).build_networks(cfg.train.seed)["generator"]
    stainer = Stainer(untrained, device="cpu")
    for he in sorted(paths.test_he.glob("*.png")):
        target = paths.virtual / "untrained" / he.name
        if not target.is_file():
            write_png(target, stainer.stain_image(read_rgb(he)))
    train_pairs, _ = split_pairs(paths.data, cfg.data.train_split, cfg.data.val_split, 1)
    colour = mean_ihc_colour(AlignedTiles(tile_files(paths.data, train_pairs, membrane=False, nuclei=False), None,
                                          flip=False, seed=0))
    write_constant_tiles(paths.test_he, paths.virtual / "mean-colour", colour)
    print(f"untrained generator -> {paths.virtual / 'untrained'}; mean IHC colour {colour.tolist()} -> "
          f"{paths.virtual / 'mean-colour'}")


def stain_real_examples(steps: Steps, paths: Paths, settings: DemoSettings, progress: tuple) -> tuple[float, float]:
    """Steps 7-8: a real H&E image and a real slide shipped in the package. Returns (model mpp, slide mpp)."""
    examples = importlib.resources.files("tdkstain") / "examples"
    synth_record = json.loads((paths.data / "synth.json").read_text())
    model_mpp = float(synth_record.get("mpp", {}).get("default", 0.5))
    # --quick stains the slide at 4x coarser resolution: 4 tiles instead of 29, to keep the test short.
    slide_mpp = 2.0 if settings.quick else model_mpp
    with ExitStack() as stack:
        example_he = stack.enter_context(importlib.resources.as_file(examples / EXAMPLE_HE))
        example_slide = stack.enter_context(importlib.resources.as_file(examples / EXAMPLE_SLIDE))
        steps.command("real_he", "stain a real H&E image (tiatoolbox sample, shipped in tdkstain/examples)",
                      ("translate", "--checkpoint", paths.run_dir, example_he, "--out", paths.real_dir, *progress),
                      [paths.stained_he], shown=("translate", "--checkpoint", paths.run_dir, EXAMPLE_HE, "--out", paths.real_dir))
        slide_argv = ("slide", "--checkpoint", paths.run_dir, example_slide, "--out", paths.slide_tif, "--mpp", slide_mpp, *progress)

        def stain_slide() -> None:
            from tdkstain.data.images import write_png
            from tdkstain.slides.reader import Slide, read_thumbnail

            call(*slide_argv)
            write_png(paths.he_thumb, read_thumbnail(Slide(example_slide), 1024))

        steps.run("slide", "stain a real H&E slide (Aperio SVS, a region of CMU-1) into a pyramidal TIFF",
                  line("slide", "--checkpoint", paths.run_dir, EXAMPLE_SLIDE, "--out", paths.slide_tif, "--mpp", slide_mpp),
                  stain_slide, [paths.slide_tif, paths.slide_thumb, paths.he_thumb])
    return model_mpp, slide_mpp


def evaluate_tiles(steps: Steps, paths: Paths, no_fid: bool) -> None:
    """Step 9: everything against the real test IHC."""
    virtual = paths.virtual
    argv = ("evaluate", "--real", paths.test_ihc, "--fake", virtual / "TDKstain", "--name", "TDKstain",
            "--compare", f"untrained={virtual / 'untrained'}", "--compare", f"mean-colour={virtual / 'mean-colour'}",
            "--he", paths.test_he, "--out", paths.evaluation, "--grid-tiles", 1, "--no-perceptual",
            *(["--no-fid"] if no_fid else []))
    steps.command("evaluate", "evaluate against the real test IHC (image metrics, nuclei and membrane analyses)", argv,
                  [paths.evaluation / "metrics.json", paths.evaluation / "index.html"])


def measure_against_truth(steps: Steps, paths: Paths) -> None:
    """Step 10: every method's test tiles against the synthetic truth (membranes, nuclei, HER2): ``truth.json``."""
    steps.run("truth", "measure membranes, nuclei and HER2 against the synthetic truth",
              "tdkstain.evaluation.truth (Python: the measures of the ablation study, per method)",
              lambda: write_truth_measures(paths), [paths.out / "truth.json"])


def write_truth_measures(paths: Paths) -> None:
    from tdkstain.data.images import read_rgb
    from tdkstain.evaluation.truth import TruthParams, check_truth_dataset, prepare_real, read_truth, run_values, truth_measures
    from tdkstain.plumbing.jsonsafe import json_safe
    from tdkstain.workflows.demo_report import METHOD_NAMES

    check_truth_dataset(paths.data)
    params = TruthParams.for_dataset(paths.data)
    stems = sorted(p.stem for p in paths.test_he.glob("*.png"))
    truths = {stem: read_truth(paths.data / "test_truth", stem) for stem in stems}
    reals = {stem: prepare_real(read_rgb(paths.test_ihc / f"{stem}.png"), truths[stem], params) for stem in stems}
    document = {"params": params.to_dict(), "methods": {}}
    for name in METHOD_NAMES:
        rows = [{"stem": stem, **truth_measures(read_rgb(paths.virtual / name / f"{stem}.png"), reals[stem], truths[stem],
                                                params)} for stem in stems]
        document["methods"][name] = {"summary": run_values(rows), "tiles": rows}
    write_text_atomic(paths.out / "truth.json", json.dumps(json_safe(document), indent=1))


def report(steps: Steps, paths: Paths, settings: DemoSettings, model_mpp: float, slide_mpp: float, no_fid: bool,
           started: float) -> int:
    """Step 10: held-out scores, PASS/FAIL and the report (always rebuilt: a few seconds)."""
    from tdkstain.training.config import read_run_config
    from tdkstain.workflows.demo_report import METHOD_NAMES, DemoFacts, beats_baselines, tile_scores, write_report

    print(f"\n== {len(steps.done) + 1}. held-out scores and the report ==", flush=True)
    t0 = time.perf_counter()
    scores = {name: tile_scores(paths.test_ihc, paths.virtual / name) for name in METHOD_NAMES}
    write_text_atomic(settings.out / "scores.json", json.dumps(scores, indent=2))
    truth = {name: m["summary"] for name, m in json.loads((paths.out / "truth.json").read_text())["methods"].items()}
    print(f"{'':12s} {'L1':>8s} {'PSNR':>8s} {'SSIM':>8s} {'mem. IoU':>9s} {'HER2 k':>8s}")
    for name, s in scores.items():
        v = truth[name]["values"]
        print(f"{name:12s} {s['l1']:8.4f} {s['psnr']:8.2f} {s['ssim']:8.4f} {_number(v['membrane_iou']):>9s} "
              f"{_number(v['her2_kappa_real']):>8s}")
    passed, failures = beats_baselines(scores, truth)
    print("PASS: the trained generator beats both baselines on L1, SSIM, stained-membrane IoU and HER2 kappa"
          if passed else "FAIL: " + "; ".join(failures))
    steps.done.append({"title": "score the test tiles and write this report", "command": "tdkstain.workflows.demo_report",
                       "seconds": None, "status": "ran"})
    cfg = read_run_config(paths.run_dir / "config.yaml")
    synth_record = json.loads((paths.data / "synth.json").read_text())
    shown = {
        "synthetic pairs (train + test)": f"{settings.pairs} ({synth_record.get('test_fraction', 0.25):.0%} test)",
        "tile side": f"{settings.size} px at {model_mpp} um/px",
        "H&E cue of the HER2 level (tdkstain synth --her2-cue)": f"{settings.her2_cue:g} (docs/synth.md)",
        "misregistration of the IHC section": f"{DEMO_MISREGISTER:g} px (aligned: truth measured pixel by pixel)",
        "preset": "demo-cpu" + (" (--quick overrides)" if settings.quick else ""),
        "training steps": _trained_steps(paths.run_dir),
        "generator": f"pix2pixHD global, ngf {cfg.model.ngf}, {cfg.model.n_blocks} residual blocks",
        "loss weights (GAN, L1, membrane, nuclei, estimator)":
            f"1, {cfg.loss.l1}, {cfg.loss.membrane}, {cfg.loss.nuclei}, {cfg.loss.estimator}",
        "crop, batch": f"{cfg.data.crop}, {cfg.data.batch}",
        "device, threads": f"{cfg.train.device}, {cfg.train.threads}",
        "slide staining resolution": f"{slide_mpp} um/px",
        "FID/KID": "skipped" if no_fid else "computed if the Inception network is installed",
    }
    facts = DemoFacts(out=settings.out, settings=shown, steps=steps.done, scores=scores, truth=truth,
                      real_he=(examples_copy(settings.out, EXAMPLE_HE), paths.stained_he),
                      slide=(paths.he_thumb, paths.slide_thumb, paths.slide_tif), total_seconds=time.perf_counter() - started)
    steps.done[-1]["seconds"] = time.perf_counter() - t0  # scoring; the page itself takes well under a second
    page = write_report(facts)
    print(f"\nDone in {(time.perf_counter() - started) / 60:.1f} min. Where things are:")
    for what, path in [
        ("paired tiles + truth", paths.data),
        ("knowledge quality report", paths.data / "extraction_report" / "index.html"),
        ("run folder (config, checkpoints, metrics.jsonl, TensorBoard)", paths.run_dir),
        ("virtual IHC of the test tiles (and of the baselines)", paths.virtual),
        ("stained slide (pyramidal TIFF)", paths.slide_tif),
        ("evaluation report", paths.evaluation / "index.html"),
    ]:
        print(f"  {what:62s} {path}")
    print(f"\nReport: {page.resolve()}")
    return 0 if passed or settings.quick else 1


def _trained_steps(run_dir: Path) -> int | str:
    """The last step recorded in the run's metrics.jsonl (the schedule's end, or the --steps budget)."""
    path = run_dir / "metrics.jsonl"
    last = None
    if path.is_file():
        for line_text in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                last = json.loads(line_text).get("step", last)
            except ValueError:
                continue
    return last if last is not None else "n/a"


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def examples_copy(out: Path, name: str) -> Path:
    """A copy of the packaged example ``name`` under ``out/real_he/input/`` (the report shows it beside its stain)."""
    import shutil

    target = out / "real_he" / "input" / name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with importlib.resources.as_file(importlib.resources.files("tdkstain") / "examples" / name) as source:
            shutil.copyfile(source, target)
    return target
