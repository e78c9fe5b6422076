"""The comparison methods beyond training: every generator through ``tdkstain translate``, CycleGAN on
unpaired folders (disjoint stems) with bitwise resume, and baseline settings in the architecture check."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tdkstain.weights import load_generator_with_card, load_network
from tdkstain.cli import main
from tdkstain.training.config import load_config
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.data.images import read_rgb, write_png
from tdkstain.inference import Stainer, downsampling_factor, fit_tiling
from tdkstain.training import checkpoint_files, load_checkpoint
from tdkstain.training.config import check_same_architecture

TINY = [
    "model.ngf=4", "model.ndf=4", "data.crop=64", "data.batch=2", "data.val_pairs=0", "data.workers=0",
    "train.device=cpu", "train.threads=1", "train.deterministic=true", "train.tensorboard=false",
    "train.log_every=1", "train.checkpoint_every=2", "train.keep_last=4",
]
SHRINK = {
    "pix2pix": ["model.n_downsampling=6"],  # unet_64: sides must be multiples of 64
    "pyramidpix2pix": ["model.n_blocks=1"],  # batch norm + dropout ResNet, multiples of 4
    "cyclegan": ["model.n_blocks=1", "options.pool_size=3"],
}


@pytest.fixture(scope="module")
def paired(tmp_path_factory) -> Path:
    from tdkstain.synth import write_dataset

    root = tmp_path_factory.mktemp("paired") / "data"
    write_dataset(root, pairs=8, size=64, seed=0)  # 6 train, 2 test
    return root


def _train(method: str, data: Path, out: Path, steps: int, *extra: str) -> int:
    return main(["train", "--config", method, "--data", str(data), "--out", str(out), "--no-progress",
                 *TINY, *SHRINK[method], *extra, f"train.max_steps={steps}"])


def _direct(generator: torch.nn.Module, he: np.ndarray) -> np.ndarray:
    """The generator's own forward on a whole image (eval mode), [-1, 1] -> rounded uint8."""
    x = torch.from_numpy(he.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1)[None]
    with torch.no_grad():
        y = generator.eval()(x)
    return ((y[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


# ----------------------------------------------------------------------------- 1. translate any generator


@pytest.mark.parametrize("method", ["pix2pix", "pyramidpix2pix"])
def test_translate_runs_pix2pix_and_pyramidpix2pix_run_folders(method, paired, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(method, paired, run, 2) == 0
    generator, card = load_network(run / "weights" / "generator.safetensors")
    assert card["network"] == {"pix2pix": "UnetGenerator", "pyramidpix2pix": "Pix2pixResnetGenerator"}[method]
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in generator.modules())
    loaded, _ = load_generator_with_card(run)
    assert not loaded.training

    he = read_rgb(sorted((paired / "test_HE").glob("*.png"))[0])  # 64 x 64: one tile
    inputs = tmp_path / "he"
    write_png(inputs / "one.png", he)
    out = tmp_path / "out"
    assert main(["translate", "--checkpoint", str(run), str(inputs), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    assert card["network"] in capsys.readouterr().err
    # Batch norm uses its running statistics and dropout is off: exactly the eval-mode forward pass.
    assert np.array_equal(read_rgb(out / "one.png"), _direct(generator, he))


def test_batch_norm_generators_tile_and_blend_whatever_norm_says(paired, tmp_path):
    run = tmp_path / "run"
    assert _train("pyramidpix2pix", paired, run, 1) == 0
    he = np.concatenate([read_rgb(p) for p in sorted((paired / "train_HE").glob("*.png"))[:3]], axis=1)[:60, :180]
    write_png(tmp_path / "he" / "wide.png", he)
    outputs = {}
    for norm in ("global", "kernel", "tile"):
        out = tmp_path / norm
        assert main(["translate", "--checkpoint", str(run), str(tmp_path / "he"), "--out", str(out), "--device", "cpu",
                     "--tile", "64", "--overlap", "16", "--norm", norm, "--no-progress"]) == 0
        outputs[norm] = read_rgb(out / "wide.png")
    assert outputs["global"].shape == he.shape
    # No instance norm: nothing for --norm to change.
    assert np.array_equal(outputs["global"], outputs["tile"]) and np.array_equal(outputs["kernel"], outputs["tile"])
    stainer, _ = Stainer.from_checkpoint(run, device="cpu", tile=64, overlap=16)
    assert stainer.num_norm_layers == 0 and stainer.passes_for(60, 180) == len(stainer.grid(60, 180))
    # Tiling really happened: whole-image inference differs near the tile seams but agrees in general.
    whole = _direct(load_network(run / "weights" / "generator.safetensors")[0], np.pad(he, ((0, 4), (0, 0), (0, 0)), mode="reflect"))[:60]
    assert np.abs(whole.astype(int) - outputs["tile"].astype(int)).mean() < 8


def test_unet_tiles_are_aligned_to_its_depth(paired, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train("pix2pix", paired, run, 1) == 0
    generator, _ = load_network(run / "weights" / "generator.safetensors")
    assert downsampling_factor(generator) == 64
    assert fit_tiling(64, 16, 64) == (64, 0) and fit_tiling(100, 16, 64) == (128, 64) and fit_tiling(512, 64, 8) == (512, 64)
    he = read_rgb(sorted((paired / "train_HE").glob("*.png"))[0])
    big = np.concatenate([he, he[:, ::-1]], axis=1)[:50, :100]  # 50 x 100: padded to 64 x 128, two 64 px tiles
    write_png(tmp_path / "he" / "big.png", big)
    out = tmp_path / "out"
    assert main(["translate", "--checkpoint", str(run), str(tmp_path / "he"), "--out", str(out), "--device", "cpu",
                 "--tile", "48", "--overlap", "16", "--no-progress"]) == 0
    assert "multiples of 64: tile 64, overlap 0" in capsys.readouterr().err
    stained = read_rgb(out / "big.png")
    assert stained.shape == big.shape
    # Abutting tiles: each is the forward pass of its reflect-padded 64 px block.
    padded = np.pad(big, ((0, 14), (0, 28), (0, 0)), mode="reflect")
    assert np.array_equal(stained[:, :64], _direct(generator, padded[:, :64])[:50])
    assert np.array_equal(stained[:, 64:], _direct(generator, padded[:, 64:])[:50, :36])
    with pytest.raises(TdkstainError, match="multiple of 64"):
        Stainer(generator, device="cpu", tile=48, overlap=0)


# ----------------------------------------------------------------------------- 2. CycleGAN on unpaired folders


@pytest.fixture(scope="module")
def unpaired(paired, tmp_path_factory) -> Path:
    """MIST-style trainA/ + trainB/ whose stems never match (5 H&E, 4 IHC); testA/testB keep 2 pairs."""
    root = tmp_path_factory.mktemp("unpaired") / "data"
    he = sorted((paired / "train_HE").glob("*.png"))
    ihc = sorted((paired / "train_IHC").glob("*.png"))
    for i, path in enumerate(he[:5]):
        (root / "trainA").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / "trainA" / f"he_{i}.png")
    for i, path in enumerate(ihc[:4]):
        (root / "trainB").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / "trainB" / f"ihc_{chr(97 + i)}.png")
    for path in sorted((paired / "test_HE").glob("*.png"))[:2]:
        (root / "testA").mkdir(parents=True, exist_ok=True)
        (root / "testB").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / "testA" / path.name)
        shutil.copy(paired / "test_IHC" / path.name, root / "testB" / path.name)
    return root


def test_discover_unpaired_lists_each_side(unpaired, tmp_path):
    from tdkstain.data.pairs import discover_pairs, discover_unpaired

    he, ihc = discover_unpaired(unpaired, split="train")
    assert [p.name for p in he] == [f"he_{i}.png" for i in range(5)]
    assert [p.name for p in ihc] == ["ihc_a.png", "ihc_b.png", "ihc_c.png", "ihc_d.png"]
    with pytest.warns(UserWarning, match="options.unpaired=true"):
        assert discover_pairs(unpaired, split="train") == []
    with pytest.raises(TdkstainError, match="no split 'val'"):
        discover_unpaired(unpaired, split="val")
    (tmp_path / "train_HE").mkdir()
    write_png(tmp_path / "train_HE" / "a.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "train_IHC").mkdir()
    with pytest.raises(TdkstainError, match=r"train_IHC: no IHC images"):
        discover_unpaired(tmp_path, split="train")


def test_unpaired_tiles_draw_ihc_independently_and_reproducibly(unpaired):
    from tdkstain.data.tiles import UnpairedTiles, split_unpaired

    files, val = split_unpaired(unpaired, "train", "test", 8)
    assert len(files) == 5 and len(files.ihc) == 4 and [p.stem for p in val] == sorted(p.stem for p in (unpaired / "testA").iterdir())
    dataset = UnpairedTiles(files, 32, flip=True, seed=3)
    per_epoch = [[dataset.ihc_index(epoch, i) for i in range(5)] for epoch in range(6)]
    for indices in per_epoch:
        assert set(indices[:4]) == {0, 1, 2, 3}  # every IHC tile once per 4 H&E tiles
    assert len({tuple(p) for p in per_epoch}) > 1  # the partners change between epochs
    a, b = dataset[(2, 1)], UnpairedTiles(files, 32, flip=True, seed=3)[(2, 1)]
    assert set(a) == {"index", "he", "ihc"} and a["he"].shape == a["ihc"].shape == (3, 32, 32)
    assert torch.equal(a["he"], b["he"]) and torch.equal(a["ihc"], b["ihc"])
    # The IHC really is the file the permutation names (up to crop/flip): its pixels come from that file.
    source = read_rgb(files.ihc[dataset.ihc_index(2, 1)]).astype(np.float32) / 127.5 - 1
    crop = a["ihc"].permute(1, 2, 0).numpy()
    found = any(
        np.allclose(source[t : t + 32, l : l + 32], c, atol=1e-6)
        for t in range(33) for l in range(33) for c in (crop, crop[:, ::-1])
    )
    assert found


def test_cyclegan_trains_on_unpaired_folders_and_resumes_bitwise(unpaired, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    unpaired_flag = ["options.unpaired=true", "data.val_pairs=2", "train.val_every=2"]
    assert _train("cyclegan", unpaired, straight, 4, *unpaired_flag) == 0
    assert [p.name for p in checkpoint_files(straight)] == ["step_00000002.pt", "step_00000004.pt"]
    assert _train("cyclegan", unpaired, resumed, 2, *unpaired_flag) == 0
    assert _train("cyclegan", unpaired, resumed, 4, *unpaired_flag) == 0
    a, b = load_checkpoint(checkpoint_files(straight)[-1]), load_checkpoint(checkpoint_files(resumed)[-1])
    assert a["step"] == b["step"] == 4
    for name, state in a["networks"].items():
        for key, tensor in state.items():
            assert torch.equal(tensor, b["networks"][name][key]), f"{name}.{key} differs after resume"
    first = load_checkpoint(checkpoint_files(straight)[0])["networks"]["generator"]
    assert any(not torch.equal(first[k], v) for k, v in a["networks"]["generator"].items())
    # Validation ran on the paired test split.
    assert '"kind": "val"' in (straight / "metrics.jsonl").read_text()


def test_methods_that_need_pairs_refuse_unpaired_folders(unpaired, tmp_path, capsys):
    with pytest.warns(UserWarning):
        assert _train("pix2pix", unpaired, tmp_path / "a", 1) == 2
    assert "no 'train' pairs found" in capsys.readouterr().err
    assert _train("pix2pix", unpaired, tmp_path / "b", 1, "options.unpaired=true") == 2
    assert "options.unpaired: unknown key" in capsys.readouterr().err  # only CycleGAN has the setting


# ----------------------------------------------------------------------------- 3. architecture check


def test_resuming_with_other_baseline_network_settings_is_refused(paired, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train("pix2pix", paired, run, 1) == 0
    assert _train("pix2pix", paired, run, 2, "options.norm=instance") == 2
    err = capsys.readouterr().err
    assert "holds a different architecture" in err and "options.norm: batch there, instance here" in err
    assert _train("pix2pix", paired, run, 2, "loss.l1=50") == 0  # loss weights are not architecture

    cyclegan = load_config("cyclegan", ["options.pool_size=3"])
    check_same_architecture(cyclegan, load_config("cyclegan", ["options.pool_size=3", "options.cycle=5"]).to_dict(), "x")
    for change, message in (("options.pool_size=4", "options.pool_size: 4 there, 3 here"),
                            ("data.crop=128", "data.crop: 128 there, 1024 here"),
                            ("options.unpaired=true", "options.unpaired: True there, False here")):
        with pytest.raises(TdkstainError, match=message):
            check_same_architecture(cyclegan, load_config("cyclegan", ["options.pool_size=3", change]).to_dict(), "x")
    # TDKstain has no options: a baseline's setting is an error naming its key, not a silent no-op.
    with pytest.raises(TdkstainError, match="options.norm: unknown key"):
        load_config("tdkstain-paper", ["options.norm=batch"])
