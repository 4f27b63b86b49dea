"""Many workers, one study: the storage (a SQLite file, Optuna's journal file, PostgreSQL), the
heartbeat and the one retry of a dead worker's trial, which worker makes the study's MLflow
parent run, how many trials a worker still runs, and what a stopped (SIGTERM) worker leaves."""

from __future__ import annotations

import copy
import logging
import os
import random
import socket
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
import sqlalchemy.exc
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial
from optuna.storages.journal import JournalFileBackend

from .. import tracking
from .._proc import process_alive
from ..config import ConfigError, load_config
from ..preemption import Preempted
from ..training.run import discard_run_models
from . import optuna_experimental
from .pruning import make_pruner
from .study_file import StudySpec, is_journal

log = logging.getLogger("exptrack.tune")


PARENT_ATTR = "mlflow_parent_run_id"


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
    _retry_once = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)  # a dead worker's trial
    # a stopped (SIGTERM, SIGINT) worker's trial: stopping it was not the trial's fault, however often
    _retry_always = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)


def queue_retry(retry: optuna.storages.RetryHeartbeatStaleTrialCallback, study: optuna.Study,
                trial: optuna.trial.FrozenTrial) -> None:
    """Queue `trial`'s retry (same params) without its user attributes: Optuna's callback copies
    them, so until the retry's own run started it named the old trial's worker and MLflow run (a
    retry whose worker then died would have closed the old run again)."""
    blank = copy.copy(trial)
    blank.user_attrs = {}
    with optuna_experimental():
        retry(study, blank)


