"""The evaluation report: plots (matplotlib, Agg), tile grids and ``index.html``.

Everything the page shows is a file in the report folder, linked by a
relative URL, so the folder can be zipped, moved or served as it is. A tile
name that is not valid UTF-8 is shown with U+FFFD and linked by its bytes.

Layout::

    OUT/index.html
    OUT/metrics.json, OUT/per_image.csv
    OUT/plots/nuclei_count_difference.png        Fig. 3a: histogram per method
    OUT/plots/membrane_mask_mae.png              Fig. 3b-e: mask MAE vs threshold, per HER2 score
    OUT/plots/membrane_fraction_difference.png   stained-area fraction difference vs threshold
    OUT/grids/METHOD/STEM.png                    H&E | real | generated | masks | overlays
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence
from urllib.parse import quote

import numpy as np

from tdkstain.plumbing.atomic import atomic_path, write_text_atomic
from tdkstain.data.images import read_rgb, write_png
from tdkstain.knowledge.maps import ExtractionParams, membrane_mask_binary
from tdkstain.knowledge.nuclei import detect_nuclei
from tdkstain.knowledge.overlays import membrane_nuclei_overlay, montage

if TYPE_CHECKING:
    from tdkstain.evaluation.pairing import ImagePair
    from tdkstain.evaluation.runner import EvaluationOptions, MethodResult

GRID_SIDE = 256  # px per image in a grid
GRID_COLUMNS = (
    "H&E",
    "real IHC",
    "generated IHC",
    "real membrane mask",
    "generated membrane mask",
    "real: membrane + nuclei",
    "generated: membrane + nuclei",
)
_GROUPS = ("all", "0", "1+", "2+", "3+")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    _pyplot().close(fig)


def plot_nuclei_histogram(path: Path, differences: dict[str, Sequence[int]]) -> Path:
    """Histogram of per-tile nuclei count differences (generated - real), one outline per method."""
    plt = _pyplot()
    values = [d for ds in differences.values() for d in ds]
    low, high = (min(values), max(values)) if values else (-1, 1)
    bins = np.arange(low - 0.5, high + 1.5, max(1, int(np.ceil((high - low + 1) / 40))))
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for name, ds in differences.items():
        mae = float(np.mean(np.abs(ds))) if len(ds) else float("nan")
        ax.hist(ds, bins=bins, histtype="step", linewidth=1.6, label=f"{name} (MAE {mae:.2f})")
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("nuclei count difference per tile (generated - real)")
    ax.set_ylabel("tiles")
    ax.legend(fontsize=8)
    _save(fig, path)
    return path


def plot_membrane_curves(path: Path, summaries: dict[str, dict], key: str, ylabel: str) -> Path:
    """One panel per HER2 group (all, 0, 1+, 2+, 3+ when present), one line per method, x = threshold."""
    plt = _pyplot()
    groups = [g for g in _GROUPS if any(g in s["membrane"][key] for s in summaries.values())]
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.2), dpi=100, sharey=True, squeeze=False)
    for ax, group in zip(axes[0], groups):
        for name, s in summaries.items():
            if group in s["membrane"][key]:
                n = s["membrane"]["tiles_per_group"][group]
                ax.plot(s["membrane"]["thresholds"], s["membrane"][key][group], marker=".", label=f"{name}")
                ax.set_title(f"HER2 {group}" if group != "all" else "all tiles", fontsize=10)
                ax.text(0.98, 0.98, f"n={n}", transform=ax.transAxes, ha="right", va="top", fontsize=8)
        if key == "fraction_difference":
            ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xlabel("DAB saturation threshold")
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=8)
    _save(fig, path)
    return path


def plot_confusions(path: Path, confusions: dict[str, np.ndarray], classes: Sequence[str], xlabel: str, ylabel: str,
                    titles: dict[str, str] | None = None) -> Path:
    """Confusion matrices side by side, one panel per name: counts, rows ``ylabel``, columns ``xlabel``."""
    plt = _pyplot()
    n = len(confusions)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.5), dpi=100, squeeze=False)
    for ax, (name, confusion) in zip(axes[0], confusions.items()):
        confusion = np.asarray(confusion)
        ax.imshow(confusion, cmap="Blues", vmin=0, vmax=max(1, int(confusion.max())))
        for (i, j), value in np.ndenumerate(confusion):
            ax.text(j, i, str(value), ha="center", va="center",
                    color="white" if value > confusion.max() / 2 else "black")
        ax.set_xticks(range(len(classes)), classes)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title((titles or {}).get(name, name), fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return path


def plot_bland_altman(path: Path, methods: dict[str, dict]) -> Path:
    """Bland-Altman plot of H-scores per method: mean of real and generated vs their difference, bias and 95 % limits.

    Args:
        methods: name -> ``{"h_score_pairs": [(real, generated), ...], "h_score_bias": b, "h_score_loa": [lo, hi]}``.
    """
    plt = _pyplot()
    n = len(methods)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), dpi=100, squeeze=False, sharey=True)
    for ax, (name, h) in zip(axes[0], methods.items()):
        pairs = np.asarray(h.get("h_score_pairs") or [], np.float64).reshape(-1, 2)
        if len(pairs):
            mean, diff = pairs.mean(axis=1), pairs[:, 1] - pairs[:, 0]
            ax.scatter(mean, diff, s=14, alpha=0.7)
            bias, loa = h.get("h_score_bias"), h.get("h_score_loa") or [None, None]
            if bias is not None:
                ax.axhline(bias, color="C3", linewidth=1.2, label=f"bias {bias:+.1f}")
            for limit in loa:
                if limit is not None and np.isfinite(limit):
                    ax.axhline(limit, color="C3", linewidth=0.9, linestyle="--")
            if all(v is not None and np.isfinite(v) for v in loa):
                ax.plot([], [], color="C3", linestyle="--", label=f"95 % limits {loa[0]:+.0f} .. {loa[1]:+.0f}")
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no pair scorable on both sides", ha="center", va="center", transform=ax.transAxes)
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.set_xlim(0, 300)
        ax.set_xlabel("mean H-score of real and generated")
        ax.set_title(name, fontsize=9)
    axes[0][0].set_ylabel("H-score, generated - real")
    fig.tight_layout()
    _save(fig, path)
    return path


def _her2_section(out_dir: Path, metrics: dict) -> tuple[str, list[tuple[Path, str]]]:
    """The report's HER2 agreement table, and its figures (confusion matrices, Bland-Altman)."""
    from tdkstain.scoring import SCORES

    her2 = {name: m["her2"] for name, m in metrics["methods"].items() if m.get("her2")}
    if not her2:
        return "", []
    e = html.escape
    plots = out_dir / "plots"
    figures = [
        (plot_confusions(plots / "her2_confusion.png", {n: np.asarray(h["confusion"]) for n, h in her2.items()},
                         SCORES, "HER2 score of the generated IHC", "HER2 score of the real IHC",
                         {n: f"{n}: kappa {_plain(h['kappa'], 3)}, {h['scored']} pairs" for n, h in her2.items()}),
         "HER2 scores of the generated vs the real IHC (tdkstain score, ASCO/CAP 2018), pairs scorable on both sides."),
        (plot_bland_altman(plots / "her2_bland_altman.png", her2),
         "Bland-Altman plot of H-scores: each pair's difference (generated - real) against its mean; "
         "solid: bias, dashed: 95 % limits of agreement."),
    ]
    rows = []
    for name, h in her2.items():
        ci = h["kappa_ci95"]
        recall = " / ".join(_num(h["recall"][c], 2) for c in SCORES)
        rows.append(
            f"<tr><th>{e(name)}</th><td>{h['scored']} / {h['pairs']}</td><td>{_num(h['accuracy'], 3)}</td>"
            f"<td>{_num(h['kappa'], 3)} [{_num(ci[0], 2)}, {_num(ci[1], 2)}]</td><td>{recall}</td>"
            f"<td>{_num(h['h_score_mae'], 1)}</td><td>{_num(h['h_score_bias'], 1)} "
            f"({_num(h['h_score_loa'][0], 0)} .. {_num(h['h_score_loa'][1], 0)})</td>"
            f"<td>{_num(h['dab_pearson_r']['mean'], 3)}</td><td>{_num(h['dab_kl']['mean'], 3)}</td>"
            f"<td>{_num(h['iod_abs_rel_diff']['mean'], 3)}</td></tr>"
        )
    sanity = ""
    for name, h in her2.items():
        if "real_vs_label" in h:
            r = h["real_vs_label"]
            sanity = (f"<p class=small>The scorer on the <b>real</b> IHC against the dataset's own HER2 labels: "
                      f"accuracy {_num(r['accuracy'], 3)}, kappa {_num(r['kappa'], 3)} over {r['scored']} scorable tiles "
                      f"of {r['pairs']}. The agreement above is worth as much as this reading.</p>")
            break
    params = metrics.get("her2_scoring_params") or {}
    cells = params.get("cells", {})
    table = f"""<h2>HER2 agreement</h2>
<p>Each real and generated tile is scored by <code>tdkstain score</code> (ASCO/CAP 2018 on measured cell membranes;
tumour rule <i>{e(str(params.get('tumour_rule')))}</i>, DAB thresholds {e(str(cells.get('thresholds')))} OD, {e(str(cells.get('mpp')))} &micro;m/px,
at least {e(str(params.get('min_cells')))} tumour cells). Research use only.</p>
<table><tr><th>method</th><th>pairs scored</th><th>accuracy &uarr;</th><th>kappa (quadratic) [95 % CI] &uarr;</th>
<th>recall 0 / 1+ / 2+ / 3+ &uarr;</th><th>H-score MAE &darr;</th><th>H-score bias (limits)</th><th>DAB r &uarr;</th>
<th>DAB KL &darr;</th><th>|IOD diff| / IOD &darr;</th></tr>
{''.join(rows)}</table>
{sanity}"""
    return table, figures


