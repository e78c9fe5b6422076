"""Crashes: ``kill -9`` at a random moment, then the same command finishes the job as if nothing happened.

Each test runs the real command in a subprocess (``python -m tdkstain ...``),
SIGKILLs it once some output exists (after a random extra delay, seeded so a
failure can be replayed), reruns the same command and compares the result
with an uninterrupted run: bitwise for training weights, byte for byte for
image outputs. ``tdkstain slide`` has its own such test:
``tests/test_slide.py::test_killed_run_resumes_to_the_same_output``.

Also here: non-finite losses (stop or skip, the last good checkpoint kept,
the term named) and a full disk during a checkpoint write.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tdkstain.plumbing.errors import TdkstainError
from tdkstain.training import checkpoint_files, load_checkpoint, train

from conftest import TINY, make_dataset, tiny

# One thread everywhere: the machine is shared, and thread count must not differ between runs.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _tdkstain(*args: str | os.PathLike) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tdkstain", *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=600)


def _kill_when(args: list[str | os.PathLike], ready, seed: int, max_delay: float, timeout: float = 300) -> int | None:
    """Start ``tdkstain ARGS``, SIGKILL it ``uniform(0, max_delay)`` s after ``ready()`` first holds.

    Returns the return code (``-SIGKILL`` when killed, 0 when it finished first).
    """
    delay = random.Random(seed).uniform(0.0, max_delay)
    proc = subprocess.Popen([sys.executable, "-m", "tdkstain", *map(str, args)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if ready():
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _files(folder: Path, pattern: str = "**/*") -> dict[str, bytes]:
    """Outputs under their final names (temporaries ``.tmp-*`` left out)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.glob(pattern))
            if p.is_file() and not p.name.startswith(".")}


# ----------------------------------------------------------------------------- training


TRAIN_STEPS = 24
TRAIN_OVERRIDES = [
    *[o for o in TINY if not o.startswith(("train.checkpoint_every", "train.val_every", "train.log_every"))],
    "train.threads=1", "train.deterministic=true", "data.val_pairs=0", "train.checkpoint_every=2",
    "train.log_every=1", f"train.max_steps={TRAIN_STEPS}",
]


@pytest.mark.slow
def test_train_killed_at_a_random_moment_resumes_to_bitwise_identical_weights(tmp_path):
    data = make_dataset(tmp_path / "data", n_train=4, n_test=0, size=48)
    from tdkstain.training.config import load_config

    cfg = load_config("demo-cpu", [*TRAIN_OVERRIDES, f"data.root={data}"])  # what the command below resolves
    reference = train(cfg, tmp_path / "reference", progress=False)
    assert reference.step == TRAIN_STEPS

    run = tmp_path / "run"
    command = ["train", "--config", "demo-cpu", "--data", data, "--out", run, "--no-progress", *TRAIN_OVERRIDES]
    # A random moment counted in steps (so that a faster machine still kills mid-run), after the first
    # checkpoint, plus a random fraction of a step (which may land inside a checkpoint write).
    kill_after = random.Random(9).randint(3, TRAIN_STEPS // 2)

    def ready() -> bool:
        log = run / "metrics.jsonl"
        return bool(checkpoint_files(run)) and log.is_file() and log.read_text().count("\n") >= kill_after

    code = _kill_when(command, ready, seed=9, max_delay=0.01)
    killed_at = [int(p.stem.split("_")[1]) for p in checkpoint_files(run)]
    if code == 0:
        pytest.skip("training finished before the kill (machine too fast for this run)")
    assert code == -signal.SIGKILL
    assert killed_at and max(killed_at) < TRAIN_STEPS, killed_at
    # The checkpoints that exist are complete: each one loads.
    for path in checkpoint_files(run):
        assert load_checkpoint(path)["step"] == int(path.stem.split("_")[1])
    # What a kill during a write leaves (whether or not this kill hit one): temporaries beside the outputs.
    (run / "checkpoints" / ".tmp-step_00000099-x1y2z3.pt").write_bytes(b"half a checkpoint")
    (run / "weights").mkdir(exist_ok=True)
    (run / "weights" / ".tmp-generator-x1y2z3.safetensors").write_bytes(b"half the weights")
    # A torn last line in metrics.jsonl (a kill mid-append) must not stop the resume.
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')

    result = _tdkstain(*command)
    assert result.returncode == 0, result.stderr
    final = load_checkpoint(checkpoint_files(run)[-1])
    assert final["step"] == TRAIN_STEPS
    for name, net in reference.nets.items():
        ours = final["networks"][name]
        for key, value in net.state_dict().items():
            assert torch.equal(ours[key], value), f"{name}.{key} differs after kill -9 and resume"
    # No temporary checkpoint of the killed write is left, and the log has one record per step.
    assert not list(run.rglob(".tmp-*"))
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, TRAIN_STEPS + 1))


