"""One train run: one MLflow run from data to a registered model (exptrack/train.py is the
command, which also trains groups).

This module wires the pieces together; the loop (loop.py) and checkpoints (checkpoint.py) know
nothing about MLflow. MLflow is reached only through exptrack/tracking/ (the run: its handle and
a few run queries; logged models and the registry), never imported here.
"""

from __future__ import annotations

import logging
import os
import math
import random
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, cast

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import figures, preemption, tracking
from ..tracking import registry
from ..device import Placement, bind, nvml_index, placement, resolve_device, training_placement
from ..config import Config, ConfigError, config_from_dict, replace, to_flat_dict
from ..data import clips
from ..data.dataset import ModelView, make_loader, stop_workers
from ..data.errors import DataError
from ..data.layout import output_names
from ..data.prepare import PreparedData, prepare_data
from ..errors import ModelError, TrackingUnavailable
from ..losses import FocalLoss
from ..metrics import calibrated_rest_weight
from ..models.c3d import build_model, count_parameters
from ..models.weights import load_weights
from ..windows import video_probabilities
from . import checkpoint as ckpt
from . import distributed
from .distributed import DistEnv
from .logged_models import ModelLog
from .loop import EpochCallback, FitSetup, TrainState, fit, grad_scaler, restore

log = logging.getLogger("exptrack.train")

# What a resumed run may change: how and where it runs, and how long. The rest (data, model,
# loss, optimiser) is the run's own and comes from its checkpoint.
RESUMABLE = {"train": ("epochs", "early_stop_patience", "device", "num_workers", "eval_batch_size"),
             "paths": ("outputs", "cache"),
             "data": ("root", "cache_workers"), "mlflow": ("tracking_uri",)}


@dataclass
class TrainResult:
    run_id: str
    state: TrainState
    model_version: str | None
    checkpoint_dir: Path
    model_id: str | None = None  # the best logged model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class EpochLogger:
    """Per-epoch MLflow logging: the epoch's model (when its checkpoint is kept), metrics at
    step=epoch, the metrics CSVs as artifacts.

    Training never waits on the tracking server: the calls go to a BackgroundTracker, which makes
    them in order on its own thread and retries each until it succeeds; the checkpoint (on
    local disk) never depends on them. What is logged is fixed when the epoch ends: the row, and a
    snapshot of the model's weights (later epochs overwrite the checkpoint files).
    """

    def __init__(self, run: tracking.Run, out_dir: Path, num_classes: int, tracker: tracking.BackgroundTracker,
                 models: ModelLog | None = None, val_dataset: Any = None, resume_upload: Path | None = None) -> None:
        self.run, self.out_dir, self.num_classes, self.tracker = run, out_dir, num_classes, tracker
        self.models, self.val_dataset, self.resume_upload = models, val_dataset, resume_upload
        self.model_ids: dict[int, str | None] = {}  # epoch -> its logged model (set by the tracker's thread)
        self.seconds = 0.0  # time the training thread spent here, i.e. the cost of tracking (bench/train.py)

    @property
    def failures(self) -> int:
        return self.tracker.failures

    def write_csvs(self, state: TrainState) -> list[Path]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        metrics = pd.DataFrame(state.history)
        metrics["epoch"] = metrics["epoch"].astype(int)
        per_class = pd.DataFrame(state.per_class_history, columns=[f"class_{c}" for c in range(self.num_classes)])
        per_class.insert(0, "epoch", metrics["epoch"].to_numpy())
        paths = [self.out_dir / "training_metrics.csv", self.out_dir / "per_class_accuracy.csv"]
        metrics.to_csv(paths[0], index=False)
        per_class.to_csv(paths[1], index=False)
        return paths

    @staticmethod
    def epoch_metrics(metrics: dict[str, float], per_class: Iterable[float]) -> dict[str, float]:
        out = {k: v for k, v in metrics.items() if k != "epoch"}
        out.update({f"val_acc_class_{c}": float(v) for c, v in enumerate(per_class) if np.isfinite(v)})
        return out

    def __call__(self, metrics: dict[str, float], per_class: np.ndarray, saved: list, state: TrainState) -> None:
        start = time.perf_counter()
        try:
            self._submit(metrics, per_class, saved, state)
        finally:
            self.seconds += time.perf_counter() - start

    def log_training_row(self, row: dict[str, float]) -> None:
        """One epoch's metrics but the validation ones."""
        self.run.log_metrics({k: v for k, v in row.items() if k != "epoch" and not k.startswith("val_")},
                             step=int(row["epoch"]))

    def log_validation_row(self, row: dict[str, float], model_id: str | None = None) -> None:
        """One epoch's validation metrics, linked to the epoch's model and to the validation data."""
        self.run.log_metrics({k: v for k, v in row.items() if k.startswith("val_")}, step=int(row["epoch"]),
                             model_id=model_id, dataset=self.val_dataset)

    def _submit(self, metrics: dict[str, float], per_class: np.ndarray, saved: list, state: TrainState) -> None:
        """Four calls per epoch, each retried alone (a retried call must not repeat another):
        the model, the training metrics, the validation metrics (linked to the model), the files."""
        epoch = int(metrics["epoch"])
        row = {"epoch": epoch, **self.epoch_metrics(metrics, per_class)}
        csvs = self.write_csvs(state)
        if self.models is not None:
            snapshot = self.models.snapshot(epoch, saved)
            best = state.best_epoch.get("val_mean_class_acc")
            self.tracker.submit(f"epoch {epoch} model", lambda: self.model_ids.__setitem__(
                epoch, self.models.after_epoch(epoch, snapshot, best)))
        self.tracker.submit(f"epoch {epoch} metrics", lambda: self.log_training_row(row))
        self.tracker.submit(f"epoch {epoch} validation metrics",
                            lambda: self.log_validation_row(row, self.model_ids.get(epoch)))
        self.tracker.submit(f"epoch {epoch} files", lambda: self._log_files(csvs))

    def _log_files(self, csvs: list[Path]) -> None:
        for path in csvs:
            self.run.log_artifact(path, "metrics")
        if self.resume_upload is not None and self.resume_upload.exists():
            self.run.log_artifact(self.resume_upload, RESUME_ARTIFACT_DIR)


