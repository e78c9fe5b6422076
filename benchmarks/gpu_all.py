"""Every GPU case of issue 8 in one run (< 8 min on an H100), written as a table to a folder.

One lent GPU session should measure everything at once, so this script runs,
in order of importance, under one time budget:

1. ``limit_*``: the card's own limits in the same run: dense matmul
   (bf16, fp32, TF32) and bf16/fp32 conv2d at the dominant shapes (paper
   generator 3x3 512->512 at 64^2 / 128^2, i.e. 512 / 1024 crops; estimator
   7x7 896->128 at half resolution, forward and forward+backward).
2. ``train_*``: one training iteration of the paper preset (estimator, D and
   G steps, three Adam updates; as ``benchmarks/train_step.py`` builds it)
   in bf16 autocast + channels_last at 512 and 1024 crops, batch 1, then
   fp32 at 512, bf16 batch 4 at 512 and (last) ``torch.compile``.
3. ``infer_*``: ``Stainer.stain_tiles`` on 1024 px tiles (uint8 in and out,
   conversions included), batch 1 and 8, fp32 / bf16, NCHW / channels_last.
4. ``slide``: ``tdkstain.slides.pipeline.stain_slide`` on a synthetic
   pyramidal TIFF written on the spot (JPEG when imagecodecs is present,
   else zlib), with the paper generator; megapixels per second end to end
   and how busy the GPU is during the staining pass (I/O overlapped).
5. ``extract_*``: knowledge extraction per 1024 tile, the numpy path on the
   CPU and the torch path on the GPU.
6. ``cohort``: two small synthetic slides through the cohort runner
   (``tdkstain.slides.cohort.run_cohort``, what ``tdkstain slide DIR --out
   DIR`` runs in each process): slides per hour, megapixels per second, and
   a rerun, which must skip both (the manifest's idempotency on the GPU).

Columns of the table (``gpu_table.md``; all figures also in ``gpu_results.json``):

- ``s``: median seconds of one unit (one matmul / conv / training
  iteration / call of ``stain_tiles`` with ``batch`` tiles / whole slide),
  after warm-up, with ``torch.cuda.synchronize`` around each timed unit;
- ``TFLOP``: FLOPs of one unit, counted by ``torch.utils.flop_counter``
  (matmul and convolution only, 1 MAC = 2 FLOPs) or by formula (limits);
- ``TFLOP/s``: TFLOP / s;
- ``ratio``: TFLOP/s over the limit named in ``limit`` (measured in the
  same run; the issue's target for training in bf16 is >= 0.40 of
  ``limit_matmul_bf16``);
- ``MP/s``: megapixels per second (inference, slide);
- ``peak GiB``: ``torch.cuda.max_memory_allocated`` of the case (reset
  before it);
- ``notes``: everything else (GPU busy fractions of the slide case, errors,
  skipped cases and why).

Each case runs in a worker process; a case that raises is recorded with its
error and the run goes on; one that crashes or hangs its worker (past its
cap, or past the budget) is recorded and a fresh worker takes the rest.
Cases not started when ``--budget-s`` is spent are listed as skipped. The
table and JSON are rewritten after every case, so a run cut short still
leaves what it measured.

    python benchmarks/gpu_all.py --out results/      # on the GPU machine (see gpu_run.sh)
    python benchmarks/gpu_all.py --smoke --device cpu --out /tmp/gpusmoke   # tiny sizes, checks the code paths
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
RESULT_PREFIX = "GPUALL "


# --------------------------------------------------------------------------- the plan


def plan_cases(smoke: bool, slide_size: int | None) -> list[dict[str, Any]]:
    """The cases in order of importance; each a dict with ``name``, ``kind``, ``cap_s`` (kill after),
    ``est_s`` (not started when less budget is left) and the kind's parameters."""
    cases: list[dict[str, Any]] = []

    def add(name: str, kind: str, cap_s: float, est_s: float, **params: Any) -> None:
        cases.append({"name": name, "kind": kind, "cap_s": cap_s, "est_s": est_s, **params})

    s = 8 if smoke else 1  # spatial divisor in smoke mode
    c = 8 if smoke else 1  # channel divisor in smoke mode
    n = 256 if smoke else 8192
    big = 2 if smoke else 8  # the larger inference batch
    add("limit_matmul_bf16", "matmul", 60, 3, n=n, dtype="bf16")
    add("limit_matmul_tf32", "matmul", 60, 3, n=n, dtype="tf32")
    add("limit_matmul_fp32", "matmul", 60, 5, n=n, dtype="fp32")
    # (name, in, out, kernel, side, batch) of the dominant convolutions
    shapes = [
        ("gen3x3_512crop", 512, 512, 3, 64, 1),
        ("gen3x3_1024crop", 512, 512, 3, 128, 1),
        (f"gen3x3_1024crop_b{big}", 512, 512, 3, 128, big),
        ("est7x7_512crop", 896, 128, 7, 256, 1),
        ("est7x7_1024crop", 896, 128, 7, 512, 1),
    ]
    for dtype in ("bf16", "fp32"):
        for label, cin, cout, k, side, batch in shapes:
            add(f"limit_conv_{label}_{dtype}", "conv", 60, 3, cin=cin // c, cout=cout // c, k=k, side=side // s,
                batch=batch, dtype=dtype, backward=False)
    add("limit_conv_est7x7_512crop_fwdbwd_bf16", "conv", 60, 3, cin=896 // c, cout=128 // c, k=7, side=256 // s, batch=1,
        dtype="bf16", backward=True)

    crop512, crop1024 = (32, 64) if smoke else (512, 1024)
    tile = 64 if smoke else 1024
    add("train_512_bf16_cl_b1", "train", 120, 20, crop=crop512, batch=1, precision="bf16", channels_last=True, compile=False)
    add("train_1024_bf16_cl_b1", "train", 150, 25, crop=crop1024, batch=1, precision="bf16", channels_last=True, compile=False,
        smoke_skip=True)  # in --smoke the same code path as the 512 case
    for precision, cl, batch in [("bf16", True, 1), ("bf16", True, big), ("fp32", True, big), ("fp32", False, big),
                                 ("bf16", False, big), ("fp32", True, 1)]:
        add(f"infer_{tile}_{precision}_{'cl' if cl else 'nchw'}_b{batch}", "infer", 90, 10, tile=tile, batch=batch,
            precision=precision, channels_last=cl, compile=False)
    add("slide", "slide", 240, 60, size=slide_size or (512 if smoke else 20480), tile=128 if smoke else 1024,
        overlap=16 if smoke else 64, batch=big, precision="bf16", tiny=smoke)
    add("train_512_fp32_b1", "train", 120, 20, crop=crop512, batch=1, precision="fp32", channels_last=False, compile=False)
    b4 = 2 if smoke else 4
    add(f"train_512_bf16_cl_b{b4}", "train", 120, 25, crop=crop512, batch=b4, precision="bf16", channels_last=True,
        compile=False)
    add("extract", "extract", 90, 15, tile=tile, batch=big)
    add("cohort", "cohort", 150, 30, slides=2, size=512 if smoke else 4096, tile=128 if smoke else 1024,
        overlap=16 if smoke else 64, batch=big, precision="bf16", tiny=smoke)
    # torch.compile last (minutes of compiling)
    add(f"infer_{tile}_bf16_cl_b{big}_compiled", "infer", 150, 60, tile=tile, batch=big, precision="bf16",
        channels_last=True, compile=True, smoke_skip=True)
    add("train_512_bf16_cl_b1_compiled", "train", 240, 120, crop=crop512, batch=1, precision="bf16", channels_last=True,
        compile=True, smoke_skip=True)
    return cases


