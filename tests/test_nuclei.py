"""Nuclei masks, centroids and detection scoring."""

from __future__ import annotations

import sys
import types
import warnings

import numpy as np
import pytest
from scipy import ndimage

from tdkstain.plumbing.errors import TdkstainError
from tdkstain.knowledge.nuclei import (
    NucleiParams,
    detect_nuclei,
    match_centroids,
    nuclei_mask,
    pool_centroids,
    score_detection,
)
from conftest import DATA
from tdkstain.knowledge import stain

REAL_IHC = DATA / "ihc_skimage_colon.png"


def _real_ihc() -> np.ndarray:
    from skimage import io

    return io.imread(REAL_IHC)[..., :3]


def _blob_tile(centres: list[tuple[float, float]], radius: float = 5.0, size: int = 64) -> np.ndarray:
    """A white tile with haematoxylin-only discs: (size, size, 3) uint8."""
    from skimage.color import hed2rgb

    rows, cols = np.mgrid[:size, :size]
    hematoxylin = np.zeros((size, size))
    for row, col in centres:
        hematoxylin[(rows - row) ** 2 + (cols - col) ** 2 <= radius**2] = 0.08
    hed = np.zeros((size, size, 3))
    hed[..., 0] = hematoxylin
    return (np.clip(hed2rgb(hed), 0, 1) * 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------
# match_centroids / pool_centroids: hand-computed cases
# ---------------------------------------------------------------------------


def test_match_centroids_hand_case_prefers_more_pairs_over_nearest():
    # Greedy nearest-first would pair pred 0 with truth 0 (distance 4) and
    # leave pred 1 unmatched (14 px from truth 1). The optimal one-to-one
    # matching pairs pred 0-truth 1 (5 px) and pred 1-truth 0 (5 px).
    pred = np.array([[0.0, 0.0], [0.0, 9.0], [100.0, 100.0]])
    truth = np.array([[0.0, 4.0], [0.0, -5.0], [50.0, 50.0]])
    result = match_centroids(pred, truth, radius=6.0)
    assert (result.tp, result.fp, result.fn) == (2, 1, 1)
    assert result.precision == pytest.approx(2 / 3)
    assert result.recall == pytest.approx(2 / 3)
    assert result.f1 == pytest.approx(2 / 3)
    assert sorted(map(tuple, result.pairs.tolist())) == [(0, 1), (1, 0)]


def test_match_centroids_radius_is_inclusive_and_one_to_one():
    truth = np.array([[10.0, 10.0]])
    pred = np.array([[10.0, 16.0], [10.0, 4.0], [10.0, 10.5]])
    result = match_centroids(pred, truth, radius=6.0)
    assert (result.tp, result.fp, result.fn) == (1, 2, 0)
    assert result.pairs.tolist() == [[2, 0]]  # the nearest of three candidates
    assert match_centroids(pred[:1], truth, radius=6.0).tp == 1  # exactly 6 px counts
    assert match_centroids(pred[:1], truth, radius=5.999).tp == 0


def test_match_centroids_empty_sets():
    empty = np.zeros((0, 2))
    some = np.array([[1.0, 2.0], [3.0, 4.0]])
    both = match_centroids(empty, empty)
    assert (both.tp, both.fp, both.fn, both.f1) == (0, 0, 0, 1.0)
    missed = match_centroids(empty, some)
    assert (missed.fn, missed.recall, missed.f1) == (2, 0.0, 0.0)
    spurious = match_centroids(some, empty)
    assert (spurious.fp, spurious.precision, spurious.f1) == (2, 0.0, 0.0)


def test_pool_centroids_drops_duplicates_within_radius():
    nuclei = np.array([[10.0, 10.0], [40.0, 40.0]])
    cells = np.array([[12.0, 11.0], [70.0, 10.0], [72.0, 12.0], [40.0, 49.0]])
    pooled = pool_centroids(nuclei, cells, radius=8.0)
    # (12, 11) is 2.2 px from a nucleus: duplicate; (72, 12) is 2.8 px from the
    # cell kept just before it: duplicate; (40, 49) is 9 px away: new.
    np.testing.assert_array_equal(pooled, [[10, 10], [40, 40], [70, 10], [40, 49]])
    assert pool_centroids(np.zeros((0, 2)), np.zeros((0, 2)), 5.0).shape == (0, 2)


# ---------------------------------------------------------------------------
# Release mask: identical to a plain scikit-image re-implementation
# ---------------------------------------------------------------------------


def test_release_mask_equals_plain_skimage_on_real_image():
    from skimage.color import rgb2hed
    from skimage.exposure import rescale_intensity
    from skimage.filters import threshold_otsu
    from skimage.morphology import dilation, disk, remove_small_holes

    ihc = _real_ihc()
    hematoxylin = rgb2hed(ihc)[..., 0]
    scaled = rescale_intensity(
        hematoxylin, in_range=(hematoxylin.min(), np.percentile(hematoxylin, 99)), out_range=(0, 255)
    )
    expected = scaled > threshold_otsu(scaled)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # area_threshold is deprecated in scikit-image 0.26
        expected = remove_small_holes(expected, area_threshold=400, connectivity=2)
    expected = dilation(expected, disk(1))

    mask = nuclei_mask(ihc, NucleiParams(mode="release"))
    assert mask.dtype == bool and mask.shape == ihc.shape[:2]
    np.testing.assert_array_equal(mask, expected)


def test_release_mask_blank_tile_is_empty_not_nan():
    blank = np.full((32, 32, 3), 240, np.uint8)
    assert not nuclei_mask(blank, NucleiParams(mode="release")).any()
    assert detect_nuclei(blank, NucleiParams(mode="release")).shape == (0, 2)


# ---------------------------------------------------------------------------
# Real image: centroids sit on haematoxylin
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode, above_p75", [("release", 0.75), ("adaptive", 0.9)])
def test_real_image_centroids_lie_on_hematoxylin(mode, above_p75):
    ihc = _real_ihc()
    centroids = detect_nuclei(ihc, NucleiParams(mode=mode))
    assert centroids.dtype == np.float64 and centroids.ndim == 2 and centroids.shape[1] == 2
    # By eye the 512x512 colon crop holds roughly 300-400 nuclei.
    assert 150 <= len(centroids) <= 600
    hematoxylin = stain.hematoxylin_od(ihc)
    at = np.round(centroids).astype(int)
    values = hematoxylin[at[:, 0], at[:, 1]]
    # Random points would give 0.50 and 0.25.
    assert (values > np.median(hematoxylin)).mean() >= 0.95
    assert (values > np.percentile(hematoxylin, 75)).mean() >= above_p75


# ---------------------------------------------------------------------------
# Classical backend on drawn blobs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["release", "adaptive"])
def test_classical_splits_touching_discs(mode):
    centres = [(20.0, 20.0), (20.0, 29.0), (45.0, 40.0)]  # the first two touch
    ihc = _blob_tile(centres, radius=5.0)
    found = detect_nuclei(ihc, NucleiParams(mode=mode))
    result = match_centroids(found, np.array(centres), radius=2.0)
    assert (result.tp, result.fp, result.fn) == (3, 0, 0)


def test_adaptive_size_window_scales_with_mpp():
    ihc = _blob_tile([(32.0, 32.0)], radius=5.0)  # 10 px across
    # At 0.5 um/px the disc is 5 um: a nucleus. At 0.1 um/px it is 1 um: debris.
    assert len(detect_nuclei(ihc, NucleiParams(mode="adaptive", mpp=0.5))) == 1
    assert len(detect_nuclei(ihc, NucleiParams(mode="adaptive", mpp=0.1))) == 0
    # At 4 um/px it is 40 um: larger than any nucleus.
    assert len(detect_nuclei(ihc, NucleiParams(mode="adaptive", mpp=4.0))) == 0


def test_adaptive_splits_a_crowded_gland_blob():
    # Six nuclei (H 0.09) in a gland whose cytoplasm is counterstained (H 0.04),
    # three nuclei in pale stroma (H 0.008), a strip of glass. The tile-wide
    # Otsu falls between stroma and cytoplasm: the gland becomes one blob,
    # larger than any nucleus, which only its own Otsu splits.
    from skimage.color import hed2rgb

    size = 96
    rows, cols = np.mgrid[:size, :size]
    hematoxylin = np.full((size, size), 0.008)
    gland = (rows >= 10) & (rows < 86) & (cols >= 6) & (cols < 50)
    hematoxylin[gland] = 0.04
    hematoxylin[:, 88:] = 0.0
    centres = [(22, 18), (22, 38), (48, 18), (48, 38), (74, 18), (74, 38), (20, 75), (50, 80), (78, 70)]
    for row, col in centres:
        hematoxylin[(rows - row) ** 2 + (cols - col) ** 2 <= 25] = 0.09
    hed = np.zeros((size, size, 3))
    hed[..., 0] = hematoxylin
    hed[..., 2] = 0.01 * gland
    ihc = (np.clip(hed2rgb(hed), 0, 1) * 255).round().astype(np.uint8)

    def found(**overrides) -> tuple[int, int, int]:
        result = match_centroids(detect_nuclei(ihc, NucleiParams(**overrides)), np.array(centres, float), 2.0)
        return result.tp, result.fp, result.fn

    assert found(mode="adaptive") == (9, 0, 0)
    assert found(mode="adaptive", crowded_rounds=0) == (3, 0, 6)  # the gland blob is too big: dropped
    assert found(mode="release") == (3, 0, 6)


def test_adaptive_gives_no_nuclei_on_nucleus_free_tissue():
    # Eosin-and-DAB tissue without haematoxylin: Otsu alone would still split it.
    from skimage.color import hed2rgb

    rng = np.random.default_rng(0)
    hed = np.zeros((64, 64, 3))
    hed[..., 1] = 0.05 + 0.02 * rng.random((64, 64))
    hed[..., 2] = 0.05 + 0.05 * rng.random((64, 64))
    ihc = (np.clip(hed2rgb(hed), 0, 1) * 255).round().astype(np.uint8)
    assert len(detect_nuclei(ihc, NucleiParams(mode="adaptive"))) == 0


def test_bad_inputs_raise_tdkstain_error():
    with pytest.raises(TdkstainError, match="mode"):
        nuclei_mask(np.zeros((8, 8, 3), np.uint8), NucleiParams(mode="otsu"))
    with pytest.raises(TdkstainError, match="backend"):
        detect_nuclei(np.zeros((8, 8, 3), np.uint8), NucleiParams(backend="stardist"))
    with pytest.raises(TdkstainError, match="uint8"):
        nuclei_mask(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(TdkstainError, match=r"\(H, W, 3\)"):
        nuclei_mask(np.zeros((8, 8), np.uint8))
    with pytest.raises(TdkstainError, match="mpp"):
        nuclei_mask(np.zeros((8, 8, 3), np.uint8), NucleiParams(mpp=0))


# ---------------------------------------------------------------------------
# Cellpose backend: error paths and pooling with a fake Cellpose
# ---------------------------------------------------------------------------


def test_cellpose_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cellpose", None)  # import cellpose -> ImportError
    ihc = _blob_tile([(20.0, 20.0)])
    with pytest.raises(TdkstainError, match=r"pip install 'tdkstain\[cellpose\]'"):
        detect_nuclei(ihc, NucleiParams(backend="cellpose"))


class _FakeCellposeModel:
    """Stands in for cellpose.models.CellposeModel: labels the image's connected components."""

    created: list["_FakeCellposeModel"] = []

    def __init__(self, gpu: bool = False, pretrained_model: str | None = None):
        self.pretrained_model = pretrained_model
        self.diam_mean = 30.0
        self.calls: list[dict] = []
        _FakeCellposeModel.created.append(self)

    def eval(self, image, diameter=None, **kwargs):
        self.calls.append({"diameter": diameter, "dtype": image.dtype, "shape": image.shape, **kwargs})
        labels, _ = ndimage.label(image > 0)
        return labels, [], []


def _install_fake_cellpose(monkeypatch, version: str) -> None:
    _FakeCellposeModel.created = []
    package = types.ModuleType("cellpose")
    package.__version__ = version
    models = types.ModuleType("cellpose.models")
    models.CellposeModel = _FakeCellposeModel
    package.models = models
    monkeypatch.setitem(sys.modules, "cellpose", package)
    monkeypatch.setitem(sys.modules, "cellpose.models", models)


@pytest.mark.parametrize("version, files", [("3.1.1", ["nucleitorch_0", "cyto2torch_0"]), ("4.0.4", ["cpsam"])])
def test_cellpose_missing_weights_names_files_and_fix(monkeypatch, tmp_path, version, files):
    _install_fake_cellpose(monkeypatch, version)
    ihc = _blob_tile([(20.0, 20.0)])
    with pytest.raises(TdkstainError) as raised:
        detect_nuclei(ihc, NucleiParams(backend="cellpose", cellpose_model_dir=str(tmp_path)))
    message = str(raised.value)
    for name in files:
        assert str(tmp_path / name) in message
    assert "connected machine" in message
    assert _FakeCellposeModel.created == []  # nothing loaded, nothing downloaded


@pytest.mark.parametrize("version", ["3.1.1", "4.0.4"])
def test_cellpose_pools_nuclei_and_cell_centroids(monkeypatch, tmp_path, version):
    _install_fake_cellpose(monkeypatch, version)
    for name in ["nucleitorch_0", "cyto2torch_0", "cpsam"]:
        (tmp_path / name).write_bytes(b"weights")
    nuclei_centres = [(16.0, 16.0), (16.0, 48.0), (48.0, 16.0)]
    ihc = _blob_tile(nuclei_centres, radius=5.0)
    dab = np.zeros((64, 64), np.uint8)
    dab[12:21, 12:21] = 255  # a cell around the first nucleus: duplicate
    dab[44:53, 44:53] = 255  # a cell whose nucleus the mask missed: new
    params = NucleiParams(backend="cellpose", mode="release", cellpose_model_dir=str(tmp_path))
    found = detect_nuclei(ihc, params, dab_mask=dab)

    expected = np.array(nuclei_centres + [(48.0, 48.0)])
    result = match_centroids(found, expected, radius=1.0)
    assert (result.tp, result.fp, result.fn) == (4, 0, 0)
    # The nucleus centroids come first, the new cell last.
    np.testing.assert_allclose(found[-1], (48.0, 48.0))

    nuclei_model, cell_model = _FakeCellposeModel.created
    # 8 um nuclei and 15 um cells at the default 0.5 um/px
    assert params.mpp == 0.5
    assert nuclei_model.calls[0]["diameter"] == pytest.approx(16.0)
    assert cell_model.calls[0]["diameter"] == pytest.approx(30.0)
    assert nuclei_model.calls[0]["dtype"] == np.uint8 and nuclei_model.calls[0]["shape"] == (64, 64)
    if version.startswith("3"):
        assert nuclei_model.pretrained_model == str(tmp_path / "nucleitorch_0")
        assert cell_model.pretrained_model == str(tmp_path / "cyto2torch_0")
        assert (nuclei_model.diam_mean, cell_model.diam_mean) == (17.0, 30.0)
        assert nuclei_model.calls[0]["channels"] == [0, 0]
    else:
        assert nuclei_model.pretrained_model == str(tmp_path / "cpsam")
        assert "channels" not in nuclei_model.calls[0]


def test_cellpose_dab_mask_shape_is_checked(monkeypatch, tmp_path):
    _install_fake_cellpose(monkeypatch, "3.1.1")
    for name in ["nucleitorch_0", "cyto2torch_0"]:
        (tmp_path / name).write_bytes(b"weights")
    ihc = _blob_tile([(16.0, 16.0)])
    with pytest.raises(TdkstainError, match="DAB mask"):
        detect_nuclei(
            ihc, NucleiParams(backend="cellpose", cellpose_model_dir=str(tmp_path)), dab_mask=np.zeros((8, 8))
        )


# ---------------------------------------------------------------------------
# Synthetic tiles with known nuclei (tdkstain.synth)
# ---------------------------------------------------------------------------

CLEAN_SEEDS = (0, 1, 2, 3)  # HER2 score = seed % 4: every score once
FAILURE_SEEDS = (0, 1)


def _synth_pair(seed: int, failure: str = "none"):
    synth = pytest.importorskip("tdkstain.synth")
    return _render_cached(synth, seed, failure)


_CACHE: dict = {}


def _render_cached(synth, seed: int, failure: str):
    key = (seed, failure)
    if key not in _CACHE:
        _CACHE[key] = synth.render_pair(seed, 256, her2=seed % 4, failure=failure)
    return _CACHE[key]


def _score(pair, mode: str):
    # 6 px at 20x (brief); 3 um at any scale.
    return score_detection(pair.ihc, pair.nuclei, NucleiParams(mode=mode, mpp=pair.mpp))


@pytest.mark.parametrize("mode", ["release", "adaptive"])
def test_classical_detection_matches_synthetic_truth(mode):
    f1 = []
    count_error = []
    for seed in CLEAN_SEEDS:
        pair = _synth_pair(seed)
        assert pair.mpp == 0.5
        result = _score(pair, mode)
        f1.append(result.f1)
        found = result.tp + result.fp
        count_error.append(abs(found - len(pair.nuclei)) / len(pair.nuclei))
    assert min(f1) >= 0.85, f1
    assert float(np.median(count_error)) <= 0.10, count_error


def failure_table(seeds=FAILURE_SEEDS) -> dict[str, dict[str, float]]:
    """Mean nuclei F1 per failure case and mode: {case: {"release": f1, "adaptive": f1}}."""
    synth = pytest.importorskip("tdkstain.synth")
    table = {}
    for case in ("none",) + tuple(synth.FAILURES):
        table[case] = {
            mode: float(np.mean([_score(_render_cached(synth, seed, case), mode).f1 for seed in seeds]))
            for mode in ("release", "adaptive")
        }
    return table


def test_adaptive_holds_up_on_every_failure_case():
    table = failure_table()
    print("\ncase                   release  adaptive")
    for case, row in table.items():
        print(f"{case:22s} {row['release']:.3f}    {row['adaptive']:.3f}")
    assert table["none"]["adaptive"] >= table["none"]["release"] - 0.03
    for case in ("tint-dab", "tint-grey", "strong-counterstain", "weak-counterstain", "jpeg"):
        assert table[case]["adaptive"] >= table[case]["release"], case
    for case, row in table.items():
        assert row["adaptive"] >= 0.85, case  # scale-40x runs at mpp 0.25


def test_adaptive_at_40x_uses_microns():
    pair = _synth_pair(0, "scale-40x")
    assert pair.mpp == 0.25
    assert _score(pair, "adaptive").f1 >= 0.85
    # The same tile read as if it were 20x: every nucleus looks twice as large
    # in microns, lymphocytes and tumour nuclei grow past the size window.
    wrong = score_detection(pair.ihc, pair.nuclei, NucleiParams(mode="adaptive", mpp=0.5), radius=12.0)
    assert wrong.f1 < _score(pair, "adaptive").f1


def test_adaptive_beats_release_when_the_tile_is_mostly_glass():
    # 220 px of the real colon tile on 512 px of glass: Otsu over the whole
    # tile splits glass from tissue and the release mask swallows cytoplasm.
    ihc = _real_ihc()
    rng = np.random.default_rng(0)
    top, left, side = 250, 150, 220
    glass = np.clip(rng.normal(238, 2, ihc.shape), 0, 255).astype(np.uint8)
    glass[top : top + side, left : left + side] = ihc[top : top + side, left : left + side]

    def inside(points: np.ndarray, margin: float = 6.0) -> np.ndarray:
        keep = np.all((points >= [top + margin, left + margin]) & (points < [top + side - margin, left + side - margin]), 1)
        return points[keep]

    f1 = {}
    for mode in ("release", "adaptive"):
        params = NucleiParams(mode=mode)
        reference = inside(detect_nuclei(ihc, params))
        f1[mode] = match_centroids(inside(detect_nuclei(glass, params)), reference, radius=6.0).f1
    assert f1["adaptive"] >= f1["release"] + 0.1, f1
