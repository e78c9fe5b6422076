"""Network architectures of every method, and the registry that model cards name them by.

- :mod:`~tdkstain.models.tdkstain`: TDKstain's G, D and E (the authors' release).
- :mod:`~tdkstain.models.pix2pix`: pix2pix's U-Net, PyramidPix2pix's ResNet generator, the PatchGAN.
- :mod:`~tdkstain.models.cut`: CUT/ASP's anti-aliased, spectral-normed generator and discriminator, PatchNCE heads.
- :mod:`~tdkstain.models.vgg`: VGG19 features for pix2pixHD's perceptual loss.
- :mod:`~tdkstain.models.layers`: the blocks they share.

Models import nothing of tdkstain outside this package: inference needs them
and nothing of training.
"""

from __future__ import annotations

from torch import nn

from tdkstain.models.cut import CUTPatchDiscriminator, CUTResnetGenerator, PatchSampleMLP
from tdkstain.models.layers import count_parameters, init_weights
from tdkstain.models.pix2pix import PatchDiscriminator, Pix2pixResnetGenerator, UnetGenerator
from tdkstain.models.tdkstain import MultiscaleDiscriminator, NucleiDensityEstimator, ResnetGenerator
from tdkstain.models.vgg import VGG19Features

# Network name in a model card -> class. A literal registry: the names are part of the
# weights file format (tdkstain.weights), so renaming a class must not change them.
NETWORKS: dict[str, type[nn.Module]] = {
    "ResnetGenerator": ResnetGenerator,
    "MultiscaleDiscriminator": MultiscaleDiscriminator,
    "NucleiDensityEstimator": NucleiDensityEstimator,
    "UnetGenerator": UnetGenerator,
    "Pix2pixResnetGenerator": Pix2pixResnetGenerator,
    "PatchDiscriminator": PatchDiscriminator,
    "CUTResnetGenerator": CUTResnetGenerator,
    "CUTPatchDiscriminator": CUTPatchDiscriminator,
}

# The NETWORKS that map H&E to IHC: what tdkstain.weights.load_generator builds and 'tdkstain translate' runs.
GENERATORS: tuple[str, ...] = ("ResnetGenerator", "UnetGenerator", "Pix2pixResnetGenerator", "CUTResnetGenerator")

__all__ = [
    "NETWORKS",
    "GENERATORS",
    "ResnetGenerator",
    "MultiscaleDiscriminator",
    "NucleiDensityEstimator",
    "UnetGenerator",
    "Pix2pixResnetGenerator",
    "PatchDiscriminator",
    "CUTResnetGenerator",
    "CUTPatchDiscriminator",
    "PatchSampleMLP",
    "VGG19Features",
    "init_weights",
    "count_parameters",
]
