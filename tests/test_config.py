"""Typed config: presets, overrides, and errors that name the key."""

from __future__ import annotations

import pytest

from tdkstain.training.config import Config, build_config, load_config, parse_override, preset_names, read_run_config
from tdkstain.plumbing.errors import TdkstainError


def test_presets_load_and_paper_preset_is_the_paper():
    assert {"tdkstain-paper", "demo-cpu"} <= set(preset_names())
    paper = load_config("tdkstain-paper")
    # docs/method.md: 1024 tiles, batch 1, ngf 64, 100 epochs with 50 of decay, weights 10, LSGAN, Adam 2e-4 (0.5, 0.999).
    assert (paper.data.crop, paper.data.batch, paper.model.ngf, paper.model.n_blocks) == (1024, 1, 64, 9)
    assert (paper.schedule.epochs, paper.schedule.decay_epochs, paper.schedule.kind) == (100, 50, "joint")
    assert (paper.loss.l1, paper.loss.membrane, paper.loss.nuclei, paper.loss.estimator, paper.loss.gan) == (10, 10, 10, 10, "lsgan")
    assert (paper.optim.lr, paper.optim.betas) == (2e-4, (0.5, 0.999))
    assert (paper.model.ndf, paper.model.num_d, paper.model.nef, paper.model.estimator_blocks) == (64, 3, 128, 4)
    # The preset only restates the defaults of the typed config for everything architectural.
    assert paper.model == Config().model and paper.loss == Config().loss and paper.optim == Config().optim
    demo = load_config("demo-cpu")
    assert demo.model.ngf < 64 and demo.data.crop <= 256 and demo.train.device == "cpu"


def test_preset_by_path_and_overrides(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("loss:\n  membrane: 3\noptim:\n  lr: 1e-4\n")
    cfg = load_config(str(path), ["loss.nuclei=0", "optim.betas=[0.9, 0.99]", "train.max_steps=null", "data.root=/x"])
    assert cfg.loss.membrane == 3.0 and cfg.loss.nuclei == 0.0
    assert cfg.optim.lr == 1e-4  # YAML 1.1 reads 1e-4 as a string; we read it as the float users mean
    assert cfg.optim.betas == (0.9, 0.99) and cfg.train.max_steps is None and cfg.data.root == "/x"


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.membrain=5", "loss.membrain: unknown key (did you mean loss.membrane?)"),
        ("lose.membrane=5", "lose: unknown key (did you mean loss?)"),
        ("train.seed=abc", "train.seed: Input should be a valid integer"),
        ("data.flip=1", "data.flip: Input should be a valid boolean"),
        ("loss.gan=wgan", "loss.gan: Input should be 'lsgan' or 'vanilla'"),
        ("optim.betas=[0.5, 1.5]", "optim.betas: Value error, both betas must lie in [0, 1)"),
        ("model.ngf=0", "model.ngf: Input should be greater than or equal to 1"),
        ("schedule.kind=staged", "schedule.kind: Input should be 'joint' or 'two-stage'"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, message):
    with pytest.raises(TdkstainError) as err:
        load_config("demo-cpu", [override])
    assert message in str(err.value)
    assert "demo-cpu.yaml" in str(err.value)  # and the file


def test_malformed_overrides_and_unknown_presets():
    with pytest.raises(TdkstainError, match="key=value"):
        parse_override("loss.membrane")
    with pytest.raises(TdkstainError, match="train.seed.*is a value, not a section"):
        build_config({"train": {"seed": 1}}, ["train.seed.x=1"])
    with pytest.raises(TdkstainError, match="no such config file or preset; presets: .*demo-cpu"):
        load_config("demo-gpu")


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config("demo-cpu", ["loss.membrane=2.5", "data.root=/data"])
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())
    assert read_run_config(tmp_path / "config.yaml") == cfg


def test_yaml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: [1, 2\n")
    with pytest.raises(TdkstainError, match="bad.yaml: not valid YAML"):
        load_config(str(bad))
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(TdkstainError, match="bad.yaml: a config is a mapping"):
        load_config(str(bad))


def test_a_baseline_section_of_older_configs_is_read_as_the_methods_options(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("method: pix2pix\nbaseline:\n  norm: batch\n  dropout: true\n  nce: 3\n")
    with pytest.warns(UserWarning, match=r"'baseline:' is now 'options:'.*read dropout, norm.*left out nce"):
        cfg = load_config(old)
    assert (cfg.options.norm, cfg.options.dropout) == ("batch", True)
    # An explicit options value wins over the old section's.
    with pytest.warns(UserWarning):
        cfg = load_config(old, ["options.norm=instance"])
    assert cfg.options.norm == "instance"
    # Written back, the config has no baseline section any more.
    assert "baseline" not in cfg.to_dict() and cfg.to_dict()["options"] == {"norm": "instance", "dropout": True,
                                                                            "spectral_norm": False}


def test_each_method_checks_only_its_own_options():
    assert load_config("asp").options.nce_layers == [0, 4, 8, 12, 16]
    with pytest.raises(TdkstainError, match=r"options.nce_layers: unknown key .*method pix2pix's options: norm, dropout"):
        load_config("pix2pix", ["options.nce_layers=[1]"])
    with pytest.raises(TdkstainError, match=r"options.norm: Input should be 'instance' or 'batch'"):
        load_config("cyclegan", ["options.norm=group"])


def test_schedule_over_steps_stretches_epochs_and_decay_to_the_budget():
    from tdkstain.training.config import load_config, schedule_over_steps

    cfg = load_config("demo-cpu", ["data.batch=3", "schedule.epochs=40", "schedule.decay_epochs=10"])
    # 37 pairs at batch 3: 13 steps an epoch (the last batch partial); 390 steps = 30 epochs, the decay a quarter
    assert schedule_over_steps(cfg, 37, 390) == ["schedule.epochs=30", "schedule.decay_epochs=8", "train.max_steps=390"]
    assert schedule_over_steps(cfg, 37, 5) == ["schedule.epochs=1", "schedule.decay_epochs=0", "train.max_steps=5"]
    with pytest.raises(TdkstainError, match="needs training pairs"):
        schedule_over_steps(cfg, 0, 100)
