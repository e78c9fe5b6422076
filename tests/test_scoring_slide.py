"""HER2 maps of whole slides (tdkstain.scoring.slide): regions over tissue, each cell counted once, the slide's
score pooled from the regions' counts, QuPath GeoJSON in level-0 pixels, memory flat in the slide's size."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import EXAMPLES, write_test_slide
from tdkstain.cli import main
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.scoring import ScoringParams, pooled_score
from tdkstain.scoring.cells import Cells
from tdkstain.scoring.slide import (
    COUNT_KEYS,
    REGION_COLUMNS,
    SCORE_COLOURS,
    SlideScoreOptions,
    _bounded_map,
    _Region,
    _score_region,
    is_slide,
    score_slide,
)
from tdkstain.scoring.tile import TileScore
from tdkstain.synth import render_pair

openslide = pytest.importorskip("openslide")

TILE = 256  # px at 0.5 um/px: one 128 um region of the test slide
GLASS = 243  # the synthetic tiles' own glass grey
# The test slide's regions are 128 um, where a HER2 0 tile holds 13-19 tumour cells: fewer than the default 20.
PARAMS = ScoringParams(min_cells=10)
OPTIONS = SlideScoreOptions(region_um=128)


def ihc_image(layout: list[list[int | None]], seed: int = 0) -> np.ndarray:
    """Synthetic IHC at 0.5 um/px: one TILE x TILE render_pair tile per entry (its HER2 score), None: glass."""
    image = np.full((len(layout) * TILE, len(layout[0]) * TILE, 3), GLASS, np.uint8)
    for r, row in enumerate(layout):
        for c, her2 in enumerate(row):
            if her2 is not None:
                image[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE] = render_pair(
                    seed=seed + 10 * r + c, size=TILE, her2=her2, misregister=0).ihc
    return image


def at_quarter_micron(image: np.ndarray) -> np.ndarray:
    """The 0.5 um/px image enlarged twice: a 40x level 0 (0.25 um/px) that scoring reads at its level 1."""
    return np.asarray(Image.fromarray(image).resize((image.shape[1] * 2, image.shape[0] * 2), Image.Resampling.LANCZOS))


@pytest.fixture(scope="module")
def ihc_slide(tmp_path_factory) -> Path:
    """2 x 3 regions of 128 um: column 0 HER2 0, column 1 HER2 3+, column 2 glass; level 0 at 0.25 um/px."""
    image = at_quarter_micron(ihc_image([[0, 3, None], [0, 3, None]]))
    return write_test_slide(tmp_path_factory.mktemp("slides") / "ihc_slide.tif", image, mpp=0.25)


@pytest.fixture(scope="module")
def scored(ihc_slide, tmp_path_factory):
    out = tmp_path_factory.mktemp("scored")
    summary = score_slide(ihc_slide, out, PARAMS, OPTIONS, progress=False, log=lambda message: None)
    with open(out / "ihc_slide.regions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {
        "summary": summary, "out": out, "rows": rows,
        "geojson": json.loads((out / "ihc_slide.geojson").read_text()),
        "json": json.loads((out / "ihc_slide.her2.json").read_text()),
    }


# --------------------------------------------------------------------------- which inputs are slides


def test_is_slide_tells_slides_from_tiles_by_name_and_tiff_header_only(ihc_slide, tmp_path, monkeypatch):
    tile = ihc_image([[3]])
    Image.fromarray(tile).save(tmp_path / "tile.png")
    tifffile.imwrite(tmp_path / "tile.tif", tile)
    tifffile.imwrite(tmp_path / "tiled.tif", tile, tile=(128, 128))  # tiled, one level: still a tile
    tifffile.imwrite(tmp_path / "long.tif", np.zeros((16, 10_001, 3), np.uint8))  # one level longer than 10000 px
    tifffile.imwrite(tmp_path / "short.tif", np.zeros((16, 10_000, 3), np.uint8))
    (tmp_path / "damaged.tif").write_bytes(ihc_slide.read_bytes()[:200])
    (tmp_path / "damaged.svs").write_bytes(b"not a slide" * 10)

    def no_pixels(*args, **kwargs):
        raise AssertionError("is_slide read pixel data")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_pixels)
    monkeypatch.setattr(tifffile.TiffFile, "asarray", no_pixels)
    assert is_slide(ihc_slide)  # three levels
    assert is_slide(EXAMPLES / "he_cmu_small_region.svs")
    assert is_slide(tmp_path / "long.tif")
    assert is_slide(tmp_path / "damaged.svs")  # by its name; the slide reader names the damage (next test)
    for tile_file in ("tile.png", "tile.tif", "tiled.tif", "short.tif", "damaged.tif"):
        assert not is_slide(tmp_path / tile_file), tile_file


def run_score(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["score", *argv])
    return code, out.getvalue(), err.getvalue()


@pytest.mark.filterwarnings("ignore:Truncated File Read")  # Pillow's, on the way to the one-line error
def test_a_damaged_input_is_one_line_naming_it_whichever_reader_it_reaches(ihc_slide, tmp_path):
    # A vendor name goes to the slide reader, a TIFF whose header is unreadable to the tile reader.
    (tmp_path / "damaged.svs").write_bytes(b"not a slide" * 10)
    (tmp_path / "damaged.tif").write_bytes(ihc_slide.read_bytes()[:200])
    for name, says in (("damaged.svs", "cannot read as a slide"), ("damaged.tif", "not a readable image")):
        code, _, err = run_score(str(tmp_path / name), "--out", str(tmp_path / "out"), "--quiet")
        errors = [line for line in err.splitlines() if "error:" in line]
        assert code == 2 and len(errors) == 1 and str(tmp_path / name) in errors[0] and says in errors[0], err
        assert "Traceback" not in err


# --------------------------------------------------------------------------- regions, scores, outputs


def test_regions_cover_the_tissue_in_level0_pixels_and_skip_the_glass(scored):
    rows, document = scored["rows"], scored["json"]
    assert list(rows[0]) == list(REGION_COLUMNS)
    # Read at 0.5 um/px from a 0.25 um/px level 0: a 256 px region is 512 level-0 px.
    boxes = sorted((int(r["x"]), int(r["y"]), int(r["w"]), int(r["h"])) for r in rows)
    assert boxes == [(0, 0, 512, 512), (0, 512, 512, 512), (512, 0, 512, 512), (512, 512, 512, 512)]
    assert {(int(r["row"]), int(r["col"])) for r in rows} == {(0, 0), (1, 0), (0, 1), (1, 1)}
    assert all(float(r["tissue_fraction"]) > 0.9 for r in rows)
    assert document["regions"] == {"grid": 6, "scored": 4, "background": 2,
                                   "per_score": {"0": 2, "1+": 0, "2+": 0, "3+": 2, "not scorable": 0}}
    assert document["slide"]["read_level"] == 1 and document["slide"]["level0_px_per_read_px"] == 2.0
    assert document["options"]["region_px"] == 256


def test_each_half_gets_its_own_score_and_the_slide_score_pools_the_region_counts(scored):
    rows, summary = scored["rows"], scored["summary"]
    by_column = {int(r["col"]): set() for r in rows}
    for r in rows:
        by_column[int(r["col"])].add(r["score"])
    assert by_column == {0: {"0"}, 1: {"3+"}}
    # The slide's score by hand: the counts of the CSV summed, the guideline's rule applied to them.
    total = {key: sum(int(r[f"n_{key}"]) for r in rows) for key in COUNT_KEYS[2:]}
    tumour = sum(int(r["tumour_cells"]) for r in rows)
    assert tumour == sum(total[k] for k in ("negative", "weak", "moderate", "strong"))
    strong_complete = 100 * total["strong_complete"] / tumour
    assert strong_complete > 10  # so 3+ by the guideline
    assert summary.result.score == "3+"
    assert summary.result.tumour_cells == tumour
    assert summary.result.percent_strong_complete == pytest.approx(strong_complete)
    h_score = 100 * (total["weak"] + 2 * total["moderate"] + 3 * total["strong"]) / tumour
    assert summary.result.h_score == pytest.approx(h_score)
    cells = sum(int(r["cells"]) for r in rows)
    assert summary.result == pooled_score({"tumour": tumour, "cells": cells, **total}, PARAMS)
    slide_score = scored["json"]["slide_score"]
    assert slide_score["score"] == "3+" and slide_score["tumour_cells"] == tumour
    # The HER2 0 half alone would not be 3+: pooling, not the largest region, decides.
    zero = [r for r in rows if r["col"] == "0"]
    assert all(float(r["pct_strong_complete"]) <= 10 for r in zero)
    # Tissue scored: four 128 um squares, each almost all tissue.
    assert summary.tissue_area_mm2 == pytest.approx(sum(float(r["tissue_fraction"]) for r in rows) * 0.128**2)


def test_geojson_is_a_qupath_feature_collection_of_region_polygons_in_level0_pixels(scored):
    collection, rows = scored["geojson"], scored["rows"]
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == len(rows) == 4
    for feature, row in zip(collection["features"], rows):
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        ring = feature["geometry"]["coordinates"][0]
        x, y, w, h = (int(row[k]) for k in ("x", "y", "w", "h"))
        assert ring == [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
        assert 0 <= x and x + w <= 1536 and 0 <= y and y + h <= 1024  # inside level 0 (1536 x 1024)
        properties = feature["properties"]
        assert properties["objectType"] == "tile"
        colour = list(SCORE_COLOURS[row["score"]])
        assert properties["classification"] == {"name": f"HER2 {row['score']}", "color": colour}
        measurements = properties["measurements"]
        assert measurements["Tumour cells"] == int(row["tumour_cells"])
        assert measurements["HER2 score"] == ("0", "1+", "2+", "3+").index(row["score"])
        assert measurements["H-score"] == pytest.approx(float(row["h_score"]))
        assert all(isinstance(v, (int, float)) for v in measurements.values())  # QuPath takes numbers only


def test_the_map_colours_scored_regions_by_score_and_leaves_the_glass_alone(scored, ihc_slide):
    from tdkstain.slides.reader import Slide, read_thumbnail

    picture = np.asarray(Image.open(scored["out"] / "ihc_slide.her2.png").convert("RGB")).astype(float)
    with Slide(ihc_slide) as slide:
        thumbnail = read_thumbnail(slide, OPTIONS.thumbnail_size).astype(float)
    h, w = thumbnail.shape[:2]
    assert picture.shape[0] > h  # the legend below
    third = w // 3
    zero, three, glass = (picture[:h, k * third + 5:(k + 1) * third - 5] for k in range(3))
    plain = [thumbnail[:, k * third + 5:(k + 1) * third - 5] for k in range(3)]
    blue, red = np.array(SCORE_COLOURS["0"], float), np.array(SCORE_COLOURS["3+"], float)

    def distance(image, colour):
        return float(np.abs(image.reshape(-1, 3).mean(0) - colour).sum())

    assert distance(zero, blue) < distance(plain[0], blue)  # tinted towards HER2 0's blue
    assert distance(three, red) < distance(plain[1], red)  # tinted towards 3+'s red
    assert np.array_equal(glass, plain[2])  # background regions: the thumbnail as it is


def test_cli_scores_a_slide_end_to_end(ihc_slide, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run_score(str(ihc_slide), "--out", str(out), "--region", "128", "--min-cells", "10")
    assert code == 0, err
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("ihc_slide.tif: HER2 3+ (complete strong membranes in ")
    assert "4 regions: 0: 2, 3+: 2" in last and last.endswith(f"-> {out / 'ihc_slide.her2.png'}")
    assert "2 background skipped" in stdout  # the plan, logged
    assert sorted(p.name for p in out.iterdir()) == [
        "ihc_slide.geojson", "ihc_slide.her2.json", "ihc_slide.her2.png", "ihc_slide.regions.csv"]


def test_a_slide_without_tissue_gives_empty_outputs_and_a_warning(tmp_path):
    slide = write_test_slide(tmp_path / "glass.tif", ihc_image([[None, None]]), mpp=0.5, levels=2)
    messages = []
    summary = score_slide(slide, tmp_path / "out", PARAMS, OPTIONS, progress=False, log=messages.append)
    assert any(m.startswith("warning: no tissue found in glass.tif") for m in messages)
    assert summary.regions_total == 2 and summary.regions_scored == 0 and not summary.result.scorable
    assert summary.line().startswith("glass.tif: HER2 not scorable (0 tumour cells, too few to score over 0.00 mm²")
    assert json.loads(summary.files["geojson"].read_text()) == {"type": "FeatureCollection", "features": []}
    assert summary.files["regions"].read_text().strip() == ",".join(REGION_COLUMNS)


# --------------------------------------------------------------------------- each cell once


def test_a_cell_on_a_region_border_counts_in_exactly_one_region(monkeypatch):
    """Cells placed exactly on the grid lines of a 2 x 2 grid of 10 px regions (read with a 3 px margin):
    the half-open rule puts each in one region, so the regions' counts sum to the cells in the grid."""
    side, margin = 10, 3
    # Centres (row, col) in view pixels: on the inner lines, the corner they share, the outer edges
    # (inside at 0, outside at 20), and just inside a line.
    centres = np.array([[10, 10], [10, 4], [4, 10], [0, 0], [19.99, 19.99], [20, 5], [5, 20], [9.999, 3], [15, 15]],
                       float)
    inside = ((centres >= 0) & (centres < 2 * side)).all(axis=1)

    class View:
        def read(self, x, y, w, h):
            self.origin = (y, x)
            return np.zeros((h, w, 3), np.uint8)

    view = View()

    def fake_score_tile(pixels, params, device="cpu"):
        centroid = centres - np.array(view.origin) - 0.5  # pixel index of the centre, in the read
        seen = ((centroid >= 0) & (centroid < np.array(pixels.shape[:2]))).all(axis=1)
        n = int(seen.sum())
        cells = Cells(centroid=centroid[seen], nucleus_area_um2=np.full(n, 50.0), cell_area_um2=np.full(n, 100.0),
                      ring_od=np.ones(n), intensity_od=np.ones(n), completeness=np.ones(n),
                      intensity_class=np.full(n, 3), complete=np.ones(n, bool),
                      nuclei=np.zeros(pixels.shape[:2], np.int32),
                      cells=np.zeros(pixels.shape[:2], np.int32), ring=np.zeros(pixels.shape[:2], bool),
                      dab_od=np.zeros(pixels.shape[:2]))
        return TileScore(cells=cells, tumour=np.ones(n, bool), result=None, params=params)

    monkeypatch.setattr("tdkstain.scoring.tile.score_tile", fake_score_tile)
    params = ScoringParams(min_cells=1)
    counted = {}
    for row in range(2):
        for col in range(2):
            region = _Region(0, row, col, col * side, row * side, side, side, 0, 0, 0, 0, 1.0)
            counts = _score_region(view, region, params, margin, "cpu")["result"]["counts"]
            counted[row, col] = counts["tumour"]
            assert counts["cells"] == counts["tumour"] == counts["strong_complete"]
    assert sum(counted.values()) == int(inside.sum()) == 7
    # [10, 10] belongs to the lower-right region (with [19.99, 19.99] and [15, 15]); [10, 4] to the
    # lower-left; [4, 10] to the upper-right; [0, 0] and [9.999, 3] to the upper-left.
    assert counted == {(0, 0): 2, (0, 1): 1, (1, 0): 1, (1, 1): 3}


