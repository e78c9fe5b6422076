"""``tdkstain view``: the folder it writes, and the page in headless Chromium, from disk and over HTTP."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from conftest import CHROMIUM_FLAGS, chromium, write_test_slide
from tdkstain.cli import main as cli_main
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.scoring import ScoringParams
from tdkstain.scoring.slide import SlideScoreOptions, score_slide
from tdkstain.synth import render_pair
from tdkstain.viewer import OPENSEADRAGON_VERSION, ViewOptions, build_view

pytest.importorskip("pyvips")

TILE, GLASS = 256, 243  # px per HER2 region at 0.5 um/px, as tests/test_scoring_slide.py lays them out
LAYOUT = [[0, 3, None], [1, 2, None]]  # a HER2 score per 128 um region; None: glass
WINDOW = (1200, 600)


def tissue_colour(image: np.ndarray) -> np.ndarray:
    """Mean RGB of the pixels that are not glass (darker than 230 on average)."""
    tissue = image[image[..., :3].mean(axis=-1) < 230][..., :3]
    assert len(tissue) > 0.05 * image[..., 0].size, "(almost) no tissue"
    return tissue.astype(float).mean(axis=0)


def paired_slides(folder: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """H&E at 0.25 um/px (1536 x 1024) and its IHC at 0.5 um/px (768 x 512): the same 384 x 256 um of tissue.

    Returns both slides and their tissue colours (:func:`tissue_colour`)."""
    he = np.full((len(LAYOUT) * TILE, len(LAYOUT[0]) * TILE, 3), GLASS, np.uint8)
    ihc = he.copy()
    for r, row in enumerate(LAYOUT):
        for c, her2 in enumerate(row):
            if her2 is not None:
                pair = render_pair(seed=10 * r + c, size=TILE, her2=her2, misregister=0)
                he[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE] = pair.he
                ihc[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE] = pair.ihc
    he = np.asarray(Image.fromarray(he).resize((he.shape[1] * 2, he.shape[0] * 2), Image.Resampling.LANCZOS))
    return (write_test_slide(folder / "case.tif", he, mpp=0.25), write_test_slide(folder / "case_ihc.tif", ihc, mpp=0.5),
            tissue_colour(he), tissue_colour(ihc))


@pytest.fixture(scope="module")
def view(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("view")
    he, ihc, he_colour, ihc_colour = paired_slides(root)
    score_slide(ihc, root / "score", ScoringParams(min_cells=10), SlideScoreOptions(region_um=128), progress=False,
                log=lambda message: None)
    messages: list[str] = []
    result = build_view(he, ihc, root / "view", her2=root / "score", log=messages.append)
    return {"root": root, "he": he, "ihc": ihc, "result": result, "messages": messages, "out": root / "view",
            "colours": (he_colour, ihc_colour)}


def settings_of(index: Path) -> dict:
    text = index.read_text()
    return json.loads(re.search(r'<script id="tdkstain-view" type="application/json">(.*?)</script>', text, re.S).group(1))


def test_the_folder_holds_everything_the_page_links_to(view):
    out = view["out"]
    html = (out / "index.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert {"viewer.css", "viewer.js", "openseadragon/openseadragon.min.js", "openseadragon/LICENSE.txt"} <= set(links)
    for link in links:
        assert "://" not in link and not link.startswith("/"), link
        assert (out / unquote(link)).is_file(), link
    assert f"OpenSeadragon {OPENSEADRAGON_VERSION}" in html
    assert "Redistribution and use in source and binary forms" in (out / "openseadragon" / "LICENSE.txt").read_text()
    assert len(list((out / "openseadragon" / "images").glob("*.png"))) == 40  # the navigation buttons
    settings = settings_of(out / "index.html")
    for name, dzi in (("he", view["result"].he), ("ihc", view["result"].ihc)):
        pane = settings[name]
        assert (out / pane["tiles"] / str(dzi.max_level) / "0_0.jpeg").is_file()
        assert (pane["width"], pane["tileSize"], pane["overlap"], pane["format"]) == (dzi.width, 254, 1, "jpeg")
    # Both panes are laid out in microns: 1536 px x 0.25 = 768 px x 0.5 = 384 um.
    assert settings["he"]["worldWidth"] == settings["ihc"]["worldWidth"] == pytest.approx(384)
    assert settings["units"] == "µm"


def test_the_her2_map_is_drawn_from_the_score_regions_over_the_same_microns(view):
    settings = settings_of(view["out"] / "index.html")
    layer = settings["her2"]
    assert layer["worldWidth"] == pytest.approx(384) and layer["image"] == "her2_map.png"
    assert {entry["name"]: entry["regions"] for entry in layer["legend"]} == {
        "HER2 0": 1, "HER2 1+": 1, "HER2 2+": 1, "HER2 3+": 1}
    record = json.loads((view["root"] / "score" / "case_ihc.her2.json").read_text())
    assert layer["score"] == record["slide_score"]["score"]
    overlay = np.asarray(Image.open(view["out"] / "her2_map.png"))
    assert overlay.shape == (512, 768, 4)  # the scored slide's level 0 (under HER2_MAP_MAX_SIDE)
    colours = {entry["name"]: tuple(int(entry["colour"][i:i + 2], 16) for i in (1, 3, 5)) for entry in layer["legend"]}
    # region centres: row, col of LAYOUT -> its score's colour; the glass column is left transparent
    for (r, c), score in {(0, 0): "0", (0, 1): "3+", (1, 0): "1+", (1, 1): "2+"}.items():
        pixel = overlay[r * TILE + TILE // 2, c * TILE + TILE // 2]
        assert tuple(pixel[:3]) == colours[f"HER2 {score}"] and pixel[3] > 0
    assert (overlay[:, 2 * TILE + 4:, 3] == 0).all()


def test_a_rerun_reuses_the_tiles_and_a_dzi_input_is_linked_not_cut_again(view, tmp_path):
    messages: list[str] = []
    again = build_view(view["he"], view["ihc"], view["out"], her2=view["root"] / "score", log=messages.append)
    assert len(again.reused) == 2 and not any("cutting" in m for m in messages)
    linked = build_view(view["out"] / "he.dzi", view["out"] / "ihc.dzi", tmp_path / "from_dzi", log=messages.append)
    assert (linked.he.mpp, linked.ihc.mpp) == (pytest.approx(0.25), pytest.approx(0.5))  # from vips-properties.xml
    tile = linked.he.files / "0" / "0_0.jpeg"
    assert os.stat(tile).st_ino == os.stat(view["out"] / "he_files" / "0" / "0_0.jpeg").st_ino  # a hard link
    assert settings_of(tmp_path / "from_dzi" / "index.html")["her2"] is None


def test_a_dzi_that_tdkstain_slide_wrote_beside_the_ihc_is_reused(view, tmp_path):
    from tdkstain.slides.deepzoom import dzi_path_for, write_deepzoom

    ihc = tmp_path / "stained.tif"
    ihc.write_bytes(view["ihc"].read_bytes())
    beside = write_deepzoom(ihc, dzi_path_for(ihc))
    result = build_view(view["he"], ihc, tmp_path / "out", log=lambda m: None)
    assert any("stained.dzi" in line for line in result.reused)
    assert os.stat(result.ihc.files / "0" / "0_0.jpeg").st_ino == os.stat(beside.files / "0" / "0_0.jpeg").st_ino


def test_errors_name_the_file_and_the_fix(view, tmp_path, monkeypatch):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(TdkstainError, match="not a view tdkstain made; pass --force"):
        build_view(view["he"], view["ihc"], foreign)
    with pytest.raises(TdkstainError, match="holds no STEM.her2.json"):
        build_view(view["he"], view["ihc"], tmp_path / "a", her2=tmp_path)
    with pytest.raises(TdkstainError, match="no such file"):
        build_view(tmp_path / "missing.svs", view["ihc"], tmp_path / "b")
    with pytest.raises(TdkstainError, match="--quality=0 is out of range"):
        ViewOptions(quality=0)
    monkeypatch.setitem(sys.modules, "pyvips", None)
    with pytest.raises(TdkstainError, match="pip install pyvips pyvips-binary"):
        build_view(view["he"], view["ihc"], tmp_path / "c")
    assert not (tmp_path / "c").exists()  # refused before anything was written


def test_cli_view(view, tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli_main(["view", "--he", str(view["he"]), "--ihc", str(view["ihc"]), "--her2",
                     str(view["root"] / "score" / "case_ihc.her2.json"), "--out", str(out), "--title", "case 7"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "H&E 1536x1024 px, virtual IHC 768x512 px, HER2 map" in err and "python -m http.server" in err
    assert "<title>case 7</title>" in (out / "index.html").read_text()
    code = cli_main(["view", "--he", str(view["he"]), "--ihc", str(view["ihc"]), "--out", str(out / "index.html")])
    assert code == 2 and "is a file" in capsys.readouterr().err


# --------------------------------------------------------------------------- in a browser


def browser_or_skip() -> str:
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")
    return browser


def probe_page(out: Path, name: str, script: str) -> Path:
    """index.html with ``script`` before </body>, beside it (so its relative links resolve the same)."""
    page = out / name
    page.write_text((out / "index.html").read_text().replace("</body>", f"<script>{script}</script></body>"))
    return page


def assert_panes_show_their_slides(he: np.ndarray, ihc: np.ndarray, colours: tuple[np.ndarray, np.ndarray]) -> None:
    """Each pane's tissue colour is that of its own slide (within 25 grey levels), not the other's."""
    he_colour, ihc_colour = colours
    assert np.linalg.norm(ihc_colour - he_colour) > 40  # the two stains do differ
    assert np.abs(he - he_colour).max() < 25 and np.abs(ihc - ihc_colour).max() < 25, (he, ihc, colours)
    assert np.linalg.norm(he - he_colour) < np.linalg.norm(he - ihc_colour)
    assert np.linalg.norm(ihc - ihc_colour) < np.linalg.norm(ihc - he_colour)


# Redraws both panes until their tiles have loaded: headless Chromium's virtual time runs few animation frames,
# where OpenSeadragon draws, so a screenshot could otherwise show a pane before its last tiles.
SETTLE = """
(function () {
  var view = window.tdkstainView;
  function loaded(v) { var n = v.world.getItemCount(), i;
    for (i = 0; i < n; i++) { if (!v.world.getItemAt(i).getFullyLoaded()) { return false; } } return n > 0; }
  (function poll() {
    [view.he, view.ihc].forEach(function (v) { v.world.update(true); v.world.draw(); });
    if (!(loaded(view.he) && loaded(view.ihc))) { setTimeout(poll, 50); }
  })();
})();
"""


def test_both_panes_render_tissue_opened_from_disk(view, tmp_path):
    """file://: no XHR is allowed; the inline tile sources must be enough. The screenshot's halves are read."""
    browser = browser_or_skip()
    page = probe_page(view["out"], "_disk_probe.html", "document.getElementById('her2-toggle').checked = false;" + SETTLE)
    shot = tmp_path / "shot.png"
    result = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
         "--virtual-time-budget=10000", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.is_file(), f"chromium wrote no screenshot (rc {result.returncode}): {result.stderr[-2000:]}"
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    body = pixels[80:-40]  # below the header and labels, above the footer
    half = pixels.shape[1] // 2
    assert_panes_show_their_slides(tissue_colour(body[:, 10:half - 10]), tissue_colour(body[:, half + 10:-10]),
                                   view["colours"])


