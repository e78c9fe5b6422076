"""Two processes (gloo, CPU) train like one process with their global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tdkstain.plumbing import distributed
from conftest import TINY, biases_before_instance_norm, make_dataset

STEPS = 3


def _config(root: Path, batch: int):
    from tdkstain.training.config import build_config

    return build_config({}, [*TINY, f"data.root={root}", f"data.batch={batch}", f"train.max_steps={STEPS}", "data.val_pairs=1"])


def _worker(rank: int, world: int, root: str, out: str, store: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        from tdkstain.training import train

        info = distributed.current()
        assert (info.rank, info.world, info.enabled) == (rank, world, True)
        result = train(_config(Path(root), batch=1), Path(out) / "run", progress=False)
        state = {f"{n}.{k}": v for n, net in result.nets.items() for k, v in net.state_dict().items()}
        torch.save(state, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_on_the_global_batch(tmp_path):
    from tdkstain.training import train

    root = make_dataset(tmp_path / "data", n_train=4, n_test=1)
    mp.spawn(_worker, args=(2, str(root), str(tmp_path), str(tmp_path / "store")), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "ranks diverged"

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(_config(root, batch=2), tmp_path / "single", progress=False)
    finally:
        torch.set_num_threads(before)
    ref = {f"{n}.{k}": v for n, net in single.nets.items() for k, v in net.state_dict().items()}
    assert ref.keys() == rank0.keys()
    # A bias right before an instance norm is cancelled by it: its true gradient is 0 and Adam turns
    # the rounding noise into lr-sized steps in either direction. It changes no output; skip it.
    cancelled = biases_before_instance_norm(single.nets)
    assert "generator.model.1.bias" in cancelled and "generator.model.32.bias" not in cancelled
    compared = [k for k in ref if k not in cancelled]
    for k in compared:
        torch.testing.assert_close(rank0[k], ref[k], rtol=1e-4, atol=1e-5, msg=k)
    # The function itself: the generator loaded from rank 0's weights equals the single-process one.
    generator = single.nets["generator"]
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        y_single = generator(x)
        generator.load_state_dict({k[len("generator."):]: v for k, v in rank0.items() if k.startswith("generator.")})
        torch.testing.assert_close(generator(x), y_single, rtol=1e-4, atol=1e-4)
    # Training moved the weights, so the comparison means something.
    from tdkstain.methods.tdkstain import TDKstain

    initial = TDKstain(_config(root, 1), 1).build_networks(0)["generator"].state_dict()["model.1.weight"]
    assert (rank0["generator.model.1.weight"] - initial).abs().max() > 1e-4
    last = torch.load(sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    assert last["step"] == STEPS and last["images"] == single.images == 2 * STEPS

    # Rank 0 alone wrote the run folder: one metrics record per step, not two.
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, STEPS + 1))


def test_single_process_info_and_helpers_without_a_group():
    info = distributed.current()
    assert (info.rank, info.world, info.enabled, info.is_main) == (0, 1, False, True)
    distributed.barrier()  # a no-op without a process group