def test_regions_count_the_cells_that_scoring_the_area_in_one_go_counts(ihc_slide):
    """The 2 x 2 tissue regions against the same 512 x 512 px area scored as one region.

    Cells: measured 242 and 242. A cell whose nucleus straddles an inner border counted twice (or not at
    all) would be off by the ~20 nuclei within 5 um of those borders (8 %); counting each read's margins
    too (70 px a side) would count 2.4 times as many: 3 % catches both. Tumour cells: measured 88 against
    93, for a reason that is not the border: nuclei are found with an Otsu threshold of each read
    (knowledge.nuclei's adaptive mask), so a nucleus's area shifts by up to ~3 um^2 with what else the read
    holds, and the 5 that flip lie within that of the tumour rule's 40 um^2 cut-off, away from any border.
    """
    from tdkstain.slides.reader import Slide, SlideAtMpp

    params = ScoringParams(min_cells=1)
    margin = int(np.ceil(OPTIONS.margin(params) / 0.5))
    with Slide(ihc_slide) as slide:
        view = SlideAtMpp(slide, 0.5)
        parts = [_score_region(view, _Region(0, r, c, c * TILE, r * TILE, TILE, TILE, 0, 0, 0, 0, 1.0), params, margin,
                               "cpu") for r in range(2) for c in range(2)]
        whole = _score_region(view, _Region(0, 0, 0, 0, 0, 2 * TILE, 2 * TILE, 0, 0, 0, 0, 1.0), params, margin, "cpu")
    cells = sum(p["result"]["counts"]["cells"] for p in parts)
    tumour = sum(p["result"]["counts"]["tumour"] for p in parts)
    assert abs(cells - whole["result"]["counts"]["cells"]) <= 0.03 * whole["result"]["counts"]["cells"]
    assert abs(tumour - whole["result"]["counts"]["tumour"]) <= 0.10 * whole["result"]["counts"]["tumour"]


