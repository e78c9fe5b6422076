"""What a weights file may say, checked before anything is built from it.

A tdkstain weights file is untrusted input: its safetensors header and model
card (see :mod:`tdkstain.weights.cards`) are read and checked in this order,
and each step fails with a :class:`~tdkstain.plumbing.errors.TdkstainError`
that names the file, never with another exception:

1. :func:`read_header`: the header length (the file's first 8 bytes) is at
   most :data:`~tdkstain.plumbing.limits.MAX_CARD_BYTES` and fits in the file;
   at most :data:`MAX_TENSORS` tensors; each metadata value is decoded as JSON
   at most :data:`MAX_JSON_DEPTH` levels deep. Tensor names and shapes come
   from the header; no tensor data is read.
2. :func:`validate_card`: every field the loaders use has the type and range
   they expect (``format``, ``network``, ``kwargs``, ``value_range``,
   ``tile_size``, ``mpp``, ``config``, ``step``, ``images``, ...). A missing
   field means unknown, as in older cards.
3. :func:`check_architecture`: the network the card names is built on the
   meta device (no memory) and its state_dict keys and shapes compared with
   the file's before the real network is allocated.
4. :func:`check_finite`: loaded weights hold no NaN or inf.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from tdkstain.models import NETWORKS
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.plumbing.limits import MAX_CARD_BYTES, MAX_TILE_SIDE, check_number

__all__ = [
    "WEIGHTS_FORMAT",
    "MAX_JSON_DEPTH",
    "MAX_TENSORS",
    "MAX_KWARG_INT",
    "MAX_MPP",
    "Header",
    "read_header",
    "parse_metadata",
    "validate_card",
    "validate_kwargs",
    "shape_differences",
    "check_architecture",
    "check_finite",
]

WEIGHTS_FORMAT = "tdkstain.weights/1"

# A model card is a flat dict with a config a few levels deep; 64 levels is no card.
MAX_JSON_DEPTH = 64
# The largest network of tdkstain.models has a few hundred tensors at paper size.
MAX_TENSORS = 10_000
# Constructor arguments are channel counts and layer counts: 65,536 is far beyond any real one.
MAX_KWARG_INT = 65_536
# A list argument (e.g. channels of each layer) is short; a string argument is a name.
MAX_KWARG_LIST = 256
MAX_KWARG_STR = 256
# Microns per pixel: 0.25 at 40x, 1 at 10x; 100 um per pixel is no microscope image.
MAX_MPP = 100.0
# step / images counters of a training run.
MAX_COUNTER = 2**53
# Building a network on the meta device costs Python time per layer: stop a build that registers more
# modules, parameters and buffers than this many per tensor of the file (real networks: under 5), plus a base.
_BUILD_PER_TENSOR = 8
_BUILD_BASE = 20_000
# How much of a key list an error message shows before "... and N more", and of a value.
_SHOW_KEYS = 6
_SHOW_CHARS = 80


def _show(value: Any) -> str:
    """``repr(value)``, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= _SHOW_CHARS else text[: _SHOW_CHARS - 4] + " ..."


def _brief(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW_KEYS])
    return shown + (f" ... and {len(keys) - _SHOW_KEYS} more" if len(keys) > _SHOW_KEYS else "")


# --------------------------------------------------------------------------- 1. the header


@dataclass
class Header:
    """What a safetensors header says: the decoded metadata and each tensor's shape and dtype (no data)."""

    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)


def _header_length(path: Path) -> int:
    """The header length a safetensors file declares (its first 8 bytes), checked against the file and the cap."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as err:
        raise TdkstainError(f"{path}: cannot read the weights file ({err})") from err
    if len(head) < 8:
        raise TdkstainError(
            f"{path}: not a readable safetensors file ({size} bytes, shorter than the 8-byte header length). "
            "Export weights with 'tdkstain import-checkpoint' or the trainer."
        )
    length = int.from_bytes(head, "little")
    if length > size - 8:
        raise TdkstainError(
            f"{path}: not a readable safetensors file: its header claims {length:,} bytes but only {size - 8:,} "
            "follow the length field (a truncated file, or not safetensors)"
        )
    if length > MAX_CARD_BYTES:
        raise TdkstainError(
            f"{path}: the safetensors header (model card and tensor list) is {length:,} bytes, more than the "
            f"{MAX_CARD_BYTES:,} bytes tdkstain reads (tdkstain.plumbing.limits.MAX_CARD_BYTES); a tdkstain model "
            "card takes a few kB: not a tdkstain weights file, or a damaged one"
        )
    return length


def _json_depth(value: Any) -> int:
    """Nesting depth of decoded JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_metadata(raw: Mapping[str, str], path: Path) -> dict[str, Any]:
    """Each metadata value JSON-decoded (a value that is not JSON, as other tools write, stays the plain string).

    A value nested deeper than :data:`MAX_JSON_DEPTH` is an error, whether Python's
    decoder would have given up (RecursionError) or not.
    """
    metadata: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(value, str):  # safetensors gives str -> str; a caller may not
            raise TdkstainError(f"{path}: model card field {key!r} is a {type(value).__name__}, not a JSON string")
        try:
            decoded = json.loads(value)
        except RecursionError:
            decoded = None
            depth = MAX_JSON_DEPTH + 1
        except ValueError:  # not JSON (JSONDecodeError), or an integer of more digits than Python converts
            metadata[key] = value
            continue
        else:
            depth = _json_depth(decoded)
        if depth > MAX_JSON_DEPTH:
            raise TdkstainError(
                f"{path}: model card field {key!r} is nested more than {MAX_JSON_DEPTH} levels deep; "
                "a model card is a few flat fields: a damaged or hostile file"
            )
        metadata[key] = decoded
    return metadata


