"""What the machine itself reaches at a network's dominant shapes, measured in the same run.

A benchmark's GFLOP/s means little alone: these machines differ and are
shared. Each benchmark therefore times, in the same process and just before
its own case, single convolutions at the shapes that dominate its FLOPs
(forward, input gradient, weight gradient), and reports its rate as a
fraction of theirs. Also: who ran it where (date, commit, CPU, threads).
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ConvShape:
    """One convolution: ``batch`` x ``cin`` x ``size``^2 in, ``cout`` out, ``kernel`` x ``kernel``, 'same' size."""

    name: str
    batch: int
    cin: int
    cout: int
    kernel: int
    size: int

    @property
    def flops(self) -> float:
        """Multiply-adds x 2 of one pass (forward, input gradient and weight gradient each cost this)."""
        return 2.0 * self.batch * self.cin * self.cout * self.kernel**2 * self.size**2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up: oneDNN / cuDNN choose and cache their kernels
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def conv_rates(shape: ConvShape, device: str | torch.device = "cpu", precision: str = "fp32",
               passes: tuple[str, ...] = ("fwd", "igrad", "wgrad"), repeats: int = 2,
               channels_last: bool = False) -> dict[str, float]:
    """GFLOP/s of each pass of one convolution; bf16/fp16 under autocast as the networks run."""
    device = torch.device(device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    run_dtype = torch.float32 if precision == "fp32" else dtype
    x = torch.randn(shape.batch, shape.cin, shape.size, shape.size, device=device, dtype=run_dtype).contiguous(memory_format=fmt)
    w = torch.randn(shape.cout, shape.cin, shape.kernel, shape.kernel, device=device, dtype=run_dtype).contiguous(memory_format=fmt)
    g = torch.randn(shape.batch, shape.cout, shape.size, shape.size, device=device, dtype=run_dtype).contiguous(memory_format=fmt)
    pad = shape.kernel // 2
    out: dict[str, float] = {}
    with torch.no_grad():
        for p in passes:
            if p == "fwd":
                fn = lambda: F.conv2d(x, w, padding=pad)  # noqa: E731
            else:
                mask = [p == "igrad", p == "wgrad", False]
                fn = lambda mask=mask: torch.ops.aten.convolution_backward(  # noqa: E731
                    g, x, w, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, mask)
            out[p] = shape.flops / _best(fn, device, repeats) / 1e9
    return out


def matmul_rate(n: int, device: str | torch.device = "cpu", precision: str = "fp32", repeats: int = 3) -> float:
    """GFLOP/s of one n x n x n matrix product."""
    device = torch.device(device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2.0 * n**3 / _best(lambda: a @ b, device, repeats) / 1e9


def mixed_rate(rates: dict[str, dict[str, float]], shapes: list[ConvShape]) -> float:
    """The rate of running every listed pass of every shape once: total FLOPs / total time."""
    flops = sum(s.flops for s in shapes for _ in rates[s.name])
    seconds = sum(s.flops / (r * 1e9) for s in shapes for r in rates[s.name].values())
    return flops / seconds / 1e9


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str | torch.device = "cpu") -> dict[str, str]:
    """Date, commit, CPU or GPU, threads, torch version and load: the header of a results table."""
    device = torch.device(device)
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
        commit += "+changes" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "cpu": f"{_cpu_model()}, {os.cpu_count()} cores",
        "threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a",
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