# --------------------------------------------------------------------------- errors and settings


def test_a_slide_without_mpp_is_refused_until_slide_mpp_is_given(tmp_path):
    slide = write_test_slide(tmp_path / "no_mpp.tif", ihc_image([[3]]), mpp=None, levels=2)
    with pytest.raises(TdkstainError, match=r"no_mpp.tif: the slide records no microns per pixel .*--slide-mpp"):
        score_slide(slide, tmp_path / "out", PARAMS, OPTIONS, progress=False, log=lambda m: None)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    code, _, err = run_score(str(slide), "--out", str(tmp_path / "out"), "--quiet")
    assert code == 2 and "--slide-mpp" in err and "Traceback" not in err
    summary = score_slide(slide, tmp_path / "out", PARAMS, SlideScoreOptions(region_um=128, slide_mpp=0.5),
                          progress=False, log=lambda m: None)
    document = json.loads(summary.files["json"].read_text())
    assert document["slide"]["mpp"] == 0.5 and document["slide"]["mpp_from"] == "--slide-mpp"
    assert summary.result.score == "3+" and summary.regions_scored == 1


def test_a_region_that_cannot_be_read_names_the_slide_and_region_and_writes_nothing(ihc_slide, tmp_path):
    broken = tmp_path / "broken.tif"
    shutil.copy(ihc_slide, broken)
    with tifffile.TiffFile(broken) as tif:  # level 1, read for scoring; the tissue thumbnail reads level 0
        tag = tif.pages[1].tags["TileOffsets"]
        count, dtype = len(tag.value), np.dtype(tif.byteorder + ("Q" if tif.is_bigtiff else "I"))
        where = tag.valueoffset
    offsets = np.frombuffer(broken.read_bytes()[where: where + count * dtype.itemsize], dtype=dtype).copy()
    offsets[0] = np.iinfo(np.uint32).max - 10  # the first tile's data now lies far beyond the end of the file
    with open(broken, "r+b") as f:
        f.seek(where)
        f.write(offsets.astype(dtype).tobytes())
    out = tmp_path / "out"
    with pytest.raises(TdkstainError, match=r"broken.tif: cannot read level 1 .* region 0 \(grid row 0, column 0\) "
                                            r"at level-0 x=0, y=0, 512x512 px; no output was written"):
        score_slide(broken, out, PARAMS, OPTIONS, progress=False, log=lambda m: None)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("kwargs, message", [
    ({"region_um": 16}, r"--region=16 is out of range: must be between 32 and 4096"),
    ({"region_um": 5000}, r"--region=5000 is out of range"),
    ({"workers": 300}, r"--workers=300 is out of range: must be between 0 and 256"),
    ({"workers": 1.5}, r"--workers: expected a whole number"),
    ({"min_tissue": 0}, r"min_tissue must be above 0"),
    ({"slide_mpp": 0}, r"--slide-mpp=0 is out of range"),
    ({"backend": "pillow"}, r"slide backend 'pillow' is unknown"),
])
def test_options_are_checked_with_errors_naming_the_setting(kwargs, message):
    with pytest.raises(TdkstainError, match=message):
        SlideScoreOptions(**kwargs)


