"""Whole slides: reading at a resolution, tissue, the pyramidal TIFF writer, and ``tdkstain slide`` end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

openslide = pytest.importorskip("openslide")
tiffslide = pytest.importorskip("tiffslide")

from tdkstain.weights import save_network  # noqa: E402
from tdkstain.cli import main as cli_main  # noqa: E402
from tdkstain.plumbing.errors import TdkstainError  # noqa: E402
from tdkstain.inference import Stainer  # noqa: E402
from tdkstain.models.tdkstain import ResnetGenerator  # noqa: E402
from tdkstain.slides import (  # noqa: E402
    Slide,
    SlideAtMpp,
    SlideOptions,
    choose_level,
    read_thumbnail,
    stain_slide,
    tissue_mask,
    work_dir_for,
    write_pyramid_tiff,
)
from tdkstain.slides.tissue import tiles_touching  # noqa: E402
from tdkstain.slides.writer import halve  # noqa: E402
from conftest import EXAMPLES, OFFICIAL, he_like, write_test_slide

REPO = Path(__file__).resolve().parents[1]
CMU_SVS = EXAMPLES / "he_cmu_small_region.svs"


# --------------------------------------------------------------------------- helpers


def tiny_generator(seed: int = 0) -> ResnetGenerator:
    torch.manual_seed(seed)
    return ResnetGenerator(ngf=4, n_blocks=1).eval()


@pytest.fixture(scope="module")
def synthetic_slide(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A 3-level 1024x768 slide at 0.25 um/px, its level-0 image and tissue truth."""
    image, tissue = he_like(768, 1024)
    path = write_test_slide(tmp_path_factory.mktemp("slides") / "synthetic.tif", image, mpp=0.25)
    return path, image, tissue


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny untrained generator in our safetensors format, trained (so its card says) at 0.5 um/px."""
    path = tmp_path_factory.mktemp("weights") / "generator.safetensors"
    save_network(path, tiny_generator(), tile_size=128, mpp=0.5)
    return path


def open_both(path: Path) -> list:
    return [openslide.OpenSlide(str(path)), tiffslide.TiffSlide(str(path))]


def mpp_of(handle) -> float:
    prefix = "openslide" if isinstance(handle, openslide.OpenSlide) else "tiffslide"
    return float(handle.properties[f"{prefix}.mpp-x"])


# --------------------------------------------------------------------------- reading


def test_choose_level_picks_the_coarsest_level_at_least_as_fine(synthetic_slide):
    with Slide(synthetic_slide[0]) as slide:
        assert slide.level_count == 3 and slide.mpp == pytest.approx(0.25)
        assert choose_level(slide, 0.5) == choose_level(slide, 0.505)  # within tolerance: no resampling
        assert (choose_level(slide, 0.5).level, choose_level(slide, 0.5).scale) == (1, 1.0)
        assert (choose_level(slide, 1.0).level, choose_level(slide, 1.0).scale) == (2, 1.0)
        assert choose_level(slide, 0.8).level == 1 and choose_level(slide, 0.8).scale == pytest.approx(1.6)
        assert choose_level(slide, 5.0).level == 2 and choose_level(slide, 5.0).mpp == 5.0
        upsampled = choose_level(slide, 0.2)
        assert upsampled.level == 0 and upsampled.scale == pytest.approx(0.8)


def test_resampled_tiles_match_resizing_the_whole_level(synthetic_slide):
    path, image, _ = synthetic_slide
    with Slide(path) as slide:
        view = SlideAtMpp(slide, 0.8)  # level 1 (0.5 um/px) shrunk by 1.6
        assert (view.width, view.height) == (round(512 / 1.6), round(384 / 1.6))
        level1 = slide.read(1, 0, 0, *slide.level_dimensions[1])
        reference = np.asarray(Image.fromarray(level1).resize((view.width, view.height), Image.Resampling.LANCZOS))
        tile = view.read(40, 56, 100, 80)
        # Interior region: a tile resampled on its own equals the whole level resampled (Pillow fixed point: +-1).
        assert np.abs(tile.astype(int) - reference[56:136, 40:140]).max() <= 1
        # Outside the slide is white glass.
        assert (view.read(view.width - 10, 0, 30, 8)[:, 12:] == 255).all()


def test_read_thumbnail_is_an_area_average(synthetic_slide):
    path, image, _ = synthetic_slide
    with Slide(path) as slide:
        thumbnail = read_thumbnail(slide, 256)
    assert thumbnail.shape == (192, 256, 3)
    level2 = np.asarray(Image.fromarray(image).reduce(4), dtype=float)  # the level it reads is level 0 / 4
    assert np.abs(thumbnail.astype(float) - level2).mean() < 1.5


def test_unreadable_and_missing_files_are_clear_errors(tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_text("not a slide")
    with pytest.raises(TdkstainError, match="broken.svs: cannot read as a slide"):
        Slide(bad)
    with pytest.raises(TdkstainError, match="no such slide file"):
        Slide(tmp_path / "absent.svs")


def test_missing_mpp_says_how_to_pass_it(tmp_path):
    image, _ = he_like(256, 256)
    path = write_test_slide(tmp_path / "no_mpp.tif", image, mpp=None, levels=1)
    with Slide(path) as slide:
        assert slide.mpp is None
        with pytest.raises(TdkstainError, match=r"no_mpp.tif.*--slide-mpp"):
            choose_level(slide, 0.5)
    with Slide(path, slide_mpp=0.5) as slide:
        assert choose_level(slide, 0.5).level == 0


# --------------------------------------------------------------------------- tissue


def test_tissue_mask_finds_tissue_and_ignores_glass(synthetic_slide):
    _, image, truth = synthetic_slide
    thumbnail = np.asarray(Image.fromarray(image).reduce(4))
    truth_small = truth[2::4, 2::4]
    mask = tissue_mask(thumbnail, thumbnail_mpp=1.0, dilate_px=0)
    agreement = (mask == truth_small).mean()
    assert agreement > 0.98
    assert not tissue_mask(np.full((64, 64, 3), 245, np.uint8)).any()  # empty glass: no tissue
    noisy_glass = np.clip(np.random.default_rng(1).normal(240, 4, (64, 64, 3)), 0, 255).astype(np.uint8)
    assert not tissue_mask(noisy_glass).any()


def test_tiles_touching_agrees_with_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((40, 50)) > 0.97
    boxes = [(int(x), int(y), 24, 16) for x, y in rng.integers(0, 200, (60, 2))]
    scale = 0.25
    fast = tiles_touching(mask, boxes, scale)
    for (x, y, w, h), got in zip(boxes, fast):
        x0, y0 = int(np.floor(x * scale)), int(np.floor(y * scale))
        x1, y1 = int(np.ceil((x + w) * scale)), int(np.ceil((y + h) * scale))
        assert got == mask[y0:y1, x0:x1].any()


# --------------------------------------------------------------------------- writing


def test_halve_is_a_rounded_2x2_mean():
    band = np.random.default_rng(0).integers(0, 256, (6, 9, 3)).astype(np.uint8)
    padded = np.concatenate([band, band[:, -1:]], axis=1).astype(np.float64)
    reference = np.floor((padded[0::2, 0::2] + padded[1::2, 0::2] + padded[0::2, 1::2] + padded[1::2, 1::2]) / 4 + 0.5)
    assert np.array_equal(halve(band), reference.astype(np.uint8))


@pytest.mark.parametrize("compression", ["deflate", "jpeg"])
def test_pyramid_tiff_opens_in_openslide_and_tiffslide(tmp_path, compression):
    height, width, tile = 300, 520, 128
    image, _ = he_like(height, width, seed=3)
    bands = (image[y : y + tile] for y in range(0, height, tile))
    out = tmp_path / "pyramid.tif"
    info = write_pyramid_tiff(out, width, height, bands, mpp=0.5, spill_dir=tmp_path / "spill", tile=tile,
                              compression=compression, thumbnail_size=200)
    assert info.level_dimensions == [(520, 300), (260, 150), (130, 75), (65, 38)]  # until one tile holds it
    assert info.thumbnail.shape == (115, 200, 3)
    for handle in open_both(out):
        assert handle.level_dimensions == tuple(info.level_dimensions)
        assert mpp_of(handle) == pytest.approx(0.5)
        level0 = np.asarray(handle.read_region((0, 0), 0, (width, height)))[..., :3]
        level1 = np.asarray(handle.read_region((0, 0), 1, (260, 150)))[..., :3]
        if compression == "deflate":
            assert np.array_equal(level0, image)
            assert np.array_equal(level1, halve(image))
        else:
            assert np.abs(level0.astype(float) - image).mean() < 4
        handle.close()
    assert not list((tmp_path / "spill").glob("*.png"))  # temporary strips removed


# --------------------------------------------------------------------------- the pipeline


def run_cli(*args: str) -> tuple[int, str]:
    """``tdkstain ARGS`` in a subprocess (one thread, as every run compared here): exit code and stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "tdkstain", *args], capture_output=True, text=True, env=env, timeout=300)
    return proc.returncode, proc.stderr


