"""`exptrack tune`: an Optuna study over any config keys, each trial a child MLflow run.

The study file (YAML, `experiments/tune/*.yaml`) names the experiment config the trials start
from, fixed overrides, the search space (any `section.key` of the config), the objective
metric and direction, the sampler seed and the pruner. Storage: a SQLite file by default (one
process), Optuna's journal file for several processes on one machine, PostgreSQL for many
machines; RDB storages get a heartbeat and retry a dead worker's trial once.

Modules by job: study_file.py (the study file), workers.py (storage, heartbeat, dead-worker
retries, the parent run), pruning.py, objective.py (a trial), report.py (the study's end,
--retrain-best), run.py (`run_tune`, the command).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import optuna


@contextmanager
def optuna_experimental():
    """Optuna's heartbeat helpers (its documented way to retry a dead worker's trial) and its
    matplotlib plots are marked experimental: used here on purpose, so not warned about."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield
