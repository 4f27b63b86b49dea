"""`exptrack tune`: an Optuna study over any config keys, each trial a child MLflow run.

The study file (YAML, `experiments/tune/*.yaml`) names the experiment config the trials start
from, fixed overrides, the search space (any `section.key` of the config), the objective
metric and direction, the sampler seed and the pruner. Storage: a SQLite file by default (one
process), Optuna's journal file for several processes on one machine, PostgreSQL for many
machines; RDB storages get a heartbeat and retry a dead worker's trial once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import reprlib
import socket
import tempfile
import time
import typing
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
import sqlalchemy.exc
import yaml
from optuna.storages.journal import JournalFileBackend

from . import model_store, tracking
from ._proc import process_alive
from .config import ConfigError, check_value, load_config, read_yaml_file
from .device import training_placement
from .data.cache import entry_bytes, size_text
from .data.prepare import config_cache_need
from .preemption import PREEMPTED_TAG, Preempted
from .stats import mean_interval
from .training import logged_models
from .training.groups import GROUP_TAG, GroupHooks, GroupResult, is_group, tags_from_group_run, train_group
from .training.run import RunOptions, TrainState, discard_run_models, train_run

log = logging.getLogger("exptrack.tune")
PARENT_ATTR = "mlflow_parent_run_id"


@contextmanager
def optuna_experimental():
    """Optuna's heartbeat helpers (its documented way to retry a dead worker's trial) and its
    matplotlib plots are marked experimental: used here on purpose, so not warned about."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


@dataclass(frozen=True)
class Param:
    key: str  # section.key of the config
    kind: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def bounds(self) -> tuple[float, float]:
        """(low, high) of a float or int entry (check_space_entry has checked they are numbers)."""
        assert self.low is not None and self.high is not None, f"space.{self.key} is {self.kind}"
        return self.low, self.high

    def describe(self) -> str:
        """The searched range, as the parent run's param value of the key (e.g. `float [1e-05, 0.001] log`)."""
        if self.kind == "categorical":
            return f"categorical {list(self.choices)}"
        return f"{self.kind} [{self.low}, {self.high}]" + (" log" if self.log else "")


@dataclass(frozen=True)
class StudySpec:
    config: str  # experiment YAML the trials start from (relative to the study file)
    overrides: tuple[str, ...] = ()
    study: str = "exptrack-tune"
    storage: str = "sqlite:///optuna.db"
    n_trials: int = 6
    seed: int = 42
    metric: str = "val_mean_class_acc"
    direction: Literal["maximize", "minimize"] = "maximize"
    # median | hyperband | wilcoxon | none; unset: wilcoxon for a study on folds or seeds (a trial
    # stops when its members so far are significantly worse than the best trial's same members),
    # else median (per epoch).
    pruner: str | None = None
    # Each trial's value is the mean over K subject folds (data.folds) or over these seeds
    # (train.seeds) of its members' kept-model `metric`; every member is a child run of the trial.
    folds: int = 0
    seeds: tuple[int, ...] = ()
    # RDB storages (SQLite, PostgreSQL): a worker records a heartbeat every `heartbeat_interval`
    # seconds; a RUNNING trial silent for `grace_period` seconds belongs to a dead worker, ends as
    # FAIL and is retried once with the same params.
    heartbeat_interval: int = 30
    grace_period: int = 90
    space: tuple[Param, ...] = field(default_factory=tuple)


