"""HER2 scoring (tdkstain.scoring): the guideline on hand-made counts, cells measured on drawn images of known
truth, the tumour rules, the outputs QuPath reads, agreement statistics against scikit-learn / scipy, scores of
synthetic tiles of known HER2, and ``tdkstain score``.

Every expected value is computed here independently of tdkstain (numpy, scipy, scikit-learn, scikit-image),
and where two settings could be swapped they get distinct values.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.path import Path as PolygonPath
from PIL import Image

from tdkstain.knowledge.stain import OD_PER_HED_UNIT, hed_to_rgb
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.scoring import (
    SCORES,
    CellParams,
    Cells,
    ScoringParams,
    TileScore,
    agreement,
    measure_cells,
    outputs,
    pooled_score,
    score_tile,
    tumour_cells,
)

MPP = 0.5  # microns per pixel of every drawn image


# ============================================================================ the guideline on counts


def counts(tumour: int, *, weak: int = 0, moderate: int = 0, strong: int = 0, complete: int = 0,
           strong_complete: int = 0, cells: int | None = None) -> dict[str, int]:
    """A region's cell counts as ``score_cells`` makes them (negative = the rest)."""
    return {"tumour": tumour, "negative": tumour - weak - moderate - strong, "weak": weak, "moderate": moderate,
            "strong": strong, "complete": complete, "strong_complete": strong_complete,
            "cells": tumour if cells is None else cells}


def test_3plus_boundary_is_strictly_more_than_10_percent():
    at = pooled_score(counts(1000, strong=100, complete=100, strong_complete=100))  # exactly 10.0 %
    above = pooled_score(counts(1000, strong=101, complete=101, strong_complete=101))  # 10.1 %
    assert at.score != "3+" and at.percent_strong_complete == pytest.approx(10.0)
    assert above.score == "3+" and above.percent_strong_complete == pytest.approx(10.1)
    # exactly 10 % complete (strong) membranes is not > 10 % either: not 2+, but > 10 % stained is not needed
    # for 1+ here: 10 % stained is not > 10 % -> 0
    assert at.score == "0"


def test_3plus_needs_strong_and_complete():
    # 50 % strong cells, but only 10 % of tumour cells with a complete strong membrane: not 3+;
    # 30 % complete (any intensity) -> 2+
    strong_incomplete = pooled_score(counts(1000, strong=500, complete=300, strong_complete=100))
    assert strong_incomplete.score == "2+"
    # 60 % complete membranes, none strong -> 2+, never 3+
    complete_moderate = pooled_score(counts(1000, moderate=600, complete=600, strong_complete=0))
    assert complete_moderate.score == "2+"
    # strong but all incomplete -> 1+ (faint or incomplete staining in > 10 %)
    strong_all_incomplete = pooled_score(counts(1000, strong=800, complete=0, strong_complete=0))
    assert strong_all_incomplete.score == "1+"
    assert pooled_score(counts(1000, strong=500, complete=500, strong_complete=150)).score == "3+"


def test_2plus_versus_1plus_by_completeness():
    weak = dict(weak=400, moderate=200)
    assert pooled_score(counts(1000, **weak, complete=100)).score == "1+"  # 10.0 % complete
    assert pooled_score(counts(1000, **weak, complete=101)).score == "2+"  # 10.1 %
    assert pooled_score(counts(1000, **weak, complete=0)).score == "1+"


def test_1plus_versus_0_boundary():
    assert pooled_score(counts(1000, weak=100)).score == "0"  # 10.0 % stained
    one = pooled_score(counts(1000, weak=101))
    assert one.score == "1+" and one.percent_stained == pytest.approx(10.1)
    # stained counts weak, moderate and strong alike
    assert pooled_score(counts(1000, weak=40, moderate=31, strong=30)).score == "1+"
    assert pooled_score(counts(1000, weak=40, moderate=30, strong=30)).score == "0"
    assert pooled_score(counts(1000)).score == "0"


def test_positive_fraction_setting_moves_every_boundary():
    params = ScoringParams(positive_fraction=0.25)
    assert pooled_score(counts(1000, strong=250, complete=250, strong_complete=250), params).score == "0"
    assert pooled_score(counts(1000, strong=251, complete=251, strong_complete=251), params).score == "3+"
    assert pooled_score(counts(1000, weak=251, complete=251), params).score == "2+"
    assert pooled_score(counts(1000, weak=251, complete=250), params).score == "1+"


def test_not_scorable_below_min_cells_never_zero():
    few = pooled_score(counts(19, weak=0), ScoringParams(min_cells=20))
    assert few.score is None and not few.scorable
    assert few.score != "0"
    assert "not scorable" in few.reason and "19" in few.reason and "20" in few.reason
    enough = pooled_score(counts(20), ScoringParams(min_cells=20))
    assert enough.score == "0" and enough.scorable
    # a 3+-looking region is still not scorable with too few cells
    assert pooled_score(counts(7, strong=7, complete=7, strong_complete=7), ScoringParams(min_cells=8)).score is None
    empty = pooled_score({})
    assert empty.score is None and empty.tumour_cells == 0 and empty.h_score == 0.0


