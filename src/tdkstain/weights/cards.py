"""Our weights format: safetensors with a JSON model card ("tdkstain.weights/1").

A weights file's metadata carries a model card: which network (a name of
:data:`tdkstain.models.NETWORKS`), its constructor kwargs, the value range it
expects, the tile size and microns per pixel it was trained at, and the
training config. Every metadata value is stored JSON-encoded (safetensors
metadata is ``str -> str``), e.g.::

    {"format": "tdkstain.weights/1", "network": "ResnetGenerator",
     "kwargs": {"input_nc": 3, "output_nc": 3, "ngf": 64, ...},
     "value_range": [-1, 1], "tile_size": 1024, "mpp": 0.5, "config": {...}}

A card is untrusted input: :mod:`tdkstain.weights.validation` checks the
header's size, each field's type and range, and the architecture against
the tensor shapes (on the meta device) before anything is allocated, and
weights holding NaN or inf are refused. Loading never unpickles code:
safetensors holds tensors only. Full training
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
from tdkstain.plumbing.limits import MAX_CARD_BYTES
from tdkstain.weights.validation import (
    WEIGHTS_FORMAT,
    Header,
    check_architecture,
    check_finite,
    parse_metadata,
    read_header,
    shape_differences,
    validate_card,
    validate_kwargs,
)

__all__ = [
    "WEIGHTS_FORMAT",
    "save_weights",
    "load_weights",
    "model_card",
    "save_network",
    "build_network",
    "load_network",
    "read_card",
]


# --------------------------------------------------------------------------- our format


def save_weights(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Path:
    """Write ``state_dict`` as safetensors with ``metadata`` as a JSON model card, atomically.

    Tensors are moved to CPU and made contiguous (channels_last weights are
    fine); tensors that share memory are copied, which safetensors requires.
    Each metadata value must be JSON-serialisable and the card pass the checks
    loading applies (:func:`~tdkstain.weights.validation.validate_card`);
    ``"format"`` defaults to ``WEIGHTS_FORMAT``. Returns the final path.
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
    # A file we write must be one we read: the same checks as loading, before anything is written.
    validate_card(parse_metadata(encoded, path), path)
    # Encode in memory and write from Python: safetensors' own save_file loses a
    # failed final flush (a full disk) without an error; Python's write raises it.
    data = safetensors_bytes(tensors, metadata=encoded)
    if int.from_bytes(data[:8], "little") > MAX_CARD_BYTES:
        raise TdkstainError(
            f"{path}: the model card and tensor list take {int.from_bytes(data[:8], 'little'):,} bytes, more than "
            f"the {MAX_CARD_BYTES:,} a weights file may hold (tdkstain.plumbing.limits.MAX_CARD_BYTES)"
        )
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def read_card(path: str | os.PathLike, *, default_network: str | None = None) -> tuple[Header, dict[str, Any]]:
    """A weights file's header (tensor names and shapes, no data) and its checked model card.

    Everything :mod:`tdkstain.weights.validation` checks before a byte of
    tensor data is read: the header's size, the metadata's JSON and depth,
    every card field's type and range (``kwargs`` against ``network``, or
    ``default_network`` when the card names none). A card without some
    fields (older files, other tools) is fine: a missing field means unknown.
    """
    header = read_header(path)
    return header, validate_card(header.metadata, header.path, default_network=default_network)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, on CPU, refused if any is NaN or inf."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            state_dict = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:  # safetensors raises its own error types and OSError
        raise TdkstainError(
            f"{path}: not a readable safetensors file ({type(err).__name__}: {err}). "
            "Export weights with 'tdkstain import-checkpoint' or the trainer."
        ) from err
    check_finite(state_dict, path)
    return state_dict


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors file: ``(state_dict on CPU, metadata)``.

    Metadata values are JSON-decoded (a value that is not JSON, as written by
    other tools, is returned as the plain string) and the model card checked
    (:func:`read_card`) before any tensor is read; weights holding NaN or inf
    are refused. A safetensors file without metadata gives ``{}``.
    """
    header, card = read_card(path)
    return _read_tensors(header.path), card


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


def _load_strict(network: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path, what: str) -> None:
    """``load_state_dict`` with an error that names the file and the differences briefly."""
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    parts = shape_differences(expected, {k: tuple(v.shape) for k, v in state_dict.items()})
    if parts:
        raise TdkstainError(f"{path}: does not hold {what}; " + "; ".join(parts))
    network.load_state_dict(state_dict, strict=True)


def _build_checked(name: str, kwargs: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], path: Path) -> nn.Module:
    """``NETWORKS[name](**kwargs)`` with ``state_dict`` loaded strictly, for kwargs already checked on the meta device."""
    try:
        network = NETWORKS[name](**kwargs)
    except (TypeError, ValueError) as err:
        raise TdkstainError(f"{path}: model card kwargs do not build a {name}: {err}") from err
    _load_strict(network, state_dict, path, f"a {name} with {dict(kwargs)}")
    return network


def build_network(name: str, kwargs: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], path: Path) -> nn.Module:
    """The network ``NETWORKS[name](**kwargs)`` with ``state_dict`` loaded strictly: the one place a card builds a network.

    ``kwargs`` are checked (:func:`~tdkstain.weights.validation.validate_kwargs`)
    and the architecture compared with the tensors' shapes on the meta device
    before the network is allocated; NaN or inf weights are refused.
    """
    path = Path(path)
    kwargs = validate_kwargs(name, kwargs, path)
    check_architecture(name, kwargs, {k: tuple(v.shape) for k, v in state_dict.items()}, path)
    check_finite(state_dict, path)
    return _build_checked(name, kwargs, state_dict, path)


def load_network(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build the network a tdkstain safetensors file describes and load its weights (eval mode).

    The card is checked and the architecture compared with the file's tensor
    shapes (from the header) before any tensor is read or the network
    allocated. Returns ``(network, metadata)``.
    """
    header, card = read_card(path)
    path = header.path
    name = card.get("network")
    if name is None or not isinstance(card.get("kwargs"), dict):
        raise TdkstainError(
            f"{path}: no tdkstain model card (metadata 'network' = {name!r}); "
            f"expected one of {sorted(NETWORKS)} with its 'kwargs'"
        )
    check_architecture(name, card["kwargs"], _strip_wrapper_prefixes(header.shapes), path)
    state_dict = _strip_wrapper_prefixes(_read_tensors(path))
    return _build_checked(name, card["kwargs"], state_dict, path).to(map_location).eval(), card


def _strip_wrapper_prefixes(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Drop the prefixes wrappers add to every key: DataParallel / DistributedDataParallel
    save under ``module.``, torch.compile under ``_orig_mod.``. Values pass as they are (tensors or shapes)."""
    stripped = True
    while stripped and state_dict:
        stripped = False
        for prefix in ("module.", "_orig_mod."):
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
                stripped = True
    return state_dict