def test_a_torn_metrics_line_does_not_stop_a_resume(tmp_path):
    data = make_dataset(tmp_path / "data", n_train=2, n_test=0, size=40)
    overrides = ["data.val_pairs=0", "train.checkpoint_every=1"]
    train(tiny(data, *overrides, "train.max_steps=1"), tmp_path / "run", progress=False)
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 2, "ima')  # what a kill during the append leaves
    result = train(tiny(data, *overrides, "train.max_steps=2"), tmp_path / "run", progress=False)
    assert result.step == 2
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]


# ----------------------------------------------------------------------------- extract


@pytest.mark.slow
def test_extract_killed_at_a_random_moment_resumes_to_identical_outputs(tmp_path):
    synth = pytest.importorskip("tdkstain.synth")
    source = tmp_path / "source"
    synth.write_dataset(source, 10, size=128, seed=4)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    shutil.copytree(source, reference)
    shutil.copytree(source, killed)
    done = _tdkstain("extract", reference, "--quiet", "--no-report")
    assert done.returncode == 0, done.stderr

    kill_after = random.Random(2).randint(1, 6)  # of 10 tiles

    def some_output() -> bool:
        return len(list(killed.glob("*_IHC_nuclei/*.csv"))) >= kill_after

    code = _kill_when(["extract", killed, "--quiet", "--no-report"], some_output, seed=2, max_delay=0.05)
    if code == 0:
        pytest.skip("extraction finished before the kill")
    assert code == -signal.SIGKILL
    partial = _files(killed, "*_IHC_*/*")
    assert partial != _files(reference, "*_IHC_*/*")  # the kill really cut the job short
    rerun = _tdkstain("extract", killed, "--quiet", "--no-report")
    assert rerun.returncode == 0, rerun.stderr
    ours, theirs = _files(killed, "*_IHC_*/*"), _files(reference, "*_IHC_*/*")
    assert ours.keys() == theirs.keys()
    assert [k for k in ours if ours[k] != theirs[k]] == []
    assert not [p for p in killed.rglob(".tmp-*")]


# ----------------------------------------------------------------------------- translate


N_TRANSLATE = 24


