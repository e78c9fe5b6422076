"""pix2pixHD (Wang et al., CVPR 2018), global generator, global generator, multi-scale D, feature matching, VGG19.

Per iteration (NVIDIA/pix2pixHD ``pix2pixHD_model.py``, defaults: ``--netG global``,
ngf 64, n_downsample_global 4, n_blocks_global 9, instance norm; num_D 2,
n_layers_D 3; LSGAN; lambda_feat 10):

1. D: ``L_D = 0.5 * (sum_s GAN(D_s(x, y), 1) + sum_s GAN(D_s(x, G(x)), 0))``;
2. G (D frozen): ``L_G = sum_s GAN(D_s(x, G(x)), 1) + 10 * FM + 10 * VGG``, with
   FM the GAN feature-matching loss (``losses.feature_matching``) and VGG the
   VGG19 perceptual loss (``losses.vgg_perceptual``, layer weights 1/32 ... 1).

As the reference's ``train.py``, both losses are computed with the same D:
G is updated first (D frozen), then D on the fake of that same iteration.
D's 4x4 convs pad by 2 (pix2pixHD's ``padw = ceil(3 / 2)``; TDKstain's
release pads by 1, ``model.d_padding``). Initialisation is pix2pixHD's
``weights_init``: conv weights N(0, 0.02), conv biases left at PyTorch's
default (uniform within +-1/sqrt(fan_in)). The VGG term needs the ImageNet VGG19 file ``vgg19-dcbb9e9d.pth``
(``options.vgg19_weights``, ``$TDKSTAIN_WEIGHTS``, ``~/.cache/tdkstain/weights``
or the torch hub cache: :func:`tdkstain.weights.files.find_weights`); without it the term is dropped
with a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from pydantic import Field

from tdkstain.methods.base import (
    Batch,
    Method,
    Nets,
    Optimizers,
    Runtime,
    Terms,
    check_tile_sizes,
    discriminator_update,
    frozen,
    generator_log,
    update,
)
from tdkstain.methods.losses import feature_matching, gan_loss, vgg_perceptual
from tdkstain.models.layers import init_weights
from tdkstain.models.tdkstain import MultiscaleDiscriminator, ResnetGenerator, multiscale_min_input
from tdkstain.models.vgg import VGG19Features
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.plumbing.sections import Section
from tdkstain.weights.files import MetricUnavailable, find_weights

__all__ = ["Pix2pixHD", "Pix2pixHDOptions", "load_vgg19"]


class Pix2pixHDOptions(Section):
    """pix2pixHD's own settings (its preset sets the published ones: feature matching 10, VGG 10)."""

    feature_matching: float = Field(0.0, ge=0, description="GAN feature-matching weight (lambda_feat, 10)")
    vgg: float = Field(0.0, ge=0, description="VGG19 perceptual weight (10); needs torchvision's vgg19-dcbb9e9d.pth")
    vgg19_weights: str | None = Field(None, description="torchvision ImageNet VGG19 file vgg19-dcbb9e9d.pth, or a folder holding it")


def load_vgg19(path: Path) -> VGG19Features:
    """VGG19 ``features`` from torchvision's ImageNet file (read with ``weights_only=True``; its digest checked by find_weights)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    vgg = VGG19Features()
    vgg.load_state_dict({k: v for k, v in state.items() if k.startswith("features.")})
    return vgg


class Pix2pixHD(Method):
    """pix2pixHD: global ResNet G, multi-scale D with feature matching, VGG19 perceptual loss."""

    Options = Pix2pixHDOptions
    d_padding = 2  # pix2pixHD's padw = ceil((4 - 1) / 2)
    table1 = {"pix2pixhd": ("pix2pixhd", "pix2pixHD")}

    def __init__(self, cfg, steps_per_epoch: int):
        super().__init__(cfg, steps_per_epoch)
        self.vgg: VGG19Features | None = None
        if self.options.vgg > 0:
            try:
                self.vgg = load_vgg19(find_weights("vgg19", self.options.vgg19_weights).path)
            except MetricUnavailable as err:
                if self.options.vgg19_weights is not None:
                    raise TdkstainError(f"options.vgg19_weights: {err}") from None
                warnings.warn(f"pix2pixHD: {err} Training WITHOUT the VGG perceptual loss.", stacklevel=2)

    @classmethod
    def check(cls, cfg) -> None:
        m = cfg.model
        check_tile_sizes(cfg, 2**m.n_downsampling, multiscale_min_input(m.n_layers_d, m.num_d, cfg.d_padding),
                         f"a {m.num_d}-scale discriminator (model.num_d) with {m.n_layers_d} layers padding {cfg.d_padding}")

    def networks(self) -> Nets:
        m = self.cfg.model
        return {
            "generator": ResnetGenerator(3, 3, m.ngf, m.n_downsampling, m.n_blocks),
            "discriminator": MultiscaleDiscriminator(6, m.ndf, m.n_layers_d, m.num_d, get_intermediate_features=True,
                                                     padding=self.cfg.d_padding),
        }

    def initialise(self, nets: Nets) -> Nets:
        """pix2pixHD's ``weights_init``: conv weights N(0, 0.02), biases as PyTorch initialised them."""
        for net in nets.values():
            init_weights(net, zero_bias=False)
        return nets

    def generator_terms(self, discriminator, he: torch.Tensor, ihc: torch.Tensor, fake: torch.Tensor, rt: Runtime) -> Terms:
        """``sum_s GAN(D_s(x, G(x)), 1)``, ``w_FM * FM`` and ``w_VGG * VGG`` (weighted, with graphs)."""
        terms: Terms = {}
        with rt.autocast():
            fake_features = discriminator(torch.cat([he, fake], 1))
            terms["gan"] = gan_loss(fake_features, True, self.loss.gan)
            if self.options.feature_matching > 0:
                with torch.no_grad():
                    real_features = discriminator(torch.cat([he, ihc], 1))
                terms["feature_matching"] = self.options.feature_matching * feature_matching(
                    fake_features, real_features, self.cfg.model.n_layers_d)
            if self.vgg is not None:
                self.vgg.to(fake.device)
                with torch.no_grad():
                    real_vgg = self.vgg(ihc)
                terms["vgg"] = self.options.vgg * vgg_perceptual(self.vgg(fake), real_vgg)
        return terms

    def train_step(self, step: int, nets: Nets, optimizers: Optimizers, batch: Batch, rt: Runtime) -> Terms:
        generator, discriminator = nets["generator"], nets["discriminator"]
        he, ihc = batch["he"], batch["ihc"]
        with rt.autocast():
            fake = generator(he)
        with frozen(discriminator):
            terms = self.generator_terms(discriminator, he, ihc, fake, rt)
            total = sum(terms.values())
            update("generator", total, terms, [generator], [optimizers["generator"]], rt)
        out = generator_log(terms, total)
        # D sees the fake G made before its update, as the reference's loss_D does.
        return out | discriminator_update(discriminator, optimizers["discriminator"], torch.cat([he, ihc], 1),
                                          torch.cat([he, fake.detach()], 1), self.loss.gan, rt)
