"""Dataset knowledge extraction (tdkstain.knowledge.extraction) and its overlay pictures (tdkstain.knowledge.overlays)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.morphology import erosion, footprint_rectangle

from tdkstain.knowledge.overlays import MEMBRANE_COLOUR, NUCLEUS_COLOUR, mask_contour, membrane_nuclei_overlay, montage


def test_mask_contour_matches_scikit_image_erosion():
    rng = np.random.default_rng(3)
    mask = np.zeros((40, 50), np.uint8)
    mask[5:30, 8:40] = 255
    mask[rng.random(mask.shape) < 0.05] = 0
    # Reference: inside minus its 3x3 erosion (scikit-image), away from the border
    # where the two libraries pad differently.
    inside = mask >= 128
    expected = inside & ~erosion(inside, footprint_rectangle((3, 3))).astype(bool)
    got = mask_contour(mask)
    assert np.array_equal(got[1:-1, 1:-1], expected[1:-1, 1:-1])
    # A full mask still shows a frame on the tile edge.
    full = mask_contour(np.full((6, 6), 255, np.uint8))
    assert full[0].all() and full[:, 0].all() and not full[1:-1, 1:-1].any()


def test_overlay_draws_contour_and_dots_and_leaves_the_rest():
    ihc = np.full((64, 64, 3), 200, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:30, 10:30] = 255
    centroids = np.array([[50.0, 50.0], [5.2, 58.7]])
    out = membrane_nuclei_overlay(ihc, mask, centroids, dot_radius=2)
    assert out.dtype == np.uint8 and out.shape == ihc.shape
    assert (ihc == 200).all(), "input must not be modified"
    assert tuple(out[10, 20]) == MEMBRANE_COLOUR  # on the boundary
    assert tuple(out[20, 20]) == (200, 200, 200)  # inside, not a boundary
    assert tuple(out[50, 50]) == NUCLEUS_COLOUR
    assert tuple(out[5, 59]) == NUCLEUS_COLOUR  # rounded to the nearest pixel
    changed = (out != 200).any(axis=2)
    # Only the contour (76 px) and two dots with rings (radius 3 disks, one clipped) changed.
    assert changed.sum() < 76 + 2 * 40


def test_overlay_rejects_mismatched_mask():
    with pytest.raises(ValueError, match="does not match"):
        membrane_nuclei_overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9), np.uint8), np.zeros((0, 2)))


def test_montage_places_images_on_a_grid():
    a = np.zeros((4, 5, 3), np.uint8)
    b = np.full((4, 5, 3), 9, np.uint8)
    grid = montage([a, b, a], columns=2, gap=1)
    assert grid.shape == (2 * 5 + 1, 2 * 6 + 1, 3)
    assert (grid[1:5, 7:12] == 9).all() and (grid[6:10, 1:6] == 0).all() and (grid[0] == 255).all()


# --------------------------------------------------------------------------- dataset extraction

import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

from tdkstain.knowledge import extraction
from tdkstain.plumbing.errors import TdkstainError

synth = pytest.importorskip("tdkstain.synth")
knowledge = pytest.importorskip("tdkstain.knowledge.maps")
pairs_module = pytest.importorskip("tdkstain.data.pairs")


def _outputs(root: Path) -> dict[str, bytes]:
    """Every knowledge output under root (relative path -> bytes), extraction.json's clock excluded."""
    found = {}
    for folder in sorted(root.glob("*_IHC_*")):
        for f in sorted(folder.iterdir()):
            found[str(f.relative_to(root))] = f.read_bytes()
    return found


@pytest.fixture(scope="module")
def clean_dataset(tmp_path_factory) -> Path:
    """8 clean synthetic pairs of 256 px (6 train, 2 test), made once for the module."""
    root = tmp_path_factory.mktemp("synth_clean")
    synth.write_dataset(root, 8, size=256, seed=11)
    return root


@pytest.fixture(scope="module")
def extracted(clean_dataset, tmp_path_factory) -> tuple[Path, extraction.ExtractionSummary]:
    """The clean dataset extracted once with default parameters, one worker."""
    root = tmp_path_factory.mktemp("extracted") / "data"
    shutil.copytree(clean_dataset, root)
    summary = extraction.extract_dataset(root, progress=False)
    return root, summary


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(src, dst)  # copy2: modification times are kept
    return dst


