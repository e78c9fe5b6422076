"""``tdkstain demo --quick`` runs end to end and its report is a page a browser shows whole."""

from __future__ import annotations

import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

from tdkstain.cli import main as tdkstain
from tdkstain.workflows.demo_report import beats_baselines, tile_scores
from tdkstain.data.images import write_png

# The Chromium probe of the evaluation report's test: same flags, same load-time image check.
from conftest import CHROMIUM_FLAGS, PROBE, chromium


class _Links(HTMLParser):
    """Every src and href of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.links.append((tag, value))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "out"
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = tdkstain(["demo", "--quick", "--out", str(out), "--no-progress", "--workers", "1"])
    assert code == 0, printed.getvalue()[-3000:]
    return out, printed.getvalue()


@pytest.mark.slow
def test_demo_writes_every_output_and_prints_the_report_path(demo):
    out, printed = demo
    report = out / "report" / "index.html"
    assert report.is_file()
    assert printed.rstrip().splitlines()[-1] == f"Report: {report.resolve()}"
    for path in ["run/weights/generator.safetensors", "run/metrics.jsonl", "evaluation/metrics.json",
                 "slide/he_cmu_small_region.tif", "slide/he_cmu_small_region.thumbnail.png",
                 "real_he/he_tiatoolbox_target_512.png", "scores.json"]:
        assert (out / path).is_file(), path
    tiles = sorted(p.name for p in (out / "data" / "test_HE").glob("*.png"))
    for method in ("TDKstain", "untrained", "mean-colour"):
        assert sorted(p.name for p in (out / "virtual" / method).glob("*.png")) == tiles
    html = report.read_text()
    assert re.search(r'class="(pass|fail)"><b>(PASS|FAIL): ', html)
    # The headline numbers are those of the tiles on disk (tile_scores itself is tested against scikit-image).
    scores = json.loads((out / "scores.json").read_text())
    again = tile_scores(out / "data" / "test_IHC", out / "virtual" / "TDKstain")
    assert again["ssim"] == pytest.approx(scores["TDKstain"]["ssim"])
    assert f"{scores['TDKstain']['l1']:.4f}" in html


@pytest.mark.slow
def test_demo_report_links_only_to_files_that_exist(demo):
    out, _ = demo
    report = out / "report" / "index.html"
    parser = _Links()
    parser.feed(report.read_text())
    images = [link for tag, link in parser.links if tag == "img"]
    # 3 test grids (quick: one tile per HER2 score 1+..3+), losses, 3 analyses, 2 real H&E, 2 slide thumbnails.
    assert len(images) >= 10, images
    for _, link in parser.links:
        assert "://" not in link and not link.startswith("/"), link
        assert (report.parent / unquote(link)).is_file(), link


@pytest.mark.slow
def test_demo_report_renders_in_headless_chromium_without_broken_images(demo, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")
    report = demo[0] / "report" / "index.html"
    probe = report.parent / "_render_probe.html"  # beside index.html: relative links resolve the same
    page = report.read_text()
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    result = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
         "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    probe.unlink()
    title = re.search(r"<title>(.*?)</title>", result.stdout)
    assert title, f"chromium printed no page (rc {result.returncode}): {result.stderr[-2000:]}"
    counts = dict(re.findall(r"(images|broken)=(\d+)", title.group(1)))
    assert counts.get("images") == str(page.count("<img ")), title.group(1)
    assert counts.get("broken") == "0", title.group(1)


@pytest.mark.slow
def test_demo_rerun_skips_finished_steps_and_refuses_other_settings(demo):
    out, _ = demo
    import contextlib
    import io

    from tdkstain.plumbing.errors import TdkstainError

    weights = out / "run" / "weights" / "generator.safetensors"
    before = weights.stat().st_mtime_ns
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert tdkstain(["demo", "--quick", "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    assert printed.getvalue().count("done in an earlier run") == 10, printed.getvalue()
    assert weights.stat().st_mtime_ns == before
    with pytest.raises(TdkstainError, match="other settings"):
        from tdkstain.cli.demo import run
        import argparse

        run(argparse.Namespace(out=out, pairs=16, size=128, steps=5, workers=1, no_fid=True, quick=False,
                               no_progress=True))


def test_headline_rule_needs_both_baselines_beaten_on_l1_and_ssim():
    good = {"l1": 0.1, "psnr": 20.0, "ssim": 0.6}
    assert beats_baselines({"TDKstain": good, "untrained": {"l1": 0.8, "psnr": 6.0, "ssim": 0.03},
                            "mean-colour": {"l1": 0.25, "psnr": 15.0, "ssim": 0.5}})[0]
    passed, why = beats_baselines({"TDKstain": good, "untrained": {"l1": 0.8, "psnr": 6.0, "ssim": 0.03},
                                   "mean-colour": {"l1": 0.25, "psnr": 15.0, "ssim": 0.7}})
    assert not passed and why == ["SSIM 0.6000 is not above mean-colour's 0.7000"]
    passed, why = beats_baselines({"TDKstain": good, "untrained": {"l1": 0.1, "psnr": 6.0, "ssim": 0.03},
                                   "mean-colour": {"l1": 0.25, "psnr": 15.0, "ssim": 0.5}})
    assert not passed and why == ["L1 0.1000 is not below untrained's 0.1000"]


def test_tile_scores_match_scikit_image(tmp_path):
    """L1 in [-1, 1] units, PSNR and SSIM as scikit-image computes them, averaged over tiles."""
    import numpy as np
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(0)
    reals = [rng.integers(0, 256, (32, 48, 3), dtype=np.uint8) for _ in range(2)]
    fakes = [np.clip(r.astype(int) + rng.integers(-30, 31, r.shape), 0, 255).astype(np.uint8) for r in reals]
    for i, (real, fake) in enumerate(zip(reals, fakes)):
        write_png(tmp_path / "real" / f"t{i}.png", real)
        write_png(tmp_path / "fake" / f"t{i}.png", fake)
    scores = tile_scores(tmp_path / "real", tmp_path / "fake")
    assert scores["tiles"] == 2
    assert scores["l1"] == pytest.approx(np.mean([np.abs(f / 127.5 - r / 127.5).mean() for r, f in zip(reals, fakes)]))
    assert scores["psnr"] == pytest.approx(np.mean([peak_signal_noise_ratio(r, f, data_range=255) for r, f in zip(reals, fakes)]))
    assert scores["ssim"] == pytest.approx(np.mean([
        structural_similarity(r, f, channel_axis=-1, data_range=255) for r, f in zip(reals, fakes)]))


def test_reading_names_the_metrics_a_baseline_wins():
    from tdkstain.workflows.demo_report import _reading

    def method(ssim, fid, nuclei, membrane):
        return {"ssim": {"mean": ssim}, "fid": {"value": fid},
                "knowledge": {"nuclei": {"mae": nuclei}, "membrane": {"training_mask_mae": membrane}}}

    text = _reading({"methods": {"TDKstain": method(0.6, 300.0, 3.0, 0.07),
                                 "mean-colour": method(0.5, 500.0, 58.0, 0.06)}})
    assert text.startswith("TDKstain is best on: SSIM, FID, nuclei count MAE. Not on: membrane mask MAE (training) "
                           "(mean-colour is better).")
    assert _reading({"methods": {"TDKstain": method(0.6, 300.0, 3.0, 0.05), "x": method(0.5, 500.0, 58.0, 0.06)}}) \
        == "TDKstain is best on: SSIM, FID, nuclei count MAE, membrane mask MAE (training)."