def test_h_score_formula_with_distinct_class_counts():
    # 10 % negative, 20 % weak, 30 % moderate, 40 % strong: H = 1*20 + 2*30 + 3*40 = 200
    result = pooled_score(counts(1000, weak=200, moderate=300, strong=400, cells=1500))
    assert result.percent == pytest.approx({"negative": 10.0, "weak": 20.0, "moderate": 30.0, "strong": 40.0})
    assert result.h_score == pytest.approx(200.0)
    assert result.cells == 1500 and result.tumour_cells == 1000
    # swapped weak/strong counts give a different H-score: 1*40 + 2*30 + 3*20 = 160
    assert pooled_score(counts(1000, weak=400, moderate=300, strong=200)).h_score == pytest.approx(160.0)
    # completeness plays no part in the H-score
    assert pooled_score(counts(1000, weak=200, moderate=300, strong=400, complete=900,
                               strong_complete=400)).h_score == pytest.approx(200.0)
    assert pooled_score(counts(50, strong=50)).h_score == pytest.approx(300.0)


def test_scoring_params_round_trip_and_errors():
    params = ScoringParams(cells=CellParams(thresholds=(0.1, 0.3, 0.7), sectors=16), tumour_rule="dense", min_cells=5)
    assert ScoringParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params
    with pytest.raises(TdkstainError, match="unknown key"):
        ScoringParams.from_dict({"tumor_rule": "all"})
    with pytest.raises(TdkstainError, match="tumour rule"):
        ScoringParams(tumour_rule="nests").validate()
    with pytest.raises(TdkstainError, match="thresholds"):
        CellParams(thresholds=(0.4, 0.2, 0.6)).validate()


# ============================================================================ cells on drawn images


def draw_cells(cells: list[dict], size: tuple[int, int], cast_od: float = 0.0) -> np.ndarray:
    """An IHC image of round cells with known truth, painted through ``hed_to_rgb``.

    Each cell dict: ``row``, ``col`` (px), ``nucleus_um`` (radius), ``od`` (decadic DAB OD of its membrane ring),
    ``ring_um`` (inner, outer radius of the ring from the centre), ``half`` (stain only the ring's right half).
    ``cast_od``: a uniform DAB OD added everywhere (a brown cast). Returns (H, W, 3) uint8 RGB.
    """
    h, w = size
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    hed = np.zeros((h, w, 3))
    hed[..., 0] = 0.004  # pale counterstain of the tissue around the cells
    hed[..., 2] = cast_od / OD_PER_HED_UNIT
    for cell in cells:
        d_um = np.hypot(rows - cell["row"], cols - cell["col"]) * MPP
        hed[..., 0] = np.where(d_um <= cell["nucleus_um"], 0.08, hed[..., 0])  # haematoxylin-blue nucleus
        inner, outer = cell.get("ring_um", (5.5, 8.5))
        ring = (d_um >= inner) & (d_um <= outer)
        if cell.get("half"):
            ring &= cols >= cell["col"]
        hed[..., 2] = np.where(ring, hed[..., 2] + cell["od"] / OD_PER_HED_UNIT, hed[..., 2])
    return np.round(hed_to_rgb(hed) * 255).astype(np.uint8)


FOUR_OD = (0.1, 0.3, 0.5, 0.8)  # -> Negative, 1+, 2+, 3+ at QuPath's 0.2 / 0.4 / 0.6
NUCLEUS_UM = 4.0


@pytest.fixture(scope="module")
def four_cells_image() -> np.ndarray:
    cells = [dict(row=60, col=60 + 120 * i, nucleus_um=NUCLEUS_UM, od=od) for i, od in enumerate(FOUR_OD)]
    return draw_cells(cells, (120, 480))


@pytest.fixture(scope="module")
def four_cells(four_cells_image) -> Cells:
    return measure_cells(four_cells_image, CellParams(mpp=MPP))


def test_measure_cells_finds_each_cell_at_its_place(four_cells):
    c = four_cells
    assert len(c) == 4
    order = np.argsort(c.centroid[:, 1])
    np.testing.assert_allclose(c.centroid[order], [[60, 60 + 120 * i] for i in range(4)], atol=0.5)
    true_area = math.pi * NUCLEUS_UM**2
    np.testing.assert_allclose(c.nucleus_area_um2, true_area, rtol=0.15)
    assert c.nuclei.shape == c.cells.shape == c.ring.shape == c.dab_od.shape == (120, 480)
    assert set(np.unique(c.cells)) == {0, 1, 2, 3, 4}
    # the ring lies outside the nucleus and inside the cell
    assert not (c.ring & (c.nuclei > 0)).any() and (c.cells[c.ring] > 0).all()


