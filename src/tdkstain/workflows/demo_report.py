"""The HTML report of ``tdkstain demo``: one page that says what was done and how well it worked.

The page lives in ``OUT/report/index.html``; every picture it shows is copied
(or drawn) into ``OUT/report/figures/`` so the folder can be moved or zipped on
its own, and links to the fuller reports beside it (``../evaluation/``,
``../data/extraction_report/``) are relative.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tdkstain.plumbing.atomic import atomic_path, write_text_atomic

# The pass/fail rule of the headline. L1 is the training's reconstruction term and SSIM the
# paper's main image metric (docs/method.md); the stained-membrane IoU against the synthetic truth
# and the HER2 agreement with the real IHC (quadratic kappa of tdkstain score's readings) are what
# the method is for: all four must beat both baselines for the demo to count as having learnt.
HEADLINE_RULE = ("lower L1, higher SSIM, higher stained-membrane IoU against the truth and higher HER2 kappa "
                 "against the real IHC than both the untrained generator and the mean-colour baseline")
# (label, key in truth.json's per-run summary values, digits) of the truth measures in the headline rule.
TRUTH_RULE = (("stained-membrane IoU", "membrane_iou", 3), ("HER2 kappa vs real IHC", "her2_kappa_real", 3))

METHOD_NAMES = ("TDKstain", "untrained", "mean-colour")
METHOD_TEXT = {
    "TDKstain": "the trained generator",
    "untrained": "the same generator as initialised at step 0 (same seed): what training added",
    "mean-colour": "every pixel painted the mean IHC colour of the training tiles: the best constant guess",
}

# Loss terms of metrics.jsonl drawn in the loss-curve figure (names written by tdkstain.training).
LOSS_TERMS = ("generator/l1", "generator/membrane", "generator/nuclei", "generator/gan",
              "discriminator/loss", "estimator/loss")


@dataclass
class DemoFacts:
    """Everything the report shows, gathered by ``tdkstain demo``.

    Attributes:
        out: the demo's output folder (holds data/, run/, virtual/, evaluation/, ...).
        settings: name -> value shown in the settings table.
        steps: one dict per step: ``title``, ``command`` (the CLI line or a
            description), ``seconds`` (float or None), ``status`` ("ran" or
            "done before").
        scores: ``{method: {"l1", "psnr", "ssim", "tiles"}}`` over the test tiles.
        real_he: ``(input png, stained png)`` of the real H&E example, or None.
        slide: ``(he thumbnail png, stained thumbnail png, stained tif)``, or None.
        truth: ``{method: run summary}`` of ``truth.json``: measures against the synthetic truth.
        total_seconds: wall time of this run of the demo.
    """

    out: Path
    settings: dict[str, Any]
    steps: list[dict[str, Any]]
    scores: dict[str, dict[str, float]]
    truth: dict[str, dict] = field(default_factory=dict)  # method -> run summary of truth.json (evaluation.truth)
    real_he: tuple[Path, Path] | None = None
    slide: tuple[Path, Path, Path] | None = None
    total_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def beats_baselines(scores: dict[str, dict[str, float]], truth: dict[str, dict] | None = None) -> tuple[bool, list[str]]:
    """Whether TDKstain beats both baselines by :data:`HEADLINE_RULE`, and a reason per failure.

    Args:
        scores: ``{method: {"l1", "ssim", ...}}`` (:func:`tile_scores`).
        truth: ``{method: run summary}`` of truth.json (``evaluation.truth.run_values``); None checks L1 and SSIM
            only. An undefined value (NaN: e.g. no tile scorable) never beats anything and is always beaten.
    """
    import math

    trained = scores["TDKstain"]
    failures = []
    for name in METHOD_NAMES[1:]:
        base = scores[name]
        if not trained["l1"] < base["l1"]:
            failures.append(f"L1 {trained['l1']:.4f} is not below {name}'s {base['l1']:.4f}")
        if not trained["ssim"] > base["ssim"]:
            failures.append(f"SSIM {trained['ssim']:.4f} is not above {name}'s {base['ssim']:.4f}")
        if truth is None:
            continue
        for label, key, digits in TRUTH_RULE:
            mine, theirs = truth["TDKstain"]["values"][key], truth[name]["values"][key]
            defined = mine is not None and math.isfinite(mine)
            if not defined or (theirs is not None and math.isfinite(theirs) and not mine > theirs):
                failures.append(f"{label} {_fmt(mine, digits)} is not above {name}'s {_fmt(theirs, digits)}")
    return not failures, failures


def tile_scores(real_dir: Path, fake_dir: Path) -> dict[str, float]:
    """Mean L1 ([-1, 1] units), PSNR (dB) and SSIM of every ``fake_dir/STEM.png`` against ``real_dir/STEM.png``.

    Same definitions as the trainer's validation (:func:`tdkstain.evaluation.validation.image_scores`).
    """
    from tdkstain.plumbing.errors import TdkstainError
    from tdkstain.data.images import read_rgb
    from tdkstain.evaluation.validation import image_scores

    fakes = sorted(fake_dir.glob("*.png"))
    if not fakes:
        raise TdkstainError(f"{fake_dir}: no generated tiles to score")
    totals: dict[str, float] = {}
    for fake in fakes:
        real = real_dir / fake.name
        if not real.is_file():
            raise TdkstainError(f"{fake}: no real IHC tile {real} to compare it with")
        for key, value in image_scores(read_rgb(fake), read_rgb(real)).items():
            totals[key] = totals.get(key, 0.0) + value
    scores = {key: value / len(fakes) for key, value in totals.items()}
    scores["tiles"] = len(fakes)
    return scores


def plot_losses(metrics_jsonl: Path, out_png: Path) -> bool:
    """Draw the training losses and validation scores of ``metrics.jsonl``; False if it holds none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = [], []
    for line in metrics_jsonl.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        (train if record.get("kind") == "train" else val if record.get("kind") == "val" else []).append(record)
    if not train:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for term in LOSS_TERMS:
        points = [(r["step"], r[term]) for r in train if term in r]
        if points:
            steps, values = zip(*points)
            axes[0].plot(steps, values, label=term)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_title("training losses (weighted, mean over log_every steps)")
    axes[0].legend(fontsize=7)
    if val:
        steps = [r["step"] for r in val]
        axes[1].plot(steps, [r["val/l1"] for r in val], "o-", label="L1 (lower is better)")
        axes[1].plot(steps, [r["val/ssim"] for r in val], "s-", label="SSIM (higher is better)")
        axes[1].set_ylim(0, 1)
        axes[1].legend(fontsize=8)
    else:
        axes[1].text(0.5, 0.5, "no validation yet", ha="center", va="center")
    axes[1].set_xlabel("step")
    axes[1].set_title("held-out validation")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return True


