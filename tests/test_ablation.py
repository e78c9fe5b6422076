"""The ablation study on known truth: per-tile measures (evaluation.truth), statistics, and the study end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats
from skimage.color import hed2rgb, rgb2hed

from tdkstain.cli import main
from tdkstain.evaluation.truth import (
    TruthParams,
    TruthTile,
    check_truth_dataset,
    measures_from_json,
    read_truth,
    truth_measures,
)
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.evaluation import truth
from tdkstain.workflows import ablation

SIZE = 64


# ----------------------------------------------------------------------------- hand-made truth


def _tile(dab: np.ndarray, hematoxylin: float = 0.03) -> np.ndarray:
    """A 64 px IHC tile drawn with scikit-image's stain vectors: glass in the left 16 columns, pale
    counterstained tissue elsewhere, ``dab`` (rgb2hed units) on top."""
    h = np.full((SIZE, SIZE), hematoxylin)
    h[:, :16] = 0.0
    hed = np.stack([h, np.zeros_like(h), dab], axis=-1)
    return np.clip(np.round(hed2rgb(hed) * 255), 0, 255).astype(np.uint8)


def _ring() -> np.ndarray:
    ring = np.zeros((SIZE, SIZE), bool)
    ring[24:42, 30:48] = True
    ring[26:40, 32:46] = False  # a 2 px square membrane
    return ring


def _write_truth(folder: Path, stem: str, membrane: np.ndarray, **changes) -> Path:
    record = {"stem": stem, "her2": "3+", "her2_score": 3, "mpp": 0.5, "size": SIZE, "misregister": 0.0,
              "nuclei": [{"x": 20.0, "y": 10.0, "type": "tumour", "he_x": 20.0, "he_y": 10.0}]}
    record.update(changes)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(record))
    Image.fromarray((membrane * 255).astype(np.uint8)).save(folder / f"{stem}_membrane.png")
    return folder / f"{stem}.json"


def _decadic_dab(rgb: np.ndarray) -> np.ndarray:
    return rgb2hed(rgb)[..., 2] * 6.0  # skimage directly, independent of tdkstain.knowledge.stain


def test_truth_measures_on_a_hand_made_tile(tmp_path):
    ring = _ring()
    _write_truth(tmp_path, "hand_3+", ring)
    truth = read_truth(tmp_path, "hand_3+")
    assert truth.her2 == "3+" and truth.membrane.sum() == ring.sum()
    np.testing.assert_array_equal(truth.he_nuclei, [[10.0, 20.0]])
    params = TruthParams()
    assert params.stained_od == 0.2  # the scorer's weak threshold (CellParams().thresholds[0])
    real = _tile(np.where(ring, 0.1, 0.0))  # 0.6 OD on the membrane

    same = truth_measures(real, real, truth, params)
    assert same["dab_abs_error"] == 0.0 and same["dab_signed_error"] == 0.0
    assert same["membrane_iou"] == 1.0 and same["membrane_intersection"] == same["membrane_union"] == ring.sum()
    assert same["ssim"] == 1.0 and same["psnr"] == math.inf
    assert same["membrane_pixels"] == ring.sum() and same["nuclei_true"] == 1

    # Without DAB: nothing stained, and the error is the real DAB inside the membranes.
    bare = _tile(np.zeros((SIZE, SIZE)))
    none = truth_measures(bare, real, truth, params)
    assert none["membrane_iou"] == 0.0 and none["membrane_intersection"] == 0 and none["membrane_union"] == ring.sum()
    real_dab = _decadic_dab(real)[ring]
    expected = np.abs(np.maximum(_decadic_dab(bare), 0)[ring] - real_dab).mean()
    assert none["dab_abs_error"] == pytest.approx(expected, rel=1e-12)
    assert none["dab_abs_error"] == pytest.approx(real_dab.mean(), abs=2e-3)
    assert none["dab_signed_error"] == pytest.approx(-none["dab_abs_error"], rel=1e-12)

    # Half of the ring stained: IoU = stained half / ring, pixel-exact.
    half = ring & (np.arange(SIZE)[None, :] < 39)
    part = truth_measures(_tile(np.where(half, 0.1, 0.0)), real, truth, params)
    assert part["membrane_intersection"] == half.sum() and part["membrane_union"] == ring.sum()
    assert part["membrane_iou"] == pytest.approx(half.sum() / ring.sum(), rel=1e-12)
    assert part["dab_signed_error"] < 0


def test_membrane_reach_admits_the_optical_spread_of_the_real_stain(tmp_path):
    from scipy import ndimage

    ring = _ring()
    halo = ndimage.binary_dilation(ring) & ~ring  # 1 px on both sides of the membrane
    _write_truth(tmp_path, "halo_3+", ring)
    truth = read_truth(tmp_path, "halo_3+")
    real = _tile(np.where(ring, 0.1, np.where(halo, 0.05, 0.0)))  # a 0.3 OD tail beside the true membrane
    stained = _decadic_dab(real) >= 0.2
    outside = int((stained & ~ring).sum())
    assert outside > 0
    assert truth_measures(real, real, truth, TruthParams())["membrane_iou"] == 1.0  # within the 3 px reach
    exact = truth_measures(real, real, truth, TruthParams(membrane_reach_px=0))
    assert exact["membrane_union"] == stained.sum()
    assert exact["membrane_iou"] == pytest.approx(ring.sum() / stained.sum(), rel=1e-12)


def test_nuclei_and_her2_against_synthetic_truth():
    from tdkstain.knowledge.nuclei import NucleiParams, detect_nuclei, match_centroids
    from tdkstain.scoring import score_tile
    from tdkstain.synth import render_pair

    pair = render_pair(11, 256, 3, misregister=0.0)
    truth = TruthTile(stem="s_3+", path=Path("s_3+.json"), her2="3+", size=256, mpp=pair.mpp, misregister=0.0,
                      nuclei=pair.nuclei, he_nuclei=pair.he_nuclei, cell_types=tuple(pair.cell_types),
                      membrane=pair.membrane_mask)
    m = truth_measures(pair.ihc, pair.ihc, truth, TruthParams())
    assert m["nuclei_f1"] >= 0.9  # the real IHC as generated: F1 1 within the detector's accuracy (0.97)
    found = detect_nuclei(pair.ihc, NucleiParams())
    assert m["nuclei_f1"] == match_centroids(found, pair.he_nuclei, radius=6.0).f1
    assert m["nuclei_count_error"] == len(found) - len(pair.he_nuclei)
    assert m["membrane_iou"] >= 0.95 and m["dab_abs_error"] == 0.0
    real = score_tile(pair.ihc).result
    assert m["her2_generated"] == m["her2_real"] == real.score == "3+"
    assert m["h_score_generated"] == real.h_score


def test_truth_files_are_checked(tmp_path):
    ring = _ring()
    cases = [
        ({"her2": "4+"}, "not a HER2 score"),
        ({"nuclei": [{"x": 70.0, "y": 1.0, "type": "tumour", "he_x": 1.0, "he_y": 1.0}]}, "outside the 64 x 64"),
        ({"nuclei": [{"x": 1.0, "y": 1.0}]}, "nucleus 0 is not"),
        ({"size": 32}, "describe|says the tile is 32"),
        ({"misregister": -1}, "misregister"),
    ]
    for i, (change, message) in enumerate(cases):
        path = _write_truth(tmp_path, f"bad{i}", ring, **change)
        with pytest.raises(TdkstainError, match=message) as err:
            read_truth(tmp_path, f"bad{i}")
        assert path.name in str(err.value)
    with pytest.raises(TdkstainError, match="missing"):
        read_truth(tmp_path, "absent")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(TdkstainError, match="broken.json"):
        read_truth(tmp_path, "broken")


def test_misregistered_data_are_refused(tmp_path, monkeypatch):
    from tdkstain.synth import write_dataset

    root = tmp_path / "warped"
    write_dataset(root, pairs=4, size=32, seed=0, misregister=3.0)
    with pytest.raises(TdkstainError, match="--misregister 0"):
        check_truth_dataset(root)
    truth = read_truth(root / "test_truth", sorted(p.stem for p in (root / "test_IHC").iterdir())[0])
    tile = np.full((32, 32, 3), 200, np.uint8)
    with pytest.raises(TdkstainError, match="misregister 3"):
        truth_measures(tile, tile, truth, TruthParams())
    # The study refuses it before training anything.
    monkeypatch.setattr("tdkstain.training.train", lambda *a, **k: pytest.fail("trained on misregistered data"))
    assert main(["benchmark", "--study", "ablation", "--data", str(root), "--out", str(tmp_path / "study")]) == 2
    assert not (tmp_path / "study" / "ablation.json").exists()  # nothing recorded: the same --out takes other data


# ----------------------------------------------------------------------------- statistics


def test_t_interval_matches_scipy():
    values = [0.31, 0.27, 0.35, 0.29]
    got = ablation.t_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert got["mean"] == pytest.approx(np.mean(values)) and got["n"] == 4
    assert (got["low"], got["high"]) == pytest.approx((low, high), rel=1e-12)
    assert ablation.t_interval([0.3, math.nan, 0.5]) == ablation.t_interval([0.3, 0.5])
    one = ablation.t_interval([0.3])
    assert one["mean"] == 0.3 and math.isnan(one["low"]) and math.isnan(one["high"])


def test_paired_difference_matches_scipy():
    variant = {0: 0.50, 1: 0.61, 2: 0.55, 3: math.nan}
    reference = {0: 0.40, 1: 0.52, 2: 0.50, 3: 0.30}
    got = ablation.paired_difference(variant, reference)
    a, b = np.array([0.50, 0.61, 0.55]), np.array([0.40, 0.52, 0.50])
    d = a - b
    assert got["seeds"] == [0, 1, 2]
    assert got["mean"] == pytest.approx(d.mean(), rel=1e-12)
    low, high = stats.t.interval(0.95, 2, loc=d.mean(), scale=stats.sem(d))
    assert (got["low"], got["high"]) == pytest.approx((low, high), rel=1e-12)
    assert got["p_ttest"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
    assert math.isnan(ablation.paired_difference({0: 1.0}, {0: 0.5})["p_ttest"])


def test_wilcoxon_over_tiles_matches_scipy():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.5, 0.1, 20), rng.normal(0.45, 0.1, 20)
    a[4] = math.nan
    got = ablation.wilcoxon_tiles({f"t{i}": v for i, v in enumerate(a)}, {f"t{i}": v for i, v in enumerate(b)})
    keep = np.isfinite(a)
    assert got["n_tiles"] == 19
    assert got["p"] == pytest.approx(stats.wilcoxon(a[keep], b[keep]).pvalue, rel=1e-12)
    assert got["median"] == pytest.approx(np.median(a[keep] - b[keep]))
    assert math.isnan(ablation.wilcoxon_tiles({"t": 1.0, "u": 2.0}, {"t": 1.0, "u": 2.0})["p"])


def test_holm():
    adjusted = ablation.holm([0.01, 0.04, math.nan, 0.03])
    assert adjusted[0] == pytest.approx(0.03) and adjusted[1] == pytest.approx(0.06) and adjusted[3] == pytest.approx(0.06)
    assert math.isnan(adjusted[2])
    assert ablation.holm([0.6, 0.9]) == [1.0, 1.0]


def _row(stem, her2, generated, real, dab, inter, union, count_error, f1):
    return {"stem": stem, "her2": her2, "her2_generated": generated, "her2_real": real, "dab_abs_error": dab,
            "dab_signed_error": -dab if math.isfinite(dab) else dab, "membrane_intersection": inter,
            "membrane_union": union, "membrane_iou": inter / union if union else math.nan,
            "nuclei_count_error": count_error, "nuclei_f1": f1, "nuclei_precision": f1, "nuclei_recall": f1,
            "ssim": 0.5, "psnr": 20.0}


def test_run_values_pool_iou_and_score_kappa():
    metrics = pytest.importorskip("sklearn.metrics")
    rows = [_row("a", "0", "0", "0", math.nan, 0, 0, 2, 0.9), _row("b", "1+", "2+", "1+", 0.2, 5, 20, -1, 0.8),
            _row("c", "2+", "2+", None, 0.3, 30, 40, 0, 1.0), _row("d", "3+", None, "3+", 0.5, 10, 10, -3, 0.7),
            _row("e", "3+", "3+", "3+", 0.4, 8, 16, 1, 0.6)]
    got = truth.run_values(rows)
    v = got["values"]
    assert v["membrane_iou"] == pytest.approx(53 / 86)  # pooled, not the mean of per-tile IoUs
    assert v["dab_abs_error"] == pytest.approx(np.mean([0.2, 0.3, 0.5, 0.4]))
    assert v["nuclei_count_error"] == pytest.approx(-0.2) and v["nuclei_count_abs_error"] == pytest.approx(1.4)
    scores = ["0", "1+", "2+", "3+"]
    truth_pairs = [(r["her2"], r["her2_generated"]) for r in rows if r["her2_generated"]]
    expected = metrics.cohen_kappa_score([t for t, _ in truth_pairs], [g for _, g in truth_pairs], labels=scores,
                                         weights="quadratic")
    assert v["her2_kappa_truth"] == pytest.approx(expected) and got["her2_scored_vs_truth"] == 4
    assert got["her2_scored_vs_real"] == 3
    assert got["by_her2"]["3+"]["membrane_iou"] == pytest.approx(18 / 26)
    assert math.isnan(got["by_her2"]["0"]["dab_abs_error"]) and math.isnan(got["by_her2"]["0"]["membrane_iou"])


def test_settings_are_checked(tmp_path):
    with pytest.raises(TdkstainError, match="must include tdkstain"):
        ablation.StudySettings(tmp_path, variants=("tdkstain-no-both",))
    with pytest.raises(TdkstainError, match="unknown"):
        ablation.StudySettings(tmp_path, variants=("tdkstain", "pix2pix"))
    with pytest.raises(TdkstainError, match="every variant alike"):
        ablation.StudySettings(tmp_path, overrides=("tdkstain:loss.l1=5",))
    with pytest.raises(TdkstainError, match="not a non-negative integer"):
        ablation.parse_seeds("0,x")
    assert main(["benchmark", "--out", str(tmp_path), "--seeds", "0"]) == 2  # a study option without --study
    assert main(["benchmark", "--study", "ablation", "--out", str(tmp_path), "--methods", "all"]) == 2
    # Seeds and variants may grow in an existing study; nothing else may change.
    ablation.StudyRecord(ablation.StudySettings(tmp_path, seeds=(0,), variants=("tdkstain",)))
    grown = ablation.StudyRecord(ablation.StudySettings(tmp_path, seeds=(0, 1, 2)))
    assert grown.data["seeds"] == [0, 1, 2] and grown.data["variants"] == list(ablation.VARIANTS)
    with pytest.raises(TdkstainError, match="other settings .*steps: 900 -> 600"):
        ablation.StudyRecord(ablation.StudySettings(tmp_path, steps=600))


# ----------------------------------------------------------------------------- the study end to end

TINY = ["model.ngf=4", "model.ndf=4", "model.nef=4", "model.estimator_blocks=1", "model.n_blocks=1", "data.crop=64",
        "data.val_pairs=2", "train.checkpoint_every=1", "train.tensorboard=false"]


def test_study_end_to_end_resumes_and_refuses_other_settings(tmp_path, monkeypatch, capsys):
    import tdkstain.training
    from tdkstain.training.config import read_run_config

    monkeypatch.setattr(ablation, "DATA_PAIRS", 8)
    monkeypatch.setattr(ablation, "DATA_SIZE", 64)
    out = tmp_path / "study"
    argv = ["benchmark", "--study", "ablation", "--out", str(out), "--seeds", "0,1", "--variants",
            "tdkstain,tdkstain-no-both", "--steps", "2", "--no-progress", *TINY]

    # Interrupted while training the second run, after its first step.
    real_train = tdkstain.training.train
    calls = []

    def interrupted(cfg, run_dir, **kwargs):
        calls.append(Path(run_dir).name)
        if len(calls) == 2:
            real_train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 1})}), run_dir, **kwargs)
            raise KeyboardInterrupt
        return real_train(cfg, run_dir, **kwargs)

    monkeypatch.setattr(tdkstain.training, "train", interrupted)
    assert main(argv) != 0
    assert calls == ["tdkstain_seed0", "tdkstain_seed1"]
    monkeypatch.setattr(tdkstain.training, "train", real_train)
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "data: synth done in an earlier run" in printed.err
    assert "[1/4] tdkstain seed 0: already finished" in printed.err
    assert "[2/4] tdkstain seed 1: training (demo-cpu with the loss weights of tdkstain-paper, resumed at step 1)" in printed.err
    assert "left for 2 runs" in printed.err and "| Measure | TDKstain |" in printed.out

    # Every variant is the base preset with its own loss weights and seed.
    no_both = read_run_config(out / "runs" / "tdkstain-no-both_seed1" / "config.yaml")
    full = read_run_config(out / "runs" / "tdkstain_seed0" / "config.yaml")
    assert (no_both.loss.membrane, no_both.loss.nuclei, no_both.loss.estimator, no_both.loss.l1) == (0, 0, 0, 10)
    assert (full.loss.membrane, full.loss.nuclei) == (10, 10) and (no_both.train.seed, full.train.seed) == (1, 0)
    assert no_both.model.ngf == full.model.ngf == 4 and no_both.schedule == full.schedule

    study = json.loads((out / "study.json").read_text())
    assert set(study["variants"]) == {"tdkstain", "tdkstain-no-both"} and study["settings"]["test_tiles"] == 2
    keys = [m.key for m in truth.METRICS]
    for variant in study["variants"].values():
        assert set(variant["metrics"]) == set(keys)
    assert set(study["differences"]["tdkstain-no-both"]) == set(keys)
    assert set(study["runs"]) == {"tdkstain_seed0", "tdkstain_seed1", "tdkstain-no-both_seed0", "tdkstain-no-both_seed1"}
    assert all(r["train_seconds"] > 0 for r in study["runs"].values())
    # The report's numbers follow from the cached per-tile measures.
    rows = {name: [measures_from_json(r) for r in json.loads((out / "measures" / f"{name}.json").read_text())["tiles"]]
            for name in study["runs"]}
    ssim = {name: np.mean([r["ssim"] for r in tiles]) for name, tiles in rows.items()}
    entry = study["variants"]["tdkstain"]["metrics"]["ssim"]
    assert entry["mean"] == pytest.approx((ssim["tdkstain_seed0"] + ssim["tdkstain_seed1"]) / 2, rel=1e-12)
    a = np.array([ssim["tdkstain-no-both_seed0"], ssim["tdkstain-no-both_seed1"]])
    b = np.array([ssim["tdkstain_seed0"], ssim["tdkstain_seed1"]])
    assert study["differences"]["tdkstain-no-both"]["ssim"]["p_ttest"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    table = list(csv.DictReader((out / "table.csv").open()))
    assert {(r["variant"], r["measure"]) for r in table} == {(v, k) for v in study["variants"] for k in keys}
    page = (out / "index.html").read_text()
    for m in truth.METRICS:
        assert m.label in page
    assert "paired t-test over seeds" in page and "tdkstain benchmark --study ablation" in page
    for figure in ("fig3_truth", "differences", "examples"):
        assert (out / "figures" / f"{figure}.png").stat().st_size > 1000 and f"figures/{figure}.png" in page

    # A rerun trains and measures nothing again.
    monkeypatch.setattr(tdkstain.training, "train", lambda *a, **k: pytest.fail("retrained a finished run"))
    monkeypatch.setattr("tdkstain.evaluation.truth.truth_measures", lambda *a, **k: pytest.fail("measured again"))
    assert main(argv) == 0
    assert capsys.readouterr().err.count("measures cached") == 4

    # Other settings in the same folder are refused.
    changed = list(argv)
    changed[changed.index("--steps") + 1] = "3"
    assert main(changed) == 2
    assert "other settings (steps: 2 -> 3)" in capsys.readouterr().err


@pytest.mark.slow
def test_parallel_runs_train_as_the_sequential_study(tmp_path, monkeypatch, capsys):
    """--jobs 2 trains each run in its own process; the generated tiles are those of one process, bit for bit."""
    monkeypatch.setattr(ablation, "DATA_PAIRS", 8)
    monkeypatch.setattr(ablation, "DATA_SIZE", 64)
    common = ["--seeds", "0", "--variants", "tdkstain,tdkstain-no-both", "--steps", "2", "--no-progress", *TINY]
    one = tmp_path / "one"
    assert main(["benchmark", "--study", "ablation", "--out", str(one), *common]) == 0
    two = tmp_path / "two"
    assert main(["benchmark", "--study", "ablation", "--out", str(two), "--data", str(one / "data"), "--jobs", "2",
                 *common]) == 0
    assert "training 2 runs, 2 at a time" in capsys.readouterr().err
    for run in ("tdkstain_seed0", "tdkstain-no-both_seed0"):
        tiles = sorted((one / "generated" / run).glob("*.png"))
        assert len(tiles) == 2
        for tile in tiles:
            assert tile.read_bytes() == (two / "generated" / run / tile.name).read_bytes(), (run, tile.name)
    assert json.loads((two / "ablation.json").read_text())["runs"]["tdkstain_seed0"]["train_seconds"] > 0
    with pytest.raises(TdkstainError, match="--jobs"):
        ablation.StudySettings(tmp_path, jobs=0)
    assert main(["benchmark", "--data", str(one / "data"), "--out", str(tmp_path / "t1"), "--jobs", "2"]) == 2


def test_a_study_of_tdkstain_alone_says_there_is_nothing_to_compare():
    metrics = {m.key: {"mean": 0.5, "low": 0.25, "high": 0.75} for m in truth.METRICS}
    study = {"settings": {"seeds": [0], "variants": ["tdkstain"], "steps": 9, "test_tiles": 4},
             "variants": {"tdkstain": {"name": "TDKstain", "metrics": metrics}}, "differences": {}}
    table = ablation.format_table(study)
    assert table.rstrip().endswith("Only TDKstain was trained: no ablation to compare with it (--variants).")
    assert "## Differences" not in table and "| SSIM ↑ | 0.5000 [0.2500, 0.7500] |" in table