def test_membrane_od_gives_the_class(four_cells):
    c = four_cells
    order = np.argsort(c.centroid[:, 1])
    np.testing.assert_array_equal(c.intensity_class[order], [0, 1, 2, 3])
    # intensity is the membrane's decadic OD (rgb2hed x 6), not rgb2hed units
    np.testing.assert_allclose(c.intensity_od[order], FOUR_OD, rtol=0.05)
    # fully stained rings of the stained cells are complete; the negative one has no stained sector
    np.testing.assert_allclose(c.completeness[order], [0, 1, 1, 1])
    np.testing.assert_array_equal(c.complete[order], [False, True, True, True])


def test_thresholds_changed_change_the_classes(four_cells_image):
    c = measure_cells(four_cells_image, CellParams(mpp=MPP, thresholds=(0.05, 0.25, 0.45)))
    np.testing.assert_array_equal(c.intensity_class[np.argsort(c.centroid[:, 1])], [1, 2, 3, 3])
    c = measure_cells(four_cells_image, CellParams(mpp=MPP, thresholds=(0.35, 0.7, 0.9)))
    np.testing.assert_array_equal(c.intensity_class[np.argsort(c.centroid[:, 1])], [0, 0, 1, 2])


def test_half_stained_ring_is_half_complete():
    # the membrane at the cell's edge (7-8.5 um from the centre; the cell reaches 9 um)
    image = draw_cells([dict(row=60, col=60, nucleus_um=NUCLEUS_UM, od=0.5, half=True, ring_um=(7.0, 8.5)),
                        dict(row=60, col=180, nucleus_um=NUCLEUS_UM, od=0.5, ring_um=(7.0, 8.5))], (120, 240))
    c = measure_cells(image, CellParams(mpp=MPP))
    half, full = np.argsort(c.centroid[:, 1])
    # half of the 24 sectors, plus at most the one sector on each side of the cut that the 1.5 um reach
    # (and the smoothing) carries the stain into: 12/24 .. 14/24
    assert 0.5 <= c.completeness[half] <= 14 / 24 + 1e-9
    assert not c.complete[half]
    assert c.completeness[full] == 1.0 and c.complete[full]
    # intensity reads the stained sectors only: both cells 2+
    assert c.intensity_class[half] == c.intensity_class[full] == 2
    # complete_fraction 0.5 makes the half ring complete
    c = measure_cells(image, CellParams(mpp=MPP, complete_fraction=0.5))
    assert c.complete[np.argsort(c.centroid[:, 1])[0]]


@pytest.mark.parametrize("expansion_um", [5.0, 2.5])
def test_cell_expansion_limit_is_honoured(four_cells_image, expansion_um):
    c = measure_cells(four_cells_image, CellParams(mpp=MPP, cell_expansion_um=expansion_um))
    limit = math.pi * (NUCLEUS_UM + expansion_um) ** 2
    assert (c.cell_area_um2 <= limit).all()
    # ... and the cells do reach it (isolated cells grow to the limit)
    assert (c.cell_area_um2 >= 0.85 * limit).all()
    assert (c.cell_area_um2 > c.nucleus_area_um2).all()


def test_cells_between_packed_nuclei_split_halfway():
    image = draw_cells([dict(row=40, col=40, nucleus_um=3.0, od=0.5, ring_um=(4.0, 5.5)),
                        dict(row=40, col=62, nucleus_um=3.0, od=0.5, ring_um=(4.0, 5.5))], (80, 104))
    c = measure_cells(image, CellParams(mpp=MPP))
    assert len(c) == 2
    left = int(np.argmin(c.centroid[:, 1])) + 1
    # every pixel of the left cell lies left of the midpoint column 51 (+1 px for the discrete boundary)
    cols = np.nonzero(c.cells == left)[1]
    assert cols.max() <= 52


def test_subtract_background_removes_a_dab_cast():
    cells = [dict(row=60, col=60 + 120 * i, nucleus_um=NUCLEUS_UM, od=od) for i, od in enumerate((0.1, 0.3, 0.5))]
    cast = draw_cells(cells, (120, 360), cast_od=0.15)
    plain = measure_cells(cast, CellParams(mpp=MPP))
    order = np.argsort(plain.centroid[:, 1])
    # the cast lifts every membrane by 0.15 OD: 0.25, 0.45, 0.65 -> 1+, 2+, 3+
    np.testing.assert_array_equal(plain.intensity_class[order], [1, 2, 3])
    subtracted = measure_cells(cast, CellParams(mpp=MPP, subtract_background=True))
    assert subtracted.background_od == pytest.approx(0.15, abs=0.02)
    np.testing.assert_array_equal(subtracted.intensity_class[np.argsort(subtracted.centroid[:, 1])], [0, 1, 2])


def test_blank_image_has_no_cells():
    c = measure_cells(np.full((64, 64, 3), 245, np.uint8), CellParams(mpp=MPP))
    assert len(c) == 0 and c.intensity_class.shape == (0,)
    result = score_tile(np.full((64, 64, 3), 245, np.uint8))
    assert result.score is None and result.result.tumour_cells == 0


# ============================================================================ tumour rules


