"""SSIM and PSNR equal scikit-image's (the BCI/ASP evaluation definitions) on real and random images."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from tdkstain.plumbing.errors import TdkstainError
from tdkstain.data.images import read_rgb
from tdkstain.plumbing.jsonsafe import json_number
from tdkstain.metrics.image import psnr, ssim


def _reference(real: np.ndarray, fake: np.ndarray) -> tuple[float, float]:
    return (
        structural_similarity(real, fake, channel_axis=-1, data_range=255),
        peak_signal_noise_ratio(real, fake, data_range=255),
    )


def test_equal_to_scikit_image_on_real_ihc(fixtures_dir):
    real = read_rgb(fixtures_dir / "data" / "ihc_skimage_colon.png")[:256, :256]
    rng = np.random.default_rng(0)
    # A plausible "generated" image: the real one blurred a little, noisy, colour-shifted.
    fake = np.clip(real.astype(np.float64) * 0.9 + 12 + rng.normal(0, 8, real.shape), 0, 255).astype(np.uint8)
    ref_ssim, ref_psnr = _reference(real, fake)
    assert abs(ssim(real, fake) - ref_ssim) < 1e-6
    assert abs(psnr(real, fake) - ref_psnr) < 1e-6
    assert 0.2 < ref_ssim < 0.99  # not a degenerate case


def test_equal_to_scikit_image_on_random_images_and_files(tmp_path):
    rng = np.random.default_rng(1)
    for shape in [(7, 7, 3), (31, 45, 3), (64, 64, 3)]:
        real = rng.integers(0, 256, shape, dtype=np.uint8)
        fake = rng.integers(0, 256, shape, dtype=np.uint8)
        ref_ssim, ref_psnr = _reference(real, fake)
        assert abs(ssim(real, fake) - ref_ssim) < 1e-6
        assert abs(psnr(real, fake) - ref_psnr) < 1e-6
    Image.fromarray(real).save(tmp_path / "real.png")
    Image.fromarray(fake).save(tmp_path / "fake.png")
    assert abs(ssim(tmp_path / "real.png", str(tmp_path / "fake.png")) - ref_ssim) < 1e-6


def test_grey_images_are_compared_as_rgb(tmp_path):
    rng = np.random.default_rng(2)
    grey_real = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    grey_fake = rng.integers(0, 256, (40, 50, 1), dtype=np.uint8)
    rgb_real = np.repeat(grey_real[:, :, None], 3, axis=2)
    rgb_fake = np.repeat(grey_fake, 3, axis=2)
    ref_ssim, ref_psnr = _reference(rgb_real, rgb_fake)
    assert abs(ssim(grey_real, grey_fake) - ref_ssim) < 1e-6
    assert abs(psnr(grey_real, grey_fake) - ref_psnr) < 1e-6
    # A grey file against an RGB array of the same content.
    Image.fromarray(grey_real, mode="L").save(tmp_path / "grey.png")
    assert ssim(tmp_path / "grey.png", rgb_real) == pytest.approx(1.0)


def test_identical_images_psnr_inf_and_json_safe():
    image = np.full((16, 16, 3), 100, np.uint8)
    assert psnr(image, image) == math.inf
    assert ssim(image, image) == pytest.approx(1.0)
    text = json.dumps({"psnr": json_number(psnr(image, image)), "nan": json_number(float("nan")), "x": json_number(3.5)})
    assert json.loads(text) == {"psnr": "inf", "nan": None, "x": 3.5}


def test_size_mismatch_names_the_files(tmp_path):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "real_a.png")
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(tmp_path / "fake_a.png")
    with pytest.raises(TdkstainError, match=r"fake_a\.png is 40x32 px but .*real_a\.png is 32x32"):
        ssim(tmp_path / "real_a.png", tmp_path / "fake_a.png")
    with pytest.raises(TdkstainError, match="generated image is 40x32"):
        psnr(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 40, 3), np.uint8))


def test_bad_inputs_are_refused():
    with pytest.raises(TdkstainError, match="uint8"):
        ssim(np.zeros((16, 16, 3), np.float32), np.zeros((16, 16, 3), np.float32))
    with pytest.raises(TdkstainError, match="shape"):
        psnr(np.zeros((16, 16, 4), np.uint8), np.zeros((16, 16, 4), np.uint8))
    with pytest.raises(TdkstainError, match="at least 7x7"):
        ssim(np.zeros((5, 9, 3), np.uint8), np.zeros((5, 9, 3), np.uint8))
