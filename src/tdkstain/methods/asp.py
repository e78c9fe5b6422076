"""ASP: adaptive supervised PatchNCE (Li et al., MICCAI 2023) on CUT's networks.

Settings from lifangda01/AdaptiveSupervisedPatchNCE, ``experiments/mist_launcher.py``
(their MIST HER2 run) on top of ``models/cpt_model.py`` defaults: CUT_mode
FastCUT (no identity NCE), resnet_6blocks generator (2 anti-aliased
downsamplings), PatchGAN n_layers_D 5 with ndf 32, instance norm, spectral
norm on every conv of G and D (``--weight_norm spectral``), LSGAN
(CUT's default ``gan_mode``), lambda_GAN 1, lambda_NCE 10 on nce_layers
0,4,8,12,16 with 256 patches, nce_T 0.07 and 256-wide MLP heads (netF
``mlp_sample``), lambda_asp 10 with ``asp_loss_mode lambda_linear``,
lambda_gp 10 with gp_weights [1/64, 1/32, 1/16, 1/8, 1/4, 1] (6 levels),
xavier init (gain 0.02), 30 + 10 epochs.

Networks, as the reference builds them (``tdkstain.methods.blocks``):
``generator`` (:class:`CUTResnetGenerator`), ``discriminator``
(:class:`CUTPatchDiscriminator`, unconditional, on IHC), ``projection``
(netF, :class:`PatchSampleMLP`, ASP's normalisation ``x / ||x + 1e-7||``).
``options.nce_layers`` index the generator's Sequential: 0, 4, 8, 12, 16 are
the input padding, the two downsampling convs and residual blocks 1 and 5.
``options.antialias=false`` gives CUT's stride-2 variant (there, the same
places are 0, 4, 7, 10, 14).

Per iteration (D first, then G and netF together, as ``CPTModel``):

1. D: ``0.5 * (GAN(D(y), 1) + GAN(D(G(x)), 0))``
2. G, netF: ``GAN(D(G(x)), 1) + w_nce * NCE(G(x) | x) + w_asp * ASP(G(x) | y) + w_gp * GP(G(x), y)``,
   where each NCE is the mean over layers of the mean PatchNCE over sampled
   patches (``losses.patch_nce``), ASP weighting each patch by
   ``losses.asp_weights`` on the epoch schedule.
"""

from __future__ import annotations

import torch

from typing import Literal

from pydantic import Field

from tdkstain.methods.base import Batch, Method, Nets, Optimizers, Runtime, Terms, check_tile_sizes, discriminator_update, frozen, generator_log, update
from tdkstain.methods.losses import asp_weights, gan_loss, gauss_pyramid_l1, patch_nce, positive_logits
from tdkstain.models.cut import CUTPatchDiscriminator, CUTResnetGenerator, PatchSampleMLP
from tdkstain.models.layers import sequential_features, xavier_init
from tdkstain.plumbing.sections import Section

__all__ = ["ASP", "ASPOptions", "layer_channels"]


class ASPOptions(Section):
    """ASP's own settings (its preset sets the MIST launcher's; the defaults here are neutral)."""

    norm: Literal["instance", "batch"] = Field("instance", description="generator and PatchGAN norm")
    spectral_norm: bool = Field(False, description="spectral norm on every conv of G and D (MIST launcher: --weight_norm spectral)")
    antialias: bool = Field(
        True,
        description="CUT's anti-aliased down/upsampling in G and D (the reference default; false = "
        "CUT's --no_antialias --no_antialias_up, stride-2 convs)",
    )
    nce: float = Field(10.0, ge=0, description="PatchNCE weight (lambda_NCE)")
    nce_layers: list[int] = Field(
        default_factory=lambda: [0, 4, 8, 12, 16],
        description="generator Sequential indices whose outputs PatchNCE compares (0,4,8,12,16 in the anti-aliased "
        "layout = input padding, the two downsampling convs, residual blocks 1 and 5; without antialias: 0,4,7,10,14)",
    )
    nce_patches: int = Field(256, ge=1, description="patches sampled per layer")
    nce_temperature: float = Field(0.07, gt=0)
    nce_dim: int = Field(256, ge=1, description="width of the MLP projection heads (netF_nc)")
    asp: float = Field(10.0, ge=0, description="adaptive supervised PatchNCE weight (lambda_asp)")
    asp_schedule: Literal["lambda_linear", "none"] = "lambda_linear"
    gaussian_pyramid: float = Field(0.0, ge=0, description="Gaussian-pyramid L1 weight (lambda_gp)")
    gaussian_pyramid_weights: list[float] = Field(default_factory=lambda: [1.0] * 6, description="per-level weights, finest first")


