"""The outputs of ``tdkstain slide`` besides the generic TIFF: OME-TIFF (``--format ome-tiff``) and Deep Zoom (``--dzi``)."""

from __future__ import annotations

import json

import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import he_like, write_test_slide
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.slides.deepzoom import files_dir_for, load_pyvips, read_deepzoom, write_deepzoom
from tdkstain.slides.writer import copy_pyramid_tiff, stained_description, write_pyramid_tiff

openslide = pytest.importorskip("openslide")
tiffslide = pytest.importorskip("tiffslide")

HEIGHT, WIDTH, TILE, MPP = 300, 520, 128, 0.5
DESCRIPTION = "tdkstain 0.2.0 virtual HER2 IHC of synthetic.svs; mpp=0.5"
OME = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"


def write_both(folder: Path, compression: str) -> tuple[Path, Path, np.ndarray]:
    """The same bands written as the default TIFF and as OME-TIFF; returns both paths and level 0."""
    image, _ = he_like(HEIGHT, WIDTH, seed=3)
    paths = []
    for layout, name in (("tiff", "default.tif"), ("ome-tiff", "slide.ome.tif")):
        bands = (image[y : y + TILE] for y in range(0, HEIGHT, TILE))
        write_pyramid_tiff(folder / name, WIDTH, HEIGHT, bands, mpp=MPP, spill_dir=folder / "spill", tile=TILE,
                           compression=compression, description=DESCRIPTION, layout=layout, name=name)
        paths.append(folder / name)
    return paths[0], paths[1], image


def levels_of(path: Path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as tif:
        return [level.asarray() for level in tif.series[0].levels]


@pytest.mark.parametrize("compression", ["jpeg", "deflate"])
def test_ome_tiff_records_its_pixel_size_keeps_its_levels_in_subifds_and_the_default_tiffs_pixels(tmp_path, compression):
    default, ome, _ = write_both(tmp_path, compression)
    with tifffile.TiffFile(ome) as tif:
        assert tif.is_ome and len(tif.pages) == 1  # the main chain: level 0 alone
        level0 = tif.pages[0]
        assert level0.is_tiled and (level0.tilewidth, level0.tilelength) == (TILE, TILE)
        assert level0.compression == (7 if compression == "jpeg" else 8)  # JPEG / deflate
        assert len(level0.tags["SubIFDs"].value) == 3
        shapes = [level.shape for level in tif.series[0].levels]
        pixels = ET.fromstring(tif.ome_metadata).find(f"{OME}Image/{OME}Pixels")
        description = ET.fromstring(tif.ome_metadata).find(f"{OME}Image/{OME}Description").text
    assert shapes == [(300, 520, 3), (150, 260, 3), (75, 130, 3), (38, 65, 3)]  # halved (rounded up) to one tile
    assert float(pixels.get("PhysicalSizeX")) == MPP and float(pixels.get("PhysicalSizeY")) == MPP
    assert pixels.get("PhysicalSizeXUnit") == "µm" and pixels.get("PhysicalSizeYUnit") == "µm"
    assert (pixels.get("SizeX"), pixels.get("SizeY"), pixels.get("SizeC"), pixels.get("Type")) == ("520", "300", "3", "uint8")
    assert description == DESCRIPTION and stained_description(ome) == DESCRIPTION == stained_description(default)
    for ours, reference in zip(levels_of(ome), levels_of(default), strict=True):
        assert np.array_equal(ours, reference)


def test_ome_tiff_in_tiffslide_is_a_pyramid_with_its_mpp_and_in_openslide_its_level_0(tmp_path):
    default, ome, _ = write_both(tmp_path, "jpeg")
    reference = levels_of(default)
    with tiffslide.TiffSlide(str(ome)) as slide:
        assert slide.level_dimensions == ((520, 300), (260, 150), (130, 75), (65, 38))
        assert float(slide.properties["tiffslide.mpp-x"]) == pytest.approx(MPP)
        assert float(slide.properties["tiffslide.mpp-y"]) == pytest.approx(MPP)
        assert np.array_equal(np.asarray(slide.read_region((0, 0), 2, (130, 75)))[..., :3], reference[2])
    # OpenSlide 4 reads a generic TIFF's main IFD chain only: the SubIFD pyramid is invisible to it,
    # so it opens the OME-TIFF as a one-level slide, with the right pixels and resolution.
    with openslide.OpenSlide(str(ome)) as slide:
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert slide.level_dimensions == ((520, 300),)
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(MPP)
        assert np.array_equal(np.asarray(slide.read_region((0, 0), 0, (520, 300)))[..., :3], reference[0])


def raw_tiles(tif: tifffile.TiffFile, page) -> list[bytes]:
    """A page's compressed tiles as stored."""
    tiles = []
    for offset, count in zip(page.dataoffsets, page.databytecounts):
        tif.filehandle.seek(offset)
        tiles.append(tif.filehandle.read(count))
    return tiles


def test_copying_a_finished_tiff_into_the_ome_layout_keeps_every_compressed_tile(tmp_path):
    default, _, _ = write_both(tmp_path, "jpeg")
    copy = tmp_path / "copy.ome.tif"
    assert copy_pyramid_tiff(default, copy, name=copy.name) == [(520, 300), (260, 150), (130, 75), (65, 38)]
    with tifffile.TiffFile(default) as a, tifffile.TiffFile(copy) as b:
        assert b.is_ome and stained_description(copy) == DESCRIPTION
        for page_a, page_b in zip(a.pages, b.series[0].levels, strict=True):
            page_b = page_b.keyframe
            assert raw_tiles(a, page_a) == raw_tiles(b, page_b)  # byte for byte: nothing decoded or re-encoded
            assert page_b.photometric == page_a.photometric and page_b.compression == page_a.compression


def test_copy_refuses_a_file_that_is_no_tiled_rgb_pyramid(tmp_path):
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.zeros((64, 64), np.uint8))
    with pytest.raises(TdkstainError, match="no tiled image"):
        copy_pyramid_tiff(flat, tmp_path / "out.ome.tif")


