"""benchmarks/: the yardsticks the speed figures are judged against, and the one-run GPU script's code paths.

No time is asserted here (benchmarks/README.md holds the figures); what is
checked is that a limit counts the FLOPs PyTorch's own counter counts, that
the mixed rate is total work over total time, and that every case of the GPU
script runs end to end at smoke sizes on the CPU, so a lent GPU session is
not spent on a crash.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from _limits import ConvShape, conv_rates, mixed_rate  # noqa: E402


@pytest.mark.parametrize("shape", [ConvShape("a", 1, 8, 4, 7, 12), ConvShape("b", 3, 5, 6, 3, 9)])
def test_conv_shape_flops_match_torch_flop_counter(shape):
    x = torch.zeros(shape.batch, shape.cin, shape.size, shape.size, requires_grad=True)
    w = torch.zeros(shape.cout, shape.cin, shape.kernel, shape.kernel, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        y = F.conv2d(x, w, padding=shape.kernel // 2)
    assert y.shape[-1] == shape.size  # 'same' size, as the class says
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        y.sum().backward()
    assert forward == shape.flops
    assert counter.get_total_flops() == 2 * shape.flops  # input gradient + weight gradient, one pass each


def test_mixed_rate_is_total_flops_over_total_time():
    shapes = [ConvShape("big", 1, 64, 64, 3, 32), ConvShape("small", 1, 16, 16, 3, 8)]
    rates = {"big": {"fwd": 200.0, "wgrad": 100.0}, "small": {"fwd": 50.0}}
    flops = 2 * shapes[0].flops + shapes[1].flops
    seconds = shapes[0].flops / 200e9 + shapes[0].flops / 100e9 + shapes[1].flops / 50e9
    assert mixed_rate(rates, shapes) == pytest.approx(flops / seconds / 1e9, rel=1e-12)
    assert 50.0 < mixed_rate(rates, shapes) < 200.0


def test_conv_rates_times_each_requested_pass():
    rates = conv_rates(ConvShape("tiny", 1, 4, 4, 3, 8), "cpu", "fp32", passes=("fwd", "wgrad"), repeats=1)
    assert set(rates) == {"fwd", "wgrad"}
    assert all(r > 0 for r in rates.values())


@pytest.mark.slow
def test_gpu_script_runs_every_case_at_smoke_size_on_cpu(tmp_path):
    out = tmp_path / "gpu"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_all.py"), "--smoke", "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "gpu_results.json").read_text())["results"]
    failed = {r["name"]: r.get("error") for r in results if r["status"] != "ok"}
    assert not failed
    names = {r["name"] for r in results}
    for kind in ("limit_matmul_bf16", "train_512_bf16_cl_b1", "infer_64_bf16_cl_b1", "slide", "extract", "cohort"):
        assert kind in names
    table = (out / "gpu_table.md").read_text()
    assert "| train_512_bf16_cl_b1 | ok |" in table
