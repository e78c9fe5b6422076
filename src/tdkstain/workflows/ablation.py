"""``tdkstain benchmark --study ablation``: TDKstain and its ablations, several seeds each, against synthetic truth.

Every (variant, seed) trains on the same split of a ``tdkstain synth`` dataset
drawn with ``--misregister 0``, from one base preset (``demo-cpu`` by default)
whose loss weights are replaced by the variant's (the ``loss:`` section of
``configs/tdkstain-no-membrane.yaml`` etc.), so the variants differ from
TDKstain only in those weights and the runs of one variant only in
``train.seed``. Each run's test tiles are measured against the truth
(:mod:`tdkstain.evaluation.truth`), then aggregated: per variant the mean
over seeds of each run's value with a t confidence interval, paired
differences to TDKstain (paired t-test over seeds, the primary test, Holm
within each measure; Wilcoxon signed-rank over tiles, secondary), HER2
kappa against the true score and the real IHC's reading. docs/ablation.md
states the design and every definition. Files::

    OUT/ablation.json                  the resume record: settings, the runs asked for, timings
    OUT/data/                          the study's own data (without --data): tdkstain synth + extract
    OUT/runs/VARIANT_seedS/            training run folders (checkpoints: an interrupted run resumes)
    OUT/generated/VARIANT_seedS/       generated test tiles; .done written last
    OUT/measures/VARIANT_seedS.json    per-tile measures (reused while the tiles and settings are the same)
    OUT/study.json                     everything, with definitions
    OUT/table.md, OUT/table.csv        per variant: mean [95 % CI]; differences to TDKstain with p-values
    OUT/figures/*.png                  Fig. 3 style truth figure, paired differences, example tiles
    OUT/index.html                     the report

Rerunning the same command resumes; other settings in an existing OUT are
refused, except more seeds or variants.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import math
import shlex
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tdkstain.plumbing.atomic import write_text_atomic
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.plumbing.jsonsafe import json_safe
from tdkstain.evaluation.truth import BY_HER2, METRICS, finite_values, her2_kappa, mean_of, run_values, tile_values

__all__ = [
    "METRICS",
    "StudySettings",
    "holm",
    "paired_difference",
    "parse_seeds",
    "parse_variants",
    "run_ablation",
    "t_interval",
    "wilcoxon_tiles",
]

# ----------------------------------------------------------------------------- the study's defaults (one place)

DATA_PAIRS = 64  # synthetic pairs drawn without --data: 48 train, 16 test
DATA_SIZE = 512  # px: enough tumour cells per test tile for every HER2 score to be scorable (as the demo)
DATA_HER2_CUE = 3.0  # tdkstain synth --her2-cue: a cue of the score a small model can learn from the H&E
DATA_MISREGISTER = 0.0  # required: the truth's frame must be the H&E's (evaluation.truth)
DATA_TEST_FRACTION = 0.25
DATA_SEED = 0
DEFAULT_STEPS = 900  # per run, the demo's budget: with fewer, the small generator draws no membranes yet (docs/synth.md)
DEFAULT_JOBS = 1  # runs trained at once (--jobs); each run trains on train.threads (1 in demo-cpu) threads
DEFAULT_SEEDS = (0, 1, 2)
BASE_PRESET = "demo-cpu"  # every variant: this preset with the variant's loss weights
VARIANTS = ("tdkstain", "tdkstain-no-membrane", "tdkstain-no-nuclei", "tdkstain-no-both")
REFERENCE = "tdkstain"  # paired differences are variant - this
CONFIDENCE = 0.95

RECORD = "ablation.json"
MEASURES_VERSION = 1
LOG_PREFIX = "ablation"


# ----------------------------------------------------------------------------- settings


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``; non-negative, distinct integers."""
    seeds = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        if not part.isdigit():
            raise TdkstainError(f"--seeds: {part!r} is not a non-negative integer (e.g. --seeds 0,1,2)")
        seeds.append(int(part))
    return tuple(seeds)


def parse_variants(text: str) -> tuple[str, ...]:
    """``"tdkstain,tdkstain-no-membrane"`` -> a tuple of names (checked by :class:`StudySettings`)."""
    return tuple(p.strip() for p in str(text).split(",") if p.strip())


