"""The TDKstain method: each phase against the formula of docs/method.md, ablations, batching."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tdkstain.training.config import build_config
from tdkstain.models.layers import count_parameters
from tdkstain.methods.base import NonFiniteLoss, Runtime
from tdkstain.methods.losses import gan_loss
from tdkstain.methods.tdkstain import TDKstain, discriminator_step, estimator_step, generate, generator_step

TINY = [
    "model.ngf=4", "model.n_blocks=1", "model.ndf=4", "model.num_d=2", "model.nef=4", "model.estimator_blocks=1",
]


# Loss weights that differ from each other and from the presets' 10s.
WEIGHTS = ("loss.l1=3", "loss.membrane=7", "loss.nuclei=11", "loss.estimator=5")


def tiny(*overrides: str):
    return build_config({}, [*TINY, *overrides])


def make_batch(b: int = 2, size: int = 48, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "he": torch.rand(b, 3, size, size, generator=g) * 2 - 1,
        "ihc": torch.rand(b, 3, size, size, generator=g) * 2 - 1,
        "dab": torch.rand(b, 3, size, size, generator=g) * 2 - 1,
        "membrane_mask": torch.rand(b, 1, size, size, generator=g),
        "nuclei_density": torch.rand(b, 1, size, size, generator=g),
    }


def setup(cfg, seed: int = 0):
    objective = TDKstain(cfg, steps_per_epoch=10)
    nets = objective.build_networks(seed)
    opts = {k: torch.optim.Adam(n.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas)) for k, n in nets.items()}
    return objective, nets, opts


def params(net) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_batched_generator_forward_equals_two_forwards():
    cfg = tiny()
    _, nets, _ = setup(cfg)
    batch = make_batch()
    generated = generate(nets, batch, cfg.loss, Runtime())
    G = nets["generator"]
    with torch.no_grad():
        separate_fake = G(batch["he"])
        separate_membrane = G(batch["membrane_mask"] * batch["he"])
    torch.testing.assert_close(generated.fake.detach(), separate_fake, rtol=0, atol=1e-6)
    torch.testing.assert_close(generated.fake_membrane.detach(), separate_membrane, rtol=0, atol=1e-6)


def test_discriminator_step_matches_lsgan_formula_and_updates_only_d():
    cfg = tiny()
    _, nets, opts = setup(cfg)
    batch = make_batch()
    generated = generate(nets, batch, cfg.loss, Runtime())
    D0 = copy.deepcopy(nets["discriminator"]).double()
    g_before = params(nets["generator"])
    d_before = params(nets["discriminator"])
    terms = discriminator_step(nets, opts, batch, generated, cfg.loss, Runtime())
    # Reference in float64, real and fake pairs through separate forwards.
    he, ihc, fake = batch["he"].double(), batch["ihc"].double(), generated.fake.detach().double()
    with torch.no_grad():
        real_scores = D0(torch.cat([he, ihc], 1))
        fake_scores = D0(torch.cat([he, fake], 1))
    real = sum(((s - 1) ** 2).mean() for s in real_scores)
    fake_term = sum((s**2).mean() for s in fake_scores)
    assert len(real_scores) == 2
    assert terms["discriminator/loss"].item() == pytest.approx(0.5 * (real + fake_term).item(), rel=1e-5)
    assert same(g_before, params(nets["generator"]))
    assert not same(d_before, params(nets["discriminator"]))


def test_generator_step_matches_formula_and_leaves_d_and_e_untouched():
    # Distinct weights: a term weighted by another term's coefficient fails this test.
    cfg = tiny(*WEIGHTS)
    _, nets, opts = setup(cfg)
    batch = make_batch()
    G0, D0, E0 = (copy.deepcopy(nets[k]).double() for k in ("generator", "discriminator", "estimator"))
    d_before, e_before, g_before = params(nets["discriminator"]), params(nets["estimator"]), params(nets["generator"])
    generated = generate(nets, batch, cfg.loss, Runtime())
    terms = generator_step(nets, opts, batch, generated, cfg.loss, Runtime())
    b = {k: v.double() for k, v in batch.items()}
    with torch.no_grad():
        fake = G0(b["he"])
        gan = sum(((s - 1) ** 2).mean() for s in D0(torch.cat([b["he"], fake], 1)))
        l1 = 3 * (fake - b["ihc"]).abs().mean()
        membrane = 7 * (G0(b["membrane_mask"] * b["he"]) - b["dab"]).abs().mean()
        nuclei = 11 * ((E0(G0.encode(fake), (48, 48)) - b["nuclei_density"]) ** 2).mean()
    for name, ref in [("gan", gan), ("l1", l1), ("membrane", membrane), ("nuclei", nuclei)]:
        assert terms[f"generator/{name}"].item() == pytest.approx(ref.item(), rel=1e-4), name
    assert same(d_before, params(nets["discriminator"]))
    assert same(e_before, params(nets["estimator"]))
    assert not same(g_before, params(nets["generator"]))
    # Frozen networks get no parameter gradients, and come back trainable.
    assert all(p.grad is None for p in nets["discriminator"].parameters())
    assert all(p.requires_grad for p in nets["discriminator"].parameters())


def test_nuclei_term_gradient_reaches_the_generator_through_frozen_estimator():
    cfg = tiny()
    _, nets, _ = setup(cfg)
    batch = make_batch()
    G, E = nets["generator"], nets["estimator"]
    for p in E.parameters():
        p.requires_grad_(False)
    loss = F.mse_loss(E(G.encode(G(batch["he"])), (48, 48)), batch["nuclei_density"])
    loss.backward()
    first_conv = G.model[1].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0


def test_estimator_step_matches_formula_and_updates_only_e():
    cfg = tiny(*WEIGHTS)
    _, nets, opts = setup(cfg)
    batch = make_batch()
    G0, E0 = copy.deepcopy(nets["generator"]).double(), copy.deepcopy(nets["estimator"]).double()
    g_before, e_before = params(nets["generator"]), params(nets["estimator"])
    terms = estimator_step(nets, opts, batch, cfg.loss, Runtime())
    with torch.no_grad():
        ref = 5 * ((E0(G0.encode(batch["ihc"].double()), (48, 48)) - batch["nuclei_density"].double()) ** 2).mean()
    assert terms["estimator/loss"].item() == pytest.approx(ref.item(), rel=1e-5)
    assert same(g_before, params(nets["generator"]))
    assert not same(e_before, params(nets["estimator"]))


def test_vanilla_gan_loss_is_bce_with_logits():
    scores = [torch.tensor([[[[0.3, -2.0]]]]), torch.tensor([[[[1.5]]]])]
    # -log(sigmoid(s)) for real targets, written out by hand.
    ref = sum(torch.log1p(torch.exp(-s)).mean() for s in scores)
    assert gan_loss(scores, True, "vanilla").item() == pytest.approx(ref.item(), rel=1e-6)
    assert gan_loss(scores, False, "lsgan").item() == pytest.approx(sum((s**2).mean() for s in scores).item())


class CountingForward:
    """Records the batch size of every forward call of a module."""

    def __init__(self, module):
        self.sizes: list[int] = []
        module.register_forward_hook(lambda m, inp, out: self.sizes.append(inp[0].shape[0]))


def test_membrane_weight_zero_removes_the_masked_forward():
    for membrane, expected in [(10, [4]), (0, [2])]:
        cfg = tiny(f"loss.membrane={membrane}", "loss.nuclei=0")
        objective, nets, opts = setup(cfg)
        counter = CountingForward(nets["generator"].model)
        batch = make_batch()
        if membrane == 0:
            del batch["membrane_mask"], batch["dab"]
        terms = objective.train_step(0, nets, opts, batch, Runtime())
        assert counter.sizes == expected
        assert ("generator/membrane" in terms) == (membrane > 0)


def test_nuclei_weight_zero_builds_no_estimator_and_runs_no_estimator_step():
    cfg = tiny("loss.nuclei=0")
    objective, nets, opts = setup(cfg)
    assert "estimator" not in nets
    batch = make_batch()
    del batch["nuclei_density"]
    terms = objective.train_step(0, nets, opts, batch, Runtime())
    assert not any(k.startswith("estimator") for k in terms)
    assert "generator/nuclei" not in terms
    # With the branch on, the estimator runs twice: on real IHC (E step) and on G(x) (G step).
    cfg = tiny()
    objective, nets, opts = setup(cfg)
    counter = CountingForward(nets["estimator"].model)
    objective.train_step(0, nets, opts, make_batch(), Runtime())
    assert len(counter.sizes) == 2


def test_nonfinite_loss_stops_naming_the_term_or_skips():
    cfg = tiny()
    _, nets, opts = setup(cfg)
    batch = make_batch()
    batch["ihc"][0, 0, 0, 0] = float("nan")
    generated = generate(nets, batch, cfg.loss, Runtime())
    with pytest.raises(NonFiniteLoss, match="generator/l1"):
        generator_step(nets, opts, batch, generated, cfg.loss, Runtime())
    before = params(nets["generator"])
    rt = Runtime(nonfinite="skip")
    generator_step(nets, opts, batch, generated, cfg.loss, rt)
    assert rt.skipped == 1
    assert same(before, params(nets["generator"]))


def test_two_stage_schedule_trains_estimator_alone_first():
    cfg = tiny("schedule.kind=two-stage", "schedule.estimator_epochs=1", "schedule.epochs=2", "schedule.decay_epochs=1")
    objective, nets, opts = setup(cfg)
    assert objective.first_stage_steps == 10 and objective.total_steps == 30
    g_before = params(nets["generator"])
    terms = objective.train_step(0, nets, opts, make_batch(), Runtime())
    assert set(terms) == {"estimator/loss"}
    assert same(g_before, params(nets["generator"]))
    terms = objective.train_step(10, nets, opts, make_batch(), Runtime())
    assert "estimator/loss" not in terms and "generator/nuclei" in terms


def test_lr_decays_linearly_and_never_reaches_zero():
    cfg = tiny("schedule.epochs=4", "schedule.decay_epochs=2")
    objective = TDKstain(cfg, steps_per_epoch=5)  # 20 steps, the last 10 decaying
    factors = [objective.lr_factor("generator", s) for s in range(20)]
    assert factors[:11] == [1.0] * 11
    assert factors[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(factors[10:], factors[11:]))
    assert min(factors) > 0


def test_paper_preset_parameter_counts_match_method():
    from tdkstain.training.config import load_config

    cfg = load_config("tdkstain-paper")
    nets = TDKstain(cfg, 1).build_networks(0)
    counts = {k: count_parameters(v) / 1e6 for k, v in nets.items()}
    assert counts["generator"] == pytest.approx(45.6, abs=0.05)
    assert counts["discriminator"] == pytest.approx(8.3, abs=0.05)
    assert counts["estimator"] == pytest.approx(6.8, abs=0.05)