def read_header(path: str | os.PathLike) -> Header:
    """Metadata and tensor shapes of a safetensors file, read without loading any tensor data.

    Checks, in order: the file exists; its declared header length fits in the
    file and under :data:`~tdkstain.plumbing.limits.MAX_CARD_BYTES`; the
    header parses; it lists at most :data:`MAX_TENSORS` tensors; each
    metadata value decodes (:func:`parse_metadata`). The card's fields are
    not checked here (:func:`validate_card`).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise TdkstainError(f"{path}: no such weights file")
    _header_length(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw_meta = f.metadata() or {}
            names = list(f.keys())
            if len(names) > MAX_TENSORS:
                raise TdkstainError(
                    f"{path}: lists {len(names):,} tensors, more than the {MAX_TENSORS:,} of any tdkstain network"
                )
            shapes: dict[str, tuple[int, ...]] = {}
            dtypes: dict[str, str] = {}
            for name in names:
                piece = f.get_slice(name)
                shapes[name] = tuple(int(n) for n in piece.get_shape())
                dtypes[name] = str(piece.get_dtype())
    except TdkstainError:
        raise
    except Exception as err:  # safetensors raises its own error types and OSError
        raise TdkstainError(
            f"{path}: not a readable safetensors file ({type(err).__name__}: {err}). "
            "Export weights with 'tdkstain import-checkpoint' or the trainer."
        ) from err
    return Header(path, parse_metadata(raw_meta, path), shapes, dtypes)


# --------------------------------------------------------------------------- 2. the card's fields


def _field_error(path: Path, key: str, value: Any, expected: str) -> TdkstainError:
    return TdkstainError(f"{path}: model card field {key!r} is {_show(value)}; expected {expected}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(path: Path, key: str, value: Any, expected: str, low: float | None, high: float | None,
            integer: bool = False) -> float:
    """``check_number`` of a card field, after a type check whose message names the field, value and expectation."""
    if not _is_number(value) or (integer and isinstance(value, float) and not (math.isfinite(value) and value.is_integer())):
        raise _field_error(path, key, value, expected)
    if isinstance(value, int) and abs(value) > 2**64:  # beyond what float() converts; out of every range here
        raise _field_error(path, key, value, expected)
    return check_number(f"{path}: model card field {key!r}", value, low, high, integer=integer, hint=f"expected {expected}")


# What each annotation of a constructor parameter admits (annotations are strings under
# ``from __future__ import annotations``); an annotation not listed admits any JSON value.
_ANNOTATION_TYPES: dict[str, Any] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": _is_number,
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "None": lambda v: v is None,
}


def _admits(annotation: Any, value: Any) -> bool:
    if annotation is inspect.Parameter.empty:
        return True
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    for option in (part.strip() for part in text.split("|")):
        if option.startswith(("list", "tuple", "Sequence", "typing.")):
            if isinstance(value, list):
                return True
            continue
        check = _ANNOTATION_TYPES.get(option)
        if check is None or check(value):
            return True
    return False


def _check_kwarg_value(path: Path, key: str, value: Any, annotation: Any, in_list: bool = False) -> None:
    where = f"kwargs.{key}"
    if isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        if not 0 <= value <= MAX_KWARG_INT:
            raise _field_error(path, where, value, f"a whole number between 0 and {MAX_KWARG_INT:,}")
    elif isinstance(value, float):
        if not (math.isfinite(value) and abs(value) <= MAX_KWARG_INT):
            raise _field_error(path, where, value, f"a finite number between -{MAX_KWARG_INT:,} and {MAX_KWARG_INT:,}")
    elif isinstance(value, str):
        if len(value) > MAX_KWARG_STR:
            raise _field_error(path, where, value, f"a name of at most {MAX_KWARG_STR} characters")
    elif isinstance(value, list) and not in_list:
        if len(value) > MAX_KWARG_LIST:
            raise _field_error(path, where, value, f"a list of at most {MAX_KWARG_LIST} values")
        for item in value:
            _check_kwarg_value(path, key, item, inspect.Parameter.empty, in_list=True)
    else:
        raise _field_error(path, where, value, "a number, true/false, a string, null" + ("" if in_list else " or a list of those"))
    if not in_list and not _admits(annotation, value):
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
        raise _field_error(path, where, value, f"{text} (the type of that constructor argument)")


def validate_kwargs(network: str, kwargs: Any, path: str | os.PathLike) -> dict[str, Any]:
    """``kwargs`` if it is a dict of arguments that ``NETWORKS[network]``'s constructor takes, of sane types and sizes.

    Keys must be parameters of the constructor (``inspect.signature``) and
    every required parameter present; values are numbers (whole numbers in
    ``0 .. MAX_KWARG_INT``), true/false, short strings, null or short lists of
    those, of the type the parameter's annotation names.
    """
    path = Path(path)
    if not isinstance(network, str) or network not in NETWORKS:
        raise _field_error(path, "network", network, f"one of {', '.join(sorted(NETWORKS))}")
    if not isinstance(kwargs, dict):
        raise _field_error(path, "kwargs", kwargs, f"a JSON object of {network}'s constructor arguments")
    parameters = {
        name: p for name, p in inspect.signature(NETWORKS[network].__init__).parameters.items()
        if name != "self" and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    unknown = [k for k in kwargs if k not in parameters]
    if unknown:
        raise TdkstainError(
            f"{path}: model card field 'kwargs' names {_show(unknown[0])}, which is not an argument of {network}; "
            f"expected some of {', '.join(parameters)}"
        )
    required = [name for name, p in parameters.items() if p.default is inspect.Parameter.empty and name not in kwargs]
    if required:
        raise TdkstainError(f"{path}: model card field 'kwargs' lacks {', '.join(required)}, which {network} requires")
    for key, value in kwargs.items():
        _check_kwarg_value(path, key, value, parameters[key].annotation)
    return dict(kwargs)


def validate_card(metadata: Mapping[str, Any], path: str | os.PathLike, *, default_network: str | None = None) -> dict[str, Any]:
    """The card with every field the loaders use checked (and ``mpp`` made a float); errors name file, field, value.

    A missing field means unknown. ``kwargs`` is checked against the card's
    ``network``, or ``default_network`` when the card names none (a generator
    file without a network name is a ResnetGenerator). Fields not listed here
    (``source``, anything ``model_card(**extra)`` added) pass as they are.
    """
    path = Path(path)
    card = dict(metadata)
    if "format" in card:
        value = card["format"]
        if not isinstance(value, str):
            raise _field_error(path, "format", value, f"the string {WEIGHTS_FORMAT!r}")
        if value != WEIGHTS_FORMAT:
            raise TdkstainError(
                f"{path}: its model card is in format {_show(value)}, this tdkstain reads {WEIGHTS_FORMAT!r} "
                "(written by another tool, or by a newer tdkstain: upgrade)"
            )
    network = card.get("network", default_network)
    if "network" in card and (not isinstance(network, str) or network not in NETWORKS):
        raise _field_error(path, "network", network, f"one of {', '.join(sorted(NETWORKS))}")
    if card.get("kwargs") is not None:
        if network is None:
            if not isinstance(card["kwargs"], dict):
                raise _field_error(path, "kwargs", card["kwargs"], "a JSON object of constructor arguments")
        else:
            card["kwargs"] = validate_kwargs(network, card["kwargs"], path)
    if "value_range" in card:
        value = card["value_range"]
        if not (isinstance(value, list) and len(value) == 2 and all(_is_number(v) and math.isfinite(v) for v in value)
                and value[0] < value[1]):
            raise _field_error(path, "value_range", value, "[low, high], two finite numbers with low < high, e.g. [-1, 1]")
    if card.get("tile_size") is not None:
        _number(path, "tile_size", card["tile_size"], f"a tile side in pixels, 1 to {MAX_TILE_SIDE:,}, or null",
                1, MAX_TILE_SIDE, integer=True)
        card["tile_size"] = int(card["tile_size"])
    if card.get("mpp") is not None:
        expected = f"microns per pixel, a number above 0 and at most {MAX_MPP:g}, or null"
        value = _number(path, "mpp", card["mpp"], expected, 0, MAX_MPP)
        if not value > 0:
            raise _field_error(path, "mpp", value, expected)
        card["mpp"] = float(value)
    if card.get("config") is not None and not isinstance(card["config"], dict):
        raise _field_error(path, "config", card["config"], "a JSON object (the training config), or absent")
    for key in ("step", "images"):
        if card.get(key) is not None:
            _number(path, key, card[key], f"a whole number from 0 to {MAX_COUNTER:,}", 0, MAX_COUNTER, integer=True)
    if card.get("tdkstain_version") is not None and not (
            isinstance(card["tdkstain_version"], str) and len(card["tdkstain_version"]) <= MAX_KWARG_STR):
        raise _field_error(path, "tdkstain_version", card["tdkstain_version"], "a version string")
    if card.get("source") is not None and not isinstance(card["source"], (dict, str)):
        raise _field_error(path, "source", card["source"], "a JSON object or a string describing where the weights come from")
    return card


# --------------------------------------------------------------------------- 3. the architecture, on the meta device


def shape_differences(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]) -> list[str]:
    """What keeps ``found`` (a file's tensor shapes) from loading into ``expected`` (a network's): brief parts."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong_shape = [f"{k} {tuple(found[k])} vs {tuple(expected[k])}" for k in expected
                   if k in found and tuple(found[k]) != tuple(expected[k])]
    parts = []
    if missing:
        parts.append(f"missing keys: {_brief(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_brief(unexpected)}")
    if wrong_shape:
        parts.append(f"wrong shapes (file vs expected): {_brief(wrong_shape)}")
    return parts