RESUME_ARTIFACT_DIR = "resume"  # mlflow.upload_resume_checkpoint: last.pt, for resume on another machine


def reconcile_history(run: tracking.Run, state: TrainState) -> int:
    """After a resume (and at the end of a run), log what the checkpoint's history has but MLflow
    missed, metric by metric: a run killed between writing its checkpoint and logging, or
    between an epoch's training and validation metric calls. Returns how many epochs were
    completed."""
    rows = {int(row["epoch"]): EpochLogger.epoch_metrics(row, per_class)
            for row, per_class in zip(state.history, state.per_class_history, strict=True)}
    logged = {key: run.logged_steps(key) for key in {k for metrics in rows.values() for k in metrics}}
    completed = 0
    for epoch, metrics in rows.items():
        missing = {k: v for k, v in metrics.items() if epoch not in logged[k]}
        if missing:
            run.log_metrics(missing, step=epoch)
            completed += 1
    return completed


CHECKPOINT_DIR_TAG = "checkpoint_dir"


def resume_config(saved: Config, given: Config, explicit: frozenset[str] | None = None,
                  source: str = "the checkpoint") -> Config:
    """The checkpoint's config with the RESUMABLE keys the user set (`explicit`, config.given_keys;
    without it, those that differ from the defaults) taken from `given` (e.g. more epochs), and
    `given`'s paths; other differences are ignored with a warning."""
    given_flat, saved_flat, default_flat = to_flat_dict(given), to_flat_dict(saved), to_flat_dict(Config())
    if explicit is None:
        explicit = frozenset(k for k, v in given_flat.items() if v != default_flat[k])
    changes: dict[str, dict] = {}
    for section, keys in RESUMABLE.items():
        for key in keys:
            if f"{section}.{key}" in explicit:
                changes.setdefault(section, {})[key] = given_flat[f"{section}.{key}"]
    allowed = {f"{s}.{k}" for s, keys in RESUMABLE.items() for k in keys}
    ignored = [k for k in explicit - allowed if given_flat[k] != saved_flat[k]]
    if ignored:
        log.warning("resume keeps the run's own settings; ignoring %s", ", ".join(sorted(ignored)))
    # Paths belong to where this command runs, not to where the run was trained: a checkpoint
    # file may come from another machine, and its folders must not be written to (or, with
    # data.demo, filled with generated data) here.
    changes["paths"] = {k: given_flat[f"paths.{k}"] for k in RESUMABLE["paths"]}
    root = given.data.root if "data.root" in explicit else saved.data.root
    if root != given.data.root and not Path(root).exists():
        raise DataError(f"data.root {root} (from the config of {source}) does not exist here: pass --set "
                        f"data.root=<the folder that holds the run's dataset>")
    return replace(saved, **changes)


