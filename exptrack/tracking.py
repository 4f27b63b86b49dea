"""Everything that talks to MLflow lives here; the rest of the package receives a run object.

Tracking follows MLflow's own defaults (MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db`` in
the working directory with artifacts under ``mlruns/``), so a plain ``mlflow ui`` in the same
folder shows every run. ``mlflow.tracking_uri`` in the config points elsewhere.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import mlflow
import mlflow.artifacts

from .config import Config, to_flat_dict, to_yaml

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

log = logging.getLogger("exptrack.tracking")
# MLflow's advice on integer columns (clip manifests, prediction tables: frame numbers and class
# ids are integers and never missing) repeats a paragraph on every run; it does not apply here.
warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column", category=UserWarning)


EXPERIMENT_KIND = "mlflow.experimentKind"


def use_tracking_uri(config: Config) -> None:
    """Point MLflow at the configured tracking store, if the config names one. Touches no store
    (workers starting together on a fresh SQLite file must not all create its tables)."""
    if config.mlflow.tracking_uri:
        mlflow.set_tracking_uri(config.mlflow.tracking_uri)


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a local ``sqlite:///`` store, or None for any other store."""
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    return Path(database) if database and database != ":memory:" else None


def _store_lock(uri: str):
    """A file lock beside a local SQLite store (`<db>.lock`), else nothing.

    MLflow creates its tables (alembic migrations) on a store's first use; two processes doing
    that at once on the same new file crash with "duplicate column name" or "table already
    exists". Whoever holds the lock creates the store and the experiment; the others then find
    both complete.
    """
    db = _sqlite_file(uri)
    if db is None:
        return nullcontext()
    from filelock import FileLock

    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(db) + ".lock")


def _set_experiment(name: str):
    """mlflow.set_experiment, tolerating another process creating the same experiment first."""
    try:
        return mlflow.set_experiment(name)
    except mlflow.exceptions.MlflowException as exc:
        if "already exists" not in str(exc) and getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
        return mlflow.set_experiment(name)  # it exists now: this time it is only looked up


