"""The quality report of an extracted dataset (issue 10): ``ROOT/extraction_report/``.

File names need not be valid UTF-8 (``b"tile_\\xff.png"`` on Linux): the
page and ``report.json`` show such a byte as U+FFFD
(``plumbing.atomic.safe_text``), and links percent-encode the name's own
bytes (``%FF``), so they still open the file.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

import numpy as np

from tdkstain.plumbing.atomic import safe_strings, write_text_atomic
from tdkstain.knowledge.extraction.records import (
    HER2_ORDER,
    REPORT_DIR,
    ExtractionSummary,
    TileResult,
    read_centroids_csv,
    remove_temporaries,
)

# --------------------------------------------------------------------------- quality report (issue 10)


def stained_fraction_check(tiles: Sequence[TileResult]) -> dict:
    """Does the mean stained fraction rise with HER2 score (0 < 1+ < 2+ < 3+)?

    Returns ``{"status": "PASS"|"FAIL"|"N/A", "means": {score: mean}, "text": str}``.
    Scores absent from the data are left out of the comparison; fewer than
    two scores present gives "N/A". Strict increase is required between
    every consecutive pair of present scores.
    """
    means = {}
    for score in HER2_ORDER:
        values = [t.stained_fraction for t in tiles if t.label == score and t.status != "bad"]
        if values:
            means[score] = float(np.mean(values))
    text = "stained fraction rises with HER2 score (0 < 1+ < 2+ < 3+ on average)"
    if len(means) < 2:
        return {"status": "N/A", "means": means, "text": f"{text}: N/A (fewer than two HER2 scores labelled)"}
    ordered = list(means.values())
    ok = all(a < b for a, b in zip(ordered, ordered[1:]))
    status = "PASS" if ok else "FAIL"
    detail = " < ".join(f"{s}: {m:.3f}" for s, m in means.items()) if ok else ", ".join(f"{s}: {m:.3f}" for s, m in means.items())
    return {"status": status, "means": means, "text": f"{text}: {status} ({detail})"}


def _label_name(label: str | None) -> str:
    return "unlabelled" if label is None else label


def _box_strip_plot(path: Path, groups: list[tuple[str, list[float]]], ylabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    data = [values for _, values in groups]
    ax.boxplot(data, showfliers=False, widths=0.5)
    # Jitter from a fixed generator: the report is identical on every rerun.
    rng = np.random.default_rng(0)
    for position, values in enumerate(data, start=1):
        ax.scatter(position + rng.uniform(-0.15, 0.15, len(values)), values, s=10, alpha=0.6, color="tab:brown", zorder=3)
    ax.set_xticks(range(1, len(groups) + 1), [f"{name}\n(n={len(v)})" for name, v in groups])
    ax.set_xlabel("HER2 score")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from tdkstain.plumbing.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _extremes(tiles: list[TileResult], per_kind: int) -> list[tuple[list[str], TileResult]]:
    """The ``per_kind`` tiles with the highest and lowest stained fraction and nuclei count.

    Returns ``(reasons, tile)`` in order of first appearance; a tile extreme
    in several ways appears once, with all its reasons (small datasets).
    Ties are broken by split and stem, so the choice is reproducible.
    """
    chosen: dict[tuple[str, str], tuple[list[str], TileResult]] = {}
    kinds = [
        ("highest stained fraction", lambda t: (-t.stained_fraction, str(t.split), t.stem)),
        ("lowest stained fraction", lambda t: (t.stained_fraction, str(t.split), t.stem)),
        ("most nuclei", lambda t: (-t.nuclei_count, str(t.split), t.stem)),
        ("fewest nuclei", lambda t: (t.nuclei_count, str(t.split), t.stem)),
    ]
    for reason, key in kinds:
        for tile in sorted(tiles, key=key)[:per_kind]:
            chosen.setdefault((str(tile.split), tile.stem), ([], tile))[0].append(reason)
    return list(chosen.values())


def _href(relative: str) -> str:
    """A relative URL for a file of the report: the name's bytes percent-encoded, whatever their encoding."""
    return quote(relative, errors="surrogateescape")


