"""What every method shares: the runtime of a phase, the optimiser step, the schedule, the base class.

A method (``tdkstain.methods.<name>``) is a :class:`Method` subclass: its
options (a :class:`~tdkstain.plumbing.sections.Section`), its networks (a
``{name: module}`` dict, one Adam each, made by the trainer, which
checkpoints and restores them by name) and its update phases, each doing
forward, backward and :func:`update` and returning detached loss terms named
``phase/term``. The network called ``generator`` is the H&E -> IHC generator
the trainer validates and exports.

Mixed precision, gradient scaling, multi-process gradient averaging and the
non-finite policy come in through :class:`Runtime`, so a method's maths reads
the same on one CPU or many GPUs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Sequence

import torch
from torch import nn

from tdkstain.methods.losses import gan_loss
from tdkstain.models.layers import init_weights
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.plumbing.limits import MAX_TILE_SIDE
from tdkstain.plumbing.sections import Section

if TYPE_CHECKING:
    from tdkstain.training.config import Config

__all__ = [
    "Nets", "Optimizers", "Batch", "Terms",
    "NonFiniteLoss", "Runtime", "frozen", "update",
    "discriminator_terms", "discriminator_update", "generator_log", "check_tile_sizes",
    "NoOptions", "Method",
]

Nets = dict[str, nn.Module]
Optimizers = dict[str, torch.optim.Optimizer]
Batch = dict[str, torch.Tensor]
Terms = dict[str, torch.Tensor]


class NoOptions(Section):
    """A method without settings of its own."""


class NonFiniteLoss(TdkstainError):
    """A loss term became NaN or infinite; ``term`` names it (e.g. ``generator/l1``)."""

    def __init__(self, term: str, what: str = "loss term"):
        self.term = term
        super().__init__(f"non-finite {what} '{term}'")


@dataclass
class Runtime:
    """How a phase runs, apart from its maths.

    ``amp_dtype``: autocast dtype (bf16 / fp16) or None for fp32.
    ``scaler``: a ``torch.amp.GradScaler`` for fp16, else None.
    ``average_gradients``: called on a network after backward (DDP: all-reduce mean).
    ``all_ranks_ok``: all-reduce of "this rank's losses are finite" (so that
    every process skips or stops together).
    ``nonfinite``: "stop" raises :class:`NonFiniteLoss`; "skip" drops the update.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    channels_last: bool = False
    average_gradients: Callable[[nn.Module], None] | None = None
    all_ranks_ok: Callable[[bool], bool] = lambda ok: ok
    nonfinite: str = "stop"
    skipped: int = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, batch: Batch) -> Batch:
        out = {}
        for k, v in batch.items():
            v = v.to(self.device, non_blocking=True)
            if self.channels_last and v.ndim == 4:
                v = v.contiguous(memory_format=torch.channels_last)
            out[k] = v
        return out