def run_cli_here(capsys, *args: str) -> tuple[int, str]:
    """``tdkstain ARGS`` in this process (no interpreter start-up): exit code and stderr."""
    code = cli_main(list(args))
    return code, capsys.readouterr().err


def test_slide_on_a_synthetic_multilevel_slide(synthetic_slide, tmp_path):
    path, image, _ = synthetic_slide
    out = tmp_path / "out" / "stained.tif"
    stainer = Stainer(tiny_generator(), device="cpu", tile=128, overlap=16, batch=4)
    messages: list[str] = []
    result = stain_slide(stainer, path, out, model_mpp=0.5,
                         options=SlideOptions(compression="deflate", tiff_tile=128), log=messages.append, progress=False)
    # 0.5 um/px is level 1 of the slide: 512x384 pixels, 5x4 tiles of 128 with overlap >= 16.
    assert (result.width, result.height, result.level, result.scale) == (512, 384, 1, 1.0)
    assert result.tiles_total == 20 and 0 < result.tiles_background < 20
    assert result.tiles_tissue + result.tiles_background == 20
    assert any(f"{result.tiles_background} background tiles skipped" in m for m in messages)
    # global statistics over up to 16 tissue tiles, the glass tile once, then one staining pass over tissue tiles only
    assert result.forward_passes == min(16, result.tiles_tissue) + 1 + result.tiles_tissue
    for handle in open_both(out):
        assert handle.dimensions == (512, 384)
        assert handle.level_dimensions == ((512, 384), (256, 192), (128, 96))
        assert mpp_of(handle) == pytest.approx(0.5)
        stained = np.asarray(handle.read_region((0, 0), 0, (512, 384)))[..., :3]
        handle.close()
    # The right third of the slide is glass: no tile there touches tissue, so it is exactly the glass fill
    # (test_background_is_the_generators_rendering_of_the_slides_glass); inside the tissue the generator's output is not white.
    assert (stained[:, 480:] == np.rint(result.background_rgb).astype(np.uint8)).all()
    assert (stained[150:230, 100:250] != 255).any(axis=2).mean() > 0.9
    thumbnail = np.asarray(Image.open(result.thumbnail))
    assert thumbnail.shape == (384, 512, 3)  # smaller than --thumbnail-size: full level 0
    assert not work_dir_for(out).exists()  # work removed after success


