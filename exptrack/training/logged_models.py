"""A train run's kept checkpoints as MLflow LoggedModels, and the registration of its best one.

An epoch whose checkpoint is kept (it is the new best model, or a periodic checkpoint) is logged
as a LoggedModel at `step=epoch`: the weights only (models/weights.py weights_payload), as an MLflow pyfunc
model. When a later epoch supersedes it (no longer the best and no longer among the kept periodic
checkpoints) it is deleted with its files, unless a registered version of any name points at it
(a group or tune may register a member run's model): a run holds `train.keep_checkpoints` + 1
models and the registered ones. A registered version points at its logged model
(`models:/<model id>`), never at a file that later epochs overwrite.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .. import model_card, tracking
from ..tracking import registry
from ..models.weights import WEIGHTS_FILE, load_weights, save_atomic, weights_payload
from . import checkpoint as ckpt

log = logging.getLogger("exptrack.train")



class ModelLog:
    """The logged models of one train run, by epoch."""

    def __init__(self, run: tracking.Run, manager: ckpt.CheckpointManager, class_names: list[str],
                 registered_model: str | None) -> None:
        self.run, self.manager, self.class_names = run, manager, class_names
        self.registered_model = registered_model or None
        self.by_epoch: dict[int, str] = {}
        self.best_epoch: int | None = None

    def clean_pending(self) -> None:
        """Models whose upload was cut off (a killed process, a failed upload) are failed and deleted."""
        for model_id in registry.fail_pending_models(self.run.id):
            log.info("logged model %s was left unfinished (upload cut off): deleted", model_id)

    def recover(self) -> None:
        """After a resume: unfinished models are deleted; the READY ones are this run's models again."""
        self.clean_pending()
        for m in self.run.logged_models():
            if m["status"] == "READY" and m["tags"].get(registry.EPOCH_TAG, "").isdigit():
                self.by_epoch[int(m["tags"][registry.EPOCH_TAG])] = m["model_id"]
                if m["tags"].get(registry.BEST_TAG) == "true":
                    self.best_epoch = int(m["tags"][registry.EPOCH_TAG])

    def snapshot(self, epoch: int, saved: list[Path]) -> Path | None:
        """This epoch's weights, copied now if one of the files it `saved` is kept (best or
        periodic): the files themselves are overwritten by later epochs before a queued upload
        may run."""
        # a periodic checkpoint outside the `keep` best is deleted as soon as it is written
        kept = [p for p in saved if (p.name == ckpt.BEST_MODEL or p.name.startswith("epoch_")) and p.exists()]
        if not kept:
            return None
        payload = weights_payload(load_weights(kept[0]), self.class_names)
        folder = self.manager.folder.parent / "pending-models" / f"epoch_{epoch:04d}"
        return save_atomic(payload, folder / WEIGHTS_FILE)  # logged as it is

    def after_epoch(self, epoch: int, snapshot: Path | None, best_epoch: int | None) -> str | None:
        """Log the epoch's snapshot (if any) as a model, retag the best, delete what is
        superseded. Returns the epoch's model id (None when the epoch kept no checkpoint)."""
        model_id = None
        if snapshot is not None:
            model_id = self.log_file(snapshot, epoch)
            shutil.rmtree(snapshot.parent, ignore_errors=True)
            try:
                snapshot.parent.parent.rmdir()  # pending-models/, once no other snapshot waits
            except OSError:
                pass
        self._mark_best(best_epoch)
        self.prune()
        return model_id

    def log_file(self, path: Path, epoch: int) -> str:
        """Log the checkpoint or weights file at `path` (of `epoch`) as a model, once. A weights
        file (a snapshot) is logged as it is; a checkpoint is reduced to its weights first."""
        if epoch in self.by_epoch:
            return self.by_epoch[epoch]
        payload = weights_payload(load_weights(path), self.class_names)
        d = payload["config"]["data"]
        metrics = payload.get("metrics", {})
        tags = {registry.EPOCH_TAG: epoch, registry.BEST_TAG: "false", "exptrack.data_digest": payload.get("data_digest", ""),
                **{f"exptrack.{k}": round(v, 6) for k, v in metrics.items() if k.startswith("val_")}}
        with tempfile.TemporaryDirectory(prefix="exptrack-model-") as tmp:
            weights = path if path.name == WEIGHTS_FILE else save_atomic(payload, Path(tmp) / WEIGHTS_FILE)
            model_id = self.run.log_clip_model(weights, d["clip_len"], self.class_names, epoch, tags)
        self.by_epoch[epoch] = model_id
        return model_id

    def _mark_best(self, best_epoch: int | None) -> None:
        if best_epoch == self.best_epoch or best_epoch not in self.by_epoch:
            return
        if self.best_epoch in self.by_epoch:
            registry.set_logged_model_tags(self.by_epoch[self.best_epoch], {registry.BEST_TAG: "false"})
        registry.set_logged_model_tags(self.by_epoch[best_epoch], {registry.BEST_TAG: "true"})
        self.best_epoch = best_epoch

    def registered(self) -> dict[str, str]:
        """model id -> the lowest version of `registered_model` that points at it (this run's)."""
        out: dict[str, str] = {}
        if self.registered_model:
            for v in registry.model_versions(self.registered_model):
                if v["run_id"] == self.run.id and v["model_id"] and v["model_id"] not in out:
                    out[v["model_id"]] = v["version"]
        return out

    def prune(self) -> None:
        needed = self.manager.kept_epochs() | ({self.best_epoch} if self.best_epoch is not None else set())
        # Any registered version keeps its weights, whoever registered it: a group member's run
        # registers nothing itself, yet its group (or tune) may have registered one of its models.
        registered = {v["model_id"] for v in registry.run_model_versions(self.run.id)} \
            if any(e not in needed for e in self.by_epoch) else set()
        for epoch in [e for e in self.by_epoch if e not in needed]:
            if self.by_epoch[epoch] not in registered:
                registry.delete_logged_model(self.by_epoch[epoch])
            del self.by_epoch[epoch]

    def ensure_kept(self, best_epoch: int | None) -> str | None:
        """At the end of the run: every kept model logged (the best and the kept periodic
        checkpoints), from its file where its epoch's logging failed (a tracking outage, or a kill
        during an upload that the resume found unfinished); the best model's id."""
        self.clean_pending()  # e.g. an upload that failed during a tracking outage
        self._ensure_kept_periodic()
        path = self.manager.folder / ckpt.BEST_MODEL
        if best_epoch is None or not path.exists():
            return None
        model_id = self.log_file(path, best_epoch)
        self._mark_best(best_epoch)
        return model_id

    def _ensure_kept_periodic(self) -> None:
        """Kept periodic checkpoints without a logged model are logged from their files, before
        the end of the run removes those files (checkpoint_files=resume); snapshots whose upload
        never happened are then of no use."""
        for epoch, path in sorted(self.manager.kept_files().items()):
            if epoch not in self.by_epoch and path.exists():
                log.info("epoch %d's kept checkpoint had no logged model (its upload was cut off): logged now", epoch)
                self.log_file(path, epoch)
        shutil.rmtree(self.manager.folder.parent / "pending-models", ignore_errors=True)

    def register(self, model_id: str) -> str | None:
        """The version that points at `model_id`, registering it when none does yet (a resumed
        run whose best did not change registers nothing new)."""
        if not self.registered_model:
            return None
        return self.registered().get(model_id) or register(model_id, self.registered_model)


HEADLINE = "val_mean_class_acc"  # the validation score a version's tags carry (the rest is on its card)


def version_tags(model: dict[str, Any]) -> dict[str, Any]:
    """What a registered version says about itself in tags, from its logged model: its run, the
    data it was trained on (the training digest; promotion compares evaluation digests,
    promote.py) and its headline validation score. The rest (its epoch, every figure) is on its
    model card."""
    tags = model["tags"]
    return {"run_id": model["run_id"], "training_data_digest": tags.get("exptrack.data_digest", ""),
            **({HEADLINE: tags[f"exptrack.{HEADLINE}"]} if f"exptrack.{HEADLINE}" in tags else {})}


def register(model_id: str, name: str, extra_tags: dict[str, Any] | None = None) -> str:
    """A new version of `name` pinned to the logged model `model_id`. Its tags (and `extra_tags`,
    e.g. a seed group's figures) are set in the same call that creates it, so a kill leaves a
    complete version or none; its model card follows."""
    tags = {**version_tags(registry.logged_model(model_id)), **(extra_tags or {})}
    version = registry.register_logged_model(model_id, name, tags)
    model_card.refresh(name, version)
    return version
