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
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from tdkstain.methods import METHODS
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.plumbing.sections import Section

# The presets ship inside the package (tdkstain/configs/*.yaml).
PRESET_DIR = Path(__file__).resolve().parents[1] / "configs"


class ModelConfig(Section):
    """Network sizes (docs/method.md "Networks"; release defaults)."""

    ngf: int = Field(64, ge=1, description="generator base width")
    n_downsampling: int = Field(3, ge=1, description="stride-2 stages in the generator (taps = their outputs)")
    n_blocks: int = Field(9, ge=0, description="residual blocks in the generator")
    ndf: int = Field(64, ge=1, description="discriminator base width")
    n_layers_d: int = Field(3, ge=1, description="stride-2 layers per PatchGAN")
    num_d: int = Field(3, ge=1, description="discriminator scales")
    nef: int = Field(128, ge=1, description="nuclei density estimator width")
    estimator_blocks: int = Field(4, ge=0, description="residual blocks in the estimator")
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
    l1: float = Field(10.0, ge=0)
    membrane: float = Field(10.0, ge=0)
    nuclei: float = Field(10.0, ge=0)
    estimator: float = Field(10.0, ge=0, description="weight of the estimator's own loss L_E")


class OptimConfig(Section):
    """Adam for all three networks (release: lr 2e-4, betas (0.5, 0.999))."""

    lr: float = Field(2e-4, gt=0)
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

    epochs: int = Field(100, ge=1)
    decay_epochs: int = Field(50, ge=0)
    kind: Literal["joint", "two-stage"] = "joint"
    estimator_epochs: int = Field(0, ge=0, description="two-stage only: estimator-only epochs before the GAN")


class DataConfig(Section):
    """Aligned training tiles and held-out validation pairs."""

    root: str | None = Field(None, description="dataset root; set by `tdkstain train --data`")
    crop: int = Field(1024, ge=8, description="random crop size in pixels (release: whole 1024 tiles)")
    batch: int = Field(1, ge=1, description="tiles per step per process (global batch = batch x processes)")
    flip: bool = Field(True, description="random horizontal flip, identical for every aligned image")
    workers: int = Field(0, ge=0, description="DataLoader worker processes")
    train_split: str = "train"
    val_split: str = Field("test", description="split used for validation; if it has no pairs, the last val_pairs train pairs are held out")
    val_pairs: int = Field(8, ge=0, description="validation pairs (0 disables validation)")
    val_size: int | None = Field(None, ge=8, description="centre crop for validation tiles (None: whole tiles)")
    nuclei_density_format: Literal["png", "tif"] = Field("png", description="png: the release's min-max uint8 map; tif: float32")
    mpp: float | None = Field(None, gt=0, description="microns per pixel of the tiles, for the model card (RegH2I/BCI 20x: ~0.5)")


class TrainConfig(Section):
    """Runtime: devices, precision, reproducibility, bookkeeping."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (None: torch's default; 1 is fastest on a busy shared machine)")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    compile: bool = False
    keep_freed_memory: bool = Field(
        True,
        description="CPU: glibc keeps freed memory for reuse instead of unmapping it every step "
        "(tdkstain.plumbing.allocator; faster steps, higher peak RSS, see benchmarks/README.md)",
    )
    seed: int = 0
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
    padding = METHODS[method].d_padding if method in METHODS else None
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
    fields = METHODS[method].Options.model_fields if method in METHODS else {}
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise TdkstainError(f"{source}: options: a section of settings, got {type(options).__name__}")
    data["options"] = {**{k: v for k, v in baseline.items() if k in fields}, **options}
    moved = sorted(k for k in baseline if k in fields)
    left = sorted(k for k in baseline if k not in fields)
    if saved and not moved:
        return data, []  # a saved config of a method without options: nothing the user set is involved
    note = (f"{source}: section 'baseline:' is now 'options:' (the settings of method {method}); "
            f"read {', '.join(moved) or 'no key'} from it")
    if left and not saved:  # a saved config lists every key of the old section: only the user's own are news
        note += f"; left out {', '.join(left)} ({method} has no such setting, so they had no effect)"
    return data, [note]


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_preset(name_or_path: str | Path) -> Path:
    """A path to a YAML file, or a preset name such as ``demo-cpu``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
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
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise TdkstainError(f"{key}: cannot read value {value!r}: {err}") from err
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
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hints = ([f"did you mean {close[0]}?"] if close else []) + ([what] if what else [])
            hint = f" ({'; '.join(hints)})" if hints else ""
            lines.append(f"{key}: unknown key{hint}")
        else:
            got = e.get("input")
            lines.append(f"{key}: {e['msg']} (got {got!r})")
    return f"{source}: invalid config:\n  " + "\n  ".join(lines)


# YAML 1.1 (PyYAML) reads 1e-4 as a string: it wants 1.0e-4. Users write 1e-4.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _fix_floats(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _fix_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fix_floats(v) for v in value]
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
        cfg = Config.model_validate(_fix_floats(data))
    except ValidationError as err:
        raise TdkstainError(_format_errors(err, source)) from None
    if options is None:
        return cfg
    if not isinstance(options, dict):
        raise TdkstainError(f"{source}: options: a section of method {cfg.method}'s settings, got {type(options).__name__}")
    model = METHODS[cfg.method].Options
    try:
        return cfg.model_copy(update={"options": model.model_validate(_fix_floats(options))})
    except ValidationError as err:
        own = ", ".join(model.model_fields) or "none"
        raise TdkstainError(_format_errors(err, source, model, "options.", f"method {cfg.method}'s options: {own}")) from None


def load_config(name_or_path: str | Path | None, overrides: list[str] = (), values: dict[str, Any] | None = None) -> Config:
    """Read a preset or YAML file (``yaml.safe_load``), apply overrides and ``values`` (see :func:`build_config`), validate."""
    if name_or_path is None:
        return build_config({}, overrides, source="defaults", values=values)
    path = resolve_preset(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise TdkstainError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise TdkstainError(f"{path}: a config is a mapping of sections, got {type(data).__name__}")
    return build_config(data, overrides, source=str(path), values=values)


def read_run_config(path: str | Path) -> Config:
    """Read a resolved ``RUN/config.yaml`` back (older files migrated, :func:`migrate_saved_config`, with a warning)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise TdkstainError(f"{path}: cannot read run config: {err}") from err
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
