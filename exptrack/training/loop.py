"""The training loop: train_one_epoch, validate, and fit() with early stopping and checkpoints.

fit() knows nothing of MLflow or Optuna: after each epoch it calls its callbacks with the
epoch's metrics and the files it checkpointed; tracking and pruning are such callbacks.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, Sized, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import preemption
from ..config import to_saved_dict
from ..device import Placement
from ..data.dataset import prepare_batch
from ..metrics import validation_metrics
from ..progress import progress_bar
from . import checkpoint as ckpt
from . import distributed
from .data_wait import DataClock, StarvationAlarm

log = logging.getLogger("exptrack.train")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: training cannot go on meaningfully."""


class EpochCallback(Protocol):
    def __call__(self, metrics: dict[str, float], per_class: np.ndarray, saved: list, state: "TrainState") -> None: ...


@dataclass
class TrainState:
    """Everything besides the weights that resume needs; stored in every checkpoint."""

    epoch: int = 0  # last completed epoch (1-based)
    best: dict[str, float] = field(default_factory=lambda: {"val_loss": math.inf, "val_acc": -math.inf,
                                                             "val_mean_class_acc": -math.inf})
    best_epoch: dict[str, int] = field(default_factory=dict)
    stale_epochs: int = 0  # epochs since the selection score last improved by min_delta (early stopping)
    history: list[dict[str, float]] = field(default_factory=list)
    per_class_history: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "best": dict(self.best), "best_epoch": dict(self.best_epoch),
                "stale_epochs": self.stale_epochs, "history": list(self.history),
                "per_class_history": list(self.per_class_history)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainState":
        return cls(epoch=d["epoch"], best=dict(d["best"]), best_epoch=dict(d["best_epoch"]),
                   stale_epochs=d["stale_epochs"], history=list(d["history"]),
                   per_class_history=list(d["per_class_history"]))


# ---------------------------------------------------------------------------------------------
# one epoch


def _progress(loader, desc: str, enabled: bool):
    return progress_bar(loader, desc, "batch", enabled, leave=False)


# "No non-finite loss yet": larger than any batch number.
_NO_BAD_BATCH = 2 ** 62


class _DeviceTotals:
    """The epoch's running loss sum, correct count and first non-finite batch, kept on the
    device so that a step never waits for the GPU; read (and checked) only at `check`."""

    def __init__(self, device: torch.device) -> None:
        # float64 where the device has it (not MPS): a float32 sum over thousands of batches drifts
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.loss_sum = torch.zeros((), dtype=self.dtype, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.first_bad = torch.full((), _NO_BAD_BATCH, dtype=torch.int64, device=device)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, batch: int) -> None:
        loss = loss.detach()
        self.loss_sum += loss * len(y)
        self.correct += (logits.detach().argmax(1) == y).sum()
        # first_bad = min(first_bad, batch) where the loss is NaN or inf: no Python branch, so no sync
        self.first_bad = torch.where(torch.isfinite(loss), self.first_bad, self.first_bad.clamp(max=batch))

    def check(self, epoch: int, batch: int, last_check: int) -> tuple[float, int]:
        """One host read: raise NonFiniteLossError if any batch up to `batch` had a non-finite loss
        on any rank (every rank takes part in the reduction and raises the same error at the same
        check, none is left waiting in a collective); else (loss sum, correct) of this rank."""
        first_bad = distributed.all_reduce_min(self.first_bad.clone())
        values = torch.stack([first_bad.to(self.dtype), self.loss_sum, self.correct.to(self.dtype)])
        bad, loss_sum, correct = values.tolist()
        if bad < _NO_BAD_BATCH:
            raise NonFiniteLossError(
                f"training loss became NaN or infinite at epoch {epoch}, batch {int(bad)} (found at the check "
                f"of batches {last_check + 1} to {batch}, train.sync_every); lower optim.lr or check the input data")
        return loss_sum, int(correct)