# --------------------------------------------------------------------------- memory and workers


def test_peak_memory_does_not_grow_with_the_slide(tmp_path):
    """Peak traced allocation (numpy's included) scoring a 2 x 2 and an 8 x 8 region slide (16x the area).

    What grows with the slide is a few numbers per region (~1 kB); the 8 x 8 slide's level 0 alone is
    3 MB, and keeping one float copy of each region's pixels would add ~0.5 MB per region (measured:
    4.7 -> 35 MiB). Measured peaks as written: 3.2 and 3.5 MiB (12 x 12: 3.5), so 1.25x plus 1 MiB
    catches either. Thumbnails are 64 px and the slides have 4 levels, so that the thumbnail (bounded,
    2048 px by default; read in strips of the level it comes from) does not hide the regions.
    """
    tile = render_pair(seed=3, size=128, her2=2, misregister=0).ihc  # one 64 um region at 0.5 um/px
    options = SlideScoreOptions(region_um=64, margin_um=10, tissue_thumbnail_size=64, thumbnail_size=64)

    def peak(n: int) -> float:
        slide = write_test_slide(tmp_path / f"slide{n}.tif", np.tile(tile, (n, n, 1)), mpp=0.5, levels=4)
        tracemalloc.start()
        try:
            summary = score_slide(slide, tmp_path / f"out{n}", PARAMS, options, progress=False, log=lambda m: None)
            traced_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert summary.regions_scored == n * n
        return traced_peak

    peak(2)  # first call: lazy imports and caches
    small, large = peak(2), peak(8)
    assert large <= 1.25 * small + 2**20, (small / 2**20, large / 2**20)


