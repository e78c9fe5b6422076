"""Inference engine: tiling, blending, consistent instance-norm statistics, seam score.

References are independent computations: whole-image inference through the
plain generator, float64 statistics from numpy, exact reconstruction of
known arrays.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from tdkstain.plumbing.errors import TdkstainError
from tdkstain.inference import (
    Blender,
    NormStats,
    Stainer,
    TileGrid,
    blend_weights,
    combine_stats,
    consistent_norm_copy,
    downsampling_factor,
    neighbourhood_stats,
    border_steps,
    seam_score,
)
from tdkstain.models.tdkstain import ResnetGenerator
from tdkstain.models.layers import init_weights


def tiny_generator(seed: int = 0, **kwargs) -> ResnetGenerator:
    torch.manual_seed(seed)
    g = ResnetGenerator(**{"ngf": 4, "n_downsampling": 2, "n_blocks": 1, **kwargs})
    # larger than the release's N(0, 0.02) so the output is not a flat grey and differences show
    return init_weights(g, std=0.2).eval()


def without_norm(g: nn.Module) -> nn.Module:
    for name, child in g.named_children():
        if isinstance(child, nn.InstanceNorm2d):
            setattr(g, name, nn.Identity())
        else:
            without_norm(child)
    return g


def reference(g: nn.Module, he: np.ndarray) -> np.ndarray:
    """Whole-image output of the plain generator, float64 in [0, 255], (H, W, 3)."""
    x = torch.from_numpy(he.astype(np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        y = g(x)[0].clamp(-1, 1).permute(1, 2, 0).double().numpy()
    return (y + 1) * 127.5


def random_he(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # smooth-ish random texture: blocky noise upsampled, plus fine noise
    coarse = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 1, 3))
    img = np.kron(coarse, np.ones((8, 8, 1)))[:height, :width] * 0.7 + rng.integers(0, 256, size=(height, width, 3)) * 0.3
    return img.astype(np.uint8)


# --------------------------------------------------------------------------- grid and blending


@pytest.mark.parametrize(
    "height,width,tile,overlap",
    [(100, 100, 32, 8), (97, 131, 32, 8), (64, 64, 64, 0), (20, 300, 64, 16), (1, 1, 8, 0), (257, 63, 64, 32), (200, 200, 48, 0)],
)
def test_grid_covers_every_pixel_and_weights_form_a_partition_of_unity(height, width, tile, overlap):
    grid = TileGrid(height, width, tile, overlap)
    coverage = np.zeros((height, width), dtype=np.int64)
    weight_sum = np.zeros((height, width), dtype=np.float64)
    previous_x: dict[int, int] = {}
    for p in grid.positions:
        assert 0 <= p.y and p.y + p.height <= height and 0 <= p.x and p.x + p.width <= width
        assert (p.height, p.width) == (min(tile, height), min(tile, width))
        coverage[p.y : p.y + p.height, p.x : p.x + p.width] += 1
        weight_sum[p.y : p.y + p.height, p.x : p.x + p.width] += grid.weights(p)
        if p.col > 0:  # neighbours overlap by at least `overlap`
            assert previous_x[p.row] + p.width - p.x >= overlap
        previous_x[p.row] = p.x
    assert coverage.min() >= 1
    # consecutive ramps never meet, so the weights sum to exactly 1 (also where the last tile moved back)
    np.testing.assert_allclose(weight_sum, 1.0, atol=1e-6)


def test_blend_weights_of_interior_tiles_sum_to_one_over_a_uniform_grid():
    tile, overlap = 40, 16
    stride = tile - overlap
    for margin in (0, 4, 8):
        w = blend_weights(tile, overlap, margin).astype(np.float64)
        assert w.shape == (tile, tile) and w.dtype == np.float64 and w.min() >= 0 and w.max() <= 1
        total = np.zeros((tile + 4 * stride, tile + 4 * stride))
        for i in range(5):
            for j in range(5):
                total[i * stride : i * stride + tile, j * stride : j * stride + tile] += w
        interior = total[tile : 4 * stride, tile : 4 * stride]  # covered by interior-type neighbours on every side
        np.testing.assert_allclose(interior, 1.0, atol=1e-6)
        if margin:
            assert np.all(w[:margin] == 0) and np.all(w[:, -margin:] == 0)


def test_blend_weights_are_linear_ramps_across_the_overlap():
    # tile 40, overlap 16, margin 4: 4 px at 0, then a ramp of width 8 (pixel centres), then 1.
    ramp = np.array([0, 0, 0, 0, 0.0625, 0.1875, 0.3125, 0.4375, 0.5625, 0.6875, 0.8125, 0.9375, 1, 1, 1, 1])
    w = blend_weights(40, 16, margin=4)
    np.testing.assert_allclose(w[20, :16], ramp, atol=1e-7)
    np.testing.assert_allclose(w[20, -16:], ramp[::-1], atol=1e-7)
    np.testing.assert_allclose(w[:16, 20], ramp, atol=1e-7)
    # The grid the stainers use: two tiles side by side, 40 wide, overlap 16, no margin.
    grid = TileGrid(40, 64, 40, 16)
    left, right = (grid.weights(p) for p in grid.positions)
    across = (np.arange(16) + 0.5) / 16  # one ramp over the whole overlap, columns 24..39 of the image
    np.testing.assert_allclose(right[0, :16], across, atol=1e-7)
    np.testing.assert_allclose(left[0, 24:], 1 - across, atol=1e-7)
    assert np.all(left[:, :24] == 1) and np.all(right[:, 16:] == 1)


def test_blender_reconstructs_an_image_from_its_tiles_exactly():
    image = random_he(75, 143).astype(np.float32)
    grid = TileGrid(75, 143, 32, 12)
    blender = Blender(75, 143)
    for p in grid.positions:
        blender.add(p.crop(image), p.y, p.x, grid.weights(p, margin=3))
    np.testing.assert_allclose(blender.result(uint8=False), image, atol=1e-3)
    assert np.array_equal(blender.result(), image.astype(np.uint8))


def test_grid_rejects_bad_arguments():
    with pytest.raises(ValueError):
        TileGrid(10, 10, 8, 8)
    with pytest.raises(ValueError):
        TileGrid(0, 10, 8, 0)
    with pytest.raises(ValueError):
        blend_weights(16, 4, margin=3)


# --------------------------------------------------------------------------- statistics


def test_combine_stats_equals_statistics_of_the_union():
    rng = np.random.default_rng(1)
    parts = [rng.normal(loc=rng.normal(), scale=rng.uniform(0.5, 2), size=(n, 3)) for n in (10, 30, 7)]
    stats = [NormStats((p.mean(0),), (p.var(0),), float(len(p))) for p in parts]
    pooled = combine_stats(stats)
    union = np.concatenate(parts)
    np.testing.assert_allclose(pooled.mean[0], union.mean(0), rtol=1e-12)
    np.testing.assert_allclose(pooled.var[0], union.var(0), rtol=1e-12)
    assert pooled.pixels == 47
    with pytest.raises(ValueError):
        combine_stats(stats, weights=[0, 0, 0])


def test_neighbourhood_stats_pools_the_window_and_skips_missing_tiles():
    def s(v: float) -> NormStats:
        return NormStats((np.array([v]),), (np.array([0.0]),))

    stats = {(r, c): s(10 * r + c) for r in range(3) for c in range(3) if (r, c) != (1, 2)}
    pooled = neighbourhood_stats(stats, radius=1)
    assert set(pooled) == set(stats)
    # corner (0, 0): itself, (0, 1), (1, 0), (1, 1)
    np.testing.assert_allclose(pooled[(0, 0)].mean[0], [np.mean([0, 1, 10, 11])])
    # (0, 2): (0, 1), (0, 2), (1, 1); (1, 2) is missing
    np.testing.assert_allclose(pooled[(0, 2)].mean[0], [np.mean([1, 2, 11])])
    assert pooled[(0, 2)].var[0][0] > 0  # between-tile variance counted
    assert neighbourhood_stats(stats, radius=0)[(2, 2)] is stats[(2, 2)]


def test_recorded_statistics_match_numpy_and_the_copy_leaves_the_generator_alone():
    g = tiny_generator()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    stainer = Stainer(g, device="cpu", tile=64, overlap=16)
    he = random_he(48, 64)
    (stats,) = stainer.tile_stats([he])
    assert stats.num_layers == stainer.num_norm_layers == 1 + 2 + 2 + 2  # stem, 2 down, 1 block (2), 2 up
    # first norm layer: input is conv1(reflect_pad(x)), recomputed here in float64
    x = torch.from_numpy(he.astype(np.float64)).permute(2, 0, 1)[None] / 127.5 - 1
    conv = g.model[1].double()
    with torch.no_grad():
        h = conv(g.model[0](x))[0].numpy()
    g.model[1].float()
    np.testing.assert_allclose(stats.mean[0], h.mean(axis=(1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats.var[0], h.var(axis=(1, 2)), rtol=1e-4, atol=1e-7)
    assert all(isinstance(m, nn.InstanceNorm2d) for m in g.modules() if "Norm" in type(m).__name__)
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())


def test_own_statistics_applied_reproduce_plain_instance_norm():
    g = tiny_generator(1)
    stainer = Stainer(g, device="cpu", tile=64, overlap=16, batch=2)
    tiles = [random_he(64, 64, seed) for seed in range(3)]
    own = stainer.tile_stats(tiles)
    plain = stainer.stain_tiles(tiles, as_float=True)
    applied = stainer.stain_tiles(tiles, own, as_float=True)
    for a, b, t in zip(plain, applied, tiles):
        np.testing.assert_allclose(a, b, atol=2e-3)
        np.testing.assert_allclose(a, reference(g, t), atol=2e-3)


# --------------------------------------------------------------------------- tiled equals untiled


def test_tiled_equals_whole_image_for_a_network_without_instance_norm():
    g = without_norm(tiny_generator(2, n_downsampling=1))
    he = random_he(151, 173)  # odd sizes: padded to multiples of 2 and cropped back
    # receptive-field radius of this network is 13 px; blend_margin 16 keeps every used pixel
    # at least that far from a tile border, so the tiles see exactly what the whole image sees.
    tiled = Stainer(g, device="cpu", tile=64, overlap=32, blend_margin=16).stain_image(he, as_float=True)
    whole = Stainer(g, device="cpu", tile=256).stain_image(he, as_float=True)
    assert tiled.shape == whole.shape == (151, 173, 3)
    np.testing.assert_allclose(tiled, whole, atol=1e-3)
    np.testing.assert_allclose(whole, reference(g, np.pad(he, ((0, 1), (0, 1), (0, 0)), mode="reflect"))[:151, :173], atol=1e-3)


def test_global_statistics_of_the_whole_image_make_tiles_equal_whole_image_inference():
    g = tiny_generator(3)  # instance norm, n_downsampling 2: receptive-field radius 23 px
    he = random_he(200, 232)
    whole_stainer = Stainer(g, device="cpu", tile=256)
    whole = whole_stainer.stain_image(he, as_float=True)
    np.testing.assert_allclose(whole, reference(g, he), atol=2e-3)
    (exact,) = whole_stainer.tile_stats([he])

    tiled = Stainer(g, device="cpu", tile=96, overlap=48, blend_margin=24)
    grid = tiled.grid(200, 232)
    blender = Blender(200, 232)
    tiles = [p.crop(he) for p in grid.positions]
    for p, out in zip(grid.positions, tiled.stain_tiles(tiles, [exact] * len(tiles), as_float=True)):
        blender.add(out, p.y, p.x, grid.weights(p, tiled.blend_margin))
    # with the statistics fixed the network is convolutional; agreement to float rounding
    np.testing.assert_allclose(blender.result(uint8=False), whole, atol=1e-2)

    # naive per-tile instance norm is far from it
    naive = Stainer(g, device="cpu", tile=96, overlap=48, norm="tile").stain_image(he, as_float=True)
    assert np.abs(naive - whole).mean() > 1.0


def test_consistent_modes_are_closer_to_whole_image_than_per_tile_norm(fixtures_dir):
    from tdkstain.weights import load_generator
    from tdkstain.data.images import read_rgb

    g = load_generator(fixtures_dir / "official" / "official_G_ngf8.pth")
    he = read_rgb(fixtures_dir / "data" / "he_tiatoolbox_target.png")[:256, :256]
    whole = Stainer(g, device="cpu", tile=256).stain_image(he, as_float=True)
    naive = Stainer(g, device="cpu", tile=128, overlap=32, norm="tile").stain_image(he, as_float=True)
    for norm in ("global", "kernel"):
        consistent = Stainer(g, device="cpu", tile=128, overlap=32, norm=norm, kernel_radius=1).stain_image(he, as_float=True)
        assert np.abs(consistent - whole).mean() < 0.8 * np.abs(naive - whole).mean(), norm


def test_sequential_statistics_over_tile_cores_equal_whole_image_statistics(fixtures_dir):
    from tdkstain.weights import load_generator
    from tdkstain.data.images import read_rgb

    g = load_generator(fixtures_dir / "official" / "official_G_ngf8.pth")
    he = read_rgb(fixtures_dir / "data" / "he_tiatoolbox_target.png")[:256, :256]
    (exact,) = Stainer(g, device="cpu", tile=256).tile_stats([he])  # one piece: instance norm's own statistics
    stainer = Stainer(g, device="cpu", tile=128, overlap=32, batch=3)
    grid = stainer.grid(256, 256)
    tiles = [p.crop(he) for p in grid.positions]

    def error(stats: NormStats) -> float:  # mean over layers, in units of the true standard deviation
        return float(np.mean([
            np.mean(np.abs(stats.mean[l] - exact.mean[l]) / np.sqrt(exact.var[l]) + np.abs(np.sqrt(stats.var[l] / exact.var[l]) - 1))
            for l in range(exact.num_layers)
        ]))

    sequential = stainer.sequential_stats(tiles, [grid.core(p) for p in grid.positions])
    one_pass = combine_stats(stainer.tile_stats(tiles))
    assert sequential.num_layers == exact.num_layers == 25
    assert sequential.pixels == 256 * 256  # the cores partition the image
    # measured 0.010 here (128 px tiles: the receptive field cut at tile borders is what differs; 0.002
    # with 192 px tiles on 512 px); a single plain pass is several times further off
    assert error(sequential) < 0.015
    assert error(one_pass) > 2 * error(sequential), (error(one_pass), error(sequential))


def test_default_global_mode_matches_whole_image_inference_on_real_he(fixtures_dir):
    from tdkstain.weights import load_generator
    from tdkstain.data.images import read_rgb

    g = load_generator(fixtures_dir / "official" / "official_G_ngf8.pth")
    he = read_rgb(fixtures_dir / "data" / "he_tiatoolbox_target.png")[:256, :256]
    whole = Stainer(g, device="cpu", tile=256).stain_image(he, as_float=True)
    default = Stainer(g, device="cpu", tile=128, overlap=32)
    assert default.norm == "global"
    tiled = default.stain_image(he, as_float=True)
    naive = Stainer(g, device="cpu", tile=128, overlap=32, norm="tile").stain_image(he, as_float=True)
    # this untrained generator amplifies small differences; a trained one agrees to ~0.1 level (benchmarks/seams.py)
    assert np.abs(tiled - whole).mean() < 6.0  # measured 5.0 with 128 px tiles, 1.8 with 192 px
    assert np.abs(tiled - whole).mean() < 0.5 * np.abs(naive - whole).mean(), np.abs(naive - whole).mean()
    # statistics from a subset of the tiles (what big images use): between the two (measured 10.1 vs 14.5 for 4 of 9)
    subset = Stainer(g, device="cpu", tile=128, overlap=32, stat_tiles=4).stain_image(he, as_float=True)
    assert np.abs(tiled - whole).mean() < np.abs(subset - whole).mean() < 0.9 * np.abs(naive - whole).mean()


def test_a_second_statistics_pass_brings_the_second_layer_closer_to_whole_image_statistics(fixtures_dir):
    from tdkstain.weights import load_generator
    from tdkstain.data.images import read_rgb

    g = load_generator(fixtures_dir / "official" / "official_G_ngf8.pth")
    he = read_rgb(fixtures_dir / "data" / "he_tiatoolbox_target.png")[:256, :256]
    (exact,) = Stainer(g, device="cpu", tile=256).tile_stats([he])
    stainer = Stainer(g, device="cpu", tile=128, overlap=0)
    grid = stainer.grid(256, 256)
    tiles = [p.crop(he) for p in grid.positions]
    first = combine_stats(stainer.tile_stats(tiles))
    second = combine_stats(stainer.tile_stats(tiles, [first] * len(tiles)))

    def error(stats: NormStats, layer: int) -> float:  # in units of the true standard deviation
        std = np.sqrt(exact.var[layer])
        return float(np.mean(np.abs(stats.mean[layer] - exact.mean[layer]) / std + np.abs(np.sqrt(stats.var[layer]) / std - 1)))

    # layer 0 sees conv(x): nearly exact at once (only the 3 px of reflection at tile borders differ);
    # layer 1 gets closer once layer 0 is normalised with the pooled statistics (measured: about halved)
    assert error(first, 0) < 0.05
    assert error(second, 1) < 0.7 * error(first, 1)


# --------------------------------------------------------------------------- whole images, sizes, errors


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (33, 64), (64, 64), (65, 130)])
def test_any_size_gives_the_same_size(shape):
    g = tiny_generator()
    he = random_he(*shape)
    out = Stainer(g, device="cpu", tile=32, overlap=8).stain_image(he)
    assert out.shape == (*shape, 3) and out.dtype == np.uint8


def test_small_image_is_stained_whole_like_the_release(fixtures_dir):
    from tdkstain.weights import load_generator
    from tdkstain.data.images import read_rgb

    official = fixtures_dir / "official"
    g = load_generator(official / "official_G_ngf8.pth")
    he = read_rgb(official / "he_crop128.png")
    out = Stainer(g, device="cpu", tile=512).stain_image(he).astype(int)
    # the release truncates (y + 1) / 2 * 255 to uint8, we round: at most 1 level apart
    release = read_rgb(official / "official_G_ngf8_he_crop128_out.png").astype(int)
    assert np.abs(out - release).max() <= 1


def test_bf16_autocast_on_cpu_is_close_to_fp32():
    g = tiny_generator(5)
    he = random_he(96, 96)
    fp32 = Stainer(g, device="cpu", tile=64, overlap=16).stain_image(he, as_float=True)
    bf16 = Stainer(g, device="cpu", tile=64, overlap=16, precision="bf16", channels_last=True).stain_image(he, as_float=True)
    assert np.abs(bf16 - fp32).mean() < 3.0


def test_bad_arguments_raise_clear_errors():
    g = tiny_generator()
    assert downsampling_factor(g) == 4
    with pytest.raises(TdkstainError, match="multiple of 4"):
        Stainer(g, device="cpu", tile=30)
    with pytest.raises(TdkstainError, match="overlap"):
        Stainer(g, device="cpu", tile=32, overlap=6)
    with pytest.raises(TdkstainError, match="norm"):
        Stainer(g, device="cpu", norm="batch")
    with pytest.raises(TdkstainError, match="fp16 needs CUDA"):
        Stainer(g, device="cpu", precision="fp16")
    stainer = Stainer(g, device="cpu", tile=32, overlap=8)
    with pytest.raises(TdkstainError, match="uint8"):
        stainer.stain_image(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(TdkstainError, match="one per tile"):
        stainer.stain_tiles([random_he(32, 32)], [])


def test_consistent_norm_copy_swaps_every_instance_norm():
    g = tiny_generator()
    clone, norms = consistent_norm_copy(g)
    assert len(norms) == sum(isinstance(m, nn.InstanceNorm2d) for m in g.modules())
    assert not any(isinstance(m, nn.InstanceNorm2d) for m in clone.modules())


# --------------------------------------------------------------------------- seams


def test_seam_score_is_high_for_a_visible_border_and_about_one_without():
    rng = np.random.default_rng(0)
    texture = rng.normal(128, 10, size=(128, 128, 3))
    assert 0.8 < seam_score(texture, 64, 0) < 1.2
    stepped = texture.copy()
    stepped[:, 64:] += 20  # a brightness jump at the tile border
    assert seam_score(stepped, 64, 0) > 3
    assert seam_score(stepped, 64, 0, band=1) > 2
    assert np.isnan(seam_score(texture, 256, 0))  # one tile: no border


def test_border_steps_scores_stained_and_skipped_borders_apart():
    """Every tile stained: border_steps is seam_score. A skipped tile: a hard edge between the middle of the overlap and
    the stained tile's end scores high (the middle alone misses one ``overlap / 2 - margin`` past it); a ramp into the
    texture's own level over the blend's width does not."""
    rng = np.random.default_rng(0)
    grid = TileGrid(192, 256, 64, 16)  # stride 48: 4 x 5 tiles, borders at 56, 104, 152(, 200)
    texture = rng.normal(200, 10, size=(192, 256, 3))
    everything = border_steps(texture, grid)
    assert everything.stained == seam_score(texture, 0, grid=grid) and everything.background_borders == 0
    stained = np.ones((grid.rows, grid.cols), dtype=bool)
    stained[:, -1] = False  # the last column of tiles (x >= 192) was skipped
    middle = int(grid.col_borders[-1])  # 200
    hard = texture.copy()
    hard[:, middle + 4 :] = 255  # white from where the stained tile's weight ends (margin 4)
    steps = border_steps(hard, grid, stained)
    assert steps.background_borders == grid.rows and steps.stained_borders > 0
    assert steps.background > 5 * steps.stained and steps.background_midline < 2  # the edge is off the middle
    assert steps.offsets[int(np.argmax(steps.background_profile))] == 4
    faded = texture.copy()
    ramp = np.clip((np.arange(256) - (middle - 4)) / 8.0, 0, 1)[None, :, None]
    faded = faded * (1 - ramp) + 200.0 * ramp  # into the texture's own mean over the blend's 8 px ramp
    assert border_steps(faded, grid, stained).background < 1.1


def test_default_mode_has_fewer_seams_than_naive_tiling_on_real_he(fixtures_dir):
    from tdkstain.weights import load_generator
    from tdkstain.data.images import read_rgb

    g = load_generator(fixtures_dir / "official" / "official_G_ngf8.pth")
    he = read_rgb(fixtures_dir / "data" / "he_tiatoolbox_target.png")[:256, :256]
    naive = Stainer(g, device="cpu", tile=128, overlap=0, norm="tile")
    default = Stainer(g, device="cpu", tile=128, overlap=16)
    naive_score = seam_score(naive.stain_image(he), 0, grid=naive.grid(256, 256))
    default_score = seam_score(default.stain_image(he), 0, grid=default.grid(256, 256))
    assert default_score < naive_score
    assert abs(default_score - 1) < 0.1


# --------------------------------------------------------------------------- torch.compile path


@pytest.mark.slow
def test_compiled_staining_equals_eager_in_every_norm_mode():
    """compile=True gives the eager result (within float32 reordering) for own, global and kernel statistics."""
    torch.manual_seed(0)
    generator = ResnetGenerator(ngf=4, n_blocks=1, n_downsampling=2)
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(56, 72, 3), dtype=np.uint8)
    for norm in ("tile", "global", "kernel"):
        eager = Stainer(generator, device="cpu", tile=32, overlap=8, batch=2, norm=norm)
        compiled = Stainer(generator, device="cpu", tile=32, overlap=8, batch=2, norm=norm, compile=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a silent fallback to eager would pass the comparison
            got = compiled.stain_image(image, as_float=True)
        want = eager.stain_image(image, as_float=True)
        assert compiled._compile_error is None
        np.testing.assert_allclose(got, want, atol=2e-3, err_msg=norm)
        # the statistics are inputs of the compiled graph, not constants: other statistics, other output
        other = compiled.stain_image(255 - image, as_float=True)
        np.testing.assert_allclose(other, eager.stain_image(255 - image, as_float=True), atol=2e-3, err_msg=norm)


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    torch.manual_seed(0)
    generator = ResnetGenerator(ngf=4, n_blocks=1, n_downsampling=2)
    tiles = [np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)]

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    stainer = Stainer(generator, device="cpu", tile=32, overlap=0, norm="tile", compile=True)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler found.*eagerly"):
        got = stainer.stain_tiles(tiles)
    want = Stainer(generator, device="cpu", tile=32, overlap=0, norm="tile").stain_tiles(tiles)
    np.testing.assert_array_equal(got[0], want[0])
    assert stainer._compile_error is not None
