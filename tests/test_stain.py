"""Colour deconvolution against scikit-image and the authors' release (official fixture)."""

from __future__ import annotations


import numpy as np
import pytest
import skimage.color
import torch

from tdkstain.knowledge import stain
from conftest import DATA, OFFICIAL

FIXTURE = OFFICIAL / "official_dab_skimage_ihc.npz"
IHC_PNG = DATA / "ihc_skimage_colon.png"


@pytest.fixture(scope="module")
def official():
    from PIL import Image

    ihc = np.asarray(Image.open(IHC_PNG).convert("RGB"))
    return ihc, dict(np.load(FIXTURE))


@pytest.fixture(scope="module")
def real_crop(official):
    """A 96x96 crop of the real IHC image holding both stains."""
    return official[0][200:296, 180:276]


def _to_tensor(rgb_hwc: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(rgb_hwc, -1, -3))).to(dtype)


# ---------------------------------------------------------------- numpy vs skimage / release


def test_matrices_match_skimage():
    np.testing.assert_array_equal(stain.RGB_FROM_HED, skimage.color.rgb_from_hed)
    np.testing.assert_array_equal(stain.HED_FROM_RGB, skimage.color.hed_from_rgb)


def test_numpy_conversions_equal_skimage(official):
    ihc = official[0]
    hed = stain.rgb_to_hed(ihc)
    np.testing.assert_array_equal(hed, skimage.color.rgb2hed(ihc))
    np.testing.assert_array_equal(stain.hed_to_rgb(hed), skimage.color.hed2rgb(hed))
    np.testing.assert_array_equal(stain.saturation(ihc), skimage.color.rgb2hsv(ihc)[..., 1])
    np.testing.assert_array_equal(stain.dab_od(ihc), hed[..., 2])
    np.testing.assert_array_equal(stain.hematoxylin_od(ihc), hed[..., 0])
    rgb = np.random.default_rng(0).random((31, 23, 3))
    np.testing.assert_allclose(stain.rgb_to_hed(rgb), skimage.color.rgb2hed(rgb), rtol=0, atol=1e-12)


def test_dab_rgb_matches_release_fixture(official):
    ihc, fixture = official
    ours = stain.dab_rgb(ihc)
    assert ours.dtype == np.uint8 and ours.shape == fixture["dab_rgb"].shape
    diff = np.abs(ours.astype(int) - fixture["dab_rgb"].astype(int))
    assert diff.max() <= 1
    assert (diff == 0).mean() >= 0.999


def test_unblurred_membrane_mask_identical_to_release(official):
    ihc, fixture = official
    ours = stain.release_membrane_mask(ihc, blur=False)
    assert ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, fixture["dab_mask"])


def test_blurred_membrane_mask_matches_opencv(official):
    ihc, fixture = official
    ours = stain.release_membrane_mask(ihc, blur=True)
    diff = np.abs(ours.astype(int) - fixture["dab_mask_blurred"].astype(int))
    assert (diff <= 1).mean() >= 0.999
    # Our fixed-point port of OpenCV is in fact bit-exact on this image.
    assert diff.max() == 0


def test_release_threshold_is_a_dab_density_threshold(official):
    """Saturation > 0.15 of the DAB-only image == DAB density > RELEASE_DAB_THRESHOLD."""
    ihc, fixture = official
    dab = stain.dab_od(ihc)
    near = np.abs(dab - stain.RELEASE_DAB_THRESHOLD) < 1e-12
    np.testing.assert_array_equal((dab > stain.RELEASE_DAB_THRESHOLD)[~near], (fixture["dab_mask"] > 0)[~near])


def test_release_blur_kernel_is_opencv_fixed_point():
    taps = stain.RELEASE_BLUR_TAPS
    assert taps.sum() == 256 and np.array_equal(taps, taps[::-1])
    # Close to the float Gaussian it quantises.
    x = np.arange(9) - 4
    gauss = np.exp(-(x**2) / 18.0)
    np.testing.assert_allclose(taps / 256, gauss / gauss.sum(), atol=1 / 256)


def test_release_blur_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        stain.release_blur(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="3 channels"):
        stain.rgb_to_hed(np.zeros((4, 4, 4), np.uint8))


def test_saturation_of_grey_is_zero():
    grey = np.full((3, 3, 3), 0.4)
    assert not stain.saturation(grey).any()
    black = np.zeros((2, 2, 3), np.uint8)
    assert not stain.saturation(black).any()


