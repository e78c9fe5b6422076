"""Typed training configuration: the only copy of every default.

A run is configured by one YAML preset (``configs/tdkstain-paper.yaml``,
``configs/demo-cpu.yaml`` or a file of yours) plus dotted command-line
overrides such as ``loss.membrane=5``. Every section is a pydantic model that
forbids unknown keys and refuses values of the wrong type, so a typo is an
error naming the key instead of a silently ignored setting::

    cfg = load_config("demo-cpu", ["loss.membrane=5", "train.max_steps=200"])
    cfg.loss.membrane  # 5.0

The defaults below are the paper's configuration as released by the authors
(see ``docs/method.md`` "Networks" and "Losses and update order"). The
``options:`` section holds the chosen method's own settings and is checked
against that method's ``Options`` (``tdkstain.methods``); files written
before it existed (a ``baseline:`` section, a run folder of tdkstain 0.1)
are read with a warning that says what was assumed.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from tdkstain.methods import METHODS
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.plumbing.limits import MAX_CONFIG_NODES, MAX_TILE_SIDE, check_number
from tdkstain.plumbing.sections import Section

# The presets ship inside the package (tdkstain/configs/*.yaml).
PRESET_DIR = Path(__file__).resolve().parents[1] / "configs"

# A config file is a few kB of YAML text (the presets: 1-3 kB, ~150 values, 3 levels deep).
MAX_CONFIG_BYTES = 2**20
MAX_CONFIG_DEPTH = 32
# Pixels of one input batch (data.batch x data.crop^2): 1024 tiles of 1024 px, 4 of 16384 px.
MAX_BATCH_PIXELS = 2**30


class ModelConfig(Section):
    """Network sizes (docs/method.md "Networks"; release defaults)."""

    ngf: int = Field(64, ge=1, le=1024, description="generator base width")
    n_downsampling: int = Field(3, ge=1, le=10, description="stride-2 stages in the generator (taps = their outputs)")
    n_blocks: int = Field(9, ge=0, le=64, description="residual blocks in the generator")
    ndf: int = Field(64, ge=1, le=1024, description="discriminator base width")
    n_layers_d: int = Field(3, ge=1, le=10, description="stride-2 layers per PatchGAN")
    num_d: int = Field(3, ge=1, le=8, description="discriminator scales")
    nef: int = Field(128, ge=1, le=1024, description="nuclei density estimator width")
    estimator_blocks: int = Field(4, ge=0, le=64, description="residual blocks in the estimator")
    d_padding: Literal[1, 2] | None = Field(
        None,
        description="zero padding of the multi-scale discriminator's 4x4 convs; None: the method's own "
        "(tdkstain 1, as the authors' release; pix2pixhd 2, as NVIDIA/pix2pixHD). Saved run configs hold the value used",
    )


class LossConfig(Section):
    """Loss weights (docs/method.md "Losses and update order": all 10, LSGAN).

    A weight of 0 removes the branch and its compute: ``membrane=0`` skips
    the ``G(M * x)`` forward, ``nuclei=0`` builds no estimator at all.
    """

    gan: Literal["lsgan", "vanilla"] = "lsgan"
    l1: float = Field(10.0, ge=0, allow_inf_nan=False)
    membrane: float = Field(10.0, ge=0, allow_inf_nan=False)
    nuclei: float = Field(10.0, ge=0, allow_inf_nan=False)
    estimator: float = Field(10.0, ge=0, allow_inf_nan=False, description="weight of the estimator's own loss L_E")


class OptimConfig(Section):
    """Adam for all three networks (release: lr 2e-4, betas (0.5, 0.999))."""

    lr: float = Field(2e-4, gt=0, allow_inf_nan=False)
    betas: tuple[float, float] = Field((0.5, 0.999), strict=False)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError("both betas must lie in [0, 1)")
        return v


class ScheduleConfig(Section):
    """How long and in which order to train.

    ``epochs`` GAN epochs, the last ``decay_epochs`` of them with the learning
    rate decaying linearly towards zero (release: 100 = 50 constant + 50
    decay). Unlike the release, the last step never runs at learning rate 0.
    ``kind``: "joint" trains the estimator first in every iteration (the
    release); "two-stage" trains the estimator alone for
    ``estimator_epochs`` epochs, then the GAN with the estimator frozen (the
    paper's description).
    """

    epochs: int = Field(100, ge=1, le=1_000_000)
    decay_epochs: int = Field(50, ge=0, le=1_000_000, description="at most epochs (checked by build_config)")
    kind: Literal["joint", "two-stage"] = "joint"
    estimator_epochs: int = Field(0, ge=0, le=1_000_000, description="two-stage only: estimator-only epochs before the GAN")


class DataConfig(Section):
    """Aligned training tiles and held-out validation pairs."""

    root: str | None = Field(None, description="dataset root; set by `tdkstain train --data`")
    crop: int = Field(1024, ge=8, le=MAX_TILE_SIDE, description="random crop size in pixels (release: whole 1024 tiles)")
    batch: int = Field(1, ge=1, le=4096, description="tiles per step per process (global batch = batch x processes)")
    flip: bool = Field(True, description="random horizontal flip, identical for every aligned image")
    workers: int = Field(0, ge=0, le=256, description="DataLoader worker processes")
    train_split: str = "train"
    val_split: str = Field("test", description="split used for validation; if it has no pairs, the last val_pairs train pairs are held out")
    val_pairs: int = Field(8, ge=0, le=1_000_000, description="validation pairs (0 disables validation)")
    val_size: int | None = Field(None, ge=8, le=MAX_TILE_SIDE, description="centre crop for validation tiles (None: whole tiles)")
    nuclei_density_format: Literal["png", "tif"] = Field("png", description="png: the release's min-max uint8 map; tif: float32")
    mpp: float | None = Field(None, gt=0, le=1000, allow_inf_nan=False, description="microns per pixel of the tiles, for the model card (RegH2I/BCI 20x: ~0.5)")


class TrainConfig(Section):
    """Runtime: devices, precision, reproducibility, bookkeeping."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, le=4096, description="CPU threads for torch (None: torch's default; 1 is fastest on a busy shared machine)")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    compile: bool = False
    keep_freed_memory: bool = Field(
        True,
        description="CPU: glibc keeps freed memory for reuse instead of unmapping it every step "
        "(tdkstain.plumbing.allocator; faster steps, higher peak RSS, see benchmarks/README.md)",
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="random seed (the streams of process r use seed + r)")
    init_from: str | None = Field(
        None,
        description="start a new TDKstain run from the authors' release: their checkpoint folder (latest_net_G.pth, "
        "latest_net_D.pth, latest_net_E.pth) or one of its files (50_net_G.pth: epoch 50). Ignored once the run folder "
        "has a checkpoint (resume wins)",
    )
    deterministic: bool = True
    max_steps: int | None = Field(None, ge=0, description="stop after this many steps (a budget; the lr schedule is unchanged)")
    checkpoint_every: int = Field(1000, ge=1)
    keep_last: int = Field(3, ge=1)
    val_every: int = Field(1000, ge=1)
    log_every: int = Field(50, ge=1)
    best_metric: Literal["l1", "ssim", "psnr"] = "l1"
    nonfinite: Literal["stop", "skip"] = "stop"
    tensorboard: bool = True


class Config(Section):
    """The whole run. ``method`` picks the method (:data:`tdkstain.methods.METHODS`); ``options`` are its own settings."""

    method: str = "tdkstain"
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    options: Any = None  # an instance of METHODS[method].Options; a dict is validated against it

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in METHODS:
            raise ValueError(f"unknown method {value!r}; known: {', '.join(METHODS)}")
        return value

    @model_validator(mode="after")
    def _method_options(self) -> "Config":
        options_model = METHODS[self.method].Options
        if self.options is None or isinstance(self.options, dict):
            object.__setattr__(self, "options", options_model.model_validate(self.options or {}))
        elif not isinstance(self.options, options_model):
            raise ValueError(f"options: {type(self.options).__name__} are not the options of method {self.method}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain builtins (lists, not tuples): safe for YAML, JSON and ``torch.load(weights_only=True)``."""
        return self.model_dump(mode="json")

    @property
    def d_padding(self) -> int | None:
        """The multi-scale discriminator's conv padding in force: ``model.d_padding``, else the method's
        (None for methods without one)."""
        return self.model.d_padding if self.model.d_padding is not None else METHODS[self.method].d_padding

    def resolved(self) -> "Config":
        """This config with every method-dependent default made explicit (what a run folder records)."""
        if self.model.d_padding is not None or self.d_padding is None:
            return self
        return self.model_copy(update={"model": self.model.model_copy(update={"d_padding": self.d_padding})})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def architecture(self) -> dict[str, Any]:
        """The part of the config a checkpoint's tensors depend on.

        ``settings``: the dotted settings outside ``model`` that shape the
        method's networks or their buffers (``options.norm`` adds or drops
        batch-norm tensors, ``options.nce_dim`` sizes ASP's projection heads,
        CycleGAN's image pools are ``data.crop`` sized, ...), as the method's
        ``architecture_settings`` lists them.
        """
        values = METHODS[self.method].architecture_settings(self)
        return {
            "method": self.method,
            "model": self.resolved().model.model_dump(mode="json"),
            "has_estimator": self.loss.nuclei > 0,
            "settings": {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in values.items()},
        }


# What a saved config (RUN/config.yaml, a checkpoint's, a weights card's) means when it predates a key.
# tdkstain 0.1 padded every multi-scale discriminator by 2 and wrote no model.d_padding.
LEGACY_D_PADDING = 2


def migrate_saved_config(data: Any, source: str) -> tuple[Any, list[str]]:
    """A config the trainer saved (run folder, checkpoint, weights card), as the current code reads it,
    and notes on what it had to assume.

    - No ``model.d_padding``: written by tdkstain 0.1, whose multi-scale
      discriminator padded by 2 (pix2pixHD's); the value is filled in, with a
      note when it differs from the method's padding today (TDKstain: 1).
    - An ASP run without ``antialias`` among its settings: tdkstain 0.1's ASP
      had other networks (stride-2 sampling, no spectral norm in G); it cannot
      be resumed and the error says so.
    """
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        return data, []
    notes: list[str] = []
    method = data.get("method", "tdkstain")
    padding = METHODS[method].d_padding if isinstance(method, str) and method in METHODS else None
    if "d_padding" not in data["model"]:
        data = {**data, "model": {**data["model"], "d_padding": LEGACY_D_PADDING if padding is not None else None}}
        if padding is not None and padding != LEGACY_D_PADDING:
            notes.append(
                f"{source}: written by tdkstain 0.1, whose discriminator padded its 4x4 convs by {LEGACY_D_PADDING} "
                f"(pix2pixHD's); the authors' release pads by {padding}. Kept as trained: "
                f"model.d_padding={LEGACY_D_PADDING}"
            )
    settings = data.get("options", data.get("baseline"))
    if method == "asp" and isinstance(settings, dict) and "antialias" not in settings:
        raise TdkstainError(
            f"{source}: an ASP run of tdkstain 0.1, whose ASP networks differed from the reference (stride-2 "
            "sampling instead of anti-aliased, no spectral norm in the generator, CUT's projection norm); it cannot "
            "continue with the corrected ASP. Train into a new --out folder."
        )
    return data, notes


def migrate_baseline_section(data: dict[str, Any], source: str, saved: bool = False) -> tuple[dict[str, Any], list[str]]:
    """The ``baseline:`` section of older configs read as ``options:``, the method's own settings.

    Until tdkstain 0.2 every comparison method's settings shared one
    ``baseline:`` section, and a method ignored the keys that were not its
    own. They move to ``options:``; keys that are not settings of the chosen
    method are left out, as they were ignored. Values in ``options:`` win.
    """
    if "baseline" not in data:
        return data, []
    data = dict(data)
    baseline = data.pop("baseline")
    if baseline is None:
        return data, []
    if not isinstance(baseline, dict):
        raise TdkstainError(f"{source}: baseline: a section of settings, got {type(baseline).__name__}")
    method = data.get("method", "tdkstain")
    fields = METHODS[method].Options.model_fields if isinstance(method, str) and method in METHODS else {}
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise TdkstainError(f"{source}: options: a section of settings, got {type(options).__name__}")
    data["options"] = {**{k: v for k, v in baseline.items() if k in fields}, **options}
    moved = sorted(str(k) for k in baseline if k in fields)
    left = sorted(str(k) for k in baseline if k not in fields)  # keys of any YAML type
    if saved and not moved:
        return data, []  # a saved config of a method without options: nothing the user set is involved
    note = (f"{source}: section 'baseline:' is now 'options:' (the settings of method {method}); "
            f"read {', '.join(moved) or 'no key'} from it")
    if left and not saved:  # a saved config lists every key of the old section: only the user's own are news
        note += f"; left out {', '.join(left)} ({method} has no such setting, so they had no effect)"
    return data, [note]


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


# ----------------------------------------------------------------------------- reading YAML safely


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses documents nested deeper than ``MAX_CONFIG_DEPTH`` while composing
    (PyYAML composes recursively: a deep document would otherwise end in RecursionError)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        self._depth += 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:
                raise _Refused(f"its YAML is nested more than {MAX_CONFIG_DEPTH} levels deep "
                               f"(line {self.peek_event().start_mark.line + 1}); a config has 3")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Refused(Exception):
    """Why a YAML document is refused; :func:`parse_yaml` prefixes the source."""


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """``(nodes, depth)`` of the YAML graph with every alias counted as a copy of what it names.

    Memoised by node (an alias is the same node object as its anchor), so
    the count costs one visit per distinct node even when it expands to
    billions; iterative, so no document can exhaust the Python stack. A
    node that contains itself (``&a [*a]``) is refused.
    """
    done: dict[int, tuple[int, int]] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            kids = _children(node)
            nodes = 1 + sum(done[id(k)][0] for k in kids)
            depth = 1 + max((done[id(k)][1] for k in kids), default=0)
            if nodes > MAX_CONFIG_NODES:
                raise _Refused(
                    f"its YAML expands to more than {MAX_CONFIG_NODES:,} values once its aliases (*name) are "
                    "expanded; a config has ~150 (an alias bomb?). Nothing was built"
                )
            if depth > MAX_CONFIG_DEPTH:
                raise _Refused(f"its YAML is nested more than {MAX_CONFIG_DEPTH} levels deep once its aliases (*name) "
                               "are expanded; a config has 3")
            done[key] = (nodes, depth)
            continue
        if key in done:
            continue
        if key in on_path:
            raise _Refused(f"a YAML alias (*name) inside the value it names makes it contain itself "
                           f"(line {node.start_mark.line + 1}); a config cannot be recursive")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in done)
    return done[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def parse_yaml(text: str, source: str) -> Any:
    """One YAML document (safe tags only) as Python values, or a TdkstainError naming ``source``.

    Before any Python object is built, the composed graph is measured: more
    than ``MAX_CONFIG_NODES`` values with aliases expanded (a "billion
    laughs" document), nesting deeper than ``MAX_CONFIG_DEPTH`` or a
    recursive alias are refused.
    """
    loader = None
    try:
        loader = _BoundedLoader(text)  # refuses control characters already
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    except _Refused as err:
        raise TdkstainError(f"{source}: refused: {err}") from None
    except yaml.YAMLError as err:
        raise TdkstainError(f"{source}: not valid YAML: {_one_line(err)}") from None
    except Exception as err:  # noqa: BLE001 - a scalar PyYAML cannot convert (an int of 5000 digits, a bad date)
        raise TdkstainError(f"{source}: not valid YAML: {type(err).__name__}: {_one_line(err)}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Signatures of files that are often given where a config was meant.
_BINARY_KINDS = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"), (b"PK\x03\x04", "a zip archive (a PyTorch checkpoint?)"),
    (b"\x1f\x8b", "gzip-compressed"), (b"%PDF", "a PDF document"), (b"\x80", "a Python pickle (a .pth file?)"),
)


def read_yaml_file(path: str | Path, what: str = "config") -> Any:
    """The YAML document of a config file, read with every bound of a config.

    Refused with a TdkstainError naming the file: more than
    ``MAX_CONFIG_BYTES``, not UTF-8 text (an image, a checkpoint, any binary
    file), and whatever :func:`parse_yaml` refuses.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise TdkstainError(f"{path}: cannot read the {what}: {err.strerror or err}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise TdkstainError(
            f"{path}: not a {what}: larger than {MAX_CONFIG_BYTES // 2**20} MiB (a config is a YAML text file of a few kB)"
        )
    kind = next((name for magic, name in _BINARY_KINDS if raw.startswith(magic)), None)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        kind = kind or f"byte 0x{raw[err.start]:02x} at offset {err.start} is not UTF-8 text"
        text = None
    if text is not None and "\x00" in text:
        kind = kind or "it holds NUL bytes"
        text = None
    if text is None:
        raise TdkstainError(
            f"{path}: not a YAML text file ({kind}); a tdkstain config is YAML text "
            "(`tdkstain train --show-config` prints one)"
        )
    return parse_yaml(text, str(path))


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_preset(name_or_path: str | Path) -> Path:
    """A path to a YAML file, or a preset name such as ``demo-cpu``."""
    path = Path(name_or_path)
    if _is_file(path):
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if _is_file(preset):
        return preset
    raise TdkstainError(
        f"{name_or_path}: no such config file or preset; presets: {', '.join(preset_names())}"
    )


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"loss.membrane=5"`` -> (["loss", "membrane"], 5); the value is read as a YAML scalar."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise TdkstainError(f"{text!r}: overrides look like key=value, e.g. loss.membrane=5")
    parsed = parse_yaml(value, f"{key}={_short(value)}") if value.strip() else None
    return key.split("."), parsed


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_known_keys(ann, dotted + "."))
    return keys


def _format_errors(err: ValidationError, source: str, model: type[BaseModel] | None = None, prefix: str = "",
                   what: str = "") -> str:
    known = [prefix + k for k in _known_keys(model or Config)]
    lines = []
    for e in err.errors():
        key = prefix + ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6) or [
                k for k in known if k.rpartition(".")[2] == key.rpartition(".")[2]][:1]  # seed -> train.seed
            hints = ([f"did you mean {close[0]}?"] if close else []) + ([what] if what else [])
            hint = f" ({'; '.join(hints)})" if hints else ""
            lines.append(f"{key}: unknown key{hint}")
        else:
            got = e.get("input")
            lines.append(f"{key}: {e['msg']} (got {_short(repr(got))})")
    return f"{source}: invalid config:\n  " + "\n  ".join(lines)


# YAML 1.1 (PyYAML) reads 1e-4 as a string: it wants 1.0e-4. Users write 1e-4.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fix_floats(value: Any, model: type[BaseModel]) -> Any:
    """``value`` (a section's dict) with ``1e-4``-style strings read as floats where ``model`` wants a float.

    Only there: a string setting (``data.root``, ``train.init_from``) keeps
    its text, so a dataset folder named ``1e5`` stays a folder name.
    """
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is not None:
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                item = _fix_floats(item, annotation)
            elif _wants_float(annotation):
                item = _exponent_to_float(item)
        out[key] = item
    return out


def _wants_float(annotation: Any) -> bool:
    from typing import get_args

    return annotation is float or any(_wants_float(arg) for arg in get_args(annotation))


def _exponent_to_float(value: Any) -> Any:
    if isinstance(value, list):
        return [_exponent_to_float(v) for v in value]
    if isinstance(value, str) and _EXPONENT_FLOAT.match(value.strip()):
        return float(value)
    return value


def _set_dotted(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise TdkstainError(f"{'.'.join(path)}: {part} is a value, not a section")
        else:
            child = node[part] = dict(child)
        node = child
    node[path[-1]] = value


def build_config(data: dict[str, Any] | None, overrides: list[str] = (), source: str = "config",
                 values: dict[str, Any] | None = None, *, warn: bool = True, saved: bool = False) -> Config:
    """Validate a nested dict (from YAML) after applying dotted overrides.

    ``overrides``: ``KEY=VALUE`` texts, the value read as a YAML scalar
    (``loss.membrane=5``). ``values``: dotted keys set verbatim, after the
    overrides, for what must never be parsed (paths from command-line flags:
    ``{"data.root": "ds #1"}`` stays that string). ``options`` are checked
    against the chosen method's own settings. An older ``baseline:`` section
    is read as ``options:`` (:func:`migrate_baseline_section`), with a
    warning unless ``warn`` is False.
    """
    if not isinstance(data, (dict, type(None))):
        raise TdkstainError(f"{source}: a config is a mapping of sections, got {type(data).__name__}")
    data = dict(data or {})
    for text in overrides:
        path, value = parse_override(text)
        _set_dotted(data, path, value)
    for key, value in (values or {}).items():
        _set_dotted(data, key.split("."), value)
    data, notes = migrate_baseline_section(data, source, saved)
    if warn:
        import warnings

        for note in notes:
            warnings.warn(note, stacklevel=2)
    options = data.pop("options", None)
    try:
        cfg = Config.model_validate(_fix_floats(data, Config))
    except ValidationError as err:
        raise TdkstainError(_format_errors(err, source)) from None
    if options is not None:
        if not isinstance(options, dict):
            raise TdkstainError(f"{source}: options: a section of method {cfg.method}'s settings, got {type(options).__name__}")
        model = METHODS[cfg.method].Options
        try:
            cfg = cfg.model_copy(update={"options": model.model_validate(_fix_floats(options, model))})
        except ValidationError as err:
            own = ", ".join(model.model_fields) or "none"
            raise TdkstainError(_format_errors(err, source, model, "options.", f"method {cfg.method}'s options: {own}")) from None
    try:
        check_settings_together(cfg)
    except TdkstainError as err:
        raise TdkstainError(f"{source}: {err}") from None
    return cfg


def check_settings_together(cfg: Config) -> None:
    """Bounds that involve two settings (each setting alone is bounded by its field)."""
    s = cfg.schedule
    check_number("schedule.decay_epochs", s.decay_epochs, 0, s.epochs, integer=True,
                 hint=f"the learning rate decays over the last decay_epochs of schedule.epochs={s.epochs} (release: 50 of 100)")
    crop = cfg.data.crop
    check_number("data.batch", cfg.data.batch, 1, max(1, MAX_BATCH_PIXELS // crop**2), integer=True,
                 hint=f"a batch holds data.batch x {crop} x {crop} px (data.crop), at most {MAX_BATCH_PIXELS:,} pixels; "
                      "lower data.batch or data.crop")


def load_config(name_or_path: str | Path | None, overrides: list[str] = (), values: dict[str, Any] | None = None) -> Config:
    """Read a preset or YAML file (:func:`read_yaml_file`: safe tags, bounded size, no alias bombs), apply overrides
    and ``values`` (see :func:`build_config`), validate."""
    if name_or_path is None:
        return build_config({}, overrides, source="defaults", values=values)
    path = resolve_preset(name_or_path)
    data = read_yaml_file(path) or {}
    if not isinstance(data, dict):
        raise TdkstainError(f"{path}: a config is a mapping of sections, got {type(data).__name__}")
    return build_config(data, overrides, source=str(path), values=values)


def schedule_over_steps(cfg: Config, train_pairs: int, steps: int) -> list[str]:
    """Overrides that stretch ``cfg``'s learning-rate schedule over ``steps`` training steps.

    The schedule is in epochs (``schedule.epochs``, the last ``schedule.decay_epochs`` of which
    decay the rate to 0) and ``train.max_steps`` only cuts it short: a step budget beyond the
    preset's epochs would be ignored, and one below them would stop before the decay. The epochs
    are set so the schedule ends at about ``steps`` on ``train_pairs`` training pairs at
    ``data.batch`` per step (one process), the decay keeping the preset's share of it.

    Returns:
        ``["schedule.epochs=E", "schedule.decay_epochs=D", "train.max_steps=steps"]``.
    """
    if train_pairs < 1 or steps < 1:
        raise TdkstainError(f"a schedule over {steps} steps needs training pairs (got {train_pairs}) and steps >= 1")
    steps_per_epoch = math.ceil(train_pairs / cfg.data.batch)
    epochs = max(1, round(steps / steps_per_epoch))
    decay = min(epochs, round(epochs * cfg.schedule.decay_epochs / max(cfg.schedule.epochs, 1)))
    return [f"schedule.epochs={epochs}", f"schedule.decay_epochs={decay}", f"train.max_steps={steps}"]


def read_run_config(path: str | Path) -> Config:
    """Read a resolved ``RUN/config.yaml`` back (older files migrated, :func:`migrate_saved_config`, with a warning)."""
    path = Path(path)
    data = read_yaml_file(path, what="run folder's config") or {}
    return saved_config(data, str(path))


def saved_config(data: Any, source: str, *, warn: bool = True) -> Config:
    """A config saved by the trainer (a run folder's, a checkpoint's, a weights card's), migrated and validated;
    what the migration assumed is a warning unless ``warn`` is False."""
    import warnings

    data, notes = migrate_saved_config(data, source)
    if warn:
        for note in notes:
            warnings.warn(note, stacklevel=3)
    return build_config(data, source=source, warn=warn, saved=True)


# ----------------------------------------------------------------------------- a run folder's config


def keep_trained_settings(cfg: Config, saved: Config) -> Config:
    """``cfg`` with the run folder's values for the settings the user left to the method.

    ``model.d_padding`` not given: the folder's padding is kept, so a run
    trained with padding 2 (tdkstain 0.1) resumes as it was trained. A value
    given explicitly is compared with the folder's by :func:`check_same_architecture`.
    """
    if cfg.model.d_padding is None and cfg.method == saved.method:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"d_padding": saved.d_padding})})
    return cfg


def check_same_architecture(cfg: Config, saved: dict[str, Any], source: str) -> None:
    """Refuse to resume a run whose tensors were made for other networks or another method."""
    ours = cfg.architecture()
    try:
        theirs = saved_config(saved, source, warn=False).architecture()
    except TdkstainError:
        raise
    except Exception as err:  # an older or edited file
        raise TdkstainError(f"{source}: its config cannot be read ({err}); use a new --out folder") from None
    diffs = [f"{k}: {theirs['model'][k]} there, {v} here" for k, v in ours["model"].items() if theirs["model"][k] != v]
    if ours["method"] != theirs["method"]:
        diffs.append(f"method: {theirs['method']} there, {ours['method']} here")
    if ours["has_estimator"] != theirs["has_estimator"]:
        diffs.append("loss.nuclei: zero in one, non-zero in the other (estimator present or not)")
    if ours["method"] == theirs["method"]:  # the baseline settings that shape the networks (Config.architecture)
        diffs += [f"{k}: {theirs['settings'].get(k)} there, {v} here" for k, v in ours["settings"].items() if theirs["settings"].get(k) != v]
    if diffs:
        raise TdkstainError(
            f"{source}: this run folder holds a different architecture ({'; '.join(diffs)}); "
            "use a new --out folder, or the same config to resume"
        )
