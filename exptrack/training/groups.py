"""Seed groups and subject folds: one recipe trained several times, as child runs of one parent.

One training run answers "what did this seed on this validation split do". A group answers "how
good is this recipe": `train.seeds` trains the config once per seed; `data.folds=K` trains it K
times, each run validating on another fold of the non-test subjects (the test split is never
touched). Each member is an ordinary train run (run.py: resumable, checkpointed, its models
logged), made a child of the group's parent run. The parent logs:

- per epoch, the mean and standard deviation over the members of the validation metrics
  (`val_mean_class_acc_mean`, `val_mean_class_acc_std`, ...; `group_members_at_epoch` says how
  many members reached the epoch, early stopping ends them at different epochs);
- the members' kept-model figures with their mean, spread and 95% t interval
  (`group_val_mean_class_acc_mean`, `_std`, `_ci_low`, `_ci_high`), the members table
  (`group/members.csv`) and the curves with a band (`group/curves.png`);
- what it registered: `train.group_model=best`, the member whose kept model scored best on
  validation; `ensemble`, one model averaging every member's probabilities (models/c3d.py
  C3DEnsemble), logged on the parent. Either version carries the group's figures as tags.

`exptrack train --resume <parent run id>` continues a killed group: finished members are kept,
unfinished ones resume from their checkpoints, missing ones start.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .. import figures, preemption, stats, tracking
from ..tracking import registry
from ..config import Config, ConfigError, config_from_dict, replace, to_saved_dict
from ..data.layout import discover
from ..data.errors import DataWarnings
from ..data.prepare import ensure_data_root, fold_pool
from ..models.c3d import ensemble_state_dict
from ..models.weights import WEIGHTS_FILE, load_weights, save_atomic
from . import logged_models
from ..device import training_placement
from .loop import EpochCallback
from .run import RESUMABLE, RunOptions, refuse_ensemble_training, resume_config, train_run

log = logging.getLogger("exptrack.train")

GROUP_TAG, MEMBER_TAG, GROUP_RUN_TAG = "exptrack.group", "exptrack.group_member", "exptrack.group_run_id"
CURVE_KEYS = ("val_mean_class_acc", "val_acc", "val_top3_acc", "val_loss", "train_loss", "train_acc")
HEADLINE = logged_models.HEADLINE  # the validation score groups rank and summarise
ENSEMBLE_TAG = "exptrack.ensemble_members"  # how many
ENSEMBLE_OF_TAG = "exptrack.ensemble_of"  # which: the members' model ids, comma-separated


@dataclass(frozen=True)
class Member:
    key: str  # "seed=1", "fold=2": the member's tag, unique in its group
    config: Config


@dataclass
class MemberResult:
    key: str
    run_id: str
    history: pd.DataFrame  # epoch and the CURVE_KEYS it logged
    model_id: str | None  # its kept (best) logged model
    kept_epoch: int | None = None  # the epoch of that model

    def value(self, metric: str = HEADLINE) -> float:
        """The member's figure for `metric` at its kept model's epoch (the last epoch's when it
        kept none); nan when it never logged the metric."""
        column = self.history.get(metric)
        if column is None or not column.notna().any():
            return float("nan")
        at_kept = column[self.history["epoch"] == self.kept_epoch].dropna() if self.kept_epoch else column[:0]
        return float(at_kept.iloc[0]) if len(at_kept) else float(column.dropna().iloc[-1])

    def rank(self) -> tuple[float, float]:
        """How members are ranked for train.group_model=best: the kept model's validation mean
        class accuracy, ties broken by its lower validation loss (as the selection score is)."""
        score, loss = self.value(), self.value("val_loss")
        return (score if score == score else -math.inf, -loss if loss == loss else -math.inf)


@dataclass
class GroupResult:
    run_id: str
    kind: str  # seeds | folds
    members: list[MemberResult]
    interval: stats.Interval  # of the members' kept-model validation mean class accuracy
    model_version: str | None = None
    model_id: str | None = None
    registered: str = ""  # what the version is: "seed=1's model (best on validation)" or "the ensemble of 3 members"


@dataclass
class GroupHooks:
    """What a caller (tune) adds to each member: epoch callbacks, and a look at each finished
    member's result (which may raise, e.g. optuna.TrialPruned)."""

    callbacks: Callable[[int, Member], list[EpochCallback]] = lambda i, m: []
    on_member_start: Callable[[str], None] = lambda run_id: None
    after_member: Callable[[int, MemberResult], None] = lambda i, result: None
    members: list[str] = field(default_factory=list)  # the member run ids started, in order