class _BuildTooLarge(Exception):
    """Raised from a registration hook when a meta build grows beyond its budget."""


def _meta_network(name: str, kwargs: Mapping[str, Any], budget: int) -> nn.Module:
    """``NETWORKS[name](**kwargs)`` on the meta device, stopped once it registers ``budget`` modules and tensors."""
    from torch.nn.modules import module as torch_module

    owner, count = threading.get_ident(), [0]

    def hook(*_args: Any) -> None:
        if threading.get_ident() == owner:
            count[0] += 1
            if count[0] > budget:
                raise _BuildTooLarge

    handles = [
        torch_module.register_module_module_registration_hook(hook),
        torch_module.register_module_parameter_registration_hook(hook),
        torch_module.register_module_buffer_registration_hook(hook),
    ]
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Initializing zero-element tensors is a no-op" for 0 channels
            return NETWORKS[name](**kwargs)
    finally:
        for handle in handles:
            handle.remove()


def check_architecture(name: str, kwargs: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]],
                       path: str | os.PathLike, what: str | None = None) -> None:
    """Refuse a card whose network does not have exactly the file's tensors, before any memory is allocated.

    ``NETWORKS[name](**kwargs)`` is built on the meta device (shapes only),
    and a build that grows far beyond the file's tensor count is stopped, so a
    small file that claims a huge network fails in moments. ``shapes``: the
    file's tensor names (wrapper prefixes stripped) and shapes. The error is
    the one :func:`tdkstain.weights.cards._load_strict` gives for loaded tensors.
    """
    path = Path(path)
    what = what or f"a {name} with {dict(kwargs)}"
    budget = _BUILD_BASE + _BUILD_PER_TENSOR * len(shapes)
    try:
        network = _meta_network(name, kwargs, budget)
        expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    except _BuildTooLarge:
        raise TdkstainError(
            f"{path}: does not hold {what}; that network has far more layers than the file's {len(shapes)} tensors "
            f"(building it stopped after {budget:,} modules and tensors)"
        ) from None
    except RecursionError:
        raise TdkstainError(f"{path}: model card kwargs do not build a {name}: the network would nest too deep") from None
    except (TypeError, ValueError, RuntimeError, OverflowError, AttributeError, IndexError, KeyError, AssertionError) as err:
        raise TdkstainError(f"{path}: model card kwargs do not build a {name}: {str(err)[:300]}") from err
    parts = shape_differences(expected, shapes)
    if parts:
        raise TdkstainError(f"{path}: does not hold {what}; " + "; ".join(parts))


# --------------------------------------------------------------------------- 4. the weights themselves


def _finite(tensor: torch.Tensor) -> bool:
    """No NaN or inf in ``tensor``: one min/max pass (NaN propagates through both), no mask allocated."""
    if tensor.numel() == 0 or not (tensor.is_floating_point() or tensor.is_complex()):
        return True
    if tensor.is_complex():
        return bool(torch.isfinite(tensor).all())
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def check_finite(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Refuse weights that hold NaN or inf: such a network stains every image as garbage (e.g. all black)."""
    for key, tensor in tensors.items():
        if not _finite(tensor):
            bad = int((~torch.isfinite(tensor)).sum())
            raise TdkstainError(
                f"{path}: tensor {key!r} holds {bad:,} non-finite values (NaN or inf) of {tensor.numel():,}; "
                "these weights are broken (a diverged training run or a damaged file) and would stain garbage"
            )