# In the page: wait for both panes' tiles, read each canvas's colours, hide/show the HER2 map, pan one
# pane and zoom the other; the results go into <pre id="probe"> for --dump-dom.
HTTP_PROBE = """
(function () {
  var view = window.tdkstainView, out = document.createElement('pre'), result = {};
  out.id = 'probe'; document.body.appendChild(out);
  function done() { out.textContent = JSON.stringify(result); }
  function loaded(v) { var n = v.world.getItemCount(), i;
    for (i = 0; i < n; i++) { if (!v.world.getItemAt(i).getFullyLoaded()) { return false; } } return n > 0; }
  function colours(v) {
    var c = v.drawer.canvas, d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, s = [0, 0, 0], n = 0;
    for (var i = 0; i < d.length; i += 4) {
      // opaque (the canvas is transparent beyond the slide) and not glass (mean below 230)
      if (d[i + 3] === 255 && d[i] + d[i + 1] + d[i + 2] < 690) { s[0] += d[i]; s[1] += d[i + 1]; s[2] += d[i + 2]; n++; }
    }
    return {tissue: n / (d.length / 4), mean: s.map(function (x) { return n ? x / n : 0; })};
  }
  function centre(v) { var p = v.viewport.getCenter(true); return [p.x, p.y]; }
  // Draw now: headless Chromium's virtual time runs few animation frames, where OpenSeadragon draws.
  function redraw(v) { v.world.update(true); v.world.draw(); }
  var started = Date.now(), toggle = document.getElementById('her2-toggle');
  (function wait() {
    if (!(loaded(view.he) && loaded(view.ihc))) {
      if (Date.now() - started > 20000) { result.error = 'tiles did not load'; done(); return; }
      setTimeout(wait, 50); return;
    }
    redraw(view.ihc);
    result.withMap = colours(view.ihc).mean;
    toggle.checked = false; view.applyMap(); redraw(view.he); redraw(view.ihc);
    (function () {
      (function () {
        result.he = colours(view.he); result.ihc = colours(view.ihc);
        result.before = {he: centre(view.he), ihc: centre(view.ihc)};
        var width = view.he.viewport.getBounds(true).width;
        view.he.viewport.panBy(new OpenSeadragon.Point(0.25 * width, 0.1 * width), true);
        result.panned = {he: centre(view.he), ihc: centre(view.ihc), width: width};
        view.ihc.viewport.zoomBy(2.5, null, true);
        result.zoomed = {he: view.he.viewport.getZoom(true), ihc: view.ihc.viewport.getZoom(true),
                         heCentre: centre(view.he), ihcCentre: centre(view.ihc)};
        done();
      })();
    })();
  })();
})();
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_panes_show_he_and_ihc_and_pan_and_zoom_together_over_http(view, tmp_path):
    """Behind a web server (python -m http.server does the same): canvases are readable, so colours are checked in the
    page, then a pan of the H&E pane and a zoom of the IHC pane must move the other pane alike."""
    browser = browser_or_skip()
    page = probe_page(view["out"], "_http_probe.html", HTTP_PROBE)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(view["out"])))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = subprocess.run(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
             "--virtual-time-budget=30000", "--dump-dom", f"http://127.0.0.1:{server.server_address[1]}/{page.name}"],
            capture_output=True, text=True, timeout=120,
        )
    finally:
        server.shutdown()
        thread.join()
    found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
    assert found, f"the probe reported nothing (rc {result.returncode}): {result.stderr[-2000:]}"
    probe = json.loads(found.group(1))
    assert "error" not in probe, probe
    assert probe["he"]["tissue"] > 0.2 and probe["ihc"]["tissue"] > 0.2  # tissue fills much of both panes
    assert_panes_show_their_slides(np.array(probe["he"]["mean"]), np.array(probe["ihc"]["mean"]), view["colours"])
    assert np.abs(np.array(probe["withMap"]) - probe["ihc"]["mean"]).max() > 5  # the HER2 map showed, then hid
    before, panned, zoomed = probe["before"], probe["panned"], probe["zoomed"]
    assert before["he"] == pytest.approx(before["ihc"])  # opened on the same microns
    assert panned["he"][0] - before["he"][0] == pytest.approx(0.25 * panned["width"])
    assert panned["ihc"] == pytest.approx(panned["he"])  # the IHC pane followed the H&E pane's pan
    assert zoomed["he"] == pytest.approx(zoomed["ihc"])  # the H&E pane followed the IHC pane's zoom
    assert zoomed["heCentre"] == pytest.approx(zoomed["ihcCentre"])


def test_a_damaged_score_record_or_geojson_is_refused_naming_it(view, tmp_path):
    score = tmp_path / "score"
    score.mkdir()
    record = json.loads((view["root"] / "score" / "case_ihc.her2.json").read_text())
    (score / "case_ihc.her2.json").write_text(json.dumps({**record, "slide": "?"}))
    with pytest.raises(TdkstainError, match="not a HER2 map record of tdkstain score"):
        build_view(view["he"], view["ihc"], tmp_path / "a", her2=score)
    (score / "case_ihc.her2.json").write_text(json.dumps(record))
    with pytest.raises(TdkstainError, match="case_ihc.geojson: missing"):
        build_view(view["he"], view["ihc"], tmp_path / "b", her2=score)
    bad = {"type": "FeatureCollection", "features": [
        {"geometry": {"type": "Polygon", "coordinates": [[["x", 0], [1, 0], [1, 1]]]}, "properties": {}}]}
    (score / "case_ihc.geojson").write_text(json.dumps(bad))
    with pytest.raises(TdkstainError, match="geometry or colour is malformed"):
        build_view(view["he"], view["ihc"], tmp_path / "c", her2=score)