@pytest.fixture(scope="module")
def tinted_dataset(tmp_path_factory) -> Path:
    """8 synthetic pairs of 128 px, every tile with a DAB cast over the whole tile (issue 10)."""
    root = tmp_path_factory.mktemp("synth_tint")
    synth.write_dataset(root, 8, size=128, seed=5, failures=("tint-dab",))
    return root


@pytest.fixture(scope="module")
def tinted_extracted(tinted_dataset, tmp_path_factory) -> tuple[Path, extraction.ExtractionSummary]:
    """The tinted dataset extracted once with default parameters, one worker: the reference outputs."""
    root = tmp_path_factory.mktemp("tinted_extracted") / "data"
    shutil.copytree(tinted_dataset, root)
    summary = extraction.extract_dataset(root, progress=False)
    return root, summary


def _params(mode: str, **changes):
    params = knowledge.ExtractionParams()
    params.membrane.mode = mode
    params.nuclei.mode = mode
    for key, value in changes.items():
        setattr(params, key, value)
    return params


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("href", "src") and value]


def _report_links(index: Path) -> list[str]:
    parser = _Links()
    parser.feed(index.read_text(encoding="utf-8"))
    return parser.links


def test_extraction_writes_every_output_under_release_names(extracted):
    root, summary = extracted
    pairs = pairs_module.discover_pairs(root)
    assert len(pairs) == 8 and summary.extracted == 8 and not summary.bad
    for pair in pairs:
        paths = pairs_module.knowledge_paths(root, pair.split, pair.stem)
        assert (root / f"{pair.split}_IHC_dab" / f"{pair.stem}.png").is_file()
        ihc = images_module().read_rgb(pair.ihc)
        dab = images_module().read_rgb(paths.dab)
        mask = images_module().read_gray(paths.dab_mask)
        density = images_module().read_gray(paths.nuclei_map)
        assert dab.shape == ihc.shape and mask.shape == density.shape == ihc.shape[:2]
        # Written values are those of knowledge.extract_tile on the same tile.
        tile = knowledge.extract_tile(ihc, knowledge.ExtractionParams())
        assert np.array_equal(dab, tile.dab_rgb) and np.array_equal(mask, tile.membrane_mask)
        centroids = extraction.read_centroids_csv(paths.nuclei_csv)
        assert np.allclose(centroids, tile.centroids, atol=0.005 + 1e-9)
        assert paths.nuclei_csv.read_text().startswith("x,y\n")
        assert not paths.nuclei_map_float.exists()
    record = json.loads((root / "extraction.json").read_text())
    assert record["complete"] is True
    assert knowledge.ExtractionParams.from_dict(record["params"]) == knowledge.ExtractionParams()


def images_module():
    from tdkstain.data import images

    return images


def test_centroid_csv_is_x_column_y_row():
    text = extraction.format_centroids_csv(np.array([[10.0, 3.5], [0.25, 7.0]]))
    assert text == "x,y\n3.50,10.00\n7.00,0.25\n"
    assert np.array_equal(extraction.parse_centroids_csv(text), [[10.0, 3.5], [0.25, 7.0]])
    assert extraction.parse_centroids_csv("x,y\n").shape == (0, 2)
    with pytest.raises(TdkstainError, match="x,y"):
        extraction.parse_centroids_csv("a,b\n1,2\n", "bad.csv")


def test_rerun_skips_every_tile_without_rewriting(extracted, tmp_path):
    root = _copy(extracted[0], tmp_path)
    before = {p: p.stat().st_mtime_ns for p in root.glob("*_IHC_*/*")}
    summary = extraction.extract_dataset(root, progress=False)
    assert summary.skipped == 8 and summary.extracted == 0
    assert {p: p.stat().st_mtime_ns for p in root.glob("*_IHC_*/*")} == before
    # The report's numbers for skipped tiles are those of the first run.
    assert [t.stained_fraction for t in summary.tiles] == [t.stained_fraction for t in extracted[1].tiles]
    assert [t.nuclei_count for t in summary.tiles] == [t.nuclei_count for t in extracted[1].tiles]


