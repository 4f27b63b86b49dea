"""The study file (YAML, `experiments/tune/*.yaml`): the experiment config the trials start from,
fixed overrides, the search space (any `section.key` of the config), the objective metric and
direction, the sampler seed, the pruner, folds or seeds, the storage and its heartbeat; every
key checked, with errors that name the file and the key."""

from __future__ import annotations

import dataclasses
import logging
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..config import ConfigError, check_value, given_keys, load_config
from ..yaml_io import read_yaml_file, yaml_number
from ..training.groups import is_group

log = logging.getLogger("exptrack.tune")


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
    space = read_space(path, raw.pop("space", None) or {})
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
    def source(key: str) -> str:  # a value given on the command line is not the file's
        return f"--{key.replace('_', '-')}" if changes.get(key) is not None else f"{path}: {key}"

    if spec.n_trials < 1:
        raise ConfigError(f"{source('n_trials')} must be >= 1, got {spec.n_trials}")
    if spec.metric not in EPOCH_METRICS:
        raise ConfigError(f"{path}: metric {spec.metric!r} is not logged every epoch (one of {', '.join(EPOCH_METRICS)})")
    if not (is_journal(spec.storage) or spec.storage.split(":", 1)[0].split("+")[0] in RDB_DIALECTS):
        raise ConfigError(f"{source('storage')} {spec.storage!r}: a journal file (*.log or journal:PATH), sqlite:///FILE "
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


def read_space(path: Path, raw: Any) -> list[Param]:
    """The `space:` mapping (`section.key: {type, low, high, log}` or `{type, choices}`) as Params;
    a wrong shape is an error naming the file and the entry, never a traceback or a guess."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: space: a mapping of section.key to its range (e.g. optim.lr: {{type: float, "
                          f"low: 1.0e-5, high: 1.0e-3, log: true}}), got {reprlib.repr(raw)}")
    space = []
    for key, p in raw.items():
        if not isinstance(p, dict) or p.get("type") not in ("float", "int", "categorical"):
            raise ConfigError(f"{path}: space.{key} needs type float, int or categorical")
        log_scale = p.get("log", False)
        if not isinstance(log_scale, bool):
            raise ConfigError(f"{path}: space.{key}.log: true or false, got {reprlib.repr(log_scale)}")
        choices = p.get("choices") or ()
        if not isinstance(choices, (list, tuple)):
            raise ConfigError(f"{path}: space.{key}.choices: a list (e.g. [a, b]), got {reprlib.repr(choices)}")
        space.append(Param(str(key), p["type"], yaml_number(p.get("low")), yaml_number(p.get("high")), log_scale,
                           tuple(choices)))
    return space


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
PRUNERS = ("median", "hyperband", "wilcoxon", "none")  # pruning.make_pruner


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
    """The config keys that make a trial's training a fold or seed group. A study's result is its
    best trial's ensemble (issue 33: the members cost nothing more, and their errors differ), for
    seeds too, where a plain `train --seeds` registers its best member: unless the study's config
    or overrides choose `train.group_model` themselves."""
    if spec.folds:
        return [f"data.folds={spec.folds}"]
    if not spec.seeds:
        return []
    chosen = "train.group_model" in given_keys(spec.config, spec.overrides)
    return [f"train.seeds={','.join(map(str, spec.seeds))}", *([] if chosen else ["train.group_model=ensemble"])]


def is_journal(url: str) -> bool:
    return url.endswith(".log") or url.startswith("journal:")

