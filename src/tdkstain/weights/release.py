"""The authors' release: their ``.pth`` checkpoints, read safely, as tdkstain networks.

- :func:`read_official_state_dict`: tensors of a PyTorch checkpoint with
  ``torch.load(weights_only=True)`` (a pickle that names any callable is
  refused), wrapper prefixes stripped, common wrapping dicts unwrapped.
- :func:`infer_generator_kwargs` / :func:`load_official_generator`: the
  release's ``latest_net_G.pth`` as :class:`tdkstain.models.ResnetGenerator`,
  its sizes read from the tensor shapes.
- :func:`load_release_training_state`: the release's G, D and E
  (``latest_net_{G,D,E}.pth``) into the networks of a new TDKstain run, each
  file's shapes compared with the run's networks first.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from tdkstain.models import ResnetGenerator
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.weights.cards import _load_strict, _strip_wrapper_prefixes
from tdkstain.weights.validation import _brief, check_architecture, check_finite

__all__ = [
    "read_official_state_dict",
    "infer_generator_kwargs",
    "load_official_generator",
    "RELEASE_FILES",
    "release_training_files",
    "load_release_training_state",
]




def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unpickler_reason(err: Exception) -> str:
    """The one informative clause of torch's weights_only refusal (it names the forbidden global)."""
    text = str(err)
    match = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if match:
        return f"it names {match.group(1)}, which is neither a tensor nor a plain container"
    match = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    if match:
        return match.group(1).strip()[:200]
    return type(err).__name__


def read_official_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a PyTorch checkpoint, read without running code from it.

    ``torch.load(weights_only=True)`` only rebuilds tensors and plain
    containers; a pickle that names any other callable is refused with a
    TdkstainError. A ``module.`` prefix (DataParallel saves) or
    ``_orig_mod.`` (torch.compile) is stripped. A
    dict that wraps the state_dict under ``networks.generator`` (our
    training checkpoints), ``state_dict``, ``generator``, ``netG`` or
    ``model`` is unwrapped. A tensor whose shape claims more data than the
    file holds (a stride-0 view) and weights holding NaN or inf are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise TdkstainError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err) and "Unsupported global" not in str(err):
            # Not a pickle at all (garbage, a truncated file): torch reports that as an UnpicklingError too.
            raise TdkstainError(f"{path}: not a readable PyTorch checkpoint ({str(err).splitlines()[0][:200]})") from err
        raise TdkstainError(
            f"{path}: refused to load: the file is not a plain tensor checkpoint, it asks to run or build "
            f"Python objects ({_unpickler_reason(err)}). Only state_dicts saved with torch.save(net.state_dict()) "
            "are accepted; loading this file without that check could execute code."
        ) from err
    except Exception as err:  # truncated zip, not a torch file at all, ...
        raise TdkstainError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err

    if not _is_state_dict(obj) and isinstance(obj, Mapping):
        # Wrapped state_dicts: common training-script layouts, and our own
        # training checkpoints (RUN/checkpoints/step_*.pt: networks.generator).
        networks = obj.get("networks")
        candidates = [obj.get(key) for key in ("state_dict", "generator", "netG", "model")]
        if isinstance(networks, Mapping):
            candidates.insert(0, networks.get("generator"))
        for candidate in candidates:
            if _is_state_dict(candidate):
                obj = candidate
                break
    if not _is_state_dict(obj):
        raise TdkstainError(
            f"{path}: holds a {type(obj).__name__}, not a state_dict of tensors "
            "(expected the release's latest_net_G.pth, saved with torch.save(net.state_dict()))"
        )
    state_dict = _strip_wrapper_prefixes(dict(obj))
    _check_backed(state_dict, path)
    check_finite(state_dict, path)
    return state_dict


