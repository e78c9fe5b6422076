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
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

import torch
from torch import nn

from tdkstain.methods.losses import gan_loss
from tdkstain.models.layers import init_weights
from tdkstain.plumbing.errors import TdkstainError
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
