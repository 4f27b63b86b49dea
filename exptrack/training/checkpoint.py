"""Checkpoints: written atomically, loaded with weights_only=True, pruned to the best few.

A checkpoint is a dict of tensors and plain Python values only (no pickled objects), so
`torch.load(..., weights_only=True)` can read it: model, optimizer and scheduler
state dicts, epoch, metrics, the resolved config as a nested dict, the training state (bests,
early-stopping counter, history) and the RNG states.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, ModelError
from .distributed import rank_and_size, rank_seed

log = logging.getLogger("exptrack.train")

LAST = "last.pt"
BEST_LOSS = "best_val_loss.pt"
BEST_ACC = "best_val_acc.pt"
BEST_MODEL = "best_model.pt"  # best validation mean class accuracy: the model that is registered
WEIGHTS_FILE = "weights.pt"  # a logged model's weights (an artifact): the one file of it exptrack reads


def save_atomic(obj: dict[str, Any], path: Path) -> Path:
    """torch.save to a temp file in the same folder, fsync, then rename over `path`: a reader
    (or a crash) never sees half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as fh:
            try:
                torch.save(obj, fh)
            except RuntimeError as exc:  # torch's stream writer on a full disk: "unexpected pos 576 vs 534"
                if "unexpected pos" not in str(exc) and "PytorchStreamWriter" not in str(exc):
                    raise  # not a failed write (e.g. a CUDA error): as it is
                free = shutil.disk_usage(path.parent).free
                raise OSError(errno.ENOSPC if free < (64 << 20) else errno.EIO,
                              f"the write failed with {free} bytes free on its disk ({str(exc).splitlines()[0][:120]})"
                              ) from exc
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _disallowed(torch_message: str) -> str:
    """' (first: module.Class)' when torch's refusal names the disallowed global, else ''."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", torch_message)
    return f" (first: {found.group(1)[:120]})" if found else ""


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint, or ModelError naming the file if it is not one of exptrack's."""
    try:
        with warnings.catch_warnings():  # torch's protocol warning on a foreign pickle: the error below says it
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message advises weights_only=False, i.e. running the file's code: never relay it
        raise ModelError(f"{path}: not a readable checkpoint: not an exptrack checkpoint, or it holds objects "
                        f"other than tensors and plain values{_disallowed(str(exc))}, which exptrack refuses "
                        f"to load") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a foreign file
        first_line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ModelError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {first_line})") from None
    missing = {"model", "config", "epoch"} - set(payload) if isinstance(payload, dict) else {"model"}
    if missing:
        raise ModelError(f"{path}: not an exptrack checkpoint (missing {', '.join(sorted(missing))})")
    if not isinstance(payload["model"], dict) or not all(isinstance(v, torch.Tensor) for v in payload["model"].values()):
        raise ModelError(f"{path}: not an exptrack checkpoint (its 'model' entry is a {type(payload['model']).__name__}, "
                         "not a state dict of tensors)")
    return payload


def load_for_resume(path: Path) -> tuple[Path, dict[str, Any]]:
    """The checkpoint at `path`, or, when it cannot be read (a torn or damaged file), the newest
    complete one beside it (best_*.pt and epoch_*.pt carry the same resume state)."""
    try:
        return path, load(path)
    except ModelError as first:
        found = []
        for other in path.parent.glob("*.pt"):
            if other != path:
                try:
                    payload = load(other)
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
        epoch = payload["epoch"]
        if self.every > 0 and epoch % self.every == 0:
            path = save_atomic(payload, self.folder / f"epoch_{epoch:04d}.pt")
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
        index = json.loads(self._index_path.read_text()) if self._index_path.exists() else {}
        return {int(name[len("epoch_"):-len(".pt")]) for name in index}

    def _prune(self, name: str, score: float) -> None:
        """Keep the `keep` best periodic checkpoints; scores live in periodic.json so that
        pruning never has to load a checkpoint."""
        index = json.loads(self._index_path.read_text()) if self._index_path.exists() else {}
        index[name] = score
        ranked = sorted(index.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
        for dropped, _ in ranked[self.keep:]:
            (self.folder / dropped).unlink(missing_ok=True)
        kept = dict(ranked[: self.keep])
        tmp = self._index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(kept))
        os.replace(tmp, self._index_path)
