"""Comparison methods: networks at their papers' sizes, and every loss term against its formula in float64."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from tdkstain.training.config import PRESET_DIR, load_config
from tdkstain.methods import losses
from tdkstain.methods.cyclegan import ImagePool
from tdkstain.models.pix2pix import PatchDiscriminator, Pix2pixResnetGenerator, UnetGenerator
from tdkstain.models.cut import PatchSampleMLP
from tdkstain.models.vgg import VGG19Features
from tdkstain.models.layers import sequential_features
from tdkstain.methods.cyclegan import cycle_terms
from tdkstain.models.tdkstain import ResnetGenerator
from tdkstain.methods import create_method

PRESETS = ["pix2pix", "pyramidpix2pix", "pix2pixhd", "cyclegan", "asp",
           "tdkstain-no-nuclei", "tdkstain-no-membrane", "tdkstain-no-both"]


def stated_counts(preset: str) -> dict[str, int]:
    """``# params NAME: N`` lines of a preset's header comments."""
    text = (PRESET_DIR / f"{preset}.yaml").read_text()
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^# params (\w+): (\d+)", text, re.M)}


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_builds_with_the_parameter_count_its_comments_state(preset):
    stated = stated_counts(preset)
    assert stated, f"{preset}.yaml states no parameter counts"
    cfg = load_config(preset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pix2pixHD without VGG19 weights
        objective = create_method(cfg, 1)
    # Meta tensors: the paper-width networks (pix2pixHD's G has 182 M parameters) cost no memory.
    with torch.device("meta"):
        nets = objective.build_networks(0)
    counts = {name: sum(p.numel() for p in net.parameters()) for name, net in nets.items()}
    for name, n in stated.items():
        assert counts[name] == n, f"{preset}: {name} has {counts[name]} parameters, the preset says {n}"
    assert set(stated) == set(counts)


def test_reference_parameter_counts_of_the_published_code():
    # Numbers printed by junyanz/pytorch-CycleGAN-and-pix2pix at ngf = ndf = 64 (3 decimals, in M).
    with torch.device("meta"):
        assert round(sum(p.numel() for p in UnetGenerator(3, 3, 8, 64, "batch", True).parameters()) / 1e6, 3) == 54.414
        assert round(sum(p.numel() for p in PatchDiscriminator(6, 64, 3, "batch").parameters()) / 1e6, 3) == 2.769
        assert round(sum(p.numel() for p in ResnetGenerator(3, 3, 64, 2, 9).parameters()) / 1e6, 3) == 11.378
        assert round(sum(p.numel() for p in PatchDiscriminator(3, 64, 3, "instance").parameters()) / 1e6, 3) == 2.765


# ----------------------------------------------------------------------------- networks


def test_unet_shapes_skips_and_dropout():
    net = UnetGenerator(3, 3, num_downs=6, ngf=4, norm="batch", dropout=True)
    assert sum(isinstance(m, torch.nn.Dropout) for m in net.modules()) == 1  # num_downs - 5
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = net(x)
    assert y.shape == (2, 3, 64, 64) and y.abs().max() <= 1
    with pytest.raises(ValueError):
        UnetGenerator(num_downs=4)


def test_unet_skip_carries_the_leaky_relu_of_the_input():
    # pix2pix's in-place LeakyReLU rewrites the tensor its skip concatenates.
    net = UnetGenerator(3, 3, num_downs=5, ngf=2, norm="instance", dropout=False)
    block = net.model.inner  # the level below the outermost
    x = torch.randn(1, 2, 16, 16)
    out = block(x)
    assert torch.equal(out[:, :2], torch.nn.functional.leaky_relu(x, 0.2))


def test_resnet_generator_variants_and_patchgan_shapes():
    g = Pix2pixResnetGenerator(3, 3, ngf=4, n_downsampling=2, n_blocks=2, norm="batch", dropout=True)
    assert g(torch.zeros(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    assert sum(isinstance(m, torch.nn.Dropout) for m in g.modules()) == 2
    d = PatchDiscriminator(6, ndf=4, n_layers=3, norm="batch")
    # 70x70 PatchGAN on 256 px: 30x30 patches (pix2pix).
    assert d(torch.zeros(1, 6, 256, 256)).shape == (1, 1, 30, 30)
    sn = PatchDiscriminator(3, ndf=4, n_layers=5, norm="instance", spectral_norm=True)
    assert sum(k.endswith("weight_orig") for k in sn.state_dict()) == 7  # every conv, the references' keys


def test_sequential_features_are_the_layer_outputs():
    torch.manual_seed(0)
    g = ResnetGenerator(3, 3, ngf=4, n_downsampling=2, n_blocks=6)
    x = torch.randn(1, 3, 32, 32)
    layers = [0, 4, 7, 10, 14]
    got = sequential_features(g.model, layers, x)
    h, expected = x, {}
    for i, layer in enumerate(g.model):
        h = layer(h.clone())
        expected[i] = h.clone()
    for i, t in zip(layers, got):
        assert torch.equal(t, expected[i])
    assert [t.shape[1] for t in got] == [3, 8, 16, 16, 16]


def test_vgg19_layout_matches_torchvision_keys():
    vgg = VGG19Features()
    convs = [k for k in vgg.state_dict() if k.endswith(".weight")]
    assert convs == [f"features.{i}.weight" for i in (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)]
    feats = vgg(torch.zeros(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512, 512]
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]
    assert not any(p.requires_grad for p in vgg.parameters())


def test_patch_sampler_uses_the_same_locations_and_unit_norm():
    torch.manual_seed(0)
    f = PatchSampleMLP([3, 5], nc=8)
    a = [torch.randn(2, 3, 6, 6), torch.randn(2, 5, 3, 3)]
    out, ids = f(a, 4)
    assert [o.shape for o in out] == [(8, 8), (8, 8)]
    assert torch.allclose(out[0].norm(dim=1), torch.ones(8), atol=1e-5)
    again, _ = f(a, 4, ids)
    assert all(torch.equal(x, y) for x, y in zip(out, again))
    fresh, _ = f(a, 4)  # new locations
    assert not torch.equal(fresh[0], out[0])


def test_image_pool_keeps_history_in_buffers():
    torch.manual_seed(0)
    pool = ImagePool(2, 3, 4)
    first = torch.full((2, 3, 4, 4), 1.0)
    assert torch.equal(pool.query(first), first)
    assert int(pool.count) == 2
    seen = set()
    for v in range(2, 30):
        out = pool.query(torch.full((1, 3, 4, 4), float(v)))
        value = float(out.flatten()[0])
        assert value == v or value < v  # the new image, or an older one from the pool
        seen.add(value == v)
    assert seen == {True, False}  # both branches happen
    assert set(pool.state_dict()) == {"images", "count"}
    assert ImagePool(0, 3, 4).query(first) is first


# ----------------------------------------------------------------------------- losses, float64 references


def _np(t):
    return t.detach().double().numpy()


def test_patch_nce_against_float64_formula():
    rng = np.random.default_rng(0)
    b, p, c, tau = 2, 5, 4, 0.07
    q = rng.normal(size=(b * p, c))
    k = rng.normal(size=(b * p, c))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    got = losses.patch_nce(torch.from_numpy(q), torch.from_numpy(k), b, tau).numpy()
    expected = np.empty(b * p)
    for s in range(b):
        for i in range(p):
            row = s * p + i
            logits = [q[row] @ k[row]] + [(-10.0 if j == i else q[row] @ k[s * p + j]) for j in range(p)]
            logits = np.array(logits) / tau
            expected[row] = -logits[0] + np.log(np.exp(logits).sum())
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_asp_weights_lambda_linear_schedule():
    x = torch.tensor([0.5, -0.2, 0.9, 0.1], dtype=torch.float64)
    # Before the decay epochs: p = 1, uniform weights.
    assert torch.equal(losses.asp_weights(x, epoch=10, total_epochs=40, decay_epochs=10), torch.ones(4, dtype=torch.float64))
    # Epoch 35 of 30 + 10: t = 34/40, k = 0.75, m = 4, p = 4 - 4 * 0.85 = 0.6.
    p = 4 - 4 * 34 / 40
    w = p + (1 - p) * np.maximum(x.numpy(), 0)
    np.testing.assert_allclose(losses.asp_weights(x, 35, 40, 10).numpy(), w / w.sum() * 4, rtol=1e-12)


def _blur3_np(x):
    g = np.exp(-np.array([1.0, 0.0, 1.0]) / 2)
    g /= g.sum()
    x = ndimage.correlate1d(x, g, axis=-1, mode="mirror")
    return ndimage.correlate1d(x, g, axis=-2, mode="mirror")


def test_bci_pyramid_l1_against_float64_formula():
    rng = np.random.default_rng(1)
    fake, real = rng.uniform(-1, 1, (2, 3, 64, 64)), rng.uniform(-1, 1, (2, 3, 64, 64))
    weights = [25.0, 25.0, 25.0]
    got = [float(t) for t in losses.bci_pyramid_l1(torch.from_numpy(fake), torch.from_numpy(real), weights)]
    f, r, expected = fake, real, []
    for w in weights:
        for _ in range(4):
            f, r = _blur3_np(f), _blur3_np(r)
        f, r = f[..., ::2, ::2], r[..., ::2, ::2]
        expected.append(w * np.abs(f - r).mean())
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert losses.bci_pyramid(torch.from_numpy(fake), 3)[-1].shape[-1] == 8


def test_gauss_pyramid_l1_against_float64_formula():
    rng = np.random.default_rng(2)
    fake, real = rng.uniform(-1, 1, (1, 3, 64, 64)), rng.uniform(-1, 1, (1, 3, 64, 64))
    weights = [0.015625, 0.03125, 0.0625, 0.125, 0.25, 1.0]
    got = float(losses.gauss_pyramid_l1(torch.from_numpy(fake), torch.from_numpy(real), weights))
    k1 = np.array([1, 4, 6, 4, 1], float)
    kernel = np.outer(k1, k1) / 256

    def levels(x):
        out = []
        for _ in range(5):
            blurred = np.stack([[ndimage.correlate(x[b, c], kernel, mode="mirror") for c in range(3)] for b in range(len(x))])
            out.append(blurred)
            x = blurred[..., ::2, ::2]
        return out + [x]

    expected = np.mean([w * np.abs(a - b).mean() for w, a, b in zip(weights, levels(fake), levels(real))])
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_feature_matching_against_float64_formula():
    rng = np.random.default_rng(3)
    shapes = [(1, 4, 8, 8), (1, 8, 4, 4), (1, 1, 3, 3)]  # two feature blocks + final scores per scale
    fake = [[rng.normal(size=s) for s in shapes] for _ in range(2)]
    real = [[rng.normal(size=s) for s in shapes] for _ in range(2)]
    n_layers = 3
    got = float(losses.feature_matching([[torch.from_numpy(a) for a in sc] for sc in fake],
                                        [[torch.from_numpy(a) for a in sc] for sc in real], n_layers))
    expected = sum(0.5 * (4 / (n_layers + 1)) * np.abs(f - r).mean() for fs, rs in zip(fake, real) for f, r in zip(fs[:-1], rs[:-1]))
    assert got == pytest.approx(expected, rel=1e-6)  # accumulated in float32 like the training loss


def test_vgg_perceptual_against_float64_formula():
    rng = np.random.default_rng(4)
    fake = [rng.normal(size=(1, c, 4, 4)) for c in (2, 3, 4, 5, 6)]
    real = [rng.normal(size=(1, c, 4, 4)) for c in (2, 3, 4, 5, 6)]
    got = float(losses.vgg_perceptual([torch.from_numpy(a) for a in fake], [torch.from_numpy(a) for a in real]))
    expected = sum(w * np.abs(f - r).mean() for w, f, r in zip([1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0], fake, real))
    assert got == pytest.approx(expected, rel=1e-6)


def test_cycle_and_identity_against_float64_formula():
    rng = np.random.default_rng(5)
    x, y, rx, ry, ix, iy = (torch.from_numpy(rng.uniform(-1, 1, (2, 3, 8, 8))) for _ in range(6))
    terms = cycle_terms(x, y, rx, ry, ix, iy, cycle=10.0, identity=0.5)
    l1 = lambda a, b: np.abs(_np(a) - _np(b)).mean()  # noqa: E731
    assert float(terms["cycle_he"]) == pytest.approx(10 * l1(rx, x), rel=1e-12)
    assert float(terms["cycle_ihc"]) == pytest.approx(10 * l1(ry, y), rel=1e-12)
    assert float(terms["identity_ihc"]) == pytest.approx(5 * l1(iy, y), rel=1e-12)
    assert float(terms["identity_he"]) == pytest.approx(5 * l1(ix, x), rel=1e-12)
    assert set(cycle_terms(x, y, rx, ry, None, None, 10.0, 0.0)) == {"cycle_he", "cycle_ihc"}


def test_pix2pix_refuses_a_crop_the_unet_cannot_take():
    from tdkstain.plumbing.errors import TdkstainError

    cfg = load_config("pix2pix", ["data.crop=128"])
    with pytest.raises(TdkstainError, match="n_downsampling=7"):
        create_method(cfg, 1)


def test_pix2pixhd_warns_without_vgg19_and_uses_it_when_given(monkeypatch, tmp_path):
    from tdkstain.plumbing.errors import TdkstainError
    from tdkstain.methods import pix2pixhd
    from tdkstain.methods import Runtime

    overrides = ["model.ngf=4", "model.ndf=4", "model.n_blocks=1", "model.n_downsampling=2", "data.crop=32"]
    monkeypatch.setenv("TDKSTAIN_WEIGHTS", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.warns(UserWarning, match=r"vgg19-dcbb9e9d.pth .* not found; looked in: .*WITHOUT the VGG perceptual loss"):
        objective = create_method(load_config("pix2pixhd", overrides), 1)
    assert objective.vgg is None

    # A file that is not torchvision's VGG19 is refused by its digest; a missing one named.
    bogus = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(VGG19Features().state_dict(), bogus)
    with pytest.raises(TdkstainError, match="not the published torchvision ImageNet VGG19.*expected dcbb9e9d"):
        create_method(load_config("pix2pixhd", overrides + [f"options.vgg19_weights={tmp_path}"]), 1)
    with pytest.raises(TdkstainError, match="options.vgg19_weights: .*nowhere.pth: no such file"):
        create_method(load_config("pix2pixhd", overrides + [f"options.vgg19_weights={tmp_path / 'nowhere.pth'}"]), 1)

    # With a VGG19 (random stand-in weights) the generator step has the VGG and feature-matching terms.
    torch.manual_seed(0)
    from tdkstain.weights.files import KNOWN_WEIGHTS, WeightFile

    monkeypatch.setattr(pix2pixhd, "find_weights", lambda name, explicit: WeightFile(bogus, "x", False, KNOWN_WEIGHTS[name]))
    monkeypatch.setattr(pix2pixhd, "load_vgg19", lambda path: VGG19Features())
    objective = create_method(load_config("pix2pixhd", overrides), 1)
    nets = objective.build_networks(0)
    optimizers = {k: torch.optim.Adam(v.parameters(), lr=2e-4, betas=(0.5, 0.999)) for k, v in nets.items()}
    batch = {"he": torch.rand(1, 3, 32, 32) * 2 - 1, "ihc": torch.rand(1, 3, 32, 32) * 2 - 1}
    terms = objective.train_step(0, nets, optimizers, batch, Runtime())
    assert {"generator/vgg", "generator/feature_matching", "generator/gan", "discriminator/loss"} <= set(terms)
    assert all(torch.isfinite(v) for v in terms.values())


def test_cyclegan_unpaired_pairs_each_he_with_another_tiles_ihc():
    from tdkstain.methods.cyclegan import IhcHistory

    history = IhcHistory(batch=2, channels=1, size=1)
    first = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)
    assert history.swap(first).flatten().tolist() == [2.0, 1.0]  # nothing stored yet: within the batch
    second = torch.tensor([3.0, 4.0]).view(2, 1, 1, 1)
    assert history.swap(second).flatten().tolist() == [1.0, 2.0]  # the previous batch
    assert history.swap(torch.tensor([5.0]).view(1, 1, 1, 1)).flatten().tolist() == [3.0]  # a short last batch
    assert set(history.state_dict()) == {"images", "count"}