def test_global_norm_slide_equals_whole_image_staining(synthetic_slide, tmp_path):
    """With every tile stained, slide assembly reproduces the engine's stain_image (its global statistics).

    The 256x192 image has 4 tiles, fewer than ``stat_tiles``: both gather the statistics over all of them.
    """
    path, image, _ = synthetic_slide
    stainer = Stainer(tiny_generator(1), device="cpu", tile=128, overlap=32, batch=3, norm="global", stat_tiles=16)
    out = tmp_path / "all.tif"
    result = stain_slide(stainer, path, out, model_mpp=1.0,
                         options=SlideOptions(tissue_detection=False, compression="deflate", tiff_tile=64),
                         log=lambda m: None, progress=False)
    assert result.stained.all() and result.background_rgb is None  # nothing skipped, nothing filled
    with Slide(path) as slide:
        he = slide.read(2, 0, 0, 256, 192)  # 1 um/px is level 2
    expected = stainer.stain_image(he)
    with tifffile.TiffFile(out) as tiff:
        got = tiff.pages[0].asarray()
    # Tiles are cached as uint8 before blending (stain_image blends floats): at most 1 level apart.
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected).max() <= 1


def test_kernel_norm_and_resampling(synthetic_slide, tmp_path):
    path, _, _ = synthetic_slide
    stainer = Stainer(tiny_generator(), device="cpu", tile=64, overlap=16, batch=8, norm="kernel", kernel_radius=1)
    result = stain_slide(stainer, path, tmp_path / "k.tif", model_mpp=1.6, log=lambda m: None, progress=False)
    assert (result.level, result.scale) == (2, pytest.approx(1.6))
    assert (result.width, result.height) == (160, 120)
    with openslide.OpenSlide(str(tmp_path / "k.tif")) as handle:
        assert handle.dimensions == (160, 120) and mpp_of(handle) == pytest.approx(1.6)