def hand_cells(centroids_um: list[tuple[float, float]], nucleus_um2: list[float], mpp: float = MPP) -> Cells:
    """Cells placed by hand: centroids in microns (converted to px at ``mpp``), nucleus areas in um^2."""
    n = len(centroids_um)
    zeros = np.zeros(n)
    return Cells(
        centroid=np.asarray(centroids_um, np.float64) / mpp, nucleus_area_um2=np.asarray(nucleus_um2, np.float64),
        cell_area_um2=zeros, ring_od=zeros, intensity_od=zeros, completeness=zeros,
        intensity_class=np.zeros(n, np.int64), complete=np.zeros(n, bool), nuclei=np.zeros((1, 1), np.int32),
        cells=np.zeros((1, 1), np.int32), ring=np.zeros((1, 1), bool), dab_od=np.zeros((1, 1)),
    )


def layout():
    """A 3 x 3 nest of large nuclei 10 um apart, a 3 x 3 cluster of small nuclei (lymphocytes) 8 um apart,
    and 4 scattered large nuclei 100 um from anything. Returns centroids (um), areas (um^2), group names."""
    nest = [(100 + 10 * i, 100 + 10 * j) for i in range(3) for j in range(3)]
    lymph = [(400 + 8 * i, 400 + 8 * j) for i in range(3) for j in range(3)]
    scattered = [(100, 300), (300, 100), (600, 600), (100, 600)]
    centroids = nest + lymph + scattered
    areas = [60.0] * 9 + [30.0] * 9 + [60.0] * 4
    groups = ["nest"] * 9 + ["lymph"] * 9 + ["scattered"] * 4
    return centroids, areas, np.array(groups)


def test_tumour_rules_on_hand_placed_cells():
    centroids, areas, groups = layout()
    cells = hand_cells(centroids, areas)
    dense = tumour_cells(cells, ScoringParams(tumour_rule="dense"))
    epithelial = tumour_cells(cells, ScoringParams(tumour_rule="epithelial"))
    everything = tumour_cells(cells, ScoringParams(tumour_rule="all"))
    np.testing.assert_array_equal(dense, groups != "scattered")
    np.testing.assert_array_equal(epithelial, groups == "nest")  # small nuclei excluded
    assert everything.all() and everything.dtype == bool
    # min_nucleus_um2 is the cut: below the small nuclei, they count again
    np.testing.assert_array_equal(
        tumour_cells(cells, ScoringParams(tumour_rule="epithelial", min_nucleus_um2=25.0)), groups != "scattered")


def test_min_neighbours_and_radius_in_microns():
    # a cell with exactly 3 neighbours within 25 um is dense; with 2 it is not
    star = [(0, 0), (20, 0), (0, 20), (-20, 0)]
    cells = hand_cells([(200 + r, 200 + c) for r, c in star], [60.0] * 4)
    assert tumour_cells(cells, ScoringParams(tumour_rule="dense", min_neighbours=3))[0]
    assert not tumour_cells(cells, ScoringParams(tumour_rule="dense", min_neighbours=3))[1:].any()
    cells3 = hand_cells([(200 + r, 200 + c) for r, c in star[:3]], [60.0] * 3)
    assert not tumour_cells(cells3, ScoringParams(tumour_rule="dense", min_neighbours=3)).any()
    # the radius is in microns: on a grid 18 um apart a corner cell has 2 neighbours within 25 um (the
    # diagonal is 25.5 um), an edge cell 3 and an inner cell 4; within 15 um none, at either scale
    grid = [(18 * i, 18 * j) for i in range(4) for j in range(4)]
    corner = np.array([i in (0, 3) and j in (0, 3) for i in range(4) for j in range(4)])
    for mpp in (0.5, 0.25):
        nest = hand_cells(grid, [60.0] * 16, mpp=mpp)
        dense = tumour_cells(nest, ScoringParams(cells=CellParams(mpp=mpp), tumour_rule="dense", min_neighbours=3))
        np.testing.assert_array_equal(dense, ~corner)
        assert tumour_cells(nest, ScoringParams(cells=CellParams(mpp=mpp), tumour_rule="dense",
                                                min_neighbours=2)).all()
        inner = tumour_cells(nest, ScoringParams(cells=CellParams(mpp=mpp), tumour_rule="dense", min_neighbours=4))
        assert inner.sum() == 4
        tight = ScoringParams(cells=CellParams(mpp=mpp), tumour_rule="dense", neighbour_radius_um=15.0,
                              min_neighbours=1)
        assert not tumour_cells(nest, tight).any()


def test_score_cells_counts_tumour_cells_only():
    from tdkstain.scoring import score_cells

    centroids, areas, groups = layout()
    cells = hand_cells(centroids, areas)
    # nest cells 3+ complete, everything else negative
    cells.intensity_class = np.where(groups == "nest", 3, 0)
    cells.complete = groups == "nest"
    result = score_cells(cells, ScoringParams(min_cells=5))
    assert result.tumour_cells == 9 and result.cells == 22 and result.score == "3+"
    assert result.h_score == pytest.approx(300.0)
    everything = score_cells(cells, ScoringParams(tumour_rule="all", min_cells=5))
    assert everything.tumour_cells == 22
    assert everything.h_score == pytest.approx(300.0 * 9 / 22)