def configure(config: Config) -> None:
    """Point MLflow at the configured tracking server (if any) and experiment; a fresh local
    SQLite store is created once even when several processes start together."""
    use_tracking_uri(config)
    if not os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run` the store exists and the experiment is fixed
        with _store_lock(mlflow.get_tracking_uri()):
            experiment = _set_experiment(config.mlflow.experiment)
        if EXPERIMENT_KIND not in experiment.tags:
            # MLflow 3's UI opens an experiment without this tag in its GenAI view (traces);
            # tagged, it opens on the runs table ("Machine learning" / model training)
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, "custom_model_development")


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def source_tags() -> dict[str, str]:
    """Git commit and dirty state of the exptrack checkout, and library versions."""
    import torch

    tags = {"torch_version": torch.__version__, "mlflow_version": mlflow.__version__,
            "python_version": platform.python_version()}
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["git_commit"] = commit
        tags["git_dirty"] = str(bool(_git("status", "--porcelain", "--untracked-files=no")))
    return tags


class Run:
    """A thin handle on an active MLflow run; the only way other modules log anything."""

    def __init__(self, run: mlflow.ActiveRun) -> None:
        self._run = run

    @property
    def id(self) -> str:
        return self._run.info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        mlflow.log_params({k: ("" if v is None else v) for k, v in params.items()})

    def log_config(self, config: Config) -> None:
        """The resolved config as flat params and as config.yaml."""
        self.log_params(to_flat_dict(config))
        mlflow.log_text(to_yaml(config), "config.yaml")

    def set_tags(self, tags: dict[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifacts(str(folder), artifact_path)

    def log_table(self, table: "pd.DataFrame", artifact_file: str) -> None:
        mlflow.log_table(table, artifact_file)

    def logged_steps(self, key: str) -> set[int]:
        """Steps at which metric `key` has been logged in this run."""
        return {m.step for m in mlflow.MlflowClient().get_metric_history(self.id, key)}

    def log_dataset(self, table: "pd.DataFrame", name: str, source: str, digest: str, context: str) -> None:
        """The clip manifest as an MLflow dataset input (shown under the run's Datasets)."""
        import warnings

        import mlflow.data

        with warnings.catch_warnings():  # a local path "can be interpreted in multiple ways": it is local
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(table, source=source, name=name, targets="label", digest=digest)
        mlflow.log_input(dataset, context=context)

    def log_pytorch_model(self, model: "torch.nn.Module", input_example: "np.ndarray", registered_model: str | None,
                          version_tags: dict[str, Any] | None = None) -> str | None:
        """Log `model` so that it loads back as the same nn.Module class (pickle format: the
        default pt2 export loads as a graph without named layers or hooks, which GradCAM needs),
        with a signature and input example, and register it as a new version. Returns the
        version number, or None when not registered."""
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        model = model.eval().cpu()
        with torch.no_grad():
            output = model(torch.from_numpy(input_example)).numpy()
        # MLflow warns on every pickle-format model; the format is chosen on purpose (above), and
        # exptrack's own loaders read the weights-only checkpoint, never this pickle.
        pytorch_log = logging.getLogger("mlflow.pytorch")
        level = pytorch_log.level
        pytorch_log.setLevel(logging.ERROR)
        try:
            info = mlflow.pytorch.log_model(
                model, name="model", serialization_format="pickle",
                signature=infer_signature(input_example, output), input_example=input_example,
                code_paths=[str(Path(__file__).resolve().parent)],
                registered_model_name=registered_model or None,
            )
        finally:
            pytorch_log.setLevel(level)
        version = getattr(info, "registered_model_version", None)
        if registered_model and version is not None:
            client = mlflow.MlflowClient()
            for key, value in {"run_id": self.id, **(version_tags or {})}.items():
                client.set_model_version_tag(registered_model, str(version), key, str(value))
        return None if version is None else str(version)

    def log_git_diff(self) -> None:
        """When the checkout is dirty, keep the diff with the run so it can be reproduced."""
        diff = _git("diff", "HEAD")
        if diff:
            mlflow.log_text(diff, "git_diff.patch")


@contextmanager
def start_run(config: Config, run_name: str, command: str, tags: dict[str, Any] | None = None,
              system_metrics: bool = False, run_id: str | None = None,
              parent_run_id: str | None = None) -> Iterator[Run]:
    """Start a run, resume `run_id`, or (under `mlflow run`) attach to the run MLflow created;
    it ends FAILED if the body raises."""
    configure(config)
    # `mlflow run` exports MLFLOW_RUN_ID for the run it created; start_run() attaches to it.
    attached = bool(os.environ.get("MLFLOW_RUN_ID")) and run_id is None and parent_run_id is None
    if parent_run_id and os.environ.get("MLFLOW_RUN_ID"):
        os.environ.pop("MLFLOW_RUN_ID")  # a child of a tune parent, not the run `mlflow run` made
    with mlflow.start_run(run_id=run_id, run_name=None if (attached or run_id) else run_name,
                          parent_run_id=parent_run_id if not run_id else None,
                          log_system_metrics=system_metrics and config.mlflow.log_system_metrics) as active:
        run = Run(active)
        run.set_tags({"exptrack.command": command, **source_tags(), **(tags or {})})
        if attached:
            mlflow.set_tag("mlflow.runName", run_name)
        # under `mlflow run` the run was created with a random name; it is called run_name now
        log.info("MLflow run %s (%s) at %s", run.id, run_name if attached else (active.info.run_name or run_name),
                 tracking_uri())
        yield run


def resolve_model_uri(uri: str) -> dict[str, str]:
    """models:/name@alias or models:/name/version -> {name, version, run_id, alias?}."""
    body = uri[len("models:/"):]
    client = mlflow.MlflowClient()
    if "@" in body:
        name, alias = body.split("@", 1)
        mv = client.get_model_version_by_alias(name, alias)
        return {"name": name, "version": str(mv.version), "run_id": mv.run_id, "alias": alias}
    name, version = body.rsplit("/", 1)
    mv = client.get_model_version(name, version)
    return {"name": name, "version": str(mv.version), "run_id": mv.run_id}


def download_run_artifact(run_id: str, path: str, dst: str | Path) -> Path:
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst)))


def set_model_version_tags(name: str, version: str, tags: dict[str, Any]) -> None:
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def log_artifacts_to_run(run_id: str, folder: str | Path, artifact_path: str) -> None:
    """Add files to an existing (possibly finished) run without reopening it."""
    mlflow.MlflowClient().log_artifacts(run_id, str(folder), artifact_path)


def model_versions(name: str) -> list[dict[str, Any]]:
    """Every version of a registered model: version, run_id, tags, aliases (oldest first)."""
    client = mlflow.MlflowClient()
    out = []
    for mv in client.search_model_versions(f"name='{name}'"):
        out.append({"version": str(mv.version), "run_id": mv.run_id, "tags": dict(mv.tags or {}),
                    "aliases": list(getattr(mv, "aliases", []) or [])})
    return sorted(out, key=lambda v: int(v["version"]))


def alias_version(name: str, alias: str) -> str | None:
    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def delete_model_version(name: str, version: str) -> None:
    mlflow.MlflowClient().delete_model_version(name, version)


def set_alias(name: str, alias: str, version: str) -> None:
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)


def create_parent_run(config: Config, run_name: str, tags: dict[str, Any]) -> str:
    """A run that stays RUNNING while children in this and other processes attach to it
    (created without becoming this process's active run)."""
    configure(config)
    client = mlflow.MlflowClient()
    run_id = os.environ.get("MLFLOW_RUN_ID")  # under `mlflow run`, the run it created
    if run_id:
        client.set_tag(run_id, "mlflow.runName", run_name)
    else:
        experiment = mlflow.get_experiment_by_name(config.mlflow.experiment)
        run_id = client.create_run(experiment.experiment_id, run_name=run_name).info.run_id
    for key, value in {**source_tags(), **tags}.items():
        client.set_tag(run_id, key, str(value))
    return run_id


def finish_run(run_id: str, status: str = "FINISHED") -> None:
    mlflow.MlflowClient().set_terminated(run_id, status)


def fail_run_if_running(run_id: str, tags: dict[str, Any]) -> bool:
    """End a run whose process died (it would stay RUNNING forever) as FAILED, with `tags`."""
    client = mlflow.MlflowClient()
    if client.get_run(run_id).info.status != "RUNNING":
        return False
    set_run_tags(run_id, tags)
    client.set_terminated(run_id, "FAILED")
    return True


def run_tags(run_id: str) -> dict[str, str]:
    return dict(mlflow.MlflowClient().get_run(run_id).data.tags)


def set_run_tags(run_id: str, tags: dict[str, Any]) -> None:
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def log_to_run(run_id: str, metrics: dict[str, float] | None = None, params: dict[str, Any] | None = None,
               folder: str | Path | None = None, artifact_path: str | None = None) -> None:
    client = mlflow.MlflowClient()
    for key, value in (metrics or {}).items():
        client.log_metric(run_id, key, float(value))
    for key, value in (params or {}).items():
        client.log_param(run_id, key, value)
    if folder is not None:
        client.log_artifacts(run_id, str(folder), artifact_path)