# --------------------------------------------------------------------------- helpers in the worker


_CURRENT: dict[str, str] = {}


def _progress(text: str) -> None:
    """Tell the parent how the running case is getting on (kept in its notes if the case is killed)."""
    print(RESULT_PREFIX + json.dumps({"name": _CURRENT.get("name", "?"), "progress": text}), flush=True)


def _torch():
    import torch

    return torch


def _sync(device) -> None:
    torch = _torch()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device, warmup: int, max_reps: int, max_s: float, min_reps: int = 2) -> list[float]:
    """Seconds of ``fn`` per call after ``warmup`` calls: at most ``max_reps`` calls or ``max_s`` seconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - started < max_s):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def _reset_memory(device) -> None:
    import gc

    torch = _torch()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device) -> float | None:
    torch = _torch()
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS (KiB on Linux)


def _count_flops(fn: Callable[[], Any]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


# --------------------------------------------------------------------------- the cases


def case_matmul(case: dict, device, smoke: bool) -> dict:
    torch = _torch()
    n, kind = case["n"], case["dtype"]
    dtype = torch.bfloat16 if kind == "bf16" else torch.float32
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = kind == "tf32"
    try:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        times = _timed(lambda: torch.mm(a, b), device, warmup=3, max_reps=50, max_s=2.0 if not smoke else 0.3)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    seconds = _median(times)
    flops = 2.0 * n**3
    return {"s": seconds, "min_s": min(times), "reps": len(times), "tflop": flops / 1e12, "tflops": flops / seconds / 1e12,
            "notes": f"{n}^3 {kind}, random normal data"}


def case_conv(case: dict, device, smoke: bool) -> dict:
    torch = _torch()
    cin, cout, k, side, batch = case["cin"], case["cout"], case["k"], case["side"], case["batch"]
    bf16 = case["dtype"] == "bf16"
    conv = torch.nn.Conv2d(cin, cout, k, padding=k // 2, bias=False).to(device)
    x = torch.randn(batch, cin, side, side, device=device)
    if device.type == "cuda":  # channels_last: what the training and inference cases use on CUDA
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if bf16:
        conv, x = conv.to(torch.bfloat16), x.to(torch.bfloat16)
    x.requires_grad_(case["backward"])

    def forward() -> None:
        if case["backward"]:
            conv(x).sum().backward()
        else:
            with torch.no_grad():
                conv(x)

    times = _timed(forward, device, warmup=3, max_reps=50, max_s=2.0 if not smoke else 0.3)
    seconds = _median(times)
    flops = 2.0 * batch * cin * cout * k * k * side * side * (3 if case["backward"] else 1)
    tf32 = "" if bf16 else f", cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}"
    return {"s": seconds, "min_s": min(times), "reps": len(times), "tflop": flops / 1e12, "tflops": flops / seconds / 1e12,
            "notes": f"{k}x{k} {cin}->{cout} at {side}^2, batch {batch}, "
                     f"{'fwd+bwd (dgrad+wgrad)' if case['backward'] else 'forward'}{tf32}"}


def case_train(case: dict, device, smoke: bool) -> dict:
    torch = _torch()
    from tdkstain.training.config import load_config
    from tdkstain.methods import Runtime, create_method

    # --smoke crops (32, 64 px) are below what the 3-scale discriminator takes (93 px with the release's
    # padding 1): one scale there, the same code path.
    cfg = load_config("tdkstain-paper", ["model.num_d=1"] if smoke else [])
    crop, batch_size = case["crop"], case["batch"]
    objective = create_method(cfg, steps_per_epoch=1000)
    nets = objective.build_networks(0)
    memory_format = torch.channels_last if case["channels_last"] else torch.preserve_format
    for net in nets.values():
        net.to(device, memory_format=memory_format)
    optimizers = {k: torch.optim.Adam(n.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas)) for k, n in nets.items()}
    amp = torch.bfloat16 if case["precision"] == "bf16" else None
    rt = Runtime(device=device, amp_dtype=amp, channels_last=case["channels_last"])
    g = torch.Generator().manual_seed(0)
    shapes = {"he": 3, "ihc": 3, "dab": 3, "membrane_mask": 1, "nuclei_density": 1}
    batch = rt.to_device({k: torch.rand(batch_size, ch, crop, crop, generator=g) * (2 if ch == 3 else 1) - (1 if ch == 3 else 0)
                          for k, ch in shapes.items()})
    step = lambda: objective.train_step(0, nets, optimizers, batch, rt)  # noqa: E731
    flops = _count_flops(step)  # doubles as the first warm-up step (eager, before any compile)
    notes = [f"paper preset, crop {crop}, batch {batch_size}, {case['precision']}"
             f"{' autocast' if amp else ''}{' channels_last' if case['channels_last'] else ''}"]
    if case["precision"] == "fp32" and device.type == "cuda":
        notes.append(f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32} matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}")
    compile_s = None
    if case["compile"]:
        _progress("compiling (net.compile(dynamic=False) on each network, first step)")
        for net in nets.values():
            net.compile(dynamic=False)  # as tdkstain.training does with train.compile
        t0 = time.perf_counter()
        step()
        _sync(device)
        compile_s = time.perf_counter() - t0
        notes.append(f"torch.compile (first step {compile_s:.1f} s)")
    if not smoke:
        step()  # cuDNN autotuning / allocator warm-up
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = _timed(step, device, warmup=0 if smoke else 1, max_reps=20 if not smoke else 1, max_s=8.0 if not smoke else 0.0,
                   min_reps=1 if smoke else 2)
    seconds = _median(times)
    return {"s": seconds, "min_s": min(times), "reps": len(times), "tflop": flops / 1e12, "tflops": flops / seconds / 1e12,
            "limit": "limit_matmul_bf16" if amp else "limit_matmul_tf32", "peak_gib": _peak_gib(device),
            "compile_s": compile_s, "notes": "; ".join(notes)}


def case_infer(case: dict, device, smoke: bool) -> dict:
    import numpy as np

    torch = _torch()
    from tdkstain.inference import Stainer
    from tdkstain.models.tdkstain import ResnetGenerator

    tile, batch = case["tile"], case["batch"]
    torch.manual_seed(0)
    stainer = Stainer(ResnetGenerator(), device=str(device), precision=case["precision"], channels_last=case["channels_last"],
                      tile=tile, overlap=64 if tile >= 256 else 8, batch=batch, norm="tile", compile=case["compile"])
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, size=(tile, tile, 3), dtype=np.uint8) for _ in range(batch)]
    with torch.inference_mode():
        x = torch.rand(1, 3, tile, tile, device=device) * 2 - 1
        with stainer._autocast():
            flops_per_tile = _count_flops(lambda: stainer.network(x))
    notes = [f"paper generator, {tile}^2 tiles, uint8 in/out", f"{case['precision']}{' channels_last' if case['channels_last'] else ' NCHW'}"]
    compile_s = None
    if case["compile"]:
        _progress("compiling (Stainer(compile=True): inductor, frozen weights; first call)")
        t0 = time.perf_counter()
        stainer.stain_tiles(tiles)
        _sync(device)
        compile_s = time.perf_counter() - t0
        notes.append(f"torch.compile (first call {compile_s:.1f} s)"
                     + (f"; FAILED, ran eager: {stainer._compile_error}" if stainer._compile_error is not None else ""))
    stainer.stain_tiles(tiles)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = _timed(lambda: stainer.stain_tiles(tiles), device, warmup=0 if smoke else 1, max_reps=20 if not smoke else 1,
                   max_s=5.0 if not smoke else 0.0, min_reps=1 if smoke else 2)
    seconds = _median(times)
    flops = flops_per_tile * batch
    suffix = "bf16" if case["precision"] != "fp32" else "fp32"
    limit = f"limit_conv_gen3x3_1024crop{f'_b{batch}' if batch > 1 else ''}_{suffix}"
    return {"s": seconds, "min_s": min(times), "reps": len(times), "tflop": flops / 1e12, "tflops": flops / seconds / 1e12,
            "mps": batch * tile * tile / seconds / 1e6, "limit": limit, "peak_gib": _peak_gib(device),
            "compile_s": compile_s, "notes": "; ".join(notes)}


# ----- synthetic slide


def _texture(side: int = 1024):
    """A fixed (side, side, 3) uint8 H&E-like texture (pink stroma, purple nuclei), tiled over the tissue."""
    import numpy as np

    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    rng = np.random.default_rng(0)
    nuclei = 0.5 + 0.25 * (np.sin(yy * 0.39) * np.sin(xx * 0.41) + np.sin((yy + xx) * 0.05))
    nuclei += rng.normal(0, 0.05, nuclei.shape).astype(np.float32)
    pink = np.array([228, 150, 195.0], dtype=np.float32)
    purple = np.array([100, 55, 150.0], dtype=np.float32)
    image = pink * (1 - nuclei[..., None]) + purple * nuclei[..., None]
    return np.clip(image, 0, 255).astype(np.uint8)


def write_synthetic_slide(path: Path, size: int, tile: int = 512, mpp: float = 0.5) -> dict:
    """A square pyramidal tiled TIFF (levels 1 and 1/4), glass with an elliptic tissue region over about half
    the area, written tile by tile. JPEG (quality 90) when imagecodecs is importable, else zlib level 1."""
    import numpy as np
    import tifffile

    try:
        import imagecodecs  # noqa: F401

        compression: Any = ("jpeg", {"level": 90})
    except ImportError:
        compression = ("zlib", {"level": 1})
    texture = _texture()
    tside = texture.shape[0]
    glass = np.full((tile, tile, 3), 243, dtype=np.uint8)
    t0 = time.perf_counter()
    with tifffile.TiffWriter(path, bigtiff=True) as tiff:
        for level, downsample in enumerate((1, 4)):
            side = size // downsample

            def tiles(side: int = side, downsample: int = downsample):
                for y in range(0, side, tile):
                    ys = (np.arange(y, y + tile, dtype=np.float64) * downsample - size * 0.5) / (size * 0.42)
                    for x in range(0, side, tile):
                        xs = (np.arange(x, x + tile, dtype=np.float64) * downsample - size * 0.45) / (size * 0.4)
                        inside = ys[:, None] ** 2 + xs[None, :] ** 2 < 1
                        if not inside.any():
                            yield glass
                            continue
                        ty, tx = (y * 7) % (tside - tile + 1), (x * 13) % (tside - tile + 1)
                        yield np.where(inside[..., None], texture[ty : ty + tile, tx : tx + tile], glass)

            kwargs = dict(shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                          compression=compression[0], compressionargs=compression[1],
                          resolution=(1e4 / (mpp * downsample),) * 2, resolutionunit="CENTIMETER",
                          subfiletype=1 if level else 0, metadata=None)
            try:
                tiff.write(tiles(), maxworkers=8, **kwargs)
            except TypeError:  # an older tifffile without maxworkers
                tiff.write(tiles(), **kwargs)
    return {"seconds": time.perf_counter() - t0, "compression": compression[0], "bytes": path.stat().st_size}


class _GpuSampler:
    """NVML GPU utilisation (percent of time a kernel ran, per driver sample) polled every 50 ms on a thread."""

    def __init__(self, device) -> None:
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = None
        self.error = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            self._nvml = pynvml
        except Exception as err:  # noqa: BLE001 (not installed, no driver, ...)
            self.error = f"{type(err).__name__}: {err}"

    def __enter__(self) -> "_GpuSampler":
        if self.error is None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
                self.samples.append((time.perf_counter(), int(util)))
            except Exception as err:  # noqa: BLE001
                self.error = f"{type(err).__name__}: {err}"
                return
            self._stop.wait(0.05)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def mean_between(self, start: float, end: float) -> float | None:
        values = [u for t, u in self.samples if start <= t <= end]
        return sum(values) / len(values) / 100.0 if values else None


def case_slide(case: dict, device, smoke: bool, workdir: Path) -> dict:
    import numpy as np

    torch = _torch()
    from tdkstain.inference import Stainer
    from tdkstain.models.tdkstain import ResnetGenerator
    from tdkstain.slides import SlideOptions, stain_slide

    size, tile, batch = case["size"], case["tile"], case["batch"]
    slide_path = workdir / f"synthetic_{size}.tif"
    _progress(f"writing a synthetic {size}^2 slide")
    made = write_synthetic_slide(slide_path, size, tile=512 if size >= 4096 else 128)
    _progress(f"slide written in {made['seconds']:.1f} s ({made['compression']}, {made['bytes'] / 2**20:.0f} MiB)")
    notes = [f"synthetic {size}^2 slide at 0.5 um/px, {made['compression']} {made['bytes'] / 2**20:.0f} MiB, written in "
             f"{made['seconds']:.1f} s"]
    compression = _output_compression()
    torch.manual_seed(0)
    generator = ResnetGenerator(ngf=8, n_blocks=1) if case["tiny"] else ResnetGenerator()
    stainer = Stainer(generator, device=str(device), precision=case["precision"], tile=tile, overlap=case["overlap"],
                      batch=batch, norm="global")
    notes.append(f"{'tiny' if case['tiny'] else 'paper'} generator, {case['precision']}, channels_last={stainer.channels_last}, "
                 f"tile {tile}, overlap {case['overlap']}, batch {batch}, norm global, output {compression}")

    # Time in the model: wrap this Stainer's stain_tiles (the pipeline looks it up at each call), with CUDA events
    # around each call for the GPU's own elapsed time between the call's start and end.
    calls: list[tuple[float, float, Any, Any, int]] = []
    original = stainer.stain_tiles
    replay: list[tuple[list, Any]] = []  # the first full chunk's tiles and statistics, for the model-alone timing

    def timed_stain_tiles(tiles, stats=None, **kwargs):
        if not replay and len(tiles) == stainer.batch:
            replay.append(([t.copy() for t in tiles], stats))
        start_event = end_event = None
        if device.type == "cuda":
            start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start_event.record()
        t0 = time.perf_counter()
        out = original(tiles, stats, **kwargs)
        if end_event is not None:
            end_event.record()
        calls.append((t0, time.perf_counter(), start_event, end_event, len(tiles)))
        return out

    stainer.stain_tiles = timed_stain_tiles  # type: ignore[method-assign]
    messages: list[str] = []
    out = workdir / "stained.tif"
    _reset_memory(device)
    with _GpuSampler(device) as sampler:
        t0 = time.perf_counter()
        result = stain_slide(stainer, slide_path, out, model_mpp=0.5, log=lambda m: (messages.append(m), _progress(m[:300])),
                             progress=False,
                             options=SlideOptions(compression=compression))
        wall = time.perf_counter() - t0
    _sync(device)
    peak = _peak_gib(device)
    backend = next((m for m in messages if " level(s) (" in m), "")
    if backend:
        notes.append("reader: " + backend.split(" level(s) (")[1].split(")")[0])
    staining = result.timings.get("staining", float("nan"))
    in_calls = sum(end - start for start, end, *_ in calls)
    tiles_stained = sum(count for *_, count in calls)
    first, last = (calls[0][0], calls[-1][1]) if calls else (t0, t0)
    gpu_ms = None
    if device.type == "cuda" and calls:
        gpu_ms = sum(s.elapsed_time(e) for _, _, s, e, _ in calls)
    _progress(f"stain_slide done in {wall:.1f} s; timing the model alone")
    # The model alone, back to back, as many calls as the staining pass made, each on the pass's first chunk
    # (same tiles, same statistics), with no reading or writing around it.
    if replay:
        sample, pooled = replay[0]
    else:  # fewer tissue tiles than one batch
        texture = _texture(max(1024, tile))
        sample = [np.ascontiguousarray(texture[:tile, :tile]) for _ in range(batch)]
        stats = stainer.sequential_stats(sample) if stainer._norms else None
        pooled = [stats] * batch if stats is not None else None
    original(sample, pooled)
    _sync(device)
    t1 = time.perf_counter()
    for _ in range(max(1, len(calls))):
        original(sample, pooled)
    _sync(device)
    model_only = time.perf_counter() - t1
    util = sampler.mean_between(first, last)
    megapixels = result.width * result.height / 1e6
    tissue_mp = tiles_stained * tile * tile / 1e6
    busy = {
        "model_only_over_staining": model_only / staining if staining > 0 else None,
        "in_model_calls_over_staining": in_calls / staining if staining > 0 else None,
        "cuda_event_time_over_staining": (gpu_ms / 1e3 / staining) if gpu_ms is not None and staining > 0 else None,
        "nvml_utilisation_during_staining": util,
        "model_only_over_whole_slide": model_only / wall,  # the statistics pass and assembly included
    }
    notes.append("busy = " + ", ".join(f"{k} {v:.2f}" for k, v in busy.items() if v is not None))
    if sampler.error:
        notes.append(f"nvml: {sampler.error}")
    notes.append("timings " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()))
    notes.append(f"{result.tiles_tissue} of {result.tiles_total} tiles stained; staining pass {tissue_mp / staining:.1f} "
                 f"tissue MP/s, model alone {tissue_mp / model_only:.1f} MP/s")
    slide_path.unlink(missing_ok=True)
    return {"s": wall, "reps": 1, "mps": megapixels / wall, "peak_gib": peak, "busy": busy,
            "timings": result.timings, "tiles_tissue": result.tiles_tissue, "tiles_total": result.tiles_total,
            "staining_mps": tissue_mp / staining if staining > 0 else None, "model_only_mps": tissue_mp / model_only,
            "slide_write_s": made["seconds"], "notes": "; ".join(notes)}


def _output_compression() -> str:
    """What the stained TIFF is compressed with: JPEG where imagecodecs is importable, else deflate."""
    try:
        import imagecodecs  # noqa: F401

        return "jpeg"
    except ImportError:
        return "deflate"


def case_cohort(case: dict, device, smoke: bool, workdir: Path) -> dict:
    """``case["slides"]`` synthetic slides through ``run_cohort`` on one device, then the same cohort again."""
    import shutil

    torch = _torch()
    from tdkstain.inference import Stainer
    from tdkstain.models.tdkstain import ResnetGenerator
    from tdkstain.slides import SlideOptions, stain_slide
    from tdkstain.slides.cohort import cohort_settings, collect_cohort, run_cohort

    size, count = case["size"], case["slides"]
    folder = workdir / "cohort_slides"
    folder.mkdir(parents=True, exist_ok=True)
    written = 0.0
    for i in range(count):
        _progress(f"writing synthetic slide {i + 1}/{count} ({size}^2)")
        written += write_synthetic_slide(folder / f"cohort{i}.tif", size, tile=512 if size >= 4096 else 128)["seconds"]
    torch.manual_seed(0)
    generator = ResnetGenerator(ngf=8, n_blocks=1) if case["tiny"] else ResnetGenerator()
    stainer = Stainer(generator, device=str(device), precision=case["precision"], tile=case["tile"], overlap=case["overlap"],
                      batch=case["batch"], norm="global")
    options = SlideOptions(compression=_output_compression())
    settings = cohort_settings(stainer, options, checkpoint_id="gpu_all", model_mpp=0.5)
    entries = collect_cohort([folder])
    out = workdir / "cohort_out"

    def stain(entry, path):
        return stain_slide(stainer, entry.slide, path, model_mpp=0.5, options=options, log=lambda m: None, progress=False)

    def log(message: str) -> None:
        _progress(message[:300])

    t0 = time.perf_counter()
    run = run_cohort(entries, out, stain, settings=settings, device=str(device), progress=False, log=log)
    _sync(device)
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    rerun = run_cohort(entries, out, stain, settings=settings, device=str(device), progress=False, log=log)
    rerun_s = time.perf_counter() - t1
    slides = run.manifest["slides"] if run.manifest else []
    megapixels = sum(row.get("megapixels", 0.0) for row in slides)
    if not run.ok or len(run.done) != count:
        raise RuntimeError(f"cohort: {len(run.done)} of {count} slides done; "
                           + "; ".join(f"{r['output']}: {r.get('reason')}" for r in slides if r["status"] != "done"))
    notes = [f"{count} synthetic {size}^2 slides at 0.5 um/px (written in {written:.1f} s), "
             f"{'tiny' if case['tiny'] else 'paper'} generator, {case['precision']}, tile {case['tile']}, batch {case['batch']}",
             "per slide " + ", ".join(f"{r['output']} {r['seconds']:.1f} s" for r in slides),
             f"rerun {rerun_s:.2f} s: {len(rerun.skipped)} of {count} skipped"]
    shutil.rmtree(folder, ignore_errors=True)
    return {"s": wall, "reps": 1, "mps": megapixels / wall, "slides_per_hour": count / wall * 3600, "rerun_s": rerun_s,
            "rerun_skipped": len(rerun.skipped), "peak_gib": _peak_gib(device), "notes": "; ".join(notes)}


def _find_torch_extractor() -> tuple[Callable | None, str]:
    """The torch path of knowledge extraction (``tdkstain.knowledge.extraction.fast.extract_tiles_torch``), or else any
    public function of ``tdkstain.knowledge.extraction`` / ``tdkstain.knowledge`` named ``extract*`` with a ``device``
    argument; ``(None, why)`` when there is none."""
    import importlib
    import inspect
    import pkgutil

    try:
        from tdkstain.knowledge.extraction.fast import extract_tiles_torch

        return extract_tiles_torch, f"tdkstain.knowledge.extraction.fast.extract_tiles_torch{inspect.signature(extract_tiles_torch)}"
    except ImportError:
        pass
    modules = []
    for name in ("tdkstain.knowledge.extraction", "tdkstain.knowledge.maps"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        modules.append(module)
        if hasattr(module, "__path__"):
            for info in pkgutil.iter_modules(module.__path__):
                try:
                    modules.append(importlib.import_module(f"{name}.{info.name}"))
                except ImportError:
                    continue
    candidates = []
    for module in modules:
        for attr, value in vars(module).items():
            if attr.startswith("_") or not callable(value) or not attr.lower().startswith("extract"):
                continue
            try:
                signature = inspect.signature(value)
            except (TypeError, ValueError):
                continue
            if "device" in signature.parameters:
                candidates.append(("torch" not in attr, attr, module, value, signature))
    if candidates:
        _, attr, module, value, signature = min(candidates, key=lambda c: c[:2])
        return value, f"{module.__name__}.{attr}{signature}"
    return None, "no public extract* function with a `device` argument in tdkstain.knowledge.extraction / tdkstain.knowledge"


def case_extract(case: dict, device, smoke: bool) -> dict:
    import numpy as np

    torch = _torch()
    from tdkstain.knowledge import maps as knowledge
    from tdkstain.synth.tissue import render_pair

    tile, batch = case["tile"], case["batch"]
    distinct = [render_pair(seed, size=tile, her2=seed % 4).ihc for seed in range(2)]  # synthetic IHC with nuclei
    tiles = [distinct[i % len(distinct)] for i in range(batch)]
    notes = [f"synthetic IHC tiles (tdkstain.synth) {tile}^2, batch {batch}"]
    cpu_times, reference = [], []
    for t in distinct:  # the numpy / scikit-image path (CPU), per tile
        t0 = time.perf_counter()
        reference.append(knowledge.extract_tile(t))
        cpu_times.append(time.perf_counter() - t0)
    cpu_s = _median(cpu_times)
    notes.append(f"numpy path extract_tile {cpu_s:.3f} s/tile ({os.cpu_count()} CPUs, torch threads {torch.get_num_threads()})")
    fn, found = _find_torch_extractor()
    result: dict[str, Any] = {"cpu_s_per_tile": cpu_s}
    if fn is not None:
        notes.append(f"torch path: {found.split('(')[0]}")
        try:
            outputs = fn(distinct, device=device)
            same = all(
                all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("membrane_mask", "nuclei_mask", "centroids", "density"))
                for a, b in zip(outputs, reference)
            )
            notes.append(f"outputs identical to extract_tile: {same}")
            result["identical"] = same
            times = _timed(lambda: fn(tiles, device=device), device, warmup=0, max_reps=5, max_s=3.0 if not smoke else 0.0,
                           min_reps=1)
            seconds = _median(times)
            result.update({"s": seconds, "reps": len(times), "mps": batch * tile * tile / seconds / 1e6,
                           "torch_s_per_tile": seconds / batch, "speedup_vs_numpy": cpu_s / (seconds / batch)})
            notes.append(f"{seconds / batch:.4f} s/tile, {cpu_s / (seconds / batch):.1f}x the numpy path")
        except Exception as err:  # noqa: BLE001 (recorded; the membrane part below still runs)
            notes.append(f"torch path failed: {type(err).__name__}: {str(err)[:300]}")
    else:
        notes.append(f"torch path skipped: {found}")
    # Always: the membrane mask in torch on the device (batched, on generated IHC in training).
    x = torch.from_numpy(np.stack(tiles)).to(device).permute(0, 3, 1, 2).float() / 255.0
    times = _timed(lambda: knowledge.membrane_mask_torch(x), device, warmup=1, max_reps=10, max_s=2.0 if not smoke else 0.0,
                   min_reps=1)
    mm_s = _median(times)
    notes.append(f"membrane_mask_torch (adaptive) {mm_s / batch:.4f} s/tile")
    result.setdefault("s", mm_s)
    result.setdefault("reps", len(times))
    result.setdefault("mps", batch * tile * tile / mm_s / 1e6)
    result.update({"membrane_mask_torch_s_per_tile": mm_s / batch, "peak_gib": _peak_gib(device), "notes": "; ".join(notes)})
    return result


# --------------------------------------------------------------------------- the worker


def worker(spec: dict) -> int:
    """Run ``spec["cases"]`` in order, printing ``START name`` and ``RESULT {json}`` lines; skip past the deadline."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as tdkstain.training sets it on CUDA
    smoke = spec["smoke"]
    workdir = Path(spec["workdir"])
    deadline = spec["deadline"]
    for case in spec["cases"]:
        name = case["name"]
        left = deadline - time.time()
        if left < case["est_s"]:
            print(RESULT_PREFIX + json.dumps({"name": name, "status": "skipped",
                                             "notes": f"budget: {max(left, 0):.0f} s left, case needs ~{case['est_s']:.0f} s"}),
                  flush=True)
            continue
        _CURRENT["name"] = name
        print(RESULT_PREFIX + json.dumps({"name": name, "start": True}), flush=True)
        t0 = time.perf_counter()
        try:
            _reset_memory(device)
            kind = case["kind"]
            if kind == "matmul":
                row = case_matmul(case, device, smoke)
            elif kind == "conv":
                row = case_conv(case, device, smoke)
            elif kind == "train":
                row = case_train(case, device, smoke)
            elif kind == "infer":
                row = case_infer(case, device, smoke)
            elif kind == "slide":
                row = case_slide(case, device, smoke, workdir)
            elif kind == "extract":
                row = case_extract(case, device, smoke)
            elif kind == "cohort":
                row = case_cohort(case, device, smoke, workdir)
            else:
                raise ValueError(f"unknown case kind {kind}")
            row.setdefault("peak_gib", _peak_gib(device))
            row.update({"name": name, "status": "ok"})
        except Exception as err:  # noqa: BLE001 (recorded; the next case runs)
            traceback.print_exc(file=sys.stderr)
            row = {"name": name, "status": "error", "notes": f"{type(err).__name__}: {str(err)[:400]}"}
            if "out of memory" in str(err).lower():
                row["notes"] += " (CUDA OOM)"
        row["case_wall_s"] = time.perf_counter() - t0
        print(RESULT_PREFIX + json.dumps(row, default=str), flush=True)
    return 0