def is_group(config: Config) -> bool:
    """Whether `config` asks for a group rather than one run."""
    return bool(config.train.seeds) or (config.data.folds >= 2 and config.data.fold is None)


def group_kind(config: Config) -> str:
    return "seeds" if config.train.seeds else "folds"


def is_group_run(run_id: str) -> bool:
    """Whether `run_id` is a group's parent run (so that `--resume` continues the group)."""
    if not tracking.is_run_id(run_id):
        return False
    try:
        return GROUP_TAG in tracking.run_tags(run_id)
    except Exception:  # noqa: BLE001 - no such run: the single-run resume says so
        return False


def members_of(config: Config) -> list[Member]:
    """The member configs: the group's config with one seed, or validating on one fold."""
    if config.train.seeds:
        return [Member(f"seed={s}", replace(config, train={"seeds": (), "seed": s})) for s in config.train.seeds]
    return [Member(f"fold={i}", replace(config, data={"fold": i})) for i in range(config.data.folds)]


def check_folds(config: Config) -> list[list[str]]:
    """The folds' subjects, or DataError before any training when the data cannot fill them."""
    root = ensure_data_root(config)
    return fold_pool(discover(root, DataWarnings()), config.data.folds, config.data.fold_seed)


GROUP_KEYS = ("train.seeds", "data.folds", "train.group_model")  # said by the name's head, or the same for all


def group_run_name(config: Config, kind: str, options: RunOptions) -> str:
    """The user's run name, else what tells this group from the next one: its seeds or folds
    and the overrides typed (`seeds-0,1,2 optim.lr=0.001`), at most 120 characters. Where
    files go (`paths.*`) changes no model, so it is left out."""
    if options.run_name != "train":
        return options.run_name
    head = f"seeds-{','.join(map(str, config.train.seeds))}" if kind == "seeds" else f"folds-{config.data.folds}"
    typed = (options.invocation or {}).get("overrides", "").split()
    extra = [o for o in typed if o.split("=", 1)[0] not in GROUP_KEYS and not o.startswith("paths.")]
    return " ".join([head, *extra])[:120]


def train_group(config: Config, resume: str | None = None, progress: bool = True,
                options: RunOptions = RunOptions(), hooks: GroupHooks | None = None) -> GroupResult:
    """Train every member of the group `config` describes (or continue the group run `resume`)."""
    hooks = hooks or GroupHooks()
    if "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("seed groups and folds run their members one after another in one process; under "
                          "torchrun, train each member as its own run (train.seed=..., data.fold=...)")
    tracking.check_store(config)
    if resume:
        if not is_group_run(resume):
            raise ConfigError(f"--resume {resume}: not a seed or fold group's run; --seeds and --folds start a new "
                              "group (resume one with the group run's id)")
        saved = tracking.train_run_config(resume)
        config = resume_config(config_from_dict(saved, f"run {resume} config.yaml"), config, options.explicit,
                               f"run {resume}") if saved else config
    refuse_ensemble_training(config)
    training_placement(config.train)  # a device (or precision) this machine lacks: before the group's run starts
    kind = group_kind(config)
    folds = check_folds(config) if kind == "folds" else None
    members = members_of(config)
    tags = {GROUP_TAG: kind, "group_size": len(members), **(options.tags or {}),
            **({"group_folds": "; ".join(",".join(f) for f in folds)} if folds else {})}
    name = group_run_name(config, kind, options)
    with tracking.start_run(config, run_name=name, command="train", tags=tags, run_id=resume,
                            parent_run_id=options.parent_run_id, invocation=options.invocation) as run:
        if options.on_start:
            options.on_start(run.id)
        done = {c["tags"].get(MEMBER_TAG): c for c in tracking.child_runs(run.id) if c["tags"].get(MEMBER_TAG)}
        results = []
        try:
            for i, member in enumerate(members):
                results.append(_train_member(run.id, member, done.get(member.key), progress, options, hooks, i))
                hooks.after_member(i, results[-1])
        except preemption.Preempted as exc:
            log.warning("%s: group %s ends KILLED after %d of %d members; `exptrack train --resume %s` resumes the "
                        "group (not the member alone)", exc, run.id, len(results), len(members), run.id)
            raise
        interval = stats.mean_interval([r.value() for r in results])
        result = GroupResult(run.id, kind, results, interval)
        _log_group(run, result, Path(config.paths.outputs) / "runs" / run.id / "group")
        choose_model(run, result, config)
        if options.register and config.mlflow.registered_model:
            register(run, result, config.mlflow.registered_model)
    return result


