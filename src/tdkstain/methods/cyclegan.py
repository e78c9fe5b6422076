"""CycleGAN (Zhu et al., ICCV 2017): two generators, two PatchGANs, cycle and identity L1, image pools.

Networks (junyanz/pytorch-CycleGAN-and-pix2pix ``cycle_gan_model.py``
defaults: resnet_9blocks, ngf 64, instance norm, no dropout; 70x70 PatchGAN,
ndf 64; LSGAN; lambda_A = lambda_B = 10; lambda_identity 0.5; pool 50):
``generator`` G: H&E -> IHC, ``generator_ihc_to_he`` F: IHC -> H&E,
``discriminator`` D_ihc on IHC images, ``discriminator_he`` D_he on H&E
images (unconditional: the method never uses the pairing).

Per iteration, as the reference (G first, then D):

1. G and F (D's frozen), one loss:
   ``GAN(D_ihc(G(x)), 1) + GAN(D_he(F(y)), 1)
   + w_c * (L1(F(G(x)), x) + L1(G(F(y)), y))
   + w_c * w_i * (L1(G(y), y) + L1(F(x), x))``
2. D_ihc: ``0.5 * (GAN(D_ihc(y), 1) + GAN(D_ihc(pool_ihc(G(x))), 0))``,
   D_he likewise with ``pool_he(F(y))``.

The image pools (``options.pool_size``, crop-sized) live inside the
discriminators (``image_pool`` buffers), so checkpoints carry them.

``options.unpaired``: the method then never sees an aligned pair. The
data need not have pairs at all: H&E and IHC files are listed separately
(``tdkstain.data.pairs.discover_unpaired``; stems need not match) and each H&E
sample gets an independently drawn IHC tile (``tdkstain.data.UnpairedTiles``).
On top, each batch's H&E meets the IHC of the previous batch, kept in an
``ihc_history`` buffer of the IHC discriminator (the very first batch pairs
each H&E with another sample of its own batch, when it has one), so even a
paired dataset trains as an unpaired one.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pydantic import Field

from tdkstain.methods.base import Batch, Method, Nets, Optimizers, Runtime, Terms, check_tile_sizes, discriminator_update, frozen, generator_log, update
from tdkstain.methods.losses import gan_loss
from tdkstain.models.pix2pix import PatchDiscriminator
from tdkstain.models.tdkstain import ResnetGenerator
from tdkstain.plumbing.sections import Section

__all__ = ["CycleGAN", "CycleGANOptions", "ImagePool", "cycle_terms"]


class CycleGANOptions(Section):
    """CycleGAN's own settings (defaults: the reference's)."""

    norm: Literal["instance", "batch"] = Field("instance", description="PatchGAN norm (CycleGAN: instance)")
    spectral_norm: bool = Field(False, description="spectral norm on every conv of both discriminators")
    cycle: float = Field(10.0, ge=0, description="cycle-consistency weight (lambda_A = lambda_B)")
    identity: float = Field(0.5, ge=0, description="identity weight, times the cycle weight")
    pool_size: int = Field(50, ge=0, description="image pool of generated images (0: none)")
    unpaired: bool = Field(
        False,
        description="train on unpaired data: H&E and IHC files are listed separately (stems need not match, "
        "e.g. trainA/ + trainB/) and each H&E tile meets an independently drawn IHC tile",
    )


class ImagePool(nn.Module):
    """CycleGAN's image buffer (Shrivastava et al. 2017): D sees a history of generated images.

    Until ``pool_size`` images are stored, each new image is stored and
    returned; afterwards, with probability 1/2 a random stored image is
    returned and replaced by the new one, else the new one is returned.
    The stored images live in buffers (``images``, ``count``) so the
    trainer's checkpoint holds them; the coin flips come from torch's global
    generator, which the checkpoint restores too. ``(B, 3, S, S)`` in, same out.
    """

    def __init__(self, pool_size: int, channels: int, size: int) -> None:
        super().__init__()
        self.pool_size = pool_size
        self.register_buffer("images", torch.zeros(pool_size, channels, size, size))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.pool_size == 0:
            return images
        out = []
        for image in images.detach():
            n = int(self.count)
            if n < self.pool_size:
                self.images[n] = image
                self.count += 1
                out.append(image)
            elif float(torch.rand(())) > 0.5:
                slot = int(torch.randint(0, self.pool_size, ()))
                out.append(self.images[slot].clone())
                self.images[slot] = image
            else:
                out.append(image)
        return torch.stack(out)


def cycle_terms(x: torch.Tensor, y: torch.Tensor, reconstructed_x: torch.Tensor, reconstructed_y: torch.Tensor,
                identity_x: torch.Tensor, identity_y: torch.Tensor, cycle: float, identity: float) -> dict[str, torch.Tensor]:
    """CycleGAN's reconstruction terms: ``cycle * L1(F(G(x)), x)``, ``cycle * L1(G(F(y)), y)``,
    ``cycle * identity * L1(G(y), y)`` and ``cycle * identity * L1(F(x), x)`` (mean absolute error; generated images are cast to the real images' dtype, fp32 under autocast)."""
    terms = {
        "cycle_he": cycle * F.l1_loss(reconstructed_x.to(x.dtype), x),
        "cycle_ihc": cycle * F.l1_loss(reconstructed_y.to(y.dtype), y),
    }
    if identity > 0:
        terms["identity_ihc"] = cycle * identity * F.l1_loss(identity_y.to(y.dtype), y)
        terms["identity_he"] = cycle * identity * F.l1_loss(identity_x.to(x.dtype), x)
    return terms


class IhcHistory(nn.Module):
    """The previous batch's IHC, in buffers (checkpointed): ``swap(ihc)`` returns it and stores ``ihc``."""

    def __init__(self, batch: int, channels: int, size: int) -> None:
        super().__init__()
        self.register_buffer("images", torch.zeros(batch, channels, size, size))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def swap(self, ihc: torch.Tensor) -> torch.Tensor:
        n = len(ihc)
        partner = self.images[:n].clone() if int(self.count) >= n else ihc.roll(1, dims=0)
        self.images[:n] = ihc
        self.count.fill_(n)
        return partner


class CycleGAN(Method):
    """CycleGAN: two ResNet generators, two PatchGANs with image pools, LSGAN, cycle and identity L1."""

    Options = CycleGANOptions
    architecture_options = ("norm", "spectral_norm", "pool_size", "unpaired")
    table1 = {"cyclegan": ("cyclegan", "CycleGAN")}
    unpaired_data = True

    @classmethod
    def check(cls, cfg) -> None:
        check_tile_sizes(cfg, 2**cfg.model.n_downsampling)

    @classmethod
    def architecture_settings(cls, cfg) -> dict:
        values = super().architecture_settings(cfg)
        values["data.crop"] = cfg.data.crop if cfg.options.pool_size > 0 else None  # image pool buffers
        values["data.batch"] = cfg.data.batch if cfg.options.unpaired else None  # the IHC history buffer
        return values

    def networks(self) -> Nets:
        m, o = self.cfg.model, self.options
        nets: Nets = {
            "generator": ResnetGenerator(3, 3, m.ngf, m.n_downsampling, m.n_blocks),
            "generator_ihc_to_he": ResnetGenerator(3, 3, m.ngf, m.n_downsampling, m.n_blocks),
            "discriminator": PatchDiscriminator(3, m.ndf, m.n_layers_d, o.norm, o.spectral_norm),
            "discriminator_he": PatchDiscriminator(3, m.ndf, m.n_layers_d, o.norm, o.spectral_norm),
        }
        for name in ("discriminator", "discriminator_he"):
            nets[name].add_module("image_pool", ImagePool(o.pool_size, 3, self.cfg.data.crop))
        if o.unpaired:
            nets["discriminator"].add_module("ihc_history", IhcHistory(self.cfg.data.batch, 3, self.cfg.data.crop))
        return nets

    def generator_terms(self, nets: Nets, x: torch.Tensor, y: torch.Tensor, rt: Runtime) -> tuple[Terms, torch.Tensor, torch.Tensor]:
        """The six generator terms (weighted, with graphs), ``G(x)`` and ``F(y)``: the reference's ``backward_G``."""
        g, f = nets["generator"], nets["generator_ihc_to_he"]
        d_ihc, d_he = nets["discriminator"], nets["discriminator_he"]
        o = self.options
        terms: Terms = {}
        with rt.autocast():
            fake_ihc = g(x)
            reconstructed_x = f(fake_ihc)
            fake_he = f(y)
            reconstructed_y = g(fake_he)
            identity_y = g(y) if o.identity > 0 else None
            identity_x = f(x) if o.identity > 0 else None
            terms["gan_ihc"] = gan_loss([d_ihc.model(fake_ihc)], True, self.loss.gan)
            terms["gan_he"] = gan_loss([d_he.model(fake_he)], True, self.loss.gan)
        terms |= cycle_terms(x, y, reconstructed_x, reconstructed_y, identity_x, identity_y, o.cycle, o.identity)
        return terms, fake_ihc, fake_he

    def train_step(self, step: int, nets: Nets, optimizers: Optimizers, batch: Batch, rt: Runtime) -> Terms:
        g, f = nets["generator"], nets["generator_ihc_to_he"]
        d_ihc, d_he = nets["discriminator"], nets["discriminator_he"]
        x, y = batch["he"], batch["ihc"]
        if self.options.unpaired:
            y = d_ihc.ihc_history.swap(y)
        with frozen(d_ihc, d_he):
            terms, fake_ihc, fake_he = self.generator_terms(nets, x, y, rt)
            total = sum(terms.values())
            update("generator", total, terms, [g, f], [optimizers["generator"], optimizers["generator_ihc_to_he"]], rt)
        out = generator_log(terms, total)

        for name, d, real, fake in (("discriminator", d_ihc, y, fake_ihc), ("discriminator_he", d_he, x, fake_he)):
            pooled = d.image_pool.query(fake.detach())
            out |= discriminator_update(d, optimizers[name], real, pooled, self.loss.gan, rt, name=name, score=d.model)
        return out