def _copy(source: Path, figures: Path, name: str | None = None) -> str:
    """Copy ``source`` into ``figures/`` and return its link relative to the report."""
    target = figures / (name or source.name)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return f"figures/{target.name}"


def _rel(path: Path, report_dir: Path) -> str:
    """A link from the report folder to ``path`` (both under the demo's folder)."""
    import os

    return Path(os.path.relpath(path.resolve(), report_dir.resolve())).as_posix()


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _evaluation_rows(metrics: dict) -> list[list[str]]:
    rows = []
    for name, m in metrics.get("methods", {}).items():
        fid = m.get("fid", {})
        kid = m.get("kid", {})
        knowledge = m.get("knowledge", {})
        rows.append([
            html.escape(name),
            _fmt(m.get("ssim", {}).get("mean")),
            _fmt(m.get("psnr", {}).get("mean"), 2),
            _fmt(fid.get("value"), 1) if "value" in fid else "not computed",
            _fmt(kid.get("mean"), 3) if "mean" in kid else "not computed",
            _fmt(knowledge.get("nuclei", {}).get("mae"), 2),
            _fmt(knowledge.get("membrane", {}).get("training_mask_mae")),
            _fmt(knowledge.get("membrane", {}).get("mean_mask_mae")),
        ])
    return rows


