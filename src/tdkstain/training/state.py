"""Training state: what a checkpoint holds to continue exactly, and the checkpoint files.

A checkpoint (``RUN/checkpoints/step_XXXXXXXX.pt``) holds every network,
optimiser, the grad scaler, the counters and every random stream (torch,
numpy, python, CUDA), as tensors and builtins only:
``torch.load(weights_only=True)`` reads it. Written atomically, the last
``train.keep_last`` kept.
"""

from __future__ import annotations

import io
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
import os

import numpy as np
import torch
from torch import nn

from tdkstain.methods.base import Runtime
from tdkstain.plumbing.atomic import atomic_path
from tdkstain.plumbing.errors import TdkstainError
from tdkstain.training.config import Config, check_same_architecture

__all__ = [
    "CHECKPOINT_FORMAT",
    "TrainState",
    "rng_state",
    "set_rng_state",
    "checkpoint_payload",
    "restore",
    "checkpoint_files",
    "newest_checkpoint",
    "load_checkpoint",
    "load_latest",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "tdkstain.train-state/1"
_STEP_FILE = re.compile(r"^step_(\d{8,})\.pt$")


@dataclass
class TrainState:
    """Counters that a checkpoint carries besides tensors."""

    step: int = 0
    images: int = 0
    best_value: float | None = None
    best_step: int | None = None

    def best(self) -> dict[str, Any]:
        return {"value": self.best_value, "step": self.best_step}


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _plain_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}


def checkpoint_payload(cfg: Config, state: TrainState, nets: dict[str, nn.Module], optimizers: dict, rt: Runtime) -> dict[str, Any]:
    """Everything needed to continue, as tensors and builtins only."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": cfg.to_dict(),
        "step": state.step,
        "images": state.images,
        "best": {"metric": cfg.train.best_metric, **state.best()},
        "networks": {name: _plain_state_dict(net) for name, net in nets.items()},
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "scaler": rt.scaler.state_dict() if rt.scaler is not None else None,
        "skipped_updates": rt.skipped,
        "rng": rng_state(),
    }


def restore(checkpoint: dict[str, Any], cfg: Config, nets: dict, optimizers: dict, rt: Runtime, state: TrainState) -> None:
    saved = checkpoint["config"]
    check_same_architecture(cfg, saved, source=f"checkpoint step {checkpoint['step']}")
    missing = set(nets) ^ set(checkpoint["networks"])
    if missing:
        raise TdkstainError(f"checkpoint step {checkpoint['step']}: networks {sorted(missing)} differ from this config's")
    for name, net in nets.items():
        net.load_state_dict(checkpoint["networks"][name])
        optimizers[name].load_state_dict(checkpoint["optimizers"][name])
    if rt.scaler is not None and checkpoint.get("scaler"):
        rt.scaler.load_state_dict(checkpoint["scaler"])
    rt.skipped = checkpoint.get("skipped_updates", 0)
    set_rng_state(checkpoint["rng"])
    state.step, state.images = checkpoint["step"], checkpoint["images"]
    state.best_value, state.best_step = checkpoint["best"]["value"], checkpoint["best"]["step"]


def checkpoint_files(run_dir: str | os.PathLike) -> list[Path]:
    """``RUN/checkpoints/step_*.pt``, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def newest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    files = checkpoint_files(run_dir)
    return files[-1] if files else None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training checkpoint without unpickling code."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise TdkstainError(f"{path}: not a readable training checkpoint ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise TdkstainError(f"{path}: not a tdkstain training checkpoint (format {CHECKPOINT_FORMAT})")
    return payload


def load_latest(run_dir: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The newest checkpoint of a run folder, or None for a fresh run."""
    path = newest_checkpoint(run_dir)
    return None if path is None else load_checkpoint(path, map_location)


def save_checkpoint(run_dir: str | os.PathLike, payload: dict[str, Any], keep_last: int) -> Path:
    """Write ``step_XXXXXXXX.pt`` atomically, then drop all but the newest ``keep_last``."""
    path = Path(run_dir) / "checkpoints" / f"step_{payload['step']:08d}.pt"
    # torch.save reports a failed write (a full disk) as an opaque RuntimeError from its
    # C++ writer, to a path and to a file object alike. Serialise in memory, write from
    # Python: its OSError(ENOSPC) becomes, in atomic_path, a message naming the checkpoint.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    for old in checkpoint_files(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    # A run killed while writing left a temporary (.tmp-step_*.pt) that atomic_path
    # could not remove; only this process writes checkpoints here, so drop them.
    for stale in path.parent.glob(".tmp-step_*.pt"):
        stale.unlink(missing_ok=True)
    return path