def test_newer_input_or_missing_output_is_redone(extracted, tmp_path):
    root = _copy(extracted[0], tmp_path)
    pairs = pairs_module.discover_pairs(root)
    os.utime(pairs[0].ihc)  # touched: newer than its outputs
    pairs_module.knowledge_paths(root, pairs[1].split, pairs[1].stem).dab.unlink()
    summary = extraction.extract_dataset(root, progress=False)
    redone = sorted(t.stem for t in summary.tiles if t.status == "extracted")
    assert redone == sorted([pairs[0].stem, pairs[1].stem])
    assert _outputs(root) == _outputs(extracted[0])


def test_interrupted_run_resumes_to_identical_outputs(tinted_dataset, tinted_extracted, tmp_path, monkeypatch):
    root = _copy(tinted_dataset, tmp_path)
    real = extraction.dataset._process_tile
    calls = {"n": 0}

    def interrupted(task, params):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(task, params)

    monkeypatch.setattr(extraction.dataset, "_process_tile", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extraction.extract_dataset(root, progress=False)
    monkeypatch.setattr(extraction.dataset, "_process_tile", real)
    assert json.loads((root / "extraction.json").read_text())["complete"] is False
    # A write killed half-way leaves a temporary file beside the outputs.
    leftover = next(root.glob("*_IHC_dab")) / ".tmp-synth-half-written.png"
    leftover.write_bytes(b"\x89PNG half")
    summary = extraction.extract_dataset(root, progress=False)
    assert summary.skipped == 3 and summary.extracted == 5
    assert not leftover.exists()
    assert _outputs(root) == _outputs(tinted_extracted[0])
    assert json.loads((root / "extraction.json").read_text())["complete"] is True


def test_two_workers_give_identical_outputs(tinted_dataset, tinted_extracted, tmp_path):
    root = _copy(tinted_dataset, tmp_path)
    summary = extraction.extract_dataset(root, workers=2, progress=False)
    assert summary.extracted == 8
    assert _outputs(root) == _outputs(tinted_extracted[0])
    assert [(t.stem, t.stained_fraction, t.nuclei_count) for t in summary.tiles] == [
        (t.stem, t.stained_fraction, t.nuclei_count) for t in tinted_extracted[1].tiles
    ]


def test_corrupt_tile_is_named_and_skip_bad_lists_it(extracted, tmp_path):
    root = _copy(extracted[0], tmp_path)
    bad = pairs_module.discover_pairs(root)[2].ihc
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(TdkstainError, match=re.escape(bad.name)) as err:
        extraction.extract_dataset(root, progress=False)
    assert "--skip-bad" in str(err.value)
    summary = extraction.extract_dataset(root, progress=False, skip_bad=True)
    assert [Path(t.ihc).name for t in summary.bad] == [bad.name]
    assert summary.skipped == 7
    report = json.loads((root / "extraction_report" / "report.json").read_text())
    assert [Path(b["ihc"]).name for b in report["bad_tiles"]] == [bad.name]
    assert bad.name in (root / "extraction_report" / "index.html").read_text()


def test_changed_parameters_are_refused_then_forced(tinted_extracted, tmp_path):
    root = _copy(tinted_extracted[0], tmp_path)
    before = _outputs(root)
    with pytest.raises(TdkstainError, match=r"--force") as err:
        extraction.extract_dataset(root, _params("release", density_sigma=5.0), progress=False)
    assert "density_sigma: 11.0 -> 5.0" in str(err.value)
    assert _outputs(root) == before  # nothing touched
    summary = extraction.extract_dataset(root, _params("release", density_sigma=5.0), force=True, progress=False)
    assert summary.extracted == 8
    assert json.loads((root / "extraction.json").read_text())["params"]["density_sigma"] == 5.0
    changed = [k for k in before if "nuclei_map" in k and _outputs(root)[k] != before[k]]
    assert changed, "density maps must be remade with the new sigma"


def test_knowledge_of_unknown_origin_is_not_overwritten(tinted_extracted, tmp_path):
    root = _copy(tinted_extracted[0], tmp_path)
    (root / "extraction.json").unlink()
    with pytest.raises(TdkstainError, match="extraction.json is missing"):
        extraction.extract_dataset(root, progress=False)


def test_count_density_is_float_tiff_that_sums_to_the_nuclei_count(tinted_extracted, tmp_path):
    root = _copy(tinted_extracted[0], tmp_path)
    summary = extraction.extract_dataset(root, _params("release", density_normalise="count"), force=True,
                                         progress=False, report=False)
    for pair in pairs_module.discover_pairs(root):
        paths = pairs_module.knowledge_paths(root, pair.split, pair.stem)
        assert not paths.nuclei_map.exists(), "the min-max map of the earlier run must go"
        density = images_module().read_float_map(paths.nuclei_map_float)
        count = len(extraction.read_centroids_csv(paths.nuclei_csv))
        assert density.dtype == np.float32
        assert abs(float(density.astype(np.float64).sum()) - count) <= 1e-3 * max(count, 1)
    assert summary.extracted == 8


def test_overlays_written_for_every_tile(tinted_dataset, tmp_path):
    root = _copy(tinted_dataset, tmp_path)
    summary = extraction.extract_dataset(root, progress=False, overlays=True, report=False)
    assert summary.extracted == 8
    for pair in pairs_module.discover_pairs(root):
        overlay = root / f"{pair.split}_IHC_overlay" / f"{pair.stem}.png"
        picture = images_module().read_rgb(overlay)
        ihc = images_module().read_rgb(pair.ihc)
        assert picture.shape == ihc.shape
    # Asking for overlays later makes only the overlays, not the knowledge again.
    before = {p: p.stat().st_mtime_ns for p in root.glob("*_IHC_nuclei/*")}
    for overlay in root.glob("*_IHC_overlay/*.png"):
        overlay.unlink()
    summary = extraction.extract_dataset(root, progress=False, overlays=True, report=False)
    assert summary.skipped == 8 and len(list(root.glob("*_IHC_overlay/*.png"))) == 8
    assert {p: p.stat().st_mtime_ns for p in root.glob("*_IHC_nuclei/*")} == before


def test_calibration_is_stored_and_used(tinted_dataset, tmp_path):
    root = _copy(tinted_dataset, tmp_path)
    summary = extraction.extract_dataset(root, _params("adaptive"), calibrate_sample=4, progress=False, report=False)
    record = json.loads((root / "extraction.json").read_text())
    threshold = record["calibration"]["membrane_threshold"]
    assert record["params"]["membrane"]["threshold"] == threshold and record["params"]["membrane"]["calibrated"]
    assert len(record["calibration"]["tiles"]) == 4
    # The stored threshold is the calibration of the four tiles it lists (the fit itself is tested in test_knowledge).
    tiles = [images_module().read_rgb(root / t) for t in record["calibration"]["tiles"]]
    assert threshold == knowledge.calibrate_membrane(tiles, knowledge.MembraneParams(mode="adaptive"))
    assert summary.params.membrane.threshold == threshold
    with pytest.raises(TdkstainError, match="adaptive"):
        extraction.extract_dataset(root, _params("release"), calibrate_sample=4, force=True, progress=False)


# --------------------------------------------------------------------------- evaluation against truth


def test_evaluation_against_truth_meets_issue_2_targets(extracted):
    root, _ = extracted
    evaluation = extraction.evaluate_against_truth(root)
    overall = evaluation.row("all")
    assert overall["tiles"] == 8
    # Issue 2: F1 >= 0.85 at 6 px and median absolute count error <= 10 % on clean 256 px tiles.
    assert overall["nuclei_f1"] >= 0.85
    assert overall["count_error_median_pct"] <= 10.0
    assert {r["group"] for r in evaluation.rows} >= {"her2=0", "her2=1+", "her2=2+", "her2=3+"}
    table = evaluation.to_markdown()
    assert table.splitlines()[0].startswith("| group | tiles | nuclei F1")
    # Per-tile numbers checked against the truth files and an independent IoU.
    tile = evaluation.per_tile[0]
    truth = json.loads((root / f"{tile['split']}_truth" / f"{tile['stem']}.json").read_text())
    assert tile["true_nuclei"] == len(truth["nuclei"])
    paths = pairs_module.knowledge_paths(root, tile["split"], tile["stem"])
    assert tile["found_nuclei"] == len(paths.nuclei_csv.read_text().splitlines()) - 1
    ihc = images_module().read_rgb(root / f"{tile['split']}_IHC" / f"{tile['stem']}.png")
    truth_membrane = images_module().read_gray(root / f"{tile['split']}_truth" / f"{tile['stem']}_membrane.png") > 0
    # IoU recomputed here: a stored mask against the truth, both dilated by the 2 px tolerance (scipy).
    from scipy import ndimage

    predicted = knowledge.membrane_mask_binary(ihc, knowledge.MembraneParams()) > 0
    disk = np.hypot(*np.mgrid[-2:3, -2:3]) <= 2
    a, b = ndimage.binary_dilation(predicted, disk), ndimage.binary_dilation(truth_membrane, disk)
    union = (a | b).sum()
    expected = (a & b).sum() / union if union else 1.0
    assert tile["membrane_iou"] == pytest.approx(expected) or (np.isnan(tile["membrane_iou"]) and expected == 1.0)


def test_evaluation_needs_truth(tinted_dataset, tinted_extracted, tmp_path):
    with pytest.raises(TdkstainError, match="tdkstain extract"):
        extraction.evaluate_against_truth(tinted_dataset)
    root = _copy(tinted_extracted[0], tmp_path)
    for truth in root.glob("*_truth"):
        shutil.rmtree(truth)
    with pytest.raises(TdkstainError, match="tdkstain synth"):
        extraction.evaluate_against_truth(root)


def test_evaluation_groups_failure_cases(tmp_path):
    root = tmp_path / "mixed"
    # synth cycles failure cases every four pairs: 4 clean, 4 tinted.
    synth.write_dataset(root, 8, size=96, seed=2, failures=("none", "tint-dab"))
    extraction.extract_dataset(root, progress=False, report=False)
    groups = {r["group"]: r["tiles"] for r in extraction.evaluate_against_truth(root).rows}
    assert groups["all"] == 8
    assert groups["failure=none"] == 4 and groups["failure=tint-dab"] == 4
    assert groups["her2=3+"] == 2


# --------------------------------------------------------------------------- quality report (issue 10)


def test_report_links_only_existing_files_and_shows_scores(extracted):
    root, summary = extracted
    index = root / "extraction_report" / "index.html"
    assert summary.report == index and index.is_file()
    links = _report_links(index)
    assert any(link.endswith("stained_fraction.png") for link in links)
    assert any(link.startswith("overlays/") for link in links)
    for link in links:
        assert "://" not in link and not link.startswith("/"), f"not a relative link: {link}"
        assert (index.parent / unquote(link)).is_file(), f"broken link {link}"
    report = json.loads((root / "extraction_report" / "report.json").read_text())
    assert [row["her2"] for row in report["per_her2"]] == ["0", "1+", "2+", "3+"]
    # Per-score means recomputed from the per-tile list.
    for row in report["per_her2"]:
        values = [t["stained_fraction"] for t in report["per_tile"] if t["her2"] == row["her2"]]
        assert row["stained_fraction_mean"] == pytest.approx(np.mean(values))
    html_text = index.read_text()
    assert "stained fraction rises with HER2 score (0 &lt; 1+ &lt; 2+ &lt; 3+ on average)" in html_text


def test_report_check_passes_for_adaptive_and_shows_release_failure_in_red(tinted_dataset, tinted_extracted, tmp_path):
    results = {}
    for mode in ("release", "adaptive"):
        if mode == tinted_extracted[1].params.membrane.mode:
            root = tinted_extracted[0]  # already extracted in this mode (the default)
        else:
            root = _copy(tinted_dataset, tmp_path / mode)
            extraction.extract_dataset(root, _params(mode), progress=False)
        report = json.loads((root / "extraction_report" / "report.json").read_text())
        html_text = (root / "extraction_report" / "index.html").read_text()
        status = report["check_stained_fraction_rises"]["status"]
        results[mode] = status
        first = html_text.index("<body>")
        check_line = html_text[first : html_text.index("</p>", first)]
        # The check is the first thing in the page, coloured by its outcome.
        assert f": {status}" in check_line
        assert ("check fail" in check_line) == (status == "FAIL")
        if status == "FAIL":
            assert "FAILS this check" in html_text
    assert results["adaptive"] == "PASS"
    # The release's fixed threshold marks a DAB-tinted tile stained everywhere (issue 10).
    assert results["release"] == "FAIL"


def test_stained_fraction_check_logic():
    def tile(label, fraction):
        return extraction.TileResult("train", f"s{label}{fraction}", label, "x.png", "extracted",
                                     stained_fraction=fraction, nuclei_count=1)

    rising = [tile("0", 0.0), tile("1+", 0.1), tile("2+", 0.3), tile("2+", 0.1), tile("3+", 0.5)]
    assert extraction.stained_fraction_check(rising)["status"] == "PASS"
    flat = [tile("0", 0.9), tile("1+", 0.9), tile("3+", 0.95)]
    assert extraction.stained_fraction_check(flat)["status"] == "FAIL"
    assert extraction.stained_fraction_check([tile(None, 0.2), tile("2+", 0.3)])["status"] == "N/A"


# --------------------------------------------------------------------------- a real IHC image, through a manifest


def test_real_ihc_through_a_manifest_matches_the_release_fixture(fixtures_dir, tmp_path):
    """The dataset run in release mode writes what the authors' release writes (issue 2 fixture, issue 10)."""
    ihc_source = fixtures_dir / "data" / "ihc_skimage_colon.png"
    fixture = np.load(fixtures_dir / "official" / "official_dab_skimage_ihc.npz")
    root = tmp_path / "real"
    (root / "tiles").mkdir(parents=True)
    shutil.copy(ihc_source, root / "tiles" / "colon_ihc.png")
    shutil.copy(ihc_source, root / "tiles" / "colon_he.png")  # stands in for the H&E partner; not read
    (root / "pairs.csv").write_text("he,ihc,label\ntiles/colon_he.png,tiles/colon_ihc.png,3+\n")

    summary = extraction.extract_dataset(root, _params("release"), manifest=root / "pairs.csv",
                                         overlays=True, progress=False)
    assert summary.extracted == 1 and summary.root == root
    (pair,) = pairs_module.discover_pairs(root, manifest=root / "pairs.csv")
    paths = pairs_module.knowledge_paths(root, pair.split, pair.stem)
    dab = images_module().read_rgb(paths.dab)
    blurred = images_module().read_gray(paths.dab_mask)
    assert np.abs(dab.astype(int) - fixture["dab_rgb"]).max() <= 1
    assert (dab == fixture["dab_rgb"]).all(axis=2).mean() >= 0.999
    assert (np.abs(blurred.astype(int) - fixture["dab_mask_blurred"]) <= 1).mean() >= 0.999
    overlay = images_module().read_rgb(root / f"{pair.split}_IHC_overlay" / f"{pair.stem}.png")
    assert overlay.shape == (512, 512, 3) and (overlay != images_module().read_rgb(ihc_source)).any()

    # Unblurred: identical to the release's binary mask.
    params = _params("release")
    params.membrane.blur = False
    extraction.extract_dataset(root, params, manifest=root / "pairs.csv", force=True, progress=False, report=False)
    assert np.array_equal(images_module().read_gray(paths.dab_mask), fixture["dab_mask"])


def test_report_extremes_show_each_tile_once_with_all_reasons():
    from tdkstain.knowledge.extraction.report import _extremes

    tiles = [extraction.TileResult("train", f"t{i}", "0", "x.png", "extracted", stained_fraction=f, nuclei_count=n)
             for i, (f, n) in enumerate([(0.9, 5), (0.1, 50), (0.5, 20), (0.4, 21)])]
    chosen = {tile.stem: reasons for reasons, tile in _extremes(tiles, 1)}
    assert chosen == {"t0": ["highest stained fraction", "fewest nuclei"],
                      "t1": ["lowest stained fraction", "most nuclei"]}