@dataclass
class StudySettings:
    """Every setting of one ablation study (see the module docstring); the defaults are the module constants."""

    out: Path
    data: Path | None = None  # None: draw DATA_PAIRS pairs into OUT/data
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    variants: tuple[str, ...] = VARIANTS
    steps: int = DEFAULT_STEPS
    base: str = BASE_PRESET
    overrides: tuple[str, ...] = ()  # KEY=VALUE for every run
    pairs: int = DATA_PAIRS
    size: int = DATA_SIZE
    her2_cue: float = DATA_HER2_CUE
    test_fraction: float = DATA_TEST_FRACTION
    device: str = "auto"  # where the generators translate the test tiles
    workers: int = 1  # extraction processes
    jobs: int = DEFAULT_JOBS  # runs trained at once, each in its own process
    progress: bool = True

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.data = None if self.data is None else Path(self.data)
        self.seeds, self.variants, self.overrides = tuple(self.seeds), tuple(self.variants), tuple(self.overrides)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(
                not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in self.seeds):
            raise TdkstainError(f"--seeds: give distinct non-negative integers, e.g. 0,1,2 (got {list(self.seeds)})")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise TdkstainError(f"--variants: unknown {', '.join(unknown)}; the study's variants: {', '.join(VARIANTS)}")
        if len(set(self.variants)) != len(self.variants):
            raise TdkstainError(f"--variants: a variant is given twice ({', '.join(self.variants)})")
        if REFERENCE not in self.variants:
            raise TdkstainError(f"--variants must include {REFERENCE}: every ablation is compared with it")
        self.variants = tuple(v for v in VARIANTS if v in self.variants)  # reports in one order, TDKstain first
        if not isinstance(self.jobs, int) or isinstance(self.jobs, bool) or not 1 <= self.jobs <= 64:
            raise TdkstainError(f"--jobs must be a number of runs to train at once, 1 to 64, got {self.jobs!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise TdkstainError(f"--steps must be a positive number of training steps, got {self.steps!r}")
        for text in self.overrides:
            if ":" in text.partition("=")[0]:
                raise TdkstainError(f"override {text!r}: the ablation study applies overrides to every variant alike "
                                    "(per-variant settings would make the comparison unfair); write KEY=VALUE")

    def data_key(self) -> dict[str, Any]:
        if self.data is not None:
            return {"root": str(self.data.resolve())}
        return {"synth": {"pairs": self.pairs, "size": self.size, "seed": DATA_SEED, "misregister": DATA_MISREGISTER,
                          "her2_cue": self.her2_cue, "test_fraction": self.test_fraction}}

    def key(self) -> dict[str, Any]:
        """What an existing OUT must have been made with (seeds and variants may be added)."""
        return {"data": self.data_key(), "steps": self.steps, "base": self.base, "overrides": list(self.overrides)}

    def command(self) -> str:
        """The command line that makes (and resumes) this study."""
        argv = ["benchmark", "--study", "ablation", "--out", str(self.out)]
        if self.data is not None:
            argv += ["--data", str(self.data)]
        argv += ["--seeds", ",".join(map(str, self.seeds)), "--variants", ",".join(self.variants),
                 "--steps", str(self.steps)]
        if self.base != BASE_PRESET:
            argv += ["--base-config", self.base]
        return "tdkstain " + shlex.join(argv + list(self.overrides))


class StudyRecord:
    """``OUT/ablation.json``: the settings key, every seed and variant asked for so far, data steps, run timings."""

    def __init__(self, settings: StudySettings) -> None:
        self.path = settings.out / RECORD
        key = json.loads(json.dumps(settings.key()))
        record: dict[str, Any] = {}
        if self.path.is_file():
            try:
                record = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise TdkstainError(f"{self.path}: unreadable ({err}); delete it to start the study again") from None
        elif (settings.out / "benchmark.json").is_file():
            raise TdkstainError(f"{settings.out} holds a Table 1 benchmark (benchmark.json): give the ablation study "
                                "its own --out")
        if record and record.get("settings") != key:
            old = record.get("settings") or {}
            changed = "; ".join(f"{k}: {json.dumps(old.get(k))} -> {json.dumps(key[k])}" for k in key if old.get(k) != key[k])
            raise TdkstainError(
                f"{settings.out} holds an ablation study made with other settings ({changed}): only --seeds and "
                "--variants may change in an existing --out (to add runs); use another --out, or delete "
                f"{self.path.name} and the folders beside it to start again"
            )
        self.data = {
            "settings": key,
            "seeds": sorted(set(record.get("seeds", [])) | set(settings.seeds)),
            "variants": [v for v in VARIANTS if v in set(record.get("variants", [])) | set(settings.variants)],
            "data_steps": record.get("data_steps", {}),
            "runs": record.get("runs", {}),
        }
        settings.out.mkdir(parents=True, exist_ok=True)
        self.save()

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps(self.data, indent=1) + "\n")

    def run(self, name: str) -> dict[str, Any]:
        return self.data["runs"].setdefault(name, {})


# ----------------------------------------------------------------------------- data and runs


def check_given_data(settings: StudySettings) -> None:
    """``--data``: a complete synth output without misregistration (``check_truth_dataset``), extracted."""
    from tdkstain.evaluation.truth import check_truth_dataset

    if settings.data is None:
        return
    check_truth_dataset(settings.data)
    if not (settings.data / "extraction.json").is_file():
        raise TdkstainError(f"{settings.data}: no extraction.json: run `tdkstain extract {settings.data}` first "
                            "(TDKstain trains on the knowledge maps)")


def prepare_data(settings: StudySettings, record: StudyRecord, log: Callable[[str], None]) -> tuple[Path, list[str]]:
    """The dataset root (``--data``, checked by :func:`check_given_data`, or OUT/data drawn and extracted here,
    checked after drawing) and the commands that made it; the data are checked before anything is trained."""
    from tdkstain.evaluation.truth import check_truth_dataset
    from tdkstain.workflows.demo import call, line

    if settings.data is not None:
        return settings.data, []
    root = settings.out / "data"
    d = settings.data_key()["synth"]
    steps = [
        ("synth", ("synth", root, "--pairs", d["pairs"], "--size", d["size"], "--seed", d["seed"], "--misregister",
                   d["misregister"], "--her2-cue", d["her2_cue"], "--test-fraction", d["test_fraction"]),
         root / "synth.json"),
        ("extract", ("extract", root, "--workers", settings.workers), root / "extraction.json"),
    ]
    commands = []
    for name, argv, output in steps:
        commands.append(line(*argv))
        if name in record.data["data_steps"] and output.is_file():
            log(f"{LOG_PREFIX}: data: {name} done in an earlier run, skipped")
            continue
        log(f"{LOG_PREFIX}: data: {line(*argv)}")
        start = time.perf_counter()
        call(*argv)
        record.data["data_steps"][name] = {"seconds": time.perf_counter() - start}
        record.save()
        if name == "synth":
            check_truth_dataset(root)
    return root, commands