def find_checkpoint(resume: str, outputs: Path) -> Path:
    """A checkpoint path, or a run id whose last.pt lies under <outputs>/runs/<run id>/ (or, with
    mlflow.upload_resume_checkpoint, in the run's artifacts: it is downloaded there)."""
    path = Path(resume)
    if path.is_file():
        return path
    candidate = outputs / "runs" / resume / "checkpoints" / ckpt.LAST
    if candidate.is_file() or any(candidate.parent.glob("*.pt")):  # without last.pt: the newest other one
        return candidate
    uploaded = ""
    if tracking.is_run_id(resume):
        try:
            with tempfile.TemporaryDirectory(prefix="exptrack-resume-") as tmp:
                got = tracking.download_run_artifact(resume, f"{RESUME_ARTIFACT_DIR}/{ckpt.LAST}", Path(tmp))
                candidate.parent.mkdir(parents=True, exist_ok=True)
                # Under torchrun every rank of a machine downloads it to this one path: copied under
                # a private name and renamed, no rank reads a file another is still writing.
                private = candidate.with_name(f".{candidate.name}.tmp-{os.getpid()}")
                try:
                    shutil.copyfile(got, private)
                    os.replace(private, candidate)
                finally:
                    private.unlink(missing_ok=True)
            log.info("resume checkpoint of run %s downloaded from its artifacts to %s", resume, candidate)
            return candidate
        except Exception:  # noqa: BLE001 - no such run or artifact: said below
            uploaded = f" or an uploaded {RESUME_ARTIFACT_DIR}/{ckpt.LAST} artifact (mlflow.upload_resume_checkpoint)"
    raise ModelError(f"--resume {resume}: neither a checkpoint file nor a run id with {candidate}{uploaded}")


def build_setup(config: Config, data: PreparedData, where: Placement, env: DistEnv = DistEnv()) -> FitSetup:
    num_classes = config.model.outputs  # the exercise classes and rest
    device = where.device
    train_loader = make_loader(data, "train", train=True, batch_size=config.train.batch_size,
                               num_workers=config.train.num_workers, seed=config.train.seed,
                               weighted_sampler=config.train.weighted_sampler, pin_memory=device.type == "cuda",
                               rank=env.rank, world_size=env.world_size)
    val_loader = None  # data.train_on_val: nothing held out
    if len(data.splits["val"]):
        val_loader = make_loader(data, "val", train=False, batch_size=config.train.eval_batch_size,
                                 num_workers=config.train.num_workers, pin_memory=device.type == "cuda",
                                 rank=env.rank, world_size=env.world_size)  # each rank its share (validate)
    model: nn.Module = where.prepare(build_model(config.model))
    if env.enabled:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.train.compile:
        model = cast(nn.Module, torch.compile(model))  # an OptimizedModule; typed as any callable
    alpha = None
    if config.loss.auto_class_weights:
        alpha = torch.from_numpy(clips.class_weights(data.splits["train"].class_counts(num_classes))).to(device)
    criterion = FocalLoss(config.loss.focal_gamma, alpha).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    scheduler = build_scheduler(optimizer, config)
    return FitSetup(model, criterion, optimizer, scheduler, train_loader, val_loader, where, num_classes, config,
                    grad_scaler(where))


def build_scheduler(optimizer: torch.optim.Optimizer, config: Config):
    o = config.optim
    if o.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.train.epochs), eta_min=o.min_lr)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=o.plateau_factor,
                                                      patience=o.plateau_patience, min_lr=o.min_lr)


@dataclass(frozen=True)
class RunOptions:
    """How a train run is recorded: tune makes trials children of its parent run, registers
    only the best trial, and needs the run id before the run ends (pruned trials)."""

    parent_run_id: str | None = None
    run_name: str = "train"
    tags: dict[str, Any] | None = None
    register: bool = True
    on_start: Callable[[str], None] | None = None
    invocation: dict[str, str] | None = None  # the `config` and `overrides` typed (params, as the MLproject's)
    # the config keys the user set (config.given_keys): what a resume takes from the given config;
    # None: those that differ from the defaults (callers that only have a Config)
    explicit: frozenset[str] | None = None


