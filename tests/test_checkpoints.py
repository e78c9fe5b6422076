"""Weights files: our safetensors + model card, and the authors' .pth imported without unpickling code."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tdkstain.weights import (
    find_generator_weights,
    load_generator,
    load_generator_with_card,
    load_network,
    load_official_generator,
    load_weights,
    save_network,
    save_weights,
)
from tdkstain.cli import import_checkpoint
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.models.tdkstain import MultiscaleDiscriminator, NucleiDensityEstimator, ResnetGenerator
from tdkstain.models.layers import init_weights
from conftest import OFFICIAL

OFFICIAL_G = OFFICIAL / "official_G_ngf8.pth"


class _CreatesAFile:
    """Unpickling this calls open(target, "w"): the classic pickle payload, harmless but visible."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def tiny_generator(**kwargs) -> ResnetGenerator:
    torch.manual_seed(0)
    return init_weights(ResnetGenerator(**{"ngf": 4, "n_blocks": 2, **kwargs}))


def run_import_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    import_checkpoint.add_arguments(parser)
    return import_checkpoint.run(parser.parse_args(argv))


def assert_matches_io_fixture(generator: ResnetGenerator) -> dict[str, float]:
    io = np.load(OFFICIAL / "official_G_ngf8_io.npz")
    with torch.no_grad():
        output, taps = generator.eval().forward_with_taps(torch.from_numpy(io["input"]))
    errors = {"output": float(np.abs(output.numpy() - io["output"]).max())}
    for k, tap in enumerate(taps):
        errors[f"feat{k + 1}"] = float(np.abs(tap.numpy() - io[f"feat{k + 1}"]).max())
    assert max(errors.values()) <= 1e-5, errors
    return errors


# --------------------------------------------------------------------------- the authors' checkpoint


def test_official_generator_loads_and_matches_fixture():
    generator = load_official_generator(OFFICIAL_G)
    assert generator.init_kwargs == dict(
        input_nc=3, output_nc=3, ngf=8, n_downsampling=3, n_blocks=9, padding_type="reflect"
    )
    assert not generator.training
    assert_matches_io_fixture(generator)


def test_import_cli_round_trip_matches_fixture(tmp_path, capsys):
    out = tmp_path / "weights" / "generator.safetensors"
    assert run_import_cli([str(OFFICIAL_G), "--out", str(out), "--mpp", "0.5", "--tile-size", "1024"]) == 0
    assert "ngf=8" in capsys.readouterr().out
    state_dict, card = load_weights(out)
    assert card["format"] == "tdkstain.weights/1" and card["network"] == "ResnetGenerator"
    assert card["kwargs"]["ngf"] == 8 and card["value_range"] == [-1, 1]
    assert card["tile_size"] == 1024 and card["mpp"] == 0.5
    assert len(card["source"]["sha256"]) == 64 and card["source"]["file"] == OFFICIAL_G.name
    # Same tensors as the .pth, bit for bit.
    original = torch.load(OFFICIAL_G, map_location="cpu", weights_only=True)
    assert state_dict.keys() == original.keys()
    assert all(torch.equal(state_dict[k], original[k]) for k in original)
    assert_matches_io_fixture(load_generator(out))
    # A run folder laid out as documented is found too.
    assert_matches_io_fixture(load_generator(tmp_path))
    # Refuses to overwrite without --force.
    with pytest.raises(TdkstainError, match="--force"):
        run_import_cli([str(OFFICIAL_G), "--out", str(out)])
    assert run_import_cli([str(OFFICIAL_G), "--out", str(out), "--force"]) == 0


def test_release_test_script_path_on_he_crop():
    """he_crop128.png through the release's test path: /255, normalise to [-1, 1], G, (y+1)/2*255, truncate."""
    generator = load_generator(OFFICIAL_G)
    he = np.array(Image.open(OFFICIAL / "he_crop128.png").convert("RGB"))
    # torchvision ToTensor + Normalize((0.5,)*3, (0.5,)*3), written out.
    x = (torch.from_numpy(he).permute(2, 0, 1).float().div(255.0) - 0.5) / 0.5
    with torch.no_grad():
        y = generator(x[None])[0]
    # util.tensor2im of the release: numpy float32, (y + 1) / 2 * 255, astype(uint8) truncates.
    ours = ((np.transpose(y.numpy(), (1, 2, 0)) + 1) / 2.0 * 255.0).astype(np.uint8)
    reference = np.asarray(Image.open(OFFICIAL / "official_G_ngf8_he_crop128_out.png").convert("RGB"))
    assert ours.shape == reference.shape == (128, 128, 3)
    difference = np.abs(ours.astype(int) - reference.astype(int))
    exact = float((difference == 0).mean())
    print(f"he_crop128: exact uint8 match rate {exact:.6f}, max difference {difference.max()}")
    # Truncation can flip a value sitting on an integer boundary by one with float noise; nothing more.
    assert difference.max() <= 1
    assert exact >= 0.999


