"""Bad input: every case is a clear error naming the file and the fix (or a documented, warned conversion).

Cases already shown elsewhere are listed in docs/RELIABILITY.md with their
test; this module adds the ones that had none: partners and sizes seen by
training, corrupt (not only truncated) files, a header-only decompression
bomb, configs in YAML files, run folders of another method or architecture,
weights of the wrong network given to ``translate``, and output folders that
cannot be written.
"""

from __future__ import annotations

import errno
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from tdkstain.cli import main
from tdkstain.training.config import load_config
from tdkstain.data.tiles import AlignedTiles, split_pairs, tile_files
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.data.images import read_rgb, write_png
from tdkstain.training import train

from conftest import make_dataset, tiny


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=3, n_test=0, size=40)


def _files(root: Path, crop: int | None):
    pairs, _ = split_pairs(root, "train", "test", 0)
    return AlignedTiles(tile_files(root, pairs, membrane=False, nuclei=False), crop, flip=False, seed=0)


# ----------------------------------------------------------------------------- pairs and sizes


def test_missing_partner_is_skipped_by_training_with_a_warning_naming_it(dataset, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    write_png(root / "train_HE" / "lonely.png", np.zeros((40, 40, 3), np.uint8))
    with pytest.warns(UserWarning, match=r"1 image\(s\) without a partner.*lonely\.png.*tdkstain check"):
        pairs, _ = split_pairs(root, "train", "test", 0)
    assert "lonely" not in {p.stem for p in pairs} and len(pairs) == 3


def test_size_mismatch_between_he_and_ihc_is_refused_naming_both(dataset, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    ihc = next((root / "train_IHC").glob("*.png"))
    write_png(ihc, np.zeros((40, 32, 3), np.uint8))
    tiles = _files(root, None)
    index = [f.ihc for f in tiles.files].index(ihc)
    with pytest.raises(TdkstainError) as info:
        tiles[index]
    message = str(info.value)
    assert str(root / "train_HE" / ihc.name) in message and str(ihc) in message and "one size" in message


def test_tile_smaller_than_the_crop_is_an_error_naming_the_tile_and_the_fix(dataset):
    with pytest.raises(TdkstainError, match=r"tile_000_0\.png: tile is 40x40 px, smaller than the crop 64; lower data\.crop"):
        _files(dataset, 64)[0]
    assert _files(dataset, 40)[0]["he"].shape == (3, 40, 40)  # equal to the crop is fine


@pytest.mark.parametrize("height, width", [(1, 1), (3, 5), (13, 17), (40, 9)])
def test_inference_on_images_smaller_than_the_tile_pads_and_crops_back(height, width):
    from tdkstain.inference import Stainer
    from tdkstain.models.tdkstain import ResnetGenerator

    torch.manual_seed(0)
    stainer = Stainer(ResnetGenerator(ngf=4, n_blocks=1).eval(), device="cpu", tile=32, overlap=8)
    he = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ihc = stainer.stain_image(he)
    assert ihc.shape == (height, width, 3) and ihc.dtype == np.uint8


# ----------------------------------------------------------------------------- corrupt files


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def test_png_with_a_damaged_byte_inside_is_corrupt_not_silently_decoded(tmp_path):
    path = write_png(tmp_path / "damaged.png", np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside IDAT: the chunk's CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(TdkstainError, match=r"damaged\.png: .*(corrupt|truncated|not a readable image)"):
        read_rgb(path)


def test_tiff_with_damaged_compressed_data_is_an_error(tmp_path):
    path = tmp_path / "damaged.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8),
                     photometric="rgb", compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    data = bytearray(path.read_bytes())
    for i in range(offset + 2, offset + count):  # the zlib stream of the first strip, after its 2-byte header
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(TdkstainError, match=r"damaged\.tif"):
        read_rgb(path)


def test_png_header_claiming_a_huge_image_is_refused_before_decoding(tmp_path):
    """A decompression bomb: 60,000 x 60,000 px (10.8 GB as RGB) declared in a 100-byte file."""
    ihdr = struct.pack(">IIBBBBB", 60_000, 60_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    bomb = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    with pytest.raises(TdkstainError, match=r"bomb\.png: 60000 x 60000 = 3,600,000,000 pixels exceeds the limit.*max_pixels"):
        read_rgb(path)
    from tdkstain.data.pairs import check_dataset

    (tmp_path / "data" / "train_HE").mkdir(parents=True)
    (tmp_path / "data" / "train_IHC").mkdir(parents=True)
    (tmp_path / "data" / "train_HE" / "x.png").write_bytes(bomb)
    write_png(tmp_path / "data" / "train_IHC" / "x.png", np.zeros((8, 8, 3), np.uint8))
    report = check_dataset(tmp_path / "data", progress=False, workers=1)
    assert [(p.kind, p.path.name) for p in report.problems] == [("unreadable", "x.png")]
    assert "exceeds the limit" in report.problems[0].message


# ----------------------------------------------------------------------------- configs


def test_yaml_config_file_with_unknown_key_or_wrong_type_names_key_and_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  ngf: 32\n  n_block: 3\ntrain:\n  max_steps: ten\n")
    with pytest.raises(TdkstainError) as info:
        load_config(str(path))
    message = str(info.value)
    assert str(path) in message
    assert "model.n_block: unknown key (did you mean model.n_blocks?)" in message
    assert "train.max_steps: Input should be a valid integer" in message and "'ten'" in message


def test_yaml_config_cannot_build_python_objects(tmp_path):
    path = tmp_path / "evil.yaml"
    target = tmp_path / "pwned"
    path.write_text(f"model: !!python/object/apply:os.system ['touch {target}']\n")
    with pytest.raises(TdkstainError, match=r"evil\.yaml: not valid YAML"):
        load_config(str(path))
    assert not target.exists()


# ----------------------------------------------------------------------------- checkpoints of another kind


@pytest.fixture(scope="module")
def one_step_run(dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "run"
    train(tiny(dataset, "data.val_pairs=0", "train.max_steps=1"), run, progress=False)
    return run


def test_resuming_with_another_architecture_is_refused(dataset, one_step_run):
    # Without the nuclei branch the run would have no estimator: its tensors do not fit.
    with pytest.raises(TdkstainError, match=r"config\.yaml: this run folder holds a different architecture "
                                             r"\(loss\.nuclei: zero in one.*use a new --out folder"):
        train(tiny(dataset, "data.val_pairs=0", "train.max_steps=2", "loss.nuclei=0"), one_step_run, progress=False)
    with pytest.raises(TdkstainError, match=r"n_blocks: 1 there, 2 here"):
        train(tiny(dataset, "data.val_pairs=0", "train.max_steps=2", "model.n_blocks=2"), one_step_run, progress=False)


def test_resuming_a_run_folder_of_another_method_is_refused(dataset, one_step_run, tmp_path):
    import shutil

    run = tmp_path / "other_method"
    shutil.copytree(one_step_run, run)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("method: tdkstain", "method: pix2pixhd"))
    with pytest.raises(TdkstainError) as info:
        train(tiny(dataset, "data.val_pairs=0", "train.max_steps=2"), run, progress=False)
    assert str(config) in str(info.value) and "method" in str(info.value)


def test_translate_refuses_discriminator_weights_naming_the_file(tmp_path, capsys):
    from tdkstain.weights import save_network
    from tdkstain.models.tdkstain import MultiscaleDiscriminator

    weights = save_network(tmp_path / "discriminator.safetensors", MultiscaleDiscriminator(ndf=4, num_D=2))
    write_png(tmp_path / "he" / "a.png", np.zeros((32, 32, 3), np.uint8))
    code = main(["translate", "--checkpoint", str(weights), str(tmp_path / "he"), "--out", str(tmp_path / "out"),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "discriminator.safetensors" in err and "not a generator" in err
    assert not (tmp_path / "out" / "a.png").exists()


# ----------------------------------------------------------------------------- output folders that cannot be written


def test_atomic_write_into_a_folder_refusing_writes_names_the_file(tmp_path, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(TdkstainError, match=r"out\.png: cannot write to the folder .* \(not writable: Permission denied\)"):
        write_png(tmp_path / "out.png", np.zeros((4, 4, 3), np.uint8))
    assert not (tmp_path / "out.png").exists()


def test_read_only_mount_is_not_writable_either(tmp_path, monkeypatch):
    real_replace = os.replace

    def read_only(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(TdkstainError, match=r"x\.png: cannot write to the folder.*not writable"):
        write_png(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8))
    monkeypatch.setattr(os, "replace", real_replace)
    assert [p.name for p in tmp_path.iterdir()] == []  # the temporary was removed


def test_train_into_an_output_folder_blocked_by_a_file(dataset, tmp_path, capsys):
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the run folder should go")
    code = main(["train", "--config", "demo-cpu", "--data", str(dataset), "--out", str(blocker / "run"), "--no-progress",
                 "train.max_steps=1"])
    err = capsys.readouterr().err
    assert code == 2 and f"{blocker} is a file, in the way" in err, err


def test_translate_into_an_output_folder_blocked_by_a_file(tmp_path, capsys):
    from tdkstain.weights import save_network
    from tdkstain.models.tdkstain import ResnetGenerator

    weights = save_network(tmp_path / "g.safetensors", ResnetGenerator(ngf=4, n_blocks=1), tile_size=32)
    write_png(tmp_path / "he" / "a.png", np.zeros((32, 32, 3), np.uint8))
    blocker = tmp_path / "out"
    blocker.write_text("")
    code = main(["translate", "--checkpoint", str(weights), str(tmp_path / "he"), "--out", str(blocker / "x"),
                 "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"{blocker} is a file, in the way" in err, err


def test_extract_with_an_output_folder_blocked_by_a_file(dataset, tmp_path, capsys):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(dataset, root, ignore=shutil.ignore_patterns("*_IHC_*"))
    (root / "train_IHC_dab").write_text("a file where extract writes a folder")
    code = main(["extract", str(root), "--quiet", "--no-report"])
    err = capsys.readouterr().err
    assert code == 2 and "train_IHC_dab" in err and "in the way" in err, err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_translate_into_a_read_only_folder(tmp_path, capsys):
    from tdkstain.weights import save_network
    from tdkstain.models.tdkstain import ResnetGenerator

    weights = save_network(tmp_path / "g.safetensors", ResnetGenerator(ngf=4, n_blocks=1), tile_size=32)
    write_png(tmp_path / "he" / "a.png", np.zeros((32, 32, 3), np.uint8))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code = main(["translate", "--checkpoint", str(weights), str(tmp_path / "he"), "--out", str(locked),
                     "--device", "cpu", "--no-progress"])
    finally:
        locked.chmod(0o755)
    assert code == 2 and "not writable" in capsys.readouterr().err


def test_image_conversions_are_warned_naming_the_file(tmp_path):
    """Grey, RGBA, 16-bit and CMYK in one place (each also has its own test in test_images.py)."""
    from PIL import Image

    from tdkstain.data.images import ImageConversionWarning

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "grey.png")
    rgba = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    rgba[..., 3] = 128
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    tifffile.imwrite(tmp_path / "deep.tif", rng.integers(0, 65536, (8, 8, 3), dtype=np.uint16), photometric="rgb")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    expected = {"grey.png": None, "rgba.png": "composited over white", "deep.tif": "16-bit", "cmyk.jpg": "CMYK"}
    for name, note in expected.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rgb = read_rgb(tmp_path / name)
        assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
        ours = [str(w.message) for w in caught if issubclass(w.category, ImageConversionWarning)]
        if note is None:
            assert ours == []  # lossless: silent
        else:
            assert len(ours) == 1 and name in ours[0] and note in ours[0], ours


# ----------------------------------------------------------------------------- a full disk is not a bad tile


def _fill_disk_on_png_saves(monkeypatch) -> None:
    """Every PNG save writes a few bytes, then fails as a full disk does."""
    from PIL import Image

    def save(self, fp, format=None, **params):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fp))

    monkeypatch.setattr(Image.Image, "save", save)


def test_full_disk_stops_extract_even_with_skip_bad(dataset, tmp_path, capsys, monkeypatch):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(dataset, root, ignore=shutil.ignore_patterns("*_IHC_*"))
    _fill_disk_on_png_saves(monkeypatch)
    code = main(["extract", str(root), "--skip-bad", "--quiet", "--no-report"])
    captured = capsys.readouterr()
    assert code == 2 and "disk full" in captured.err and ".png" in captured.err, captured.err
    assert "skipped" not in captured.out + captured.err  # not mistaken for a bad tile
    assert not [p for p in root.glob("*_IHC_*/*") if not p.name.startswith(".")]  # no half-written outputs
    assert not list(root.rglob(".tmp-*"))


def test_full_disk_stops_translate_even_with_skip_bad(tmp_path, capsys, monkeypatch):
    from tdkstain.weights import save_network
    from tdkstain.models.tdkstain import ResnetGenerator

    weights = save_network(tmp_path / "g.safetensors", ResnetGenerator(ngf=4, n_blocks=1), tile_size=32)
    write_png(tmp_path / "he" / "a.png", np.zeros((32, 32, 3), np.uint8))
    _fill_disk_on_png_saves(monkeypatch)
    code = main(["translate", "--checkpoint", str(weights), str(tmp_path / "he"), "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--skip-bad", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"{tmp_path / 'out' / 'a.png'}: disk full" in err, err
    assert not (tmp_path / "out" / "a.png").exists() and not list((tmp_path / "out").glob(".tmp-*"))