def _num(value: Any, digits: int) -> str:
    """A number for the HTML tables; None or NaN as n/a."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return '<span class=na>n/a</span>'
    return f"{value:.{digits}f}"


def _plain(value: Any, digits: int) -> str:
    """A number for figure titles (plain text, no HTML); None or NaN as n/a."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _thumbnail(image: np.ndarray, side: int) -> np.ndarray:
    """(H, W, 3) or (H, W) uint8 -> at most ``side`` px on its longer edge (area-averaged)."""
    from PIL import Image

    scale = side / max(image.shape[:2])
    if scale >= 1:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def tile_grid(he: np.ndarray | None, real: np.ndarray, generated: np.ndarray, params: ExtractionParams, side: int = GRID_SIDE) -> np.ndarray:
    """One row: H&E | real | generated | both membrane masks | both membrane + nuclei overlays.

    Masks use the training extraction settings (unblurred); nuclei come from
    ``detect_nuclei`` with the same settings. Each image is shrunk to ``side`` px.
    Returns (h, w, 3) uint8.
    """
    cells = []
    scale = min(1.0, side / max(real.shape[:2]))
    blank = np.full_like(_thumbnail(real, side), 255)
    cells.append(_thumbnail(he, side) if he is not None and he.shape == real.shape else blank)
    cells += [_thumbnail(real, side), _thumbnail(generated, side)]
    masks = [np.where(membrane_mask_binary(im, params.membrane), 255, 0).astype(np.uint8) for im in (real, generated)]
    cells += [np.repeat(_thumbnail(m, side)[..., None], 3, axis=2) for m in masks]
    for image, mask in zip((real, generated), masks):
        centroids = detect_nuclei(image, params.nuclei) * scale
        cells.append(membrane_nuclei_overlay(_thumbnail(image, side), _thumbnail(mask, side), centroids))
    return montage(cells, columns=len(cells), gap=4)