def test_malicious_pickle_is_refused(tmp_path):
    target = tmp_path / "pwned"
    payload = {"model.1.weight": torch.zeros(8, 3, 7, 7), "hook": _CreatesAFile(target)}
    evil = tmp_path / "latest_net_G.pth"
    torch.save(payload, evil)
    # The payload is live: an unsafe load would run it (checked on a second copy with another target).
    probe_target = tmp_path / "probe"
    probe = tmp_path / "probe.pth"
    torch.save({"hook": _CreatesAFile(probe_target)}, probe)
    torch.load(probe, weights_only=False)
    assert probe_target.exists()

    with pytest.raises(TdkstainError, match="refused") as info:
        load_official_generator(evil)
    assert str(evil) in str(info.value) and "open" in str(info.value)
    with pytest.raises(TdkstainError, match="refused"):
        load_generator(evil)
    assert not target.exists()


def test_wrong_architecture_checkpoint_names_the_file(tmp_path):
    torch.manual_seed(0)
    discriminator_file = tmp_path / "latest_net_D.pth"
    torch.save(MultiscaleDiscriminator(ndf=4, num_D=2).state_dict(), discriminator_file)
    with pytest.raises(TdkstainError, match="discriminator") as info:
        load_official_generator(discriminator_file)
    assert str(discriminator_file) in str(info.value)

    estimator_file = tmp_path / "latest_net_E.pth"
    torch.save(NucleiDensityEstimator(input_nc=56, nef=4, n_blocks=1).state_dict(), estimator_file)
    with pytest.raises(TdkstainError, match="estimator"):
        load_official_generator(estimator_file)

    # A generator with an extra, foreign key: missing/unexpected keys are listed briefly.
    state_dict = torch.load(OFFICIAL_G, map_location="cpu", weights_only=True)
    state_dict["model.33.weight"] = torch.zeros(3)
    del state_dict["model.13.conv_block.5.bias"]
    broken = tmp_path / "broken_G.pth"
    torch.save(state_dict, broken)
    with pytest.raises(TdkstainError) as info:
        load_official_generator(broken)
    message = str(info.value)
    assert str(broken) in message and "model.33.weight" in message and "model.13.conv_block.5.bias" in message

    not_torch = tmp_path / "notes.pth"
    not_torch.write_text("not a checkpoint")
    with pytest.raises(TdkstainError, match="notes.pth"):
        load_official_generator(not_torch)
    with pytest.raises(TdkstainError, match="no such"):
        load_official_generator(tmp_path / "absent.pth")


def test_dataparallel_prefix_and_wrapped_state_dict(tmp_path):
    generator = tiny_generator(n_downsampling=2, output_nc=1, n_blocks=3)
    prefixed = {f"module._orig_mod.{k}": v for k, v in generator.state_dict().items()}
    torch.save({"generator": prefixed, "epoch": 3}, tmp_path / "g.pth")
    loaded = load_official_generator(tmp_path / "g.pth")
    assert loaded.init_kwargs == generator.init_kwargs
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), generator.eval()(x), rtol=0, atol=0)


# --------------------------------------------------------------------------- our format