def load_study_spec(path: str | Path, **changes: Any) -> StudySpec:
    path = Path(path)
    try:
        raw = read_yaml_file(path) or {}  # folder, non-UTF-8, duplicate keys: named errors
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: cannot read the study file ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a study file is a mapping (config, overrides, space, ...)")
    space = []
    for key, p in (raw.pop("space", None) or {}).items():
        if not isinstance(p, dict) or p.get("type") not in ("float", "int", "categorical"):
            raise ConfigError(f"{path}: space.{key} needs type float, int or categorical")
        space.append(Param(key, p["type"], _number(p.get("low")), _number(p.get("high")), bool(p.get("log", False)),
                           tuple(p.get("choices") or ())))
    known = set(StudySpec.__dataclass_fields__) - {"space"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{path}: unknown study keys {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    if not isinstance(raw.get("config"), str):
        raise ConfigError(f"{path}: config: the experiment YAML the trials start from (a path), got "
                          f"{reprlib.repr(raw.get('config'))}")
    raw["config"] = str((path.parent / raw["config"]).resolve())
    overrides = raw.get("overrides") or ()
    if not isinstance(overrides, (list, tuple)) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"{path}: overrides: a list of section.key=value strings, got {reprlib.repr(overrides)}")
    raw["overrides"] = tuple(overrides)
    check_study_group(path, raw)
    check_study_values(path, raw)
    spec = StudySpec(**{**raw, **{k: v for k, v in changes.items() if v is not None}, "space": tuple(space)})
    if spec.n_trials < 1:
        raise ConfigError(f"{path}: n_trials must be >= 1, got {spec.n_trials}")
    if spec.metric not in EPOCH_METRICS:
        raise ConfigError(f"{path}: metric {spec.metric!r} is not logged every epoch (one of {', '.join(EPOCH_METRICS)})")
    if not (is_journal(spec.storage) or spec.storage.split(":", 1)[0].split("+")[0] in RDB_DIALECTS):
        raise ConfigError(f"{path}: storage {spec.storage!r}: a journal file (*.log or journal:PATH), sqlite:///FILE "
                          "or postgresql://... (also mysql://...)")
    if spec.pruner is None:
        spec = dataclasses.replace(spec, pruner="wilcoxon" if spec.folds or spec.seeds else "median")
    if spec.pruner not in PRUNERS:
        raise ConfigError(f"{path}: pruner {spec.pruner!r} is not one of {', '.join(PRUNERS)}")
    if spec.pruner == "wilcoxon" and not (spec.folds or spec.seeds):
        raise ConfigError(f"{path}: pruner wilcoxon compares trials member by member: it needs folds or seeds "
                          "(per-epoch pruning of single runs: median or hyperband)")
    if spec.pruner == "wilcoxon" and len(spec.seeds) + spec.folds < 4:
        log.warning("%s: the Wilcoxon pruner cannot stop a trial with fewer than 4 members (the smallest one-sided "
                    "p-value of 3 is 0.125, above its 0.1 threshold): every trial runs all its members", path)
    if is_group(load_config(spec.config, spec.overrides)):
        raise ConfigError(f"{path}: the trials' config sets data.folds or train.seeds; a study groups its trials' "
                          "runs with its own keys instead: folds: K or seeds: [..]")
    for p in space:  # every key of the space must exist and take its type, at both ends of its range
        check_space_entry(path, p)
        for value in ((p.low, p.high) if p.kind != "categorical" else p.choices):
            load_config(spec.config, [*spec.overrides, f"{p.key}={value}"])
    if spec.direction not in ("maximize", "minimize"):
        raise ConfigError(f"{path}: direction must be maximize or minimize")
    if not (spec.heartbeat_interval > 0 and spec.grace_period >= 3 * spec.heartbeat_interval):
        raise ConfigError(f"{path}: need heartbeat_interval > 0 and grace_period >= 3 x heartbeat_interval "
                          "(a live but slow worker must not look dead)")
    return spec


def _number(value: Any) -> Any:
    """YAML 1.1 reads 1e-4 (no dot) as a string: the number it means, as config values do."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def check_space_entry(path: Path, p: Param) -> None:
    """A space entry's shape: low < high (numbers) for float and int, choices for categorical."""
    if p.kind == "categorical":
        if not p.choices:
            raise ConfigError(f"{path}: space.{p.key} is categorical but has no choices")
        return
    low, high = p.low, p.high
    if (not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or isinstance(low, bool)
            or isinstance(high, bool) or not low < high):
        raise ConfigError(f"{path}: space.{p.key} needs numbers low < high, got low {p.low!r}, high {p.high!r}")
    if p.log and low <= 0:
        raise ConfigError(f"{path}: space.{p.key} is log-scaled: low must be > 0, got {p.low}")


# What every epoch of a run with validation logs: what a trial may be scored on.
EPOCH_METRICS = ("val_mean_class_acc", "val_acc", "val_top3_acc", "val_loss", "train_loss", "train_acc")
RDB_DIALECTS = ("sqlite", "postgresql", "mysql")


def check_study_values(path: Path, raw: dict[str, Any]) -> None:
    """The plain study keys (n_trials, seed, metric, ...) have their types (converted in place)."""
    hints = typing.get_type_hints(StudySpec)
    for key in set(raw) - {"config", "overrides", "folds", "seeds", "space"}:
        raw[key] = check_value(f"{path}: {key}", hints[key], raw[key])


def check_study_group(path: Path, raw: dict[str, Any]) -> None:
    """`folds` or `seeds` of a study file: their types, and never both (converted in place)."""
    if raw.get("folds") and raw.get("seeds"):
        raise ConfigError(f"{path}: folds and seeds cannot both be set: a trial's members are folds or seeds")
    if "seeds" in raw:
        raw["seeds"] = check_value(f"{path}: seeds", tuple[int, ...], raw["seeds"])
    if "folds" in raw:
        folds = check_value(f"{path}: folds", int, raw["folds"])
        if folds == 1 or folds < 0:
            raise ConfigError(f"{path}: folds must be 0 (off) or >= 2, got {folds}")
        raw["folds"] = folds


def group_overrides(spec: StudySpec) -> list[str]:
    """The config keys that make a trial's training a fold or seed group."""
    if spec.folds:
        return [f"data.folds={spec.folds}"]
    return [f"train.seeds={','.join(map(str, spec.seeds))}"] if spec.seeds else []


def is_journal(url: str) -> bool:
    return url.endswith(".log") or url.startswith("journal:")


def make_storage(spec: StudySpec) -> optuna.storages.BaseStorage:
    if is_journal(spec.storage):
        return optuna.storages.JournalStorage(JournalFileBackend(spec.storage.removeprefix("journal:")))
    for attempt in range(1, 6):
        try:
            with optuna_experimental():  # the heartbeat is "experimental" in Optuna, and its documented way
                return optuna.storages.RDBStorage(spec.storage, heartbeat_interval=spec.heartbeat_interval,
                                                  grace_period=spec.grace_period,
                                                  heartbeat_stale_trial_callback=on_dead_worker_trial)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            # Workers started together on an empty database all create Optuna's tables; the
            # losers fail on the winner's half-made schema. Once it is complete, a retry just
            # finds it.
            if attempt == 5:
                raise
            log.info("storage tables being created by another worker (%s); retrying", type(exc).__name__)
            time.sleep(attempt * (0.5 + random.random()))
    raise AssertionError("unreachable")


def retried_from(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the dead trial that `trial` retries, or None. (Optuna marks its heartbeat
    helpers experimental; they are still its documented way to retry a dead worker's trial.)"""
    with optuna_experimental():
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


with optuna_experimental():
    _retry_once = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)


def on_dead_worker_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna calls this (in whichever worker notices) for a trial whose worker stopped beating:
    queue its retry, and end its MLflow run, which its dead process left RUNNING."""
    with optuna_experimental():
        retried = len(optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(trial)) < 1
    _retry_once(study, trial)
    run_id = trial.user_attrs.get("run_id")
    if run_id:
        try:
            # a fold or seed trial's run is a group run: its members died with it
            for member in [r["run_id"] for r in tracking.child_runs(run_id) if r["status"] == "RUNNING"]:
                tracking.fail_run_if_running(member, {"optuna.state": "FAIL", "optuna.fail_reason": "worker died"})
            tracking.fail_run_if_running(run_id, {"optuna.state": "FAIL", "optuna.fail_reason": "worker died"})
        except Exception as exc:  # noqa: BLE001 - a tracking hiccup must not stop the study
            log.warning("could not close the run %s of dead trial %d: %s", run_id, trial.number, exc)
    log.warning("trial %d: its worker %s stopped (or stalled past grace_period); marked FAIL%s", trial.number,
                trial.user_attrs.get("worker", "?"),
                " and queued for one retry" if retried else " (a retry already; not retried again)")


PRUNERS = ("median", "hyperband", "wilcoxon", "none")


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "wilcoxon":  # steps are members (folds, seeds), not epochs; "experimental" in Optuna
        with optuna_experimental():
            return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)
    return optuna.pruners.NopPruner()


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


class ReportEachEpoch:
    """Reports the objective metric after every epoch to whichever pruner the study has (median,
    hyperband, ...); raises TrialPruned when it says so.
    A group member's epochs come after those of the members before it (`step_offset`), so that
    every (member, epoch) is one step of the trial."""

    def __init__(self, trial: optuna.Trial, metric: str, step_offset: int = 0) -> None:
        self.trial, self.metric, self.step_offset = trial, metric, step_offset

    def __call__(self, metrics: dict[str, float], per_class: np.ndarray, saved: list, state: TrainState) -> None:
        value = metrics[self.metric]
        self.trial.report(value, step=self.step_offset + state.epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {state.epoch} ({self.metric} {value:.4f})")


class PruneAcrossMembers:
    """Group trials with the Wilcoxon pruner: each finished member (fold or seed) is one step;
    the trial stops when its members so far are significantly worse than the best trial's."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric = trial, metric

    def __call__(self, index: int, member) -> None:
        value = member.value(self.metric)
        self.trial.report(value, step=index)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after member {member.key} ({self.metric} {value:.4f})")


def frozen(study: optuna.Study, trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)


def makes_parent(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether this trial's worker creates the parent run: trial 0's worker (trial numbers are
    handed out atomically by the storage); or, if trial 0 ended without making one (its worker
    died or the tracking server refused), the worker of the lowest-numbered running trial."""
    if trial.number == 0:
        return True
    trials = study.get_trials(deepcopy=False)
    if trials[0].state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING):
        return False
    running = [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    return bool(running) and min(running) == trial.number


def parent_run_for(study: optuna.Study, trial: optuna.Trial, spec: StudySpec, timeout_s: float = 600.0) -> str:
    """The study's MLflow parent run, made once across all workers (see `makes_parent`); the
    others wait for it, failing stale trials meanwhile so that a dead trial 0 is noticed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        attrs = study.user_attrs
        if PARENT_ATTR in attrs:
            return attrs[PARENT_ATTR]
        if makes_parent(study, trial) and PARENT_ATTR not in study.user_attrs:  # re-read: made meanwhile?
            parent = tracking.create_parent_run(load_config(spec.config, spec.overrides), f"tune-{spec.study}",
                                                {"exptrack.command": "tune", "optuna.study": spec.study,
                                                 "optuna.storage": spec.storage},
                                                searched={p.key: p.describe() for p in spec.space})
            study.set_user_attr(PARENT_ATTR, parent)
            return parent
        time.sleep(1.0)
        with optuna_experimental():
            optuna.storages.fail_stale_trials(study)
    raise RuntimeError(f"study {spec.study}: no parent run appeared in {timeout_s:.0f} s (trial 0 still running?)")


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
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # first: requeue_preempted finds it
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
                trial.set_user_attr("best_epoch", result.state.best_epoch.get(spec.metric))
                best = result.state.best.get(spec.metric)
                value = best if best is not None else result.state.history[-1][spec.metric]
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


def trial_group_hooks(trial: optuna.Trial, spec: StudySpec, epochs: int) -> GroupHooks:
    """Pruning of a fold or seed trial: across members (wilcoxon) or per epoch of each member."""
    if spec.pruner == "wilcoxon":
        return GroupHooks(after_member=PruneAcrossMembers(trial, spec.metric))
    if spec.pruner == "none":
        return GroupHooks()
    return GroupHooks(callbacks=lambda i, member: [ReportEachEpoch(trial, spec.metric, step_offset=i * epochs)])


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


COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def trials_to_run(study: optuna.Study, spec: StudySpec) -> int:
    """How many more trials this worker may start: up to the study's total (shared by every
    worker and every rerun), and at least the queued ones (a dead worker's retry, enqueued
    trials), which would otherwise never run once the total is reached."""
    if not is_journal(spec.storage):
        fail_dead_local_trials(study)
        with optuna_experimental():
            optuna.storages.fail_stale_trials(study)  # dead workers elsewhere, once grace_period has passed
    done = sum(t.state in COUNTED for t in study.trials)
    waiting = sum(t.state == optuna.trial.TrialState.WAITING for t in study.trials)
    log.info("study %s: %d of %d trials done, %d queued", study.study_name, done, spec.n_trials, waiting)
    return max(spec.n_trials - done, waiting)


def fail_dead_local_trials(study: optuna.Study) -> None:
    """RUNNING trials of a worker on this machine whose process is gone (a restart right after a
    crash): FAIL and retry them now instead of after grace_period. Another machine's workers are
    left to the heartbeat. (A reused pid only delays this to the heartbeat's verdict.)"""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker_host, _, pid = trial.user_attrs.get("worker", "").rpartition(":")
        if worker_host != host or not pid.isdigit() or process_alive(int(pid)):
            continue
        failed = fail_trial(study, trial.number)
        if failed is not None:  # else another worker got there first
            on_dead_worker_trial(study, failed)


def fail_trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial | None:
    """Mark another worker's RUNNING trial FAIL through Optuna's public ask-and-tell API;
    None when it is already finished (another worker failed it first, or it ended)."""
    try:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):  # not RUNNING any more / lost the race
        return None
    return next(t for t in study.get_trials(deepcopy=True) if t.number == number)


def open_study(spec: StudySpec) -> optuna.Study:
    assert spec.pruner is not None, "read_study resolves the pruner"
    return optuna.create_study(study_name=spec.study, storage=make_storage(spec), load_if_exists=True,
                               direction=spec.direction, sampler=optuna.samplers.TPESampler(seed=spec.seed),
                               pruner=make_pruner(spec.pruner))


class StopWhenDone:
    """Stops a worker once the study's total is reached and no trial is queued (a dead
    worker's retry still runs after the total: Optuna's MaxTrialsCallback would stop first)."""

    def __init__(self, n_trials: int) -> None:
        self.n_trials = n_trials

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state in COUNTED for t in trials)
        if done >= self.n_trials and not any(t.state == optuna.trial.TrialState.WAITING for t in trials):
            study.stop()


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
    n = trials_to_run(study, spec)
    try:
        optimize(study, spec, progress, n)
    except Preempted as exc:
        requeue_preempted(study, exc)
        raise
    if PARENT_ATTR not in study.user_attrs:
        raise RuntimeError(f"study {spec.study}: no trial has started its MLflow parent run")
    summarize(study, spec, study.user_attrs[PARENT_ATTR])
    if retrain_best:
        retrain_best_trial(study, spec, study.user_attrs[PARENT_ATTR], progress)
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


def requeue_preempted(study: optuna.Study, exc: Preempted) -> None:
    """After a SIGTERM or SIGINT: this worker's running trial ends FAIL and is queued for one retry
    (the next run of the command, or another worker, runs it); the study's parent run ends KILLED
    unless other workers' trials still run in it."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.user_attrs.get("worker") == worker and (failed := fail_trial(study, trial.number)) is not None:
            with optuna_experimental():
                _retry_once(study, failed)
            log.warning("trial %d stopped by %s: marked FAIL and queued for one retry", trial.number, exc.name)
    parent = study.user_attrs.get(PARENT_ATTR)
    if parent and not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        tracking.set_run_tags(parent, {PREEMPTED_TAG: exc.name})
        tracking.finish_run(parent, "KILLED")


def register_best_once(run_id: str, config) -> str | None:
    """Register the best trial's model (its best logged model; a fold or seed trial's group
    model) unless a version already points at it (a rerun of a finished study). Nothing reopens
    the trial's run: the version points at the logged model. Two workers finishing together may
    both register it; the registry has no compare-and-set, so afterwards every worker keeps the
    lowest version of that model and deletes its own if it is not that one. Whoever registers
    second sees the first version, so one version survives."""
    name = config.mlflow.registered_model
    if not name:
        return None
    model_id = model_store.best_logged_model(run_id)
    if model_id is None:
        log.warning("trial run %s has no logged model to register", run_id)
        return None

    def versions() -> list[str]:
        return [v["version"] for v in model_store.model_versions(name) if v["model_id"] == model_id]

    if versions():
        return min(versions(), key=int)
    group = tags_from_group_run(run_id) if GROUP_TAG in tracking.run_tags(run_id) else None  # a fold or seed trial
    version = logged_models.register(model_id, name, group)
    first = min(versions(), key=int)
    if first != version:
        log.info("trial run %s was registered twice (versions %s and %s); keeping %s", run_id, first, version, first)
        model_store.delete_model_version(name, version)
    return first


RETRAINED_TAG = "retrained_model_version"
RETRAINED_TRIAL_TAG = "retrained_trial"


def best_trial_config(study: optuna.Study, spec: StudySpec, *extra: str):
    return load_config(spec.config, [*spec.overrides, *[f"{k}={v}" for k, v in study.best_trial.params.items()],
                                     *extra])


def retrain_best_trial(study: optuna.Study, spec: StudySpec, parent: str, progress: bool) -> str | None:
    """Fit the best params once more on train + validation subjects, for as many epochs as the
    best trial needed to reach its best validation score (nothing is held out to stop on), as a
    child run of the study registered as a new model version. Once per best trial: a rerun
    reuses it, and refits again only when a grown study has a new best. Not while trials of
    other workers still run (their result could change the best)."""
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        log.warning("study %s: no complete trial to retrain", spec.study)
        return None
    unfinished = [t.number for t in study.trials if not t.state.is_finished()]
    if unfinished:
        log.warning("study %s: trials %s are still running or queued; rerun with --retrain-best when they are done",
                    spec.study, unfinished)
        return None
    best = study.best_trial
    tags = tracking.run_tags(parent)
    if tags.get(RETRAINED_TRIAL_TAG) == str(best.number):
        log.info("study %s: best trial %d already retrained on train+val (model version %s)", spec.study,
                 best.number, tags.get(RETRAINED_TAG))
        return tags.get(RETRAINED_TAG)
    epochs = best.user_attrs.get("best_epoch") or best_trial_config(study, spec).train.epochs
    config = best_trial_config(study, spec, "data.train_on_val=true", f"train.epochs={epochs}")
    options = RunOptions(parent_run_id=parent, run_name=f"retrain-best-trial-{best.number}",
                         tags={"optuna.study": spec.study, "optuna.retrain_of": best.number, "trained_on": "train+val"})
    result = train_run(config, progress=progress, options=options)
    tracking.set_run_tags(parent, {RETRAINED_TRIAL_TAG: best.number, RETRAINED_TAG: result.model_version or ""})
    log.info("study %s: best params retrained on train+val for %d epochs: run %s, model version %s", spec.study,
             epochs, result.run_id, result.model_version)
    return result.model_version


def summarize(study: optuna.Study, spec: StudySpec, parent: str) -> None:
    """Best value and params, the trial table and Optuna's plots on the parent run; the best
    trial's model registered."""
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    log.info("study %s: writing the trial table and plots to the parent run, registering the best model", spec.study)
    with tempfile.TemporaryDirectory(prefix="exptrack-tune-") as tmp:
        write_study_report(study, complete, Path(tmp))
        conclude_study(study, complete, spec, parent, Path(tmp))