def _train_member(parent: str, member: Member, existing: dict | None, progress: bool, options: RunOptions,
                  hooks: GroupHooks, index: int) -> MemberResult:
    """One member: kept when it already FINISHED (a resumed group) its epochs, else trained or
    resumed (also a finished one, when the resume asks for more epochs than it was given)."""
    if existing is not None and existing["status"] == "FINISHED" and not _wants_more_epochs(existing, member):
        log.info("group member %s: run %s already finished, kept", member.key, existing["run_id"])
        hooks.members.append(existing["run_id"])
        return member_result(member.key, existing["run_id"])
    invocation = dict(options.invocation or {})
    invocation.update({k: "none" for k in ("seeds", "folds") if k in invocation})  # a member is one run, not a group
    overrides = f"train.seeds= train.seed={member.config.train.seed}" if member.key.startswith("seed") else \
        f"data.fold={member.config.data.fold}"  # replayed, these make the member's run, not the group again
    invocation["overrides"] = f"{invocation.get('overrides', '')} {overrides}".strip()

    def started(run_id: str) -> None:
        hooks.members.append(run_id)
        hooks.on_member_start(run_id)

    member_options = RunOptions(parent_run_id=parent, run_name=member.key.replace("=", "-"), register=False,
                                tags={MEMBER_TAG: member.key, GROUP_RUN_TAG: parent}, on_start=started,
                                invocation=invocation, explicit=MEMBER_TAKES)
    log.info("group member %s%s", member.key, f": resuming run {existing['run_id']}" if existing else "")
    result = train_run(member.config, resume=existing["run_id"] if existing else None, progress=progress,
                   callbacks=hooks.callbacks(index, member), options=member_options)
    return member_result(member.key, result.run_id)


# A member resumed with its group takes every resumable key from the group's (resumed) config,
# which already holds what the user set.
MEMBER_TAKES = frozenset(f"{section}.{key}" for section, keys in RESUMABLE.items() for key in keys)


def _wants_more_epochs(existing: dict, member: Member) -> bool:
    """A finished member trained for fewer epochs than the (resumed) group now asks."""
    own = (tracking.train_run_config(existing["run_id"]) or {}).get("train", {}).get("epochs")
    return isinstance(own, int) and member.config.train.epochs > own


def member_result(key: str, run_id: str) -> MemberResult:
    """A finished member's figures, read back from its run (the same for a member trained now and
    one kept from before a resume)."""
    histories = {k: tracking.metric_history(run_id, k) for k in CURVE_KEYS}
    epochs = sorted({step for h in histories.values() for step in h})
    history = pd.DataFrame({"epoch": epochs, **{k: [h.get(e, np.nan) for e in epochs] for k, h in histories.items()}})
    model_id = registry.best_logged_model(run_id)
    epoch = registry.logged_model(model_id)["tags"].get(registry.EPOCH_TAG, "") if model_id else ""
    return MemberResult(key, run_id, history, model_id, int(epoch) if epoch.isdigit() else None)