# ============================================================================ outputs


@pytest.fixture(scope="module")
def drawn_tile(four_cells_image) -> TileScore:
    """The four drawn cells, the second one (1+) marked as not a tumour cell."""
    params = ScoringParams(tumour_rule="all", min_cells=1)
    tile = score_tile(four_cells_image, params)
    order = np.argsort(tile.cells.centroid[:, 1])
    tumour = np.ones(len(tile.cells), bool)
    tumour[order[1]] = False
    tile.tumour = tumour
    return tile


def test_geojson_is_what_qupath_imports(drawn_tile, tmp_path):
    features = outputs.cell_features(drawn_tile)
    path = outputs.write_geojson(tmp_path / "cells.geojson", features)
    document = json.loads(path.read_text())
    assert document["type"] == "FeatureCollection" and len(document["features"]) == 4
    c = drawn_tile.cells
    for i, feature in enumerate(document["features"]):
        assert feature["type"] == "Feature"
        for key in ("geometry", "nucleusGeometry"):
            geometry = feature[key]
            assert geometry["type"] == "Polygon"
            ring = geometry["coordinates"][0]
            assert len(ring) >= 4 and ring[0] == ring[-1]
            assert all(len(point) == 2 and all(isinstance(v, (int, float)) for v in point) for point in ring)
        props = feature["properties"]
        assert props["objectType"] == "cell"
        klass = int(c.intensity_class[i])
        if drawn_tile.tumour[i]:
            assert props["classification"] == {"name": f"Tumor: {outputs.CELL_CLASSES[klass]}",
                                               "color": list(outputs.CLASS_COLOURS[klass])}
        else:
            assert props["classification"] == {"name": "Other", "color": list(outputs.OTHER_COLOUR)}
        m = props["measurements"]
        assert isinstance(m, dict) and all(isinstance(v, (int, float)) for v in m.values())
        assert m["Intensity class"] == klass
        assert m["DAB membrane OD"] == pytest.approx(c.intensity_od[i], abs=1e-4)
        assert m["Membrane completeness"] == pytest.approx(c.completeness[i], abs=1e-4)
        assert m["Tumour cell"] == int(drawn_tile.tumour[i])
        # the nucleus lies inside its cell, and the cell's polygon has the cell's area (x, y = col, row + 0.5)
        cell_ring = np.array(feature["geometry"]["coordinates"][0])
        nucleus_ring = np.array(feature["nucleusGeometry"]["coordinates"][0])
        assert PolygonPath(cell_ring).contains_points(nucleus_ring).all()
        x, y = cell_ring[:, 0], cell_ring[:, 1]
        polygon_area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
        assert polygon_area * MPP**2 == pytest.approx(c.cell_area_um2[i], rel=0.15)
        centre = np.array([c.centroid[i, 1] + 0.5, c.centroid[i, 0] + 0.5])
        assert PolygonPath(nucleus_ring).contains_point(centre)


def test_geojson_and_table_offset_and_scale(drawn_tile):
    origin, scale = (1000.0, 250.0), 4.0
    plain, moved = outputs.cell_features(drawn_tile), outputs.cell_features(drawn_tile, origin, scale)
    assert len(plain) == len(moved)
    for a, b in zip(plain, moved):
        for key in ("geometry", "nucleusGeometry"):
            p = np.array(a[key]["coordinates"][0])
            q = np.array(b[key]["coordinates"][0])
            np.testing.assert_allclose(q, np.asarray(origin) + p * scale, atol=0.03)
    rows, moved_rows = outputs.cell_rows(drawn_tile), outputs.cell_rows(drawn_tile, origin, scale)
    c = drawn_tile.cells
    for i, (r, m) in enumerate(zip(rows, moved_rows)):
        assert r["x"] == pytest.approx(c.centroid[i, 1] + 0.5, abs=0.006)
        assert r["y"] == pytest.approx(c.centroid[i, 0] + 0.5, abs=0.006)
        assert m["x"] == pytest.approx(origin[0] + (c.centroid[i, 1] + 0.5) * scale, abs=0.006)
        assert m["y"] == pytest.approx(origin[1] + (c.centroid[i, 0] + 0.5) * scale, abs=0.006)


def test_cells_csv_columns_and_values(drawn_tile, tmp_path):
    path = outputs.write_csv(tmp_path / "cells.csv", outputs.cell_rows(drawn_tile), outputs.CELL_COLUMNS)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == outputs.CELL_COLUMNS
        rows = list(reader)
    c = drawn_tile.cells
    assert len(rows) == len(c)
    by_col = sorted(rows, key=lambda r: float(r["x"]))
    assert [r["class"] for r in by_col] == ["Negative", "1+", "2+", "3+"]
    assert [r["tumour"] for r in by_col] == ["True", "False", "True", "True"]
    for r in rows:
        i = int(r["cell"]) - 1
        assert float(r["intensity_od"]) == pytest.approx(c.intensity_od[i], abs=1e-4)
        assert float(r["cell_area_um2"]) == pytest.approx(c.cell_area_um2[i], abs=0.01)
        assert float(r["nucleus_area_um2"]) == pytest.approx(c.nucleus_area_um2[i], abs=0.01)