def _check_backed(state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse a tensor larger than the data behind it: a pickle can rebuild a 4-byte storage as a
    100,000 x 100,000 view (stride 0), and a network sized from that shape would allocate tens of GB."""
    for key, tensor in state_dict.items():
        needed = tensor.numel() * tensor.element_size()
        held = tensor.untyped_storage().nbytes()
        if needed > held:
            raise TdkstainError(
                f"{path}: tensor {key!r} claims shape {tuple(tensor.shape)} ({needed:,} bytes) but the file holds "
                f"{held:,} bytes of its data (a view that repeats its data, as no saved weight does); refused before "
                "anything that size is allocated"
            )


def infer_generator_kwargs(state_dict: Mapping[str, torch.Tensor], source: str | os.PathLike) -> dict[str, Any]:
    """ResnetGenerator kwargs that a state_dict's keys and shapes imply.

    ``input_nc`` and ``ngf`` from the first 7x7 conv (``model.1``), the
    number of downsampling stages from the stride-2 convs that double the
    channels (``model.4``, ``model.7``, ...), ``n_blocks`` from the
    ``conv_block`` keys, ``output_nc`` from the last conv. The padding type
    cannot be told apart between reflect and replicate from keys; the
    release's reflect is assumed (zero padding shifts the keys and is
    detected). ``source`` names the file in errors.
    """
    first = state_dict.get("model.1.weight")
    if first is None or first.ndim != 4 or tuple(first.shape[2:]) != (7, 7):
        guess = ""
        if any(k.startswith("layer0.") for k in state_dict):
            guess = " It looks like a discriminator checkpoint (keys 'layer0.*', e.g. latest_net_D.pth)."
        elif "model.0.weight" in state_dict:
            guess = " It looks like the nuclei density estimator (key 'model.0.weight', e.g. latest_net_E.pth)."
        raise TdkstainError(
            f"{source}: not a ResnetGenerator checkpoint: no 7x7 first conv 'model.1.weight' "
            f"(keys start: {_brief(list(state_dict))}).{guess} Pass the generator, latest_net_G.pth."
        )
    ngf, input_nc = int(first.shape[0]), int(first.shape[1])

    n_downsampling = 0
    index = 4
    while True:
        w = state_dict.get(f"model.{index}.weight")
        c_in, c_out = ngf * 2**n_downsampling, ngf * 2 ** (n_downsampling + 1)
        if w is None or tuple(w.shape) != (c_out, c_in, 3, 3):
            break
        n_downsampling += 1
        index += 3
    if n_downsampling == 0:
        raise TdkstainError(f"{source}: not a ResnetGenerator checkpoint: no downsampling conv 'model.4.weight' of shape ({2 * ngf}, {ngf}, 3, 3)")

    first_block = index
    padding_type = "zero" if f"model.{first_block}.conv_block.0.weight" in state_dict else "reflect"
    n_blocks = 0
    while any(k.startswith(f"model.{index}.conv_block.") for k in state_dict):
        n_blocks += 1
        index += 1
    last_conv = index + 3 * n_downsampling + 1  # upsampling stages, then the reflect pad
    last = state_dict.get(f"model.{last_conv}.weight")
    if last is None or last.ndim != 4:
        raise TdkstainError(
            f"{source}: not a ResnetGenerator checkpoint: expected the last 7x7 conv at 'model.{last_conv}.weight' "
            f"after {n_downsampling} downsamplings and {n_blocks} residual blocks"
        )
    return dict(
        input_nc=input_nc,
        output_nc=int(last.shape[0]),
        ngf=ngf,
        n_downsampling=n_downsampling,
        n_blocks=n_blocks,
        padding_type=padding_type,
    )


def load_official_generator(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> ResnetGenerator:
    """The authors' ``latest_net_G.pth`` as our :class:`ResnetGenerator` (eval mode).

    Sizes are inferred from the keys (:func:`infer_generator_kwargs`); a file
    that is not a generator (a discriminator, an estimator, another
    architecture) raises TdkstainError naming the file and the key differences.
    """
    path = Path(path)
    state_dict = read_official_state_dict(path)
    kwargs = infer_generator_kwargs(state_dict, path)
    # Keys and shapes compared on the meta device first: a file that is not this generator fails before allocation.
    check_architecture("ResnetGenerator", kwargs, {k: tuple(v.shape) for k, v in state_dict.items()}, path)
    generator = ResnetGenerator(**kwargs)
    _load_strict(generator, state_dict, path, f"a ResnetGenerator with {kwargs}")
    return generator.to(map_location).eval()


# --------------------------------------------------------------------------- the authors' full training state

# What the release saves in checkpoints/NAME/ (models/base_model.py save_networks): one file per network.
RELEASE_FILES = {"generator": "G", "discriminator": "D", "estimator": "E"}
# init_kwargs of our networks -> the config key that sets it (for error messages).
_CONFIG_KEYS = {
    "generator": {"ngf": "model.ngf", "n_downsampling": "model.n_downsampling", "n_blocks": "model.n_blocks"},
    "discriminator": {"ndf": "model.ndf", "n_layers": "model.n_layers_d", "num_D": "model.num_d", "input_nc": None},
    "estimator": {"nef": "model.nef", "n_blocks": "model.estimator_blocks", "input_nc": "(the generator's tap channels)"},
}


def release_training_files(path: str | os.PathLike, names: list[str]) -> dict[str, Path]:
    """The release's ``{prefix}_net_{G,D,E}.pth`` for ``names`` (keys of :data:`RELEASE_FILES`).

    ``path``: the release's checkpoint folder (``checkpoints/NAME``, files
    ``latest_net_*.pth``) or one of its files (``50_net_G.pth`` picks epoch 50's
    siblings). A missing file is an error that names it.
    """
    path = Path(path)
    if path.is_dir():
        folder, prefix = path, "latest"
    elif path.is_file() and re.fullmatch(r".+_net_[GDE]\.pth", path.name):
        folder, prefix = path.parent, path.name.rsplit("_net_", 1)[0]
    else:
        raise TdkstainError(
            f"train.init_from={path}: expected the release's checkpoint folder (checkpoints/NAME with "
            "latest_net_G.pth, latest_net_D.pth, latest_net_E.pth) or one of those files"
        )
    files = {name: folder / f"{prefix}_net_{RELEASE_FILES[name]}.pth" for name in names}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise TdkstainError(
            f"train.init_from: {', '.join(missing)} not found. The release saves {prefix}_net_G.pth, _D.pth and _E.pth "
            "together; starting from the authors' state needs each network this run trains "
            "(with loss.nuclei=0 no estimator file is needed)"
        )
    return files


def _inferred_kwargs(name: str, state_dict: Mapping[str, torch.Tensor], source: Path) -> dict[str, Any]:
    """The constructor arguments a release file's shapes imply, for the network ``name``."""
    if name == "generator":
        return infer_generator_kwargs(state_dict, source)
    try:
        if name == "discriminator":
            scales = sorted({int(k.split(".")[0][5:]) for k in state_dict if re.match(r"layer\d+\.", k)})
            convs = [k for k in state_dict if k.startswith("layer0.") and k.endswith(".weight")]
            first = state_dict["layer0.0.weight"]
            return {"input_nc": int(first.shape[1]), "ndf": int(first.shape[0]), "n_layers": len(convs) - 2, "num_D": len(scales)}
        first = state_dict["model.0.weight"]
        blocks = {k.split(".")[1] for k in state_dict if ".conv_block." in k}
        return {"input_nc": int(first.shape[1]), "nef": int(first.shape[0]), "n_blocks": len(blocks)}
    except (KeyError, IndexError, ValueError):
        raise TdkstainError(f"{source}: not the release's {name} (keys start: {_brief(list(state_dict))})") from None