def write_quality_report(
    root: str | os.PathLike, summary: ExtractionSummary, extremes_per_kind: int = 3, *, max_pixels: int | None = None
) -> Path:
    """Write ``ROOT/extraction_report/`` (index.html, plots, overlays, report.json); return index.html's path.

    Shows the stained fraction and nuclei count per HER2 score (box and strip
    plots), the tiles with the most extreme values as overlays (IHC, membrane
    contour in green, nuclei centroids in magenta), the check "stained
    fraction rises with HER2 score" (red at the top when it fails) and the
    bad tiles. All links are relative and point to files written here.
    ``max_pixels``: the pixel limit for reading the IHC tiles again (None: the reader's default).
    """
    root = Path(root)
    out = root / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    remove_temporaries([out, out / "overlays"])
    good = [t for t in summary.tiles if t.status != "bad"]
    params = summary.params
    mode = f"membrane {params.membrane.mode}, nuclei {params.nuclei.mode}"
    check = stained_fraction_check(good)
    groups = _her2_groups(good)
    per_score = [_score_row(label, members) for label, members in groups]
    plots = _write_plots(out, groups) if good else {}
    extremes = _write_extreme_overlays(root, out / "overlays", good, extremes_per_kind, max_pixels)

    report = {
        "root": str(root),
        "mode": mode,
        "params": params.to_dict(),
        "calibration": summary.calibration,
        "tiles": len(summary.tiles),
        "bad_tiles": [{"ihc": t.ihc, "error": t.error} for t in summary.bad],
        "check_stained_fraction_rises": check,
        "per_her2": per_score,
        "extremes": extremes,
        "per_tile": [
            {"split": t.split, "stem": t.stem, "her2": t.label, "stained_fraction": t.stained_fraction,
             "nuclei_count": t.nuclei_count, "status": t.status}
            for t in summary.tiles
        ],
        "files": {"plots": plots, "json": "report.json"},
    }
    write_text_atomic(out / "report.json", json.dumps(safe_strings(report), indent=2) + "\n")
    index = out / "index.html"
    write_text_atomic(index, _render_html(root, mode, check, per_score, plots, extremes, summary))
    return index


def _her2_groups(good: list[TileResult]) -> list[tuple[str | None, list[TileResult]]]:
    """``(label, tiles)`` per HER2 score present, in score order; tiles of no known score last, as label None."""
    groups: list[tuple[str | None, list[TileResult]]] = [
        (score, [t for t in good if t.label == score]) for score in HER2_ORDER if any(t.label == score for t in good)
    ]
    unscored = [t for t in good if t.label is None or t.label not in HER2_ORDER]
    if unscored:
        groups.append((None, unscored))
    return groups


def _score_row(label: str | None, members: list[TileResult]) -> dict:
    """The per-HER2-score line of report.json: tile count, mean and median stained fraction and nuclei count."""
    fractions = np.array([t.stained_fraction for t in members])
    counts = np.array([t.nuclei_count for t in members])
    return {
        "her2": label,
        "tiles": len(members),
        "stained_fraction_mean": float(fractions.mean()),
        "stained_fraction_median": float(np.median(fractions)),
        "nuclei_count_mean": float(counts.mean()),
        "nuclei_count_median": float(np.median(counts)),
    }


def _write_plots(out: Path, groups: list[tuple[str | None, list[TileResult]]]) -> dict[str, str]:
    """Draw the box and strip plots per HER2 score into ``out``; return ``{plot: file name}``."""
    plots = {"stained_fraction": "stained_fraction.png"}
    _box_strip_plot(
        out / plots["stained_fraction"],
        [(_label_name(label), [t.stained_fraction for t in members]) for label, members in groups],
        "membrane-stained fraction of tissue",
        "Stained fraction per HER2 score",
    )
    plots["nuclei_count"] = "nuclei_count.png"
    _box_strip_plot(
        out / plots["nuclei_count"],
        [(_label_name(label), [float(t.nuclei_count) for t in members]) for label, members in groups],
        "nuclei per tile",
        "Nuclei count per HER2 score",
    )
    return plots