def write_study_report(study: optuna.Study, complete: list, out: Path) -> None:
    """The trial table and Optuna's plots, into `out`."""
    table = study.trials_dataframe()
    table.to_csv(out / "trials.csv", index=False)
    if complete:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import optuna.visualization.matplotlib as ovm

        for name, plot in (("optimization_history", ovm.plot_optimization_history),
                           ("param_importances", ovm.plot_param_importances),
                           ("parallel_coordinate", ovm.plot_parallel_coordinate), ("slice", ovm.plot_slice)):
            try:
                with optuna_experimental(), warnings.catch_warnings():  # degenerate axes of a small study
                    warnings.simplefilter("ignore", UserWarning)
                    ax = plot(study)
                fig = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).get_figure(root=True)
                assert fig is not None, "optuna's plot draws on a figure"
                fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
                plt.close("all")
            except Exception as exc:  # noqa: BLE001 - e.g. importances need 2+ complete trials
                log.info("no %s plot: %s", name, exc)


def conclude_study(study: optuna.Study, complete: list, spec: StudySpec, parent: str, report: Path) -> None:
    """The study's end on its parent run: its figures and report, the best trial's model
    registered (once), and the parent finished when every trial is."""
    metrics: dict[str, float] = {}
    params: dict[str, Any] = {}
    if complete:
        best = study.best_trial
        assert best.value is not None  # a complete trial has its value
        metrics = {f"best_{spec.metric}": best.value, "best_trial": best.number}
        params = {f"best.{k}": v for k, v in best.params.items()}
    metrics.update({"trials_complete": len(complete),
                    "trials_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
                    "trials_failed": sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials)})
    tracking.log_to_run(parent, metrics=metrics, folder=report, artifact_path="tune")
    for key, value in params.items():
        tracking.set_run_tags(parent, {key: value})
    if complete and "run_id" in study.best_trial.user_attrs:
        attrs = study.best_trial.user_attrs
        config = best_trial_config(study, spec)
        version = register_best_once(attrs["run_id"], config)
        tracking.set_run_tags(parent, {"best_model_version": version})
    if all(t.state.is_finished() for t in study.trials):
        tracking.finish_run(parent)