def on_dead_worker_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna calls this (in whichever worker notices) for a trial whose worker stopped beating:
    queue its retry, end its MLflow run, which its dead process left RUNNING, and delete the
    run's logged models (as a failed trial's are; its checkpoint folder, on the dead worker's
    machine, is left)."""
    with optuna_experimental():
        retried = len(optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(trial)) < 1
    queue_retry(_retry_once, study, trial)
    run_id = trial.user_attrs.get("run_id")
    if run_id:
        try:
            # a fold or seed trial's run is a group run: its members died with it
            members = tracking.child_runs(run_id)
            for member in [r["run_id"] for r in members if r["status"] == "RUNNING"]:
                tracking.fail_run_if_running(member, {"optuna.state": "FAIL", "optuna.fail_reason": "worker died"})
            tracking.fail_run_if_running(run_id, {"optuna.state": "FAIL", "optuna.fail_reason": "worker died"})
            for run in [*(r["run_id"] for r in members), run_id]:
                discard_run_models(run, None)
        except Exception as exc:  # noqa: BLE001 - a tracking hiccup must not stop the study
            log.warning("could not close the run %s of dead trial %d: %s", run_id, trial.number, exc)
    log.warning("trial %d: its worker %s stopped (or stalled past grace_period); marked FAIL%s", trial.number,
                trial.user_attrs.get("worker", "?"),
                " and queued for one retry" if retried else " (a retry already; not retried again)")


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
        fail_dead_trials(study)
    raise RuntimeError(f"study {spec.study}: no parent run appeared in {timeout_s:.0f} s (trial 0 still running?)")


COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def trials_to_run(study: optuna.Study, spec: StudySpec) -> int:
    """How many more trials this worker may start: up to the study's total (shared by every
    worker and every rerun), and at least the queued ones (a dead worker's retry, enqueued
    trials), which would otherwise never run once the total is reached."""
    fail_dead_trials(study)
    done = sum(t.state in COUNTED for t in study.trials)
    waiting = sum(t.state == optuna.trial.TrialState.WAITING for t in study.trials)
    log.info("study %s: %d of %d trials done, %d queued", study.study_name, done, spec.n_trials, waiting)
    return max(spec.n_trials - done, waiting)


def fail_dead_trials(study: optuna.Study) -> None:
    """FAIL (and retry once) the RUNNING trials whose worker is gone: on this machine at once, on
    others once their heartbeat is grace_period old (RDB storages; a journal file has no heartbeat,
    and serves one machine, where the process check is exact)."""
    fail_dead_local_trials(study)
    with optuna_experimental():
        optuna.storages.fail_stale_trials(study)  # a no-op without a heartbeat


def _process_space() -> str:
    """Where a pid means one process: the host name, and the pid namespace where there is one
    (two containers sharing the host's name, each with its own pids, are two spaces)."""
    try:
        return f"{socket.gethostname()}/pidns-{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return socket.gethostname()


def worker_id(pid: int | None = None) -> str:
    """The `worker` a trial records: `<host>/pidns-<inode>:<pid>`, this process by default."""
    return f"{_process_space()}:{os.getpid() if pid is None else pid}"


def fail_dead_local_trials(study: optuna.Study) -> None:
    """RUNNING trials of a worker in this process space (this machine, this pid namespace) whose
    process is gone (a restart right after a crash): FAIL and retry them now instead of after
    grace_period. Other machines' and containers' workers are left to the heartbeat. (A reused pid
    only delays this to the heartbeat's verdict.)"""
    space = _process_space()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker_space, _, pid = trial.user_attrs.get("worker", "").rpartition(":")
        if worker_space != space or not pid.isdigit() or process_alive(int(pid)):
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
    """The study, made or continued. What makes its trials' values comparable is kept with it
    when it is made, and a rerun whose study file changed it is refused: Optuna keeps an
    existing study's direction whatever is asked, and would rank fold means beside single runs."""
    assert spec.pruner is not None, "read_study resolves the pruner"
    study = optuna.create_study(study_name=spec.study, storage=make_storage(spec), load_if_exists=True,
                                direction=spec.direction, sampler=TrialSeededTPE(spec.seed),
                                pruner=make_pruner(spec.pruner))
    check_same_study(study, spec)
    return study


STUDY_ATTR = "exptrack.values"  # what a trial's value is: metric, direction, folds, seeds


def check_same_study(study: optuna.Study, spec: StudySpec) -> None:
    ours = {"metric": spec.metric, "direction": spec.direction, "folds": spec.folds, "seeds": list(spec.seeds)}
    theirs = dict(study.user_attrs.get(STUDY_ATTR) or {})
    theirs.setdefault("direction", study.direction.name.lower())  # a study made before the attribute
    changed = [f"{key} {theirs[key]} -> {value}" for key, value in ours.items() if key in theirs and theirs[key] != value]
    if changed:
        raise ConfigError(f"study {spec.study} in {spec.storage} holds trials scored otherwise than the study file "
                          f"says ({'; '.join(changed)}): their values cannot be ranked together; name a new study "
                          "(`study:` in the file, or --study)")
    if STUDY_ATTR not in study.user_attrs:
        study.set_user_attr(STUDY_ATTR, ours)


class TrialSeededTPE(optuna.samplers.BaseSampler):
    """Optuna's TPE sampler, its random draws seeded by (the study's seed, the trial's number).

    One `TPESampler(seed)` per process gives every process the same draws: two workers ran each
    of the first (random) trials' params twice, and a rerun repeated the trials before it. Trial
    numbers are unique across workers and reruns (the storage hands them out), so seeding each
    trial by its number keeps trials apart and a one-worker study reproducible. TPE keeps no
    state between trials but its random generator (it reads the history from the study), so a
    sampler made per trial loses nothing."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._tpe = optuna.samplers.TPESampler(seed=seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial_seed = int(np.random.SeedSequence([self.seed, trial.number]).generate_state(1)[0])
        self._tpe = optuna.samplers.TPESampler(seed=trial_seed)
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: optuna.trial.TrialState,
                    values: Sequence[float] | None) -> None:
        self._tpe.after_trial(study, trial, state, values)


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


def requeue_preempted(study: optuna.Study, exc: Preempted) -> None:
    """After a SIGTERM or SIGINT: this worker's running trial ends FAIL and is queued again, each
    time it is stopped (the next run of the command, or another worker, runs it from its first
    epoch: a stopped trial's checkpoints are discarded); the study's parent run ends KILLED unless
    other workers' trials still run in it."""
    worker = worker_id()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.user_attrs.get("worker") == worker and (failed := fail_trial(study, trial.number)) is not None:
            queue_retry(_retry_always, study, failed)
            log.warning("trial %d stopped by %s: marked FAIL and queued again with the same params (it trains from "
                        "its first epoch; not `train --resume`: a stopped trial's checkpoints are discarded)",
                        trial.number, exc.name)
    parent = study.user_attrs.get(PARENT_ATTR)
    if parent and not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        tracking.end_run_on(parent, exc)
