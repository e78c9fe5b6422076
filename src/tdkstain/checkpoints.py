"""Published weights: safetensors with a JSON model card, and the authors' ``.pth``.

Our weights format ("tdkstain.weights/1") is a safetensors file whose
metadata carries a model card: which network, its constructor kwargs, the
value range it expects, the tile size and microns per pixel it was trained
at, and the training config. Every metadata value is stored JSON-encoded
(safetensors metadata is ``str -> str``), e.g.::

    {"format": "tdkstain.weights/1", "network": "ResnetGenerator",
     "kwargs": {"input_nc": 3, "output_nc": 3, "ngf": 64, ...},
     "value_range": [-1, 1], "tile_size": 1024, "mpp": 0.5, "config": {...}}

Loading never unpickles code: safetensors holds tensors only, and the
authors' ``latest_net_G.pth`` is read with ``torch.load(weights_only=True)``,
which refuses any pickle that names a Python callable.

Full training state (optimisers, RNG, step counters) is the trainer's
business (``tdkstain.training``); this module is what users ship and load.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from tdkstain import __version__
from tdkstain.atomic import atomic_path
from tdkstain.errors import TdkstainError
from tdkstain.methods.blocks import CUTPatchDiscriminator, CUTResnetGenerator, PatchDiscriminator, Pix2pixResnetGenerator, UnetGenerator
from tdkstain.networks import MultiscaleDiscriminator, NucleiDensityEstimator, ResnetGenerator

__all__ = [
    "WEIGHTS_FORMAT",
    "NETWORKS",
    "GENERATORS",
    "GENERATOR_WEIGHT_PLACES",
    "save_weights",
    "load_weights",
    "model_card",
    "save_network",
    "load_network",
    "load_generator",
    "load_generator_with_card",
    "load_official_generator",
    "load_release_training_state",
    "release_training_files",
    "read_official_state_dict",
    "infer_generator_kwargs",
    "find_generator_weights",
    "file_sha256",
]

WEIGHTS_FORMAT = "tdkstain.weights/1"

# network name in a model card -> constructor. A literal registry: the names
# are part of the file format, so renaming a class must not change them.
NETWORKS: dict[str, type[nn.Module]] = {
    "ResnetGenerator": ResnetGenerator,
    "MultiscaleDiscriminator": MultiscaleDiscriminator,
    "NucleiDensityEstimator": NucleiDensityEstimator,
    # Networks of the comparison methods (tdkstain.methods: pix2pix, PyramidPix2pix, ASP).
    "UnetGenerator": UnetGenerator,
    "Pix2pixResnetGenerator": Pix2pixResnetGenerator,
    "CUTResnetGenerator": CUTResnetGenerator,
    "PatchDiscriminator": PatchDiscriminator,
    "CUTPatchDiscriminator": CUTPatchDiscriminator,
}

# The NETWORKS entries that map H&E to IHC: what load_generator builds and 'tdkstain translate' runs.
GENERATORS: tuple[str, ...] = ("ResnetGenerator", "UnetGenerator", "Pix2pixResnetGenerator", "CUTResnetGenerator")

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
    try:
        network = NETWORKS[name](**metadata["kwargs"])
    except (TypeError, ValueError) as err:
        raise TdkstainError(f"{path}: model card kwargs do not build a {name}: {err}") from err
    _load_strict(network, state_dict, path, f"a {name} with {metadata['kwargs']}")
    return network.to(map_location).eval(), metadata


# --------------------------------------------------------------------------- the authors' .pth


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


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
    ``model`` is unwrapped.
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
    return _strip_wrapper_prefixes(dict(obj))


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


# --------------------------------------------------------------------------- generators, any source


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
    card built with ``tile_size`` and ``mpp`` None.
    """
    path = Path(path_or_run_dir)
    if path.is_dir():
        path = find_generator_weights(path)
    if not path.is_file():
        raise TdkstainError(f"{path}: no such weights file or run folder")

    if path.suffix.lower() in _SAFETENSORS_SUFFIXES:
        state_dict, metadata = load_weights(path)
        state_dict = _strip_wrapper_prefixes(state_dict)
        name = metadata.get("network", "ResnetGenerator")
        if name not in GENERATORS:
            raise TdkstainError(f"{path}: holds a {name}, not a generator (one of {', '.join(GENERATORS)})")
        kwargs = metadata.get("kwargs") if isinstance(metadata.get("kwargs"), dict) else None
        if kwargs is None:  # plain safetensors of a generator state_dict, e.g. converted elsewhere
            if name != "ResnetGenerator":
                raise TdkstainError(f"{path}: the model card names a {name} but has no 'kwargs' to build it with")
            kwargs = infer_generator_kwargs(state_dict, path)
        try:
            generator = NETWORKS[name](**kwargs)
        except (TypeError, ValueError) as err:
            raise TdkstainError(f"{path}: model card kwargs do not build a {name}: {err}") from err
        _load_strict(generator, state_dict, path, f"a {name} with {kwargs}")
        card = {**model_card(generator), **metadata} if metadata else model_card(generator, source={"file": path.name})
        return generator.to(map_location).eval(), card

    generator = load_official_generator(path, map_location)
    card = model_card(generator, source={"file": path.name, "kind": "authors' release checkpoint (.pth)"})
    return generator, card


def load_generator(path_or_run_dir: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """A ready generator (eval mode) from our safetensors, a run folder, or the authors' ``.pth``.

    Run folders are searched as :func:`find_generator_weights` documents.
    """
    return load_generator_with_card(path_or_run_dir, map_location)[0]