def test_overlay_paints_each_ring_in_its_class_colour(drawn_tile, four_cells_image):
    dim = 0.35
    overlay = outputs.ring_overlay(four_cells_image, drawn_tile, dim=dim)
    assert overlay.shape == four_cells_image.shape and overlay.dtype == np.uint8
    c = drawn_tile.cells
    for i in range(len(c)):
        pixels = overlay[c.ring & (c.cells == i + 1)]
        assert len(pixels) > 50
        colour = outputs.CLASS_COLOURS[int(c.intensity_class[i])] if drawn_tile.tumour[i] else outputs.OTHER_COLOUR
        assert (pixels == np.array(colour, np.uint8)).all()
    # the four tumour/other colours are distinct, so a swapped class would show
    assert len({tuple(map(int, overlay[c.ring & (c.cells == i + 1)][0])) for i in range(4)}) == 4
    # off the rings: the IHC lightened towards white by ``dim``
    off = ~c.ring
    expected = (four_cells_image.astype(np.float32) * (1 - dim) + 255 * dim).astype(np.uint8)
    np.testing.assert_array_equal(overlay[off], expected[off])


# ============================================================================ agreement against references


def _random_labels(rng: np.random.Generator, n: int, present: list[int]) -> tuple[np.ndarray, np.ndarray]:
    real = rng.choice(present, n)
    noise = rng.integers(-1, 2, n)
    virtual = np.clip(real + noise * (rng.random(n) < 0.4), 0, 3)
    return real, virtual


@pytest.mark.parametrize("seed, n, present", [
    (0, 40, [0, 1, 2, 3]), (1, 15, [0, 1, 2, 3]), (2, 30, [1, 2, 3]), (3, 25, [0, 3]), (4, 60, [0, 1]),
    (5, 12, [2]),  # virtual strays to 1 and 3 only
])
def test_kappa_and_confusion_match_scikit_learn(seed, n, present):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    real, virtual = _random_labels(rng, n, present)
    labels = [0, 1, 2, 3]
    np.testing.assert_array_equal(agreement.confusion_matrix(real, virtual),
                                  sklearn_metrics.confusion_matrix(real, virtual, labels=labels))
    expected = sklearn_metrics.cohen_kappa_score(real, virtual, labels=labels, weights="quadratic")
    assert agreement.quadratic_kappa(real, virtual) == pytest.approx(expected, abs=1e-12)
    # through score_agreement's string labels as well
    result = agreement.score_agreement([SCORES[i] for i in real], [SCORES[i] for i in virtual], resamples=50)
    assert result.kappa == pytest.approx(expected, abs=1e-12)
    assert result.accuracy == pytest.approx(float(np.mean(real == virtual)))


def test_kappa_differs_from_linear_and_unweighted():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    real, virtual = [0, 0, 1, 2, 3, 3, 1, 2], [0, 3, 1, 1, 3, 0, 2, 2]
    ours = agreement.quadratic_kappa(real, virtual)
    for weights in ("linear", None):
        assert abs(ours - sklearn_metrics.cohen_kappa_score(real, virtual, weights=weights)) > 1e-3


def test_kappa_nan_when_every_pair_is_one_class():
    assert math.isnan(agreement.quadratic_kappa([2, 2, 2, 2], [2, 2, 2, 2]))
    assert math.isnan(agreement.quadratic_kappa([], []))
    result = agreement.score_agreement(["1+"] * 5, ["1+"] * 5)
    assert math.isnan(result.kappa) and result.accuracy == 1.0
    assert all(math.isnan(v) for v in result.kappa_ci95)
    # perfect agreement over several classes is exactly 1
    assert agreement.quadratic_kappa([0, 1, 2, 3], [0, 1, 2, 3]) == 1.0


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    rng = np.random.default_rng(7)
    real, virtual = _random_labels(rng, 80, [0, 1, 2, 3])
    r, v = [SCORES[i] for i in real], [SCORES[i] for i in virtual]
    a = agreement.score_agreement(r, v, resamples=400, seed=11)
    b = agreement.score_agreement(r, v, resamples=400, seed=11)
    c = agreement.score_agreement(r, v, resamples=400, seed=12)
    low, high = a.kappa_ci95
    assert low <= a.kappa <= high and low < high
    assert a.kappa_ci95 == b.kappa_ci95
    assert a.kappa_ci95 != c.kappa_ci95
    # an independent percentile bootstrap with the same draws
    draws = np.random.default_rng(11).integers(0, 80, size=(400, 80))
    values = [agreement.quadratic_kappa(real[d], virtual[d]) for d in draws]
    np.testing.assert_allclose(a.kappa_ci95, np.percentile(values, [2.5, 97.5]))