def test_zero_tissue_gives_an_all_white_slide_and_says_so(tmp_path):
    glass = np.clip(np.random.default_rng(2).normal(243, 3, (256, 384, 3)), 0, 255).astype(np.uint8)
    path = write_test_slide(tmp_path / "glass.tif", glass, mpp=0.5, levels=1)
    messages: list[str] = []
    stainer = Stainer(tiny_generator(), device="cpu", tile=128, overlap=16)
    result = stain_slide(stainer, path, tmp_path / "white.tif", model_mpp=0.5, log=messages.append, progress=False,
                         options=SlideOptions(compression="deflate"))
    assert result.tiles_tissue == 0 and result.forward_passes == 0
    assert result.background_rgb is None  # no tissue statistics to stain glass with: white, not a glass fill
    assert any("no tissue found" in m and "--no-tissue-detection" in m for m in messages)
    with tifffile.TiffFile(tmp_path / "white.tif") as tiff:
        assert (tiff.pages[0].asarray() == 255).all()


def test_changed_settings_start_over_and_encoding_options_reuse_tiles(synthetic_slide, tmp_path):
    path, _, _ = synthetic_slide
    out = tmp_path / "s.tif"
    stainer = Stainer(tiny_generator(), device="cpu", tile=128, overlap=16, batch=4)
    first = stain_slide(stainer, path, out, model_mpp=1.0, options=SlideOptions(keep_work=True), log=lambda m: None,
                        progress=False)
    again = stain_slide(stainer, path, out, model_mpp=1.0, log=lambda m: None, progress=False,
                        options=SlideOptions(keep_work=True, compression="deflate", jpeg_quality=50, tiff_tile=64))
    assert again.tiles_reused == first.tiles_tissue and again.forward_passes == 0
    messages: list[str] = []
    other = Stainer(tiny_generator(), device="cpu", tile=128, overlap=32, batch=4)
    third = stain_slide(other, path, out, model_mpp=1.0, log=messages.append, progress=False)
    assert third.tiles_reused == 0 and any("other settings; starting over" in m for m in messages)