def group_curves(members: list[MemberResult]) -> pd.DataFrame:
    """Per epoch: mean and standard deviation of each curve over the members that reached it."""
    long = pd.concat([m.history.assign(member=m.key) for m in members], ignore_index=True)
    grouped = long.groupby("epoch")
    out = pd.DataFrame({"epoch": sorted(long["epoch"].unique())})
    for key in CURVE_KEYS:
        if key in long and long[key].notna().any():
            out[f"{key}_mean"] = grouped[key].mean().values
            out[f"{key}_std"] = grouped[key].std(ddof=1).values  # NaN where one member reached the epoch
    out["group_members_at_epoch"] = grouped["member"].nunique().values
    return out


def group_figures(result: GroupResult) -> dict[str, float]:
    """The group's headline: its members' kept-model validation mean class accuracy, summarised."""
    i = result.interval
    out = {f"group_{HEADLINE}_mean": i.mean, f"group_{HEADLINE}_std": i.std, "group_members": float(i.n)}
    if i.low is not None and i.high is not None:
        out.update({f"group_{HEADLINE}_ci_low": i.low, f"group_{HEADLINE}_ci_high": i.high})
    return out


GROUP_VERSION_TAGS = ("group_kind", "group_members", f"group_{HEADLINE}_mean", f"group_{HEADLINE}_std",
                      f"group_{HEADLINE}_ci", "group_model")  # besides group_run_id: group_tags, choose_model


def group_tags(result: GroupResult) -> dict[str, Any]:
    """What a version registered from the group says of it (promote and the model card read these)."""
    i = result.interval
    return {"group_run_id": result.run_id, "group_kind": result.kind, "group_members": i.n,
            f"group_{HEADLINE}_mean": round(i.mean, 4), f"group_{HEADLINE}_std": round(i.std, 4),
            f"group_{HEADLINE}_ci": f"[{i.low:.4f}, {i.high:.4f}]" if i.low is not None else "none (1 member)"}


def tags_from_group_run(run_id: str) -> dict[str, str]:
    """The version tags of `group_tags` (and what the model is), read back from a group's run:
    for a model registered later (tune registers the best trial's)."""
    tags = tracking.run_tags(run_id)
    return {"group_run_id": run_id, **{k: tags[k] for k in GROUP_VERSION_TAGS if k in tags}}


def _log_group(run: tracking.Run, result: GroupResult, out: Path) -> None:
    curves = group_curves(result.members)
    logged = run.logged_steps(f"{HEADLINE}_mean")  # a resumed group logs only what it lacks
    for row in curves.to_dict("records"):
        if int(row["epoch"]) not in logged:
            run.log_metrics({str(k): v for k, v in row.items() if k != "epoch" and np.isfinite(v)}, step=int(row["epoch"]))
    # At the group's last epoch, once: a resumed group that trains no further does not log them again.
    last = int(curves["epoch"].max()) if len(curves) else 0
    if last not in run.logged_steps(f"group_{HEADLINE}_mean"):
        run.log_metrics(group_figures(result), step=last)
    table = pd.DataFrame([{"member": m.key, "run_id": m.run_id, "epochs": int(m.history["epoch"].max()),
                           "kept_epoch": m.kept_epoch,
                           **{f"kept_{k}": m.value(k) for k in CURVE_KEYS}, "model_id": m.model_id}
                          for m in result.members])
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "members.csv", index=False)
    curves.to_csv(out / "curves.csv", index=False)
    try:
        figures.group_curves(curves, {m.key: m.history for m in result.members}, out / "curves.png")
    except Exception as exc:  # noqa: BLE001 - a figure must never cost the group
        log.warning("group curves plot failed: %s", exc)
    run.log_artifacts(out, "group")
    run.set_tags({"group_member_runs": ", ".join(f"{m.key}:{m.run_id}" for m in result.members),
                  **{k: v for k, v in group_tags(result).items() if k != "group_run_id"}})
    log.info("group %s: %d %s, kept-model %s %s", result.run_id, len(result.members), result.kind, HEADLINE,
             result.interval.text())




