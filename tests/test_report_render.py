"""The evaluation report renders in a real browser (headless Chromium) with no broken image."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

from conftest import CHROMIUM_FLAGS, PROBE, chromium
from tdkstain.evaluation import EvaluationOptions, evaluate, remove_dab
from tdkstain.data.images import write_png
from tdkstain.synth import her2_label, render_pair


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("render")
    for i in range(4):
        pair = render_pair(300 + i, 64, her2=i)
        stem = f"r_{i}_{her2_label(i)}"
        write_png(root / "real" / f"{stem}.png", pair.ihc)
        write_png(root / "he" / f"{stem}.png", pair.he)
        write_png(root / "fake" / f"{stem}.png", remove_dab(pair.ihc))
    evaluate(root / "real", {"no-DAB": root / "fake"}, root / "out", he_dir=root / "he",
             options=EvaluationOptions(fid=False, perceptual=False, grid_tiles=1), log=lambda m: None)
    return root / "out"


def test_report_links_only_to_files_that_exist(report):
    html = (report / "index.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]+)"', html)
    # 3 knowledge plots + 2 HER2 agreement figures (confusion, Bland-Altman) + one grid per HER2 score
    assert len([link for link in links if link.endswith(".png")]) == 3 + 2 + 4
    for link in links:
        assert "://" not in link and not link.startswith("/"), link
        assert (report / unquote(link)).is_file(), link


def test_report_renders_in_headless_chromium_without_broken_images(report, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")
    probe = report / "_render_probe.html"  # beside index.html, so its relative links resolve the same
    probe.write_text((report / "index.html").read_text().replace("</body>", PROBE + "</body>"))
    result = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
         "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    title = re.search(r"<title>(.*?)</title>", result.stdout)
    assert title, f"chromium printed no page (rc {result.returncode}): {result.stderr[-2000:]}"
    counts = dict(re.findall(r"(images|broken)=(\d+)", title.group(1)))
    assert counts.get("images") == "9", title.group(1)
    assert counts.get("broken") == "0", title.group(1)


def test_report_probe_detects_a_broken_image(report, tmp_path):
    """The browser check itself can fail: a page with a missing image is caught."""
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")
    page = report / "_broken_probe.html"
    page.write_text(f'<!DOCTYPE html><html><head><title>x</title></head><body><img src="plots/nothing.png">{PROBE}</body></html>')
    result = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert "broken=1" in result.stdout, result.stdout[-500:]