def _write_extreme_overlays(
    root: Path, overlay_dir: Path, good: list[TileResult], per_kind: int, max_pixels: int | None = None
) -> list[dict]:
    """Draw the overlay of each extreme tile (see ``_extremes``) into ``overlay_dir``; return their report entries."""
    from tdkstain.data import images
    from tdkstain.data.pairs import knowledge_paths
    from tdkstain.knowledge.overlays import membrane_nuclei_overlay

    extremes = []
    for old in overlay_dir.glob("*.png") if overlay_dir.is_dir() else []:
        old.unlink()  # extremes of an earlier run would otherwise linger unlinked
    for reasons, tile in _extremes(good, per_kind):
        name = f"{tile.split}_{tile.stem}.png" if tile.split else f"{tile.stem}.png"
        target = overlay_dir / name
        if not target.exists():
            paths = knowledge_paths(root, tile.split, tile.stem)
            ihc = images.read_rgb(tile.ihc, **({} if max_pixels is None else {"max_pixels": max_pixels}))
            overlay = membrane_nuclei_overlay(ihc, images.read_gray(paths.dab_mask), read_centroids_csv(paths.nuclei_csv))
            images.write_png(target, overlay)
        extremes.append({"reasons": reasons, "split": tile.split, "stem": tile.stem, "her2": tile.label,
                         "stained_fraction": tile.stained_fraction, "nuclei_count": tile.nuclei_count,
                         "overlay": f"overlays/{name}"})
    return extremes


def _render_html(
    root: Path,
    mode: str,
    check: dict,
    per_score: list[dict],
    plots: dict,
    extremes: list[dict],
    summary: ExtractionSummary,
) -> str:
    e = html.escape
    colour = {"PASS": "#1a7f37", "FAIL": "#c62828", "N/A": "#666"}[check["status"]]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>tdkstain extraction report: {e(root.name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        ".check{padding:.6em 1em;font-weight:bold;color:#fff;border-radius:4px}"
        ".fail{background:#c62828}.pass{background:#1a7f37}.na{background:#777}"
        "figure{display:inline-block;margin:6px;vertical-align:top}figcaption{font-size:85%;max-width:260px}"
        "img.tile{width:256px;image-rendering:pixelated}</style></head><body>",
    ]
    css = {"PASS": "pass", "FAIL": "fail", "N/A": "na"}[check["status"]]
    # The check line comes first, so a mode that fails it cannot be missed.
    parts.append(f"<p class='check {css}' id='check' style='background:{colour}'>{e(check['text'])}</p>")
    if check["status"] == "FAIL":
        parts.append(
            f"<p style='color:#c62828;font-weight:bold'>Mode '{e(mode)}' FAILS this check: its membrane mask does not "
            "follow the HER2 score on this dataset (tinted background? try --mode adaptive or --calibrate).</p>"
        )
    parts.append(f"<h1>Knowledge extraction report</h1><p>Dataset <code>{e(str(root))}</code>; mode: <b>{e(mode)}</b>; "
                 f"{len(summary.tiles)} tiles, {len(summary.bad)} bad. Parameters: <a href='report.json'>report.json</a>.</p>")
    parts.append("<h2>Per HER2 score</h2><table><tr><th>HER2</th><th>tiles</th><th>stained fraction mean</th>"
                 "<th>median</th><th>nuclei mean</th><th>median</th></tr>")
    for row in per_score:
        parts.append(
            f"<tr><td>{e(_label_name(row['her2']))}</td><td>{row['tiles']}</td><td>{row['stained_fraction_mean']:.3f}</td>"
            f"<td>{row['stained_fraction_median']:.3f}</td><td>{row['nuclei_count_mean']:.1f}</td>"
            f"<td>{row['nuclei_count_median']:.1f}</td></tr>"
        )
    parts.append("</table>")
    for key, caption in (("stained_fraction", "Stained fraction per HER2 score"), ("nuclei_count", "Nuclei count per HER2 score")):
        if key in plots:
            parts.append(f"<figure><img src='{_href(plots[key])}' alt='{e(caption)}'><figcaption>{e(caption)}</figcaption></figure>")
    if extremes:
        parts.append("<h2>Most extreme tiles</h2><p>IHC with the membrane mask outlined in green and nuclei centroids "
                     "as magenta dots.</p>")
        for item in extremes:
            caption = (f"{', '.join(item['reasons'])}: {item['split'] or ''} {item['stem']} (HER2 {_label_name(item['her2'])}), "
                       f"stained fraction {item['stained_fraction']:.3f}, {item['nuclei_count']} nuclei")
            parts.append(f"<figure><a href='{_href(item['overlay'])}'><img class='tile' src='{_href(item['overlay'])}' "
                         f"alt='{e(caption)}'></a><figcaption>{e(caption)}</figcaption></figure>")
    if summary.bad:
        parts.append("<h2>Bad tiles (skipped)</h2><ul>")
        parts += [f"<li><code>{e(t.error or t.ihc)}</code></li>" for t in summary.bad]
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
