"""Every comparison method and ablation through the CLI: trains, checkpoints, resumes bitwise, translates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tdkstain.workflows.table1 import translate_tiles
from tdkstain.weights import load_network
from tdkstain.cli import main
from tdkstain.data.images import read_rgb
from tdkstain.training import checkpoint_files, load_checkpoint

# pix2pixHD trains without its VGG term here (no ImageNet weights on test machines) and says so.
pytestmark = pytest.mark.filterwarnings("ignore:pix2pixHD. VGG19 weights")

TINY = [
    "model.ngf=4", "model.ndf=4", "model.nef=4", "model.estimator_blocks=1", "data.crop=64", "data.batch=2",
    "data.val_pairs=2", "data.workers=0", "train.device=cpu", "train.threads=1", "train.deterministic=true",
    "train.tensorboard=false", "train.log_every=1", "train.val_every=2", "train.checkpoint_every=2", "train.keep_last=4",
]
# Per method: what keeps the paper's structure but fits 64 px crops and a second of CPU.
SHRINK = {
    "pix2pix": ["model.n_downsampling=6"],
    "pyramidpix2pix": ["model.n_blocks=1"],
    "pix2pixhd": ["model.n_blocks=1", "model.n_downsampling=2"],
    "cyclegan": ["model.n_blocks=1", "options.pool_size=3"],
    "cyclegan-unpaired": ["model.n_blocks=1", "options.pool_size=3", "options.unpaired=true"],
    "asp": ["options.nce_patches=16", "options.nce_dim=8", "model.n_layers_d=3"],
    "tdkstain-no-nuclei": ["model.n_blocks=1", "model.num_d=2"],
    "tdkstain-no-membrane": ["model.n_blocks=1", "model.num_d=2"],
    "tdkstain-no-both": ["model.n_blocks=1", "model.num_d=2"],
}


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    from tdkstain.knowledge.extraction import extract_dataset
    from tdkstain.synth import write_dataset

    root = tmp_path_factory.mktemp("synth") / "data"
    write_dataset(root, pairs=8, size=64, seed=0)
    extract_dataset(root, progress=False, report=False)
    return root


def _train(variant: str, data: Path, out: Path, steps: int) -> int:
    preset = variant.removesuffix("-unpaired")
    return main(["train", "--config", preset, "--data", str(data), "--out", str(out), "--no-progress",
                 *TINY, *SHRINK[variant], f"train.max_steps={steps}"])


@pytest.mark.parametrize("preset", sorted(SHRINK))
def test_method_trains_checkpoints_resumes_exactly_and_translates(preset, synth_data, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _train(preset, synth_data, straight, 4) == 0
    assert [p.name for p in checkpoint_files(straight)] == ["step_00000002.pt", "step_00000004.pt"]
    assert _train(preset, synth_data, resumed, 2) == 0
    assert _train(preset, synth_data, resumed, 4) == 0  # resumes from step 2

    a = load_checkpoint(checkpoint_files(straight)[-1])
    b = load_checkpoint(checkpoint_files(resumed)[-1])
    assert a["step"] == b["step"] == 4
    assert set(a["networks"]) == set(b["networks"])
    for name, state in a["networks"].items():
        for key, tensor in state.items():
            assert torch.equal(tensor, b["networks"][name][key]), f"{preset}: {name}.{key} differs after resume"
    for name in a["optimizers"]:
        for pid, s in a["optimizers"][name]["state"].items():
            for key, value in s.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizers"][name]["state"][pid][key]))
    # Training moved the weights (a no-op step would also "resume exactly").
    first = load_checkpoint(checkpoint_files(straight)[0])["networks"]["generator"]
    assert any(not torch.equal(first[k], v) for k, v in a["networks"]["generator"].items())

    weights = resumed / "weights" / "generator.safetensors"
    generator, card = load_network(weights)
    method = {"tdkstain-no-membrane": "tdkstain", "tdkstain-no-nuclei": "tdkstain", "tdkstain-no-both": "tdkstain"}.get(preset, preset)
    assert card["config"]["method"] == load_checkpoint(checkpoint_files(resumed)[-1])["config"]["method"] == method.removesuffix("-unpaired")
    he_files = sorted((synth_data / "test_HE").glob("*.png"))
    written = translate_tiles(weights, he_files, tmp_path / "generated")
    assert [p.name for p in written] == [p.name for p in he_files]
    for he, out in zip(he_files, written):
        image = read_rgb(out)
        assert image.shape == read_rgb(he).shape and image.dtype == np.uint8
    # Translation is the generator's forward on the whole tile.
    x = torch.from_numpy(read_rgb(he_files[0]).transpose(2, 0, 1).astype(np.float32) / 127.5 - 1)[None]
    with torch.no_grad():
        direct = ((generator(x)[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(direct, read_rgb(written[0]))


def test_baselines_load_no_knowledge_maps(tmp_path):
    """Baselines train on plain pairs: no `tdkstain extract` needed."""
    from tdkstain.synth import write_dataset

    root = tmp_path / "plain"
    write_dataset(root, pairs=4, size=64, seed=1)
    assert _train("pix2pix", root, tmp_path / "run", 1) == 0
    assert (tmp_path / "run" / "weights" / "generator.safetensors").is_file()