def stop_if_signalled(device: torch.device, at_check: bool = True) -> None:
    """Raise Preempted after a SIGTERM or SIGINT (preemption.py): in one process at every batch
    boundary; under DDP at the `sync_every` checks and epoch ends, all ranks together, when any
    rank got one (torchrun forwards the signal to every rank; a rank that stopped alone would
    leave the others waiting in a collective)."""
    if not distributed.is_initialized():
        preemption.check()
    elif at_check and distributed.any_rank(preemption.requested() is not None, device):
        raise preemption.Preempted(preemption.requested() or signal.SIGTERM)


def train_one_epoch(model: nn.Module, loader: Iterable, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    placement: Placement, *, grad_clip: float = 1.0, epoch: int = 1, progress: bool = True,
                    sync_every: int = 50, alarm: StarvationAlarm | None = None,
                    scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """One pass over `loader`. The step never reads a tensor on the host: the loss, accuracy and
    non-finite-loss flag accumulate on the device and are read every `sync_every` batches and
    at the end (0: at the end only). A non-finite loss raises NonFiniteLossError at that check.
    How long the step waited for data (data_wait.py) is host time only; `alarm` looks at it at
    the same checks.

    The optimizer still steps on a non-finite loss: skipping it would need the host to look at
    the loss first (the sync this avoids). The poisoned weights live at most until the check,
    which raises before fit() writes this epoch's checkpoint, so no saved model is affected.

    `scaler` (fp16, placement.precision.needs_scaler) scales the loss and skips the steps whose
    gradients overflowed; its step reads one flag from the device, so fp16 training has that
    sync per step (bf16 and fp32 need no scaler and have none)."""
    device = placement.device
    model.train()
    totals = _DeviceTotals(device)
    seen, batch_no, last_check = 0, 0, 0
    loss_sum, correct = 0.0, 0
    start = time.perf_counter()
    clock = DataClock(loader)
    alarm = alarm or StarvationAlarm(workers=loader_workers(loader))
    bar = _progress(clock, f"epoch {epoch} train", progress)
    for batch_no, batch in enumerate(bar, start=1):
        x, y = prepare_batch(batch, device)
        with placement.autocast():
            logits = model(placement.input(x))
        loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        step(loss, model, optimizer, grad_clip, scaler)
        totals.add(loss, logits, y, batch_no)
        seen += len(y)  # a shape, known on the host
        stop_if_signalled(device, at_check=sync_every > 0 and batch_no % sync_every == 0)
        if sync_every > 0 and batch_no % sync_every == 0:
            loss_sum, correct = totals.check(epoch, batch_no, last_check)
            last_check = batch_no
            elapsed = time.perf_counter() - start
            alarm.check(clock, elapsed, epoch)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}",
                            clips_s=f"{seen / elapsed:.0f}", data_wait=f"{clock.wait / elapsed:.0%}")
    if batch_no != last_check:  # also with sync_every 0 (every rank has the same number of batches)
        loss_sum, correct = totals.check(epoch, batch_no, last_check)
    seconds = time.perf_counter() - start
    alarm.check(clock, seconds, epoch)
    loss_sum, correct_f, seen_f = distributed.all_reduce_sum([loss_sum, float(correct), float(seen)], device)
    # (the data-wait figures are this rank's: every rank has its own loader)
    return {"train_loss": loss_sum / max(seen_f, 1), "train_acc": correct_f / max(seen_f, 1),
            "train_clips_per_s": seen_f / max(seconds, 1e-9), "train_seconds": seconds,
            **clock.figures(seconds, alarm.workers)}


def step(loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float,
         scaler: torch.amp.GradScaler | None) -> None:
    """Backward, clip, step; through the GradScaler when there is one (the gradients are
    unscaled before clipping, so grad_clip means the same in every precision)."""
    if scaler is None or not scaler.is_enabled():
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        return
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()


def grad_scaler(placement: Placement) -> torch.amp.GradScaler | None:
    """The GradScaler fp16 training needs; None for bf16 and fp32."""
    return torch.amp.GradScaler(placement.device.type) if placement.precision.needs_scaler else None