def layer_channels(generator: CUTResnetGenerator, layer_ids: list[int], size: int = 32) -> list[int]:
    """Channels of the generator's outputs at ``layer_ids`` (one tiny forward on zeros, no gradients)."""
    with torch.no_grad():
        x = torch.zeros(1, generator.init_kwargs["input_nc"], size, size)
        return [t.shape[1] for t in sequential_features(generator.model, layer_ids, x)]


class ASP(Method):
    """ASP on the MIST configuration: PatchNCE + adaptive supervised PatchNCE + Gaussian-pyramid L1."""

    Options = ASPOptions
    architecture_options = ("norm", "spectral_norm", "antialias", "nce_layers", "nce_dim")
    table1 = {"asp": ("asp", "ASP")}

    @classmethod
    def check(cls, cfg) -> None:
        check_tile_sizes(cfg, 2**cfg.model.n_downsampling)

    def networks(self) -> Nets:
        m, o = self.cfg.model, self.options
        generator = CUTResnetGenerator(3, 3, m.ngf, m.n_downsampling, m.n_blocks, o.antialias, o.spectral_norm)
        size = 2 ** (m.n_downsampling + 3)
        return {
            "generator": generator,
            "discriminator": CUTPatchDiscriminator(3, m.ndf, m.n_layers_d, o.norm, o.antialias, o.spectral_norm),
            "projection": PatchSampleMLP(layer_channels(generator, list(o.nce_layers), size), o.nce_dim),
        }

    def initialise(self, nets: Nets) -> Nets:
        for net in nets.values():
            xavier_init(net, 0.02)
        return nets

    def _nce(self, projection: PatchSampleMLP, query_features, key_features, batch: int, epoch: int | None,
             patch_ids: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Mean over layers of the mean (optionally ASP-weighted) PatchNCE; patch locations drawn from the keys
        (or ``patch_ids``, one index tensor per layer)."""
        o = self.options
        keys, ids = projection(key_features, o.nce_patches, patch_ids)
        queries, _ = projection(query_features, o.nce_patches, ids)
        total = torch.zeros((), device=keys[0].device)
        for q, k in zip(queries, keys):
            loss = patch_nce(q.float(), k.float(), batch, o.nce_temperature)
            if epoch is not None and o.asp_schedule == "lambda_linear":
                loss = loss * asp_weights(positive_logits(q.float(), k.float()), epoch, self.cfg.schedule.epochs,
                                          self.cfg.schedule.decay_epochs)
            total = total + loss.mean()
        return total / len(queries)

    def generator_terms(self, nets: Nets, he: torch.Tensor, ihc: torch.Tensor, fake: torch.Tensor, epoch: int, rt: Runtime,
                        patch_ids: dict[str, list[torch.Tensor]] | None = None) -> Terms:
        """``GAN(D(G(x)), 1)``, ``w_nce * NCE(G(x) | x)``, ``w_asp * ASP(G(x) | y)`` at 1-based ``epoch`` and
        ``w_gp * GP(G(x), y)`` (weighted, with graphs). ``patch_ids``: fixed locations ``{"nce": [...], "asp": [...]}``
        (tests); by default drawn anew."""
        generator, discriminator, projection = nets["generator"], nets["discriminator"], nets["projection"]
        o, ids = self.options, patch_ids or {}
        layers = list(o.nce_layers)
        terms: Terms = {}
        with rt.autocast():
            terms["gan"] = gan_loss([discriminator(fake)], True, self.loss.gan)
            features_fake = sequential_features(generator.model, layers, fake)
            if o.nce > 0:
                features_he = sequential_features(generator.model, layers, he)
                terms["nce"] = o.nce * self._nce(projection, features_fake, features_he, len(he), None, ids.get("nce"))
            if o.asp > 0:
                features_ihc = sequential_features(generator.model, layers, ihc)
                terms["asp"] = o.asp * self._nce(projection, features_fake, features_ihc, len(he), epoch, ids.get("asp"))
        if o.gaussian_pyramid > 0:
            terms["gaussian_pyramid"] = o.gaussian_pyramid * gauss_pyramid_l1(fake.float(), ihc, list(o.gaussian_pyramid_weights))
        return terms

    def train_step(self, step: int, nets: Nets, optimizers: Optimizers, batch: Batch, rt: Runtime) -> Terms:
        generator, discriminator, projection = nets["generator"], nets["discriminator"], nets["projection"]
        he, ihc = batch["he"], batch["ihc"]
        with rt.autocast():
            fake = generator(he)
        out = discriminator_update(discriminator, optimizers["discriminator"], ihc, fake.detach(), self.loss.gan, rt)
        with frozen(discriminator):
            terms = self.generator_terms(nets, he, ihc, fake, self.epoch(step), rt)
            total = sum(terms.values())
            update("generator", total, terms, [generator, projection], [optimizers["generator"], optimizers["projection"]], rt)
        return out | generator_log(terms, total)