@pytest.fixture(scope="module")
def deepzoom(tmp_path_factory):
    """A 1000 x 700 slide at 0.25 um/px cut into Deep Zoom tiles: the slide's level 0 and the DeepZoom."""
    folder = tmp_path_factory.mktemp("dzi")
    image, _ = he_like(700, 1000, seed=5)
    slide = write_test_slide(folder / "slide.tif", image, mpp=0.25)
    return image, write_deepzoom(slide, folder / "out" / "slide.dzi")


def test_deepzoom_xml_states_tile_size_overlap_format_and_size(deepzoom):
    _, zoom = deepzoom
    root = ET.parse(zoom.dzi).getroot()
    assert root.tag == "{http://schemas.microsoft.com/deepzoom/2008}Image"
    assert (root.get("TileSize"), root.get("Overlap"), root.get("Format")) == ("254", "1", "jpeg")
    size = root.find("{http://schemas.microsoft.com/deepzoom/2008}Size")
    assert (size.get("Width"), size.get("Height")) == ("1000", "700")
    assert read_deepzoom(zoom.dzi).mpp == pytest.approx(0.25)  # from vips-properties.xml


def test_deepzoom_tiles_are_as_many_as_the_size_makes_and_hold_the_slide(deepzoom):
    image, zoom = deepzoom
    files = files_dir_for(zoom.dzi)
    levels = sorted(int(p.name) for p in files.iterdir() if p.is_dir())
    assert levels == list(range(11))  # ceil(log2(1000)) = 10: levels 0 (1 px) .. 10 (full size)
    for level in levels:  # level L: the image shrunk 2**(10 - L) times, rounded up, cut into 254-px tiles
        width, height = math.ceil(1000 / 2 ** (10 - level)), math.ceil(700 / 2 ** (10 - level))
        names = {p.name for p in (files / str(level)).iterdir()}
        expected = {f"{c}_{r}.jpeg" for c in range(math.ceil(width / 254)) for r in range(math.ceil(height / 254))}
        assert names == expected, level
    assert zoom.tile_count() == sum(1 for _ in files.rglob("*.jpeg")) == 12 + 4 + 1 * 9
    # Full-size tile (1, 1): columns 254-1 .. 508+1 (one pixel of overlap each side), JPEG-close to the slide.
    tile = np.asarray(Image.open(files / "10" / "1_1.jpeg").convert("RGB")).astype(float)
    assert tile.shape == (256, 256, 3)
    assert np.abs(tile - image[253:509, 253:509]).mean() < 6


