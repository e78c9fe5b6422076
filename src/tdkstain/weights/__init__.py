"""Weights: what users ship and load, and the pretrained files tdkstain finds offline.

- :mod:`~tdkstain.weights.cards`: our format, safetensors with a model card.
- :mod:`~tdkstain.weights.release`: the authors' ``.pth`` files (generator, and
  G/D/E to start a fine-tuning run).
- :mod:`~tdkstain.weights.generators`: a generator from any of those sources.
- :mod:`~tdkstain.weights.files`: pretrained files (Inception, VGG, LPIPS,
  DISTS, ImageNet backbones) located without downloading, checked by digest.

Nothing here imports training code: inference loads generators through this
package alone.
"""

from __future__ import annotations

import importlib

# name -> submodule: loaded on first use, so that ``tdkstain.weights.files`` (what the metrics need)
# does not load the networks that ``cards`` and ``release`` build.
_EXPORTS = {
    "WEIGHTS_FORMAT": "cards",
    "save_weights": "cards",
    "load_weights": "cards",
    "model_card": "cards",
    "save_network": "cards",
    "load_network": "cards",
    "GENERATOR_WEIGHT_PLACES": "generators",
    "load_generator": "generators",
    "load_generator_with_card": "generators",
    "find_generator_weights": "generators",
    "load_official_generator": "release",
    "read_official_state_dict": "release",
    "infer_generator_kwargs": "release",
    "load_release_training_state": "release",
    "release_training_files": "release",
    "sha256_of": "files",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"tdkstain.weights.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'tdkstain.weights' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
