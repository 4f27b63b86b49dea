"""The model registry and logged models, as exptrack uses them: registered models, versions,
aliases and version tags, a run's logged models and their weights file."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import mlflow.artifacts
from mlflow.entities import LoggedModelStatus
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from ..models.weights import WEIGHTS_FILE
from .store import _client

log = logging.getLogger("exptrack.tracking")

# A logged model's tags: its epoch, and "true" on the kept (best) one of its run.
EPOCH_TAG, BEST_TAG = "exptrack.epoch", "exptrack.best"
GROUP_MODEL_TAG = "group_model_id"  # a group run's tag: the model the group stands for (best member or ensemble)


@contextmanager
def quiet_downloads():
    """MLflow prints a progress bar per artifact download, also of one small file and into logs."""
    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous


@contextmanager
def quiet_model_logging():
    """MLflow logs an INFO line per input-example check (and a progress bar per download)."""
    levels = {name: logging.getLogger(name).level for name in ("mlflow.pyfunc", "mlflow.models.model")}
    for name in levels:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with quiet_downloads():
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _model_record(model: Any) -> dict[str, Any]:
    return {"model_id": model.model_id, "name": model.name, "status": str(getattr(model.status, "value", model.status)),
            "run_id": model.source_run_id, "tags": dict(model.tags or {}), "artifact_location": model.artifact_location,
            "metrics": {m.key: m.value for m in (model.metrics or [])}, "params": dict(model.params or {})}


def run_logged_models(run_id: str) -> list[dict[str, Any]]:
    """The logged models of a run that are not deleted, any status."""
    run = _client().get_run(run_id)
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         filter_string=f"source_run_id = '{run_id}'", output_format="list")
    return [_model_record(m) for m in models]


def best_logged_model(run_id: str) -> str | None:
    """The model id of a run's best logged model (the one tagged best, else the best-scoring); of
    a seed or fold group's run, the model the group stands for (groups.choose_model)."""
    group_model = _client().get_run(run_id).data.tags.get(GROUP_MODEL_TAG)
    if group_model:
        return group_model
    ready = [m for m in run_logged_models(run_id) if m["status"] == "READY"]
    best = [m for m in ready if m["tags"].get(BEST_TAG) == "true"]
    if not best:
        best = sorted(ready, key=lambda m: m["metrics"].get("val_mean_class_acc", -1.0), reverse=True)
    return best[0]["model_id"] if best else None


def logged_model(model_id: str) -> dict[str, Any]:
    return _model_record(_client().get_logged_model(model_id))


def set_logged_model_tags(model_id: str, tags: dict[str, Any]) -> None:
    _client().set_logged_model_tags(model_id, {k: str(v) for k, v in tags.items()})


def delete_logged_model(model_id: str) -> None:
    """Delete a logged model and its files (MLflow only marks it deleted; its weights would stay
    in the artifact store until `mlflow gc`)."""
    client = _client()
    location = client.get_logged_model(model_id).artifact_location
    client.delete_logged_model(model_id)
    try:
        get_artifact_repository(location).delete_artifacts()
    except Exception as exc:  # noqa: BLE001 - a store that cannot delete keeps the files; `mlflow gc` can
        log.warning("logged model %s deleted, but its files at %s stay (%s)", model_id, location, exc)
        return
    _remove_empty_local_folders(location, levels=2)  # <exp>/models/m-<id>/artifacts, m-<id>


def _remove_empty_local_folders(location: str, levels: int) -> None:
    """A local artifact folder and up to `levels` - 1 parents, as far as they are empty (what
    deleting a model's files leaves behind)."""
    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        return
    folder = Path(parsed.path if parsed.scheme == "file" else location)
    for _ in range(levels):
        try:
            if folder.exists():  # the artifact store may have removed the folder itself
                folder.rmdir()  # only when empty
        except OSError:
            return
        folder = folder.parent


def fail_pending_models(run_id: str) -> list[str]:
    """Logged models of `run_id` that never became READY: left PENDING by a process killed while
    uploading (marked FAILED first) or FAILED by an upload that could not delete its model (the
    store went away). Deleted with their files; returns their ids."""
    unfinished = [m for m in run_logged_models(run_id) if m["status"] in ("PENDING", "FAILED")]
    for m in unfinished:
        if m["status"] == "PENDING":
            _client().finalize_logged_model(m["model_id"], LoggedModelStatus.FAILED)
        delete_logged_model(m["model_id"])
    return [m["model_id"] for m in unfinished]