@dataclass
class Run:
    """One training run of the study: a variant at a seed."""

    variant: str
    seed: int
    method: Any  # workflows.table1.BenchmarkMethod

    @property
    def name(self) -> str:
        return run_name(self.variant, self.seed)


def run_name(variant: str, seed: int) -> str:
    return f"{variant}_seed{seed}"


def variant_loss(variant: str) -> dict[str, Any]:
    """The ``loss:`` section of the variant's own preset (``tdkstain`` -> tdkstain-paper)."""
    from tdkstain.training.config import read_yaml_file, resolve_preset
    from tdkstain.workflows.table1 import table1_rows

    path = resolve_preset(table1_rows()[variant][0])
    loss = (read_yaml_file(path) or {}).get("loss")
    if not isinstance(loss, dict) or not loss:
        raise TdkstainError(f"{path}: no loss: section to take {variant}'s loss weights from")
    return loss


def study_schedule(settings: StudySettings, root: Path) -> list[str]:
    """The base preset's schedule stretched over ``settings.steps`` on this dataset (``schedule_over_steps``).

    User overrides come after these and win.
    """
    from tdkstain.data.tiles import split_pairs
    from tdkstain.training.config import load_config, schedule_over_steps

    base = load_config(settings.base, list(settings.overrides), values={"data.root": str(root)})
    train, _ = split_pairs(root, base.data.train_split, base.data.val_split, base.data.val_pairs)
    return schedule_over_steps(base, len(train), settings.steps)


def resolve_runs(settings: StudySettings, root: Path) -> list[Run]:
    """Every (variant, seed) of the settings as a resolved benchmark method (config, run folder, tiles folder)."""
    from tdkstain.workflows.table1 import resolve_methods, table1_rows

    entries, overrides, keys = [], [*study_schedule(settings, root), *settings.overrides], []
    for variant in settings.variants:
        loss = variant_loss(variant)
        for seed in settings.seeds:
            name = run_name(variant, seed)
            entries.append((name, settings.base))
            overrides += [f"{name}:loss.{k}={v}" for k, v in loss.items()] + [f"{name}:train.seed={seed}"]
            keys.append((variant, seed))
    methods = resolve_methods(root, entries, settings.out, steps=settings.steps, overrides=overrides)
    runs = []
    for (variant, seed), method in zip(keys, methods):
        method.config_source = f"{settings.base} with the loss weights of {table1_rows()[variant][0]}"
        runs.append(Run(variant, seed, method))
    return runs


def _duration(seconds: float) -> str:
    minutes = int(round(seconds / 60))
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(seconds / 60, 0.1):.1f} min"