def test_not_scorable_pairs_are_left_out_and_counted():
    real = ["0", None, "2+", "3+", "1+", "2+"]
    virtual = ["0", "1+", None, "3+", "2+", "2+"]
    h_real = [5.0, 80.0, 150.0, 270.0, 60.0, 140.0]
    h_virtual = [12.0, 90.0, 100.0, 250.0, 95.0, 131.0]
    result = agreement.score_agreement(real, virtual, h_real, h_virtual, resamples=100)
    assert result.pairs == 6 and result.scored == 4
    assert result.not_scorable_real == 1 and result.not_scorable_virtual == 1
    assert np.array(result.confusion).sum() == 4
    # Bland-Altman, float64 numpy over the pairs scorable on both sides (0, 3, 4, 5)
    both = [0, 3, 4, 5]
    diff = np.array([h_virtual[i] for i in both], np.float64) - np.array([h_real[i] for i in both], np.float64)
    bias = diff.sum() / len(diff)
    sd = math.sqrt(((diff - bias) ** 2).sum() / (len(diff) - 1))
    assert result.h_score_bias == pytest.approx(bias, abs=1e-12)
    assert result.h_score_mae == pytest.approx(np.abs(diff).sum() / len(diff), abs=1e-12)
    assert result.h_score_sd == pytest.approx(sd, abs=1e-12)
    assert result.h_score_loa == pytest.approx((bias - 1.96 * sd, bias + 1.96 * sd), abs=1e-12)
    assert result.h_score_pairs == [(h_real[i], h_virtual[i]) for i in both]
    assert result.recall["3+"] == 1.0 and result.recall["1+"] == 0.0 and result.recall["2+"] == 1.0
    assert math.isnan(agreement.score_agreement(["0"], ["0"]).recall["3+"])


@pytest.fixture(scope="module")
def dab_pair():
    rng = np.random.default_rng(3)
    hed = np.zeros((48, 64, 3))
    hed[..., 0] = rng.uniform(0, 0.05, (48, 64))
    hed[..., 2] = rng.gamma(1.2, 0.03, (48, 64))
    real = np.round(hed_to_rgb(hed) * 255).astype(np.uint8)
    hed[..., 2] = np.clip(hed[..., 2] * 0.7 + rng.normal(0, 0.02, (48, 64)), 0, None)
    virtual = np.round(hed_to_rgb(hed) * 255).astype(np.uint8)
    real[:4, :4] = 255  # some glass, where rgb2hed's DAB goes negative and is clipped
    return real, virtual


def test_dab_measures_match_scipy_and_skimage(dab_pair):
    from scipy.stats import entropy, pearsonr
    from skimage.color import rgb2hed

    real, virtual = dab_pair
    measures = agreement.dab_measures(real, virtual)
    a = np.clip(rgb2hed(real)[..., 2] * 6, 0, None).ravel()
    b = np.clip(rgb2hed(virtual)[..., 2] * 6, 0, None).ravel()
    assert measures["dab_pearson_r"] == pytest.approx(pearsonr(a, b)[0], abs=1e-10)
    p = np.histogram(np.minimum(a, 2.5), bins=64, range=(0.0, 2.5))[0] + 1e-6
    q = np.histogram(np.minimum(b, 2.5), bins=64, range=(0.0, 2.5))[0] + 1e-6
    assert measures["dab_kl"] == pytest.approx(entropy(p, q), rel=1e-9)
    assert measures["dab_kl"] > 0
    assert measures["iod_real"] == pytest.approx(a.sum(), rel=1e-12)
    assert measures["iod_virtual"] == pytest.approx(b.sum(), rel=1e-12)
    assert measures["iod_rel_diff"] == pytest.approx((b.sum() - a.sum()) / a.sum(), rel=1e-12)


def test_dab_measures_edge_cases(dab_pair):
    real, _ = dab_pair
    same = agreement.dab_measures(real, real)
    assert same["dab_pearson_r"] == pytest.approx(1.0) and same["dab_kl"] == pytest.approx(0.0, abs=1e-12)
    white = np.full_like(real, 255)
    blank = agreement.dab_measures(white, real)
    assert math.isnan(blank["dab_pearson_r"]) and math.isnan(blank["iod_rel_diff"])
    with pytest.raises(ValueError, match="differ in size"):
        agreement.dab_measures(real, real[:10])


# ============================================================================ synthetic truth


@pytest.fixture(scope="module")
def synthetic_scores():
    """Two clean 512 px synthetic IHC tiles per HER2 score (seeds fixed up front), scored with the defaults."""
    from tdkstain.synth import render_pair

    truth, scored = [], []
    for her2 in range(4):
        for k in range(2):
            pair = render_pair(7000 + 10 * her2 + k, 512, her2)
            truth.append(SCORES[her2])
            scored.append(score_tile(pair.ihc).score)
    return truth, scored