def load_release_training_state(path: str | os.PathLike, nets: Mapping[str, nn.Module]) -> dict[str, Path]:
    """Initialise TDKstain's G, D and E (``nets``, built from the run's config) from the authors' release files.

    Each file's architecture is read from its tensor shapes and compared with
    the network it initialises before anything is loaded: a difference is an
    error naming the file and the config key to change. The release's D pads
    its convs by 1, so a discriminator built with another padding is refused.
    Returns the files used.
    """
    files = release_training_files(path, [n for n in RELEASE_FILES if n in nets])
    for name, file in files.items():
        net = nets[name]
        state_dict = read_official_state_dict(file)
        theirs, ours = _inferred_kwargs(name, state_dict, file), net.init_kwargs
        diffs = [
            f"{key} {theirs[key]} there, {ours[key]} here" + (f" (set {_CONFIG_KEYS[name][key]}={theirs[key]})" if (_CONFIG_KEYS[name].get(key) or "").startswith("model.") else "")
            for key in _CONFIG_KEYS[name] if key in theirs and theirs[key] != ours.get(key)
        ]
        if diffs:
            raise TdkstainError(f"{file}: the release's {name} does not fit this run's: {'; '.join(diffs)}")
        if name == "discriminator" and ours.get("padding", 1) != 1:
            raise TdkstainError(
                f"{file}: the release's discriminator pads its 4x4 convs by 1; this run builds one with padding "
                f"{ours['padding']} (model.d_padding), which would compute another function with these weights"
            )
        _load_strict(net, state_dict, file, f"the {name} of this run ({ours})")
    return files


