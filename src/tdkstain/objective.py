"""The TDKstain objective: three explicit update phases per iteration.

docs/method.md "Losses and update order", with ``x`` the H&E, ``y`` the IHC,
``M`` the soft membrane mask, ``K_M`` the DAB image and ``K_N`` the nuclei
density map of one batch:

1. :func:`estimator_step` (G frozen): ``L_E = w_E * MSE(E(G_en(y)), K_N)``
2. :func:`discriminator_step`: LSGAN
   ``L_D = 0.5 * (sum_s MSE(D_s(x, y), 1) + sum_s MSE(D_s(x, G(x)), 0))``
3. :func:`generator_step` (D and E frozen):
   ``L_G = sum_s MSE(D_s(x, G(x)), 1) + w_L1 * L1(G(x), y)
   + w_M * L1(G(M * x), K_M) + w_N * MSE(E(G_en(G(x))), K_N)``

All reductions are means (``nn.MSELoss`` / ``nn.L1Loss`` defaults, as the
release). As in the release, ``G(x)`` is computed once per iteration
(:func:`generate`), used detached by the discriminator step and with its graph
by the generator step, which sees the discriminator just updated. ``G(x)`` and
``G(M * x)`` run as one batched forward: instance norm normalises each sample
on its own, so the maths is that of two forwards.

A weight of 0 removes its branch and its compute: no ``G(M * x)`` when the
membrane weight is 0, no estimator at all when the nuclei weight is 0.

Each phase does forward, backward and its optimiser step, and returns a dict
of detached loss terms. Mixed precision, gradient scaling, multi-process
gradient averaging and the non-finite policy come in through :class:`Runtime`,
so the maths here reads the same on one CPU or many GPUs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from tdkstain.config import Config, LossConfig, ModelConfig
from tdkstain.errors import TdkstainError
from tdkstain.networks import MultiscaleDiscriminator, NucleiDensityEstimator, ResnetGenerator, init_weights, multiscale_min_input

Nets = dict[str, nn.Module]
Optimizers = dict[str, torch.optim.Optimizer]
Batch = dict[str, torch.Tensor]
Terms = dict[str, torch.Tensor]


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


def _update(phase: str, loss: torch.Tensor, terms: Terms, net: nn.Module, optimizer: torch.optim.Optimizer, rt: Runtime) -> bool:
    """Backward and step, unless a term is non-finite (then stop or skip, on every rank alike)."""
    bad = [name for name, value in terms.items() if not bool(torch.isfinite(value).all())]
    if not rt.all_ranks_ok(not bad):
        if rt.nonfinite == "stop":
            raise NonFiniteLoss(f"{phase}/{bad[0]}" if bad else f"{phase} (on another process)")
        optimizer.zero_grad(set_to_none=True)
        rt.skipped += 1
        return False
    optimizer.zero_grad(set_to_none=True)
    if rt.scaler is not None:
        rt.scaler.scale(loss).backward()
    else:
        loss.backward()
    if rt.average_gradients is not None:
        rt.average_gradients(net)
    # A finite loss can still give NaN / inf gradients (an overflow in backward).
    # fp16's GradScaler checks and skips such steps itself; elsewhere check here,
    # after averaging, so that every rank decides alike.
    if rt.scaler is None and not _gradients_finite(net):
        if rt.nonfinite == "stop":
            raise NonFiniteLoss(phase, what="gradients in network")
        optimizer.zero_grad(set_to_none=True)
        rt.skipped += 1
        return False
    if rt.scaler is not None:
        rt.scaler.step(optimizer)
        rt.scaler.update()
    else:
        optimizer.step()
    return True


def gan_loss(outputs: list, real: bool, kind: str) -> torch.Tensor:
    """Sum over discriminator scales of the per-scale GAN loss against target 1 (real) or 0.

    ``outputs``: per-scale score maps ``(B, 1, h_s, w_s)`` (or per-scale lists
    whose last element is the score map). LSGAN: mean squared error; vanilla:
    binary cross-entropy on logits (pix2pix's ``BCEWithLogitsLoss``).
    """
    total = torch.zeros((), device=_first(outputs).device)
    for out in outputs:
        score = (out[-1] if isinstance(out, (list, tuple)) else out).float()
        target = torch.full_like(score, 1.0 if real else 0.0)
        if kind == "lsgan":
            total = total + F.mse_loss(score, target)
        else:
            total = total + F.binary_cross_entropy_with_logits(score, target)
    return total


def _first(outputs: list) -> torch.Tensor:
    o = outputs[0]
    return o[-1] if isinstance(o, (list, tuple)) else o


def _split_scales(outputs: list, n: int) -> tuple[list, list]:
    """Split per-scale outputs of a batched D forward into the first n samples and the rest."""
    first, rest = [], []
    for out in outputs:
        score = out[-1] if isinstance(out, (list, tuple)) else out
        first.append(score[:n])
        rest.append(score[n:])
    return first, rest


def estimator_step(nets: Nets, optimizers: Optimizers, batch: Batch, loss: LossConfig, rt: Runtime) -> Terms:
    """Train E on the real IHC's encoder taps: ``L_E = w_E * MSE(E(G_en(y)), K_N)``, G frozen."""
    generator, estimator = nets["generator"], nets["estimator"]
    density = batch["nuclei_density"]
    with rt.autocast():
        with torch.no_grad():
            taps = generator.encode(batch["ihc"])
        predicted = estimator(taps, density.shape[-2:])
    term = F.mse_loss(predicted.float(), density)
    total = loss.estimator * term
    _update("estimator", total, {"loss": total}, estimator, optimizers["estimator"], rt)
    return {"estimator/loss": total.detach()}


@dataclass
class Generated:
    """``fake``: ``G(x)``, ``(B, 3, H, W)`` in [-1, 1] with its graph; ``fake_membrane``: ``G(M * x)`` or None."""

    fake: torch.Tensor
    fake_membrane: torch.Tensor | None


def generate(nets: Nets, batch: Batch, loss: LossConfig, rt: Runtime) -> Generated:
    """``G(x)`` and, when the membrane branch is on, ``G(M * x)`` in one batched forward."""
    generator, he = nets["generator"], batch["he"]
    with rt.autocast():
        if loss.membrane > 0:
            # M (B,1,H,W) in [0,1] times the [-1,1] H&E (docs/method.md): masked-out pixels become 0, mid-grey.
            both = generator(torch.cat([he, batch["membrane_mask"] * he], dim=0))
            fake, fake_membrane = both[: he.shape[0]], both[he.shape[0] :]
        else:
            fake, fake_membrane = generator(he), None
    return Generated(fake, fake_membrane)


def discriminator_step(nets: Nets, optimizers: Optimizers, batch: Batch, generated: Generated, loss: LossConfig, rt: Runtime) -> Terms:
    """LSGAN (or vanilla) discriminator update on real ``(x, y)`` and fake ``(x, G(x))`` pairs."""
    discriminator, he = nets["discriminator"], batch["he"]
    fake = generated.fake.detach()
    with rt.autocast():
        # Real and fake pairs in one forward: D's norms are per sample (instance norm).
        pairs = torch.cat([torch.cat([he, batch["ihc"]], 1), torch.cat([he, fake], 1)], 0)
        real_scores, fake_scores = _split_scales(discriminator(pairs), he.shape[0])
    real_term = gan_loss(real_scores, True, loss.gan)
    fake_term = gan_loss(fake_scores, False, loss.gan)
    total = 0.5 * (real_term + fake_term)
    _update("discriminator", total, {"real": real_term, "fake": fake_term}, discriminator, optimizers["discriminator"], rt)
    return {"discriminator/real": real_term.detach(), "discriminator/fake": fake_term.detach(), "discriminator/loss": total.detach()}


def generator_step(nets: Nets, optimizers: Optimizers, batch: Batch, generated: Generated, loss: LossConfig, rt: Runtime) -> Terms:
    """Generator update with D and E frozen; the nuclei term's gradient flows through E and G's encoder."""
    generator, discriminator, estimator = nets["generator"], nets["discriminator"], nets.get("estimator")
    he, fake = batch["he"], generated.fake
    terms: Terms = {}
    with frozen(discriminator, estimator):
        with rt.autocast():
            terms["gan"] = gan_loss(discriminator(torch.cat([he, fake], 1)), True, loss.gan)
            if loss.l1 > 0:
                terms["l1"] = loss.l1 * F.l1_loss(fake.float(), batch["ihc"])
            if loss.membrane > 0:
                terms["membrane"] = loss.membrane * F.l1_loss(generated.fake_membrane.float(), batch["dab"])
            if loss.nuclei > 0:
                density = batch["nuclei_density"]
                predicted = estimator(generator.encode(fake), density.shape[-2:])
                terms["nuclei"] = loss.nuclei * F.mse_loss(predicted.float(), density)
        total = sum(terms.values())
        _update("generator", total, terms, generator, optimizers["generator"], rt)
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


def build_generator(model: ModelConfig) -> ResnetGenerator:
    return ResnetGenerator(3, 3, model.ngf, model.n_downsampling, model.n_blocks)


class TdkstainObjective:
    """TDKstain (docs/method.md): networks it needs, and one training iteration.

    ``schedule.kind`` "joint" (the release): E, D, G phases every iteration.
    "two-stage" (the paper): the first ``estimator_steps`` iterations train
    only E, then D and G with E frozen.
    """

    def __init__(self, cfg: Config, steps_per_epoch: int):
        m = cfg.model
        check_tile_sizes(cfg, 2**m.n_downsampling, multiscale_min_input(m.n_layers_d, m.num_d, cfg.d_padding),
                         f"a {m.num_d}-scale discriminator (model.num_d) with {m.n_layers_d} layers padding {cfg.d_padding}")
        self.cfg = cfg
        self.loss = cfg.loss
        self.has_estimator = cfg.loss.nuclei > 0
        two_stage = cfg.schedule.kind == "two-stage" and self.has_estimator
        self.estimator_steps = cfg.schedule.estimator_epochs * steps_per_epoch if two_stage else 0
        self.gan_steps = cfg.schedule.epochs * steps_per_epoch
        self.decay_steps = cfg.schedule.decay_epochs * steps_per_epoch
        self.total_steps = self.estimator_steps + self.gan_steps

    @staticmethod
    def needs(cfg: Config) -> dict[str, bool]:
        """Which knowledge maps the data must provide (a zero-weight branch loads nothing)."""
        return {"membrane": cfg.loss.membrane > 0, "nuclei": cfg.loss.nuclei > 0}

    def build_networks(self, seed: int) -> Nets:
        """G, D and (if the nuclei weight is non-zero) E, initialised N(0, 0.02) from ``seed`` alone."""
        m = self.cfg.model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            nets: Nets = {
                "generator": init_weights(build_generator(m)),
                "discriminator": init_weights(MultiscaleDiscriminator(6, m.ndf, m.n_layers_d, m.num_d, padding=self.cfg.d_padding)),
            }
            if self.has_estimator:
                taps = sum(nets["generator"].tap_channels)
                nets["estimator"] = init_weights(NucleiDensityEstimator(taps, m.nef, m.estimator_blocks))
        return nets

    def lr_factor(self, name: str, step: int) -> float:
        """Learning-rate multiplier of network ``name`` for 0-based ``step``.

        Constant, then linear decay over the last ``decay_steps`` GAN steps:
        the first decay step runs at the full rate, the last at
        ``1 / decay_steps`` of it, never at 0 (the release's last epoch runs at 0).
        """
        if name == "estimator" and self.estimator_steps:
            return 1.0  # stage one only; E is frozen afterwards
        gan_step = step - self.estimator_steps
        constant = self.gan_steps - self.decay_steps
        if gan_step < constant or self.decay_steps == 0:
            return 1.0
        return 1.0 - (gan_step - constant) / self.decay_steps

    def train_step(self, step: int, nets: Nets, optimizers: Optimizers, batch: Batch, rt: Runtime) -> Terms:
        """One iteration; returns detached loss terms."""
        terms: Terms = {}
        if self.has_estimator and self.loss.estimator > 0 and (step < self.estimator_steps or not self.estimator_steps):
            terms |= estimator_step(nets, optimizers, batch, self.loss, rt)
        if step < self.estimator_steps:
            return terms
        generated = generate(nets, batch, self.loss, rt)
        terms |= discriminator_step(nets, optimizers, batch, generated, self.loss, rt)
        terms |= generator_step(nets, optimizers, batch, generated, self.loss, rt)
        return terms


# name in the config's ``method`` -> objective class. A literal registry: each
# method is one class with ``needs``, ``build_networks``, ``lr_factor``, ``train_step``.
OBJECTIVES: dict[str, type] = {"tdkstain": TdkstainObjective}
# The comparison methods (pix2pix, pix2pixHD, PyramidPix2pix, CycleGAN, ASP) add
# themselves here when tdkstain.methods is imported, which this line does.
import tdkstain.methods  # noqa: E402,F401  (after OBJECTIVES: the package imports this module)


def create_objective(cfg: Config, steps_per_epoch: int) -> TdkstainObjective:
    try:
        cls = OBJECTIVES[cfg.method]
    except KeyError:
        raise TdkstainError(f"method: unknown method {cfg.method!r}; known: {', '.join(OBJECTIVES)}") from None
    return cls(cfg, steps_per_epoch)
