"""Turn a model reference into a C3D module and the config it was trained with.

References: ``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``runs:/<run id>/...``,
a bare run id, or a local checkpoint file. Every path ends in a checkpoint loaded with
``torch.load(weights_only=True)`` and a C3D rebuilt from the checkpoint's own config, so
loading a model never unpickles arbitrary objects.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import tracking
from .config import Config, config_from_dict
from .errors import ModelError
from .models.c3d import C3D, build_model
from .training import checkpoint as ckpt

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class LoadedModel:
    model: C3D
    config: Config
    source: dict[str, str] = field(default_factory=dict)  # uri, and name/version/run_id where known


def _checkpoint_of_run(run_id: str, dst: Path) -> Path:
    try:
        return tracking.download_run_artifact(run_id, f"checkpoints/{ckpt.BEST_MODEL}", dst)
    except Exception as exc:  # noqa: BLE001 - MLflow raises several kinds here
        raise ModelError(f"run {run_id} has no checkpoints/{ckpt.BEST_MODEL} artifact ({exc})") from exc


def resolve_checkpoint(reference: str, download_dir: Path) -> tuple[Path, dict[str, str]]:
    """The checkpoint file behind a model reference (downloaded into `download_dir` when it
    lives in MLflow), and what it was resolved from."""
    source = {"uri": reference}
    if reference.startswith("models:/"):
        try:
            source.update(tracking.resolve_model_uri(reference))
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"model {reference} not found in the registry ({exc})") from exc
        return _checkpoint_of_run(source["run_id"], download_dir), source
    if reference.startswith("runs:/"):
        run_id = reference[len("runs:/"):].split("/", 1)[0]
        source["run_id"] = run_id
        return _checkpoint_of_run(run_id, download_dir), source
    path = Path(reference)
    if path.is_file():
        return path, source
    if _RUN_ID.match(reference):
        source["run_id"] = reference
        return _checkpoint_of_run(reference, download_dir), source
    raise ModelError(f"model {reference!r}: not a models:/ or runs:/ URI, a run id, or a checkpoint file")


def load_model(reference: str, device: torch.device | str = "cpu") -> LoadedModel:
    # The download is only needed until the weights are in memory; a kept copy per call
    # would fill /tmp over many evaluate/visualize calls.
    with tempfile.TemporaryDirectory(prefix="exptrack-model-") as tmp:
        path, source = resolve_checkpoint(reference, Path(tmp))
        payload = ckpt.load(path)
    config = config_from_dict(payload["config"], str(path))
    model = build_model(config.model)
    model.load_state_dict(payload["model"])
    source.setdefault("run_id", payload.get("run_id", ""))
    return LoadedModel(model.to(device).eval(), config, source)
