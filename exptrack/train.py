"""The train command: one run (training/run.py) or a group of runs over seeds or folds
(training/groups.py), as the config asks; what `exptrack train`, `mlflow run -e train`, the
benches and the tests call."""

from __future__ import annotations

from collections.abc import Iterable

from . import tracking
from .config import Config
from .training import groups
from .training.groups import GroupResult
from .training.loop import EpochCallback
from .training.run import RunOptions, TrainResult, train_run


def train(config: Config, resume: str | None = None, progress: bool = True,
          callbacks: Iterable[EpochCallback] = (), options: RunOptions = RunOptions()) -> TrainResult | GroupResult:
    """Train `config`: a group when it sets train.seeds or data.folds (or `resume` names a
    group's run; `callbacks` then do not apply: a group's hooks are its members'), else one run.
    Resume takes a run id, a checkpoint file or `last`."""
    if resume and tracking.is_run_id(resume):
        tracking.use_tracking_uri(config)  # before asking the store whether `resume` is a group
    if groups.is_group(config) or (resume and groups.is_group_run(resume)):
        return groups.train_group(config, resume, progress, options)
    return train_run(config, resume, progress, callbacks, options)
