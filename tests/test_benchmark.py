"""``tdkstain benchmark``: every method trained, translated and evaluated together on synth data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from tdkstain.workflows.table1 import parse_method_list, split_overrides, translate_tile

# The paper's Table 1, in its order (baselines, ablations, TDKstain).
TABLE1 = ["cyclegan", "pix2pix", "pix2pixhd", "pyramidpix2pix", "asp",
          "tdkstain-no-both", "tdkstain-no-membrane", "tdkstain-no-nuclei", "tdkstain"]
from tdkstain.cli import main
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.data.images import read_rgb

# pix2pixHD trains without its VGG term here (no ImageNet weights on test machines) and says so.
pytestmark = pytest.mark.filterwarnings("ignore:pix2pixHD. VGG19 weights")

TINY = [
    "model.ngf=4", "model.ndf=4", "model.nef=4", "model.estimator_blocks=1", "model.n_blocks=1", "data.crop=64",
    "data.batch=2", "data.val_pairs=2", "data.workers=0", "train.device=cpu", "train.threads=1",
    "train.deterministic=true", "train.tensorboard=false", "train.checkpoint_every=1",
    "pix2pix:model.n_downsampling=6", "pix2pixhd:model.n_downsampling=2", "cyclegan:options.pool_size=2",
    "asp:options.nce_patches=16", "asp:options.nce_dim=8", "asp:model.n_layers_d=3",
] + [f"{m}:model.num_d=2" for m in TABLE1 if m.startswith("tdkstain")]


def test_method_list_and_overrides():
    assert [n for n, _ in parse_method_list("all")] == TABLE1
    assert parse_method_list("tdkstain, mine=my.yaml") == [("tdkstain", "tdkstain-paper"), ("mine", "my.yaml")]
    with pytest.raises(TdkstainError, match="unknown method"):
        parse_method_list("pix2pxi")
    with pytest.raises(TdkstainError, match="more than once"):
        parse_method_list("pix2pix,pix2pix")
    per = split_overrides(["data.crop=64", "pix2pix:model.n_downsampling=6"], ["pix2pix", "asp"])
    assert per == {"pix2pix": ["data.crop=64", "model.n_downsampling=6"], "asp": ["data.crop=64"]}
    assert split_overrides(["cyclegan:model.ngf=4"], ["pix2pix"]) == {"pix2pix": []}
    with pytest.raises(TdkstainError, match="not one of"):
        split_overrides(["cyclegam:model.ngf=4"], ["pix2pix"])


def test_translate_tile_pads_to_the_generator_multiple():
    from tdkstain.models.pix2pix import UnetGenerator

    torch.manual_seed(0)
    g = UnetGenerator(3, 3, num_downs=5, ngf=2, norm="instance", dropout=False).eval()
    he = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    out = translate_tile(g, he, torch.device("cpu"))
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    from tdkstain.knowledge.extraction import extract_dataset
    from tdkstain.synth import write_dataset

    root = tmp_path_factory.mktemp("bench") / "data"
    write_dataset(root, pairs=8, size=64, seed=0)
    extract_dataset(root, progress=False, report=False)
    return root


@pytest.mark.slow
def test_benchmark_end_to_end_and_resumable(synth_data, tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "bench"
    argv = ["benchmark", "--data", str(synth_data), "--methods", "all", "--out", str(out), "--steps", "2",
            "--no-fid", "--no-perceptual", "--no-progress", *TINY]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for name in ("CycleGAN", "pix2pix", "pix2pixHD", "PyramidPix2pix", "ASP", "TDKstain w/o nuclei", "TDKstain"):
        assert f"| {name} |" in printed

    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert list(metrics["methods"]) == TABLE1
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [r["method"] for r in rows] == TABLE1
    test_stems = sorted(p.stem for p in (synth_data / "test_IHC").glob("*.png"))
    assert metrics["tiles"] == len(test_stems) == 2
    for row in rows:
        method = row["method"]
        generated = sorted(p.stem for p in (out / "generated" / method).glob("*.png"))
        assert generated == test_stems
        # The table's SSIM is scikit-image's SSIM of the written images, averaged (recomputed here).
        ssim = np.mean([
            structural_similarity(read_rgb(synth_data / "test_IHC" / f"{s}.png"), read_rgb(out / "generated" / method / f"{s}.png"),
                                  channel_axis=-1, data_range=255)
            for s in test_stems
        ])
        assert float(row["SSIM"]) == pytest.approx(ssim, abs=1e-9)
        assert row["FID"] == ""  # switched off, never guessed
        assert (out / "runs" / method / "checkpoints" / "step_00000002.pt").is_file()
    assert read_rgb(out / "comparison.png").shape[1] > 11 * 50  # 11 columns: H&E, real, 9 methods
    assert any((out / "report" / "plots").glob("*.png"))

    # Rerun: every method is already finished, nothing is retrained or rewritten.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.pt")}
    assert main(argv) == 0
    assert "already finished" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.pt")} == stamps

    # Another config under the same name is refused, not silently mixed.
    changed = [a if a != "model.ngf=4" else "model.ngf=6" for a in argv]
    assert main(changed) == 2

    # A larger budget continues the finished training from its checkpoint (steps 2 -> 3), then re-translates.
    more = list(argv)
    more[more.index("--methods") + 1] = "pix2pix"
    more[more.index("--steps") + 1] = "3"
    assert main(more) == 0
    assert [p.name for p in sorted((out / "runs" / "pix2pix" / "checkpoints").glob("*.pt"))][-1] == "step_00000003.pt"
    assert json.loads((out / "generated" / "pix2pix" / ".done").read_text())["config"]["train"]["max_steps"] == 3
