"""pix2pix (Isola et al., CVPR 2017) and PyramidPix2pix (Liu et al., CVPRW 2022, the BCI baseline).

pix2pix, per iteration (junyanz/pytorch-CycleGAN-and-pix2pix ``pix2pix_model.py``):

1. D: ``L_D = 0.5 * (GAN(D(x, y), 1) + GAN(D(x, G(x)), 0))`` on a 70x70 PatchGAN;
2. G (D frozen): ``L_G = GAN(D(x, G(x)), 1) + w_L1 * L1(G(x), y)`` (w_L1 = ``loss.l1``, 100).

PyramidPix2pix adds ``sum_k w_k * L1(octave_k(G(x)), octave_k(y))`` over
the Gaussian-pyramid octaves 2..4 (``baseline.pyramid``; bupt-ai-cz/BCI
``--pattern L1_L2_L3_L4``, weight_L2 = weight_L3 = weight_L4 = 25, with
lambda_L1 = 25 and a ``resnet_9blocks`` generator with batch norm and dropout).
Real and fake pairs go through D in separate forwards, as pix2pix does
(batch-norm statistics would otherwise mix them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tdkstain.errors import TdkstainError
from tdkstain.methods.base import BaselineObjective, discriminator_update, generator_log, update
from tdkstain.methods.blocks import PatchDiscriminator, Pix2pixResnetGenerator, UnetGenerator
from tdkstain.methods.losses import bci_pyramid_l1
from tdkstain.objective import Batch, Nets, Optimizers, Runtime, Terms, frozen, gan_loss

__all__ = ["Pix2pixObjective", "PyramidPix2pixObjective"]


class Pix2pixObjective(BaselineObjective):
    """pix2pix: U-Net ``unet_256`` (``model.n_downsampling`` levels) + PatchGAN, vanilla GAN, L1."""

    def __init__(self, cfg, steps_per_epoch: int):
        super().__init__(cfg, steps_per_epoch)
        self.check_sizes()

    def check_sizes(self) -> None:
        levels, crop = self.cfg.model.n_downsampling, self.cfg.data.crop
        if levels < 5:
            raise TdkstainError(f"model.n_downsampling={levels}: the pix2pix U-Net needs at least 5 levels (unet_256: 8, unet_128: 7)")
        if crop % 2**levels:
            raise TdkstainError(
                f"data.crop={crop} is not a multiple of 2**model.n_downsampling = {2**levels} (U-Net levels); "
                f"use model.n_downsampling={max(5, (crop & -crop).bit_length() - 1)} or a crop that is a multiple of {2**levels}"
            )

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


class PyramidPix2pixObjective(Pix2pixObjective):
    """PyramidPix2pix: pix2pix with a ResNet generator and L1 on Gaussian-pyramid octaves."""

    def check_sizes(self) -> None:
        pass  # the ResNet generator takes any multiple of 2**n_downsampling, like TDKstain's

    def generator(self):
        m, o = self.cfg.model, self.options
        return Pix2pixResnetGenerator(3, 3, m.ngf, m.n_downsampling, m.n_blocks, o.norm, o.dropout)

    def extra_terms(self, fake: torch.Tensor, real: torch.Tensor) -> Terms:
        levels = bci_pyramid_l1(fake, real, list(self.options.pyramid))
        return {f"pyramid{k + 2}": term for k, term in enumerate(levels)}
