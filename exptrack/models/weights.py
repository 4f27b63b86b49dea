"""The weights file: the one file format exptrack writes for a model and reads back.

Training checkpoints (training/checkpoint.py), a logged model's ``weights.pt`` and the files
`predict` and `promote` take are all this: a dict of tensors and plain Python values only (no
pickled objects), written atomically and read with `torch.load(..., weights_only=True)`, so
loading a model never runs a file's code. A logged model keeps the weights payload: the state
dict and what rebuilds and explains it (`weights_payload`), no optimizer state.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError

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


def load_weights(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
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


def weights_payload(checkpoint: dict[str, Any], class_names: list[str]) -> dict[str, Any]:
    """What a logged model keeps of a checkpoint: the weights and what rebuilds and explains them."""
    keep = ("model", "config", "epoch", "metrics", "run_id", "data_digest", "precision", "rest_weight")
    return {**{k: checkpoint[k] for k in keep if k in checkpoint}, "class_names": list(class_names)}