def test_save_load_round_trip_with_card(tmp_path):
    generator = tiny_generator().to(memory_format=torch.channels_last)  # non-contiguous weights
    path = save_network(tmp_path / "g.safetensors", generator, tile_size=256, mpp=0.46, config={"loss": {"nuclei": 10.0}})
    state_dict, card = load_weights(path)
    assert card["format"] == "tdkstain.weights/1"  # the file format's name, fixed: older files carry it
    assert card["kwargs"] == generator.init_kwargs and card["config"] == {"loss": {"nuclei": 10.0}}
    assert card["tile_size"] == 256 and card["mpp"] == 0.46 and card["value_range"] == [-1, 1]
    for key, value in generator.state_dict().items():
        assert torch.equal(state_dict[key], value)
    loaded, card2 = load_generator_with_card(path)
    assert card2["tile_size"] == 256
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), generator.eval()(x.contiguous(memory_format=torch.channels_last)))
    # Raw metadata really is JSON strings (safetensors' str -> str).
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["kwargs"]) == generator.init_kwargs
    # Atomic: nothing but the final file in the folder.
    assert [p.name for p in tmp_path.iterdir()] == ["g.safetensors"]


def test_load_network_builds_discriminator_and_refuses_it_as_generator(tmp_path):
    torch.manual_seed(1)
    discriminator = init_weights(MultiscaleDiscriminator(ndf=4, num_D=2, padding=2))
    path = save_network(tmp_path / "d.safetensors", discriminator)
    loaded, card = load_network(path)
    assert isinstance(loaded, MultiscaleDiscriminator) and card["network"] == "MultiscaleDiscriminator"
    assert card["kwargs"]["padding"] == loaded.init_kwargs["padding"] == 2  # the padding travels with the weights
    pair = torch.rand(1, 6, 32, 32)
    with torch.no_grad():
        for a, b in zip(loaded(pair), discriminator(pair)):
            torch.testing.assert_close(a, b)
    with pytest.raises(TdkstainError, match="not a generator"):
        load_generator(path)


def test_plain_safetensors_without_card_infers_architecture(tmp_path):
    from safetensors.torch import save_file

    generator = tiny_generator(n_blocks=1)
    save_file({k: v.contiguous() for k, v in generator.state_dict().items()}, str(tmp_path / "plain.safetensors"))
    loaded, card = load_generator_with_card(tmp_path / "plain.safetensors")
    assert loaded.init_kwargs == generator.init_kwargs and card["tile_size"] is None


def test_bad_files_raise_clear_errors(tmp_path):
    garbage = tmp_path / "generator.safetensors"
    garbage.write_bytes(b"\x00" * 40)
    with pytest.raises(TdkstainError, match="safetensors") as info:
        load_weights(garbage)
    assert str(garbage) in str(info.value)
    with pytest.raises(TdkstainError, match="no generator weights found"):
        find_generator_weights(tmp_path / "empty_run")
    # Card that disagrees with the tensors: named file, shapes listed.
    generator = tiny_generator()
    card = {"network": "ResnetGenerator", "kwargs": {**generator.init_kwargs, "ngf": 8}}
    save_weights(tmp_path / "lying.safetensors", generator.state_dict(), card)
    with pytest.raises(TdkstainError, match="wrong shapes") as info:
        load_generator(tmp_path / "lying.safetensors")
    assert "lying.safetensors" in str(info.value)
    with pytest.raises(TdkstainError, match="JSON"):
        save_weights(tmp_path / "x.safetensors", generator.state_dict(), {"bad": object()})
    assert not (tmp_path / "x.safetensors").exists()


def test_find_generator_weights_order(tmp_path):
    generator = tiny_generator(n_blocks=1)
    torch.save(generator.state_dict(), tmp_path / "latest_net_G.pth")
    assert find_generator_weights(tmp_path) == tmp_path / "latest_net_G.pth"
    save_network(tmp_path / "weights" / "generator_best.safetensors", generator)
    assert find_generator_weights(tmp_path) == tmp_path / "weights" / "generator_best.safetensors"
    # The trainer's latest weights win over best (pass the file to get best).
    save_network(tmp_path / "weights" / "generator.safetensors", generator)
    assert find_generator_weights(tmp_path) == tmp_path / "weights" / "generator.safetensors"


def test_generator_from_training_checkpoint_layout(tmp_path):
    # tdkstain.training checkpoints keep the generator under networks.generator, tensors and builtins only.
    generator = tiny_generator(n_blocks=1)
    payload = {"format": "x", "step": 5, "networks": {"generator": generator.state_dict(), "estimator": {}}}
    torch.save(payload, tmp_path / "step_00000005.pt")
    loaded = load_generator(tmp_path / "step_00000005.pt")
    assert loaded.init_kwargs == generator.init_kwargs