def test_synthetic_tiles_get_their_score(synthetic_scores):
    truth, scored = synthetic_scores
    assert scored == truth
    result = agreement.score_agreement(truth, scored, resamples=200)
    assert result.scored == 8 and result.kappa >= 0.9


# ============================================================================ tdkstain score


@pytest.fixture(scope="module")
def tile_folder(tmp_path_factory) -> Path:
    """Two synthetic 256 px IHC tiles (2+ and 3+) in a folder."""
    from tdkstain.synth import render_pair

    folder = tmp_path_factory.mktemp("ihc")
    for her2, seed in ((2, 31), (3, 32)):
        Image.fromarray(render_pair(seed, 256, her2).ihc).save(folder / f"tile_{her2}.png")
    return folder


def _score_cli(*args: str) -> int:
    from tdkstain.cli import main

    return main(["score", *map(str, args), "--quiet"])


def _read_scores(out: Path) -> list[dict]:
    with open(out / "scores.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_cli_writes_every_output(tile_folder, tmp_path):
    out = tmp_path / "out"
    assert _score_cli(tile_folder, "--out", out) == 0
    rows = _read_scores(out)
    assert [Path(r["image"]).stem for r in rows] == ["tile_2", "tile_3"]
    document = json.loads((out / "scores.json").read_text())
    assert ScoringParams.from_dict(document["params"]) == ScoringParams()
    assert [t["score"] for t in document["tiles"]] == [r["score"] for r in rows]
    for stem in ("tile_2", "tile_3"):
        assert (out / "cells" / f"{stem}.csv").is_file()
        geo = json.loads((out / "geojson" / f"{stem}.geojson").read_text())
        assert geo["type"] == "FeatureCollection" and geo["features"]
        assert np.asarray(Image.open(out / "overlays" / f"{stem}.png")).shape == (256, 256, 3)
        with open(out / "cells" / f"{stem}.csv", newline="") as handle:
            assert len(list(csv.DictReader(handle))) == int(next(r for r in rows if stem in r["image"])["cells"])
    assert "tile_2" in (out / "index.html").read_text()


def test_cli_bad_thresholds_exit_2_naming_the_option(tile_folder, tmp_path, capsys):
    assert _score_cli(tile_folder, "--out", tmp_path / "o", "--thresholds", "0.4", "0.2", "0.6") == 2
    assert "--thresholds" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_out_that_is_a_file_is_a_clear_error(tile_folder, tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("mine")
    assert _score_cli(tile_folder, "--out", blocker) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "taken" in err and "file" in err
    assert blocker.read_text() == "mine"


def test_cli_tumour_rule_all_changes_tumour_counts(tile_folder, tmp_path):
    _score_cli(tile_folder, "--out", tmp_path / "epithelial")
    _score_cli(tile_folder, "--out", tmp_path / "all", "--tumour-rule", "all")
    default, everything = _read_scores(tmp_path / "epithelial"), _read_scores(tmp_path / "all")
    for d, e in zip(default, everything):
        assert d["cells"] == e["cells"]
        assert int(e["tumour_cells"]) == int(e["cells"])
        assert int(d["tumour_cells"]) < int(d["cells"])
    assert json.loads((tmp_path / "all" / "scores.json").read_text())["params"]["tumour_rule"] == "all"


def test_cli_skip_bad_lists_a_corrupt_png_and_exits_1(tile_folder, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in tile_folder.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 20)
    assert _score_cli(folder, "--out", tmp_path / "stopped") == 2
    assert "broken.png" in capsys.readouterr().err
    out = tmp_path / "skipped"
    assert _score_cli(folder, "--out", out, "--skip-bad") == 1
    assert "1 tile(s) skipped" in capsys.readouterr().out
    document = json.loads((out / "scores.json").read_text())
    assert len(document["skipped"]) == 1 and "broken.png" in document["skipped"][0]
    assert len(_read_scores(out)) == 2


def test_an_he_image_given_to_the_scorer_is_flagged_and_ihc_is_not(tmp_path):
    from conftest import DATA
    from tdkstain.data.images import read_rgb, write_png
    from tdkstain.scoring.run import score_images
    from tdkstain.scoring.tile import he_warning
    from tdkstain.synth import render_pair

    pair = render_pair(3, 256, her2=3)
    assert he_warning(pair.he) is not None and he_warning(pair.ihc) is None
    assert he_warning(read_rgb(DATA / "he_tiatoolbox_target.png")) is not None
    assert he_warning(read_rgb(DATA / "ihc_skimage_colon.png")) is None
    assert he_warning(np.full((64, 64, 3), 245, np.uint8)) is None  # glass: nothing to judge
    write_png(tmp_path / "he.png", pair.he)
    write_png(tmp_path / "ihc.png", pair.ihc)
    run = score_images([tmp_path / "he.png", tmp_path / "ihc.png"], tmp_path / "out", progress=False)
    assert len(run.warnings) == 1 and "he.png" in run.warnings[0] and "H&E" in run.warnings[0]
    document = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert document["warnings"] == run.warnings
