"""Pruning: per epoch (median, hyperband) through the trial's reports, or across a fold or
seed trial's members (Wilcoxon)."""

from __future__ import annotations


import numpy as np
import optuna

from ..training.groups import GroupHooks
from ..training.loop import TrainState
from . import optuna_experimental
from .study_file import StudySpec


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "wilcoxon":  # steps are members (folds, seeds), not epochs; "experimental" in Optuna
        with optuna_experimental():
            return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)
    return optuna.pruners.NopPruner()


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


def trial_group_hooks(trial: optuna.Trial, spec: StudySpec, epochs: int) -> GroupHooks:
    """Pruning of a fold or seed trial: across members (wilcoxon) or per epoch of each member."""
    if spec.pruner == "wilcoxon":
        return GroupHooks(after_member=PruneAcrossMembers(trial, spec.metric))
    if spec.pruner == "none":
        return GroupHooks()
    return GroupHooks(callbacks=lambda i, member: [ReportEachEpoch(trial, spec.metric, step_offset=i * epochs)])