_NUMBER = re.compile(r"^-?[0-9]+(\.[0-9]+)?( s)?$")


# (label, getter, lower is better) of the evaluation metrics read out under its table.
_EVALUATION_METRICS = (
    ("SSIM", lambda m: m.get("ssim", {}).get("mean"), False),
    ("PSNR", lambda m: m.get("psnr", {}).get("mean"), False),
    ("FID", lambda m: m.get("fid", {}).get("value"), True),
    ("KID", lambda m: m.get("kid", {}).get("mean"), True),
    ("nuclei count MAE", lambda m: m.get("knowledge", {}).get("nuclei", {}).get("mae"), True),
    ("membrane mask MAE (training)", lambda m: m.get("knowledge", {}).get("membrane", {}).get("training_mask_mae"), True),
    ("membrane mask MAE (mean over thresholds)",
     lambda m: m.get("knowledge", {}).get("membrane", {}).get("mean_mask_mae"), True),
)


def _reading(metrics: dict) -> str:
    """Which metrics of the evaluation TDKstain is best on, and which a baseline wins (HTML)."""
    methods = metrics.get("methods", {})
    if "TDKstain" not in methods or len(methods) < 2:
        return ""
    best, lost = [], []
    for label, get, lower in _EVALUATION_METRICS:
        values = {name: get(m) for name, m in methods.items() if get(m) is not None}
        if "TDKstain" not in values or len(values) < 2:
            continue
        winner = (min if lower else max)(values, key=values.get)
        if values[winner] == values["TDKstain"]:
            best.append(label)
        else:
            lost.append(f"{label} ({winner} is better)")
    text = f"TDKstain is best on: {', '.join(best) or 'none'}."
    if lost:
        text += (f" Not on: {', '.join(lost)}. A constant tile has no membrane at all, so it scores well on membrane "
                 "masks wherever the real tiles have little membrane (HER2 0 and 1+, most of every tile); the truth "
                 "measures above say whether the generator draws the membranes where they are.")
    return html.escape(text)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    def cell(c: str) -> str:
        return f'<td class="num">{c}</td>' if _NUMBER.match(c) else f"<td>{c}</td>"

    body = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


