"""What a run tells: a tqdm bar, ``RUN/metrics.jsonl`` and TensorBoard, on rank 0 only."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tdkstain.plumbing import distributed
from tdkstain.plumbing.atomic import write_text_atomic

if TYPE_CHECKING:
    from tdkstain.training.setup import Run
    from tdkstain.training.state import TrainState

__all__ = ["Logger"]


class Logger:
    """tqdm bar, ``metrics.jsonl`` and TensorBoard, on rank 0 only."""

    def __init__(self, run: Run, start: int, stop: int, progress: bool):
        self.run = run
        self.main = run.dist.is_main
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.t0, self.step0 = time.perf_counter(), start
        self.metrics_path = run.run_dir / "metrics.jsonl"
        self.writer = None
        self.bar = None
        if self.main:
            _truncate_metrics(self.metrics_path, start)
            if run.cfg.train.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run.run_dir / "tensorboard"), purge_step=start)
            if progress:
                from tqdm import tqdm

                self.bar = tqdm(total=stop, initial=start, unit="step", dynamic_ncols=True, desc="train")

    def terms(self, terms: dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.float()
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)

    def write(self, state: TrainState, steps_per_epoch: int, lrs: dict[str, float]) -> None:
        means = {k: float(v) / max(self.count, 1) for k, v in self.sums.items()}
        if self.run.dist.enabled:
            means = distributed.mean_over_ranks(means, self.run.runtime.device)
        elapsed = time.perf_counter() - self.t0
        record = {
            "kind": "train", "step": state.step, "images": state.images,
            "epoch": state.step / steps_per_epoch, "sec_per_step": elapsed / max(state.step - self.step0, 1),
            **{f"lr/{k}": v for k, v in lrs.items()}, **means, "skipped_updates": self.run.runtime.skipped,
        }
        self.sums, self.count = {}, 0
        self.t0, self.step0 = time.perf_counter(), state.step
        if not self.main:
            return
        _append_jsonl(self.metrics_path, record)
        if self.writer is not None:
            for k, v in record.items():
                if k not in ("kind", "step"):
                    self.writer.add_scalar(k, v, state.step)
        if self.bar is not None:
            shown = {k.split("/")[0][0].upper() + ":" + k.split("/")[1]: f"{v:.3g}" for k, v in means.items() if k.endswith(("l1", "/loss"))}
            self.bar.set_postfix(shown, refresh=False)

    def validation(self, state: TrainState, scores: dict[str, float], grid: np.ndarray | None) -> None:
        record = {"kind": "val", "step": state.step, "images": state.images, **{f"val/{k}": v for k, v in scores.items()}}
        _append_jsonl(self.metrics_path, record)
        if self.writer is not None:
            for k, v in scores.items():
                self.writer.add_scalar(f"val/{k}", v, state.step)
            if grid is not None:
                self.writer.add_image("val/he_ihc_generated", grid, state.step, dataformats="HWC")
        if self.bar is not None:
            self.bar.write(f"step {state.step}: val " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, forget records past the checkpoint (an interrupted run logged them, the rerun will again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill mid-append (or an empty one)
        if isinstance(record, dict) and record.get("step", 0) <= step:
            keep.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in keep))
