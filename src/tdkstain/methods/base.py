"""What every comparison method shares with TDKstain's objective: schedule, seeding, updates.

A method is a class with the interface of ``tdkstain.objective.TdkstainObjective``
(``needs``, ``build_networks``, ``lr_factor``, ``train_step``, ``total_steps``):
its networks are a ``{name: module}`` dict (one Adam each, made by the
trainer, which checkpoints and restores them by name), and each update phase
returns detached loss terms named ``phase/term``. The network called
``generator`` is the H&E -> IHC generator the trainer validates and exports.
"""

from __future__ import annotations

import torch
from torch import nn

from tdkstain.config import Config
from tdkstain.objective import Batch, Nets, NonFiniteLoss, Optimizers, Runtime, Terms, _gradients_finite, gan_loss

__all__ = ["BaselineObjective", "discriminator_terms", "discriminator_update", "generator_log", "update"]


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


class BaselineObjective:
    """Common part of the comparison methods.

    Schedule: ``schedule.epochs`` epochs, the last ``schedule.decay_epochs``
    with the learning rate decaying linearly (the pix2pix/CycleGAN ``linear``
    policy, as TDKstain's trainer applies it). No knowledge maps are loaded.
    """

    def __init__(self, cfg: Config, steps_per_epoch: int):
        self.cfg = cfg
        self.loss = cfg.loss
        self.options = cfg.baseline
        self.steps_per_epoch = steps_per_epoch
        self.gan_steps = cfg.schedule.epochs * steps_per_epoch
        self.decay_steps = cfg.schedule.decay_epochs * steps_per_epoch
        self.total_steps = self.gan_steps

    @staticmethod
    def needs(cfg: Config) -> dict[str, bool]:
        return {"membrane": False, "nuclei": False}

    def networks(self) -> Nets:
        raise NotImplementedError

    def initialise(self, nets: Nets) -> Nets:
        """Default: pix2pix's ``normal`` init, N(0, 0.02) weights, zero biases (``tdkstain.networks.init_weights``)."""
        from tdkstain.networks import init_weights

        for net in nets.values():
            init_weights(net)
        return nets

    def build_networks(self, seed: int) -> Nets:
        """Networks built and initialised from ``seed`` alone (the global generator is left as it was)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.initialise(self.networks())

    def lr_factor(self, name: str, step: int) -> float:
        constant = self.gan_steps - self.decay_steps
        if step < constant or self.decay_steps == 0:
            return 1.0
        return 1.0 - (step - constant) / self.decay_steps

    def epoch(self, step: int) -> int:
        """1-based epoch of 0-based ``step`` (the reference code's ``current_epoch``)."""
        return step // max(self.steps_per_epoch, 1) + 1

    def train_step(self, step: int, nets: Nets, optimizers: Optimizers, batch: Batch, rt: Runtime) -> Terms:
        raise NotImplementedError