@pytest.fixture()
def he_folder(tmp_path) -> Path:
    from tdkstain.data.images import write_png

    rng = np.random.default_rng(0)
    folder = tmp_path / "he"
    for i in range(N_TRANSLATE):
        write_png(folder / f"tile_{i:02d}.png", rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
    return folder


@pytest.fixture()
def tiny_weights(tmp_path) -> Path:
    from tdkstain.weights import save_network
    from tdkstain.models.tdkstain import ResnetGenerator

    torch.manual_seed(0)
    path = tmp_path / "generator.safetensors"
    save_network(path, ResnetGenerator(ngf=4, n_blocks=1).eval(), tile_size=64)
    return path


@pytest.mark.slow
def test_translate_killed_at_a_random_moment_resumes_to_identical_outputs(tmp_path, he_folder, tiny_weights):
    common = ["--checkpoint", tiny_weights, "--tile", "64", "--overlap", "16", "--device", "cpu", "--workers", "1",
              "--no-progress"]
    reference = _tdkstain("translate", he_folder, "--out", tmp_path / "reference", *common)
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "killed"
    kill_after = random.Random(5).randint(1, N_TRANSLATE // 2)
    code = _kill_when(["translate", he_folder, "--out", out, *common],
                      lambda: len(list(out.glob("*.png"))) >= kill_after, seed=5, max_delay=0.05)
    if code == 0:
        pytest.skip("translate finished before the kill")
    assert code == -signal.SIGKILL
    written = _files(out, "*.png")
    if len(written) == N_TRANSLATE:
        pytest.skip("every image was written before the kill")
    assert 0 < len(written) < N_TRANSLATE
    # Whatever is under a final name is complete (equal to the reference), never half-written.
    expected = _files(tmp_path / "reference", "*.png")
    assert all(written[k] == expected[k] for k in written)
    rerun = _tdkstain("translate", he_folder, "--out", out, *common)
    assert rerun.returncode == 0, rerun.stderr
    assert f"skipped {len(written)} existing" in rerun.stdout
    assert _files(out, "*.png") == expected
    assert not list(out.glob(".tmp-*"))  # a write cut by the kill leaves nothing behind after the rerun


# ----------------------------------------------------------------------------- non-finite losses


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("nan_data"), n_train=2, n_test=0, size=40)


def _poison_l1_at(monkeypatch, bad_steps: set[int]) -> None:
    """Put one NaN pixel in the IHC target tile on the given (0-based) steps: the L1 term goes NaN."""
    from tdkstain.methods.tdkstain import TDKstain

    real = TDKstain.train_step

    def poisoned(self, step, nets, optimizers, batch, rt):
        if step in bad_steps:
            batch = dict(batch)
            ihc = batch["ihc"].clone()
            ihc[:, :, 0, 0] = float("nan")
            batch["ihc"] = ihc
        return real(self, step, nets, optimizers, batch, rt)

    monkeypatch.setattr(TDKstain, "train_step", poisoned)


class _NanGradient(torch.autograd.Function):
    """Adds 0 to the loss (finite) but sends NaN back as the gradient: an overflow in backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return x.new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        return torch.full(ctx.shape, float("nan"))


def test_nan_in_a_batch_stops_naming_the_term_and_keeps_the_last_good_checkpoint(small_data, tmp_path, monkeypatch):
    overrides = ["data.val_pairs=0", "train.checkpoint_every=2"]
    train(tiny(small_data, *overrides, "train.max_steps=2"), tmp_path / "run", progress=False)
    good = checkpoint_files(tmp_path / "run")[-1]
    good_bytes = good.read_bytes()
    _poison_l1_at(monkeypatch, {3})
    with pytest.raises(TdkstainError) as info:
        train(tiny(small_data, *overrides, "train.max_steps=6"), tmp_path / "run", progress=False)
    message = str(info.value)
    # The first network updated on the poisoned batch names its term (the estimator reads the IHC first).
    assert re.match(r"step 3: non-finite loss term '(estimator/loss|discriminator/\w+|generator/l1)'", message), message
    assert "step_00000002.pt" in message and "train.nonfinite=skip" in message
    # Step 3 was refused before its update: no checkpoint past the last good one, which is untouched.
    assert [p.name for p in checkpoint_files(tmp_path / "run")] == ["step_00000002.pt"]
    assert good.read_bytes() == good_bytes


def test_nonfinite_skip_drops_the_update_and_counts_it(small_data, tmp_path, monkeypatch):
    overrides = ["data.val_pairs=0", "train.checkpoint_every=100", "train.nonfinite=skip"]
    _poison_l1_at(monkeypatch, {1})
    result = train(tiny(small_data, *overrides, "train.max_steps=3"), tmp_path / "run", progress=False)
    assert result.step == 3
    for net in result.nets.values():
        assert all(torch.isfinite(v).all() for v in net.state_dict().values() if v.is_floating_point())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["skipped_updates"] >= 1
    assert load_checkpoint(checkpoint_files(tmp_path / "run")[-1])["skipped_updates"] >= 1


def test_nonfinite_gradients_with_a_finite_loss_stop_naming_the_network(small_data, tmp_path, monkeypatch):
    from tdkstain.methods import create_method
    from tdkstain.methods import tdkstain as tdkstain_method

    real = tdkstain_method.update

    def update(phase, loss, terms, nets, optimizers, rt):
        if phase == "generator":
            loss = loss + _NanGradient.apply(next(nets[0].parameters()))
        return real(phase, loss, terms, nets, optimizers, rt)

    monkeypatch.setattr(tdkstain_method, "update", update)
    overrides = ["data.val_pairs=0", "train.checkpoint_every=100"]
    with pytest.raises(TdkstainError, match=r"step 0: non-finite gradients in network 'generator'"):
        train(tiny(small_data, *overrides, "train.max_steps=2"), tmp_path / "stop", progress=False)
    result = train(tiny(small_data, *overrides, "train.max_steps=2", "train.nonfinite=skip"), tmp_path / "skip",
                   progress=False)
    assert result.step == 2
    generator = result.nets["generator"].state_dict()
    assert all(torch.isfinite(v).all() for v in generator.values() if v.is_floating_point())
    # Every generator update was dropped: its weights are still those of step 0.
    fresh = create_method(tiny(small_data, *overrides), 1).build_networks(0)["generator"].state_dict()
    assert all(torch.equal(generator[k], fresh[k]) for k in fresh)
    assert load_checkpoint(checkpoint_files(tmp_path / "skip")[-1])["skipped_updates"] == 2


# ----------------------------------------------------------------------------- full disk


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_checkpoint(small_data, tmp_path, monkeypatch):
    overrides = ["data.val_pairs=0", "train.checkpoint_every=2"]
    train(tiny(small_data, *overrides, "train.max_steps=2"), tmp_path / "run", progress=False)
    previous = checkpoint_files(tmp_path / "run")[-1]
    previous_bytes = previous.read_bytes()
    weights = tmp_path / "run" / "weights" / "generator.safetensors"
    weights_bytes = weights.read_bytes()

    real_write = Path.write_bytes

    def write_until_full(self, data):
        if not self.name.startswith(".tmp-step_"):
            return real_write(self, data)
        # Write part of the checkpoint for real, then fail as a full disk does.
        real_write(self, bytes(data)[:1000])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_bytes", write_until_full)
    with pytest.raises(TdkstainError) as info:
        train(tiny(small_data, *overrides, "train.max_steps=4"), tmp_path / "run", progress=False)
    message = str(info.value)
    assert "disk full" in message and "step_00000004.pt" in message, message
    assert [p.name for p in checkpoint_files(tmp_path / "run")] == ["step_00000002.pt"]
    assert previous.read_bytes() == previous_bytes and load_checkpoint(previous)["step"] == 2
    assert weights.read_bytes() == weights_bytes  # saved after the checkpoint: never reached
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))
    # Space freed: the same command resumes from step 2 and finishes.
    monkeypatch.setattr(Path, "write_bytes", real_write)
    assert train(tiny(small_data, *overrides, "train.max_steps=4"), tmp_path / "run", progress=False).step == 4


def test_disk_full_writing_safetensors_weights_names_the_file(tmp_path, monkeypatch):
    from tdkstain.weights import save_network
    from tdkstain.models.tdkstain import ResnetGenerator

    path = tmp_path / "weights" / "generator.safetensors"
    net = ResnetGenerator(ngf=4, n_blocks=1)
    save_network(path, net, tile_size=64)
    before = path.read_bytes()
    real_write = Path.write_bytes

    def write_until_full(self, data):
        real_write(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_bytes", write_until_full)
    with pytest.raises(TdkstainError, match=r"generator\.safetensors: disk full"):
        save_network(path, ResnetGenerator(ngf=4, n_blocks=1), tile_size=64)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["generator.safetensors"]


def test_baseline_methods_stop_on_nonfinite_gradients_too():
    """The comparison methods' shared update (tdkstain.methods.base.update) applies the same check."""
    from tdkstain.methods.base import update
    from tdkstain.methods.base import NonFiniteLoss, Runtime

    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loss = net(torch.ones(1, 3)).sum() + _NanGradient.apply(net.weight)
    with pytest.raises(NonFiniteLoss, match="non-finite gradients in network 'generator'"):
        update("generator", loss, {"loss": loss.detach()}, [net], [optimizer], Runtime())
    loss = net(torch.ones(1, 3)).sum() + _NanGradient.apply(net.weight)
    skip = Runtime(nonfinite="skip")
    assert update("generator", loss, {"loss": loss.detach()}, [net], [optimizer], skip) is False
    assert skip.skipped == 1
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
