"""Every network and loss that claims to be a reference's, tested by function against the reference code.

Each baseline's networks are built the way its tdkstain method builds them,
loaded with weights the reference code saved (``tests/fixtures/reference/<method>/``,
whose READMEs give the reference commit, constructor calls and seeds), and run
on the same inputs: outputs, intermediate features and every loss term must
equal the reference's to 1e-5 (relative tolerances for loss values of ~75).
TDKstain's own G, D and E against the authors' release are in
``test_networks.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import REFERENCE
from tdkstain.training.config import build_config
from tdkstain.models.pix2pix import UnetGenerator
from tdkstain.models.vgg import VGG19Features
from tdkstain.models.tdkstain import MultiscaleDiscriminator
from tdkstain.methods import Runtime, create_method

ATOL = 1e-5


def fixture(method: str) -> tuple[dict[str, torch.Tensor], callable]:
    """``(arrays, load)``: the io.npz arrays as tensors, and ``load(name)`` for a .pth of that method."""
    folder = REFERENCE / method
    arrays = {k: torch.from_numpy(v) for k, v in np.load(folder / "io.npz").items()}
    return arrays, lambda name: torch.load(folder / name, map_location="cpu", weights_only=True)


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 0.0) -> None:
    torch.testing.assert_close(actual.detach().float(), expected.float(), rtol=rtol, atol=ATOL)


def objective(method: str, *overrides: str):
    cfg = build_config({"method": method}, ["train.device=cpu", *overrides])
    return create_method(cfg, steps_per_epoch=1)


# ----------------------------------------------------------------------------- pix2pix


def test_pix2pix_unet_patchgan_and_losses_equal_the_reference():
    io, load = fixture("pix2pix")
    method = objective("pix2pix", "model.ngf=8", "model.ndf=8", "model.n_downsampling=8", "options.norm=batch",
                       "options.dropout=true", "loss.gan=vanilla", "loss.l1=100", "data.crop=256")
    nets = method.networks()
    nets["generator"].load_state_dict(UnetGenerator.reference_key_map(load("netG.pth")))
    nets["discriminator"].load_state_dict(load("netD.pth"))
    g, d = nets["generator"].eval(), nets["discriminator"].eval()
    a, b = io["real_A"], io["real_B"]
    with torch.no_grad():
        fake = g(a)
        close(fake, io["fake_B_eval"])
        close(d(torch.cat([a, fake], 1)), io["D_fake_eval"])
        close(d(torch.cat([a, b], 1)), io["D_real_eval"])
        d.train()  # batch statistics, as in training
        close(d(torch.cat([a, fake], 1)), io["D_fake_train"])
        close(d(torch.cat([a, b], 1)), io["D_real_train"])
        total, terms = _discriminator_terms(d, torch.cat([a, b], 1), torch.cat([a, fake], 1), "vanilla")
        close(terms["real"], io["loss_D_real"])
        close(terms["fake"], io["loss_D_fake"])
        close(total, io["loss_D"])
        g_terms = method.generator_terms(d, a, b, fake, Runtime())
    close(g_terms["gan"], io["loss_G_GAN"])
    close(g_terms["l1"], io["loss_G_L1"], rtol=1e-6)
    close(sum(g_terms.values()), io["loss_G"], rtol=1e-6)
    assert set(g_terms) == {"gan", "l1"}


def _discriminator_terms(d, real, fake, gan):
    from tdkstain.methods.base import discriminator_terms

    return discriminator_terms(d, real, fake, gan, Runtime())


def test_unet_reference_key_map_covers_every_key():
    _, load = fixture("pix2pix")
    mapped = UnetGenerator.reference_key_map(load("netG.pth"))
    ours = UnetGenerator(3, 3, 8, 8, "batch", True).state_dict()
    assert set(mapped) == set(ours)
    assert all(mapped[k].shape == ours[k].shape for k in ours)


# ----------------------------------------------------------------------------- PyramidPix2pix


def test_pyramidpix2pix_networks_octaves_and_losses_equal_the_reference():
    from tdkstain.methods.losses import bci_pyramid

    io, load = fixture("pyramidpix2pix")
    method = objective("pyramidpix2pix", "model.ngf=8", "model.ndf=8", "model.n_downsampling=2", "model.n_blocks=9",
                       "options.norm=batch", "options.dropout=true", "loss.gan=vanilla", "loss.l1=25",
                       "options.pyramid=[25,25,25]", "data.crop=128")
    nets = method.networks()
    nets["generator"].load_state_dict(load("netG.pth"))
    nets["discriminator"].load_state_dict(load("netD.pth"))
    g, d = nets["generator"].eval(), nets["discriminator"].eval()
    a, b = io["real_A"], io["real_B"]
    with torch.no_grad():
        fake = g(a)
        close(fake, io["fake_B_eval"])
        close(d(torch.cat([a, fake], 1)), io["D_fake_eval"])
        close(d(torch.cat([a, b], 1)), io["D_real_eval"])
        for k, (f, r) in enumerate(zip(bci_pyramid(fake, 3), bci_pyramid(b, 3))):
            close(f, io[f"octave{k + 2}_fake"])
            close(r, io[f"octave{k + 2}_real"])
        d.train()
        close(d(torch.cat([a, fake], 1)), io["D_fake_train"])
        close(d(torch.cat([a, b], 1)), io["D_real_train"])
        total, terms = _discriminator_terms(d, torch.cat([a, b], 1), torch.cat([a, fake], 1), "vanilla")
        close(total, io["loss_D"])
        g_terms = method.generator_terms(d, a, b, fake, Runtime())
    expected = {"gan": "loss_G_GAN", "l1": "loss_G_L1", "pyramid2": "loss_G_L2", "pyramid3": "loss_G_L3", "pyramid4": "loss_G_L4"}
    assert set(g_terms) == set(expected)
    for ours, theirs in expected.items():
        close(g_terms[ours], io[theirs], rtol=1e-6)
    close(sum(g_terms.values()), io["loss_G"], rtol=1e-6)


# ----------------------------------------------------------------------------- pix2pixHD


def test_pix2pixhd_networks_features_and_losses_equal_the_reference():
    import torchvision

    io, load = fixture("pix2pixhd")
    method = objective("pix2pixhd", "model.ngf=4", "model.n_downsampling=4", "model.n_blocks=9", "model.ndf=4",
                       "model.n_layers_d=3", "model.num_d=2", "options.feature_matching=10", "options.vgg=0",
                       "data.crop=128")
    assert method.cfg.d_padding == 2  # pix2pixHD's own padding
    nets = method.networks()
    nets["generator"].load_state_dict(load("netG.pth"))
    nets["discriminator"].load_state_dict(MultiscaleDiscriminator.reference_key_map(load("netD.pth")))
    g, d = nets["generator"].eval(), nets["discriminator"].eval()
    # The fixture's VGG term used a random stand-in VGG19 (its README): rebuild it the same way.
    torch.manual_seed(4004)
    stand_in = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"], batch_norm=False)
    method.vgg = VGG19Features()
    method.vgg.features.load_state_dict(stand_in.state_dict())
    method.options = method.options.model_copy(update={"vgg": 10.0})
    a, b = io["real_A"], io["real_B"]
    with torch.no_grad():
        fake = g(a)
        close(fake, io["fake_B"])
        for kind, image in (("fake", fake), ("real", b)):
            features = d(torch.cat([a, image], 1))
            for s in range(2):
                for layer in range(5):
                    close(features[s][layer], io[f"D_{kind}_s{s}_l{layer}"])
        total, terms = _discriminator_terms(d, torch.cat([a, b], 1), torch.cat([a, fake], 1), "lsgan")
        close(terms["real"], io["loss_D_real"])
        close(terms["fake"], io["loss_D_fake"])
        close(total, io["loss_D"])
        g_terms = method.generator_terms(d, a, b, fake, Runtime())
    close(g_terms["gan"], io["loss_G_GAN"], rtol=1e-6)
    close(g_terms["feature_matching"], io["loss_G_GAN_Feat"], rtol=1e-6)
    close(g_terms["vgg"], io["loss_G_VGG"], rtol=1e-6)
    close(sum(g_terms.values()), io["loss_G"], rtol=1e-6)


def test_pix2pixhd_keeps_pytorchs_default_conv_biases():
    method = objective("pix2pixhd", "model.ngf=4", "model.ndf=4", "model.n_blocks=1", "options.vgg=0", "data.crop=64")
    nets = method.build_networks(0)
    for net in nets.values():
        convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
        # reference weights_init: N(0, 0.02) weights, biases left uniform in +-1/sqrt(fan_in), not zeroed
        assert all(c.bias.abs().max() > 0 for c in convs)
        for c in convs:
            fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(c.weight)  # what nn.Conv*'s reset_parameters uses
            assert c.bias.abs().max() <= 1 / fan_in**0.5
    weights = torch.cat([m.weight.flatten() for m in nets["generator"].modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(weights.std().item() - 0.02) < 0.002


def test_tdkstain_zeroes_its_biases_as_the_release_does():
    method = objective("tdkstain", "model.ngf=4", "model.ndf=4", "model.n_blocks=1", "model.nef=4", "model.estimator_blocks=1",
                       "model.num_d=1", "data.crop=64")
    for net in method.build_networks(0).values():
        assert all(float(m.bias.detach().abs().max()) == 0 for m in net.modules() if isinstance(m, torch.nn.Conv2d))


# ----------------------------------------------------------------------------- CycleGAN


def test_cyclegan_networks_and_losses_equal_the_reference():
    io, load = fixture("cyclegan")
    method = objective("cyclegan", "model.ngf=8", "model.ndf=8", "model.n_downsampling=2", "model.n_blocks=9",
                       "model.n_layers_d=3", "options.norm=instance", "options.cycle=10", "options.identity=0.5",
                       "options.pool_size=50", "data.crop=64")
    nets = method.networks()
    # netG_A: A (H&E) -> B (IHC); netD_A judges B.
    nets["generator"].load_state_dict(load("netG_A.pth"))
    nets["generator_ihc_to_he"].load_state_dict(load("netG_B.pth"))
    # The reference's keys are the PatchGAN's own (model.*); ours add the image pool's buffers.
    nets["discriminator"].load_state_dict(load("netD_A.pth"), strict=False)
    nets["discriminator_he"].load_state_dict(load("netD_B.pth"), strict=False)
    assert all(torch.equal(nets["discriminator"].state_dict()[k], v) for k, v in load("netD_A.pth").items())
    a, b = io["real_A"], io["real_B"]
    with torch.no_grad():
        terms, fake_b, fake_a = method.generator_terms(nets, a, b, Runtime())
        close(fake_b, io["fake_B"])
        close(fake_a, io["fake_A"])
        close(nets["generator_ihc_to_he"](fake_b), io["rec_A"])
        close(nets["generator"](fake_a), io["rec_B"])
        close(nets["generator"](b), io["idt_A"])
        close(nets["generator_ihc_to_he"](a), io["idt_B"])
        close(nets["discriminator"].model(b), io["D_A_real_B"])
        close(nets["discriminator_he"].model(a), io["D_B_real_A"])
        expected = {"gan_ihc": "loss_G_A", "gan_he": "loss_G_B", "cycle_he": "loss_cycle_A", "cycle_ihc": "loss_cycle_B",
                    "identity_ihc": "loss_idt_A", "identity_he": "loss_idt_B"}
        assert set(terms) == set(expected)
        for ours, theirs in expected.items():
            close(terms[ours], io[theirs], rtol=1e-6)
        close(sum(terms.values()), io["loss_G"], rtol=1e-6)
        # An empty pool returns the current fake: the reference's D losses.
        for name, real, fake, key in (("discriminator", b, fake_b, "loss_D_A"), ("discriminator_he", a, fake_a, "loss_D_B")):
            pooled = nets[name].image_pool.query(fake)
            close(pooled, fake)
            total, _ = _discriminator_terms(nets[name].model, real, pooled, "lsgan")
            close(total, io[key], rtol=1e-6)


# ----------------------------------------------------------------------------- ASP

ASP_LAYERS = (0, 4, 8, 12, 16)


def asp_method():
    return objective("asp", "model.ngf=8", "model.ndf=8", "model.n_downsampling=2", "model.n_blocks=6", "model.n_layers_d=5",
                     "options.spectral_norm=true", "options.antialias=true", "options.nce_layers=[0,4,8,12,16]",
                     "options.nce_patches=256", "options.nce_dim=256", "options.gaussian_pyramid=10",
                     "options.gaussian_pyramid_weights=[0.015625,0.03125,0.0625,0.125,0.25,1.0]",
                     "schedule.epochs=40", "schedule.decay_epochs=10", "data.crop=128")


@pytest.fixture(scope="module")
def asp():
    io, load = fixture("asp")
    method = asp_method()
    nets = method.networks()
    for name, file in (("generator", "netG.pth"), ("discriminator", "netD.pth"), ("projection", "netF.pth")):
        nets[name].load_state_dict(load(file))
        nets[name].eval()  # spectral norm with the stored u, v (no power iteration), as the fixture
    return io, method, nets


def test_asp_generator_discriminator_and_features_equal_the_reference(asp):
    from tdkstain.models.layers import sequential_features

    io, _, nets = asp
    g, d = nets["generator"], nets["discriminator"]
    with torch.no_grad():
        fake = g(io["real_A"])
        close(fake, io["fake_B"])
        close(d(fake), io["D_fake"])
        close(d(io["real_B"]), io["D_real"])
        features = sequential_features(g.model, list(ASP_LAYERS), io["real_A"])
        for layer, feature in zip(ASP_LAYERS, features):
            close(feature, io[f"feat_real_A_l{layer}"])
        ids = [io[f"nce_patch_ids_l{layer}"] for layer in ASP_LAYERS]
        projected, _ = nets["projection"](features, 256, ids)
    for layer, p in zip(ASP_LAYERS, projected):
        close(p, io[f"F_real_A_l{layer}"])


def test_asp_patchnce_and_adaptive_weights_equal_the_reference_for_every_epoch(asp):
    from tdkstain.methods.losses import asp_weights, patch_nce, positive_logits

    io, _, _ = asp
    q, k = io["nce_q"], io["nce_k"]
    per_patch = patch_nce(q, k, batch=1, temperature=0.07)
    close(per_patch, io["patchnce_per_patch"])
    for row, epoch in enumerate(io["epochs"].tolist()):
        weighted = per_patch * asp_weights(positive_logits(q, k), epoch, total_epochs=40, decay_epochs=10)
        close(weighted, io["asp_per_patch_by_epoch"][row])


def test_asp_gaussian_pyramid_equals_the_reference(asp):
    from tdkstain.methods.losses import lptn_gauss_pyramid

    io, _, _ = asp
    for level, image in enumerate(lptn_gauss_pyramid(io["real_B"], 5)):
        close(image, io[f"pyramid_real_B_level{level}"])


def test_asp_losses_equal_the_reference_for_every_epoch(asp):
    io, method, nets = asp
    ids = {kind: [io[f"{kind}_patch_ids_l{layer}"] for layer in ASP_LAYERS] for kind in ("nce", "asp")}
    a, b = io["real_A"], io["real_B"]
    with torch.no_grad():
        fake = nets["generator"](a)
        total, terms = _discriminator_terms(nets["discriminator"], b, fake, "lsgan")
        close(terms["fake"], io["loss_D_fake"])
        close(terms["real"], io["loss_D_real"])
        close(total, io["loss_D"])
        for row, epoch in enumerate(io["epochs"].tolist()):
            g_terms = method.generator_terms(nets, a, b, fake, epoch, Runtime(), patch_ids=ids)
            assert set(g_terms) == {"gan", "nce", "asp", "gaussian_pyramid"}
            close(g_terms["gan"], io["loss_G_GAN"])
            close(g_terms["nce"], io["loss_NCE"], rtol=1e-6)
            close(g_terms["gaussian_pyramid"], io["loss_GP"], rtol=1e-6)
            close(g_terms["asp"], io["loss_ASP_by_epoch"][row], rtol=1e-6)
            close(sum(g_terms.values()), io["loss_G_by_epoch"][row], rtol=1e-6)


def test_asp_epoch_is_one_based_as_the_reference_train_loop():
    method = asp_method()
    method.steps_per_epoch = 3
    assert [method.epoch(step) for step in (0, 2, 3, 119)] == [1, 1, 2, 40]
