"""PyramidPix2pix (Liu et al., CVPRW 2022; the BCI dataset's baseline): pix2pix plus L1 on a Gaussian pyramid.

It adds ``sum_k w_k * L1(octave_k(G(x)), octave_k(y))`` over the
Gaussian-pyramid octaves 2..4 (``options.pyramid``; bupt-ai-cz/BCI
``--pattern L1_L2_L3_L4``, weight_L2 = weight_L3 = weight_L4 = 25, with
lambda_L1 = 25 and a ``resnet_9blocks`` generator with batch norm and dropout).
Everything else is :class:`tdkstain.methods.pix2pix.Pix2pix`.
"""

from __future__ import annotations

import torch
from pydantic import Field

from tdkstain.methods.base import Terms, check_tile_sizes
from tdkstain.methods.losses import bci_pyramid_l1
from tdkstain.methods.pix2pix import Pix2pix, Pix2pixOptions
from tdkstain.models.pix2pix import Pix2pixResnetGenerator

__all__ = ["PyramidPix2pix", "PyramidPix2pixOptions"]


class PyramidPix2pixOptions(Pix2pixOptions):
    """pix2pix's settings plus the pyramid's weights."""

    pyramid: list[float] = Field(default_factory=list, description="L1 weights of Gaussian-pyramid octaves 2, 3, 4 (BCI: 25 each)")


class PyramidPix2pix(Pix2pix):
    """PyramidPix2pix: pix2pix with a ResNet generator and L1 on Gaussian-pyramid octaves."""

    Options = PyramidPix2pixOptions
    table1 = {"pyramidpix2pix": ("pyramidpix2pix", "PyramidPix2pix")}

    @classmethod
    def check(cls, cfg) -> None:
        check_tile_sizes(cfg, 2**cfg.model.n_downsampling)

    def generator(self):
        m, o = self.cfg.model, self.options
        return Pix2pixResnetGenerator(3, 3, m.ngf, m.n_downsampling, m.n_blocks, o.norm, o.dropout)

    def extra_terms(self, fake: torch.Tensor, real: torch.Tensor) -> Terms:
        levels = bci_pyramid_l1(fake, real, list(self.options.pyramid))
        return {f"pyramid{k + 2}": term for k, term in enumerate(levels)}