def train_run(config: Config, resume: str | None = None, progress: bool = True,
              callbacks: Iterable[EpochCallback] = (), options: RunOptions = RunOptions()) -> TrainResult:
    """Train one run (a group's member is one too: groups.py); under torchrun every rank calls
    this, rank 0 alone tracks and checkpoints. `exptrack.train.train` is the entry that also
    trains groups."""
    if resume and tracking.is_run_id(resume):
        tracking.use_tracking_uri(config)
        tracking.check_store(config)  # the run is looked up there: a store that is away is said as such
    refuse_ensemble_training(config)
    # A resume continues with the run's own config (what it may change applied): its device and
    # backend, not the command line's, decide the process group.
    payload, config = _resume_point(resume, Path(config.paths.outputs), config, options.explicit) if resume \
        else (None, config)
    # The device and precision first: a setting this machine cannot honour stops here, before a
    # process group, a run or a file exists.
    env = distributed.init_distributed(training_placement(config.train).device)
    try:
        return _train(config, env, payload, progress, callbacks, options)
    finally:
        distributed.cleanup()


def rank_placement(config: Config, env: DistEnv) -> Placement:
    """Where this rank trains: its own GPU (made the current device), the precision and layout
    the config asks for on it; logged as one line, as every run should say where it ran."""
    device = bind(distributed.device_for(env, resolve_device(config.train.device)))
    where = placement(config.train, device, strict=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    log.info("device: %s%s", where.describe(), f" (rank {env.rank} of {env.world_size})" if env.enabled else "")
    return where


def seed_everything_for_rank(seed: int, env: DistEnv) -> None:
    """Every rank its own random stream (dropout); the model's initial weights still agree,
    since DDP copies rank 0's to every rank when it wraps the model."""
    seed_everything(distributed.rank_seed(seed, env.rank))


def refuse_ensemble_training(config: Config) -> None:
    if config.model.ensemble > 1:
        raise ConfigError("model.ensemble is set on the model a group registers (train.group_model=ensemble); "
                          "a training run trains one C3D")


def _resume_point(resume: str, outputs: Path, config: Config,
                  explicit: frozenset[str] | None = None) -> tuple[dict[str, Any], Config]:
    """The checkpoint to resume from and the run's own config (with what a resume may change).
    A run killed before its first checkpoint has none: it starts again from epoch 1, in the same
    MLflow run, with the config it logged (or, killed before even that, the given one)."""
    try:
        path = find_checkpoint(resume, outputs)
    except ModelError:
        saved = tracking.train_run_config(resume) if tracking.is_run_id(resume) else None
        if saved is None:
            raise
        refuse_restart_of_trained_run(resume, outputs)
        log.warning("run %s has no checkpoint (it was stopped before its first epoch ended): it starts again from "
                    "epoch 1, in the same MLflow run", resume)
        own = config_from_dict(saved, f"run {resume} config.yaml") if saved else config
        return {"run_id": resume}, resume_config(own, config, explicit, f"run {resume}")
    path, payload = ckpt.load_for_resume(path) if path.name == ckpt.LAST else (path, load_weights(path))
    if "run_id" not in payload:
        raise ModelError(f"{path}: checkpoint has no run id (not written by exptrack train)")
    log.info("resuming run %s after epoch %d", payload["run_id"], payload["epoch"])
    return payload, resume_config(config_from_dict(payload["config"], str(path)), config, explicit, str(path))


def refuse_restart_of_trained_run(run_id: str, outputs: Path) -> None:
    """A run that finished an epoch wrote checkpoints, only not here (resumed from another folder
    over a shared store, or they were deleted). Starting it again from epoch 1 would log every
    epoch twice in one run and, for a finished run, register a second version: refused, saying
    where the checkpoints are."""
    record = tracking.run_record(run_id)
    if record["status"] != "FINISHED" and "train_loss" not in record["metrics"]:
        return  # stopped before its first epoch ended: nothing to lose by starting over
    state = "finished" if record["status"] == "FINISHED" else "has finished epochs"
    where = record["tags"].get(CHECKPOINT_DIR_TAG) or f"outputs/runs/{run_id}/checkpoints of the folder it was trained in"
    raise ModelError(f"--resume {run_id}: the run {state} but its checkpoints are not in "
                     f"{outputs / 'runs' / run_id / 'checkpoints'}; they are in {where}: resume from the folder that "
                     f"holds them (or set paths.outputs to its outputs folder)")


def _device_tags(where: Placement) -> dict[str, Any]:
    """The device line as tags; `gpu_nvml_index` names the GPU in MLflow's system metrics
    (`system/gpu_<i>_*` count GPUs as NVML does, whatever CUDA_VISIBLE_DEVICES says)."""
    index = nvml_index(where.device)
    return {**where.tags(), **({"gpu_nvml_index": index} if index is not None else {})}


def _run_tags(data: PreparedData, setup: FitSetup, env: DistEnv) -> dict[str, Any]:
    """What a train run is tagged with; warns when validation is too small to trust."""
    weak = data.validation_weaknesses()
    if weak:
        log.warning("validation is small (%s): its scores are noisy, so model choice and early stopping are "
                    "too; put more subjects in validation (split.csv val, data.val_fraction) and compare "
                    "models on the test split", "; ".join(weak))
    return {"data_root": data.layout.root, "data_digest": data.digest(), **_device_tags(setup.placement),
            **({"validation_weak": "; ".join(weak)} if weak else {}),
            "world_size": env.world_size, "parameters": count_parameters(setup.model),
            "clips_train": len(data.splits["train"]), "clips_val": len(data.splits["val"])}


def _log_run_summary(run: tracking.Run, state: TrainState, data: PreparedData, logger: "EpochLogger",
                     out_dir: Path) -> None:
    """End of a run: missed epochs, data warnings, bests, the cost of tracking, the figures."""
    reconcile_history(run, state)  # epochs whose logging failed at the very end
    if data.warnings:
        run.set_tags({f"data_warnings.{k}": v for k, v in data.warnings.counts.items()})
    # At step = the last epoch, once per end of training: a run resumed for more epochs adds
    # values at its new last epoch (the latest is what the UI shows) instead of repeating step 0.
    # The tracking cost adds up over the run's attempts.
    before = run.latest_metrics(("tracking_seconds", "tracking_failures"))
    run.log_metrics({f"best_{k}": v for k, v in state.best.items()  # none without validation
                     if k in ("val_loss", "val_acc", "val_mean_class_acc", "selection_score") and math.isfinite(v)},
                    step=state.epoch)
    run.log_metrics({"tracking_seconds": before.get("tracking_seconds", 0.0) + logger.seconds,
                     "tracking_failures": before.get("tracking_failures", 0.0) + logger.failures}, step=state.epoch)
    try:
        csvs = logger.write_csvs(state)
        figures.training_plots(pd.read_csv(csvs[0]), pd.read_csv(csvs[1]), out_dir / "plots")
        run.log_artifacts(out_dir / "plots", "plots")
    except Exception as exc:  # noqa: BLE001 - a figure must never cost the trained model
        log.warning("training plots failed: %s", exc)


def resume_record(run: tracking.Run, state: TrainState, payload: dict[str, Any], digest: str,
                  models: ModelLog) -> None:
    """A resumed run's record made whole: its logged models found again, and the metrics of
    finished epochs that a kill kept from MLflow logged from the checkpoint's history."""
    if payload.get("data_digest") not in (None, digest):
        log.warning("the data changed since the checkpoint (digest %s, now %s)", payload.get("data_digest"), digest)
    models.recover()
    reconcile_history(run, state)


@contextmanager
def draining_when_stopped(tracker: tracking.BackgroundTracker, run_id: str, shutdown_timeout: float) -> Iterator[None]:
    """Training stopped by a signal or an error still delivers what finished epochs queued
    (within the shutdown budget); the resume delivers the rest."""
    try:
        yield
    except preemption.Preempted as exc:
        left = tracker.drain(distributed.shutdown_budget(shutdown_timeout))
        log.warning("%s: run %s ends KILLED%s; `exptrack train --resume %s` continues after its last "
                    "finished epoch (its checkpoint)", exc, run_id,
                    f" ({len(left)} tracking calls undelivered, the resume delivers them)" if left else "", run_id)
        raise
    except BaseException:
        tracker.drain(INTERRUPTED_DRAIN_S)
        raise


def _train(config: Config, env: DistEnv, payload: dict[str, Any] | None, progress: bool,
           callbacks: Iterable[EpochCallback], options: RunOptions) -> TrainResult:
    """`payload`: the checkpoint (or the bare run id of a run stopped before one) to resume."""
    outputs = Path(config.paths.outputs)
    if env.is_main:
        tracking.check_store(config)  # a store that cannot record the run: said before any decoding or training
    run_id = payload["run_id"] if payload else None
    seed_everything_for_rank(config.train.seed, env)
    where = rank_placement(config, env)
    data = prepare_data(config, splits=("train", "val"), progress=progress and env.is_main)
    if len(data.splits["val"]) == 0 and not config.data.train_on_val:
        raise DataError("no validation clips: early stopping and model choice need data.val_fraction > 0 "
                        "or val subjects in split.csv")
    setup = build_setup(config, data, where, env)
    try:
        state = restore(setup, payload) if payload and "model" in payload else None
        if not env.is_main:  # workers train in step with rank 0 and leave the record to it
            state = fit(setup, None, state=state, progress=False, rest_weight=rest_weight_calibration(data, where))
            return TrainResult(run_id or "", state, None, outputs)
        digest = data.digest()
        tags = _run_tags(data, setup, env)
        class_names = output_names(data.layout.root, config.model.num_classes, config.model.rest_class)
        with tracking.start_run(config, run_name=options.run_name, command="train", tags={**tags, **(options.tags or {})},
                                system_metrics=True, run_id=run_id, parent_run_id=options.parent_run_id,
                                invocation=options.invocation) as run:
            if options.on_start:
                options.on_start(run.id)
            ckpt_dir = outputs / "runs" / run.id / "checkpoints"
            run.set_tags({CHECKPOINT_DIR_TAG: ckpt_dir.resolve()})  # where a resume from elsewhere must look
            manager = ckpt.CheckpointManager(ckpt_dir, config.train.checkpoint_every, config.train.keep_checkpoints)
            models = ModelLog(run, manager, class_names, config.mlflow.registered_model if options.register else None)
            datasets = split_datasets(run, data)
            if state is None:  # a new run, or one that never finished its first epoch
                run.log_git_diff()
                for context, dataset in datasets.items():
                    run.log_dataset(dataset, context)
            else:
                assert payload is not None  # the state came from it
                resume_record(run, state, payload, digest, models)
            tracker = tracking.BackgroundTracker(run.id)
            logger = EpochLogger(run, outputs / "runs" / run.id / "metrics", config.model.outputs, tracker, models,
                                 datasets.get("validation"),
                                 ckpt_dir / ckpt.LAST if config.mlflow.upload_resume_checkpoint else None)
            with draining_when_stopped(tracker, run.id, config.train.shutdown_timeout):
                state = fit(setup, manager, state=state, callbacks=[logger, *callbacks], progress=progress,
                            stamp=_RunStamp(run.id, digest, tuple(class_names), setup.placement.precision.name,
                                            training_rest_weight(data)),
                            rest_weight=rest_weight_calibration(data, setup.placement))
            deliver_queued(tracker, run.id, ckpt_dir)
            early = early_best(state)
            if early:
                log.warning("%s", early)
                run.set_tags({"early_best_epoch": early})
            _log_run_summary(run, state, data, logger, outputs / "runs" / run.id)
            best_id = models.ensure_kept(state.best_epoch.get("val_mean_class_acc"))
            version = models.register(best_id) if best_id and options.register else None
            if config.mlflow.upload_resume_checkpoint and (ckpt_dir / ckpt.LAST).exists():
                run.log_artifact(ckpt_dir / ckpt.LAST, RESUME_ARTIFACT_DIR)
            if config.train.checkpoint_files == "resume":
                files, size = manager.drop_copies()
                if files:
                    log.info("removed %d checkpoint files (%.0f MB) whose weights are the run's logged models; kept %s "
                             "(train.checkpoint_files=all keeps them)", files, size / 2**20, ", ".join(manager.KEPT_AFTER_RUN))
        return TrainResult(run.id, state, version, ckpt_dir, best_id)
    finally:  # a finished run's loader workers would otherwise idle until the garbage collector frees them
        stop_workers(setup.train_loader, setup.val_loader)


def early_best(state: TrainState) -> str | None:
    """A warning when the kept model comes from the first tenth of a run of 10+ epochs: the rest
    of the run never did better on validation, which is worth a look before trusting it."""
    epoch = state.best_epoch.get("val_mean_class_acc")
    if epoch is None or state.epoch < 10 or epoch > state.epoch / 10 or not any("val_loss" in r for r in state.history):
        return None
    return (f"the kept model is from epoch {epoch} of {state.epoch}: validation never did better afterwards "
            "(overfitting, too high a learning rate, or noisy validation); check the curves before trusting it")


DRAIN_S = 600.0  # the end of a run waits this long for queued tracking calls (a server outage)
INTERRUPTED_DRAIN_S = 10.0  # a run that stops on an error or a kill waits less


def deliver_queued(tracker: tracking.BackgroundTracker, run_id: str, ckpt_dir: Path) -> None:
    """Wait for the tracking calls training queued; if the server does not take them in time,
    stop with what to do (the checkpoints hold everything they carried)."""
    if tracker.pending():
        log.info("training done; waiting for %d queued tracking calls", len(tracker.pending()))
    left = tracker.drain(DRAIN_S)
    if left:
        raise TrackingUnavailable(
            f"the tracking server took no updates of run {run_id} for {DRAIN_S:.0f} s ({len(left)} left, from "
            f"{left[0]}); training is complete and its checkpoints are in {ckpt_dir}: run `exptrack train --resume "
            f"{run_id}` when the server is back to deliver them")


def split_datasets(run: tracking.Run, data: PreparedData) -> dict[str, Any]:
    """MLflow datasets of the training and validation clips (context -> dataset)."""
    out = {}
    for split, context in (("train", "training"), ("val", "validation")):
        if len(data.splits[split]):
            out[context] = run.dataset(data.manifest(split), name=f"clips-{split}",
                                       source=str(data.layout.root), digest=data.splits[split].digest())
    return out


def training_rest_weight(data: PreparedData) -> float:
    """clips.rest_weight of this run's training windows (before and after downsampling)."""
    m, t = data.config.model, data.config.train
    return clips.rest_weight(data.train_before_downsampling, data.splits["train"], m.rest_index, m.outputs,
                             t.weighted_sampler)


def rest_weight_calibration(data: PreparedData, placement: Placement) -> Callable[[nn.Module], float] | None:
    """How a model's rest weight is chosen for its timelines: on the validation subjects' whole
    videos (metrics.calibrated_rest_weight, the training windows' prior when they hold too little
    rest or exercise to choose by). None without a rest output or validation subjects (a train +
    val fit): the prior then stands. Under DDP every rank calls it together: each scores its
    share of the videos (subjects r, r + N, ...) and every rank chooses from all of them."""
    config, rest = data.config, data.config.model.rest_index
    subjects = [data.subjects[name] for name in data.split_subjects.get("val", [])]
    if rest is None or not subjects:
        return None
    prior, d = training_rest_weight(data), config.data
    true = np.concatenate([s.labels for s in subjects]).astype(np.int64)
    rank, ranks = distributed.rank_and_size()

    def calibrate(model: nn.Module) -> float:
        mine = [video_probabilities(model, ModelView(s, d.use_masks, d.use_skeleton_attention, d.mask_alpha),
                                    config, placement) for s in subjects[rank::ranks]]  # (T, K) each
        shares = distributed.all_gather_objects(mine)
        probs = np.concatenate([shares[i % ranks][i // ranks] for i in range(len(subjects))])  # (sum of T, K)
        return calibrated_rest_weight(probs, true, rest, prior)
    return calibrate


@dataclass(frozen=True)
class _RunStamp:
    """Added to every checkpoint so that `--resume <file>` knows its run and data."""

    run_id: str
    data_digest: str
    class_names: tuple[str, ...] = ()
    precision: str = "fp32"  # what the model computed in: scoring keeps it where it can (device.placement)
    rest_weight: float = 1.0  # clips.rest_weight of the training data: the prior of a model not calibrated

    def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        # timelines weigh rest by it: the epoch's calibrated weight (val_rest_weight) where fit chose one
        rest_weight = payload.get("metrics", {}).get("val_rest_weight", self.rest_weight)
        return {**payload, "run_id": self.run_id, "data_digest": self.data_digest, "class_names": list(self.class_names),
                "precision": self.precision, "rest_weight": rest_weight}


def discard_run_models(run_id: str, outputs: Path | None) -> None:
    """Delete a run's logged models and its checkpoints under `outputs` (a pruned or failed tune
    trial; None: only the logged models, for a run another machine trained)."""
    for m in registry.run_logged_models(run_id):
        registry.delete_logged_model(m["model_id"])
    if outputs is not None:
        shutil.rmtree(outputs / "runs" / run_id / "checkpoints", ignore_errors=True)
