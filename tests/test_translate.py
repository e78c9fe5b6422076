"""``tdkstain translate``: checkpoints of every kind, names kept, skip / force, bad inputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tdkstain.weights import load_generator, save_network
from tdkstain.cli import main
from tdkstain.data.images import read_rgb, write_png
from tdkstain.inference import Stainer


@pytest.fixture(scope="module")
def official_pth(fixtures_dir) -> Path:
    return fixtures_dir / "official" / "official_G_ngf8.pth"


@pytest.fixture()
def inputs(tmp_path, fixtures_dir) -> Path:
    folder = tmp_path / "he"
    he = read_rgb(fixtures_dir / "data" / "he_tiatoolbox_target.png")
    write_png(folder / "small.png", he[:64, :80])
    write_png(folder / "wide.png", he[100:172, 0:200])  # larger than --tile 64: tiled
    return folder


def translate(*args: str | os.PathLike) -> int:
    return main(["translate", *map(str, args)])


def test_names_kept_and_outputs_equal_the_engine(tmp_path, inputs, official_pth):
    out = tmp_path / "out"
    assert translate("--checkpoint", official_pth, inputs, "--out", out, "--tile", "64", "--overlap", "16", "--device", "cpu",
                     "--compile", "off") == 0
    assert sorted(p.name for p in out.iterdir()) == ["small.png", "wide.png"]
    stainer = Stainer(load_generator(official_pth), device="cpu", tile=64, overlap=16)
    for name in ("small.png", "wide.png"):
        he = read_rgb(inputs / name)
        written = read_rgb(out / name)
        assert written.shape == he.shape
        assert np.array_equal(written, stainer.stain_image(he))


def test_compile_auto_compiles_big_cpu_jobs_only(tmp_path, inputs, official_pth, capsys):
    """--compile auto: a job of >= 16 tile passes on the CPU is compiled; its output differs from eager by rounding only."""
    small = ["--checkpoint", official_pth, inputs / "small.png", "--device", "cpu"]
    assert translate(*small, "--out", tmp_path / "one") == 0
    assert "compiling the generator" not in capsys.readouterr().err  # one pass: eager
    assert translate("--checkpoint", official_pth, inputs, "--out", tmp_path / "many", "--tile", "64", "--overlap", "16",
                     "--device", "cpu") == 0
    assert "compiling the generator" in capsys.readouterr().err
    stainer = Stainer(load_generator(official_pth), device="cpu", tile=64, overlap=16)
    for name in ("small.png", "wide.png"):
        eager = stainer.stain_image(read_rgb(inputs / name)).astype(int)
        compiled = read_rgb(tmp_path / "many" / name).astype(int)
        assert np.abs(compiled - eager).max() <= 1  # float32 summation order, rounded to uint8
        assert np.mean(compiled != eager) < 0.01


def test_existing_outputs_are_skipped_unless_force(tmp_path, inputs, official_pth, capsys):
    out = tmp_path / "out"
    args = ["--checkpoint", official_pth, inputs / "small.png", "--out", out, "--device", "cpu"]
    assert translate(*args) == 0
    target = out / "small.png"
    write_png(target, np.zeros((2, 2, 3), dtype=np.uint8))  # a marker the skip must leave alone
    assert translate(*args) == 0
    assert read_rgb(target).shape == (2, 2, 3)
    assert "nothing to do" in capsys.readouterr().out
    assert translate(*args, "--force") == 0
    assert read_rgb(target).shape == (64, 80, 3)


@pytest.mark.parametrize("kind", ["safetensors", "run_folder"])
def test_our_weights_and_run_folders_are_accepted(tmp_path, inputs, official_pth, kind):
    generator = load_generator(official_pth)
    if kind == "safetensors":
        checkpoint = save_network(tmp_path / "g.safetensors", generator, tile_size=1024, mpp=0.5)
    else:
        checkpoint = tmp_path / "run"
        save_network(checkpoint / "weights" / "generator.safetensors", generator, tile_size=1024, mpp=0.5)
    out = tmp_path / "out"
    assert translate("--checkpoint", checkpoint, inputs / "small.png", "--out", out, "--device", "cpu") == 0
    reference = Stainer(generator, device="cpu").stain_image(read_rgb(inputs / "small.png"))
    assert np.array_equal(read_rgb(out / "small.png"), reference)


def test_bad_input_names_the_file_and_skip_bad_lists_it(tmp_path, inputs, official_pth, capsys):
    bad = inputs / "broken.png"
    bad.write_bytes(b"not a png at all")
    out = tmp_path / "out"
    assert translate("--checkpoint", official_pth, inputs, "--out", out, "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "--skip-bad" in err
    assert translate("--checkpoint", official_pth, inputs, "--out", out, "--device", "cpu", "--skip-bad", "--no-progress") == 0
    captured = capsys.readouterr().out
    assert "skipped 1 unreadable" in captured and "broken.png" in captured
    assert sorted(p.name for p in out.iterdir()) == ["small.png", "wide.png"]


def test_missing_inputs_and_clashing_names_are_errors(tmp_path, inputs, official_pth, capsys):
    out = tmp_path / "out"
    assert translate("--checkpoint", official_pth, tmp_path / "nowhere.png", "--out", out) == 2
    assert "nowhere.png" in capsys.readouterr().err
    other = tmp_path / "other"
    write_png(other / "small.png", np.zeros((8, 8, 3), dtype=np.uint8))
    assert translate("--checkpoint", official_pth, inputs, other, "--out", out) == 2
    assert "both be written" in capsys.readouterr().err
    assert translate("--checkpoint", tmp_path / "no_run", inputs, "--out", out) == 2
    assert "no_run" in capsys.readouterr().err


def test_recursive_folders_mirror_subfolders(tmp_path, inputs, official_pth):
    write_png(inputs / "sub" / "deep.png", read_rgb(inputs / "small.png")[:32, :32])
    out = tmp_path / "out"
    assert translate("--checkpoint", official_pth, inputs, "--out", out, "--device", "cpu", "--recursive") == 0
    assert (out / "sub" / "deep.png").is_file() and (out / "wide.png").is_file()