def choose_model(run: tracking.Run, result: GroupResult, config: Config) -> None:
    """The group's model, by train.group_model: the best member's kept model, or the ensemble of
    every member's (logged on the group's run, once: a resumed group reuses it)."""
    have = [m for m in result.members if m.model_id]
    if not have:
        log.warning("group %s: no member has a logged model", result.run_id)
        return
    if config.train.group_model == "ensemble":
        # reused only when it holds exactly these members' models: a group resumed for more epochs
        # kept other models, and its ensemble is made anew
        logged = [m["model_id"] for m in run.logged_models()
                  if m["status"] == "READY" and m["tags"].get(ENSEMBLE_OF_TAG) == ensemble_of(have)]
        result.model_id = logged[0] if logged else log_ensemble(run, have)
        result.registered = f"the ensemble of {len(have)} members"
    else:
        best = max(have, key=MemberResult.rank)
        result.model_id, result.registered = best.model_id, f"{best.key}'s model (best on validation)"
    run.set_tags({registry.GROUP_MODEL_TAG: result.model_id, "group_model": result.registered})


def register(run: tracking.Run, result: GroupResult, name: str) -> None:
    """Register the group's model with the group's figures as tags, once per model: a resumed
    group whose model did not change registers nothing new (one resumed for more epochs may)."""
    done = [v for v in registry.model_versions(name)
            if v["tags"].get("group_run_id") == result.run_id and v["model_id"] == result.model_id]
    if done:
        result.model_version = done[0]["version"]
    elif result.model_id:
        result.model_version = logged_models.register(result.model_id, name,
                                                   {**group_tags(result), "group_model": result.registered})
    if result.model_version:
        run.set_tags({"group_model_version": result.model_version})


def log_ensemble(run: tracking.Run, members: list[MemberResult]) -> str:
    """One logged model on the group's run holding every member's kept weights (C3DEnsemble):
    evaluate, predict, visualize, compare and serving load it like any model. `members`: those
    with a kept model."""
    model_ids = [m.model_id for m in members if m.model_id]
    with tempfile.TemporaryDirectory(prefix="exptrack-ensemble-") as tmp:
        payloads = [load_weights(registry.download_model_weights(model_id, Path(tmp) / str(i)))
                    for i, model_id in enumerate(model_ids)]
        first = config_from_dict(payloads[0]["config"], f"model {model_ids[0]}")
        config = replace(first, model={"ensemble": len(members)})
        digests = sorted({str(p.get("data_digest", "")) for p in payloads})
        class_names = [str(n) for n in payloads[0].get("class_names") or []]
        payload = {"model": ensemble_state_dict([p["model"] for p in payloads]), "config": to_saved_dict(config),
                   "epoch": 0, "metrics": {}, "run_id": run.id, "data_digest": "+".join(digests),
                   "class_names": class_names, "precision": str(payloads[0].get("precision", "fp32")),
                   # a multiplier: the geometric mean (weights 1/4 and 4 average to 1, not 2.1)
                   "rest_weight": float(np.exp(np.mean([np.log(float(p.get("rest_weight", 1.0))) for p in payloads]))),
                   "members": [m.run_id for m in members]}
        weights = save_atomic(payload, Path(tmp) / WEIGHTS_FILE)
        model_id = run.log_clip_model(weights, config.data.clip_len, class_names, 0,
                                      {registry.BEST_TAG: "true", "exptrack.data_digest": payload["data_digest"],
                                       ENSEMBLE_TAG: len(members), ENSEMBLE_OF_TAG: ensemble_of(members)},
                                      label="ensemble")
    return model_id


def ensemble_of(members: list[MemberResult]) -> str:
    """Which kept models an ensemble of `members` holds (its tag ENSEMBLE_OF_TAG)."""
    return ",".join(m.model_id for m in members if m.model_id)
