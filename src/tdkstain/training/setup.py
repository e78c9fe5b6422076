"""Setting up one ``train`` call: the processes, the device, reproducibility, and the run folder's config.

:func:`start_run` does, in this order (the order matters for exact resume):
torchrun's process group, the device (:func:`tdkstain.plumbing.devices.resolve_device`),
CPU threads and the allocator, deterministic algorithms, the global random
streams seeded per rank, then the run folder's ``config.yaml`` read back,
kept where the user left a setting to the method and checked. The result,
:class:`Run`, is what the loop, the logger and the saving need. The resolved
config is written into the run folder by :func:`save_run_config` once the
loop has checked everything it can before a step (sizes, data), so a refused
command leaves the folder as it was.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tdkstain.methods.base import Runtime
from tdkstain.plumbing import distributed
from tdkstain.plumbing.allocator import keep_freed_memory
from tdkstain.plumbing.atomic import write_text_atomic
from tdkstain.plumbing.devices import resolve_device
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.training.config import Config, check_same_architecture, keep_trained_settings, read_run_config

__all__ = ["Run", "start_run", "save_run_config", "make_runtime"]


@dataclass
class Run:
    """One ``train`` call: the resolved config, its run folder, the processes and how phases run."""

    cfg: Config
    run_dir: Path
    dist: distributed.DistInfo
    runtime: Runtime


def start_run(cfg: Config, run_dir: Path) -> Run:
    """Processes, device and random streams set up, and the run folder's config settled (see the module)."""
    if not cfg.data.root:  # None, or an empty --data ''
        raise TdkstainError("data.root is not set: pass --data DATA_DIR (or data.root=DATA_DIR)")
    _check_run_folder_writable(Path(run_dir))
    dist_info, device = _processes_and_device(cfg)
    _reproducibility(cfg, device, dist_info.rank)
    cfg = _settle_run_config(cfg, Path(run_dir))
    return Run(cfg, Path(run_dir), dist_info, make_runtime(cfg, device, dist_info))


def save_run_config(run: Run) -> None:
    """Write the resolved config as the run folder's ``config.yaml`` (main process)."""
    if run.dist.is_main:
        write_text_atomic(run.run_dir / "config.yaml", run.cfg.to_yaml())


def _check_run_folder_writable(run_dir: Path) -> None:
    """Refuse at once a run folder that cannot be written (a file in the way, a folder without write permission),
    without creating anything: the run folder is written only once the loop's checks have passed."""
    import errno

    from tdkstain.plumbing.atomic import write_error

    config_file = run_dir / "config.yaml"
    for folder in (run_dir, *run_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise write_error(config_file, OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)))
            if not os.access(folder, os.W_OK | os.X_OK):
                first = config_file if folder == run_dir else folder / run_dir.relative_to(folder).parts[0]
                raise write_error(first, OSError(errno.EACCES, os.strerror(errno.EACCES)))
            return


def _processes_and_device(cfg: Config) -> tuple[distributed.DistInfo, torch.device]:
    want_cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    dist_info = distributed.current()
    if not dist_info.enabled:
        dist_info = distributed.init_from_env("cuda" if want_cuda else "cpu")
    device = resolve_device(cfg.train.device, local_rank=dist_info.local_rank, setting="train.device")
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    if device.type == "cpu" and cfg.train.keep_freed_memory:
        keep_freed_memory()
    return dist_info, device


def _reproducibility(cfg: Config, device: torch.device, rank: int) -> None:
    if cfg.train.deterministic:
        # cuBLAS needs this to be deterministic; harmless elsewhere.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # Bilinear upsampling has no deterministic CUDA backward: warn there instead of failing.
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = device.type == "cuda"
    seed = cfg.train.seed + rank
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _settle_run_config(cfg: Config, run_dir: Path) -> Config:
    """``cfg`` as this run folder continues it (read with every bound of a config file: a binary file or an
    alias bomb named ``config.yaml`` is refused, naming it)."""
    config_file = run_dir / "config.yaml"
    if config_file.is_file():
        saved = read_run_config(config_file)  # warns when it predates a setting (config.migrate_saved_config)
        cfg = keep_trained_settings(cfg, saved)
        check_same_architecture(cfg, saved.to_dict(), source=str(config_file))
    return cfg.resolved()


def make_runtime(cfg: Config, device: torch.device, dist_info: distributed.DistInfo) -> Runtime:
    precision = cfg.train.precision
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if precision == "fp16" and device.type != "cuda":
        raise TdkstainError("train.precision=fp16 needs train.device=cuda; on CPU use bf16 or fp32")
    rt = Runtime(
        device=device,
        amp_dtype=amp_dtype,
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        scaler=torch.amp.GradScaler(device.type) if precision == "fp16" else None,
        channels_last=cfg.train.channels_last,
        nonfinite=cfg.train.nonfinite,
    )
    if dist_info.enabled:
        rt.average_gradients = distributed.average_gradients
        rt.all_ranks_ok = lambda ok: distributed.all_true(ok, device)
    return rt
