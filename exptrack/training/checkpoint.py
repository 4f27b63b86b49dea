"""Checkpoints: written atomically, loaded with weights_only=True, pruned to the best few.

A checkpoint is a dict of tensors and plain Python values only (no pickled objects), so
`torch.load(..., weights_only=True)` can read it: model, optimizer and scheduler
state dicts, epoch, metrics, the resolved config as a nested dict, the training state (bests,
early-stopping counter, history) and the RNG states.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, ModelError
from ..models.weights import load_weights, save_atomic
from .distributed import rank_and_size, rank_seed

log = logging.getLogger("exptrack.train")

LAST = "last.pt"
BEST_LOSS = "best_val_loss.pt"
BEST_ACC = "best_val_acc.pt"
BEST_MODEL = "best_model.pt"  # best validation mean class accuracy: the model that is registered


def load_for_resume(path: Path) -> tuple[Path, dict[str, Any]]:
    """The checkpoint at `path`, or, when it cannot be read (a torn or damaged file), the newest
    complete one beside it (best_*.pt and epoch_*.pt carry the same resume state)."""
    try:
        return path, load_weights(path)
    except ModelError as first:
        found = []
        for other in path.parent.glob("*.pt"):
            if other != path:
                try:
                    payload = load_weights(other)
                except ModelError:
                    continue
                if "optimizer" in payload and "state" in payload:
                    found.append((payload["epoch"], other.name, other, payload))
        if not found:
            raise
        epoch, _, other, payload = max(found, key=lambda f: (f[0], f[1]))
        log.warning("%s; resuming from the newest complete checkpoint instead: %s (epoch %d)", first, other, epoch)
        return other, payload


def rng_state() -> dict[str, Any]:
    np_state: Any = np.random.get_state()  # ("MT19937", keys, pos, has_gauss, gauss)
    state = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_own_rng(payload: dict[str, Any]) -> None:
    """Restore this rank's RNG state from a checkpoint. Under DDP every rank's state is saved
    (`rng_ranks`, gathered to rank 0 at each checkpoint), so every rank continues its own stream
    exactly. A run resumed with another number of ranks cannot: each rank other than 0 then
    starts a fresh stream of its own (never rank 0's: the ranks would draw the same masks), and
    rank 0 says so. One process: `rng`, as always."""
    rank, world = rank_and_size()
    ranks = payload.get("rng_ranks")
    if ranks is not None and len(ranks) == world:
        restore_rng_state(ranks[rank])
        return
    restore_rng_state(payload["rng"])
    if world > 1 or ranks is not None:
        if rank == 0:
            log.warning("the checkpoint holds the random state of %d rank(s), this run has %d: each rank continues "
                        "with a stream of its own, not the one it would have drawn uninterrupted",
                        len(ranks) if ranks is not None else 1, world)
        else:  # a stream of this rank's own, from the run's seed and the epoch, in every generator
            seed = rank_seed((int(payload["config"]["train"]["seed"]) + int(payload["epoch"])) % 2**32, rank)
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():  # as many GPUs as both machines have
        for device, gpu_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(gpu_state, device)


class CheckpointManager:
    """last.pt every epoch (for resume), the three bests, and every N epochs the periodic
    checkpoints of which only the `keep` best (validation accuracy) stay on disk."""

    def __init__(self, folder: str | Path, every: int, keep: int) -> None:
        self.folder = Path(folder)
        self.every, self.keep = every, keep

    @property
    def _index_path(self) -> Path:
        return self.folder / "periodic.json"

    def keeps_model(self, epoch: int, improved: dict[str, bool], score: float) -> bool:
        """Whether this epoch writes a file that becomes a logged model (logged_models.ModelLog.
        snapshot): the new best model, or a periodic checkpoint that `score` (its val_acc) keeps
        among the `keep` best."""
        if improved.get("val_mean_class_acc"):
            return True
        name = self._periodic_name(epoch)
        return name is not None and name in dict(self._ranked(name, score)[: self.keep])

    def _periodic_name(self, epoch: int) -> str | None:
        return f"epoch_{epoch:04d}.pt" if self.every > 0 and epoch % self.every == 0 else None

    def _ranked(self, name: str, score: float) -> list[tuple[str, float]]:
        """The periodic checkpoints with `name` added, best first (scores from periodic.json)."""
        index = json.loads(self._index_path.read_text()) if self._index_path.exists() else {}
        index[name] = score
        return sorted(index.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)

    def save(self, payload: dict[str, Any], improved: dict[str, bool]) -> list[Path]:
        """Write this epoch's checkpoints; `improved` says which bests it beat. Returns the
        files written. A write that fails (full disk, read-only folder) leaves every earlier
        file whole (save_atomic) and raises CheckpointError saying how to go on."""
        try:
            return self._save(payload, improved)
        except OSError as exc:
            run = payload.get("run_id", "<run id>")
            raise CheckpointError(
                f"{self.folder}: cannot write the checkpoint of epoch {payload['epoch']} "
                f"({exc.strerror or exc}); the run stops here. Free space or make the folder writable, then "
                f"`exptrack train --resume {run}` continues after the last complete checkpoint") from None

    def _save(self, payload: dict[str, Any], improved: dict[str, bool]) -> list[Path]:
        # last.pt goes last: it is what resume trusts, so every file it implies must exist first
        written = []
        for name, flag in ((BEST_LOSS, "val_loss"), (BEST_ACC, "val_acc"), (BEST_MODEL, "val_mean_class_acc")):
            if improved.get(flag):
                written.append(save_atomic(payload, self.folder / name))
        periodic = self._periodic_name(payload["epoch"])
        if periodic:
            path = save_atomic(payload, self.folder / periodic)
            written.append(path)
            self._prune(path.name, float(payload["metrics"].get("val_acc", 0.0)))
        written.append(save_atomic(payload, self.folder / LAST))
        return written

    KEPT_AFTER_RUN = (LAST, BEST_MODEL)

    def drop_copies(self) -> tuple[int, int]:
        """At the end of a run: remove the checkpoints other than last.pt and best_model.pt, whose
        weights the run's logged models hold (periodic.json stays: it says which epochs' logged
        models are kept). Returns (files, bytes) removed."""
        files = size = 0
        for path in self.folder.glob("*.pt"):
            if path.name not in self.KEPT_AFTER_RUN:
                size += path.stat().st_size
                path.unlink(missing_ok=True)
                files += 1
        return files, size

    def kept_epochs(self) -> set[int]:
        """Epochs of the periodic checkpoints on disk."""
        return set(self.kept_files())

    def kept_files(self) -> dict[int, Path]:
        """The kept periodic checkpoints by epoch (their files are gone after drop_copies)."""
        index = json.loads(self._index_path.read_text()) if self._index_path.exists() else {}
        return {int(name[len("epoch_"):-len(".pt")]): self.folder / name for name in index}

    def _prune(self, name: str, score: float) -> None:
        """Keep the `keep` best periodic checkpoints; scores live in periodic.json so that
        pruning never has to load a checkpoint."""
        ranked = self._ranked(name, score)
        for dropped, _ in ranked[self.keep:]:
            (self.folder / dropped).unlink(missing_ok=True)
        kept = dict(ranked[: self.keep])
        tmp = self._index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(kept))
        os.replace(tmp, self._index_path)