def test_cli_on_the_synthetic_slide(synthetic_slide, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "cli" / "slide.tif"
    code, stderr = run_cli_here(capsys, "slide", "--checkpoint", str(tiny_checkpoint), str(synthetic_slide[0]), "--out", str(out),
                           "--tile", "128", "--overlap", "16", "--no-progress")
    assert code == 0, stderr
    assert "background tiles skipped" in stderr
    for handle in open_both(out):
        # the card's 0.5 um/px -> level 1 of the slide; halved until one 256-pixel TIFF tile holds it
        assert handle.level_dimensions == ((512, 384), (256, 192)) and mpp_of(handle) == pytest.approx(0.5)
        handle.close()
    assert (out.parent / "slide.thumbnail.png").is_file()


def test_cli_on_a_real_aperio_slide(tiny_checkpoint, tmp_path, capsys):
    """The real CMU-1 region (2220x2967 at 0.499 um/px), stained at 2 um/px to stay fast."""
    out = tmp_path / "cmu.tif"
    code, stderr = run_cli_here(capsys, "slide", "--checkpoint", str(tiny_checkpoint), str(CMU_SVS), "--out", str(out),
                           "--mpp", "2", "--tile", "128", "--overlap", "16", "--batch", "8", "--no-progress")
    assert code == 0, stderr
    expected = (round(2220 * 0.499 / 2), round(2967 * 0.499 / 2))  # (554, 740)
    for handle in open_both(out):
        assert handle.dimensions == expected
        assert handle.level_count == 3 and handle.level_dimensions[1] == (277, 370)
        assert mpp_of(handle) == pytest.approx(2.0)
        handle.close()
    skipped = int(stderr.split(" background tiles skipped")[0].rsplit(" ", 1)[-1])
    assert skipped > 0  # the region's glass corners


@pytest.mark.slow
def test_cli_with_the_authors_checkpoint_on_the_real_slide(tmp_path):
    official = OFFICIAL / "official_G_ngf8.pth"
    out = tmp_path / "cmu_official.tif"
    code, stderr = run_cli("slide", "--checkpoint", str(official), str(CMU_SVS), "--out", str(out))
    assert code == 2 and "--mpp" in stderr and not out.exists()  # the .pth records no resolution
    code, stderr = run_cli("slide", "--checkpoint", str(official), str(CMU_SVS), "--out", str(out), "--mpp", "4",
                           "--tile", "128", "--overlap", "16", "--no-progress")
    assert code == 0, stderr
    with tiffslide.TiffSlide(str(out)) as handle:
        assert handle.dimensions == (round(2220 * 0.499 / 4), round(2967 * 0.499 / 4))


def test_cli_errors_name_the_file_and_the_fix(tiny_checkpoint, tmp_path, capsys):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"\x00" * 100)
    code, stderr = run_cli_here(capsys, "slide", "--checkpoint", str(tiny_checkpoint), str(bad), "--out", str(tmp_path / "o.tif"))
    assert code == 2 and "broken.svs: cannot read as a slide" in stderr

    image, _ = he_like(128, 128)
    no_mpp = write_test_slide(tmp_path / "no_mpp.tif", image, mpp=None, levels=1)
    code, stderr = run_cli_here(capsys, "slide", "--checkpoint", str(tiny_checkpoint), str(no_mpp), "--out", str(tmp_path / "o.tif"))
    assert code == 2 and "no_mpp.tif" in stderr and "--slide-mpp" in stderr
    assert not (tmp_path / "o.tif").exists()

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, stderr = run_cli_here(capsys, "slide", "--checkpoint", str(tiny_checkpoint), str(no_mpp), "--out", str(blocker / "o.tif"))
    assert code == 2 and "not writable" in stderr


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_output_folder_is_a_clear_error(tiny_checkpoint, synthetic_slide, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(TdkstainError, match="not writable"):
            stain_slide(Stainer(tiny_generator(), device="cpu", tile=128, overlap=16), synthetic_slide[0],
                        folder / "o.tif", model_mpp=0.5, progress=False)
    finally:
        folder.chmod(0o755)


class _Interrupted(Exception):
    pass


class _FailingStainer(Stainer):
    """A Stainer that dies on its ``fail_at``-th staining call, like a run cut short."""

    fail_at = 3

    def stain_tiles(self, tiles, stats=None, **kwargs):
        self.fail_at -= 1
        if self.fail_at == 0:
            raise _Interrupted
        return super().stain_tiles(tiles, stats, **kwargs)


@pytest.mark.parametrize("norm", ["global", "kernel"])
def test_interrupted_run_resumes_to_the_same_output(synthetic_slide, tmp_path, norm):
    path = synthetic_slide[0]
    kwargs = dict(device="cpu", tile=64, overlap=16, batch=3, norm=norm)
    options = SlideOptions(compression="deflate")
    reference = stain_slide(Stainer(tiny_generator(), **kwargs), path, tmp_path / "ref.tif", model_mpp=1.0,
                            options=options, log=lambda m: None, progress=False)
    out = tmp_path / "run.tif"
    with pytest.raises(_Interrupted):
        stain_slide(_FailingStainer(tiny_generator(), **kwargs), path, out, model_mpp=1.0, options=options,
                    log=lambda m: None, progress=False)
    assert not out.exists() and work_dir_for(out).is_dir()
    resumed = stain_slide(Stainer(tiny_generator(), **kwargs), path, out, model_mpp=1.0, options=options,
                          log=lambda m: None, progress=False)
    assert 0 < resumed.tiles_reused < reference.tiles_tissue
    assert resumed.forward_passes == reference.tiles_tissue - resumed.tiles_reused  # statistics were kept too
    assert out.read_bytes() == (tmp_path / "ref.tif").read_bytes()


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_output(tiny_checkpoint, tmp_path):
    """SIGKILL mid-staining, rerun: byte-identical to an uninterrupted run, never a partial file under the final name."""
    image, _ = he_like(768, 768, seed=5)
    slide = write_test_slide(tmp_path / "big.tif", image, mpp=0.5, levels=2)
    common = ["--checkpoint", str(tiny_checkpoint), str(slide), "--tile", "128", "--overlap", "16", "--batch", "2",
              "--compression", "deflate", "--no-progress"]

    reference = tmp_path / "reference.tif"
    code, stderr = run_cli("slide", *common, "--out", str(reference))
    assert code == 0, stderr

    out = tmp_path / "resumed" / "slide.tif"
    tiles = work_dir_for(out) / "tiles"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tdkstain", "slide", *common, "--out", str(out)],
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if tiles.is_dir() and len(list(tiles.glob("[0-9]*.png"))) >= 6:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before it could be killed (machine too fast for this slide)")
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    done = len(list(tiles.glob("[0-9]*.png")))
    assert done >= 6

    code, stderr = run_cli("slide", *common, "--out", str(out))
    assert code == 0, stderr
    reused = int(stderr.split("resuming: ")[1].split(" ")[0])
    assert 0 < reused <= done
    assert out.read_bytes() == reference.read_bytes()


def test_a_live_run_holds_the_output_and_stale_temporaries_are_removed(synthetic_slide, tmp_path):
    out = tmp_path / "locked.tif"
    work = work_dir_for(out)
    stainer = Stainer(tiny_generator(), device="cpu", tile=128, overlap=16)
    # Another live process (our parent: pytest's runner is alive) holds the work folder.
    work.mkdir()
    (work / "lock").write_text(str(os.getppid()))
    with pytest.raises(TdkstainError, match="another tdkstain slide"):
        stain_slide(stainer, synthetic_slide[0], out, model_mpp=1.0, log=lambda m: None, progress=False)
    # A dead process's lock is ignored; a half-written temporary TIFF of a killed run is cleaned away.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (work / "lock").write_text(str(dead.pid))
    stale = tmp_path / ".tmp-locked-abc123.tif"
    stale.write_bytes(b"half")
    stain_slide(stainer, synthetic_slide[0], out, model_mpp=1.0, log=lambda m: None, progress=False)
    assert out.is_file() and not stale.exists() and not work.exists()


def test_spread_picks_evenly_spaced_tiles_first_to_last():
    from tdkstain.slides.pipeline import spread

    assert spread(3, 16) == [0, 1, 2]
    assert spread(10, 4) == [0, 3, 6, 9]
    assert spread(100, 16)[0] == 0 and spread(100, 16)[-1] == 99 and len(spread(100, 16)) == 16
    assert spread(5, 1) == [2]


# --------------------------------------------------------------------------- background: the glass fill (issue 20)


def uncovered_by_stained_tiles(result) -> np.ndarray:
    """``(height, width)`` bool: pixels no stained tile covers (only the glass fill is there)."""
    covered = np.zeros((result.grid.height, result.grid.width), dtype=bool)
    for p in result.grid.positions:
        if result.stained[p.row, p.col]:
            covered[p.y : p.y + p.height, p.x : p.x + p.width] = True
    return ~covered[: result.height, : result.width]


def global_stats_file(path: Path):
    """The work folder's ``stats/global.npz`` as the NormStats it holds."""
    from tdkstain.inference import NormStats

    with np.load(path) as data:
        layers = sum(1 for name in data.files if name.startswith("mean"))
        return NormStats(tuple(data[f"mean{k}"][0] for k in range(layers)), tuple(data[f"var{k}"][0] for k in range(layers)),
                         float(data["pixels"][0]))


def test_background_is_the_generators_rendering_of_the_slides_glass(synthetic_slide, tmp_path):
    path = synthetic_slide[0]
    stainer = Stainer(tiny_generator(), device="cpu", tile=64, overlap=16, batch=4)
    out = tmp_path / "glass.tif"
    result = stain_slide(stainer, path, out, model_mpp=1.0, log=lambda m: None, progress=False,
                         options=SlideOptions(compression="deflate", keep_work=True))
    record = json.loads((work_dir_for(out) / "background.json").read_text())
    assert result.background_rgb == tuple(record["rgb"]) and "global statistics" in record["normalised_with"]
    # Stain the recorded glass tile again by hand with the run's global statistics: the fill is the mean of its middle.
    tile = record["tile"]
    assert tile["x"] + tile["width"] <= result.width and tile["y"] + tile["height"] <= result.height
    with Slide(path) as slide:
        he = slide.read(2, tile["x"], tile["y"], tile["width"], tile["height"])  # 1 um/px is level 2
    stats = global_stats_file(work_dir_for(out) / "stats" / "global.npz")
    rendering = stainer.stain_tiles([he], [stats], as_float=True)[0][8:-8, 8:-8]  # overlap / 2 in from every side
    np.testing.assert_allclose(result.background_rgb, rendering.reshape(-1, 3).mean(axis=0), atol=1e-3)
    # the generator's colour for glass, not white and not the H&E's glass
    assert max(result.background_rgb) < 250 and np.abs(np.subtract(result.background_rgb, he.mean(axis=(0, 1)))).max() > 5
    stained = tifffile.imread(out, key=0)
    alone = uncovered_by_stained_tiles(result)
    assert alone.sum() > 1000 and (stained[alone] == np.rint(result.background_rgb).astype(np.uint8)).all()


@pytest.mark.parametrize("norm", ["global", "kernel", "tile"])
def test_no_step_across_stained_and_skipped_tiles(synthetic_slide, tmp_path, monkeypatch, norm):
    """The step from a stained tile into the glass fill is no larger than the seams between stained tiles;
    the white background of before (no fill: pipeline._background_fill off) is a frame the same measure sees."""
    from tdkstain.inference import border_steps
    from tdkstain.slides import pipeline

    path = synthetic_slide[0]
    stainer = Stainer(tiny_generator(), device="cpu", tile=64, overlap=16, batch=8, norm=norm)
    options = SlideOptions(compression="deflate")
    result = stain_slide(stainer, path, tmp_path / "after.tif", model_mpp=0.5, options=options, log=lambda m: None,
                         progress=False)
    steps = border_steps(tifffile.imread(tmp_path / "after.tif", key=0), result.grid, result.stained)
    assert steps.background_borders >= 8 and steps.stained_borders >= 8
    assert steps.background <= steps.stained, steps
    monkeypatch.setattr(pipeline, "_background_fill", lambda *args, **kwargs: (None, 0))
    white = stain_slide(stainer, path, tmp_path / "before.tif", model_mpp=0.5, options=options, log=lambda m: None,
                        progress=False)
    before = border_steps(tifffile.imread(tmp_path / "before.tif", key=0), white.grid, white.stained)
    assert before.background > 3 * before.stained


def test_interrupted_run_keeps_the_fill_and_resumes_to_the_same_bytes(synthetic_slide, tmp_path):
    path = synthetic_slide[0]
    kwargs = {"device": "cpu", "tile": 64, "overlap": 16, "batch": 3}
    options = SlideOptions(compression="deflate")
    reference = stain_slide(Stainer(tiny_generator(), **kwargs), path, tmp_path / "ref.tif", model_mpp=1.0,
                            options=options, log=lambda m: None, progress=False)
    out = tmp_path / "run.tif"
    with pytest.raises(_Interrupted):  # the glass tile is stained first, then the run dies on the second chunk
        stain_slide(_FailingStainer(tiny_generator(), **kwargs), path, out, model_mpp=1.0, options=options,
                    log=lambda m: None, progress=False)
    record = json.loads((work_dir_for(out) / "background.json").read_text())
    assert tuple(record["rgb"]) == reference.background_rgb
    messages: list[str] = []
    resumed = stain_slide(Stainer(tiny_generator(), **kwargs), path, out, model_mpp=1.0, options=options,
                          log=messages.append, progress=False)
    assert resumed.forward_passes == reference.tiles_tissue - resumed.tiles_reused  # the fill was not stained again
    assert any("background: RGB" in m and "recorded in" in m for m in messages)
    assert out.read_bytes() == (tmp_path / "ref.tif").read_bytes()


def test_the_fill_recorded_in_the_work_folder_is_the_one_used(synthetic_slide, tmp_path):
    path = synthetic_slide[0]
    stainer = Stainer(tiny_generator(), device="cpu", tile=64, overlap=16, batch=4)
    out = tmp_path / "kept.tif"
    options = SlideOptions(compression="deflate", keep_work=True)
    first = stain_slide(stainer, path, out, model_mpp=1.0, options=options, log=lambda m: None, progress=False)
    work = work_dir_for(out)
    glass = np.asarray(Image.open(work / "background.png"))  # the stained glass tile, for a look
    assert np.abs(glass[8:-8, 8:-8].reshape(-1, 3).mean(axis=0) - first.background_rgb).max() < 0.5
    record_file = work / "background.json"
    record = json.loads(record_file.read_text())
    record["rgb"] = [10.0, 20.0, 30.0]
    record_file.write_text(json.dumps(record))
    again = stain_slide(stainer, path, out, model_mpp=1.0, options=options, log=lambda m: None, progress=False)
    assert again.forward_passes == 0 and again.background_rgb == (10.0, 20.0, 30.0)
    assert (tifffile.imread(out, key=0)[uncovered_by_stained_tiles(again)] == (10, 20, 30)).all()


def test_a_stained_tile_fades_into_the_fill_across_the_overlap(synthetic_slide, tmp_path):
    """Where a stained tile's right neighbour was skipped, the overlap is the engine's blend of the stained tile
    and the fill (the skipped tile counts as a tile of the fill colour), not the stained tile up to a hard edge."""
    path = synthetic_slide[0]
    stainer = Stainer(tiny_generator(), device="cpu", tile=64, overlap=16, batch=4)
    out = tmp_path / "fade.tif"
    result = stain_slide(stainer, path, out, model_mpp=0.5, log=lambda m: None, progress=False,
                         options=SlideOptions(compression="deflate", keep_work=True))
    grid, stained, fill = result.grid, result.stained, np.asarray(result.background_rgb)
    image = tifffile.imread(out, key=0).astype(np.float64)
    pairs = [(r, c) for r in range(1, grid.rows - 1) for c in range(grid.cols - 1) if stained[r, c] and not stained[r, c + 1]]
    assert pairs
    for r, c in pairs:
        p, q = (next(t for t in grid.positions if t.index == key) for key in ((r, c), (r, c + 1)))
        tile = np.asarray(Image.open(work_dir_for(out) / "tiles" / f"{r:05d}_{c:05d}.png"), dtype=np.float64)
        starts, ends = grid.row_starts, [y + grid.tile_height for y in grid.row_starts]
        rows = slice(ends[r - 1], starts[r + 1])  # only tile row r covers these
        after = grid.col_starts[c + 2] if c + 2 < grid.cols else grid.width
        cols = slice(q.x, min(p.x + p.width, after))  # the overlap of p and its skipped neighbour q alone
        wp = grid.weights(p, stainer.blend_margin)[rows.start - p.y : rows.stop - p.y, cols.start - p.x : cols.stop - p.x]
        wq = grid.weights(q, stainer.blend_margin)[rows.start - q.y : rows.stop - q.y, cols.start - q.x : cols.stop - q.x]
        expected = (wp[..., None] * tile[rows.start - p.y : rows.stop - p.y, cols.start - p.x : cols.stop - p.x]
                    + wq[..., None] * fill) / (wp + wq)[..., None]
        assert ((wp > 0) & (wp < 1)).any()  # the overlap holds the ramp
        assert np.abs(image[rows, cols] - expected).max() <= 1.0
