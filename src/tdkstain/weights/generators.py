"""A generator from any source: a run folder, our safetensors, or the authors' ``.pth``.

What ``tdkstain translate`` and ``tdkstain slide`` load: :func:`load_generator`
and :func:`load_generator_with_card` accept a run folder (searched as
:data:`GENERATOR_WEIGHT_PLACES` lists), a tdkstain weights file or the
release's ``latest_net_G.pth``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tdkstain.models import GENERATORS
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.weights.cards import _build_checked, _read_tensors, _strip_wrapper_prefixes, model_card, read_card
from tdkstain.weights.release import infer_generator_kwargs, load_official_generator
from tdkstain.weights.validation import check_architecture

__all__ = ["GENERATOR_WEIGHT_PLACES", "find_generator_weights", "load_generator_with_card", "load_generator"]

# Where load_generator looks inside a run folder, first match wins: the
# trainer's latest then best generator (tdkstain.training writes
# RUN/weights/generator.safetensors and generator_best.safetensors), a folder
# that holds exported weights directly, and the authors' layout
# (checkpoints/NAME/latest_net_G.pth).
GENERATOR_WEIGHT_PLACES: tuple[str, ...] = (
    "weights/generator.safetensors",
    "weights/generator_best.safetensors",
    "generator.safetensors",
    "latest_net_G.pth",
)

_SAFETENSORS_SUFFIXES = (".safetensors",)


def find_generator_weights(run_dir: str | os.PathLike) -> Path:
    """The generator weights inside a run folder.

    Looks, in order, at ``RUN/`` + each of :data:`GENERATOR_WEIGHT_PLACES`:
    ``weights/generator.safetensors`` (the trainer's latest),
    ``weights/generator_best.safetensors`` (best by validation),
    ``generator.safetensors``, and the release's ``latest_net_G.pth`` (pass
    its ``checkpoints/NAME`` folder). To pick the best weights of a run that
    has both, pass the file itself.
    """
    run_dir = Path(run_dir)
    for place in GENERATOR_WEIGHT_PLACES:
        candidate = run_dir / place
        if candidate.is_file():
            return candidate
    raise TdkstainError(
        f"{run_dir}: no generator weights found; looked for {', '.join(GENERATOR_WEIGHT_PLACES)}. "
        "Pass the weights file itself, or a run folder written by 'tdkstain train'."
    )


def load_generator_with_card(
    path_or_run_dir: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """A generator (eval mode) and its model card, from any source :func:`load_generator` accepts.

    A tdkstain safetensors file builds the generator its card names, any of
    :data:`GENERATORS`: TDKstain's, pix2pixHD's, CycleGAN's and ASP's
    ``ResnetGenerator``, pix2pix's ``UnetGenerator`` or PyramidPix2pix's
    ``Pix2pixResnetGenerator`` (batch norm and dropout act as in eval mode:
    running statistics, no dropout). For a ``.pth`` or a safetensors file
    without a card, a ``ResnetGenerator`` is inferred from the keys and the
    card built with ``tile_size`` and ``mpp`` None. A card is checked
    (:mod:`tdkstain.weights.validation`) before it is used: the returned
    card's ``mpp`` is None or a positive float, ``tile_size`` None or a
    positive int; weights holding NaN or inf are refused.
    """
    path = Path(path_or_run_dir)
    if path.is_dir():
        path = find_generator_weights(path)
    if not path.is_file():
        raise TdkstainError(f"{path}: no such weights file or run folder")

    if path.suffix.lower() in _SAFETENSORS_SUFFIXES:
        # The card is checked, and the architecture against the header's tensor shapes on the meta
        # device, before any tensor data is read or the generator allocated.
        header, metadata = read_card(path, default_network="ResnetGenerator")
        shapes = _strip_wrapper_prefixes(header.shapes)
        name = metadata.get("network", "ResnetGenerator")
        if name not in GENERATORS:
            raise TdkstainError(f"{path}: holds a {name}, not a generator (one of {', '.join(GENERATORS)})")
        kwargs = metadata.get("kwargs")
        if kwargs is None:  # plain safetensors of a generator state_dict, e.g. converted elsewhere
            if name != "ResnetGenerator":
                raise TdkstainError(f"{path}: the model card names a {name} but has no 'kwargs' to build it with")
            kwargs = infer_generator_kwargs({k: torch.empty(shape, device="meta") for k, shape in shapes.items()}, path)
        check_architecture(name, kwargs, shapes, path)
        state_dict = _strip_wrapper_prefixes(_read_tensors(path))
        generator = _build_checked(name, kwargs, state_dict, path)
        card = (
            {**model_card(generator), **metadata, "network": name, "kwargs": dict(generator.init_kwargs)}
            if metadata
            else model_card(generator, source={"file": path.name})
        )
        return generator.to(map_location).eval(), card

    generator = load_official_generator(path, map_location)
    card = model_card(generator, source={"file": path.name, "kind": "authors' release checkpoint (.pth)"})
    return generator, card


def load_generator(path_or_run_dir: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """A ready generator (eval mode) from our safetensors, a run folder, or the authors' ``.pth``.

    Run folders are searched as :func:`find_generator_weights` documents.
    """
    return load_generator_with_card(path_or_run_dir, map_location)[0]