def choose_grid_tiles(pairs: Sequence["ImagePair"], per_group: int) -> list["ImagePair"]:
    """The first ``per_group`` tiles (by stem) of each HER2 score; unlabelled tiles form one group."""
    chosen: list[ImagePair] = []
    for label in ("0", "1+", "2+", "3+", None):
        chosen += [p for p in pairs if p.label == label][:per_group]
    return chosen


def _href(path: Path, root: Path) -> str:
    """A relative URL; a name that is not valid UTF-8 is percent-encoded byte for byte (``%FF``), so the link still opens it."""
    return quote(path.relative_to(root).as_posix(), errors="surrogateescape")


def _fmt(entry: dict, key: str = "mean", digits: int = 4) -> str:
    if entry.get("available") is False:
        return '<span class="na" title="{}">n/a</span>'.format(html.escape(entry.get("reason", "")))
    value = entry.get(key, entry.get("value"))
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    if "std" in entry and entry.get("std") is not None and key == "mean":
        text += f" &plusmn; {entry['std']:.{digits}f}"
    if entry.get("canonical") is False:
        text += ' <span class="na" title="non-canonical weights">*</span>'
    return text


def write_report(
    out_dir: Path,
    metrics: dict,
    results: Sequence["MethodResult"],
    pairs: Sequence["ImagePair"],
    params: ExtractionParams,
    options: "EvaluationOptions",
) -> Path:
    """Write plots, grids and ``index.html`` under ``out_dir``; returns the HTML path."""
    out_dir = Path(out_dir)
    plots = out_dir / "plots"
    summaries = {name: m["knowledge"] for name, m in metrics["methods"].items()}
    figures = [
        (plot_nuclei_histogram(plots / "nuclei_count_difference.png",
                               {n: s["nuclei"]["differences"] for n, s in summaries.items()}),
         "Nuclei count difference per tile (Fig. 3a): generated minus real, same detector as training."),
        (plot_membrane_curves(plots / "membrane_mask_mae.png", summaries, "mask_mae", "mask MAE (pixels)"),
         "Membrane staining intensity error (Fig. 3b-e): share of pixels where the real and generated DAB masks "
         "disagree, per saturation threshold and HER2 score."),
        (plot_membrane_curves(plots / "membrane_fraction_difference.png", summaries, "fraction_difference",
                              "stained fraction, generated - real"),
         "Stained-area fraction difference (generated - real) per threshold; below zero the generator under-stains."),
    ]
    grid_rows: list[tuple[str, str | None, list[tuple[str, Path]]]] = []
    limit = {} if getattr(options, "max_pixels", None) is None else {"max_pixels": options.max_pixels}
    for pair in choose_grid_tiles(pairs, options.grid_tiles):
        real = read_rgb(pair.real, **limit)
        he = read_rgb(pair.he, **limit) if pair.he is not None else None
        images = []
        for r in results:
            fake_path = next(p.fake for p in r.pairing.pairs if p.stem == pair.stem)
            path = out_dir / "grids" / r.name / f"{pair.stem}.png"
            write_png(path, tile_grid(he, real, read_rgb(fake_path, **limit), params))
            images.append((r.name, path))
        grid_rows.append((pair.stem, pair.label, images))
    her2_html, her2_figures = _her2_section(out_dir, metrics)
    page = _render_html(out_dir, metrics, figures, grid_rows, her2_html, her2_figures)
    path = out_dir / "index.html"
    write_text_atomic(path, page)
    return path


