"""Networks match the authors' release: key layout, sizes, and outputs of a released-format generator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tdkstain.models.tdkstain import MultiscaleDiscriminator, NucleiDensityEstimator, ResnetGenerator
from tdkstain.models.layers import count_parameters, init_weights
from conftest import OFFICIAL



def tiny_generator(**kwargs) -> ResnetGenerator:
    kwargs = {"ngf": 4, "n_blocks": 2, **kwargs}
    return init_weights(ResnetGenerator(**kwargs))


def tdkstain_networks(*overrides: str, seed: int = 0) -> dict[str, torch.nn.Module]:
    """G, D and E as the TDKstain method builds them (``tdkstain.methods.tdkstain``)."""
    from tdkstain.methods import create_method
    from tdkstain.training.config import build_config

    return create_method(build_config({}, list(overrides)), 1).build_networks(seed)


@pytest.fixture(scope="module")
def paper_networks():
    # The paper configuration on the meta device: layouts and counts without the memory.
    with torch.device("meta"):
        return tdkstain_networks()


def _keys_and_shapes(module: torch.nn.Module) -> list[list]:
    return [[key, list(value.shape)] for key, value in module.state_dict().items()]


def test_generator_keys_and_shapes_equal_release(paper_networks):
    reference = json.loads((OFFICIAL / "official_generator_keys.json").read_text())
    assert reference["config"]["ngf"] == 64 and reference["config"]["n_blocks"] == 9
    assert _keys_and_shapes(paper_networks["generator"]) == reference["state_dict_keys"]


def test_discriminator_and_estimator_keys_and_shapes_equal_release(paper_networks):
    reference = json.loads((OFFICIAL / "official_D_E_keys.json").read_text())
    assert _keys_and_shapes(paper_networks["discriminator"]) == reference["discriminator"]
    assert _keys_and_shapes(paper_networks["estimator"]) == reference["estimator"]


def test_paper_parameter_counts(paper_networks):
    # docs/method.md "Networks": G 45.6 M, D 8.3 M, E 6.8 M.
    assert round(count_parameters(paper_networks["generator"]) / 1e6, 1) == 45.6
    assert round(count_parameters(paper_networks["discriminator"]) / 1e6, 1) == 8.3
    assert round(count_parameters(paper_networks["estimator"]) / 1e6, 1) == 6.8
    assert paper_networks["generator"].tap_channels == [128, 256, 512]
    assert paper_networks["generator"].tap_indices == (6, 9, 12)
    assert paper_networks["estimator"].init_kwargs["input_nc"] == 896


def test_release_generator_output_and_taps_equal_fixture():
    """The release's own ngf-8 weights and its outputs for a fixed input."""
    generator = ResnetGenerator(ngf=8).eval()
    generator.load_state_dict(torch.load(OFFICIAL / "official_G_ngf8.pth", map_location="cpu", weights_only=True))
    io = np.load(OFFICIAL / "official_G_ngf8_io.npz")
    with torch.no_grad():
        output, taps = generator.forward_with_taps(torch.from_numpy(io["input"]))
        encoded = generator.encode(torch.from_numpy(io["input"]))
        plain = generator(torch.from_numpy(io["input"]))
    np.testing.assert_allclose(output.numpy(), io["output"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(plain.numpy(), io["output"], rtol=0, atol=1e-5)
    assert len(taps) == len(encoded) == 3
    for k in range(3):
        np.testing.assert_allclose(taps[k].numpy(), io[f"feat{k + 1}"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(encoded[k].numpy(), io[f"feat{k + 1}"], rtol=0, atol=1e-5)


def test_release_discriminator_and_estimator_outputs_equal_fixture():
    """TDKstain's D and E as the method builds them, with the release's weights: the release's outputs."""
    from tdkstain.training.config import build_config
    from tdkstain.methods import create_method

    cfg = build_config({}, ["model.ngf=8", "model.ndf=8", "model.nef=16", "model.estimator_blocks=4", "data.crop=128"])
    nets = create_method(cfg, 1).build_networks(0)
    discriminator, estimator = nets["discriminator"].eval(), nets["estimator"].eval()
    discriminator.load_state_dict(torch.load(OFFICIAL / "official_D_ndf8.pth", map_location="cpu", weights_only=True))
    estimator.load_state_dict(torch.load(OFFICIAL / "official_E_nef16.pth", map_location="cpu", weights_only=True))
    io = {k: torch.from_numpy(v) for k, v in np.load(OFFICIAL / "official_D_E_io.npz").items()}
    with torch.no_grad():
        scores = discriminator(torch.cat([io["he"], io["ihc"]], 1))
        taps = [io[f"tap{k}"] for k in range(3)]
        estimate, estimate_128 = estimator(taps, (64, 64)), estimator(taps, (128, 128))
    assert [tuple(s.shape[-2:]) for s in scores] == [(14, 14), (6, 6), (2, 2)]  # padding 1, as the release
    for k, s in enumerate(scores):
        np.testing.assert_allclose(s.numpy(), io[f"d_scale{k}"].numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(estimate.numpy(), io["estimate"].numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(estimate_128.numpy(), io["estimate_128"].numpy(), rtol=0, atol=1e-5)


def test_pix2pixhd_padding_computes_another_function_with_the_same_weights():
    """The release's D weights in a padding-2 D (tdkstain 0.1) give other scores: why the padding is recorded."""
    state = torch.load(OFFICIAL / "official_D_ndf8.pth", map_location="cpu", weights_only=True)
    io = np.load(OFFICIAL / "official_D_E_io.npz")
    pair = torch.cat([torch.from_numpy(io["he"]), torch.from_numpy(io["ihc"])], 1)
    padded = MultiscaleDiscriminator(6, 8, 3, 3, padding=2).eval()
    padded.load_state_dict(state)
    with torch.no_grad():
        assert [tuple(s.shape[-2:]) for s in padded(pair)] == [(19, 19), (11, 11), (7, 7)]


def test_generator_shapes_taps_and_range():
    torch.manual_seed(0)
    generator = tiny_generator()
    x = torch.rand(2, 3, 64, 48) * 2 - 1
    with torch.no_grad():
        y, taps = generator.forward_with_taps(x)
    assert y.shape == (2, 3, 64, 48)
    assert float(y.detach().abs().max()) <= 1.0
    assert [tuple(t.shape) for t in taps] == [(2, 8, 32, 24), (2, 16, 16, 12), (2, 32, 8, 6)]
    assert generator.tap_channels == [8, 16, 32]
    assert all(float(t.min()) >= 0.0 for t in taps)  # taps are after the ReLU
    # The taps must be the values the decoder actually consumed: rerun the encoder prefix by hand.
    h = x
    with torch.no_grad():
        for layer in generator.model[:13]:
            h = layer(h)
    torch.testing.assert_close(taps[2], h, rtol=0, atol=0)


def test_generator_other_depths():
    generator = tiny_generator(n_downsampling=2, output_nc=1, n_blocks=1)
    assert generator.tap_indices == (6, 9)
    y, taps = generator.forward_with_taps(torch.zeros(1, 3, 16, 16))
    assert y.shape == (1, 1, 16, 16) and len(taps) == 2
    with pytest.raises(ValueError, match="padding_type"):
        ResnetGenerator(padding_type="circular")


def test_generator_batch_members_do_not_mix():
    # The objective runs G(x) and G(M*x) as one batch; instance norm keeps samples independent.
    torch.manual_seed(1)
    generator = tiny_generator().eval()
    a, b = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        both = generator(torch.cat([a, b]))
        # 1e-5: batch size changes the conv kernels' summation order; mixing would move values by ~0.1.
        torch.testing.assert_close(both[:1], generator(a), rtol=0, atol=1e-5)
        torch.testing.assert_close(both[1:], generator(b), rtol=0, atol=1e-5)


def test_generator_channels_last_matches():
    torch.manual_seed(2)
    generator = tiny_generator().eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        reference = generator(x)
        generator = generator.to(memory_format=torch.channels_last)
        y, taps = generator.forward_with_taps(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(y, reference, rtol=0, atol=1e-5)
    assert len(taps) == 3


def test_discriminator_scales_and_order():
    torch.manual_seed(3)
    discriminator = init_weights(MultiscaleDiscriminator(input_nc=6, ndf=8, n_layers=3, num_D=3, padding=2))
    pair = torch.rand(2, 6, 64, 64) * 2 - 1
    outputs = discriminator(pair)
    # pix2pixHD 4x4 convs with padding 2: 64 -> 33 -> 17 -> 9 (stride 2) -> 10 -> 11 (stride 1).
    assert [tuple(o.shape) for o in outputs] == [(2, 1, 11, 11), (2, 1, 7, 7), (2, 1, 5, 5)]
    # The release's padding 1 (the default): 128 px gives 14, 6 and 2 (official fixture).
    release = MultiscaleDiscriminator(input_nc=6, ndf=8, n_layers=3, num_D=3)
    assert [o.shape[-1] for o in release(torch.zeros(1, 6, 128, 128))] == [14, 6, 2]
    # Full resolution goes through layer2 (pix2pixHD order), the coarsest through layer0.
    pool = torch.nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
    torch.testing.assert_close(outputs[0], discriminator.layer2(pair))
    torch.testing.assert_close(outputs[2], discriminator.layer0(pool(pool(pair))))
    # count_include_pad=False: a constant image stays constant at the border after pooling.
    constant = torch.full((1, 6, 9, 9), 0.5)
    torch.testing.assert_close(discriminator.downsample(constant), torch.full((1, 6, 5, 5), 0.5))


def test_discriminator_intermediate_features():
    torch.manual_seed(4)
    plain = init_weights(MultiscaleDiscriminator(ndf=8, num_D=2))
    with_features = MultiscaleDiscriminator(ndf=8, num_D=2, get_intermediate_features=True)
    with_features.load_state_dict(plain.state_dict())  # same keys either way
    pair = torch.rand(1, 6, 48, 48)
    features = with_features(pair)
    outputs = plain(pair)
    assert len(features) == 2 and all(len(f) == 3 + 2 for f in features)
    assert [f.shape[1] for f in features[0]] == [8, 16, 32, 64, 1]
    for scale in range(2):
        torch.testing.assert_close(features[scale][-1], outputs[scale])


def test_discriminator_channel_cap():
    discriminator = MultiscaleDiscriminator(ndf=4, n_layers=5, num_D=1)
    convs = [m for m in discriminator.layer0 if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32, 32, 32, 1]  # capped at 8 * ndf


def test_estimator_resizes_taps_and_output():
    torch.manual_seed(5)
    generator = tiny_generator()
    estimator = init_weights(NucleiDensityEstimator(input_nc=sum(generator.tap_channels), nef=8, n_blocks=1))
    ihc = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        taps = generator.encode(ihc)
        density = estimator(taps, (64, 64))
    assert density.shape == (2, 1, 64, 64)
    assert float(density.min()) >= 0.0 and float(density.max()) <= 1.0
    # Reference computation with the release's formula written out.
    size = taps[0].shape[-2:]
    stacked = torch.cat(
        [torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=True) for t in taps], 1
    )
    with torch.no_grad():
        low = estimator.model(stacked)
    expected = torch.nn.functional.interpolate(low, size=(64, 64), mode="bilinear", align_corners=True)
    torch.testing.assert_close(density, expected)
    with torch.no_grad():
        assert estimator(taps, tuple(size)).shape[-2:] == size


def test_estimator_gradient_reaches_generator_encoder():
    # The nuclei regulariser trains G through a frozen E (docs/method.md, G step).
    generator = tiny_generator()
    estimator = NucleiDensityEstimator(input_nc=sum(generator.tap_channels), nef=4, n_blocks=1)
    estimator.requires_grad_(False)
    _, taps = generator.forward_with_taps(torch.rand(1, 3, 32, 32))
    estimator(taps, (32, 32)).mean().backward()
    assert generator.model[1].weight.grad is not None and float(generator.model[1].weight.grad.abs().sum()) > 0


def test_init_statistics():
    torch.manual_seed(6)
    networks = tdkstain_networks("model.ngf=16", "model.ndf=16", "model.nef=16", "model.n_blocks=2", "model.estimator_blocks=1")
    for net in networks.values():
        weights = torch.cat([m.weight.detach().flatten() for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))])
        biases = [m.bias.detach() for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
        assert weights.numel() > 10_000
        assert abs(float(weights.std()) - 0.02) < 0.001
        assert abs(float(weights.mean())) < 0.001
        assert all(float(b.abs().max()) == 0.0 for b in biases)
    # No norm layer carries parameters or buffers (instance norm, no running stats).
    for module in networks["generator"].modules():
        if isinstance(module, torch.nn.InstanceNorm2d):
            assert module.weight is None and module.running_mean is None


def test_built_networks_depend_on_the_seed_only_and_leave_the_global_stream_alone():
    small = ("model.ngf=4", "model.ndf=4", "model.nef=4", "model.n_blocks=1", "model.estimator_blocks=1")
    torch.manual_seed(7)
    state = torch.get_rng_state()
    a = tdkstain_networks(*small, seed=11)
    assert torch.equal(torch.get_rng_state(), state)  # global stream untouched
    b = tdkstain_networks(*small, seed=11)
    c = tdkstain_networks(*small, seed=12)
    for x, y in zip(a["generator"].parameters(), b["generator"].parameters()):
        assert torch.equal(x, y)
    assert not torch.equal(a["generator"].model[1].weight, c["generator"].model[1].weight)
    assert a["discriminator"].init_kwargs["input_nc"] == 6
