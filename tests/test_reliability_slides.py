"""Whole slides: extreme resolutions, damaged files and outputs that are not ours give one clear line, early."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import EXAMPLES, he_like, write_test_slide
from tdkstain.cli import main
from tdkstain.inference import Stainer
from tdkstain.models import ResnetGenerator
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.slides.pipeline import is_stained_slide
from tdkstain.slides.reader import Slide, SlideAtMpp

openslide = pytest.importorskip("openslide")


@pytest.fixture(scope="module")
def slide_file(tmp_path_factory) -> Path:
    """A 3-level 1024x768 slide at 0.25 um/px (its coarsest level: 1 um/px)."""
    image, _ = he_like(768, 1024)
    return write_test_slide(tmp_path_factory.mktemp("slides") / "slide.tif", image, mpp=0.25)


@pytest.fixture(scope="module")
def checkpoint(tiny_slide_checkpoint) -> Path:
    return tiny_slide_checkpoint


def run_slide(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["slide", *argv, "--no-progress", "--device", "cpu", "--compile", "off"])
    return code, err.getvalue()


def test_a_resolution_far_from_the_slides_levels_is_refused_before_reading(slide_file):
    with Slide(slide_file) as slide:
        with pytest.raises(TdkstainError, match=r"5000 um/px is 5000x coarser than the slide's coarsest level \(1 um/px\)"):
            SlideAtMpp(slide, 5000)
        with pytest.raises(TdkstainError, match=r"0.001 um/px is 250x finer than the slide's finest level"):
            SlideAtMpp(slide, 0.001)
        view = SlideAtMpp(slide, 20)  # 20x coarser than level 2: allowed, a small image
        assert (view.width, view.height) == (13, 10)


def test_cli_refuses_extreme_mpp_and_tiles_that_would_read_huge_regions(slide_file, checkpoint, tmp_path):
    out = tmp_path / "out.tif"
    code, err = run_slide("--checkpoint", str(checkpoint), str(slide_file), "--out", str(out), "--mpp", "5000")
    assert code == 2 and "--mpp must be microns per pixel between 0.01 and 1000" in err and "Traceback" not in err
    code, err = run_slide("--checkpoint", str(checkpoint), str(slide_file), "--out", str(out), "--mpp", "500")
    assert code == 2 and "500x coarser than the slide's coarsest level" in err and "Traceback" not in err
    code, err = run_slide("--checkpoint", str(checkpoint), str(slide_file), "--out", str(out), "--mpp", "0")
    assert code == 2 and "--mpp must be microns per pixel between 0.01 and 1000" in err
    # 30 um/px is 30x level 2: a 512 px tile would read 15360 px per side of it.
    code, err = run_slide("--checkpoint", str(checkpoint), str(slide_file), "--out", str(out), "--mpp", "30")
    assert code == 2 and "reads 15360 px per side of level 2; use --tile 272" in err
    assert not out.exists()


def test_engine_sizes_are_bounded_before_anything_is_allocated():
    generator = ResnetGenerator(ngf=4, n_blocks=1)
    for kwargs, message in (({"tile": 10**7}, "tile=1e\\+07 is out of range"), ({"batch": 10**6}, "batch=1e\\+06 is out of range"),
                            ({"batch": 0}, "batch=0 is out of range"), ({"stat_tiles": 10**9}, "stat_tiles=1e\\+09")):
        with pytest.raises(TdkstainError, match=message):
            Stainer(generator, device="cpu", **kwargs)


def test_a_slide_header_declaring_absurd_levels_is_refused(slide_file, monkeypatch):
    class Liar:
        level_dimensions = ((5_000_000, 5_000_000),)
        level_downsamples = (1.0,)
        properties = {}

        def close(self):
            pass

    monkeypatch.setattr("tdkstain.slides.reader._open_backend", lambda path, backend: (Liar(), "openslide"))
    with pytest.raises(TdkstainError, match=r"level 0: 5,000,000 x 5,000,000 px .* exceeds the limit"):
        Slide(slide_file)
    Liar.level_dimensions, Liar.level_downsamples = ((100, 100), (50, 50)), (1.0, 0.0)
    with pytest.raises(TdkstainError, match="level 1 declares a downsample of 0.0"):
        Slide(slide_file)


def test_a_truncated_svs_is_one_line_naming_the_file(checkpoint, tmp_path):
    broken = tmp_path / "truncated.svs"
    data = (EXAMPLES / "he_cmu_small_region.svs").read_bytes()
    broken.write_bytes(data[: int(len(data) * 0.6)])
    code, err = run_slide("--checkpoint", str(checkpoint), str(broken), "--out", str(tmp_path / "o.tif"), "--mpp", "4")
    assert code == 2, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and str(broken) in lines[0] and "Traceback" not in err
    assert "truncated or damaged" in lines[0] or "cannot read as a slide" in lines[0]


def test_a_tiled_tiff_with_a_missing_tile_is_one_line_naming_the_file(slide_file, tmp_path):
    broken = tmp_path / "missing_tile.tif"
    shutil.copy(slide_file, broken)
    with tifffile.TiffFile(broken) as tif:
        tag = tif.pages[0].tags["TileOffsets"]
        count, dtype = len(tag.value), np.dtype(tif.byteorder + ("Q" if tif.is_bigtiff else "I"))
        where = tag.valueoffset
    with open(broken, "r+b") as f:  # the fourth tile's data now lies far beyond the end of the file
        offsets = np.frombuffer(bytearray(Path(broken).read_bytes()[where: where + count * dtype.itemsize]), dtype=dtype).copy()
        offsets[3] = np.iinfo(np.uint32).max - 10
        f.seek(where)
        f.write(offsets.astype(dtype).tobytes())
    with Slide(broken) as slide:
        with pytest.raises(TdkstainError, match=rf"{broken.name}: cannot read level 0 .*truncated or damaged"):
            slide.read(0, 0, 0, 1024, 768)


def test_slide_out_is_not_replaced_when_tdkstain_did_not_write_it(slide_file, checkpoint, tmp_path):
    out = tmp_path / "precious.tif"
    tifffile.imwrite(out, np.zeros((8, 8), np.uint8))  # someone else's TIFF
    before = out.read_bytes()
    args = ("--checkpoint", str(checkpoint), str(slide_file), "--out", str(out), "--mpp", "1", "--tile", "128",
            "--overlap", "16")
    code, err = run_slide(*args)
    assert code == 2 and "exists and is not a slide stained by tdkstain; pass --force" in err
    assert out.read_bytes() == before
    code, err = run_slide(*args, "--force")
    assert code == 0, err
    assert is_stained_slide(out)
    code, err = run_slide(*args)  # our own output: a rerun may replace it
    assert code == 0, err
