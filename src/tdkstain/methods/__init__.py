"""The comparison methods of the paper's Table 1, trained by TDKstain's trainer.

Each method is an objective class with TDKstain's interface (see
``tdkstain.methods.base``), selected by ``method:`` in the config, with one
preset each in ``configs/`` that cites its source:

- ``pix2pix`` (``pix2pix.Pix2pixObjective``): U-Net + PatchGAN, vanilla GAN, L1 100.
- ``pyramidpix2pix`` (``pix2pix.PyramidPix2pixObjective``): pix2pix + Gaussian-pyramid L1 (BCI).
- ``pix2pixhd`` (``pix2pixhd.Pix2pixHDObjective``): global G, multi-scale D, feature matching, VGG19.
- ``cyclegan`` (``cyclegan.CycleGANObjective``): two generators, two PatchGANs, cycle + identity, pools.
- ``asp`` (``asp.ASPObjective``): PatchNCE + adaptive supervised PatchNCE + Gaussian pyramid (MIST).

TDKstain's own ablations are presets of method ``tdkstain``
(``tdkstain-no-nuclei``, ``tdkstain-no-membrane``, ``tdkstain-no-both``).
Importing this package adds the methods to ``tdkstain.objective.OBJECTIVES``
(``tdkstain.objective`` imports it at its end).
"""

from __future__ import annotations

from tdkstain import objective
from tdkstain.methods.asp import ASPObjective
from tdkstain.methods.cyclegan import CycleGANObjective
from tdkstain.methods.pix2pix import Pix2pixObjective, PyramidPix2pixObjective
from tdkstain.methods.pix2pixhd import Pix2pixHDObjective

# config ``method`` -> objective class (the names are part of saved configs).
METHOD_OBJECTIVES: dict[str, type] = {
    "pix2pix": Pix2pixObjective,
    "pyramidpix2pix": PyramidPix2pixObjective,
    "pix2pixhd": Pix2pixHDObjective,
    "cyclegan": CycleGANObjective,
    "asp": ASPObjective,
}
objective.OBJECTIVES.update(METHOD_OBJECTIVES)

__all__ = ["METHOD_OBJECTIVES", "ASPObjective", "CycleGANObjective", "Pix2pixObjective", "PyramidPix2pixObjective", "Pix2pixHDObjective"]
