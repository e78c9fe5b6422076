"""One registry of methods: adding a method is one module and one registry line, and everything follows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import Field

from conftest import TINY, make_dataset
from tdkstain.methods import METHODS, create_method, register_method, table1_methods
from tdkstain.methods.base import Method, generator_log, update
from tdkstain.models import ResnetGenerator
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.plumbing.sections import Section
from tdkstain.training import train
from tdkstain.training.config import build_config


class ToyOptions(Section):
    scale: float = Field(1.0, gt=0, description="weight of the toy's L1")


class Toy(Method):
    """The smallest method: one generator trained by L1 alone."""

    Options = ToyOptions
    table1 = {"toy": ("demo-cpu", "a toy")}

    def networks(self):
        return {"generator": ResnetGenerator(3, 3, ngf=4, n_downsampling=1, n_blocks=1)}

    def train_step(self, step, nets, optimizers, batch, rt):
        generator = nets["generator"]
        with rt.autocast():
            fake = generator(batch["he"])
        loss = self.options.scale * F.l1_loss(fake.float(), batch["ihc"])
        update("generator", loss, {"l1": loss}, [generator], [optimizers["generator"]], rt)
        return generator_log({"l1": loss}, loss)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(METHODS, "toy", Toy)  # register_method, undone after the test
    return Toy


def test_a_registered_toy_method_trains_two_steps_and_exports_its_generator(toy, tmp_path):
    data = make_dataset(tmp_path / "data", n_train=2, n_test=1, size=32, knowledge=False)
    cfg = build_config({"method": "toy", "options": {"scale": 2.0}},
                       [*TINY, f"data.root={data}", "data.val_pairs=1", "train.max_steps=2"])
    assert isinstance(cfg.options, ToyOptions) and cfg.options.scale == 2.0
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.step == 2 and set(result.nets) == {"generator"}
    assert (tmp_path / "run" / "weights" / "generator.safetensors").is_file()
    assert "options:\n  scale: 2.0" in (tmp_path / "run" / "config.yaml").read_text()
    # The registry drives the rest: the method's options are checked, Table 1 lists it.
    with pytest.raises(TdkstainError, match=r"options.nce: unknown key.*method toy's options: scale"):
        build_config({"method": "toy"}, ["options.nce=1"])
    assert table1_methods()["toy"] == ("demo-cpu", "a toy")
    assert isinstance(create_method(cfg, 1), Toy)


def test_register_method_refuses_what_is_not_a_method(monkeypatch):
    monkeypatch.setattr("tdkstain.methods.METHODS", dict(METHODS))
    with pytest.raises(TypeError):
        register_method("bad", object)
    register_method("toy", Toy)
    from tdkstain import methods

    assert methods.METHODS["toy"] is Toy


def test_an_unknown_method_names_the_known_ones():
    with pytest.raises(TdkstainError, match="method: .*unknown method 'pix2pix2'; known: cyclegan, pix2pix, "):
        build_config({"method": "pix2pix2"})


def test_every_registered_method_builds_and_steps_once_at_tiny_size():
    """The same test for every method, as timm tests every registered model."""
    tiny_options = {"asp": {"nce_patches": 8, "nce_dim": 8}, "cyclegan": {"pool_size": 2}, "pix2pixhd": {"vgg": 0.0}}
    tiny_model = {"pix2pix": ["model.n_downsampling=5", "data.crop=64"], "asp": ["model.n_layers_d=3", "data.crop=64"]}
    torch.manual_seed(0)
    for name in METHODS:
        overrides = ["model.ngf=4", "model.ndf=4", "model.n_blocks=1", "model.nef=4", "model.estimator_blocks=1",
                     "model.num_d=1", "data.crop=32", *tiny_model.get(name, [])]
        cfg = build_config({"method": name, "options": tiny_options.get(name, {})}, overrides)
        method = create_method(cfg, 1)
        nets = method.build_networks(0)
        optimizers = {k: torch.optim.Adam(v.parameters()) for k, v in nets.items()}
        size = cfg.data.crop
        batch = {k: torch.rand(1, c, size, size) * (2 if c == 3 else 1) - (1 if c == 3 else 0)
                 for k, c in (("he", 3), ("ihc", 3), ("dab", 3), ("membrane_mask", 1), ("nuclei_density", 1))}
        from tdkstain.methods.base import Runtime

        terms = method.train_step(0, nets, optimizers, batch, Runtime())
        assert "generator/loss" in terms and torch.isfinite(terms["generator/loss"]), name
