"""pix2pix (Isola et al., CVPR 2017): U-Net generator, PatchGAN, vanilla GAN, L1.

Per iteration (junyanz/pytorch-CycleGAN-and-pix2pix ``pix2pix_model.py``):

1. D: ``L_D = 0.5 * (GAN(D(x, y), 1) + GAN(D(x, G(x)), 0))`` on a 70x70 PatchGAN;
2. G (D frozen): ``L_G = GAN(D(x, G(x)), 1) + w_L1 * L1(G(x), y)`` (w_L1 = ``loss.l1``, 100).

Real and fake pairs go through D in separate forwards, as pix2pix does
(batch-norm statistics would otherwise mix them). Networks and loss terms
are tested against the reference's outputs (tests/test_reference_methods.py).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
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
from tdkstain.methods.losses import gan_loss
from tdkstain.models.pix2pix import PatchDiscriminator, UnetGenerator
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.plumbing.sections import Section

__all__ = ["Pix2pix", "Pix2pixOptions"]


class Pix2pixOptions(Section):
    """pix2pix's own settings (its preset sets the published ones: batch norm, dropout)."""

    norm: Literal["instance", "batch"] = Field("instance", description="generator and PatchGAN norm (pix2pix: batch)")
    dropout: bool = Field(False, description="dropout 0.5 in the generator (pix2pix U-Net: on)")
    spectral_norm: bool = Field(False, description="spectral norm on every conv of the discriminator")


class Pix2pix(Method):
    """pix2pix: U-Net ``unet_256`` (``model.n_downsampling`` levels) + PatchGAN, vanilla GAN, L1."""

    Options = Pix2pixOptions
    architecture_options = ("norm", "dropout", "spectral_norm")
    table1 = {"pix2pix": ("pix2pix", "pix2pix")}

    @classmethod
    def check(cls, cfg) -> None:
        levels, crop = cfg.model.n_downsampling, cfg.data.crop
        if levels < 5:
            raise TdkstainError(f"model.n_downsampling={levels}: the pix2pix U-Net needs at least 5 levels (unet_256: 8, unet_128: 7)")
        if crop % 2**levels:
            raise TdkstainError(
                f"data.crop={crop} is not a multiple of 2**model.n_downsampling = {2**levels} (U-Net levels); "
                f"use model.n_downsampling={max(5, (crop & -crop).bit_length() - 1)} or a crop that is a multiple of {2**levels}"
            )
        check_tile_sizes(cfg, 2**levels)  # data.val_size too

    def generator(self):
        m, o = self.cfg.model, self.options
        return UnetGenerator(3, 3, m.n_downsampling, m.ngf, o.norm, o.dropout)

    def networks(self) -> Nets:
        m = self.cfg.model
        return {
            "generator": self.generator(),
            "discriminator": PatchDiscriminator(6, m.ndf, m.n_layers_d, self.options.norm, self.options.spectral_norm),
        }

    def extra_terms(self, fake: torch.Tensor, real: torch.Tensor) -> Terms:
        return {}

    def generator_terms(self, discriminator, he: torch.Tensor, ihc: torch.Tensor, fake: torch.Tensor, rt: Runtime) -> Terms:
        """``GAN(D(x, G(x)), 1)``, ``w_L1 * L1(G(x), y)`` and the method's extra terms (weighted, with graphs)."""
        terms: Terms = {}
        with rt.autocast():
            terms["gan"] = gan_loss([discriminator(torch.cat([he, fake], 1))], True, self.loss.gan)
        if self.loss.l1 > 0:
            terms["l1"] = self.loss.l1 * F.l1_loss(fake.float(), ihc)
        return terms | self.extra_terms(fake.float(), ihc)

    def train_step(self, step: int, nets: Nets, optimizers: Optimizers, batch: Batch, rt: Runtime) -> Terms:
        generator, discriminator = nets["generator"], nets["discriminator"]
        he, ihc = batch["he"], batch["ihc"]
        with rt.autocast():
            fake = generator(he)
        out = discriminator_update(discriminator, optimizers["discriminator"], torch.cat([he, ihc], 1),
                                   torch.cat([he, fake.detach()], 1), self.loss.gan, rt)
        with frozen(discriminator):
            terms = self.generator_terms(discriminator, he, ihc, fake, rt)
            total = sum(terms.values())
            update("generator", total, terms, [generator], [optimizers["generator"]], rt)
        return out | generator_log(terms, total)