def _render_html(out_dir: Path, metrics: dict, figures: list[tuple[Path, str]], grid_rows: list, her2_html: str = "",
                 her2_figures: list[tuple[Path, str]] = ()) -> str:
    e = html.escape
    methods = metrics["methods"]
    title = "tdkstain evaluation" + (f": {', '.join(methods)}" if len(methods) > 1 else f": {next(iter(methods))}")
    rows = []
    for name, m in methods.items():
        k = m["knowledge"]
        rows.append(
            f"<tr><th>{e(name)}</th><td>{_fmt(m['ssim'])}</td><td>{_fmt(m['psnr'], digits=2)}</td>"
            f"<td>{_fmt(m['fid'], 'value', 2)}</td><td>{_fmt(m['kid'], digits=4)}</td>"
            f"<td>{_fmt(m['dists'])}</td><td>{_fmt(m['lpips'])}</td>"
            f"<td>{k['nuclei']['mae']:.2f}</td><td>{k['membrane']['mean_mask_mae']:.4f}</td>"
            f"<td>{k['membrane']['training_mask_mae']:.4f}</td></tr>"
        )
    definitions = "".join(
        f"<li><b>{e(key.upper() if '_' not in key else key.replace('_', ' '))}</b>{'' if d.get('available', True) else ' (unavailable here)'}: {e(d['definition'])}</li>"
        for key, d in metrics["definitions"].items()
    )
    first = next(iter(methods.values()))["knowledge"]
    definitions += f"<li><b>Nuclei MAE</b>: {e(first['nuclei']['definition'])}</li>"
    definitions += f"<li><b>Membrane mask MAE</b>: {e(first['membrane']['mask_mae_definition'])}; the table gives its mean over thresholds</li>"
    definitions += f"<li><b>Mask MAE at training settings</b>: {e(first['membrane']['training_mask_mae_definition'])}</li>"
    unavailable = "".join(
        f"<li>{e(name)} / {e(metric.upper())}: {e(m[metric]['reason'])}</li>"
        for name, m in methods.items() for metric in ("fid", "kid", "dists", "lpips") if m[metric].get("available") is False
    )
    pairing = "".join(
        f"<li>{e(name)}: {m['pairing']['pairs']} pairs; real tiles without a generated one: "
        f"{_stems(m['pairing']['unpaired_real'])}; generated without a real one: {_stems(m['pairing']['unpaired_fake'])}"
        f"{'; missing H&amp;E: ' + _stems(m['pairing']['missing_he']) if m['pairing']['missing_he'] else ''}"
        f"{'; left out (not generated by every method): ' + _stems(m['pairing']['not_in_every_method']) if m['pairing']['not_in_every_method'] else ''}</li>"
        for name, m in methods.items()
    )
    labels = ", ".join(f"{e(str(k))}: {v}" for k, v in metrics["tiles_per_label"].items())
    figure_html, her2_figure_html = ("".join(
        f'<figure><img src="{_href(path, out_dir)}" alt="{e(path.stem)}"><figcaption>{e(caption)}</figcaption></figure>'
        for path, caption in group
    ) for group in (figures, her2_figures))
    grid_html = ""
    if grid_rows:
        grid_html = "<h2>Tiles</h2><p class=small>Columns: " + " | ".join(e(c) for c in GRID_COLUMNS) + \
            ". Masks and nuclei with the training extraction settings; green = membrane outline, magenta = nuclei.</p>"
        for stem, label, images in grid_rows:
            grid_html += f"<h3>{e(stem)}{' (HER2 ' + e(label) + ')' if label else ''}</h3>"
            grid_html += "".join(
                f'<figure><img class=grid src="{_href(path, out_dir)}" alt="{e(name)} {e(stem)}"><figcaption>{e(name)}</figcaption></figure>'
                for name, path in images
            )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1900px; }}