# --------------------------------------------------------------------------- the parent: workers, table


def environment(device: str) -> dict:
    info: dict[str, Any] = {"date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "host": platform.node(),
                            "python": platform.python_version(), "cpus": os.cpu_count(), "device": device}
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=HERE, timeout=10, check=False).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               cwd=HERE, timeout=10, check=False).stdout.strip()
        info["dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    try:
        import torch

        info["torch"] = torch.__version__
        if device.startswith("cuda") and torch.cuda.is_available():
            props = torch.cuda.get_device_properties(torch.device(device))
            info["gpu"] = props.name
            info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
            info["sms"] = props.multi_processor_count
            info["cuda"] = torch.version.cuda
            info["cudnn"] = torch.backends.cudnn.version()
    except Exception as err:  # noqa: BLE001
        info["torch_error"] = str(err)
    for module in ("tifffile", "imagecodecs", "openslide", "tiffslide", "pynvml"):
        try:
            imported = __import__(module)
            info[module] = getattr(imported, "__version__", "present")
        except Exception as err:  # noqa: BLE001 (ImportError, or a library that fails to load)
            info[module] = f"missing ({type(err).__name__})"
    return info


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value else f"{value:.{digits}f}"
    return str(value)


def render_table(rows: list[dict], env: dict, budget_note: str) -> str:
    by_name = {r["name"]: r for r in rows}
    lines = [
        f"# GPU benchmarks (issue 8), {env.get('date_utc')} UTC",
        "",
        f"{env.get('gpu', env.get('device'))}; torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}; "
        f"commit {env.get('commit')}{' (dirty)' if env.get('dirty') else ''}; {env.get('cpus')} CPUs; "
        f"tifffile {env.get('tifffile')}, imagecodecs {env.get('imagecodecs')}, openslide {env.get('openslide')}, "
        f"tiffslide {env.get('tiffslide')}, pynvml {env.get('pynvml')}.",
        "",
        budget_note,
        "",
        "| case | status | s | TFLOP | TFLOP/s | ratio | limit | MP/s | peak GiB | notes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        limit = r.get("limit")
        ratio = None
        if limit and r.get("tflops") and by_name.get(limit, {}).get("tflops"):
            ratio = r["tflops"] / by_name[limit]["tflops"]
            r["ratio"] = ratio
        notes = str(r.get("notes", "")).replace("|", "/").replace("\n", " ")
        lines.append(
            f"| {r['name']} | {r.get('status', 'running')} | {_fmt(r.get('s'), 4)} | {_fmt(r.get('tflop'))} | "
            f"{_fmt(r.get('tflops'))} | {_fmt(ratio, 2)} | {limit or ''} | {_fmt(r.get('mps'))} | {_fmt(r.get('peak_gib'), 2)} | "
            f"{notes} |"
        )
    lines += ["", "s: median seconds per unit after warm-up (synchronised); TFLOP from torch.utils.flop_counter "
              "(matmul/conv only) or formula; ratio = TFLOP/s / the named limit's TFLOP/s, same run; "
              "peak GiB: torch.cuda.max_memory_allocated (process RSS on CPU)."]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, rows: list[dict], env: dict, budget_note: str) -> None:
    table = render_table(rows, env, budget_note)
    for name, text in (("gpu_table.md", table), ("gpu_results.json", json.dumps({"environment": env, "budget": budget_note,
                                                                                  "results": rows}, indent=1, default=str))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def _reader(stream, q: queue.Queue) -> None:
    for line in stream:
        q.put(line)
    q.put(None)


def run_all(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    deadline = started + args.budget_s
    env = environment(args.device)
    cases = plan_cases(args.smoke, args.slide_size)
    if args.only:
        cases = [c for c in cases if any(key in c["name"] for key in args.only)]
    elif args.smoke:  # a quick check of the code paths: leave out the compiled cases and repeats of a path
        cases = [c for c in cases if not c.get("smoke_skip")]
    rows: list[dict] = []
    row_of: dict[str, dict] = {}
    log_path = out / "gpu_log.txt"
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gpu_all_"))
    workdir.mkdir(parents=True, exist_ok=True)
    note = lambda: (f"budget {args.budget_s:.0f} s, used {time.time() - started:.0f} s; "  # noqa: E731
                    f"{sum(r.get('status') == 'skipped' for r in rows)} case(s) skipped for the budget")

    def record(row: dict) -> None:
        if row["name"] in row_of:
            row_of[row["name"]].clear()
            row_of[row["name"]].update(row)
        else:
            row_of[row["name"]] = row
            rows.append(row)
        write_outputs(out, rows, env, note())

    pending = list(cases)
    print(f"{len(pending)} cases, budget {args.budget_s:.0f} s, results in {out}", file=sys.stderr, flush=True)
    with open(log_path, "a") as log:
        while pending:
            spec = {"cases": pending, "device": args.device, "smoke": args.smoke, "workdir": str(workdir),
                    "deadline": deadline, "threads": args.threads}
            env_vars = dict(os.environ, PYTHONUNBUFFERED="1")
            proc = subprocess.Popen([sys.executable, __file__, "--_worker", json.dumps(spec)], stdout=subprocess.PIPE,
                                    stderr=log, text=True, env=env_vars, start_new_session=True)
            q: queue.Queue = queue.Queue()
            threading.Thread(target=_reader, args=(proc.stdout, q), daemon=True).start()
            current: dict | None = None
            current_start = 0.0
            finished = killed = False
            while not finished:
                try:
                    line = q.get(timeout=1.0)
                except queue.Empty:
                    line = ""
                if line is None:
                    finished = True
                elif line.startswith(RESULT_PREFIX):
                    row = json.loads(line[len(RESULT_PREFIX):])
                    if "progress" in row:
                        if current is not None:
                            row_of[current["name"]].setdefault("progress", []).append(row["progress"])
                            print(f"[{time.time() - started:5.0f} s]   {row['progress']}", file=sys.stderr, flush=True)
                        continue
                    if row.pop("start", False):
                        current, current_start = next(c for c in pending if c["name"] == row["name"]), time.time()
                        record({"name": row["name"], "status": "running"})
                        print(f"[{time.time() - started:5.0f} s] {row['name']} ...", file=sys.stderr, flush=True)
                        continue
                    record(row)
                    pending = [c for c in pending if c["name"] != row["name"]]
                    current = None
                    print(f"[{time.time() - started:5.0f} s] {row['name']}: {row['status']} "
                          f"{_fmt(row.get('s'), 4)} s {_fmt(row.get('tflops'))} TFLOP/s {_fmt(row.get('mps'))} MP/s",
                          file=sys.stderr, flush=True)
                elif line:
                    print(line, end="", file=sys.stderr)
                if current is not None:
                    elapsed = time.time() - current_start
                    over_cap = elapsed > current["cap_s"]
                    over_budget = time.time() > deadline + args.grace_s
                    if over_cap or over_budget:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                        why = f"killed after {elapsed:.0f} s ({'its cap' if over_cap else 'the budget'})"
                        why += "".join(f"; {text}" for text in row_of[current["name"]].get("progress", []))
                        record({"name": current["name"], "status": "timeout", "notes": why})
                        pending = [c for c in pending if c["name"] != current["name"]]
                        current = None
                        finished = killed = True
            rc = proc.wait()
            if current is not None:  # the worker died inside a case
                log.flush()
                tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                record({"name": current["name"], "status": "crashed", "notes": f"worker exit {rc}: " + " / ".join(tail)[-400:]})
                pending = [c for c in pending if c["name"] != current["name"]]
            elif rc != 0 and pending and not killed:
                log.flush()
                for c in pending:
                    record({"name": c["name"], "status": "error", "notes": f"worker exit {rc} before the case started"})
                pending = []
            if pending and time.time() > deadline:
                for c in pending:
                    record({"name": c["name"], "status": "skipped", "notes": "budget spent"})
                pending = []
    if not args.workdir:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    write_outputs(out, rows, env, note())
    print((out / "gpu_table.md").read_text())
    return 0 if all(r.get("status") in ("ok", "skipped") for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_table.md, gpu_results.json, gpu_log.txt "
                        "(default: $OUT)")
    parser.add_argument("--device", default="cuda", help="default: cuda")
    parser.add_argument("--budget-s", type=float, default=450.0, help="cases not started by then are skipped (default 450)")
    parser.add_argument("--grace-s", type=float, default=15.0, help="a case still running this long after the budget is killed")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (for a CPU check of the code paths)")
    parser.add_argument("--slide-size", type=int, default=None, help="synthetic slide side in pixels (default 20480)")
    parser.add_argument("--only", nargs="+", default=None, help="run only cases whose name contains one of these")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads in the workers")
    parser.add_argument("--workdir", default=None, help="folder for the synthetic slide (default: a temporary folder, removed)")
    parser.add_argument("--_worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        return worker(json.loads(args._worker))
    if not args.out:
        parser.error("--out is required when $OUT is not set")
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
