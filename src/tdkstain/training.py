"""The trainer: one loop, a checkpoint that knows everything, exact resume.

``train(cfg, out)`` trains the method named by ``cfg.method`` on
``cfg.data.root`` into the run folder ``out``::

    RUN/config.yaml                        the resolved config
    RUN/checkpoints/step_00001000.pt       full training state (last K kept)
    RUN/weights/generator.safetensors      latest generator + model card
    RUN/weights/generator_best.safetensors best by validation
    RUN/metrics.jsonl                      one JSON object per log / validation
    RUN/tensorboard/                       scalars and H&E | IHC | generated grids

Rerunning the same command on the same folder resumes from the newest
checkpoint. Training randomness is a pure function of (seed, epoch, index)
(see ``data``) and the learning rate a pure function of the step, so a
resumed CPU run in deterministic mode is bitwise the uninterrupted one.
Checkpoints hold only tensors and builtins: ``torch.load(weights_only=True)``
reads them.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tdkstain import distributed
from tdkstain.allocator import keep_freed_memory
from tdkstain.atomic import atomic_path, write_text_atomic
from tdkstain.checkpoints import load_generator, load_release_training_state, save_network
from tdkstain.config import Config, build_config, migrate_saved_config, read_run_config
from tdkstain.data import AlignedTiles, EpochBatchSampler, collate, split_pairs, split_unpaired, tile_files, training_tiles
from tdkstain.errors import TdkstainError
from tdkstain.objective import OBJECTIVES, NonFiniteLoss, Runtime, create_objective

CHECKPOINT_FORMAT = "tdkstain.train-state/1"
_STEP_FILE = re.compile(r"^step_(\d{8,})\.pt$")


# ----------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    run_dir: Path
    nets: dict[str, nn.Module]
    step: int
    images: int
    best: dict[str, Any]
    last_val: dict[str, float] | None = None


def train(cfg: Config, out: str | os.PathLike, *, progress: bool = True) -> TrainResult:
    """Train (or resume) into run folder ``out``; returns the networks and counters."""
    run = RunSetup.create(cfg, Path(out))
    cfg, dist_info, rt = run.cfg, run.dist, run.runtime

    train_files, val_files = run.data_files()
    sampler = EpochBatchSampler(len(train_files), cfg.data.batch, seed=cfg.train.seed, rank=dist_info.rank, world=dist_info.world)
    objective = create_objective(cfg, sampler.steps_per_epoch)
    nets = objective.build_networks(cfg.train.seed)
    for net in nets.values():
        net.to(rt.device, memory_format=torch.channels_last if cfg.train.channels_last else torch.preserve_format)
    optimizers = {name: torch.optim.Adam(net.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas)) for name, net in nets.items()}
    state = TrainState()
    checkpoint = load_latest(run.run_dir)  # on CPU; load_state_dict copies onto the device
    if checkpoint is not None:
        restore(checkpoint, cfg, nets, optimizers, rt, state)
        del checkpoint  # the paper preset's state is ~0.7 GB
    else:
        if cfg.train.init_from is not None:
            start_from_release(cfg, nets, dist_info.is_main)
        if dist_info.enabled:
            for net in nets.values():
                distributed.broadcast_module(net)
    if cfg.train.compile:
        for net in nets.values():
            # Static shapes: G runs at two batch sizes (x with M*x, and the real IHC alone), and the
            # automatic dynamic-shape recompile this triggers fails in inductor on the paper preset
            # (torch 2.14.1 on CPU: "cannot determine truth value of Relational"). Each shape compiles once.
            net.compile(dynamic=False)

    stop = objective.total_steps if cfg.train.max_steps is None else min(objective.total_steps, cfg.train.max_steps)
    already_done = state.step > 0 and state.step == stop
    sampler.start_step = state.step
    batches = iter(run.loader(training_tiles(train_files, cfg.data.crop, flip=cfg.data.flip, seed=cfg.train.seed), sampler))
    log = Logger(run, start=state.step, stop=stop, progress=progress)
    last_val = None
    try:
        for step in range(state.step, stop):
            batch = rt.to_device(next(batches))
            # The schedule is a pure function of the step: nothing to restore on resume.
            for name, optimizer in optimizers.items():
                for group in optimizer.param_groups:
                    group["lr"] = cfg.optim.lr * objective.lr_factor(name, step)
            try:
                terms = objective.train_step(step, nets, optimizers, batch, rt)
            except NonFiniteLoss as err:
                raise TdkstainError(
                    f"step {step}: {err}; stopped before applying it. The last good checkpoint is "
                    f"{newest_checkpoint(run.run_dir) or '(none yet)'}. Try a lower optim.lr, "
                    "train.precision=fp32, or train.nonfinite=skip."
                ) from None
            state.step = step + 1
            state.images += len(batch["he"]) * dist_info.world
            log.terms(terms)
            done = state.step == stop
            if state.step % cfg.train.log_every == 0 or done:
                log.write(state, sampler.steps_per_epoch, {k: g["lr"] for k, o in optimizers.items() for g in o.param_groups[:1]})
            if val_files and (state.step % cfg.train.val_every == 0 or done):
                last_val = run.validate(nets["generator"], val_files, state, log)
            if state.step % cfg.train.checkpoint_every == 0 or done:
                run.save(state, nets, optimizers, rt)
    finally:
        log.close()
        del batches  # shuts DataLoader workers down
    if already_done:
        run.save(state, nets, optimizers, rt)  # rerun of a finished run: make sure the weights exist
    distributed.barrier()
    return TrainResult(run.run_dir, nets, state.step, state.images, state.best(), last_val)


def start_from_release(cfg: Config, nets: dict[str, nn.Module], announce: bool) -> None:
    """Fine-tuning the authors' model: G, D and E of a new run take the release's weights (``train.init_from``)."""
    if cfg.method != "tdkstain":
        raise TdkstainError(
            f"train.init_from loads the authors' TDKstain release (G, D, E); method {cfg.method} has other networks"
        )
    files = load_release_training_state(cfg.train.init_from, {k: _unwrap(v) for k, v in nets.items()})
    if announce:
        import sys

        print(f"train: starting from the authors' release: {', '.join(str(f) for f in files.values())}", file=sys.stderr)


# ----------------------------------------------------------------------------- state


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


def keep_trained_settings(cfg: Config, saved: Config) -> Config:
    """``cfg`` with the run folder's values for the settings the user left to the method.

    ``model.d_padding`` not given: the folder's padding is kept, so a run
    trained with padding 2 (tdkstain 0.1) resumes as it was trained. A value
    given explicitly is compared with the folder's by :func:`check_same_architecture`.
    """
    if cfg.model.d_padding is None and cfg.method == saved.method:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"d_padding": saved.d_padding})})
    return cfg


def check_same_architecture(cfg: Config, saved: dict[str, Any], source: str) -> None:
    """Refuse to resume a run whose tensors were made for other networks or another method."""
    ours = cfg.architecture()
    try:
        theirs = build_config(migrate_saved_config(saved, source)[0], source=source).architecture()
    except TdkstainError:
        raise
    except Exception as err:  # an older or edited file
        raise TdkstainError(f"{source}: its config cannot be read ({err}); use a new --out folder") from None
    diffs = [f"{k}: {theirs['model'][k]} there, {v} here" for k, v in ours["model"].items() if theirs["model"][k] != v]
    if ours["method"] != theirs["method"]:
        diffs.append(f"method: {theirs['method']} there, {ours['method']} here")
    if ours["has_estimator"] != theirs["has_estimator"]:
        diffs.append("loss.nuclei: zero in one, non-zero in the other (estimator present or not)")
    if ours["method"] == theirs["method"]:  # the baseline settings that shape the networks (Config.architecture)
        diffs += [f"{k}: {theirs['settings'].get(k)} there, {v} here" for k, v in ours["settings"].items() if theirs["settings"].get(k) != v]
    if diffs:
        raise TdkstainError(
            f"{source}: this run folder holds a different architecture ({'; '.join(diffs)}); "
            "use a new --out folder, or the same config to resume"
        )


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


# ----------------------------------------------------------------------------- plumbing


def select_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TdkstainError("train.device=cuda but PyTorch sees no CUDA device; use train.device=cpu or auto")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


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


@dataclass
class RunSetup:
    """Device, processes, run folder, data and saving for one ``train`` call."""

    cfg: Config
    run_dir: Path
    dist: distributed.DistInfo
    runtime: Runtime

    @classmethod
    def create(cls, cfg: Config, run_dir: Path) -> "RunSetup":
        if cfg.data.root is None:
            raise TdkstainError("data.root is not set: pass --data DATA_DIR (or data.root=DATA_DIR)")
        want_cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
        dist_info = distributed.current()
        if not dist_info.enabled:
            dist_info = distributed.init_from_env("cuda" if want_cuda else "cpu")
        device = select_device(cfg.train.device, dist_info.local_rank)
        if cfg.train.threads is not None:
            torch.set_num_threads(cfg.train.threads)
        if device.type == "cpu" and cfg.train.keep_freed_memory:
            keep_freed_memory()
        if cfg.train.deterministic:
            # cuBLAS needs this to be deterministic; harmless elsewhere.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            # Bilinear upsampling has no deterministic CUDA backward: warn there instead of failing.
            torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
            torch.backends.cudnn.benchmark = False
        else:
            torch.use_deterministic_algorithms(False)
            torch.backends.cudnn.benchmark = device.type == "cuda"
        seed = cfg.train.seed + dist_info.rank
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        run_dir = Path(run_dir)
        config_file = run_dir / "config.yaml"
        if config_file.is_file():
            saved = read_run_config(config_file)  # warns when it predates a setting (config.migrate_saved_config)
            cfg = keep_trained_settings(cfg, saved)
            check_same_architecture(cfg, saved.to_dict(), source=str(config_file))
        cfg = cfg.resolved()
        if dist_info.is_main:
            write_text_atomic(config_file, cfg.to_yaml())
        return cls(cfg, run_dir, dist_info, make_runtime(cfg, device, dist_info))

    def data_files(self):
        cfg = self.cfg
        if cfg.baseline.unpaired:  # H&E and IHC listed separately; only CycleGAN can learn from that
            if cfg.method != "cyclegan":
                raise TdkstainError(
                    f"baseline.unpaired=true: method {cfg.method} learns from aligned pairs; only cyclegan trains on "
                    "unpaired H&E and IHC (set baseline.unpaired=false, or method cyclegan)"
                )
            unpaired, val_pairs = split_unpaired(cfg.data.root, cfg.data.train_split, cfg.data.val_split, cfg.data.val_pairs)
            return unpaired, tile_files(cfg.data.root, val_pairs, membrane=False, nuclei=False)
        train_pairs, val_pairs = split_pairs(cfg.data.root, cfg.data.train_split, cfg.data.val_split, cfg.data.val_pairs)
        needs = OBJECTIVES[cfg.method].needs(cfg)  # a zero-weight branch loads no maps
        train_files = tile_files(cfg.data.root, train_pairs, **needs, density_format=cfg.data.nuclei_density_format)
        val_files = tile_files(cfg.data.root, val_pairs, membrane=False, nuclei=False)
        return train_files, val_files

    def loader(self, dataset: AlignedTiles, sampler: EpochBatchSampler) -> DataLoader:
        workers = self.cfg.data.workers
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=self.runtime.device.type == "cuda",
            prefetch_factor=2 if workers else None,
            # Its own generator: creating the iterator draws a base seed, which must not come from the
            # global stream (a resumed run creates it after restoring that stream, an uninterrupted one
            # before step 0; methods that draw random numbers per step would then diverge). The data
            # themselves are a pure function of (seed, epoch, index), see data.py.
            generator=torch.Generator().manual_seed(self.cfg.train.seed),
        )

    def validate(self, generator: nn.Module, val_files, state: TrainState, log: "Logger") -> dict[str, float] | None:
        """Scores on the held-out pairs (rank 0); keeps the best generator."""
        scores = None
        if self.dist.is_main:
            dataset = AlignedTiles(val_files, self.cfg.data.val_size, flip=False, seed=0, center=True)
            scores, grid = evaluate_generator(generator, dataset, self.runtime, grid_tiles=4)
            metric = self.cfg.train.best_metric
            better = state.best_value is None or (
                scores[metric] < state.best_value if metric == "l1" else scores[metric] > state.best_value
            )
            if better:
                state.best_value, state.best_step = scores[metric], state.step
                self.save_generator(generator, "generator_best.safetensors", state)
            log.validation(state, scores, grid)
        distributed.barrier()
        return scores

    def save_generator(self, generator: nn.Module, name: str, state: TrainState) -> None:
        save_network(
            self.run_dir / "weights" / name,
            _unwrap(generator),
            tile_size=self.cfg.data.crop,
            mpp=self.cfg.data.mpp,
            config=self.cfg.to_dict(),
            step=state.step,
            images=state.images,
        )

    def save(self, state: TrainState, nets: dict, optimizers: dict, rt: Runtime) -> None:
        if self.dist.is_main:
            save_checkpoint(self.run_dir, checkpoint_payload(self.cfg, state, nets, optimizers, rt), self.cfg.train.keep_last)
            self.save_generator(nets["generator"], "generator.safetensors", state)
            # Temporaries of weights writes that a kill interrupted (this process is their only writer).
            for stale in (self.run_dir / "weights").glob(".tmp-generator*.safetensors"):
                stale.unlink(missing_ok=True)
        distributed.barrier()


def _unwrap(net: nn.Module) -> nn.Module:
    return getattr(net, "_orig_mod", net)


class Logger:
    """tqdm bar, ``metrics.jsonl`` and TensorBoard, on rank 0 only."""

    def __init__(self, run: RunSetup, start: int, stop: int, progress: bool):
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


# ----------------------------------------------------------------------------- evaluation


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` float in [-1, 1] -> ``(B, H, W, 3)`` uint8 (rounded, clipped)."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_scores(generated: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """L1 (in the networks' [-1, 1] units, like the training term), PSNR and SSIM of two uint8 RGB tiles.

    SSIM: scikit-image ``structural_similarity`` on uint8 RGB, ``channel_axis=-1``,
    ``data_range=255``; PSNR with ``data_range=255``.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    l1 = float(np.abs(generated.astype(np.float64) - real.astype(np.float64)).mean() / 127.5)
    psnr = float(peak_signal_noise_ratio(real, generated, data_range=255))
    ssim = float(structural_similarity(real, generated, channel_axis=-1, data_range=255))
    return {"l1": l1, "psnr": psnr, "ssim": ssim}


def evaluate_generator(generator: nn.Module | None, dataset: AlignedTiles, rt: Runtime | None = None, *,
                       constant_rgb: np.ndarray | None = None, grid_tiles: int = 0) -> tuple[dict[str, float], np.ndarray | None]:
    """Mean scores over ``dataset`` (one tile at a time) and an image grid of the first tiles.

    ``generator`` None with ``constant_rgb`` (3,) uint8 scores the image painted in that colour.
    Grid rows: H&E | real IHC | generated, ``(rows*H, 3*W, 3)`` uint8.
    """
    rt = rt or Runtime()
    was_training = generator.training if generator is not None else False
    if generator is not None:
        generator.eval()
    totals: dict[str, float] = {}
    rows = []
    try:
        with torch.no_grad():
            for i in range(len(dataset)):
                sample = dataset[i]
                real = to_uint8(sample["ihc"][None])[0]
                if generator is None:
                    generated = np.broadcast_to(np.asarray(constant_rgb, np.uint8), real.shape).copy()
                else:
                    he = rt.to_device({"he": sample["he"][None]})["he"]
                    with rt.autocast():
                        generated = to_uint8(generator(he))[0]
                for k, v in image_scores(generated, real).items():
                    totals[k] = totals.get(k, 0.0) + v
                if i < grid_tiles:
                    rows.append(np.concatenate([to_uint8(sample["he"][None])[0], real, generated], axis=1))
    finally:
        if generator is not None:
            generator.train(was_training)
    scores = {k: v / max(len(dataset), 1) for k, v in totals.items()}
    return scores, (np.concatenate(rows, axis=0) if rows else None)


def mean_ihc_colour(dataset: AlignedTiles) -> np.ndarray:
    """Mean RGB of the IHC tiles of ``dataset``, ``(3,)`` uint8 (whole tiles)."""
    total = np.zeros(3)
    pixels = 0
    for f in dataset.files:
        from tdkstain.images import read_rgb

        img = read_rgb(f.ihc).reshape(-1, 3)
        total += img.sum(0, dtype=np.float64)
        pixels += len(img)
    return np.round(total / max(pixels, 1)).astype(np.uint8)


def baseline_scores(run_dir: str | os.PathLike, data_root: str | os.PathLike | None = None, *,
                    val_pairs: int | None = None, size: int | None = None) -> dict[str, dict[str, float]]:
    """Held-out scores of a trained run against two baselines.

    - ``trained``: the run's ``weights/generator.safetensors``;
    - ``untrained``: the same architecture as initialised at step 0 (same seed);
    - ``mean_colour``: the mean IHC colour of the training tiles painted everywhere.

    Pairs and tile size are the run's validation settings (``data.val_split``,
    ``data.val_pairs``, ``data.val_size``) unless given. Returns
    ``{name: {"l1", "psnr", "ssim"}}``.
    """
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir / "config.yaml")
    root = Path(data_root or cfg.data.root)
    n_val = cfg.data.val_pairs if val_pairs is None else val_pairs
    train_pairs, val = split_pairs(root, cfg.data.train_split, cfg.data.val_split, max(n_val, 1))
    val_set = AlignedTiles(tile_files(root, val[: max(n_val, 1)], membrane=False, nuclei=False), size or cfg.data.val_size, flip=False, seed=0, center=True)
    train_set = AlignedTiles(tile_files(root, train_pairs, membrane=False, nuclei=False), None, flip=False, seed=0)
    untrained = create_objective(cfg, 1).build_networks(cfg.train.seed)["generator"]
    return {
        "trained": evaluate_generator(load_generator(run_dir / "weights" / "generator.safetensors"), val_set)[0],
        "untrained": evaluate_generator(untrained, val_set)[0],
        "mean_colour": evaluate_generator(None, val_set, constant_rgb=mean_ihc_colour(train_set))[0],
    }


def format_scores(table: dict[str, dict[str, float]]) -> str:
    lines = [f"{'':14s} {'L1':>8s} {'PSNR':>8s} {'SSIM':>8s}"]
    for name, s in table.items():
        lines.append(f"{name:14s} {s['l1']:8.4f} {s['psnr']:8.2f} {s['ssim']:8.4f}")
    return "\n".join(lines)


def steps_per_epoch(n_pairs: int, batch: int, world: int = 1) -> int:
    return math.ceil(math.ceil(n_pairs / world) / batch)
