"""pix2pixHD (Wang et al., CVPR 2018), global generator, as a TDKstain-framework method.

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
(``baseline.vgg19_weights``, ``$TDKSTAIN_WEIGHTS``, ``~/.cache/tdkstain/weights``
or the torch hub cache); without it the term is dropped with a warning.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from tdkstain.errors import TdkstainError
from tdkstain.methods.base import BaselineObjective, discriminator_update, generator_log, update
from tdkstain.methods.blocks import VGG19Features
from tdkstain.methods.losses import feature_matching, vgg_perceptual
from tdkstain.networks import MultiscaleDiscriminator, ResnetGenerator, init_weights, multiscale_min_input
from tdkstain.objective import Batch, Nets, Optimizers, Runtime, Terms, check_tile_sizes, frozen, gan_loss

__all__ = ["Pix2pixHDObjective", "VGG19_FILE", "find_vgg19", "load_vgg19"]

VGG19_FILE = "vgg19-dcbb9e9d.pth"  # torchvision IMAGENET1K_V1; its sha256 starts with dcbb9e9d


def find_vgg19(explicit: str | os.PathLike | None) -> Path | None:
    """The VGG19 file: ``explicit`` (a file, or a folder holding ``vgg19-dcbb9e9d.pth``), else the
    metric weight folders (``tdkstain.metrics.weights.search_folders``); None when absent."""
    from tdkstain.metrics.weights import search_folders

    if explicit is not None:
        path = Path(explicit).expanduser()
        path = path / VGG19_FILE if path.is_dir() else path
        if not path.is_file():
            raise TdkstainError(f"baseline.vgg19_weights: {path}: no such file (torchvision's {VGG19_FILE})")
        return path
    for folder in search_folders():
        if (folder / VGG19_FILE).is_file():
            return folder / VGG19_FILE
    return None


def load_vgg19(path: Path) -> VGG19Features:
    """VGG19 ``features`` from torchvision's ImageNet file (read with ``weights_only=True``)."""
    from tdkstain.metrics.weights import sha256_of

    if not sha256_of(path).startswith("dcbb9e9d"):
        raise TdkstainError(f"{path}: not torchvision's ImageNet VGG19 ({VGG19_FILE}): its sha256 does not start with dcbb9e9d")
    state = torch.load(path, map_location="cpu", weights_only=True)
    vgg = VGG19Features()
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    vgg.load_state_dict(features)
    return vgg


class Pix2pixHDObjective(BaselineObjective):
    """pix2pixHD: global ResNet G, multi-scale D with feature matching, VGG19 perceptual loss."""

    def __init__(self, cfg, steps_per_epoch: int):
        super().__init__(cfg, steps_per_epoch)
        m = cfg.model
        check_tile_sizes(cfg, 2**m.n_downsampling, multiscale_min_input(m.n_layers_d, m.num_d, cfg.d_padding),
                         f"a {m.num_d}-scale discriminator (model.num_d) with {m.n_layers_d} layers padding {cfg.d_padding}")
        self.vgg: VGG19Features | None = None
        if self.options.vgg > 0:
            path = find_vgg19(self.options.vgg19_weights)
            if path is None:
                warnings.warn(
                    f"pix2pixHD: VGG19 weights ({VGG19_FILE}) not found in baseline.vgg19_weights, $TDKSTAIN_WEIGHTS, "
                    "~/.cache/tdkstain/weights or the torch hub cache; training WITHOUT the VGG perceptual loss",
                    stacklevel=2,
                )
            else:
                self.vgg = load_vgg19(path)

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
