"""Training any method: the loop, its state, its run folder, its config.

- :mod:`~tdkstain.training.loop`: :func:`train`, setup to last checkpoint on one screen.
- :mod:`~tdkstain.training.config`: the typed config, presets, overrides, older files.
- :mod:`~tdkstain.training.setup`: processes, device, random streams, the run folder's config.
- :mod:`~tdkstain.training.inputs`: the run's data files and loader.
- :mod:`~tdkstain.training.state`: checkpoints (every network, optimiser, counter and random stream).
- :mod:`~tdkstain.training.runfolder`: weights written during training, validation keeping the best.
- :mod:`~tdkstain.training.log`: progress bar, metrics.jsonl, TensorBoard.
- :mod:`~tdkstain.training.reference_scores`: a run's scores next to its untrained self and a mean colour.
"""

from __future__ import annotations

from tdkstain.training.config import Config, build_config, load_config, read_run_config
from tdkstain.training.loop import TrainResult, train
from tdkstain.training.reference_scores import format_scores, reference_scores
from tdkstain.training.state import TrainState, checkpoint_files, load_checkpoint, load_latest, newest_checkpoint

__all__ = [
    "Config",
    "build_config",
    "load_config",
    "read_run_config",
    "TrainResult",
    "train",
    "TrainState",
    "checkpoint_files",
    "load_checkpoint",
    "load_latest",
    "newest_checkpoint",
    "reference_scores",
    "format_scores",
]
