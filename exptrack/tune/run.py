"""`exptrack tune`: one worker's part of a study, from opening it to its report."""

from __future__ import annotations

import logging
import os

import optuna

from .. import tracking
from ..config import load_config
from ..device import training_placement
from ..data.cache import entry_bytes, size_text
from ..data.prepare import config_cache_need
from ..preemption import Preempted
from .objective import objective_for
from .report import retrain_best_trial, summarize
from .study_file import StudySpec
from .workers import PARENT_ATTR, StopWhenDone, open_study, requeue_preempted, trials_to_run

log = logging.getLogger("exptrack.tune")


# Config keys every value of which is a skeleton-attention cache entry per subject (data/cache.py).
ATTENTION_KEYS = ("data.skeleton_sigma", "data.skeleton_floor", "data.keypoint_min_conf")


def warn_cache_growth(spec: StudySpec, config) -> None:
    """Searching skeleton attention's parameters writes new attention maps for every training
    subject in each trial that draws a new value: one byte per pixel per frame, which at the
    original's size (112 px, 5.5 h of video) is several GiB a trial. Say how much, once."""
    searched = [p.key for p in spec.space if p.key in ATTENTION_KEYS]
    if not searched or not config.data.use_skeleton_attention:
        return
    need = config_cache_need(config, splits=("train", "val"))  # what a trial prepares
    per_trial = entry_bytes("attention", need.frames, config.data.frame_size)
    log.warning("study %s searches %s: each trial with a new value writes %s of skeleton attention into %s "
                "(%d frames at %d px), up to %s over %d trials; `exptrack cache --prune` with the chosen config "
                "removes the others afterwards", spec.study, ", ".join(searched), size_text(per_trial),
                config.paths.cache, need.frames, config.data.frame_size, size_text(per_trial * spec.n_trials),
                spec.n_trials)


def run_tune(spec: StudySpec, progress: bool = False, retrain_best: bool = False) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # MLflow must point at the configured store before a dead trial's run is closed or a
    # finished study is summarised, not only once a trial starts training
    config = load_config(spec.config, spec.overrides)
    # a device or precision this machine lacks: said once, before any trial (each would fail on it)
    training_placement(config.train)
    tracking.check_store(config)
    warn_cache_growth(spec, config)
    study = open_study(spec)
    project_run = os.environ.get("MLFLOW_RUN_ID")  # under `mlflow run`: the parent, unless another worker made it
    n = trials_to_run(study, spec)
    try:
        optimize(study, spec, progress, n)
    except Preempted as exc:
        requeue_preempted(study, exc)
        raise
    if PARENT_ATTR not in study.user_attrs:
        raise RuntimeError(f"study {spec.study}: no trial has started its MLflow parent run")
    parent = study.user_attrs[PARENT_ATTR]
    if project_run and project_run != parent:  # a second worker, or a rerun: its own run would look empty
        tracking.point_to_work_run(project_run, parent, f"tune-{spec.study} worker")
    try:
        summarize(study, spec, parent)  # ends the parent FINISHED once every trial has
    except BaseException as exc:  # a signal or an error while writing the report or registering
        if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):  # no other worker's
            tracking.end_run_on(parent, exc)  # rerunning the command summarizes again
        raise
    if retrain_best:
        retrain_best_trial(study, spec, parent, progress)
    return study


def optimize(study: optuna.Study, spec: StudySpec, progress: bool, n: int) -> None:
    """Run up to `n` trials, going on after a lost trial (`TrialLost`): Optuna's own bookkeeping
    of a trial that another worker already failed raises ValueError, which would end this worker."""
    while n > 0:
        lost: list[int] = []
        try:
            study.optimize(objective_for(spec, study, progress, lost), n_trials=n, catch=(Exception,),
                           callbacks=[StopWhenDone(spec.n_trials)])
            return
        except ValueError:
            if not lost:
                raise
        log.warning("study %s: trial %d was marked FAIL by another worker while this one ran it: this worker "
                    "sent no heartbeat for grace_period=%d s (it stalled, or grace_period is too short for this "
                    "machine); its retry is queued; going on", spec.study, lost[-1], spec.grace_period)
        n = trials_to_run(study, spec)
