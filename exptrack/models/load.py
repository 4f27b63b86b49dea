"""Turn any model reference into a C3D module and the config it was trained with: the one loader
of evaluate, visualize, predict and promote.

References:
- ``models:/<name>/<version>``, ``models:/<name>@<alias>``, ``models:/<name>/latest``: a
  registered version, i.e. the logged model it points at (its weights never change);
- ``models:/<model id>`` (``m-...``): a logged model;
- ``runs:/<run id>`` or a bare run id: the run's newest registered version, else its best
  logged model (a tune trial is not registered); ``runs:/<run id>/<file>.pt`` that artifact;
- a local checkpoint file.

Every path ends in a weights file loaded with ``torch.load(weights_only=True)`` and a C3D
rebuilt from the file's own config, so loading a model never unpickles arbitrary objects.
Versions and runs from before logged models (whose weights were the run's
``checkpoints/best_model.pt``) still load.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import tracking
from ..tracking import registry
from ..config import Config, config_from_dict
from ..data.layout import output_names
from ..device import FP32, Placement, bind, placement
from ..errors import ModelError
from .c3d import C3D, C3DEnsemble, model_with_weights
from .weights import load_weights


# where a run kept its model before logged models (training/checkpoint.py BEST_MODEL then): a
# fixed path, since old runs keep it whatever the checkpoint names become
LEGACY_CHECKPOINT = "checkpoints/best_model.pt"


@dataclass
class LoadedModel:
    model: C3D | C3DEnsemble
    config: Config
    # uri, and name/version/alias/run_id/model_id where known
    source: dict[str, str] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    # where and how it is scored: the device asked for, with the precision and layout of the
    # model's own train config (device.placement, not strict): scored as it was trained
    placement: Placement = field(default_factory=lambda: Placement(torch.device("cpu"), FP32))
    # what timelines multiply the rest probability by: chosen on the validation videos when it
    # was trained (metrics.calibrated_rest_weight), else the training windows' prior
    # (clips.rest_weight); 1.0 for a model without a rest output or saved before the weight
    rest_weight: float = 1.0

    def timeline_tags(self) -> dict[str, str]:
        """What a run that draws this model's timelines (evaluate, predict) records of how: the
        rest weight, for a model with a rest output."""
        return {"rest_weight": f"{self.rest_weight:.4g}"} if self.config.model.rest_index is not None else {}


def _run_artifact(run_id: str, path: str, dst: Path) -> Path:
    try:
        return tracking.download_run_artifact(run_id, path, dst)
    except Exception as exc:  # noqa: BLE001 - MLflow raises several kinds here
        raise ModelError(f"run {run_id} has no logged model, registered version or {path} artifact ({exc})") from exc


def _weights(source: dict[str, str], dst: Path) -> Path:
    """The weights file of a resolved reference: its logged model's, else (older versions and
    runs) the run's checkpoint artifact."""
    if source.get("model_id"):
        return registry.download_model_weights(source["model_id"], dst)
    return _run_artifact(source["run_id"], LEGACY_CHECKPOINT, dst)


def _resolve_run(run_id: str) -> dict[str, str]:
    """A run's model: its newest registered version, else its best logged model."""
    source = {"run_id": run_id}
    versions = [v for v in registry.run_model_versions(run_id) if v["model_id"]]
    if versions:
        source.update({k: versions[0][k] for k in ("name", "version", "model_id")})
    elif (model_id := registry.best_logged_model(run_id)) is not None:
        source["model_id"] = model_id
    return source


def resolve_weights(reference: str, download_dir: Path) -> tuple[Path, dict[str, str]]:
    """The weights file behind a model reference (downloaded into `download_dir` when it lives in
    MLflow), and what it was resolved from."""
    source = {"uri": reference}
    try:
        if reference.startswith("models:/"):
            source.update(registry.resolve_model_uri(reference))
            return _weights(source, download_dir), source
        run_id, _, path = reference[len("runs:/"):].partition("/") if reference.startswith("runs:/") else ("", "", "")
        if run_id and path.endswith(".pt"):
            source["run_id"] = run_id
            return _run_artifact(run_id, path, download_dir), source
        if Path(reference).is_file():
            return Path(reference), source
        run_id = run_id or (reference if tracking.is_run_id(reference) else "")
        if run_id:
            source.update(_resolve_run(run_id))
            return _weights(source, download_dir), source
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow raises several kinds for unknown names and ids
        raise ModelError(f"model {reference}: not found ({exc})") from exc
    raise ModelError(f"model {reference!r}: not a models:/ or runs:/ URI, a run id, or a checkpoint file")


def load_model(reference: str, device: torch.device | str = "cpu") -> LoadedModel:
    """The model behind `reference`, on `device` in the precision and layout of its own config."""
    # The download is only needed until the weights are in memory; a kept copy per call
    # would fill /tmp over many evaluate/visualize calls.
    with tempfile.TemporaryDirectory(prefix="exptrack-model-") as tmp:
        path, source = resolve_weights(reference, Path(tmp))
        payload = load_weights(path)
    # named by the reference: `path` is a download already gone for anything but a checkpoint file
    config = config_from_dict(payload["config"], f"model {reference}")
    try:
        model = model_with_weights(config.model, payload["model"])
    except RuntimeError as exc:  # e.g. "size mismatch for classifier.4.weight": an edited or mixed-up file
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line or "Missing" in line
                       or "Unexpected" in line), str(exc).splitlines()[0])
        raise ModelError(f"model {reference}: its weights do not fit the C3D its own config describes "
                         f"(model.num_classes {config.model.num_classes}, model.rest_class {config.model.rest_class}, model.width {config.model.width}): "
                         f"{detail[:200]}") from None
    source.setdefault("run_id", payload.get("run_id", ""))
    # on its own GPU (cuda:N made current: nothing opens a context on GPU 0), in the precision it was trained in
    where = placement(config.train, bind(torch.device(device)), strict=False, trained=payload.get("precision"))
    where.prepare(model).eval()  # in place: .to() moves a module's own tensors
    return LoadedModel(model, config, source, class_names_of(payload, config), where,
                       float(payload.get("rest_weight", 1.0)))


def class_names_of(payload: dict[str, Any], config: Config) -> list[str]:
    """The one class-names rule (every command and the served model): the model's own names; a
    model saved before it kept them: the classes.csv of the data it was trained on; else ids."""
    names = list(payload.get("class_names") or [])
    m = config.model
    return names if len(names) == m.outputs else output_names(config.data.root, m.num_classes, m.rest_class)
