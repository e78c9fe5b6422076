"""Dataset knowledge extraction (tdkstain.extraction) and its overlay pictures (tdkstain.overlays)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.morphology import erosion, footprint_rectangle

from tdkstain.overlays import (
    MEMBRANE_COLOUR,
    NUCLEUS_COLOUR,
    mask_contour,
    membrane_nuclei_overlay,
    montage,
)


def test_mask_contour_matches_scikit_image_erosion():
    rng = np.random.default_rng(3)
    mask = np.zeros((40, 50), np.uint8)
    mask[5:30, 8:40] = 255
    mask[rng.random(mask.shape) < 0.05] = 0
    # Reference: inside minus its 3x3 erosion (scikit-image), away from the border
    # where the two libraries pad differently.
    inside = mask >= 128
    expected = inside & ~erosion(inside, footprint_rectangle((3, 3))).astype(bool)
    got = mask_contour(mask)
    assert np.array_equal(got[1:-1, 1:-1], expected[1:-1, 1:-1])
    # A full mask still shows a frame on the tile edge.
    full = mask_contour(np.full((6, 6), 255, np.uint8))
    assert full[0].all() and full[:, 0].all() and not full[1:-1, 1:-1].any()


def test_overlay_draws_contour_and_dots_and_leaves_the_rest():
    ihc = np.full((64, 64, 3), 200, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:30, 10:30] = 255
    centroids = np.array([[50.0, 50.0], [5.2, 58.7]])
    out = membrane_nuclei_overlay(ihc, mask, centroids, dot_radius=2)
    assert out.dtype == np.uint8 and out.shape == ihc.shape
    assert (ihc == 200).all(), "input must not be modified"
    assert tuple(out[10, 20]) == MEMBRANE_COLOUR  # on the boundary
    assert tuple(out[20, 20]) == (200, 200, 200)  # inside, not a boundary
    assert tuple(out[50, 50]) == NUCLEUS_COLOUR
    assert tuple(out[5, 59]) == NUCLEUS_COLOUR  # rounded to the nearest pixel
    changed = (out != 200).any(axis=2)
    # Only the contour (76 px) and two dots with rings (radius 3 disks, one clipped) changed.
    assert changed.sum() < 76 + 2 * 40


def test_overlay_rejects_mismatched_mask():
    with pytest.raises(ValueError, match="does not match"):
        membrane_nuclei_overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9), np.uint8), np.zeros((0, 2)))


def test_montage_places_images_on_a_grid():
    a = np.zeros((4, 5, 3), np.uint8)
    b = np.full((4, 5, 3), 9, np.uint8)
    grid = montage([a, b, a], columns=2, gap=1)
    assert grid.shape == (2 * 5 + 1, 2 * 6 + 1, 3)
    assert (grid[1:5, 7:12] == 9).all() and (grid[6:10, 1:6] == 0).all() and (grid[0] == 255).all()
