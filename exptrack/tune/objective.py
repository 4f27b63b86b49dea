"""A trial: its params drawn, its training run (or group of runs) a child of the study's parent
run, its value the best validation `metric` (a group: its members' mean), and its run marked
with the trial's end state."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import optuna

from .. import tracking
from ..config import load_config
from ..preemption import Preempted
from ..stats import mean_interval
from ..training.groups import HEADLINE, GroupResult, train_group
from ..training.loop import TrainState
from ..training.run import RunOptions, discard_run_models, train_run
from .pruning import ReportEachEpoch, trial_group_hooks
from .study_file import Param, StudySpec, group_overrides
from .workers import frozen, parent_run_for, retried_from, worker_id

log = logging.getLogger("exptrack.tune")


def suggest(trial: optuna.Trial, space: tuple[Param, ...]) -> list[str]:
    out = []
    for p in space:
        if p.kind == "float":
            value = trial.suggest_float(p.key, *p.bounds(), log=p.log)
        elif p.kind == "int":
            low, high = p.bounds()
            value = trial.suggest_int(p.key, int(low), int(high), log=p.log)
        else:
            value = trial.suggest_categorical(p.key, list(p.choices))
        out.append(f"{p.key}={value}")
    return out


class TrialLost(Exception):
    """Another worker marked this worker's running trial FAIL, because its heartbeat was more than
    grace_period old (a stalled process, or a grace_period too short for the machine), and queued
    its retry: this worker's run of it is abandoned."""


def objective_for(spec: StudySpec, study: optuna.Study, progress: bool, lost: list[int]):
    """The trial function `study.optimize` calls. A trial another worker failed meanwhile is
    appended to `lost` (see `optimize`)."""
    def objective(trial: optuna.Trial) -> float:
        try:
            return run_trial(trial)
        except optuna.exceptions.UpdateFinishedTrialError as exc:  # from the trial's next write
            lost.append(trial.number)
            raise TrialLost(f"trial {trial.number} was marked FAIL by another worker while this one ran it") from exc

    def run_trial(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker_id())  # first: requeue_preempted finds it
        parent_run_id = parent_run_for(study, trial, spec)
        overrides = [*spec.overrides, *suggest(trial, spec.space)]
        config = load_config(spec.config, [*overrides, *group_overrides(spec)])
        run_ids: list[str] = []

        def started(run_id: str) -> None:  # recorded at once, so that a dead worker's run can be closed
            run_ids.append(run_id)
            trial.set_user_attr("run_id", run_id)

        tags = {"optuna.study": spec.study, "optuna.trial": trial.number}
        retry_of = retried_from(frozen(study, trial))
        if retry_of is not None:
            tags["optuna.retry_of"] = retry_of
        options = RunOptions(parent_run_id=parent_run_id, run_name=f"trial-{trial.number}", register=False,
                             tags=tags, on_start=started,
                             invocation={"config": str(spec.config), "overrides": " ".join(overrides)})
        state = "FAIL"
        hooks = None
        try:
            if spec.folds or spec.seeds:
                hooks = trial_group_hooks(trial, spec, config.train.epochs)
                value = group_trial_value(trial, spec, train_group(config, progress=progress, options=options,
                                                                   hooks=hooks))
            else:
                result = train_run(config, progress=progress, callbacks=[ReportEachEpoch(trial, spec.metric)],
                                   options=options)
                trial.set_user_attr("checkpoint_dir", str(result.checkpoint_dir))
                value, kept = kept_model_value(result.state, spec.metric)
                trial.set_user_attr("best_epoch", kept)
            state = "COMPLETE"
            return value
        except optuna.TrialPruned as exc:
            state = "PRUNED"
            log.info("trial %d %s: its run ends KILLED", trial.number, exc)
            raise
        except Preempted:
            state = "PREEMPTED"  # run_tune queues its retry
            raise
        finally:
            for run_id in [*run_ids[:1], *(hooks.members if hooks else [])]:
                mark_trial_run(run_id, state, Path(config.paths.outputs))

    return objective


def kept_model_value(state: TrainState, metric: str) -> tuple[float, int | None]:
    """A single run's `metric` at its kept model's epoch (the model the trial registers), and that
    epoch; the last epoch's without a kept model. As a group trial's members are scored: not the
    metric's own best epoch (`val_loss` at its lowest may be another epoch than the kept model)."""
    kept = state.best_epoch.get(HEADLINE)
    row = next((r for r in state.history if r["epoch"] == kept), state.history[-1])
    return float(row[metric]), kept


def group_trial_value(trial: optuna.Trial, spec: StudySpec, result: GroupResult) -> float:
    """A fold or seed trial's value: the mean of its members' `metric`; their spread and values
    go to the trial's user attributes (the study report's columns)."""
    values = [m.value(spec.metric) for m in result.members]
    summary = mean_interval(values)
    trial.set_user_attr("members", {m.key: round(v, 6) for m, v in zip(result.members, values, strict=True)})
    trial.set_user_attr("member_mean", summary.mean)
    trial.set_user_attr("member_std", summary.std)
    epochs = [m.kept_epoch for m in result.members if m.kept_epoch]
    if epochs:
        trial.set_user_attr("best_epoch", int(np.median(epochs)))  # for --retrain-best
    return summary.mean


def mark_trial_run(run_id: str, state: str, outputs: Path) -> None:
    """The trial's Optuna state on its run; pruned runs end KILLED. A pruned or failed trial's
    checkpoints and logged models are deleted (nothing will use them). A tracking failure here is
    logged, not raised: it must not turn a finished trial into a failed one."""
    try:
        tracking.set_run_tags(run_id, {"optuna.state": state})
        if state == "PRUNED":
            tracking.finish_run(run_id, "KILLED")
        if state != "COMPLETE":
            discard_run_models(run_id, outputs)
    except Exception as exc:  # noqa: BLE001 - a tracking failure must not turn a finished trial into a failed one
        log.warning("could not mark run %s as %s: %s", run_id, state, exc)