CSS = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 1.5em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; } td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; white-space: nowrap; } th { background: #f2f2f2; }
.pass { background: #e3f6e3; border: 2px solid #2a8a2a; padding: 0.7em 1em; font-size: 1.15em; }
.fail { background: #fbe5e5; border: 2px solid #b22; padding: 0.7em 1em; font-size: 1.15em; }
img { max-width: 100%; border: 1px solid #ddd; } figure { margin: 0.8em 0; } figcaption { font-size: 0.9em; color: #555; }
code, pre { background: #f6f6f6; } pre { padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
.pair { display: flex; gap: 1em; align-items: flex-start; } .pair figure { flex: 1; }
.note { color: #555; font-size: 0.92em; }
"""


def write_report(facts: DemoFacts) -> Path:
    """Write ``facts.out/report/index.html`` (and its figures); return its path."""
    out = facts.out
    report_dir = out / "report"
    figures = report_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    parts: list[str] = []
    parts += _headline_section(facts)
    parts += _steps_section(facts)
    parts += _truth_section(facts, figures)
    parts += _test_tiles_section(out, figures)
    parts += _training_section(out, figures)
    parts += _evaluation_section(out, figures, report_dir)
    parts += _real_tissue_section(facts, figures, report_dir)

    body = "\n".join(parts)
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>tdkstain demo report</title>"
        f"<style>{CSS}</style></head><body>\n"
        "<h1>tdkstain demo</h1>\n"
        "<p>H&amp;E to virtual HER2 IHC with TDKstain (MICCAI 2024), trained from scratch on synthetic paired "
        "tissue. Research software: not for diagnosis.</p>\n"
        f"{body}\n</body></html>\n"
    )
    index = report_dir / "index.html"
    write_text_atomic(index, page)
    return index


def _headline_section(facts: DemoFacts) -> list[str]:
    """The verdict of :data:`HEADLINE_RULE` first, then the scores it rests on and how they were measured."""
    parts = []
    passed, failures = beats_baselines(facts.scores, facts.truth or None)
    trained = facts.scores["TDKstain"]
    verdict = (
        f"PASS: the trained TDKstain beats both baselines ({HEADLINE_RULE}) on {int(trained['tiles'])} held-out test tiles."
        if passed else
        f"FAIL: the trained TDKstain does not beat both baselines ({HEADLINE_RULE}): {'; '.join(failures)}. "
        "Train longer (--steps) or check the run."
    )
    parts.append(f'<p class="{"pass" if passed else "fail"}"><b>{html.escape(verdict)}</b></p>')
    score_rows = []
    for name, s in facts.scores.items():
        values = facts.truth.get(name, {}).get("values", {})
        score_rows.append([f"<b>{name}</b>" if name == "TDKstain" else name, _fmt(s["l1"]), _fmt(s["psnr"], 2),
                           _fmt(s["ssim"]), _fmt(values.get("membrane_iou"), 3), _fmt(values.get("her2_kappa_real"), 3),
                           html.escape(METHOD_TEXT[name])])
    parts.append(_table(["method", "L1 &darr;", "PSNR (dB) &uarr;", "SSIM &uarr;", "stained-membrane IoU &uarr;",
                         "HER2 kappa vs real IHC &uarr;", "what it is"], score_rows))
    parts.append(
        '<p class="note">Means over the held-out test tiles of the synthetic dataset (never seen in training), '
        "each generated tile against the real IHC of the same section. L1: mean absolute difference in the "
        "networks' [-1, 1] units (the training's L1 term, before its weight 10); PSNR and SSIM: scikit-image on "
        "uint8 RGB, data_range 255 (the BCI evaluation's definitions). Stained-membrane IoU: pixels stained "
        "(DAB optical density >= 0.2, the HER2 scorer's 1+ threshold) on the generated tile against the true "
        "membranes stained on the real IHC, pooled over the tiles (evaluation.truth). HER2 kappa: quadratic-weighted "
        "kappa of <code>tdkstain score</code> on the generated tiles against its reading of the real IHC, over the "
        "tiles scorable on both (n/a: none was).</p>"
    )
    return parts


# (label, key in the run summary's values, digits, better) of the truth table.
_TRUTH_COLUMNS = (
    ("DAB error in true membranes (OD)", "dab_abs_error", 3, "&darr;"),
    ("DAB bias in true membranes (OD)", "dab_signed_error", 3, ""),
    ("stained-membrane IoU", "membrane_iou", 3, "&uarr;"),
    ("nuclei F1", "nuclei_f1", 3, "&uarr;"),
    ("nuclei count MAE", "nuclei_count_abs_error", 2, "&darr;"),
    ("HER2 kappa vs truth", "her2_kappa_truth", 3, "&uarr;"),
    ("HER2 kappa vs real IHC", "her2_kappa_real", 3, "&uarr;"),
)


def _truth_section(facts: DemoFacts, figures: Path) -> list[str]:
    """Membranes, nuclei and HER2 of every method against the synthetic truth, and the HER2 agreement figure."""
    if not facts.truth:
        return []
    parts = ["<h2>Membranes, nuclei and HER2 against the truth</h2>",
             "<p>What TDKstain's two branches guard, measured on the held-out tiles against what the synthetic tissue "
             "really holds (the sections are aligned, so pixel by pixel): the DAB inside the true membranes, the "
             "membranes stained, the nuclei, and the HER2 score <code>tdkstain score</code> reads from each virtual "
             "IHC, against the true score and against its reading of the real IHC.</p>"]
    rows = []
    for name, summary in facts.truth.items():
        values = summary.get("values", {})
        rows.append([f"<b>{name}</b>" if name == "TDKstain" else name,
                     *(_fmt(values.get(key), digits) for _, key, digits, _ in _TRUTH_COLUMNS),
                     f"{summary.get('her2_scored_vs_real', 0)} / {summary.get('tiles', 0)}"])
    parts.append(_table(["method", *(f"{label} {arrow}" for label, _, _, arrow in _TRUTH_COLUMNS),
                         "tiles scorable on both"], rows))
    by_her2 = facts.truth.get("TDKstain", {}).get("by_her2", {})
    if by_her2:
        parts.append(_table(["TDKstain, per true HER2 score", "tiles", "DAB error in true membranes (OD) &darr;",
                             "stained-membrane IoU &uarr;"],
                            [[html.escape(label), str(v["tiles"]), _fmt(v["dab_abs_error"], 3), _fmt(v["membrane_iou"], 3)]
                             for label, v in by_her2.items()]))
    confusion = facts.out / "evaluation" / "plots" / "her2_confusion.png"
    if confusion.is_file():
        link = _copy(confusion, figures, "her2_confusion.png")
        parts.append(f'<figure><img src="{link}" alt="HER2 confusion matrices"><figcaption>HER2 score of each virtual '
                     "IHC against the real IHC's, from <code>tdkstain evaluate</code> (its report has the kappa's "
                     "confidence interval, the Bland-Altman plot of H-scores and the DAB agreement).</figcaption></figure>")
    parts.append('<p class="note">Definitions: <code>truth.json</code> (<code>params</code>) and docs/ablation.md; the '
                 "same measures the ablation study (<code>tdkstain benchmark --study ablation</code>) reports with "
                 "several seeds.</p>")
    return parts


def _steps_section(facts: DemoFacts) -> list[str]:
    """What was done: every step with its command and time, the settings, the run's configuration and notes."""
    parts = ["<h2>What was done</h2>"]
    step_rows = []
    for i, step in enumerate(facts.steps, 1):
        seconds = step.get("seconds")
        when = "n/a" if seconds is None else f"{seconds:.1f} s"
        status = "earlier run" if step.get("status") == "done before" else "this run"
        step_rows.append([f"{i}. {html.escape(step['title'])}", f"<code>{html.escape(step['command'])}</code>", when,
                          status])
    parts.append(_table(["step", "command", "time", "when"], step_rows))
    all_steps = sum(step.get("seconds") or 0.0 for step in facts.steps)
    parts.append(f"<p>The steps took {all_steps / 60:.1f} min in all; this run of <code>tdkstain demo</code> took "
                 f"{facts.total_seconds / 60:.1f} min (steps done in an earlier run are skipped: rerun it with the "
                 "same --out to continue an interrupted demo).</p>")
    setting_rows = [[html.escape(str(k)), html.escape(str(v))] for k, v in facts.settings.items()]
    parts.append("<h3>Settings</h3>" + _table(["setting", "value"], setting_rows))
    config = facts.out / "run" / "config.yaml"
    if config.is_file():
        parts.append("<details><summary>the run's full configuration (<code>run/config.yaml</code>)</summary>"
                     f"<pre>{html.escape(config.read_text())}</pre></details>")
    for note in facts.notes:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
    return parts


def _test_tiles_section(out: Path, figures: Path) -> list[str]:
    """The evaluation's grids of TDKstain's test tiles, copied into ``figures``."""
    parts = ["<h2>Held-out test tiles</h2>"]
    parts.append(
        "<p>One test tile per HER2 score. Panels, left to right: H&amp;E input | real IHC | virtual IHC (TDKstain) | "
        "membrane mask of the real IHC | of the virtual IHC | real IHC with membrane (green) and nuclei (magenta) "
        "| the same for the virtual IHC. Masks and nuclei use the dataset's extraction settings "
        "(<code>data/extraction.json</code>).</p>"
    )
    comparison = _comparison_by_score(out, figures / "virtual_ihc_by_score.png")
    if comparison is not None:
        parts.append('<figure><img src="figures/virtual_ihc_by_score.png" alt="virtual IHC by HER2 score">'
                     "<figcaption>One held-out tile per true HER2 score (rows 0 to 3+): H&amp;E, real IHC, and the "
                     "virtual IHC of each method.</figcaption></figure>")
    grids = sorted((out / "evaluation" / "grids" / "TDKstain").glob("*.png"))
    for grid in grids:
        link = _copy(grid, figures, f"grid_{grid.name}")
        parts.append(f'<figure><img src="{html.escape(link)}" alt="{html.escape(grid.stem)}">'
                     f"<figcaption>{html.escape(grid.stem)}</figcaption></figure>")
    if not grids:
        parts.append("<p>(no grids: the evaluation wrote none)</p>")
    return parts


def _comparison_by_score(out: Path, path: Path) -> Path | None:
    """H&E | real IHC | every method, one row per HER2 score (the first test tile of each); None without tiles."""
    from types import SimpleNamespace

    from tdkstain.data.pairs import HER2_LABELS, parse_her2_label
    from tdkstain.workflows.table1 import comparison_figure

    first: dict[str, SimpleNamespace] = {}
    for he in sorted((out / "data" / "test_HE").glob("*.png")):
        label = parse_her2_label(he.stem)
        ihc = out / "data" / "test_IHC" / he.name
        if label in HER2_LABELS and label not in first and ihc.is_file():
            first[label] = SimpleNamespace(he=he, ihc=ihc, stem=he.stem)
    chosen = [first[label] for label in HER2_LABELS if label in first]
    methods = [SimpleNamespace(name=name, generated_dir=out / "virtual" / name) for name in METHOD_NAMES]
    if not chosen or not all((m.generated_dir / f"{p.stem}.png").is_file() for m in methods for p in chosen):
        return None
    return comparison_figure(path, chosen, methods, None, names=list(METHOD_NAMES),
                             row_labels=[f"HER2 {parse_her2_label(p.stem)}" for p in chosen])


def _training_section(out: Path, figures: Path) -> list[str]:
    """The loss curves of ``run/metrics.jsonl``, drawn into ``figures``."""
    parts = ["<h2>Training</h2>"]
    metrics_jsonl = out / "run" / "metrics.jsonl"
    if metrics_jsonl.is_file() and plot_losses(metrics_jsonl, figures / "losses.png"):
        parts.append('<figure><img src="figures/losses.png" alt="loss curves"><figcaption>From '
                     "<code>run/metrics.jsonl</code>; the same numbers are in TensorBoard "
                     "(<code>tensorboard --logdir run</code>).</figcaption></figure>")
    else:
        parts.append("<p>(no training records in run/metrics.jsonl)</p>")
    return parts


def _evaluation_section(out: Path, figures: Path, report_dir: Path) -> list[str]:
    """The table and analysis plots of ``tdkstain evaluate``, with links to its report and the extraction report."""
    parts = ["<h2>Evaluation with <code>tdkstain evaluate</code></h2>"]
    metrics_path = out / "evaluation" / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        parts.append(_table(
            ["method", "SSIM &uarr;", "PSNR &uarr;", "FID &darr;", "KID &darr;", "nuclei count MAE &darr;",
             "membrane mask MAE (training) &darr;", "membrane mask MAE (mean over thresholds) &darr;"],
            _evaluation_rows(metrics),
        ))
        reading = _reading(metrics)
        if reading:
            parts.append(f"<p>{reading}</p>")
        parts.append(
            f'<p class="note">On {metrics.get("tiles")} test tiles. FID/KID on a dozen tiles are biased (fewer tiles '
            "than the 2048 Inception features): compare them only between these methods. The full report, with "
            f'every definition and per-tile values: <a href="{_rel(out / "evaluation" / "index.html", report_dir)}">'
            "evaluation/index.html</a>.</p>"
        )
        parts.append("<h3>Nuclei and membrane analyses (the paper's Fig. 3)</h3>")
        captions = {
            "nuclei_count_difference.png": "nuclei detected on the generated IHC minus on the real IHC, per tile",
            "membrane_mask_mae.png": "membrane mask error against the threshold, per HER2 score",
            "membrane_fraction_difference.png": "membrane-stained area fraction, generated minus real, per HER2 score",
        }
        for name, caption in captions.items():
            plot = out / "evaluation" / "plots" / name
            if plot.is_file():
                link = _copy(plot, figures, f"evaluation_{name}")
                parts.append(f'<figure><img src="{link}" alt="{html.escape(caption)}">'
                             f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    else:
        parts.append("<p>(the evaluation has not run)</p>")
    extraction_report = out / "data" / "extraction_report" / "index.html"
    if extraction_report.is_file():
        parts.append(f'<p>How well the extracted knowledge (DAB, membrane masks, nuclei) matches the synthetic truth: '
                     f'<a href="{_rel(extraction_report, report_dir)}">data/extraction_report/index.html</a>.</p>')
    return parts


def _real_tissue_section(facts: DemoFacts, figures: Path, report_dir: Path) -> list[str]:
    """The real H&E example and the stained slide, copied into ``figures``, with the caveat they need."""
    parts = ["<h2>Real tissue</h2>"]
    parts.append("<p>The model was trained on synthetic tissue only; on real H&amp;E it shows what it learnt, not "
                 "a usable HER2 stain. Train on real pairs (BCI, MIST) with the paper preset for that.</p>")
    if facts.real_he is not None:
        he_link = _copy(facts.real_he[0], figures, "real_he_input.png")
        ihc_link = _copy(facts.real_he[1], figures, "real_he_virtual_ihc.png")
        parts.append(
            f'<div class="pair"><figure><img src="{he_link}" alt="real H&amp;E"><figcaption>real H&amp;E '
            f"(<code>{html.escape(facts.real_he[0].name)}</code>, tiatoolbox sample)</figcaption></figure>"
            f'<figure><img src="{ihc_link}" alt="virtual IHC of the real H&amp;E"><figcaption>its virtual IHC '
            "(<code>tdkstain translate</code>)</figcaption></figure></div>"
        )
    if facts.slide is not None:
        he_thumb, ihc_thumb, tif = facts.slide
        he_link = _copy(he_thumb, figures, "slide_he_thumbnail.png")
        ihc_link = _copy(ihc_thumb, figures, "slide_virtual_ihc_thumbnail.png")
        parts.append(
            f'<div class="pair"><figure><img src="{he_link}" alt="H&amp;E slide"><figcaption>the H&amp;E slide '
            "(<code>he_cmu_small_region.svs</code>, a region of OpenSlide's CMU-1 test slide)</figcaption></figure>"
            f'<figure><img src="{ihc_link}" alt="virtual IHC slide"><figcaption>its virtual IHC, from the pyramidal '
            f'TIFF written by <code>tdkstain slide</code>: <a href="{_rel(tif, report_dir)}">{html.escape(tif.name)}</a> '
            "(opens in QuPath). Tiles without tissue are not stained: they are filled with the model's own "
            "rendering of the slide's glass, blended into their stained neighbours.</figcaption></figure></div>"
        )
    return parts


def write_constant_tiles(he_dir: Path, out_dir: Path, rgb: np.ndarray) -> int:
    """Paint ``rgb`` ``(3,)`` uint8 over a tile the size of each ``he_dir/*.png``; returns the number written."""
    from tdkstain.data.images import image_size, write_png

    count = 0
    for he in sorted(he_dir.glob("*.png")):
        target = out_dir / he.name
        if target.is_file():
            continue
        height, width = image_size(he)
        write_png(target, np.broadcast_to(np.asarray(rgb, np.uint8), (height, width, 3)).copy())
        count += 1
    return count