def test_deepzoom_of_a_slide_libvips_cannot_read_goes_through_the_slide_reader(tmp_path, monkeypatch):
    import tdkstain.slides.deepzoom as deepzoom_module

    image, _ = he_like(300, 400, seed=6)
    slide = write_test_slide(tmp_path / "slide.tif", image, mpp=0.5)
    monkeypatch.setattr(deepzoom_module, "_vips_level0", lambda *args: None)  # as for NDPI, MRXS, JPEG 2000 SVS
    messages: list[str] = []
    zoom = write_deepzoom(slide, tmp_path / "bridged.dzi", log=messages.append)
    assert any("temporary tiled TIFF" in m for m in messages)
    assert (zoom.width, zoom.height, zoom.mpp) == (400, 300, pytest.approx(0.5))
    tile = np.asarray(Image.open(zoom.files / "9" / "0_0.jpeg").convert("RGB")).astype(float)
    assert np.abs(tile - image[:255, :255]).mean() < 6
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []  # temporaries removed


def test_missing_pyvips_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyvips", None)  # "import pyvips" raises ImportError
    with pytest.raises(TdkstainError, match=r"pip install pyvips pyvips-binary"):
        load_pyvips()
    image, _ = he_like(64, 64)
    slide = write_test_slide(tmp_path / "slide.tif", image, mpp=0.5, levels=1)
    with pytest.raises(TdkstainError, match=r"Deep Zoom tiles need pyvips"):
        write_deepzoom(slide, tmp_path / "slide.dzi")
    assert not (tmp_path / "slide.dzi").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not xml", "not Deep Zoom XML"),
        ('<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" TileSize="254" Overlap="1" Format="jpeg"/>', "no <Image> with a <Size>"),
        ('<Image TileSize="x" Overlap="1" Format="jpeg"><Size Width="10" Height="10"/></Image>', "not a whole number"),
        ('<Image TileSize="254" Overlap="1" Format="../x"><Size Width="10" Height="10"/></Image>', "not a file suffix"),
        ('<Image TileSize="254" Overlap="1" Format="jpeg"><Size Width="10" Height="10"/></Image>', "tile folder"),
    ],
)
def test_a_damaged_dzi_is_refused_naming_it(tmp_path, text, message):
    dzi = tmp_path / "x.dzi"
    dzi.write_text(text)
    with pytest.raises(TdkstainError, match=message) as err:
        read_deepzoom(dzi)
    assert str(dzi) in str(err.value)


