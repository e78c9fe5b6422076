"""Our weights format: safetensors with a JSON model card ("tdkstain.weights/1").

A weights file's metadata carries a model card: which network (a name of
:data:`tdkstain.models.NETWORKS`), its constructor kwargs, the value range it
expects, the tile size and microns per pixel it was trained at, and the
training config. Every metadata value is stored JSON-encoded (safetensors
metadata is ``str -> str``), e.g.::

    {"format": "tdkstain.weights/1", "network": "ResnetGenerator",
     "kwargs": {"input_nc": 3, "output_nc": 3, "ngf": 64, ...},
     "value_range": [-1, 1], "tile_size": 1024, "mpp": 0.5, "config": {...}}

Loading never unpickles code: safetensors holds tensors only. Full training
state (optimisers, RNG, step counters) is the trainer's business
(``tdkstain.training.state``); this module is what users ship and load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from tdkstain import __version__
from tdkstain.models import NETWORKS
from tdkstain.plumbing.atomic import atomic_path
from tdkstain.plumbing.errors import TdkstainError

__all__ = [
    "WEIGHTS_FORMAT",
    "save_weights",
    "load_weights",
    "model_card",
    "save_network",
    "build_network",
    "load_network",
]

WEIGHTS_FORMAT = "tdkstain.weights/1"

# How much of a key list an error message shows before "... and N more".
_SHOW_KEYS = 6


# --------------------------------------------------------------------------- our format


def save_weights(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Path:
    """Write ``state_dict`` as safetensors with ``metadata`` as a JSON model card, atomically.

    Tensors are moved to CPU and made contiguous (channels_last weights are
    fine); tensors that share memory are copied, which safetensors requires.
    Each metadata value must be JSON-serialisable; ``"format"`` defaults to
    ``WEIGHTS_FORMAT``. Returns the final path.
    """
    from safetensors.torch import save as safetensors_bytes

    path = Path(path)
    card = {"format": WEIGHTS_FORMAT, **dict(metadata)}
    encoded: dict[str, str] = {}
    for key, value in card.items():
        try:
            encoded[str(key)] = json.dumps(value, sort_keys=True)
        except TypeError as err:
            raise TdkstainError(f"{path}: model card entry {key!r} is not JSON-serialisable ({err})") from err

    tensors: dict[str, torch.Tensor] = {}
    seen_storages: set[int] = set()
    for key, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise TdkstainError(f"{path}: state_dict entry {key!r} is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen_storages:
            tensor = tensor.clone()
        else:
            seen_storages.add(storage)
        tensors[key] = tensor
    # Encode in memory and write from Python: safetensors' own save_file loses a
    # failed final flush (a full disk) without an error; Python's write raises it.
    data = safetensors_bytes(tensors, metadata=encoded)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors file: ``(state_dict on CPU, metadata)``.

    Metadata values are JSON-decoded (a value that is not JSON, as written by
    other tools, is returned as the plain string). A safetensors file without
    metadata gives ``{}``.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise TdkstainError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw_meta = f.metadata() or {}
            state_dict = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:  # safetensors raises its own error types and OSError
        raise TdkstainError(
            f"{path}: not a readable safetensors file ({type(err).__name__}: {err}). "
            "Export weights with 'tdkstain import-checkpoint' or the trainer."
        ) from err
    metadata: dict[str, Any] = {}
    for key, value in raw_meta.items():
        try:
            metadata[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            metadata[key] = value
    if "format" in metadata and metadata["format"] != WEIGHTS_FORMAT:
        raise TdkstainError(
            f"{path}: its model card is in format {metadata['format']!r}, this tdkstain reads {WEIGHTS_FORMAT!r} "
            "(written by another tool, or by a newer tdkstain: upgrade)"
        )
    return state_dict, metadata


def model_card(
    network: nn.Module,
    *,
    tile_size: int | None = None,
    mpp: float | None = None,
    config: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The metadata that travels with a network's weights.

    ``network`` must be one of :data:`NETWORKS` (it knows its
    ``init_kwargs``). ``tile_size``: training tile side in pixels;
    ``mpp``: microns per pixel of the training images (None when unknown);
    ``config``: the resolved training config; ``extra``: any further
    JSON-serialisable entries (e.g. ``source``).
    """
    name = type(network).__name__
    if name not in NETWORKS:
        raise TypeError(f"model_card: unknown network class {name}; expected one of {sorted(NETWORKS)}")
    return {
        "format": WEIGHTS_FORMAT,
        "network": name,
        "kwargs": dict(network.init_kwargs),
        "value_range": [-1, 1],
        "tile_size": tile_size,
        "mpp": mpp,
        "config": dict(config) if config is not None else {},
        "tdkstain_version": __version__,
        **extra,
    }


def save_network(
    path: str | os.PathLike,
    network: nn.Module,
    *,
    tile_size: int | None = None,
    mpp: float | None = None,
    config: Mapping[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """``save_weights`` of ``network.state_dict()`` with its :func:`model_card`."""
    card = model_card(network, tile_size=tile_size, mpp=mpp, config=config, **extra)
    return save_weights(path, network.state_dict(), card)


def _brief(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW_KEYS])
    return shown + (f" ... and {len(keys) - _SHOW_KEYS} more" if len(keys) > _SHOW_KEYS else "")


def _load_strict(network: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path, what: str) -> None:
    """``load_state_dict`` with an error that names the file and the differences briefly."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing keys: {_brief(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_brief(unexpected)}")
        if wrong_shape:
            parts.append(f"wrong shapes (file vs expected): {_brief(wrong_shape)}")
        raise TdkstainError(f"{path}: does not hold {what}; " + "; ".join(parts))
    network.load_state_dict(state_dict, strict=True)


def build_network(name: str, kwargs: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], path: Path) -> nn.Module:
    """The network ``NETWORKS[name](**kwargs)`` with ``state_dict`` loaded strictly: the one place a card builds a network."""
    try:
        network = NETWORKS[name](**kwargs)
    except (TypeError, ValueError) as err:
        raise TdkstainError(f"{path}: model card kwargs do not build a {name}: {err}") from err
    _load_strict(network, state_dict, path, f"a {name} with {dict(kwargs)}")
    return network


def load_network(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build the network a tdkstain safetensors file describes and load its weights (eval mode).

    Returns ``(network, metadata)``.
    """
    path = Path(path)
    state_dict, metadata = load_weights(path)
    state_dict = _strip_wrapper_prefixes(state_dict)
    name = metadata.get("network")
    if name not in NETWORKS or not isinstance(metadata.get("kwargs"), dict):
        raise TdkstainError(
            f"{path}: no tdkstain model card (metadata 'network' = {name!r}); "
            f"expected one of {sorted(NETWORKS)} with its 'kwargs'"
        )
    return build_network(name, metadata["kwargs"], state_dict, path).to(map_location).eval(), metadata



def _strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the prefixes wrappers add to every key: DataParallel / DistributedDataParallel
    save under ``module.``, torch.compile under ``_orig_mod.``."""
    stripped = True
    while stripped and state_dict:
        stripped = False
        for prefix in ("module.", "_orig_mod."):
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
                stripped = True
    return state_dict
