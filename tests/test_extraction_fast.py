"""The torch extraction engine (tdkstain.knowledge.extraction.fast) against the numpy/scikit-image path it replaces.

Every comparison is exact (``np.array_equal``, float maps included): the
engine promises the same files on disk, not close ones.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import h_maxima

from tdkstain.knowledge import maps as knowledge
from tdkstain.knowledge import nuclei
from tdkstain.knowledge import stain
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.knowledge.extraction.fast import (
    StageTimer,
    extract_tiles,
    extract_tiles_torch,
    h_maxima_torch,
    release_blur_torch_exact,
)
from tdkstain.knowledge.maps import ExtractionParams
from tdkstain.synth.tissue import FAILURES, render_pair

FIELDS = ("dab_rgb", "membrane_mask", "nuclei_mask", "centroids", "density")


def assert_same_knowledge(expected: knowledge.TileKnowledge, got: knowledge.TileKnowledge, what: str) -> None:
    for name in FIELDS:
        a, b = getattr(expected, name), getattr(got, name)
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {name} {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        assert np.array_equal(a, b), f"{what}: {name} differs in {np.count_nonzero(a != b)} elements"


def params_for(mode: str, nuclei_mode: str | None = None, **top) -> ExtractionParams:
    return ExtractionParams.from_dict(
        {"membrane": {"mode": mode}, "nuclei": {"mode": nuclei_mode or mode}, **top}
    )


# --------------------------------------------------------------------------- h-maxima


def reference_h_maxima(image: np.ndarray, h: int) -> np.ndarray:
    return h_maxima(image, h).astype(bool)


@pytest.mark.parametrize("seed", range(6))
def test_h_maxima_equals_scikit_image_on_random_integer_images(seed):
    rng = np.random.default_rng(seed)
    for trial in range(8):
        shape = tuple(rng.integers(1, 40, size=2))
        top = int(rng.choice([2, 5, 30, 400]))
        image = rng.integers(-3 if trial % 3 == 0 else 0, top, size=shape).astype(np.int32)
        if trial % 2:
            # Smooth relief with plateaus and saddles, like the distance-transform relief.
            image = np.round(ndimage.gaussian_filter(image.astype(float), 1.5)).astype(np.int32)
        for h in (1, 2, 3, 7, 24):
            assert np.array_equal(h_maxima_torch(image, h), reference_h_maxima(image, h)), (seed, trial, shape, h)


def test_h_maxima_batch_equals_each_image_alone():
    rng = np.random.default_rng(11)
    batch = rng.integers(0, 50, size=(3, 17, 23)).astype(np.int32)
    batch[1] = 7  # a flat image: range 0 < h, nothing is marked
    batch[2, :, :5] = 0
    got = h_maxima_torch(batch, 4)
    for index, image in enumerate(batch):
        assert np.array_equal(got[index], reference_h_maxima(image, 4)), index
    assert not got[1].any()


def test_h_maxima_crafted_cases():
    # Background 0 between two "nuclei": a tall one (peak 40) and a tiny low one (peak 5 < h).
    image = np.zeros((20, 30), np.int32)
    image[3:12, 3:12] = 20
    image[6:9, 6:9] = 40
    image[14:16, 20:22] = 5
    for h in (3, 5, 6, 24, 40, 41):
        assert np.array_equal(h_maxima_torch(image, h), reference_h_maxima(image, h)), h
    # Only low components: every peak under h, the range under h -> nothing.
    low = np.zeros((10, 10), np.int32)
    low[2:4, 2:4] = 3
    low[6:8, 6:8] = 5
    for h in (1, 3, 5, 6):
        assert np.array_equal(h_maxima_torch(low, h), reference_h_maxima(low, h)), h
    # Two maxima joined by a saddle: the lower one survives only when the saddle is deep enough.
    ridge = np.zeros((5, 11), np.int32)
    ridge[2] = [0, 10, 30, 20, 12, 8, 12, 25, 20, 10, 0]
    for h in range(1, 32):
        assert np.array_equal(h_maxima_torch(ridge, h), reference_h_maxima(ridge, h)), h
    # Diagonal (8-connected) paths count.
    diagonal = np.zeros((4, 4), np.int32)
    diagonal[0, 0], diagonal[1, 1], diagonal[2, 2] = 9, 8, 10
    for h in (1, 2, 9, 10):
        assert np.array_equal(h_maxima_torch(diagonal, h), reference_h_maxima(diagonal, h)), h
    # No background at all (minimum far from 0) and a constant image.
    assert np.array_equal(h_maxima_torch(image + 100, 6), reference_h_maxima(image + 100, 6))
    assert not h_maxima_torch(np.full((4, 5), 3, np.int32), 1).any()


def test_h_maxima_refuses_bad_input():
    with pytest.raises(TdkstainError, match="integer"):
        h_maxima_torch(np.zeros((4, 4)), 2)
    with pytest.raises(TdkstainError, match="h must be"):
        h_maxima_torch(np.zeros((4, 4), np.int32), 0)
    with pytest.raises(TdkstainError, match="shape"):
        h_maxima_torch(np.zeros((2, 2, 2, 2), np.int32), 1)


def test_release_blur_torch_is_bit_identical():
    rng = np.random.default_rng(5)
    masks = np.where(rng.random((2, 33, 47)) < 0.3, 255, 0).astype(np.uint8)
    masks[1] = rng.integers(0, 256, size=(33, 47))  # any uint8, not only 0/255
    got = release_blur_torch_exact(masks)
    for index in range(2):
        assert np.array_equal(got[index], stain.release_blur(masks[index]))


def test_density_map_skipping_empty_lines_is_bit_identical():
    from tdkstain.knowledge.extraction.fast import _density_map

    rng = np.random.default_rng(2)
    centroids = np.concatenate(
        [
            rng.uniform(-3, 70, size=(9, 2)),  # some outside the tile: clipped to the border
            [[0.0, 0.0], [0.4, 0.2], [63.0, 47.0], [30.5, 12.5], [30.5, 12.5]],  # corner, duplicates, .5 rounding
        ]
    )
    for normalise in ("minmax", "count"):
        for sigma in (2.0, 11.0):
            for points in (centroids, centroids[:1]):
                expected = knowledge.density_map(points, (64, 48), sigma, normalise)
                got = _density_map(points, (64, 48), sigma, normalise)
                assert got.dtype == expected.dtype and np.array_equal(got, expected), (normalise, sigma, len(points))
            empty = _density_map(centroids[:0], (64, 48), sigma, normalise)  # no nuclei: zeros, never NaN
            assert empty.dtype == np.float32 and empty.shape == (64, 48) and not empty.any()


def test_per_value_tables_give_the_numpy_path_bit_for_bit():
    from tdkstain.knowledge.extraction import fast

    rng = np.random.default_rng(8)
    # Every uint8 value in every channel, at every offset modulo 16 (SIMD lanes), plus noise.
    ramp = np.stack([np.roll(np.arange(256 * 17) % 256, c * 5) for c in range(3)], axis=-1).astype(np.uint8)
    images = [ramp.reshape(68, 64, 3), rng.integers(0, 256, size=(37, 51, 3), dtype=np.uint8)]
    images.append(np.clip(rng.normal(200, 30, size=(40, 40, 3)), 0, 255).astype(np.uint8))
    images.append(rng.integers(0, 120, size=(30, 30, 3), dtype=np.uint8))  # no glass: white point not trusted
    params = nuclei.NucleiParams()
    for image in images:
        assert np.array_equal(fast._hed(image, fast._HED_LOG), stain.rgb_to_hed(image))
        assert np.array_equal(fast.tissue_mask(image), knowledge.tissue_mask(image))
        for a, b in zip(fast._white_balanced_hematoxylin(image, params), nuclei._white_balanced_hematoxylin(image, params)):
            assert np.array_equal(a, b)
        index = fast._channel_index(image)
        logs = rng.random(image.shape) * 10.0 ** rng.uniform(-4, 2, size=image.shape)
        assert np.array_equal(fast._sum3(logs), logs.sum(axis=-1))  # numpy's order of addition
        assert np.array_equal(fast._saturation(stain.dab_rgb_float(image)), stain.saturation(stain.dab_rgb_float(image)))
        assert np.array_equal(fast._saturation(image / 255.0), stain.saturation(image / 255.0))
        for q in (0.0, 1.0, 25.0, 50.5, 99.0, 99.9, 100.0):
            expected = np.percentile(image.reshape(-1, 3).astype(np.float64), q, axis=0)
            assert np.array_equal(fast._uint8_percentile(index, q), expected), q


# --------------------------------------------------------------------------- whole tiles


@pytest.mark.parametrize("her2", range(4))
@pytest.mark.parametrize("mode", ["adaptive", "release"])
def test_engine_equals_extract_tile_on_synth_tiles(her2, mode):
    params = params_for(mode)
    tiles = [render_pair(seed, 256, her2=her2).ihc for seed in (her2, 10 + her2)]
    got = extract_tiles_torch(tiles, params)
    assert len(got) == 2
    for index, tile in enumerate(tiles):
        assert_same_knowledge(knowledge.extract_tile(tile, params), got[index], f"her2 {her2} {mode} tile {index}")
    assert any(len(k.centroids) for k in got)  # the comparison saw nuclei


@pytest.mark.parametrize("failure", FAILURES)
def test_engine_equals_extract_tile_on_failure_cases(failure):
    tile = render_pair(3, 256, her2=2, failure=failure).ihc
    for params in (params_for("adaptive"), params_for("release", "adaptive", density_normalise="count")):
        (got,) = extract_tiles_torch([tile], params)
        assert_same_knowledge(knowledge.extract_tile(tile, params), got, failure)


def test_engine_equals_extract_tile_with_other_settings():
    tile = render_pair(7, 320, her2=3).ihc
    settings = [
        {"membrane": {"mode": "adaptive", "blur": False}, "nuclei": {"mode": "release"}},
        {"membrane": {"mode": "release"}, "nuclei": {"mode": "adaptive", "mpp": 0.25}},
        {"density_normalise": "count", "density_sigma": 5.0},
    ]
    for setting in settings:
        params = ExtractionParams.from_dict(setting)
        assert_same_knowledge(knowledge.extract_tile(tile, params), extract_tiles_torch([tile], params)[0], str(setting))


def test_engine_equals_extract_tile_on_a_real_ihc_image(fixtures_dir):
    from tdkstain.data.images import read_rgb

    ihc = read_rgb(fixtures_dir / "data" / "ihc_skimage_colon.png")
    for params in (params_for("adaptive"), params_for("release")):
        (got,) = extract_tiles_torch([ihc], params)
        assert len(got.centroids) > 50
        assert_same_knowledge(knowledge.extract_tile(ihc, params), got, f"colon {params.membrane.mode}")


def test_engine_on_blank_tiles_and_one_tiny_nucleus():
    white = np.full((64, 64, 3), 255, np.uint8)
    grey = np.full((64, 80, 3), 200, np.uint8)
    tiny = np.full((64, 64, 3), 240, np.uint8)
    yy, xx = np.mgrid[:64, :64]
    tiny[(yy - 30) ** 2 + (xx - 40) ** 2 <= 16] = (60, 50, 140)  # one small haematoxylin-blue nucleus
    tiny[10, 10], tiny[50, 12] = (60, 50, 140), (90, 80, 160)  # two dark specks
    for params in (params_for("adaptive"), params_for("release")):
        got = extract_tiles_torch([white, grey, tiny], params)
        for tile, result, name in zip((white, grey, tiny), got, ("white", "grey", "tiny")):
            assert_same_knowledge(knowledge.extract_tile(tile, params), result, f"{name} {params.membrane.mode}")
        assert len(got[0].centroids) == 0 and not got[0].density.any()
        assert np.array_equal(np.round(got[2].centroids), [[30.0, 40.0]])
    # In release mode the specks become mask components whose relief peaks below h:
    # the case where h-maxima's answer depends on the background between components.
    params = params_for("release")
    _, levels, h = nuclei._classical_relief(tiny, got[2].nuclei_mask, params.nuclei)
    components, count = ndimage.label(levels > 0, structure=np.ones((3, 3), bool))
    peaks = ndimage.maximum(levels, components, index=np.arange(1, count + 1))
    assert count == 3 and (np.asarray(peaks) < h).sum() == 2


def test_engine_keeps_order_over_mixed_sizes_and_reports_stages():
    tiles = [render_pair(1, 256, her2=1).ihc, render_pair(2, 192, her2=3).ihc, render_pair(3, 256, her2=0).ihc]
    params = params_for("adaptive")
    timer = StageTimer()
    got = extract_tiles_torch(tiles, params, timer=timer, batch=2)  # the two 256 px tiles share a canvas
    for tile, result in zip(tiles, got):
        assert_same_knowledge(knowledge.extract_tile(tile, params), result, "mixed sizes")
    for tile, result in zip(tiles, extract_tiles_torch(tiles, params)):  # default: one tile per call on the CPU
        assert_same_knowledge(knowledge.extract_tile(tile, params), result, "mixed sizes, batch 1")
    assert {"h-maxima", "watershed", "density"} <= set(timer.seconds)
    numpy_engine = extract_tiles(tiles[:1], params, engine="numpy")
    assert_same_knowledge(numpy_engine[0], got[0], "engine='numpy'")


def test_engine_refuses_cellpose_and_bad_input():
    params = ExtractionParams.from_dict({"nuclei": {"backend": "cellpose"}})
    with pytest.raises(TdkstainError, match="--engine numpy"):
        extract_tiles_torch([np.zeros((32, 32, 3), np.uint8)], params)
    with pytest.raises(TdkstainError, match="uint8"):
        extract_tiles_torch([np.zeros((32, 32, 3), np.float32)])
    with pytest.raises(TdkstainError, match="engine"):
        extract_tiles([], engine="gpu")


# --------------------------------------------------------------------------- tdkstain extract --engine


def test_extract_command_writes_identical_files_with_either_engine(tmp_path, capsys):
    from tdkstain.cli import main
    from tdkstain.synth import write_dataset

    source = tmp_path / "source"
    write_dataset(source, 4, size=128, seed=5)
    outputs = {}
    for engine in ("numpy", "torch"):
        root = tmp_path / engine
        shutil.copytree(source, root)
        assert main(["extract", str(root), "--engine", engine, "--quiet", "--no-report", "--overlays"]) == 0
        files = sorted(p for p in root.rglob("*") if p.is_file() and "_IHC_" in p.parent.name)
        outputs[engine] = {str(p.relative_to(root)): p.read_bytes() for p in files}
    capsys.readouterr()
    assert len(outputs["numpy"]) == 4 * 5  # dab, mask, density, csv, overlay per tile
    assert outputs["numpy"] == outputs["torch"]
    # A dataset extracted by one engine is up to date for the other: the engine is not a parameter.
    assert main(["extract", str(tmp_path / "torch"), "--engine", "numpy", "--quiet", "--no-report"]) == 0
    assert "0 extracted, 4 up to date" in capsys.readouterr().out


def test_extract_command_refuses_torch_with_cellpose(tmp_path, capsys):
    from tdkstain.cli import main
    from tdkstain.synth import write_dataset

    write_dataset(tmp_path / "data", 2, size=64, seed=1)
    code = main(["extract", str(tmp_path / "data"), "--engine", "torch", "--nuclei-backend", "cellpose", "--quiet"])
    assert code == 2
    assert "--engine numpy" in capsys.readouterr().err