# --------------------------------------------------------------------------- tdkstain slide --format / --dzi


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny untrained generator in our safetensors format, trained (so its card says) at 0.5 um/px."""
    import torch

    from tdkstain.models.tdkstain import ResnetGenerator
    from tdkstain.weights import save_network

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "generator.safetensors"
    save_network(path, ResnetGenerator(ngf=4, n_blocks=1).eval(), tile_size=128, mpp=0.5)
    return path


def test_cli_slide_writes_ome_tiff_and_deep_zoom_and_reruns_over_its_own_ome_tiff(tiny_checkpoint, tmp_path, capsys):
    from tdkstain.cli import main

    image, _ = he_like(384, 512, seed=2)
    slide = write_test_slide(tmp_path / "slide.tif", image, mpp=0.5, levels=2)
    common = ["slide", "--checkpoint", str(tiny_checkpoint), str(slide), "--tile", "128", "--overlap", "16",
              "--tiff-tile", "128", "--compile", "off", "--no-progress"]
    default = tmp_path / "default.tif"
    assert main([*common, "--out", str(default)]) == 0, capsys.readouterr().err
    out = tmp_path / "stained.ome.tif"
    code = main([*common, "--out", str(out), "--format", "ome-tiff", "--dzi"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "as OME-TIFF (3 levels in SubIFDs, 0.5 um/px in its OME-XML)" in err and "stained.ome.dzi" in err
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and len(tif.series[0].levels) == 3
        assert "virtual HER2 IHC of slide.tif" in stained_description(out)
    for ours, reference in zip(levels_of(out), levels_of(default), strict=True):
        assert np.array_equal(ours, reference)  # the same stained pixels as the default format
    zoom = read_deepzoom(tmp_path / "stained.ome.dzi")
    assert (zoom.width, zoom.height, zoom.mpp) == (512, 384, pytest.approx(0.5))
    assert zoom.tile_count() == sum(1 for _ in zoom.files.rglob("*.jpeg"))
    # A rerun replaces the OME-TIFF it wrote without --force (and refuses a foreign file, as for the TIFF).
    assert main([*common, "--out", str(out), "--format", "ome-tiff"]) == 0, capsys.readouterr().err
    foreign = tmp_path / "foreign.tif"
    tifffile.imwrite(foreign, np.zeros((8, 8), np.uint8))
    assert main([*common, "--out", str(foreign), "--format", "ome-tiff"]) == 2
    assert "pass --force" in capsys.readouterr().err


def test_cli_slide_dzi_without_pyvips_fails_before_staining(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    from tdkstain.cli import main

    image, _ = he_like(128, 128)
    slide = write_test_slide(tmp_path / "slide.tif", image, mpp=0.5, levels=1)
    monkeypatch.setitem(sys.modules, "pyvips", None)
    code = main(["slide", "--checkpoint", str(tiny_checkpoint), str(slide), "--out", str(tmp_path / "o.tif"), "--dzi"])
    assert code == 2 and "pip install pyvips pyvips-binary" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists() and not (tmp_path / "o.tif.partial").exists()


def test_cli_cohort_writes_deep_zoom_or_ome_tiff_and_its_rerun_skips_ome_outputs(tiny_checkpoint, tmp_path, capsys):
    from tdkstain.cli import main

    (tmp_path / "scans").mkdir()
    for seed in (0, 1):
        image, _ = he_like(256, 256, seed=seed)
        write_test_slide(tmp_path / "scans" / f"s{seed}.tif", image, mpp=0.5, levels=1)
    common = ["slide", "--checkpoint", str(tiny_checkpoint), str(tmp_path / "scans"), "--out", str(tmp_path / "out"),
              "--tile", "128", "--overlap", "16", "--compile", "off", "--no-progress"]
    assert main([*common, "--dzi"]) == 0, capsys.readouterr().err
    for stem in ("s0", "s1"):
        zoom = read_deepzoom(tmp_path / "out" / f"{stem}.dzi")
        assert (zoom.width, zoom.height) == (256, 256) and (tmp_path / "out" / f"{stem}.tif").is_file()
    # OME-TIFF: another setting, so both are stained again; a rerun then recognises the OME outputs as done.
    ome = [*common[:5], str(tmp_path / "ome"), *common[6:], "--format", "ome-tiff"]
    assert main(ome) == 0, capsys.readouterr().err
    for stem in ("s0", "s1"):
        with tifffile.TiffFile(tmp_path / "ome" / f"{stem}.tif") as tif:
            assert tif.is_ome and tif.series[0].levels[0].shape[:2] == (256, 256)
    status = json.loads((tmp_path / "ome" / "cohort.json").read_text())
    assert [s["status"] for s in status["slides"]] == ["done", "done"], status
    capsys.readouterr()
    assert main(ome) == 0
    status = json.loads((tmp_path / "ome" / "cohort.json").read_text())
    assert [s["status"] for s in status["slides"]] == ["skipped", "skipped"], status
