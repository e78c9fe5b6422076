"""The methods: TDKstain and the comparison methods of the paper's Table 1, each one module, one registry.

A method is a :class:`~tdkstain.methods.base.Method` subclass in its own
module, holding its options, its networks and its update phases; the base
owns the optimiser step and the learning-rate schedule. :data:`METHODS` is
the one list of them: config validation (``method:`` and its ``options:``),
the run folders' architecture checks, ``tdkstain benchmark``'s Table 1 and
the CLI's choices all read it. Adding a method is one module and one line
here (docs/ARCHITECTURE.md "Adding a method").

- ``tdkstain``: TDKstain and its ablations (zero loss weights).
- ``pix2pix``: U-Net + PatchGAN, vanilla GAN, L1 100.
- ``pyramidpix2pix``: pix2pix + Gaussian-pyramid L1 (BCI).
- ``pix2pixhd``: global G, multi-scale D, feature matching, VGG19.
- ``cyclegan``: two generators, two PatchGANs, cycle + identity, image pools.
- ``asp``: PatchNCE + adaptive supervised PatchNCE + Gaussian pyramid (MIST).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tdkstain.methods.asp import ASP
from tdkstain.methods.base import Method, Runtime
from tdkstain.methods.cyclegan import CycleGAN
from tdkstain.methods.pix2pix import Pix2pix
from tdkstain.methods.pix2pixhd import Pix2pixHD
from tdkstain.methods.pyramidpix2pix import PyramidPix2pix
from tdkstain.methods.tdkstain import TDKstain
from tdkstain.plumbing.errors import TdkstainError

if TYPE_CHECKING:
    from tdkstain.training.config import Config

__all__ = ["METHODS", "Method", "Runtime", "register_method", "create_method", "table1_methods"]

# config ``method`` -> class; the names are part of saved configs. In the paper's Table 1 order.
METHODS: dict[str, type[Method]] = {
    "cyclegan": CycleGAN,
    "pix2pix": Pix2pix,
    "pix2pixhd": Pix2pixHD,
    "pyramidpix2pix": PyramidPix2pix,
    "asp": ASP,
    "tdkstain": TDKstain,
}


def register_method(name: str, cls: type[Method]) -> None:
    """Add a method defined outside this package (a plugin, a test) under ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"register_method: {cls!r} is not a tdkstain.methods.base.Method subclass")
    METHODS[name] = cls


def create_method(cfg: Config, steps_per_epoch: int) -> Method:
    """The method ``cfg.method`` names, for a run of ``steps_per_epoch`` steps per epoch."""
    try:
        cls = METHODS[cfg.method]
    except KeyError:
        raise TdkstainError(f"method: unknown method {cfg.method!r}; known: {', '.join(METHODS)}") from None
    return cls(cfg, steps_per_epoch)


def table1_methods() -> dict[str, tuple[str, str]]:
    """``tdkstain benchmark`` rows: name -> (preset, display name), every registered method's, in registry order."""
    rows: dict[str, tuple[str, str]] = {}
    for cls in METHODS.values():
        rows.update(cls.table1)
    return rows