def loader_workers(loader: Iterable) -> int:
    """A DataLoader's worker processes (0: it loads in this process); 0 for any other iterable."""
    return int(getattr(loader, "num_workers", 0))


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, loader: Iterable, placement: Placement, batches: int) -> None:
    """Precise BN: replace BatchNorm running statistics by plain averages over `batches`
    training batches with the current weights. The running averages otherwise mix statistics of
    weights from many steps ago; on small data with a high learning rate this made validation
    accuracy jump by tens of points from one epoch to the next (measured on the demo data)."""
    # The plain module, eager: under torch.compile a momentum that changes every batch would
    # recompile the graph each time (and hit dynamo's recompile limit); the buffers are shared.
    model = unwrap_model(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or batches <= 0:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
    model.train()
    for i, batch in enumerate(loader):
        if i >= batches:
            break
        # The cumulative average as a momentum of 1/(i+1), a Python number: momentum=None does the
        # same from num_batches_tracked, a device tensor that BatchNorm then reads on the host
        # (one sync per layer per batch, and a graph break under torch.compile).
        for m in norms:
            m.momentum = 1.0 / (i + 1)
        x, _ = prepare_batch(batch, placement.device)
        with placement.autocast():
            model(placement.input(x))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    distributed.broadcast_buffers(model)  # every rank validates with rank 0's statistics


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, placement: Placement, *, progress: bool = False,
            desc: str = "predict") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, K) and labels (N,) for a whole loader, in loader order, on the CPU. The logits
    stay on the device until the end (one copy, no wait per batch); the labels never leave the host."""
    model.eval()
    logits_all, labels_all = [], []
    for batch in _progress(loader, desc, progress):
        x, _ = prepare_batch(batch, placement.device)
        with placement.autocast():
            logits = model(placement.input(x))
        logits_all.append(logits.float())
        labels_all.append(batch["label"])
    return torch.cat(logits_all).cpu(), torch.cat(labels_all)


def validate(model: nn.Module, loader: DataLoader, criterion: nn.Module, placement: Placement, num_classes: int, *,
             progress: bool = False) -> tuple[dict[str, float], np.ndarray]:
    """Validation metrics of all of the loader's clips. Under DDP each rank predicts its shard
    (the loader's EvaluationShard: 1/N of the forward passes each, where every rank used to
    predict every clip) and every rank then scores all of them: the single-process figures."""
    logits, labels = predict(model, loader, placement, progress=progress, desc="validate")
    total = len(cast(Sized, loader.dataset))
    logits = distributed.gather_shards(logits, total, placement.device)
    labels = distributed.gather_shards(labels, total, placement.device)
    metrics, per_class = validation_metrics(logits, labels, num_classes)  # the one implementation (metrics.py)
    loss = criterion(logits.to(placement.device), labels.to(placement.device)).item()
    return {"val_loss": loss, **{f"val_{k}": v for k, v in metrics.items()}}, per_class


# ---------------------------------------------------------------------------------------------
# fit


@dataclass
class FitSetup:
    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # ReduceLROnPlateau (stepped with a loss) or an epoch-stepped schedule
    train_loader: Any
    val_loader: Any
    placement: Placement  # device, precision, layout (device.py)
    num_classes: int
    config: Any  # Config
    scaler: torch.amp.GradScaler | None = None  # fp16 only

    @property
    def device(self) -> torch.device:
        return self.placement.device


def selection_score(history: list[dict[str, float]], window: int) -> float:
    """Mean validation mean class accuracy of the last `window` epochs; -inf until there are
    `window` of them.

    With one or two validation subjects, one epoch's score swings by 0.2 from noise alone
    (issue 9); the best single epoch is then mostly the luckiest one. The trailing mean rewards a
    model that has been good for several epochs in a row, and the model kept is the last of them.
    A shorter window at the start would be the same luck again: the mean of one epoch swings
    more than that of three, and a lucky first epoch set a bar that an untrained model then
    "failed" to beat until early stopping ended the run at epoch 11 (hard preset, RESULTS.md).
    """
    recent = [row["val_mean_class_acc"] for row in history if "val_mean_class_acc" in row][-window:]
    return float(np.mean(recent)) if len(recent) >= window else -math.inf


def window_loss(history: list[dict[str, float]], window: int) -> float:
    """Mean validation loss of the epochs selection_score averages (the tie-break between
    windows of equal score)."""
    recent = [row["val_loss"] for row in history if "val_loss" in row][-window:]
    return float(np.mean(recent)) if recent else math.inf


def _improvements(metrics: dict[str, float], score: float, loss: float, state: TrainState,
                  tiebreak: str) -> tuple[dict[str, bool], bool]:
    best_score = state.best.get("selection_score", -math.inf)
    # Saturated validation (every window at 1.000) ties: the first tied window would keep an
    # early, barely-fitted model and let early stopping end the run; the lower loss is the model
    # that is right with more confidence.
    tied_but_surer = (tiebreak == "val_loss" and math.isfinite(score) and score == best_score
                      and loss < state.best.get("selection_loss", math.inf))
    return {
        "val_loss": metrics["val_loss"] < state.best["val_loss"],
        "val_acc": metrics["val_acc"] > state.best["val_acc"],
        # the model (best_model.pt, registered): chosen by the smoothed score, not one epoch's
        "val_mean_class_acc": score > best_score or tied_but_surer,
    }, tied_but_surer


def _record_bests(metrics: dict[str, float], score: float, loss: float, improved: dict[str, bool],
                  state: TrainState, epoch: int) -> None:
    """best[val_loss|val_acc] are the best single epochs; best[val_mean_class_acc] is the score
    of the model kept (the epoch that ended the best window), best[selection_score] its window's
    (and best[selection_loss] that window's mean validation loss)."""
    for key, better in improved.items():
        if better:
            state.best[key] = metrics[key]
            state.best_epoch[key] = epoch
    if improved["val_mean_class_acc"]:
        state.best["selection_score"], state.best["selection_loss"] = score, loss


def _update_patience(score: float, tied_but_surer: bool, state: TrainState, min_delta: float) -> None:
    """Early stopping counts epochs since the smoothed score last rose by `min_delta`, or since a
    window tied with the best one became the kept model by its lower loss (validation is
    saturated but the model still gets surer: stopping there keeps an early model)."""
    if score > state.best.get("early_stop_ref", -math.inf) + min_delta:
        state.best["early_stop_ref"] = score
        state.stale_epochs = 0
    elif tied_but_surer:
        state.stale_epochs = 0
    else:
        state.stale_epochs += 1


def unwrap_model(model: nn.Module) -> nn.Module:
    """The C3D inside torch.compile's and DDP's wrappers (in either order), whose state dict has
    the plain parameter names that checkpoints and MLflow models store."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = cast(nn.Module, model._orig_mod)
        else:
            return model


def checkpoint_payload(setup: FitSetup, state: TrainState, metrics: dict[str, float]) -> dict[str, Any]:
    return {
        "model": unwrap_model(setup.model).state_dict(),
        "optimizer": setup.optimizer.state_dict(),
        "scheduler": setup.scheduler.state_dict(),
        "epoch": state.epoch,
        "metrics": dict(metrics),
        "config": to_saved_dict(setup.config),
        "state": state.to_dict(),
        "rng": ckpt.rng_state(),
        **({"scaler": setup.scaler.state_dict()} if setup.scaler is not None else {}),
    }


def restore(setup: FitSetup, payload: dict[str, Any]) -> TrainState:
    unwrap_model(setup.model).load_state_dict(payload["model"])
    setup.optimizer.load_state_dict(payload["optimizer"])
    load_scheduler(setup.scheduler, payload["scheduler"], setup.config.train.epochs)
    if setup.scaler is not None and "scaler" in payload:
        setup.scaler.load_state_dict(payload["scaler"])
    ckpt.restore_own_rng(payload)
    return TrainState.from_dict(payload["state"])


def load_scheduler(scheduler: Any, state: dict[str, Any], epochs: int) -> None:
    """The checkpoint's scheduler state, kept exact, except that a cosine schedule resumed for
    another number of epochs follows the cosine of the new length from the epoch it is at (the
    saved T_max would have the LR climb back to its peak after the old end)."""
    scheduler.load_state_dict(state)
    t_max = max(1, epochs)
    if not isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) or scheduler.T_max == t_max:
        return
    scheduler.T_max = t_max
    groups = scheduler.optimizer.param_groups
    for group, base in zip(groups, scheduler.base_lrs, strict=True):  # the closed form at the current epoch
        group["lr"] = scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(math.pi * scheduler.last_epoch / t_max)) / 2
    scheduler._last_lr = [group["lr"] for group in groups]
    log.info("cosine schedule resumed over %d epochs: lr %.2e at epoch %d", t_max, groups[0]["lr"], scheduler.last_epoch)


def epoch_summary(metrics: dict[str, float]) -> str:
    parts = [f"train loss {metrics['train_loss']:.4f} acc {metrics['train_acc']:.3f}"]
    if "val_loss" in metrics:
        parts.append(f"val loss {metrics['val_loss']:.4f} acc {metrics['val_acc']:.3f} "
                     f"mca {metrics['val_mean_class_acc']:.3f} top3 {metrics['val_top3_acc']:.3f}")
    if "val_rest_weight" in metrics:  # a kept model's, chosen on the validation videos
        parts.append(f"rest weight {metrics['val_rest_weight']:.2f}")
    parts.append(f"lr {metrics['lr']:.2e}")
    parts.append(f"{metrics['train_clips_per_s']:.0f} clips/s")
    if "data_wait_fraction" in metrics:
        parts.append(f"data wait {metrics['data_wait_fraction']:.0%}")
    return " | ".join(parts)


def step_scheduler(scheduler: Any, loss: float) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(loss)
    else:
        scheduler.step()


def run_epoch(setup: FitSetup, epoch: int, progress: bool,
              alarm: StarvationAlarm | None = None) -> tuple[dict[str, float], np.ndarray]:
    """Train one epoch, refresh BatchNorm statistics, validate, step the scheduler; returns the
    epoch's metrics and per-class validation accuracy (NaN without validation)."""
    cfg = setup.config.train
    loader = setup.train_loader
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    lr = setup.optimizer.param_groups[0]["lr"]
    train_metrics = train_one_epoch(setup.model, loader, setup.criterion, setup.optimizer, setup.placement,
                                    grad_clip=cfg.grad_clip, epoch=epoch, progress=progress,
                                    sync_every=cfg.sync_every, alarm=alarm, scaler=setup.scaler)
    recompute_bn_stats(setup.model, loader, setup.placement, cfg.precise_bn_batches)
    if setup.val_loader is None:  # train + val fit: nothing held out
        val_metrics: dict[str, float] = {}
        per_class = np.full(setup.num_classes, np.nan)
        step_scheduler(setup.scheduler, train_metrics["train_loss"])
    else:
        val_metrics, per_class = validate(setup.model, setup.val_loader, setup.criterion, setup.placement,
                                          setup.num_classes, progress=progress)
        step_scheduler(setup.scheduler, val_metrics["val_loss"])
    return {"epoch": float(epoch), **train_metrics, **val_metrics, "lr": lr}, per_class


def record_epoch(state: TrainState, metrics: dict[str, float], per_class: np.ndarray, cfg) -> dict[str, bool]:
    """Add the epoch to the state (history, bests, early-stopping count); returns which
    checkpoints it improves (`improved` for CheckpointManager.save)."""
    epoch = int(metrics["epoch"])
    if "val_loss" in metrics:
        # (a run shorter than the window is judged on all of its epochs)
        window = min(cfg.selection_window, cfg.epochs)
        score = selection_score([*state.history, metrics], window)
        loss = window_loss([*state.history, metrics], window)
        improved, tied_but_surer = _improvements(metrics, score, loss, state, cfg.selection_tiebreak)
        _record_bests(metrics, score, loss, improved, state, epoch)
        if epoch >= cfg.min_epochs and math.isfinite(score):  # patience counts from the first full window
            _update_patience(score, tied_but_surer, state, cfg.early_stop_min_delta)
    else:  # the latest model is the model: it is saved as BEST_MODEL and registered
        improved = {"val_mean_class_acc": True}
        state.best_epoch["val_mean_class_acc"] = epoch
    state.epoch = epoch
    state.history.append(metrics)
    state.per_class_history.append([float(v) for v in per_class])
    return improved


def fit(setup: FitSetup, checkpoints: ckpt.CheckpointManager | None, state: TrainState | None = None,
        callbacks: Iterable[EpochCallback] = (), progress: bool = True,
        stamp: Callable[[dict[str, Any]], dict[str, Any]] = lambda payload: payload,
        rest_weight: Callable[[nn.Module], float] | None = None) -> TrainState:
    """Train from `state.epoch + 1` to train.epochs, stopping early when the smoothed validation
    mean class accuracy (selection_score) has not risen by min_delta for `early_stop_patience`
    epochs, never before `min_epochs`. `stamp` adds run information to every checkpoint.
    `rest_weight` chooses the rest weight of each epoch whose checkpoint becomes a logged model
    (metrics `val_rest_weight`; the stamp carries it). The checkpoint of an epoch is written
    before the callbacks run, so a kill in between loses no epoch (the resume path logs what the
    tracker missed). Under DDP only rank 0 passes a checkpoint manager and callbacks; rank 0 also
    decides when to stop.
    A SIGTERM or SIGINT stops it at the next batch boundary with Preempted: the resume point is
    the last finished epoch's checkpoint (last.pt), so the resumed run stays exact."""
    cfg = setup.config.train
    state = state or TrainState()
    patience = cfg.early_stop_patience or math.inf  # 0: no early stopping
    if state.stale_epochs >= patience and state.epoch < cfg.epochs:  # resumed after it had stopped early
        log.warning("the run stopped early at epoch %d (validation not improved for %d epochs): nothing to train; "
                    "to train on to epoch %d, resume with a larger train.early_stop_patience (0: off)",
                    state.epoch, state.stale_epochs, cfg.epochs)
        return state
    with preemption.deferred():  # a signal stops at the next batch boundary (stop_if_signalled)
        return _fit_epochs(setup, checkpoints, state, callbacks, progress, stamp, patience, rest_weight)


def _fit_epochs(setup: FitSetup, checkpoints: ckpt.CheckpointManager | None, state: TrainState,
                callbacks: Iterable[EpochCallback], progress: bool, stamp: Callable[[dict[str, Any]], dict[str, Any]],
                patience: float, rest_weight: Callable[[nn.Module], float] | None) -> TrainState:
    cfg = setup.config.train
    alarm = StarvationAlarm(workers=loader_workers(setup.train_loader))  # warns once per run
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        metrics, per_class = run_epoch(setup, epoch, progress, alarm)
        improved = record_epoch(state, metrics, per_class, cfg)
        # Rank 0's checkpoint manager decides which epochs become logged models; every rank
        # calibrates its share of the videos for those (on the plain module: the ranks' shares
        # differ in length, and DDP's forward may be a collective).
        if rest_weight is not None and distributed.broadcast_flag(
                checkpoints is not None and checkpoints.keeps_model(epoch, improved, float(metrics.get("val_acc", 0.0))),
                setup.device):
            metrics["val_rest_weight"] = rest_weight(unwrap_model(setup.model))  # (in the history too: one dict)
        every_rank = distributed.gather_objects(ckpt.rng_state())  # a collective: every rank, every epoch
        payload = checkpoint_payload(setup, state, metrics)
        if every_rank is not None and len(every_rank) > 1:
            payload["rng_ranks"] = every_rank  # each rank resumes its own dropout stream
        saved = checkpoints.save(stamp(payload), improved) if checkpoints else []
        log.info("epoch %d/%d  %s", epoch, cfg.epochs, epoch_summary(metrics))
        # The checkpoint holds the RNG state of this moment: callbacks (tracking, pruning) must not
        # move it, or a resumed run would draw other dropout masks than the uninterrupted one.
        # None of exptrack's draws today (a logged model's C3D is rebuilt on the meta device);
        # restoring the state keeps a callback that does (a user's, a library's) harmless.
        rng = ckpt.rng_state()
        for callback in callbacks:
            callback(metrics, per_class, saved, state)
        ckpt.restore_rng_state(rng)
        stop_if_signalled(setup.device)  # a signal during validation: stop after this epoch's checkpoint
        if distributed.broadcast_flag(state.stale_epochs >= patience, setup.device) and epoch < cfg.epochs:
            log.info("early stopping: validation mean class accuracy (mean of the last %d epochs) has not "
                     "improved by %.4f for %d epochs", cfg.selection_window, cfg.early_stop_min_delta,
                     state.stale_epochs)
            break
    return state
