"""Image reading and writing: conversions against Pillow / float64 references, errors naming the file."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from tdkstain.plumbing.errors import TdkstainError
from tdkstain.data.images import (
    ImageConversionWarning,
    image_size,
    read_float_map,
    read_gray,
    read_rgb,
    write_image,
    write_png,
)
from conftest import EXAMPLES

RNG = np.random.default_rng(20240601)


def random_rgb(h: int = 24, w: int = 32) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_png16_rgb(path: Path, array: np.ndarray) -> None:
    """A 48-bit PNG written by hand (Pillow cannot write one): colour type 2, bit depth 16."""
    h, w, _ = array.shape
    raw = b"".join(b"\x00" + array[r].astype(">u2").tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def no_conversion_warning(func, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImageConversionWarning)
        return func(*args, **kwargs)


# --------------------------------------------------------------------------- lossless reads


def test_png_round_trip_is_exact_and_silent(tmp_path):
    rgb = random_rgb()
    path = write_png(tmp_path / "tile.png", rgb)
    out = no_conversion_warning(read_rgb, path)
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out, rgb)
    assert image_size(path) == (24, 32)


def test_bci_png_holding_jpeg_bytes_is_decoded_by_content(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(random_rgb(32, 40)).save(buffer, format="JPEG", quality=90)
    fake_png = tmp_path / "00052_test_3+.png"
    fake_png.write_bytes(buffer.getvalue())
    real_jpg = tmp_path / "same.jpg"
    real_jpg.write_bytes(buffer.getvalue())

    out = read_rgb(fake_png)
    np.testing.assert_array_equal(out, np.asarray(Image.open(real_jpg).convert("RGB")))
    assert image_size(fake_png) == (32, 40)


def test_grey_is_replicated_without_warning(tmp_path):
    grey = RNG.integers(0, 256, (16, 20), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    out = no_conversion_warning(read_rgb, tmp_path / "g.png")
    assert out.shape == (16, 20, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)


def test_palette_expands_losslessly(tmp_path):
    img = Image.fromarray(random_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    img.save(tmp_path / "p.png")
    out = no_conversion_warning(read_rgb, tmp_path / "p.png")
    np.testing.assert_array_equal(out, np.asarray(img.convert("RGB")))


def test_opaque_rgba_is_silent_and_keeps_colour(tmp_path):
    rgba = np.dstack([random_rgb(), np.full((24, 32), 255, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(no_conversion_warning(read_rgb, tmp_path / "a.png"), rgba[:, :, :3])


# --------------------------------------------------------------------------- lossy reads warn


def test_rgba_is_composited_over_white_and_warns(tmp_path):
    rgb = random_rgb()
    alpha = RNG.integers(0, 256, (24, 32), dtype=np.uint8)
    alpha[0, 0] = 0
    Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(tmp_path / "rgba.png")
    with pytest.warns(ImageConversionWarning, match=r"rgba\.png.*white"):
        out = read_rgb(tmp_path / "rgba.png")
    a = alpha[:, :, None].astype(np.float64) / 255.0
    expected = np.rint(rgb * a + 255.0 * (1.0 - a)).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert (out[0, 0] == 255).all()  # fully transparent -> white glass


def test_palette_with_transparency_is_composited(tmp_path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)
    img.putpixel((1, 1), 1)
    img.info["transparency"] = 0
    img.save(tmp_path / "pt.png", transparency=0)
    with pytest.warns(ImageConversionWarning, match="pt.png"):
        out = read_rgb(tmp_path / "pt.png")
    assert (out[0, 0] == 255).all()  # transparent index -> white
    assert tuple(out[1, 1]) == (200, 0, 0)


def test_16bit_grey_png_is_scaled_and_warns(tmp_path):
    grey16 = RNG.integers(0, 65536, (12, 14), dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    with pytest.warns(ImageConversionWarning, match=r"g16\.png.*16-bit"):
        out = read_rgb(tmp_path / "g16.png")
    expected = np.rint(grey16.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)
    np.testing.assert_array_equal(out[:, :, 1], expected)


def test_16bit_rgb_png_warns(tmp_path):
    rgb16 = RNG.integers(0, 65536, (6, 7, 3), dtype=np.uint16)
    write_png16_rgb(tmp_path / "c16.png", rgb16)
    with pytest.warns(ImageConversionWarning, match=r"c16\.png.*16 bits"):
        out = read_rgb(tmp_path / "c16.png")
    # Pillow's decoder keeps the high byte; within one level of exact scaling.
    exact = rgb16.astype(np.float64) * 255.0 / 65535.0
    assert np.abs(out - exact).max() <= 1.0


@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_16bit_rgb_tiff_values_are_exact(tmp_path, planar):
    # Pillow alone garbles the planar ("separate") case; tifffile reads it exactly.
    rgb16 = RNG.integers(0, 65536, (9, 11, 3), dtype=np.uint16)
    stored = rgb16 if planar == "contig" else np.moveaxis(rgb16, 2, 0)
    tifffile.imwrite(tmp_path / "c16.tif", stored, photometric="rgb", planarconfig=planar)
    with pytest.warns(ImageConversionWarning, match="16-bit"):
        out = read_rgb(tmp_path / "c16.tif")
    np.testing.assert_array_equal(out, np.rint(rgb16 / 65535.0 * 255.0).astype(np.uint8))
    assert image_size(tmp_path / "c16.tif") == (9, 11)


def test_float_tiff_in_unit_range_is_quantised_and_warns(tmp_path):
    values = RNG.random((10, 12, 3), dtype=np.float32)
    tifffile.imwrite(tmp_path / "f.tif", values, photometric="rgb")
    with pytest.warns(ImageConversionWarning, match="float"):
        out = read_rgb(tmp_path / "f.tif")
    np.testing.assert_array_equal(out, np.rint(values.astype(np.float64) * 255.0).astype(np.uint8))


def test_float_tiff_out_of_range_is_an_error_naming_the_file(tmp_path):
    tifffile.imwrite(tmp_path / "wild.tif", np.full((4, 4, 3), 1000.0, np.float32), photometric="rgb")
    with pytest.raises(TdkstainError, match=r"wild\.tif.*\[0, 1\] or \[0, 255\]"):
        read_rgb(tmp_path / "wild.tif")


def test_cmyk_jpeg_is_converted_and_warns(tmp_path):
    cmyk = Image.fromarray(random_rgb()).convert("CMYK")
    cmyk.save(tmp_path / "cmyk.jpg", quality=95)
    with pytest.warns(ImageConversionWarning, match=r"cmyk\.jpg.*CMYK"):
        out = read_rgb(tmp_path / "cmyk.jpg")
    reference = np.asarray(Image.open(tmp_path / "cmyk.jpg").convert("RGB"))
    np.testing.assert_array_equal(out, reference)


def test_multipage_tiff_reads_the_first_page_and_warns(tmp_path):
    first, second = random_rgb(), random_rgb()
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        tif.write(first, photometric="rgb")
        tif.write(second, photometric="rgb")
    with pytest.warns(ImageConversionWarning, match="first of 2"):
        out = read_rgb(tmp_path / "pages.tif")
    np.testing.assert_array_equal(out, first)


# --------------------------------------------------------------------------- errors name the file


def test_missing_file(tmp_path):
    with pytest.raises(TdkstainError, match=r"nowhere\.png: no such file"):
        read_rgb(tmp_path / "nowhere.png")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(TdkstainError, match=r"empty\.png.*empty \(0 bytes\)"):
        read_rgb(tmp_path / "empty.png")
    with pytest.raises(TdkstainError, match=r"empty\.png"):
        image_size(tmp_path / "empty.png")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("these are not pixels\n")
    with pytest.raises(TdkstainError, match=r"notes\.png: not a readable image"):
        read_rgb(tmp_path / "notes.png")
    with pytest.raises(TdkstainError, match=r"notes\.png"):
        image_size(tmp_path / "notes.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_truncated_file_is_an_error_but_its_header_still_reads(tmp_path, fmt):
    buffer = io.BytesIO()
    Image.fromarray(random_rgb(64, 64)).save(buffer, format=fmt)
    data = buffer.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(TdkstainError, match=r"cut\.\w+: .*(truncated|corrupt)"):
        read_rgb(path)
    assert image_size(path) == (64, 64)  # header only: no decode
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_decompression_bomb_guard_names_file_and_how_to_raise(tmp_path):
    path = write_png(tmp_path / "big.png", random_rgb(40, 50))
    with pytest.raises(TdkstainError, match=r"big\.png.*2,000 pixels exceeds the limit of 1,000.*max_pixels"):
        read_rgb(path, max_pixels=1000)
    assert read_rgb(path, max_pixels=2000).shape == (40, 50, 3)
    tifffile.imwrite(tmp_path / "big.tif", random_rgb(40, 50), photometric="rgb")
    with pytest.raises(TdkstainError, match=r"big\.tif.*exceeds"):
        read_rgb(tmp_path / "big.tif", max_pixels=1000)


def test_pillow_global_limit_is_left_as_it_was(tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    read_rgb(write_png(tmp_path / "x.png", random_rgb()))
    assert Image.MAX_IMAGE_PIXELS == before


def test_too_many_channels(tmp_path):
    tifffile.imwrite(tmp_path / "five.tif", np.zeros((4, 4, 5), np.uint8), photometric="minisblack", planarconfig="contig")
    with pytest.raises(TdkstainError, match=r"five\.tif.*5 channels"):
        read_rgb(tmp_path / "five.tif")


# --------------------------------------------------------------------------- grey, maps, writing


def test_read_gray_variants(tmp_path):
    grey = RNG.integers(0, 256, (10, 11), dtype=np.uint8)
    write_png(tmp_path / "mask.png", grey)
    np.testing.assert_array_equal(no_conversion_warning(read_gray, tmp_path / "mask.png"), grey)
    # an RGB file of equal channels is the same mask, silently
    write_png(tmp_path / "mask_rgb.png", np.dstack([grey] * 3))
    np.testing.assert_array_equal(no_conversion_warning(read_gray, tmp_path / "mask_rgb.png"), grey)
    # coloured RGB -> ITU-R 601-2 luma, as Pillow's "L" (integer rounding there: within 1)
    rgb = random_rgb(10, 11)
    write_png(tmp_path / "colour.png", rgb)
    with pytest.warns(ImageConversionWarning, match=r"colour\.png.*grey"):
        out = read_gray(tmp_path / "colour.png")
    reference = np.asarray(Image.fromarray(rgb).convert("L")).astype(int)
    assert np.abs(out.astype(int) - reference).max() <= 1
    # alpha dropped, not composited: the mask values stay
    Image.fromarray(np.dstack([grey, np.zeros_like(grey)]), mode="LA").save(tmp_path / "la.png")
    with pytest.warns(ImageConversionWarning, match="alpha"):
        np.testing.assert_array_equal(read_gray(tmp_path / "la.png"), grey)


def test_float_map_round_trip_is_exact(tmp_path):
    density = (RNG.random((16, 18)) * 1e-3).astype(np.float32)
    path = write_image(tmp_path / "sub" / "map.tif", density)
    out = no_conversion_warning(read_float_map, path)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, density)
    assert not list(path.parent.glob(".tmp-*"))
    with pytest.raises(TdkstainError, match=r"rgb\.png.*single-channel"):
        read_float_map(write_png(tmp_path / "rgb.png", random_rgb()))


def test_write_refuses_what_it_cannot_store(tmp_path):
    with pytest.raises(TdkstainError, match=r"a\.png.*uint8"):
        write_png(tmp_path / "a.png", np.zeros((4, 4), np.float32))
    with pytest.raises(TdkstainError, match=r"a\.jpg.*suffix"):
        write_image(tmp_path / "a.jpg", np.zeros((4, 4), np.uint8))
    with pytest.raises(TdkstainError, match=r"shape"):
        write_png(tmp_path / "b.png", np.zeros((4, 4, 2), np.uint8))
    assert not list(tmp_path.iterdir())


def test_real_he_jpeg_reads(fixtures_dir):
    path = fixtures_dir / "data" / "he_stardist_histo.jpg"
    if not path.exists():
        pytest.skip(f"{path} missing")
    out = no_conversion_warning(read_rgb, path)
    assert out.shape == (300, 500, 3) and out.dtype == np.uint8
    assert image_size(path) == (300, 500)


# --------------------------------------------------------------------------- property: bytes never crash


def _valid_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


_PREFIXES = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"II*\x00", b"MM\x00*", b"BM", b"GIF89a", b"RIFF"]
_VALID_PNG = _valid_png()

file_bytes = st.one_of(
    st.tuples(st.sampled_from(_PREFIXES), st.binary(max_size=512)).map(lambda t: t[0] + t[1]),
    # a valid PNG cut short or with one byte changed
    st.integers(0, len(_VALID_PNG)).map(lambda n: _VALID_PNG[:n]),
    st.tuples(st.integers(0, len(_VALID_PNG) - 1), st.integers(0, 255)).map(
        lambda t: _VALID_PNG[: t[0]] + bytes([t[1]]) + _VALID_PNG[t[0] + 1 :]
    ),
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=file_bytes)
def test_any_bytes_give_an_rgb_array_or_a_tdkstain_error(tmp_path, data):
    path = tmp_path / "random.png"
    path.write_bytes(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ours and Pillow's "corrupt EXIF" alike
            out = read_rgb(path)
    except TdkstainError as err:
        assert "random.png" in str(err)
    else:
        assert isinstance(out, np.ndarray) and out.dtype == np.uint8
        assert out.ndim == 3 and out.shape[2] == 3 and out.shape[0] > 0 and out.shape[1] > 0


def test_tiff_with_associated_alpha_is_composited_over_white(tmp_path):
    colour = RNG.integers(0, 256, (8, 9, 3)).astype(np.float64)
    alpha = RNG.integers(0, 256, (8, 9)).astype(np.float64)
    premultiplied = np.rint(colour * alpha[:, :, None] / 255.0)
    stored = np.dstack([premultiplied, alpha]).astype(np.uint8)
    tifffile.imwrite(tmp_path / "assoc.tif", stored, photometric="rgb", extrasamples=["assocalpha"])
    with pytest.warns(ImageConversionWarning, match="white"):
        out = read_rgb(tmp_path / "assoc.tif")
    # Premultiplied colour over white: c' + (1 - a) * 255. Un-premultiplying in
    # integers on the way costs at most one level.
    expected = premultiplied + (255.0 - alpha[:, :, None])
    assert np.abs(out.astype(np.float64) - expected).max() <= 1.0


def test_real_svs_reads_through_the_pillow_fallback(fixtures_dir):
    # JPEG-compressed TIFF tiles: tifffile needs imagecodecs for them, Pillow does not.
    path = EXAMPLES / "he_cmu_small_region.svs"
    if not path.exists():
        pytest.skip(f"{path} missing")
    with pytest.warns(ImageConversionWarning, match=r"first of \d+ TIFF pages"):  # thumbnail, label, macro
        out = read_rgb(path)
    assert out.shape == (2967, 2220, 3) and out.dtype == np.uint8
    assert 150 < out.mean() < 250  # mostly pale H&E and glass, not a black failed decode
