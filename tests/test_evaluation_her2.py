"""HER2 agreement in ``tdkstain evaluate``: real and generated IHC scored by ``tdkstain score``, then compared."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
from skimage import color

from tdkstain.cli import main
from tdkstain.data.images import read_rgb, write_png
from tdkstain.evaluation import EvaluationOptions, evaluate, remove_dab
from tdkstain.scoring import SCORES, CellParams, ScoringParams, score_tile
from tdkstain.synth import her2_label, render_pair

# Synthetic 320 px HER2-0 tiles hold ~11 tumour cells: a lower minimum keeps every tile scorable here.
SCORING = ScoringParams(cells=CellParams(mpp=0.5), min_cells=8)


@pytest.fixture(scope="module")
def her2_eval(tmp_path_factory):
    """8 real tiles (2 per HER2 score), an exact copy ("same") and a DAB-less generator ("nodab"), evaluated."""
    root = tmp_path_factory.mktemp("her2eval")
    for i in range(8):
        pair = render_pair(40 + i, 320, her2=i % 4)
        stem = f"t{i}_{her2_label(i % 4)}"
        write_png(root / "real" / f"{stem}.png", pair.ihc)
        write_png(root / "nodab" / f"{stem}.png", remove_dab(pair.ihc))
    shutil.copytree(root / "real", root / "same")
    metrics = evaluate(root / "real", {"same": root / "same", "nodab": root / "nodab"}, root / "out",
                       options=EvaluationOptions(fid=False, perceptual=False, grid_tiles=0, scoring=SCORING),
                       log=lambda m: None)
    return root, metrics


def _rows(root, method):
    return [r for r in csv.DictReader((root / "out" / "per_image.csv").open()) if r["method"] == method]


def test_identical_ihc_agrees_perfectly_and_the_confusion_is_the_real_scores(her2_eval):
    root, metrics = her2_eval
    same = metrics["methods"]["same"]["her2"]
    real_scores = [score_tile(read_rgb(p), SCORING).score for p in sorted((root / "real").glob("*.png"))]
    assert None not in real_scores
    assert same["scored"] == 8 and same["accuracy"] == 1.0 and same["kappa"] == pytest.approx(1.0)
    expected = np.diag([real_scores.count(s) for s in SCORES])
    assert np.array_equal(np.asarray(same["confusion"]), expected)
    assert same["h_score_mae"] == 0.0 and same["dab_pearson_r"]["mean"] == pytest.approx(1.0)
    assert same["dab_kl"]["mean"] == pytest.approx(0.0, abs=1e-12)


def test_a_generator_without_dab_scores_every_tile_0_kappa_0_and_h_score_bias_minus_the_real(her2_eval):
    root, metrics = her2_eval
    nodab = metrics["methods"]["nodab"]["her2"]
    rows = _rows(root, "nodab")
    generated = [r["her2_generated"] for r in rows]
    # Every scorable generated tile reads 0 (removing the DAB also lightens some nuclei: a tile may fall below
    # min_cells and be not scorable, an empty cell, which leaves it out of the agreement, never counted as 0).
    assert set(generated) <= {"0", ""} and generated.count("0") >= 6
    assert nodab["scored"] == generated.count("0") and nodab["not_scorable_virtual"] == generated.count("")
    # All virtual scores in one class: O equals E, so kappa is exactly 0 (not NaN: the real scores vary).
    assert nodab["kappa"] == pytest.approx(0.0, abs=1e-12)
    assert nodab["recall"]["3+"] == 0.0 and nodab["recall"]["0"] == 1.0
    scored = [r for r in rows if r["her2_real"] and r["her2_generated"]]
    real_h = np.array([float(r["h_score_real"]) for r in scored])
    fake_h = np.array([float(r["h_score_generated"]) for r in scored])
    assert nodab["h_score_bias"] == pytest.approx(float((fake_h - real_h).mean()), abs=1e-3)
    assert nodab["h_score_bias"] < -50  # the 2+/3+ tiles lose their stained membranes
    # The confusion matrix recounted from per_image.csv.
    recount = np.zeros((4, 4), int)
    for r in rows:
        if r["her2_real"] and r["her2_generated"]:
            recount[SCORES.index(r["her2_real"]), SCORES.index(r["her2_generated"])] += 1
    assert np.array_equal(recount, np.asarray(nodab["confusion"]))


def test_pixel_dab_measures_match_scikit_image(her2_eval):
    root, _ = her2_eval
    row = next(r for r in _rows(root, "nodab") if r["stem"].endswith("3+"))
    real = read_rgb(root / "real" / f"{row['stem']}.png")
    fake = read_rgb(root / "nodab" / f"{row['stem']}.png")
    a = np.clip(color.rgb2hed(real)[..., 2], 0, None) * 6
    b = np.clip(color.rgb2hed(fake)[..., 2], 0, None) * 6
    assert float(row["iod_real"]) == pytest.approx(a.sum(), rel=1e-5)
    assert float(row["iod_generated"]) == pytest.approx(b.sum(), rel=1e-5)
    assert float(row["iod_rel_diff"]) == pytest.approx((b.sum() - a.sum()) / a.sum(), rel=1e-4)
    assert float(row["dab_pearson_r"]) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1], abs=1e-5)


def test_definitions_labels_and_report_section(her2_eval):
    root, metrics = her2_eval
    for key in ("her2_kappa", "her2_kappa_ci95", "h_score_loa", "dab_pearson_r", "dab_kl", "iod_rel_diff"):
        assert metrics["definitions"][key]["definition"], key
    assert metrics["her2_scoring_params"]["min_cells"] == 8
    # The real IHC against the labels in the file names: the scorer's own reading, reported beside.
    real_vs_label = metrics["methods"]["same"]["her2"]["real_vs_label"]
    assert real_vs_label["pairs"] == 8 and real_vs_label["kappa"] >= 0.9
    html = (root / "out" / "index.html").read_text()
    assert "HER2 agreement" in html and "plots/her2_confusion.png" in html and "plots/her2_bland_altman.png" in html
    assert (root / "out" / "plots" / "her2_confusion.png").is_file()
    ci = metrics["methods"]["nodab"]["her2"]["kappa_ci95"]
    assert ci[0] <= metrics["methods"]["nodab"]["her2"]["kappa"] + 1e-12 <= ci[1] + 2e-12


def test_no_her2_leaves_the_section_out(her2_eval, tmp_path):
    root, _ = her2_eval
    out = tmp_path / "out"
    code = main(["evaluate", "--real", str(root / "real"), "--fake", str(root / "same"), "--out", str(out),
                 "--no-fid", "--no-perceptual", "--no-her2", "--grid-tiles", "0"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "her2" not in metrics["methods"]["same"] and "her2_kappa" not in metrics["definitions"]
    assert "her2_real" not in (out / "per_image.csv").read_text().splitlines()[0]
    assert "HER2 agreement" not in (out / "index.html").read_text()


def test_benchmark_table_shows_her2_columns_and_undefined_kappa_as_na():
    from types import SimpleNamespace

    from tdkstain.workflows.table1 import format_table, table_rows

    method = SimpleNamespace(name="tdkstain", cfg=SimpleNamespace(train=SimpleNamespace(max_steps=5)))
    metrics = {"tiles": 3, "methods": {"tdkstain": {"ssim": {"mean": 0.5}, "her2": {"kappa": 0.812, "accuracy": 0.75,
                                                                                   "h_score_mae": 12.5}}}}
    rows = table_rows(metrics, [method])
    assert rows[0]["HER2 kappa"] == 0.812 and rows[0]["H-score MAE"] == 12.5
    assert "| 0.812 |" in format_table(rows, metrics, 5)
    metrics["methods"]["tdkstain"]["her2"]["kappa"] = math.nan
    assert table_rows(metrics, [method])[0]["HER2 kappa"] is None


def test_the_command_lines_offer_exactly_the_scorers_tumour_rules():
    from tdkstain.cli.score import TUMOUR_RULES as CLI_RULES
    from tdkstain.scoring import TUMOUR_RULES

    assert CLI_RULES == TUMOUR_RULES


def test_confusion_titles_are_plain_text_with_an_undefined_kappa_as_na(tmp_path, monkeypatch):
    from tdkstain.evaluation import report

    seen = {}

    def capture(path, confusions, classes, xlabel, ylabel, titles=None):
        seen.update(titles)
        return path

    monkeypatch.setattr(report, "plot_confusions", capture)
    monkeypatch.setattr(report, "plot_bland_altman", lambda path, her2: path)
    her2 = {"confusion": np.zeros((4, 4)).tolist(), "h_score_pairs": []}
    metrics = {"methods": {"a": {"her2": {**her2, "kappa": 0.8214, "scored": 12}},
                           "b": {"her2": {**her2, "kappa": float("nan"), "scored": 0}}}}
    try:
        report._her2_section(tmp_path, metrics)
    except (KeyError, TypeError):
        pass  # the table after the figures may want more fields; the titles are made first
    assert seen == {"a": "a: kappa 0.821, 12 pairs", "b": "b: kappa n/a, 0 pairs"}