def _tiles_digest(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode("utf-8", "surrogateescape") + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def measure_run(run: Run, pairs: list, truths: dict, params: Any, reals: dict, out: Path, *, progress: bool,
                log: Callable[[str], None], label: str) -> tuple[list[dict], bool]:
    """Per-tile truth measures of one run's generated tiles; cached in ``OUT/measures/RUN.json``.

    ``reals``: stem -> :class:`~tdkstain.evaluation.truth.RealTile`, filled on first use and shared by runs.
    Returns (rows, computed): computed is False when the cache was still valid.
    """
    from tqdm import tqdm

    from tdkstain.data.images import read_rgb
    from tdkstain.evaluation.truth import measures_from_json, prepare_real, truth_measures

    files = [run.method.generated_dir / f"{p.stem}.png" for p in pairs]
    key = json.loads(json.dumps(json_safe({"version": MEASURES_VERSION, "run": run.name, "params": params.to_dict(),
                                           "tiles": _tiles_digest(files)})))
    path = out / "measures" / f"{run.name}.json"
    if path.is_file():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cached = None
        if isinstance(cached, dict) and cached.get("key") == key:
            log(f"{label}: measures cached ({path})")
            return [measures_from_json(row) for row in cached["tiles"]], False
    log(f"{label}: measuring {len(pairs)} test tiles against the truth")
    rows = []
    bar = tqdm(pairs, desc=f"{run.name} measures", unit="tile", file=sys.stderr, leave=False,
               disable=not (progress and sys.stderr.isatty()))
    for pair, generated in zip(bar, files):
        truth = truths[pair.stem]
        if pair.stem not in reals:
            reals[pair.stem] = prepare_real(read_rgb(pair.ihc), truth, params)
        rows.append(truth_measures(read_rgb(generated), reals[pair.stem], truth, params))
    write_text_atomic(path, json.dumps(json_safe({"key": key, "tiles": rows})) + "\n")
    return rows, True


def run_ablation(settings: StudySettings, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The whole study (see the module docstring); returns ``study.json``'s content and the files written."""
    from tdkstain.evaluation.truth import TruthParams, read_truth
    from tdkstain.plumbing.devices import resolve_device
    from tdkstain.workflows.table1 import _is_done, _test_pairs, train_and_translate

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    started = time.perf_counter()
    check_given_data(settings)  # before OUT records these settings
    record = StudyRecord(settings)
    root, data_commands = prepare_data(settings, record, log)
    runs = resolve_runs(settings, root)
    split = runs[0].method.cfg.data.val_split
    pairs = _test_pairs(root, split)
    truths = {p.stem: read_truth(root / f"{split}_truth", p.stem) for p in pairs}  # checked before any training
    params = TruthParams.for_dataset(root, split)
    device = resolve_device(settings.device)
    log(f"{LOG_PREFIX}: {len(runs)} runs ({len(settings.variants)} variants x {len(settings.seeds)} seeds, "
        f"{settings.steps} steps each) on {len(pairs)} test tiles of {root}")

    reals: dict[str, Any] = {}
    per_run: dict[str, list[dict]] = {}
    session: list[float] = []  # seconds of the runs trained in this call
    if settings.jobs > 1:
        train_in_parallel(runs, pairs, str(device), settings.jobs, record, log)
    for index, run in enumerate(runs, 1):
        label = f"[{index}/{len(runs)}] {run.variant} seed {run.seed}"
        timing = record.run(run.name)
        t0 = time.perf_counter()
        trained = train_and_translate(run.method, pairs, device, progress=settings.progress, log=log, label=label)
        if trained:
            timing["train_seconds"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        per_run[run.name], computed = measure_run(run, pairs, truths, params, reals, settings.out,
                                                  progress=settings.progress, log=log, label=label)
        if computed:
            timing["measure_seconds"] = time.perf_counter() - t1
        record.save()
        if trained:
            session.append(time.perf_counter() - t0)
            left = [r for r in runs[index:] if not _is_done(r.method, len(pairs))]
            estimate = (f"; about {_duration(float(np.mean(session)) * len(left))} left for {len(left)} "
                        f"run{'s' if len(left) > 1 else ''}" if left else "")
            log(f"{label}: done in {_duration(session[-1])}{estimate}")

    study = aggregate_study(settings, runs, per_run, record, params, root, split, data_commands,
                            time.perf_counter() - started)
    files = write_outputs(settings.out, study, per_run, runs, pairs)
    log(f"{LOG_PREFIX}: wrote {', '.join(str(p) for p in files.values())}")
    return {"study": study, "files": files}


def _train_run(method: Any, pairs: list, device: str, label: str) -> float:
    """One run in a worker process of :func:`train_in_parallel`; returns its seconds."""
    from tdkstain.workflows.table1 import train_and_translate

    started = time.perf_counter()
    train_and_translate(method, pairs, device, progress=False, log=lambda m: print(m, file=sys.stderr, flush=True),
                        label=label)
    return time.perf_counter() - started


def train_in_parallel(runs: list[Run], pairs: list, device: str, jobs: int, record: StudyRecord,
                      log: Callable[[str], None]) -> None:
    """Train (and translate) the unfinished runs, ``jobs`` at a time, each in its own spawned process.

    The runs write only their own folders, so they can run side by side; the
    measures are taken afterwards in this process, as in a sequential study.
    A failed run stops the study after the others in flight have finished;
    rerunning resumes every run from its last checkpoint.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tdkstain.workflows.table1 import _is_done

    todo = [(i, run) for i, run in enumerate(runs, 1) if not _is_done(run.method, len(pairs))]
    if not todo:
        return
    log(f"{LOG_PREFIX}: training {len(todo)} runs, {jobs} at a time")
    failures, seconds_each = [], []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train_run, run.method, pairs, device, f"[{i}/{len(runs)}] {run.variant} seed {run.seed}"):
                   run for i, run in todo}
        for done, future in enumerate(as_completed(futures), 1):
            run = futures[future]
            try:
                seconds = future.result()
            except Exception as err:  # noqa: BLE001 - reported with the run's name, raised after the others
                failures.append(f"{run.name}: {err}")
                log(f"{LOG_PREFIX}: {run.name} failed: {err}")
                continue
            record.run(run.name)["train_seconds"] = seconds
            record.save()
            seconds_each.append(seconds)
            left = len(todo) - done  # those in flight included: about a run's time per `jobs` runs
            log(f"{LOG_PREFIX}: {run.name} trained in {_duration(seconds)} ({done}/{len(todo)}"
                + (f"; about {_duration(float(np.mean(seconds_each)) * math.ceil(left / jobs))} left)" if left else ")"))
    if failures:
        raise TdkstainError("ablation: runs failed (rerun the same command to resume them): " + "; ".join(failures))


# ----------------------------------------------------------------------------- statistics


def t_interval(values: Any, confidence: float = CONFIDENCE) -> dict[str, float]:
    """Mean and its t confidence interval over the finite ``values`` (one per seed).

    ``mean +- t_{(1+confidence)/2, n-1} * sd / sqrt(n)``, sd with ddof=1 (scipy.stats.t);
    with n < 2 the bounds are NaN.
    """
    from scipy import stats

    array = finite_values(values)
    n = int(array.size)
    mean = float(array.mean()) if n else math.nan
    if n < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "sd": math.nan, "n": n}
    sd = float(array.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "sd": sd, "n": n}


def paired_difference(variant: dict[int, float], reference: dict[int, float],
                      confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Per-seed differences ``variant - reference`` over the seeds where both are finite.

    Returns their mean with a t interval (:func:`t_interval`) and the two-sided paired t-test p
    (``scipy.stats.ttest_rel``; NaN with fewer than 2 seeds or when every difference is equal).
    """
    from scipy import stats

    seeds = sorted(s for s in variant if s in reference and np.isfinite(variant[s]) and np.isfinite(reference[s]))
    a = np.array([variant[s] for s in seeds], np.float64)
    b = np.array([reference[s] for s in seeds], np.float64)
    out: dict[str, Any] = {**t_interval(a - b, confidence), "seeds": seeds, "p_ttest": math.nan}
    if len(seeds) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # zero variance: scipy returns NaN
            out["p_ttest"] = float(stats.ttest_rel(a, b).pvalue)
    return out


def wilcoxon_tiles(variant: dict[str, float], reference: dict[str, float]) -> dict[str, Any]:
    """Wilcoxon signed-rank test over tiles (stem -> value, each averaged over seeds) where both are finite.

    ``scipy.stats.wilcoxon(variant, reference)`` (two-sided, zero differences dropped); NaN when
    no tile differs. Also the median difference and the number of tiles.
    """
    from scipy import stats

    stems = sorted(s for s in variant if s in reference and np.isfinite(variant[s]) and np.isfinite(reference[s]))
    a = np.array([variant[s] for s in stems], np.float64)
    b = np.array([reference[s] for s in stems], np.float64)
    p = math.nan
    if np.any(a != b):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small samples: scipy warns about its normal approximation
            p = float(stats.wilcoxon(a, b).pvalue)
    return {"p": p, "n_tiles": len(stems), "median": float(np.median(a - b)) if stems else math.nan}


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaNs stay NaN and do not count in the family)."""
    p = np.asarray(pvalues, np.float64)
    finite = np.flatnonzero(np.isfinite(p))
    adjusted = np.full(p.shape, np.nan)
    order = finite[np.argsort(p[finite], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


STATISTICS = {
    "per_variant": "mean over seeds of each run's value, with a two-sided 95 % t interval over seeds "
                   "(mean +- t_{0.975, n-1} sd / sqrt(n), scipy.stats.t)",
    "paired_difference": "per seed: variant's run value - TDKstain's run value at the same seed; mean and 95 % t interval",
    "p_ttest": "PRIMARY test: two-sided paired t-test over seeds (scipy.stats.ttest_rel): the unit of replication is "
               "the training run",
    "p_holm": "p_ttest adjusted by Holm-Bonferroni within each measure over the variants compared with TDKstain; "
              "not corrected across measures",
    "p_wilcoxon": "secondary: two-sided Wilcoxon signed-rank test over test tiles (scipy.stats.wilcoxon, zero "
                  "differences dropped) on per-tile values averaged over seeds: do the trained models differ on these "
                  "tiles; it ignores seed-to-seed variation, so it is not a test of the training recipe; uncorrected",
}


def aggregate_study(settings: StudySettings, runs: list[Run], per_run: dict[str, list[dict]], record: StudyRecord,
                    params: Any, root: Path, split: str, data_commands: list[str], seconds: float) -> dict[str, Any]:
    """study.json: settings, definitions, per-run values, per-variant intervals, paired differences."""
    from tdkstain import __version__
    from tdkstain.evaluation.truth import DEFINITIONS
    from tdkstain.workflows.table1 import table1_rows

    summaries = {run.name: run_values(per_run[run.name]) for run in runs}
    by_variant = {v: [r for r in runs if r.variant == v] for v in settings.variants}
    variants = {}
    for variant, vruns in by_variant.items():
        metrics = {m.key: {**t_interval([summaries[r.name]["values"][m.key] for r in vruns]),
                           "per_seed": {r.seed: summaries[r.name]["values"][m.key] for r in vruns}} for m in METRICS}
        her2 = {}
        for key in BY_HER2:
            labels = sorted({lab for r in vruns for lab in summaries[r.name]["by_her2"]}, key=str)
            her2[key] = {lab: t_interval([summaries[r.name]["by_her2"].get(lab, {}).get(key, math.nan) for r in vruns])
                         for lab in labels}
        variants[variant] = {"name": table1_rows()[variant][1], "metrics": metrics, "by_her2": her2}

    tile_means = {v: _tile_means([per_run[r.name] for r in vruns]) for v, vruns in by_variant.items()}
    differences: dict[str, dict[str, Any]] = {v: {} for v in settings.variants if v != REFERENCE}
    for m in METRICS:
        for variant in differences:
            entry = paired_difference(variants[variant]["metrics"][m.key]["per_seed"],
                                      variants[REFERENCE]["metrics"][m.key]["per_seed"])
            entry["wilcoxon"] = (wilcoxon_tiles(tile_means[variant][m.key], tile_means[REFERENCE][m.key]) if m.per_tile
                                 else {"p": math.nan, "n_tiles": 0, "median": math.nan,
                                       "note": "not a per-tile measure"})
            differences[variant][m.key] = entry
        adjusted = holm([differences[v][m.key]["p_ttest"] for v in differences])
        for variant, p in zip(differences, adjusted):
            differences[variant][m.key]["p_holm"] = p

    first = per_run[runs[0].name]
    real_kappa, real_scored = her2_kappa([{**r, "her2_generated": r["her2_real"]} for r in first], "her2")
    return {
        "study": "ablation", "tdkstain_version": __version__, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": settings.command(), "data_commands": data_commands,
        "settings": {**settings.key(), "seeds": list(settings.seeds), "variants": list(settings.variants),
                     "reference": REFERENCE, "confidence": CONFIDENCE, "data_root": str(root), "split": split,
                     "test_tiles": len(first), "measures": params.to_dict()},
        "definitions": {"tile": DEFINITIONS, "run": {m.key: m.definition for m in METRICS}, "statistics": STATISTICS},
        "metrics": [{"key": m.key, "label": m.label, "better": m.better} for m in METRICS],
        "variants": variants,
        "differences": differences,
        "scorer_on_real_ihc": {"kappa_vs_truth": real_kappa, "scored": real_scored, "tiles": len(first),
                               "note": "tdkstain score on the real IHC against the true label: the ceiling of the "
                                       "generated tiles' kappa"},
        "runs": {run.name: {"variant": run.variant, "seed": run.seed, **summaries[run.name],
                            **{k: record.run(run.name).get(k) for k in ("train_seconds", "measure_seconds")},
                            "run_dir": str(run.method.run_dir), "generated_dir": str(run.method.generated_dir)}
                 for run in runs},
        "tiles": {r["stem"]: r["her2"] for r in first},
        "seconds": {"this_call": seconds, "data": record.data["data_steps"],
                    "train_total": sum(record.run(r.name).get("train_seconds") or 0.0 for r in runs)},
    }


def _tile_means(runs_rows: list[list[dict]]) -> dict[str, dict[str, float]]:
    """metric -> stem -> the per-tile value averaged over the variant's seeds (finite values only)."""
    out: dict[str, dict[str, float]] = {m.key: {} for m in METRICS if m.per_tile}
    stems = [r["stem"] for r in runs_rows[0]]
    values = [{r["stem"]: tile_values(r) for r in rows} for rows in runs_rows]
    for key in out:
        for stem in stems:
            out[key][stem] = mean_of([v[stem][key] for v in values if stem in v])
    return out


# ----------------------------------------------------------------------------- outputs


def _num(value: Any, digits: int) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _interval(entry: dict, digits: int) -> str:
    text = _num(entry["mean"], digits)
    if math.isfinite(entry["low"]) and math.isfinite(entry["high"]):
        text += f" [{_num(entry['low'], digits)}, {_num(entry['high'], digits)}]"
    return text


def _p(value: float) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{value:.3f}" if value >= 0.001 else "<0.001"


ARROWS = {"higher": "↑", "lower": "↓", "zero": "→0"}


def format_table(study: dict) -> str:
    """table.md: per variant mean [95 % CI] over seeds; differences to TDKstain with p-values."""
    s = study["settings"]
    lines = [
        "# Ablation study on known truth",
        "",
        f"{len(s['seeds'])} seeds ({', '.join(map(str, s['seeds']))}) x {len(s['variants'])} variants, "
        f"{s['steps']} steps each, {s['test_tiles']} test tiles; mean over seeds [95 % t interval].",
        "Definitions: study.json (`definitions`), docs/ablation.md. Report: index.html.",
        "",
        "| Measure | " + " | ".join(v["name"] for v in study["variants"].values()) + " |",
        "|---|" + "---:|" * len(study["variants"]),
    ]
    for m in METRICS:
        lines.append(f"| {m.label} {ARROWS[m.better]} | "
                     + " | ".join(_interval(v["metrics"][m.key], m.digits) for v in study["variants"].values()) + " |")
    differences = study["differences"]
    if not differences:
        return "\n".join(lines + ["", "Only TDKstain was trained: no ablation to compare with it (--variants)."]) + "\n"
    lines += ["", f"## Differences to {study['variants'][REFERENCE]['name']} (variant - TDKstain, paired by seed)", "",
              "Cell: mean difference [95 % CI]; p: paired t-test over seeds (primary) / Holm within the measure / "
              "Wilcoxon over tiles (secondary). p-values are not corrected across measures.", "",
              "| Measure | " + " | ".join(study["variants"][v]["name"] for v in differences) + " |",
              "|---|" + "---:|" * len(differences)]
    for m in METRICS:
        cells = [f"{_interval(differences[v][m.key], m.digits)}; p {_p(differences[v][m.key]['p_ttest'])} / "
                 f"{_p(differences[v][m.key]['p_holm'])} / {_p(differences[v][m.key]['wilcoxon']['p'])}"
                 for v in differences]
        lines.append(f"| {m.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_csv(study: dict) -> str:
    """table.csv: one row per (variant, measure)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["variant", "measure", "mean", "ci_low", "ci_high", "seeds", "diff_mean", "diff_ci_low",
                     "diff_ci_high", "p_ttest", "p_holm", "p_wilcoxon", "wilcoxon_tiles"])
    for variant, v in study["variants"].items():
        for m in METRICS:
            e = v["metrics"][m.key]
            d = study["differences"].get(variant, {}).get(m.key)
            diff = ([d["mean"], d["low"], d["high"], d["p_ttest"], d["p_holm"], d["wilcoxon"]["p"], d["wilcoxon"]["n_tiles"]]
                    if d else [""] * 7)
            writer.writerow([_cell(x) for x in (variant, m.key, e["mean"], e["low"], e["high"], e["n"], *diff)])
    return buffer.getvalue()


def _cell(value: Any) -> str:
    """A CSV cell: numbers as repr, NaN and None empty."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return value if isinstance(value, str) else repr(value)


def _colours(variants: list[str]) -> dict[str, str]:
    return {v: f"C{i}" for i, v in enumerate(variants)}


def truth_figure(path: Path, study: dict, per_run: dict[str, list[dict]]) -> Path:
    """Fig. 3 style: (a) nuclei count error per tile, per variant (all seeds); (b-e) DAB error inside the true
    membranes per HER2 score, a bar with its 95 % CI per variant (dots: seeds); (f) stained-membrane IoU."""
    from tdkstain.evaluation.report import _pyplot, _save
    from tdkstain.scoring.her2 import SCORES

    plt = _pyplot()
    variants = list(study["variants"])
    names = [study["variants"][v]["name"] for v in variants]
    colours = _colours(variants)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.2), dpi=100)
    ax = axes[0][0]
    counts = [[r["nuclei_count_error"] for name, rows in per_run.items() if study["runs"][name]["variant"] == v
               for r in rows] for v in variants]
    box = ax.boxplot(counts, patch_artist=True, showfliers=True)
    for patch, v in zip(box["boxes"], variants):
        patch.set_facecolor(colours[v])
        patch.set_alpha(0.5)
    ax.set_xticks(range(1, len(variants) + 1), names, rotation=20, fontsize=7)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_ylabel("nuclei per tile, detected - true")
    ax.set_title("(a) nuclei count error", fontsize=10)

    def bars(ax: Any, entries: list[dict], seeds: list[list[float]], title: str, ylabel: str) -> None:
        x = np.arange(len(variants))
        means = [e["mean"] if e else math.nan for e in entries]
        low = [e["mean"] - e["low"] if e and math.isfinite(e["low"]) else 0.0 for e in entries]
        high = [e["high"] - e["mean"] if e and math.isfinite(e["high"]) else 0.0 for e in entries]
        ax.bar(x, means, color=[colours[v] for v in variants], alpha=0.6, yerr=[low, high], capsize=4)
        for i, values in enumerate(seeds):
            ax.plot([i] * len(values), values, "k.", markersize=4)
        if not any(math.isfinite(v) for v in means):
            ax.text(0.5, 0.5, "no tile with a value", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        ax.set_xticks(x, names, rotation=20, fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=8)

    def seed_values(key: str, label: str | None) -> list[list[float]]:
        out = []
        for v in variants:
            runs = [r for r in study["runs"].values() if r["variant"] == v]
            out.append([r["values"][key] if label is None else r["by_her2"].get(label, {}).get(key, math.nan) for r in runs])
        return out

    panels = [axes[0][1], axes[0][2], axes[1][0], axes[1][1]]
    for ax, letter, label in zip(panels, "bcde", SCORES):
        entries = [study["variants"][v]["by_her2"]["dab_abs_error"].get(label) for v in variants]
        bars(ax, entries, seed_values("dab_abs_error", label), f"({letter}) DAB error in true membranes, HER2 {label}",
             "mean |OD gen - OD real|")
    bars(axes[1][2], [study["variants"][v]["metrics"]["membrane_iou"] for v in variants],
         seed_values("membrane_iou", None), "(f) stained-membrane IoU (pooled)", "IoU at tau")
    fig.tight_layout()
    _save(fig, path)
    return path


def differences_figure(path: Path, study: dict) -> Path:
    """One panel per measure: each ablation's mean difference to TDKstain with its 95 % CI over seeds."""
    from tdkstain.evaluation.report import _pyplot, _save

    plt = _pyplot()
    variants = list(study["differences"])
    colours = _colours(list(study["variants"]))
    columns = 4
    rows = math.ceil(len(METRICS) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.0 * rows + 0.4), dpi=100, squeeze=False)
    for ax, m in zip(axes.flat, METRICS):
        for i, v in enumerate(variants):
            e = study["differences"][v][m.key]
            if math.isfinite(e["mean"]):
                err = [[e["mean"] - e["low"]], [e["high"] - e["mean"]]] if math.isfinite(e["low"]) else None
                ax.errorbar([e["mean"]], [i], xerr=err, fmt="o", color=colours[v], capsize=3)
        if not any(math.isfinite(study["differences"][v][m.key]["mean"]) for v in variants):
            ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.set_yticks(range(len(variants)), [study["variants"][v]["name"] for v in variants], fontsize=7)
        ax.set_ylim(-0.7, len(variants) - 0.3)
        ax.set_title(f"{m.label} {ARROWS[m.better]}", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(METRICS):]:
        ax.axis("off")
    fig.suptitle("variant - TDKstain (mean over seeds, 95 % CI)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return path


def examples_figure(path: Path, study: dict, runs: list[Run], pairs: list, seed: int) -> Path:
    """H&E | real IHC | each variant at ``seed``, one row per HER2 score (the first test tile of each)."""
    from tdkstain.scoring.her2 import SCORES
    from tdkstain.workflows.table1 import comparison_figure

    chosen = [next(p for p in pairs if study["tiles"][p.stem] == label) for label in SCORES
              if label in study["tiles"].values()]
    shown = [r for r in runs if r.seed == seed]
    return comparison_figure(path, chosen, [r.method for r in shown], tiles=None,
                             names=[study["variants"][r.variant]["name"] for r in shown],
                             row_labels=[f"HER2 {study['tiles'][p.stem]}\n{p.stem}" for p in chosen])


def write_outputs(out: Path, study: dict, per_run: dict[str, list[dict]], runs: list[Run], pairs: list) -> dict[str, Path]:
    """study.json, table.md, table.csv, figures/*.png and index.html."""
    figures = out / "figures"
    files = {
        "study": out / "study.json", "table_md": out / "table.md", "table_csv": out / "table.csv",
        "fig3": truth_figure(figures / "fig3_truth.png", study, per_run),
        **({"differences": differences_figure(figures / "differences.png", study)} if study["differences"] else {}),
        "examples": examples_figure(figures / "examples.png", study, runs, pairs, study["settings"]["seeds"][0]),
        "report": out / "index.html",
    }
    write_text_atomic(files["study"], json.dumps(json_safe(study), indent=1) + "\n")
    write_text_atomic(files["table_md"], format_table(study))
    write_text_atomic(files["table_csv"], table_csv(study))
    write_text_atomic(files["report"], render_html(study, out, files))
    return files


def render_html(study: dict, out: Path, files: dict[str, Path]) -> str:
    """index.html: settings, the table with CIs, paired differences with p-values, figures, timings, definitions."""
    from tdkstain.evaluation.report import _href

    e = html.escape
    s = study["settings"]
    variants = study["variants"]
    head = "".join(f"<th>{e(v['name'])}</th>" for v in variants.values())
    table = "".join(f"<tr><th>{e(m.label)} {ARROWS[m.better]}</th>" + "".join(
        f"<td>{e(_interval(v['metrics'][m.key], m.digits))}</td>" for v in variants.values()) + "</tr>" for m in METRICS)
    diff_rows = ""
    for variant, entries in study["differences"].items():
        for m in METRICS:
            d = entries[m.key]
            diff_rows += (f"<tr><th>{e(variants[variant]['name'])}</th><td style='text-align:left'>{e(m.label)}</td>"
                          f"<td>{e(_interval(d, m.digits))}</td><td>{len(d['seeds'])}</td><td>{_p(d['p_ttest'])}</td>"
                          f"<td>{_p(d['p_holm'])}</td><td>{_p(d['wilcoxon']['p'])}</td><td>{d['wilcoxon']['n_tiles']}</td></tr>")
    labels = sorted({lab for v in variants.values() for lab in v["by_her2"]["dab_abs_error"]}, key=str)
    her2_rows = "".join(
        f"<tr><th>{e(v['name'])}</th>" + "".join(f"<td>{e(_interval(v['by_her2'][k].get(lab, {'mean': math.nan, 'low': math.nan, 'high': math.nan}), 3))}</td>"
                                                 for k in BY_HER2 for lab in labels) + "</tr>" for v in variants.values())
    her2_head = "".join(f"<th>{e(k.replace('_', ' '))}, HER2 {e(lab)}</th>" for k in BY_HER2 for lab in labels)
    run_rows = "".join(
        f"<tr><th>{e(name)}</th><td>{_num(r['train_seconds'], 0)}</td><td>{_num(r['measure_seconds'], 1)}</td>"
        f"<td>{r['her2_scored_vs_truth']} / {r['tiles']}</td><td>{r['her2_scored_vs_real']}</td></tr>"
        for name, r in study["runs"].items())
    definitions = "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for group in ("tile", "run") for k, v in
                          study["definitions"][group].items())
    statistics = "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in study["definitions"]["statistics"].items())
    real = study["scorer_on_real_ihc"]
    figures = "".join(f'<figure><img src="{_href(files[k], out)}" alt="{k}"><figcaption>{e(caption)}</figcaption></figure>'
                      for k, caption in (("fig3", "Fig. 3 style: (a) nuclei count error per tile (all seeds); (b-e) DAB "
                                                  "error inside the true membranes per HER2 score; (f) stained-membrane IoU. "
                                                  "Bars: mean over seeds with 95 % CI; dots: seeds."),
                                         ("differences", "Each ablation minus TDKstain, mean over seeds with 95 % CI."),
                                         ("examples", f"Example tiles, seed {s['seeds'][0]}: H&E | real IHC | each variant."))
                      if k in files)
    data = "".join(f"<li><code>{e(c)}</code></li>" for c in study["data_commands"])
    differences = ("<table><tr><th>variant</th><th>measure</th><th>mean difference [95 % CI]</th><th>seeds</th>"
                   "<th>p (t-test)</th><th>p (Holm)</th><th>p (Wilcoxon)</th><th>tiles</th></tr>" + diff_rows + "</table>"
                   if diff_rows else "<p>Only TDKstain was trained: no ablation to compare with it (--variants).</p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tdkstain ablation study on known truth</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1900px; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }} th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th:first-child {{ text-align: left; }} .small {{ font-size: 90%; color: #444; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>Ablation study on known truth</h1>
<p><code>{e(study['command'])}</code></p>
<p>{len(s['variants'])} variants x {len(s['seeds'])} seeds (seeds {e(', '.join(map(str, s['seeds'])))}), {s['steps']} training
steps each from the <code>{e(s['base'])}</code> preset with each variant's loss weights{', overrides ' + e(' '.join(s['overrides'])) if s['overrides'] else ''};
{s['test_tiles']} test tiles of <code>{e(s['data_root'])}</code> (split {e(s['split'])}). tdkstain {e(study['tdkstain_version'])}, {e(study['created'])}.
Data: <a href="study.json">study.json</a>, <a href="table.csv">table.csv</a>, <a href="table.md">table.md</a>.</p>
{'<p class=small>Data made with:</p><ul class=small>' + data + '</ul>' if data else ''}
<h2>Per variant</h2>
<table><tr><th>measure</th>{head}</tr>{table}</table>
<p class=small>Mean over seeds of each run's value, [95 % t interval over seeds] (none with a single seed).</p>
<h2>Differences to TDKstain</h2>
<p class=small>Variant minus TDKstain at the same seed. <b>Primary test: paired t-test over seeds</b> (the training
run is the unit of replication), Holm-adjusted within each measure over the ablations; not corrected across
measures. Secondary: Wilcoxon signed-rank over test tiles on per-tile values averaged over seeds (whether the
trained models differ on these tiles; uncorrected; not for HER2 kappa, which has no per-tile value).</p>
{differences}
<h2>Per HER2 score</h2>
<table><tr><th>variant</th>{her2_head}</tr>{her2_rows}</table>
<p class=small>The scorer on the real IHC against the true labels: quadratic kappa {_num(real['kappa_vs_truth'], 3)}
over {real['scored']} scorable tiles of {real['tiles']}: the ceiling of the generated tiles' HER2 agreement.</p>
<h2>Figures</h2>{figures}
<h2>Runs</h2>
<table><tr><th>run</th><th>training + translation (s)</th><th>measures (s)</th><th>HER2 scorable (generated)</th>
<th>scorable on both</th></tr>{run_rows}</table>
<p class=small>Seconds of the call that finished each step (empty: done before this record existed); this call:
{_num(study['seconds']['this_call'], 0)} s.</p>
<h2>Definitions</h2><ul class=small>{definitions}</ul>
<h3>Statistics</h3><ul class=small>{statistics}</ul>
<h3>Measure settings</h3><pre class=small>{e(json.dumps(json_safe(s['measures']), indent=1))}</pre>
</body></html>
"""