table {{ border-collapse: collapse; }} th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th:first-child {{ text-align: left; }} .na {{ color: #a00; }} .small {{ font-size: 90%; color: #444; }}
figure {{ margin: 0.5em 0 1.5em 0; }} img {{ max-width: 100%; }} img.grid {{ image-rendering: auto; }}
</style></head><body>
<h1>{e(title)}</h1>
<p>{metrics['tiles']} tiles of <code>{e(metrics['real_dir'])}</code> (HER2: {labels or 'no labels'}); labels {e(str(metrics['labels']))};
extraction settings: {e(metrics['extraction_params_source'])}. tdkstain {e(metrics['tdkstain_version'])}, {e(metrics['created'])}.
Data: <a href="metrics.json">metrics.json</a>, <a href="per_image.csv">per_image.csv</a>.</p>
<h2>Metrics</h2>
<table><tr><th>method</th><th>SSIM &uarr;</th><th>PSNR (dB) &uarr;</th><th>FID &darr;</th><th>KID &darr;</th>
<th>DISTS &darr;</th><th>LPIPS &darr;</th><th>nuclei MAE &darr;</th><th>membrane mask MAE &darr;</th><th>mask MAE, training settings &darr;</th></tr>
{''.join(rows)}</table>
<p class=small>Mean &plusmn; standard deviation over tiles. n/a: the metric could not be computed here (hover for why).</p>
{'<h3>Unavailable metrics</h3><ul class=small>' + unavailable + '</ul>' if unavailable else ''}
{her2_html}{her2_figure_html}
<h3>Definitions</h3><ul class=small>{definitions}</ul>
<h3>Pairing</h3><ul class=small>{pairing}</ul>
<h2>Knowledge analyses</h2>{figure_html}
{grid_html}
</body></html>
"""


def _stems(stems: list[str], limit: int = 20) -> str:
    if not stems:
        return "none"
    shown = ", ".join(html.escape(s) for s in stems[:limit])
    return f"{len(stems)} ({shown}{', ...' if len(stems) > limit else ''})"
