"""What a run writes besides logs: checkpoints and the generator's weights, and the best one by validation.

    RUN/config.yaml                        the resolved config (training.setup)
    RUN/checkpoints/step_00001000.pt       full training state (training.state), last K kept
    RUN/weights/generator.safetensors      latest generator + model card (tdkstain.weights)
    RUN/weights/generator_best.safetensors best by validation
"""

from __future__ import annotations

from torch import nn

from tdkstain.evaluation.validation import evaluate_generator
from tdkstain.data.tiles import AlignedTiles
from tdkstain.methods.base import Runtime
from tdkstain.plumbing import distributed
from tdkstain.training.log import Logger
from tdkstain.training.setup import Run
from tdkstain.training.state import TrainState, checkpoint_payload, save_checkpoint
from tdkstain.weights import save_network

__all__ = ["save_run", "save_generator", "validate"]


def unwrap(net: nn.Module) -> nn.Module:
    """The module itself, under ``torch.compile``'s wrapper."""
    return getattr(net, "_orig_mod", net)


def save_generator(run: Run, generator: nn.Module, name: str, state: TrainState) -> None:
    save_network(
        run.run_dir / "weights" / name,
        unwrap(generator),
        tile_size=run.cfg.data.crop,
        mpp=run.cfg.data.mpp,
        config=run.cfg.to_dict(),
        step=state.step,
        images=state.images,
    )


def save_run(run: Run, state: TrainState, nets: dict, optimizers: dict, rt: Runtime) -> None:
    """A checkpoint and the latest generator weights (rank 0), then every process waits for them."""
    if run.dist.is_main:
        save_checkpoint(run.run_dir, checkpoint_payload(run.cfg, state, nets, optimizers, rt), run.cfg.train.keep_last)
        save_generator(run, nets["generator"], "generator.safetensors", state)
        # Temporaries of weights writes that a kill interrupted (this process is their only writer).
        for stale in (run.run_dir / "weights").glob(".tmp-generator*.safetensors"):
            stale.unlink(missing_ok=True)
    distributed.barrier()


def validate(run: Run, generator: nn.Module, val_files, state: TrainState, log: Logger) -> dict[str, float] | None:
    """Scores on the held-out pairs (rank 0, :func:`tdkstain.evaluation.validation.evaluate_generator`);
    keeps the best generator by ``train.best_metric``."""
    scores = None
    if run.dist.is_main:
        dataset = AlignedTiles(val_files, run.cfg.data.val_size, flip=False, seed=0, center=True)
        rt = run.runtime
        scores, grid = evaluate_generator(generator, dataset, device=rt.device, autocast=rt.autocast,
                                          channels_last=rt.channels_last, grid_tiles=4)
        metric = run.cfg.train.best_metric
        better = state.best_value is None or (
            scores[metric] < state.best_value if metric == "l1" else scores[metric] > state.best_value
        )
        if better:
            state.best_value, state.best_step = scores[metric], state.step
            save_generator(run, generator, "generator_best.safetensors", state)
        log.validation(state, scores, grid)
    distributed.barrier()
    return scores