def register_logged_model(model_id: str, name: str, tags: dict[str, Any]) -> str:
    """A new version of `name` pinned to the logged model (its weights never change), with its
    tags set in the same call that creates it."""
    mv = mlflow.register_model(f"models:/{model_id}", name, tags={k: str(v) for k, v in tags.items()})
    return str(mv.version)


def _version_model_id(mv: Any) -> str | None:
    """The logged model a version points at (MLflow 3 stores it as the source models:/<id>)."""
    model_id = getattr(mv, "model_id", None)
    if model_id:
        return model_id
    source = mv.source or ""
    return source[len("models:/"):] if source.startswith("models:/m-") else None


def resolve_model_uri(uri: str) -> dict[str, str]:
    """models:/name@alias, models:/name/version, models:/name/latest or models:/<model id> ->
    {name?, version?, alias?, run_id, model_id?}; model_id is absent for a version that points at
    a run's files (registered before logged models)."""
    body = uri[len("models:/"):].rstrip("/")
    client = _client()
    if body.startswith("m-") and "/" not in body and "@" not in body:
        model = client.get_logged_model(body)
        return {"model_id": model.model_id, "run_id": model.source_run_id or ""}
    if "@" in body:
        name, alias = body.split("@", 1)
        mv = client.get_model_version_by_alias(name, alias)
        out = {"alias": alias}
    else:
        if "/" not in body:
            raise mlflow.exceptions.MlflowException(f"{uri}: which version? models:/{body}/<version>, "
                                                    f"models:/{body}@<alias> or models:/{body}/latest")
        name, version = body.rsplit("/", 1)
        if version == "latest":
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise mlflow.exceptions.MlflowException(f"registered model {name!r} has no versions")
            version = str(max(int(v.version) for v in versions))
        mv = client.get_model_version(name, version)
        out = {}
    model_id = _version_model_id(mv)
    return {**out, "name": name, "version": str(mv.version), "run_id": mv.run_id or "",
            **({"model_id": model_id} if model_id else {})}


def download_model_weights(model_id: str, dst: str | Path) -> Path:
    """The weights file of a logged model."""
    location = _client().get_logged_model(model_id).artifact_location
    with quiet_downloads():
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/artifacts/{WEIGHTS_FILE}",
                                                        dst_path=str(dst)))


def set_model_version_tags(name: str, version: str, tags: dict[str, Any]) -> None:
    client = _client()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def _version_record(mv: Any) -> dict[str, Any]:
    return {"version": str(mv.version), "run_id": mv.run_id, "model_id": _version_model_id(mv),
            "tags": dict(mv.tags or {}), "aliases": list(getattr(mv, "aliases", []) or [])}


def model_version(name: str, version: str) -> dict[str, Any]:
    return _version_record(_client().get_model_version(name, version))


def set_model_version_description(name: str, version: str, text: str) -> None:
    """The version's description (Markdown, shown on its page in the MLflow UI)."""
    _client().update_model_version(name, version, description=text)


def model_versions(name: str) -> list[dict[str, Any]]:
    """Every version of a registered model: version, run_id, model_id, tags, aliases (oldest first)."""
    client = _client()
    try:
        found = list(client.search_model_versions(f"name='{name}'"))
    except mlflow.exceptions.MlflowException:
        found = []
    out = [_version_record(mv) for mv in found]
    return sorted(out, key=lambda v: int(v["version"]))


def run_model_versions(run_id: str) -> list[dict[str, Any]]:
    """The registered versions (of any model) made from a run, newest first."""
    found = _client().search_model_versions(f"run_id='{run_id}'")
    return sorted(({"name": mv.name, "version": str(mv.version), "model_id": _version_model_id(mv)} for mv in found),
                  key=lambda v: int(v["version"]), reverse=True)


def alias_version(name: str, alias: str) -> str | None:
    try:
        return str(_client().get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def delete_model_version(name: str, version: str) -> None:
    _client().delete_model_version(name, version)


def set_alias(name: str, alias: str, version: str) -> None:
    _client().set_registered_model_alias(name, alias, version)