@contextlib.contextmanager
def frozen(*modules: nn.Module | None) -> Iterator[None]:
    """No parameter gradients for these modules inside the block (gradients still flow through them)."""
    params = [p for m in modules if m is not None for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def _gradients_finite(net: nn.Module) -> bool:
    """True when every parameter gradient of ``net`` is finite (one device sync)."""
    checks = [torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None]
    return not checks or bool(torch.stack(checks).all())


def update(phase: str, loss: torch.Tensor, terms: Terms, nets: list[nn.Module], optimizers: list[torch.optim.Optimizer], rt: Runtime) -> bool:
    """Backward once, then step every optimizer (several networks share one loss, e.g. CycleGAN's two
    generators, ASP's generator and projection heads); non-finite terms stop or skip as TDKstain's phases do."""
    bad = [name for name, value in terms.items() if not bool(torch.isfinite(value).all())]
    if not rt.all_ranks_ok(not bad):
        if rt.nonfinite == "stop":
            raise NonFiniteLoss(f"{phase}/{bad[0]}" if bad else f"{phase} (on another process)")
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        rt.skipped += 1
        return False
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    if rt.scaler is not None:
        rt.scaler.scale(loss).backward()
    else:
        loss.backward()
    if rt.average_gradients is not None:
        for net in nets:
            rt.average_gradients(net)
    # A finite loss can still give NaN / inf gradients; fp16's GradScaler skips those steps itself.
    if rt.scaler is None and not all(_gradients_finite(net) for net in nets):
        if rt.nonfinite == "stop":
            raise NonFiniteLoss(phase, what="gradients in network")
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        rt.skipped += 1
        return False
    for optimizer in optimizers:
        if rt.scaler is not None:
            rt.scaler.step(optimizer)
        else:
            optimizer.step()
    if rt.scaler is not None:
        rt.scaler.update()
    return True


def discriminator_terms(score: nn.Module, real_input: torch.Tensor, fake_input: torch.Tensor, gan: str,
                        rt: Runtime) -> tuple[torch.Tensor, Terms]:
    """``0.5 * (GAN(D(real), 1) + GAN(D(fake), 0))`` as pix2pix, pix2pixHD and CUT form it: ``(total, {real, fake})``.

    Fake is scored first, then real: pix2pix's order, which batch-norm running
    statistics see. Single-scale discriminators (one tensor) and multi-scale
    ones (a list) both work.
    """
    with rt.autocast():
        fake_scores = score(fake_input)
        real_scores = score(real_input)
    d_fake = gan_loss(fake_scores if isinstance(fake_scores, list) else [fake_scores], False, gan)
    d_real = gan_loss(real_scores if isinstance(real_scores, list) else [real_scores], True, gan)
    return 0.5 * (d_real + d_fake), {"real": d_real, "fake": d_fake}


def discriminator_update(discriminator: nn.Module, optimizer: torch.optim.Optimizer, real_input: torch.Tensor,
                         fake_input: torch.Tensor, gan: str, rt: Runtime, *, name: str = "discriminator",
                         score: nn.Module | None = None) -> Terms:
    """One discriminator update on :func:`discriminator_terms`.

    ``fake_input`` must already be detached from the generator. ``score`` is
    the part of ``discriminator`` that scores images, when the updated module
    holds more (CycleGAN's discriminator with its image pool). Returns the
    logged terms ``NAME/{real,fake,loss}``, detached.
    """
    d_total, terms = discriminator_terms(score or discriminator, real_input, fake_input, gan, rt)
    update(name, d_total, terms, [discriminator], [optimizer], rt)
    return {f"{name}/real": terms["real"].detach(), f"{name}/fake": terms["fake"].detach(), f"{name}/loss": d_total.detach()}


def generator_log(terms: Terms, total: torch.Tensor) -> Terms:
    """The generator phase's logged terms: ``generator/<term>`` and ``generator/loss``, detached."""
    out = {f"generator/{k}": v.detach() for k, v in terms.items()}
    out["generator/loss"] = total.detach()
    return out


def check_tile_sizes(cfg: Config, multiple: int, min_crop: int = 1, why: str = "") -> None:
    """Refuse, before any work, a ``data.crop`` / ``data.val_size`` the networks cannot take.

    ``multiple``: the generator's size multiple (``2**n_downsampling``);
    ``min_crop``: the smallest crop the discriminator trains on (``why`` says which).
    """
    crop, val = cfg.data.crop, cfg.data.val_size
    if crop % multiple:
        lower, upper = crop - crop % multiple, crop - crop % multiple + multiple
        raise TdkstainError(
            f"data.crop={crop} is not a multiple of {multiple} (the generator downsamples {multiple.bit_length() - 1} times, "
            f"model.n_downsampling); use data.crop={lower if lower >= max(min_crop, multiple) else upper} or {upper}"
        )
    if crop < min_crop:
        fit = -(-min_crop // multiple) * multiple
        raise TdkstainError(f"data.crop={crop} is too small: {why} needs at least {min_crop} px; use data.crop={fit} or more")
    if val is not None and val % multiple:
        raise TdkstainError(
            f"data.val_size={val} is not a multiple of {multiple} (model.n_downsampling); "
            f"use data.val_size={max(multiple, val - val % multiple)} or leave it unset (whole tiles)"
        )


# The most numbers (parameters and buffers) the networks of one method may hold: 2**31 is 8.6 GB in fp32, about
# four times that while training (gradients, Adam's two moments). The paper's G, D and E hold 61 M; pix2pixHD's 188 M.
MAX_NETWORK_NUMBERS = 2**31


def _first_line(err: BaseException, limit: int = 160) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0].strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Method:
    """What a method is: its options, its networks, one training iteration; the base owns the schedule.

    A subclass sets the class attributes below and implements
    :meth:`networks` and :meth:`train_step`; :meth:`check` refuses sizes its
    networks cannot take, :meth:`initialise` and :meth:`needs` have defaults.
    One line in :data:`tdkstain.methods.METHODS` makes it a ``method:`` of the
    config, of ``tdkstain train`` and (with ``table1``) of ``tdkstain benchmark``.

    Schedule: ``schedule.epochs`` epochs after ``first_stage_steps`` (0 but
    for TDKstain's two-stage schedule), the last ``schedule.decay_epochs``
    with the learning rate decaying linearly (the pix2pix/CycleGAN ``linear``
    policy); the last step never runs at learning rate 0.
    """

    # The method's own settings: the config's ``options:`` section is validated against this model.
    Options: ClassVar[type[Section]] = NoOptions
    # Options whose values shape the networks' tensors: a resumed run must keep them (Config.architecture).
    architecture_options: ClassVar[tuple[str, ...]] = ()
    # Zero padding of a multi-scale discriminator's convs (model.d_padding None); None: the method has none.
    d_padding: ClassVar[int | None] = None
    # ``tdkstain benchmark`` rows: benchmark name -> (preset in configs/, display name), in Table 1's order.
    table1: ClassVar[dict[str, tuple[str, str]]] = {}
    # Trains from unpaired H&E and IHC files (the data pipeline then pairs them at random).
    unpaired_data: ClassVar[bool] = False

    def __init__(self, cfg: Config, steps_per_epoch: int):
        self.check(cfg)
        self.cfg = cfg
        self.loss = cfg.loss
        self.options = cfg.options
        self.steps_per_epoch = steps_per_epoch
        self.first_stage_steps = 0
        self.gan_steps = cfg.schedule.epochs * steps_per_epoch
        self.decay_steps = cfg.schedule.decay_epochs * steps_per_epoch

    @property
    def total_steps(self) -> int:
        return self.first_stage_steps + self.gan_steps

    @classmethod
    def check(cls, cfg: Config) -> None:
        """Refuse a config the networks cannot run, before any work (default: nothing to check)."""

    # ------------------------------------------------------------------ sizes, checked on the meta device

    def check_sizes(self, batch_sizes: Sequence[int] = (), val_sizes: Sequence[tuple[int, int]] = ()) -> None:
        """Refuse, before anything is allocated or trained, networks too large to build and tile sizes they cannot take.

        :meth:`check` knows each method's rules (size multiples, the
        discriminator's smallest input); this checks what the networks
        themselves say, for every method alike: they are built on the meta
        device (shapes, no memory, no compute), then

        - their parameters and buffers are counted against ``MAX_NETWORK_NUMBERS``;
        - every network :meth:`probe_inputs` can feed runs forward, in training
          mode, on ``data.crop`` sized inputs at each of ``batch_sizes`` (the
          loader's batch sizes, a short last batch included; default
          ``data.batch``), and the generator, in eval mode, on each
          ``(height, width)`` of ``val_sizes`` (the validation tiles).

        A network that fails at ``data.crop`` but runs at a larger crop cannot
        take ``data.crop``: the error names ``data.crop``, the network, why,
        and the smallest crop that works (found by bisection on the meta
        device, among crops :meth:`check` accepts). A network that fails at
        every size was probed with inputs it does not take: it is left to the
        first step, never refused.
        """
        import warnings

        batch_sizes = sorted(set(batch_sizes) or {self.cfg.data.batch})
        try:
            with warnings.catch_warnings(), torch.random.fork_rng(devices=[]), torch.device("meta"):
                warnings.simplefilter("ignore")  # the real build warns, once
                nets = self.networks()
        except TdkstainError:
            raise
        except Exception:  # noqa: BLE001 - a network that cannot be built on the meta device: nothing to check here
            return
        self._check_network_sizes(nets)
        crop = self.cfg.data.crop
        failing = {name: err for name in nets if (err := self._probe(nets, name, crop, batch_sizes)) is not None}
        step = 2 ** self.cfg.model.n_downsampling
        largest = next((c for c in range(MAX_TILE_SIDE // step * step, crop, -step) if self._crop_allowed(c)), None)
        if failing and largest is not None:
            failing = {name: err for name, err in failing.items() if self._probe(nets, name, largest, batch_sizes) is None}
            if failing:
                low, high = crop // step, largest // step  # fails at low * step, works at high * step
                while high - low > 1:
                    mid = (low + high) // 2
                    works = self._crop_allowed(mid * step) and all(
                        self._probe(nets, name, mid * step, batch_sizes) is None for name in failing)
                    low, high = (low, mid) if works else (mid, high)
                name, err = next(iter(failing.items()))
                raise TdkstainError(
                    f"data.crop={crop} is too small for the {name} of method {self.cfg.method} ({_first_line(err)}); "
                    f"the smallest crop its networks take is {high * step}: use data.crop={high * step} or more"
                )
        generator = nets.get("generator")
        if generator is not None and val_sizes and self._probe(nets, "generator", crop, [1], train=False) is None:
            for height, width in sorted(set(val_sizes)):
                err = self._probe(nets, "generator", (height, width), [1], train=False)
                if err is not None:
                    raise TdkstainError(
                        f"validation tiles of {width}x{height} px are too small for the generator of method "
                        f"{self.cfg.method} ({_first_line(err)}); set data.val_size to a crop it takes "
                        f"(e.g. data.val_size={crop}, as data.crop) or use larger validation tiles"
                    )

    def probe_inputs(self, net: nn.Module, batch: int, height: int, width: int) -> tuple[torch.Tensor, ...] | None:
        """Inputs for a forward pass of ``net`` at ``height`` x ``width`` px (meta tensors), or None: not probed.

        Default: one ``(batch, C, height, width)`` image for a network whose
        first layer is a 2-d convolution with C input channels (generators,
        discriminators, conditional ones with 6 channels); networks fed
        features (TDKstain's estimator, ASP's projection heads) are not probed.
        A method whose networks take other inputs overrides this.
        """
        first = next((m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
        if not isinstance(first, nn.Conv2d):
            return None
        return (torch.empty(batch, first.in_channels, height, width, device="meta"),)

    def _probe(self, nets: Nets, name: str, size: int | tuple[int, int], batch_sizes: Sequence[int],
               train: bool = True) -> Exception | None:
        """The error of ``nets[name]``'s forward pass at ``size`` on the meta device, or None when it runs (or is not probed)."""
        net = nets[name]
        height, width = (size, size) if isinstance(size, int) else size
        was_training = net.training
        net.train(train)
        try:
            with torch.no_grad():
                for batch in batch_sizes:
                    inputs = self.probe_inputs(net, batch, height, width)
                    if inputs is None:
                        return None
                    net(*inputs)
        except Exception as err:  # noqa: BLE001 - shape errors come as RuntimeError, ValueError, IndexError, ...
            return err
        finally:
            net.train(was_training)
        return None

    def _crop_allowed(self, crop: int) -> bool:
        """Whether :meth:`check` accepts ``data.crop=crop`` (the rest of the config as it is)."""
        cfg = self.cfg.model_copy(update={"data": self.cfg.data.model_copy(update={"crop": crop})})
        try:
            type(self).check(cfg)
        except TdkstainError:
            return False
        return True

    def _check_network_sizes(self, nets: Nets) -> None:
        numbers = {name: sum(t.numel() for t in (*net.parameters(), *net.buffers())) for name, net in nets.items()}
        total = sum(numbers.values())
        if total > MAX_NETWORK_NUMBERS:
            largest = max(numbers, key=numbers.get)
            raise TdkstainError(
                f"model: the networks of method {self.cfg.method} would hold {total:,} parameters and buffers "
                f"({total * 4 / 2**30:,.0f} GB in fp32, about 4x that while training), more than the limit of "
                f"{MAX_NETWORK_NUMBERS:,}; the {largest} alone holds {numbers[largest]:,}. Lower the network sizes "
                "(model.ngf, model.ndf, model.nef, model.n_blocks, model.n_downsampling) or the method's options that "
                "size buffers (e.g. options.pool_size)"
            )

    @classmethod
    def architecture_settings(cls, cfg: Config) -> dict[str, Any]:
        """The dotted settings outside ``model`` that shape the tensors (``options.<name>`` of :attr:`architecture_options`)."""
        return {"options." + name: getattr(cfg.options, name) for name in cls.architecture_options}

    @staticmethod
    def needs(cfg: Config) -> dict[str, bool]:
        """Which knowledge maps the data must provide (default: none)."""
        return {"membrane": False, "nuclei": False}

    def networks(self) -> Nets:
        """The method's networks by name, built but not initialised; ``generator`` maps H&E to IHC."""
        raise NotImplementedError

    def initialise(self, nets: Nets) -> Nets:
        """Default: pix2pix's ``normal`` init, N(0, 0.02) weights, zero biases (:func:`tdkstain.models.init_weights`)."""
        for net in nets.values():
            init_weights(net)
        return nets

    def build_networks(self, seed: int) -> Nets:
        """Networks built and initialised from ``seed`` alone (the global generator is left as it was)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.initialise(self.networks())

    def lr_factor(self, name: str, step: int) -> float:
        """Learning-rate multiplier of network ``name`` at 0-based ``step``: 1, then linear decay over the
        last ``decay_steps`` GAN steps (the first decay step at 1, the last at ``1 / decay_steps``)."""
        gan_step = step - self.first_stage_steps
        constant = self.gan_steps - self.decay_steps
        if gan_step < constant or self.decay_steps == 0:
            return 1.0
        return 1.0 - (gan_step - constant) / self.decay_steps

    def epoch(self, step: int) -> int:
        """1-based epoch of 0-based ``step`` (the reference code's ``current_epoch``)."""
        return step // max(self.steps_per_epoch, 1) + 1

    def train_step(self, step: int, nets: Nets, optimizers: Optimizers, batch: Batch, rt: Runtime) -> Terms:
        """One iteration: every phase's forward, backward and optimiser step; returns detached loss terms."""
        raise NotImplementedError