# ---------------------------------------------------------------- torch vs skimage


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torch_rgb_to_hed_equals_skimage(dtype, real_crop):
    for rgb_hwc in (np.random.default_rng(1).random((2, 17, 19, 3)), real_crop / 255.0):
        expected = skimage.color.rgb2hed(rgb_hwc)
        ours = stain.rgb_to_hed_torch(_to_tensor(rgb_hwc, dtype))
        assert ours.dtype == dtype
        np.testing.assert_allclose(np.moveaxis(ours.double().numpy(), -3, -1), expected, rtol=0, atol=1e-5)
        np.testing.assert_allclose(
            np.moveaxis(stain.dab_od_torch(_to_tensor(rgb_hwc, dtype)).double().numpy(), -3, -1)[..., 0],
            expected[..., 2], rtol=0, atol=1e-5,
        )
        np.testing.assert_allclose(
            np.moveaxis(stain.hematoxylin_od_torch(_to_tensor(rgb_hwc, dtype)).double().numpy(), -3, -1)[..., 0],
            expected[..., 0], rtol=0, atol=1e-5,
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torch_hed_to_rgb_equals_skimage(dtype, real_crop):
    hed_random = np.random.default_rng(2).random((5, 7, 3)) * 0.3
    for hed in (hed_random, skimage.color.rgb2hed(real_crop)):
        expected = skimage.color.hed2rgb(hed)
        ours = stain.hed_to_rgb_torch(_to_tensor(hed, dtype))
        np.testing.assert_allclose(np.moveaxis(ours.double().numpy(), -3, -1), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torch_dab_rgb_and_saturation_equal_skimage(dtype, real_crop):
    rgb = real_crop / 255.0
    hed = skimage.color.rgb2hed(real_crop)
    zeros = np.zeros_like(hed[..., 2])
    expected_dab = skimage.color.hed2rgb(np.stack((zeros, zeros, hed[..., 2]), -1))
    ours = stain.dab_rgb_torch(_to_tensor(rgb, dtype))
    np.testing.assert_allclose(np.moveaxis(ours.double().numpy(), -3, -1), expected_dab, rtol=0, atol=1e-5)
    sat = stain.saturation_torch(_to_tensor(expected_dab, dtype))[..., 0, :, :]
    np.testing.assert_allclose(sat.double().numpy(), skimage.color.rgb2hsv(expected_dab)[..., 1], atol=1e-5)
    random_rgb = np.random.default_rng(3).random((9, 11, 3))
    sat = stain.saturation_torch(_to_tensor(random_rgb, dtype))[0]
    np.testing.assert_allclose(sat.double().numpy(), skimage.color.rgb2hsv(random_rgb)[..., 1], atol=1e-5)


def test_torch_membrane_mask_matches_release(official):
    ihc, fixture = official
    rgb = _to_tensor(ihc / 255.0, torch.float64)[None]
    unblurred = stain.release_membrane_mask_torch(rgb, blur=False)
    assert unblurred.shape == (1, 1, *ihc.shape[:2])
    np.testing.assert_array_equal(unblurred[0, 0].numpy() * 255, fixture["dab_mask"])
    blurred = stain.release_membrane_mask_torch(rgb)[0, 0].numpy() * 255
    # Float blur vs OpenCV's uint8 rounding: within half a grey level.
    assert np.abs(blurred - fixture["dab_mask_blurred"]).max() <= 0.5 + 1e-9


def test_torch_batch_shapes_and_dtype():
    rgb = torch.rand(2, 4, 3, 12, 10, dtype=torch.float32)
    assert stain.rgb_to_hed_torch(rgb).shape == rgb.shape
    assert stain.dab_rgb_torch(rgb).shape == rgb.shape
    mask = stain.release_membrane_mask_torch(rgb)
    assert mask.shape == (2, 4, 1, 12, 10) and mask.dtype == torch.float32
    # Batched equals one-by-one.
    torch.testing.assert_close(mask[1, 2], stain.release_membrane_mask_torch(rgb[1, 2]))
    with pytest.raises(ValueError, match=r"\(\*, 3, H, W\)"):
        stain.rgb_to_hed_torch(torch.rand(2, 4, 8, 8))
    with pytest.raises(ValueError, match="float"):
        stain.rgb_to_hed_torch(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="at least"):
        stain.release_blur_torch(torch.zeros(1, 3, 3))


def test_gradcheck():
    rng = torch.Generator().manual_seed(0)
    rgb = (torch.rand(1, 3, 4, 5, generator=rng, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(stain.rgb_to_hed_torch, (rgb,))
    assert torch.autograd.gradcheck(stain.dab_rgb_torch, (rgb,))
    assert torch.autograd.gradcheck(stain.saturation_torch, (rgb,))
    assert torch.autograd.gradcheck(stain.dab_od_torch, (rgb,))
    hed = (torch.rand(1, 3, 4, 5, generator=rng, dtype=torch.float64) * 0.2).requires_grad_()
    assert torch.autograd.gradcheck(stain.hed_to_rgb_torch, (hed,))
    mask = torch.rand(1, 1, 6, 7, generator=rng, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(stain.release_blur_torch, (mask,))


def test_saturation_gradient_has_no_nan_on_grey():
    grey = torch.full((1, 3, 2, 2), 0.5, dtype=torch.float64, requires_grad=True)
    stain.saturation_torch(grey).sum().backward()
    assert torch.isfinite(grey.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_torch_on_cuda_matches_cpu(real_crop):
    rgb = _to_tensor(real_crop / 255.0, torch.float32)[None]
    torch.testing.assert_close(
        stain.release_membrane_mask_torch(rgb.cuda()).cpu(), stain.release_membrane_mask_torch(rgb), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(stain.rgb_to_hed_torch(rgb.cuda()).cpu(), stain.rgb_to_hed_torch(rgb), atol=1e-5, rtol=0)