def test_at_most_a_bounded_number_of_regions_are_in_flight():
    depth, in_flight, most = 3, [0], [0]
    lock = threading.Lock()

    def work(job):
        time.sleep(0.002)
        return job * 2

    with ThreadPoolExecutor(8) as pool:
        def submit(job):
            with lock:
                in_flight[0] += 1
                most[0] = max(most[0], in_flight[0])
            future = pool.submit(work, job)
            return future

        results = []
        for result in _bounded_map(submit, range(40), depth):
            with lock:
                in_flight[0] -= 1
            results.append(result)
    assert results == [2 * j for j in range(40)]  # in order
    assert most[0] == depth


def test_worker_processes_give_the_same_map_as_one_process(ihc_slide, scored, tmp_path):
    options = SlideScoreOptions(region_um=128, workers=2)
    summary = score_slide(ihc_slide, tmp_path, PARAMS, options, progress=False, log=lambda m: None)
    assert summary.result == scored["summary"].result
    assert (tmp_path / "ihc_slide.regions.csv").read_text() == (scored["out"] / "ihc_slide.regions.csv").read_text()
    assert (tmp_path / "ihc_slide.geojson").read_text() == (scored["out"] / "ihc_slide.geojson").read_text()


def test_two_slides_of_the_same_name_get_their_own_outputs(ihc_slide, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(ihc_slide, tmp_path / folder / ihc_slide.name)
    out = tmp_path / "out"
    code, _, _ = run_score(str(tmp_path / "a" / ihc_slide.name), str(tmp_path / "b" / ihc_slide.name),
                           "--out", str(out), "--quiet")
    assert code == 0
    stem = ihc_slide.stem
    assert (out / f"{stem}.her2.json").is_file() and (out / f"{stem}-2.her2.json").is_file()
    first = json.loads((out / f"{stem}.her2.json").read_text())["slide"]["path"]
    second = json.loads((out / f"{stem}-2.her2.json").read_text())["slide"]["path"]
    assert first.endswith(f"a/{ihc_slide.name}") and second.endswith(f"b/{ihc_slide.name}")
