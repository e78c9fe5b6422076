"""TDKstain (Peng, Lin et al., MICCAI 2024) and its ablations: networks, options and three update phases.

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

Each phase does forward, backward and its optimiser step
(:func:`tdkstain.methods.base.update`), and returns a dict of detached loss
terms. The ablations of the paper's Table 1 are this method with a zero
weight (presets ``tdkstain-no-membrane``, ``tdkstain-no-nuclei``,
``tdkstain-no-both``). The networks are the release's
(:mod:`tdkstain.models.tdkstain`), its discriminator padded by 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tdkstain.methods.base import Batch, Method, Nets, Optimizers, Runtime, Terms, check_tile_sizes, frozen, update
from tdkstain.methods.losses import gan_loss
from tdkstain.models.layers import init_weights
from tdkstain.models.tdkstain import MultiscaleDiscriminator, NucleiDensityEstimator, ResnetGenerator, multiscale_min_input

__all__ = ["TDKstain", "estimator_step", "generate", "discriminator_step", "generator_step", "Generated"]


def _split_scales(outputs: list, n: int) -> tuple[list, list]:
    """Split per-scale outputs of a batched D forward into the first n samples and the rest."""
    first, rest = [], []
    for out in outputs:
        score = out[-1] if isinstance(out, (list, tuple)) else out
        first.append(score[:n])
        rest.append(score[n:])
    return first, rest




def estimator_step(nets: Nets, optimizers: Optimizers, batch: Batch, loss: Any, rt: Runtime) -> Terms:
    """Train E on the real IHC's encoder taps: ``L_E = w_E * MSE(E(G_en(y)), K_N)``, G frozen."""
    generator, estimator = nets["generator"], nets["estimator"]
    density = batch["nuclei_density"]
    with rt.autocast():
        with torch.no_grad():
            taps = generator.encode(batch["ihc"])
        predicted = estimator(taps, density.shape[-2:])
    term = F.mse_loss(predicted.float(), density)
    total = loss.estimator * term
    update("estimator", total, {"loss": total}, [estimator], [optimizers["estimator"]], rt)
    return {"estimator/loss": total.detach()}


@dataclass
class Generated:
    """``fake``: ``G(x)``, ``(B, 3, H, W)`` in [-1, 1] with its graph; ``fake_membrane``: ``G(M * x)`` or None."""

    fake: torch.Tensor
    fake_membrane: torch.Tensor | None


def generate(nets: Nets, batch: Batch, loss: Any, rt: Runtime) -> Generated:
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


def discriminator_step(nets: Nets, optimizers: Optimizers, batch: Batch, generated: Generated, loss: Any, rt: Runtime) -> Terms:
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
    update("discriminator", total, {"real": real_term, "fake": fake_term}, [discriminator], [optimizers["discriminator"]], rt)
    return {"discriminator/real": real_term.detach(), "discriminator/fake": fake_term.detach(), "discriminator/loss": total.detach()}


def generator_step(nets: Nets, optimizers: Optimizers, batch: Batch, generated: Generated, loss: Any, rt: Runtime) -> Terms:
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
        update("generator", total, terms, [generator], [optimizers["generator"]], rt)
    out = {f"generator/{k}": v.detach() for k, v in terms.items()}
    out["generator/loss"] = total.detach()
    return out


class TDKstain(Method):
    """TDKstain (docs/method.md): G, D and E, and one training iteration.

    ``schedule.kind`` "joint" (the release): E, D, G phases every iteration.
    "two-stage" (the paper): the first ``schedule.estimator_epochs`` epochs
    train only E, then D and G with E frozen. TDKstain has no ``options:``;
    its branches are weighted in ``loss:`` (a weight of 0 removes a branch).
    """

    d_padding = 1  # the release's PatchGAN (docs/method.md "Networks")
    table1 = {
        "tdkstain-no-both": ("tdkstain-no-both", "TDKstain w/o nuclei, membrane"),
        "tdkstain-no-membrane": ("tdkstain-no-membrane", "TDKstain w/o membrane"),
        "tdkstain-no-nuclei": ("tdkstain-no-nuclei", "TDKstain w/o nuclei"),
        "tdkstain": ("tdkstain-paper", "TDKstain"),
    }

    def __init__(self, cfg, steps_per_epoch: int):
        super().__init__(cfg, steps_per_epoch)
        self.has_estimator = cfg.loss.nuclei > 0
        two_stage = cfg.schedule.kind == "two-stage" and self.has_estimator
        self.first_stage_steps = cfg.schedule.estimator_epochs * steps_per_epoch if two_stage else 0

    @classmethod
    def check(cls, cfg) -> None:
        m = cfg.model
        check_tile_sizes(cfg, 2**m.n_downsampling, multiscale_min_input(m.n_layers_d, m.num_d, cfg.d_padding),
                         f"a {m.num_d}-scale discriminator (model.num_d) with {m.n_layers_d} layers padding {cfg.d_padding}")

    @staticmethod
    def needs(cfg) -> dict[str, bool]:
        """Which knowledge maps the data must provide (a zero-weight branch loads nothing)."""
        return {"membrane": cfg.loss.membrane > 0, "nuclei": cfg.loss.nuclei > 0}

    def networks(self) -> Nets:
        """G, D and (if the nuclei weight is non-zero) E, each initialised N(0, 0.02) as it is built (the release's order)."""
        m = self.cfg.model
        generator = init_weights(ResnetGenerator(3, 3, m.ngf, m.n_downsampling, m.n_blocks))
        nets: Nets = {
            "generator": generator,
            "discriminator": init_weights(MultiscaleDiscriminator(6, m.ndf, m.n_layers_d, m.num_d, padding=self.cfg.d_padding)),
        }
        if self.has_estimator:
            nets["estimator"] = init_weights(NucleiDensityEstimator(sum(generator.tap_channels), m.nef, m.estimator_blocks))
        return nets

    def initialise(self, nets: Nets) -> Nets:
        return nets  # :meth:`networks` initialised each network as it built it

    def lr_factor(self, name: str, step: int) -> float:
        if name == "estimator" and self.first_stage_steps:
            return 1.0  # stage one only; E is frozen afterwards
        return super().lr_factor(name, step)

    def train_step(self, step: int, nets: Nets, optimizers: Optimizers, batch: Batch, rt: Runtime) -> Terms:
        terms: Terms = {}
        first_stage = step < self.first_stage_steps
        if self.has_estimator and self.loss.estimator > 0 and (first_stage or not self.first_stage_steps):
            terms |= estimator_step(nets, optimizers, batch, self.loss, rt)
        if first_stage:
            return terms
        generated = generate(nets, batch, self.loss, rt)
        terms |= discriminator_step(nets, optimizers, batch, generated, self.loss, rt)
        terms |= generator_step(nets, optimizers, batch, generated, self.loss, rt)
        return terms
