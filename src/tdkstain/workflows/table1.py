"""``tdkstain benchmark``: the paper's Table 1 with one command.

For each method (a preset of ``configs/``, or ``NAME=CONFIG.yaml``), on one
dataset and one split: train with ``tdkstain.training.train`` (the same
trainer, data pipeline and seed for all), translate every test H&E tile with
the trained generator, then evaluate all methods together with
``tdkstain.evaluation.evaluate`` (compare mode: every method scored on the
same tiles) and write the table and plots::

    OUT/benchmark.json           settings of the benchmark (data, methods, steps, overrides)
    OUT/runs/METHOD/             the training run folder (config, checkpoints, weights)
    OUT/generated/METHOD/*.png   generated IHC for every test tile
    OUT/generated/METHOD/.done   written last; a method that has it is not retrained
    OUT/report/                  tdkstain evaluate output: metrics.json, per_image.csv,
                                 plots/ (Fig. 3 style curves), grids/, index.html
    OUT/table.md, OUT/table.csv  Table 1 style: SSIM, PSNR, FID, KID, DISTS, LPIPS,
                                 nuclei and membrane errors per method
    OUT/comparison.png           H&E | real IHC | each method, for a few test tiles

Rerunning the same command resumes: finished methods are skipped, an
interrupted training resumes from its checkpoint, and a larger ``--steps``
continues each training from where it stopped.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tdkstain.plumbing.atomic import write_text_atomic
from tdkstain.training.config import Config, load_config
from tdkstain.plumbing.errors import TdkstainError

__all__ = [
    "table1_rows",
    "BenchmarkMethod",
    "resolve_methods",
    "train_and_translate",
    "translate_tiles",
    "run_benchmark",
    "format_table",
]

DONE_FILE = ".done"


def table1_rows() -> dict[str, tuple[str, str]]:
    """Benchmark name -> (preset, display name) of every registered method (``tdkstain.methods.table1_methods``)."""
    from tdkstain.methods import table1_methods

    return table1_methods()


@dataclass
class BenchmarkMethod:
    """One row of the table: its name, its resolved config and where its outputs go."""

    name: str
    config_source: str
    cfg: Config
    run_dir: Path
    generated_dir: Path
    overrides: list[str] = field(default_factory=list)


def parse_method_list(text: str) -> list[tuple[str, str]]:
    """``"tdkstain,pix2pix,mine=my.yaml"`` -> ``[(name, preset or file)]``; ``all`` = every preset."""
    from tdkstain.evaluation.runner import check_method_name

    entries: list[tuple[str, str]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item == "all":
            entries += [(name, preset) for name, (preset, _) in table1_rows().items()]
            continue
        name, sep, source = item.partition("=")
        name = name.strip()
        if not sep:
            if name not in table1_rows():
                raise TdkstainError(
                    f"--methods: unknown method {name!r}; known: {', '.join(table1_rows())}, all, or NAME=CONFIG.yaml"
                )
            source = table1_rows()[name][0]
        check_method_name(name)
        entries.append((name, source.strip()))
    names = [n for n, _ in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TdkstainError(f"--methods: {', '.join(duplicates)} given more than once")
    if not entries:
        raise TdkstainError("--methods: no method given (e.g. --methods tdkstain,pix2pix or --methods all)")
    return entries


def split_overrides(overrides: list[str], names: list[str]) -> dict[str, list[str]]:
    """``KEY=VALUE`` applies to every method, ``METHOD:KEY=VALUE`` to one (ignored when that known
    method is not benchmarked, so one override list serves every run; an unknown name is an error)."""
    per: dict[str, list[str]] = {n: [] for n in names}
    for text in overrides:
        key = text.partition("=")[0]
        if ":" in key:
            method, _, rest = text.partition(":")
            if method not in per and method in table1_rows():
                continue  # for a known method that this run does not benchmark
            if method not in per:
                raise TdkstainError(f"override {text!r}: {method!r} is not one of the benchmarked methods ({', '.join(names)})")
            per[method].append(rest)
        else:
            for n in names:
                per[n].append(text)
    return per


def resolve_methods(data: str | os.PathLike, methods: str | list[tuple[str, str]], out: str | os.PathLike, *,
                    steps: int | None = None, overrides: list[str] = ()) -> list[BenchmarkMethod]:
    """Resolved configs of the benchmarked methods (``data.root`` = ``data``; ``train.max_steps`` = ``steps``)."""
    entries = parse_method_list(methods) if isinstance(methods, str) else list(methods)
    per = split_overrides(list(overrides), [n for n, _ in entries])
    out = Path(out)
    resolved = []
    for name, source in entries:
        extra = list(per[name])
        if steps is not None:
            extra.append(f"train.max_steps={steps}")
        try:
            # The data path verbatim, never read as YAML (a folder named 'ds #1' or 'on').
            cfg = load_config(source, extra, values={"data.root": str(Path(data).resolve())})
        except TdkstainError as err:
            raise TdkstainError(f"method {name}: {err}") from None
        resolved.append(BenchmarkMethod(name, source, cfg, out / "runs" / name, out / "generated" / name, extra))
    return resolved


# ----------------------------------------------------------------------------- translation


@torch.no_grad()
def translate_tile(generator: nn.Module, he: np.ndarray, device: torch.device) -> np.ndarray:
    """One whole H&E tile ``(H, W, 3)`` uint8 -> generated IHC ``(H, W, 3)`` uint8.

    The tile is reflect-padded on the bottom/right up to the generator's size
    multiple (:func:`tdkstain.inference.engine.downsampling_factor`) and the output cropped back;
    values map [-1, 1] <-> [0, 255].
    """
    from tdkstain.inference.engine import downsampling_factor

    x = torch.from_numpy(np.ascontiguousarray(he.transpose(2, 0, 1), dtype=np.float32)).div(127.5).sub(1.0)[None].to(device)
    h, w = he.shape[:2]
    m = downsampling_factor(generator)
    pad_h, pad_w = (-h) % m, (-w) % m
    if pad_h or pad_w:
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    y = generator(x)[..., :h, :w]
    return ((y[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def translate_tiles(weights: str | os.PathLike, he_files: list[Path], out_dir: str | os.PathLike, *,
                    names: list[str] | None = None, device: str | torch.device = "cpu",
                    progress: Callable[[int], None] | None = None) -> list[Path]:
    """Translate every H&E file with the generator in ``weights`` (a tdkstain safetensors file of any
    method's generator) into ``out_dir/NAME.png`` (``names``: default the H&E file stems); returns the paths."""
    from tdkstain.weights import load_network
    from tdkstain.data.images import read_rgb, write_png

    generator, _ = load_network(weights, map_location=device)
    generator.eval()
    out_dir = Path(out_dir)
    written = []
    names = names if names is not None else [Path(p).stem for p in he_files]
    for path, name in zip(he_files, names):
        generated = translate_tile(generator, read_rgb(path), torch.device(device))
        written.append(write_png(out_dir / f"{name}.png", generated))
        if progress is not None:
            progress(1)
    return written


# ----------------------------------------------------------------------------- the run


def _test_pairs(root: Path, split: str):
    from tdkstain.data.pairs import discover_pairs

    pairs = discover_pairs(root, split=split)
    if not pairs:
        raise TdkstainError(
            f"{root}: no '{split}' pairs: the benchmark scores methods on a held-out test split that no method trains on "
            "(release layout test_HE/ + test_IHC/, or a manifest with a split column)"
        )
    return pairs


def _common_folder(paths: list[Path], fallback: Path) -> Path:
    parents = {p.parent.resolve() for p in paths}
    if len(parents) == 1:
        folder = parents.pop()
        stems = [p.stem for p in paths]
        if len({p.stem for p in folder.iterdir() if p.is_file()} & set(stems)) == len(stems):
            return folder
    # Tiles spread over several folders: link (or copy) them into one, named by stem.
    import shutil

    fallback.mkdir(parents=True, exist_ok=True)
    for p in paths:
        target = fallback / p.name
        if not target.exists():
            try:
                os.link(p, target)
            except OSError:
                shutil.copyfile(p, target)
    return fallback


def _done_record(method: BenchmarkMethod, tiles: int) -> dict[str, Any]:
    return {"method": method.name, "config": method.cfg.to_dict(), "tiles": tiles}


def _is_done(method: BenchmarkMethod, tiles: int) -> bool:
    marker = method.generated_dir / DONE_FILE
    if not marker.is_file():
        return False
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable, not UTF-8 (UnicodeDecodeError) or not JSON: not finished
        return False
    if not isinstance(record, dict) or not isinstance(record.get("config", {}), dict):
        return False

    def without_budget(config: dict) -> dict:
        train = config.get("train", {})
        return {**config, "train": {k: v for k, v in train.items() if k != "max_steps"} if isinstance(train, dict) else train}

    if record.get("config") != method.cfg.to_dict():
        if without_budget(record.get("config", {})) == without_budget(method.cfg.to_dict()):
            return False  # only --steps changed: training resumes from its checkpoint up to the new budget
        raise TdkstainError(
            f"{method.generated_dir}: method {method.name} was finished with another config; "
            f"delete {method.run_dir} and {method.generated_dir} to retrain it, or use another --out"
        )
    return record.get("tiles") == tiles


def resumed_step(run_dir: str | os.PathLike) -> int | None:
    """The step of a run folder's newest checkpoint (where a training would resume), or None for a fresh run."""
    from tdkstain.training.state import newest_checkpoint

    newest = newest_checkpoint(run_dir)
    return None if newest is None else int(newest.stem.rpartition("_")[2])


def train_and_translate(method: BenchmarkMethod, pairs: list, device: str | torch.device, *, progress: bool = True,
                        log: Callable[[str], None] = print, label: str | None = None) -> bool:
    """Train one method (resuming its run folder) and translate the test tiles, unless it is already done.

    Shared by the Table 1 benchmark and the ablation study. ``pairs``: the test pairs
    (``data.pairs.Pair``); the generated tiles go to ``method.generated_dir/STEM.png`` and
    the done marker (:data:`DONE_FILE`, the method's config and the tile count) is written last.
    ``label`` starts every log line (default ``benchmark: NAME``). Returns True when it trained
    and translated, False when an earlier run had finished it.
    """
    from tdkstain.training import train

    label = label or f"benchmark: {method.name}"
    if _is_done(method, len(pairs)):
        log(f"{label}: already finished, not retrained ({method.generated_dir})")
        return False
    step = resumed_step(method.run_dir)
    resumed = "" if step is None else f", resumed at step {step}"
    log(f"{label}: training ({method.config_source}{resumed}) into {method.run_dir}")
    result = train(method.cfg, method.run_dir, progress=progress and sys.stderr.isatty())
    weights = result.run_dir / "weights" / "generator.safetensors"
    if not weights.is_file():
        raise TdkstainError(f"{method.run_dir}: training finished without generator weights (train.max_steps=0?)")
    del result
    log(f"{label}: translating {len(pairs)} test tiles")
    translate_tiles(weights, [p.he for p in pairs], method.generated_dir, names=[p.stem for p in pairs], device=device)
    write_text_atomic(method.generated_dir / DONE_FILE, json.dumps(_done_record(method, len(pairs))) + "\n")
    return True


def run_benchmark(data: str | os.PathLike, methods: str | list[tuple[str, str]], out: str | os.PathLike, *,
                  steps: int | None = None, overrides: list[str] = (), evaluation: Any = None,
                  device: str = "auto", progress: bool = True, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train, translate and evaluate every method; write the table and plots (see the module docstring).

    Args:
        data: dataset root (with ``tdkstain extract`` outputs when a TDKstain variant is benchmarked).
        methods: ``"tdkstain,pix2pix,..."`` / ``"all"``, or ``[(name, preset or YAML)]``.
        out: benchmark folder (created; rerun to resume).
        steps: training budget per method (``train.max_steps``); None trains each preset's full schedule.
        overrides: ``KEY=VALUE`` for every method, ``METHOD:KEY=VALUE`` for one.
        evaluation: ``tdkstain.evaluation.EvaluationOptions`` (default: all metrics, unavailable ones reported so).
        device: where the generators translate the test tiles.
    Returns:
        ``{"metrics": evaluate's metrics.json, "table": rows, "files": {...}}``.
    """
    from tdkstain.evaluation import EvaluationOptions, evaluate
    from tdkstain.plumbing.devices import resolve_device

    log = log or (lambda message: print(message, file=sys.stderr))
    out = Path(out)
    root = Path(data)
    resolved = resolve_methods(root, methods, out, steps=steps, overrides=overrides)
    test_split = resolved[0].cfg.data.val_split
    pairs = _test_pairs(root, test_split)
    settings = {
        "data": str(root.resolve()), "test_split": test_split, "test_tiles": len(pairs), "steps": steps,
        "methods": {m.name: {"config": m.config_source, "overrides": m.overrides} for m in resolved},
    }
    write_text_atomic(out / "benchmark.json", json.dumps(settings, indent=2) + "\n")
    translate_device = resolve_device(device)

    for method in resolved:
        train_and_translate(method, pairs, translate_device, progress=progress, log=log, label=f"benchmark: {method.name}")

    real_dir = _common_folder([p.ihc for p in pairs], out / "reference" / "ihc")
    he_dir = _common_folder([p.he for p in pairs], out / "reference" / "he")
    options = evaluation or EvaluationOptions()
    if options.extraction is None and (root / "extraction.json").is_file():
        options.extraction = str(root)
    metrics = evaluate(real_dir, {m.name: m.generated_dir for m in resolved}, out / "report", he_dir=he_dir,
                       options=options, log=log)
    rows = table_rows(metrics, resolved)
    write_text_atomic(out / "table.md", format_table(rows, metrics, steps))
    write_text_atomic(out / "table.csv", table_csv(rows))
    comparison = comparison_figure(out / "comparison.png", pairs, resolved)
    log(f"benchmark: wrote {out / 'table.md'}, {out / 'table.csv'}, {comparison} and {out / 'report' / 'index.html'}")
    return {"metrics": metrics, "table": rows,
            "files": {"table_md": out / "table.md", "table_csv": out / "table.csv", "comparison": comparison,
                      "report": out / "report" / "index.html"}}


# ----------------------------------------------------------------------------- table and figure

# (column, metrics.json path, digits, better)
COLUMNS: tuple[tuple[str, tuple[str, ...], int, str], ...] = (
    ("SSIM", ("ssim", "mean"), 4, "higher"),
    ("PSNR", ("psnr", "mean"), 2, "higher"),
    ("FID", ("fid", "value"), 2, "lower"),
    ("KID", ("kid", "mean"), 4, "lower"),
    ("DISTS", ("dists", "mean"), 4, "lower"),
    ("LPIPS", ("lpips", "mean"), 4, "lower"),
    ("nuclei count MAE", ("knowledge", "nuclei", "mae"), 2, "lower"),
    ("membrane mask MAE", ("knowledge", "membrane", "mean_mask_mae"), 4, "lower"),
    # HER2 agreement of generated with real IHC (tdkstain score on both; evaluation's "her2" entry)
    ("HER2 kappa", ("her2", "kappa"), 3, "higher"),
    ("HER2 accuracy", ("her2", "accuracy"), 3, "higher"),
    ("H-score MAE", ("her2", "h_score_mae"), 1, "lower"),
)


def _get(entry: dict, path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(entry, dict) or key not in entry:
            return None
        entry = entry[key]
    if not isinstance(entry, (int, float)) or isinstance(entry, bool) or not math.isfinite(entry):
        return None  # missing, or undefined (a kappa over pairs all of one score is NaN)
    return float(entry)


def table_rows(metrics: dict, methods: list[BenchmarkMethod]) -> list[dict[str, Any]]:
    """One dict per method: ``method``, ``name`` (display), ``steps`` and each column's value (None: unavailable)."""
    rows = []
    for m in methods:
        entry = metrics["methods"][m.name]
        row: dict[str, Any] = {"method": m.name, "name": table1_rows().get(m.name, ("", m.name))[1], "steps": m.cfg.train.max_steps}
        for column, path, _, _ in COLUMNS:
            row[column] = _get(entry, path)
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]], metrics: dict, steps: int | None) -> str:
    """Markdown: one row per method; unavailable metrics as "n/a" (the reason is in report/metrics.json)."""
    shown = [c for c in COLUMNS if any(r[c[0]] is not None for r in rows)]
    arrows = {"higher": "↑", "lower": "↓"}
    lines = [
        "# Benchmark (Table 1 protocol)",
        "",
        f"{metrics['tiles']} test tiles; training budget: {steps if steps is not None else 'each preset’s full schedule'} steps per method.",
        "Metric definitions: report/metrics.json (`definitions`); plots: report/plots/, report/index.html.",
        "",
        "| Method | " + " | ".join(f"{c[0]} {arrows[c[3]]}" for c in shown) + " |",
        "|---|" + "---:|" * len(shown),
    ]
    for r in rows:
        cells = [f"{r[c[0]]:.{c[2]}f}" if r[c[0]] is not None else "n/a" for c in shown]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    missing = [c[0] for c in COLUMNS if c not in shown]
    if missing:
        lines += ["", f"Not computed (weights missing or disabled): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def table_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "name", "steps"] + [c[0] for c in COLUMNS])
    for r in rows:
        writer.writerow([r["method"], r["name"], r["steps"]] + ["" if r[c[0]] is None else repr(r[c[0]]) for c in COLUMNS])
    return buffer.getvalue()


def comparison_figure(path: Path, pairs: list, methods: list[BenchmarkMethod], tiles: int | None = 4, *,
                      names: list[str] | None = None, row_labels: list[str] | None = None) -> Path:
    """Fig. 3 style panel: rows = test tiles, columns = H&E, real IHC, each method.

    ``tiles``: how many rows, spread over ``pairs``; None shows every pair in order. ``names``: the
    methods' column titles (default their Table 1 display names); ``row_labels``: one per row (default the stems).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tdkstain.plumbing.atomic import atomic_path
    from tdkstain.data.images import read_rgb

    chosen = pairs if tiles is None else [pairs[i] for i in np.linspace(0, len(pairs) - 1, min(tiles, len(pairs))).round().astype(int)]
    names = names or [table1_rows().get(m.name, ("", m.name))[1] for m in methods]
    columns = ["H&E", "real IHC"] + list(names)
    fig, axes = plt.subplots(len(chosen), len(columns), figsize=(1.8 * len(columns), 1.8 * len(chosen) + 0.3), squeeze=False)
    for r, pair in enumerate(chosen):
        images = [read_rgb(pair.he), read_rgb(pair.ihc)] + [read_rgb(m.generated_dir / f"{pair.stem}.png") for m in methods]
        for c, image in enumerate(images):
            ax = axes[r][c]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
        axes[r][0].set_ylabel(pair.stem if row_labels is None else row_labels[r], fontsize=6)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
