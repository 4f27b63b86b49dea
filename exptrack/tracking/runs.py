"""Runs: starting one (or attaching to the one `mlflow run` made, or resuming one) with its
resolved config, the `Run` handle other modules log through, parent runs, and what other
modules read and write on existing runs by id.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import subprocess
import tempfile
import time
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import mlflow
import mlflow.artifacts
import torch
import yaml
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import (DatasetInput, InputTag, LoggedModelInput, LoggedModelOutput, LoggedModelStatus, Metric,
                              Param, RunTag)
from mlflow.tracking.context import registry as context_registry
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from ..config import Config, to_flat_dict, to_yaml
from ..preemption import PREEMPTED_TAG, Preempted
from ..serving.package import save_clip_model
from . import registry
from .registry import quiet_downloads, quiet_model_logging
from .store import _client, configure, tracking_uri
from .system_metrics import SystemMetrics

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("exptrack.tracking")
# MLflow's advice on integer columns (clip manifests, prediction tables: frame numbers and class
# ids are integers and never missing) repeats a paragraph on every run; it does not apply here.
warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column", category=UserWarning)



def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def source_tags() -> dict[str, str]:
    """Git commit and dirty state of the exptrack checkout, and library versions."""
    tags = {"torch_version": torch.__version__, "mlflow_version": mlflow.__version__,
            "python_version": platform.python_version()}
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["git_commit"] = commit
        tags["git_dirty"] = str(bool(_git("status", "--porcelain", "--untracked-files=no")))
    return tags



# The shape of the names MLflow makes up for a run created without one (`bemused-bat-412`).
_MLFLOW_MADE_UP_NAME = re.compile(r"[a-z]+-[a-z]+-\d{1,3}")


def _named_by_mlflow(run_name: str | None) -> bool:
    """Whether `run_name` is a name MLflow made up, not one the user gave (`mlflow run --run-name`)."""
    return not run_name or len(run_name) <= 20 and _MLFLOW_MADE_UP_NAME.fullmatch(run_name) is not None


# Characters MLflow refuses in a logged model's name; a run's name may hold any of them (a group
# run is named by the overrides typed: `folds-3 optim.lr=0.001 data.root=/data`).
_MODEL_NAME_REFUSED = str.maketrans({c: "_" for c in "/:.%\"'"})


def _model_name_part(run_name: str) -> str:
    """`run_name` as part of a logged model's name: MLflow's refused characters become `_`."""
    return run_name.translate(_MODEL_NAME_REFUSED)


class Run:
    """A handle on one MLflow run, by id: the only way other modules log anything. Every call
    names the run (MLflow's client API, no "active run"), so any thread may use it: the
    background tracker's worker does, and a group's run and its members' are open at once."""

    def __init__(self, run_id: str) -> None:
        self.id = run_id

    def log_params(self, params: dict[str, Any]) -> None:
        mlflow.log_params({k: ("" if v is None else v) for k, v in params.items()}, run_id=self.id)

    def log_config(self, config: Config, invocation: dict[str, str] | None = None) -> None:
        """The resolved config as flat params and as config.yaml, with what the user typed
        (`invocation`: the `config` and `overrides` params, as the MLproject logs them).

        Params cannot change once logged: keys the run already has (the ones `mlflow run` logged,
        or a resumed run's own) are left as they are. config.yaml is the config the run last ran
        under: a resume that changed it (`--epochs 20`) rewrites it, so the next resume (and a
        group's members) continue from that, not from the first start's."""
        run = _client().get_run(self.id)
        params = {**(invocation or {}), **to_flat_dict(config)}
        self.log_params({k: v for k, v in params.items() if k not in run.data.params})
        _client().log_text(self.id, to_yaml(config), "config.yaml")

    def set_tags(self, tags: dict[str, Any]) -> None:
        set_run_tags(self.id, tags)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, model_id: str | None = None,
                    dataset: Any = None) -> None:
        """`model_id` links the values to a logged model (its page and search_logged_models
        show them); `dataset` (from `dataset()`, logged as an input of the run first) says which
        data they were measured on. Only the model named is linked: MLflow's own log_metrics
        would also link every model the run logged at the same step."""
        if not metrics:
            return
        now = int(time.time() * 1000)
        name, digest = (dataset.name, dataset.digest) if dataset is not None else (None, None)
        _client().log_batch(self.id, metrics=[Metric(k, float(v), now, step or 0, model_id=model_id, dataset_name=name,
                                                     dataset_digest=digest, run_id=self.id)
                                              for k, v in metrics.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        _client().log_artifact(self.id, str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        _client().log_artifacts(self.id, str(folder), artifact_path)

    def log_table(self, table: "pd.DataFrame", artifact_file: str) -> None:
        mlflow.log_table(table, artifact_file, run_id=self.id)

    def latest_metrics(self, keys: tuple[str, ...]) -> dict[str, float]:
        """The last logged value of each of `keys` that this run has."""
        metrics = _client().get_run(self.id).data.metrics
        return {k: metrics[k] for k in keys if k in metrics}

    def logged_steps(self, key: str) -> set[int]:
        """Steps at which metric `key` has been logged in this run."""
        return set(metric_history(self.id, key))

    @staticmethod
    def dataset(table: "pd.DataFrame", name: str, source: str, digest: str) -> Any:
        """An MLflow dataset for a clip manifest (to log as an input, or to link metrics to)."""
        with warnings.catch_warnings():  # a local path "can be interpreted in multiple ways": it is local
            warnings.simplefilter("ignore", UserWarning)
            return from_pandas(table, source=source, name=name, targets="label", digest=digest)

    def log_dataset(self, dataset: Any, context: str) -> None:
        """Shown under the run's Datasets."""
        _client().log_inputs(self.id, datasets=[DatasetInput(dataset._to_mlflow_entity(),
                                                             tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])])

    def log_model_input(self, model_id: str) -> None:
        """The run used this logged model (an evaluation): listed on the model's page."""
        _client().log_inputs(self.id, models=[LoggedModelInput(model_id)])

    def log_clip_model(self, weights: Path, clip_len: int, class_names: list[str], epoch: int,
                       tags: dict[str, Any], label: str | None = None) -> str:
        """Log a weights file as an MLflow LoggedModel of this run at `step=epoch` (pyfunc,
        serving/package.py); returns its model id.

        Made in steps rather than with `mlflow.pyfunc.log_model`, which links every metric the run
        has at that step to the model (system metrics, training loss): the model's page then
        lists those first. Here only the metrics exptrack links (validation, evaluation) are
        the model's. The name is unique in the experiment: `<run name>-<run id[:8]>-epoch-NNNN`
        (or `-<label>`, e.g. a group's ensemble)."""
        client = _client()
        run = client.get_run(self.id)
        name = f"{_model_name_part(run.info.run_name or 'run')}-{self.id[:8]}-{label or f'epoch-{epoch:04d}'}"
        model = mlflow.initialize_logged_model(name=name, source_run_id=self.id, experiment_id=run.info.experiment_id,
                                               tags={k: str(v) for k, v in tags.items()},
                                               params={k: str(v) for k, v in run.data.params.items()})
        try:
            with tempfile.TemporaryDirectory(prefix="exptrack-model-") as tmp, quiet_model_logging():
                local = Path(tmp) / "model"
                save_clip_model(local, weights, clip_len, class_names, model.model_id, self.id)
                client.log_model_artifacts(model.model_id, str(local))
            client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
            client.log_outputs(self.id, [LoggedModelOutput(model.model_id, step=epoch)])  # the run's Logged models
        except BaseException:
            # The caller retries (training's background tracker): each attempt would leave a model
            # behind. What this cannot delete now (the store is away) the run's next clean-up does.
            _discard_failed_model(model.model_id)
            raise
        return model.model_id

    def logged_models(self) -> list[dict[str, Any]]:
        return registry.run_logged_models(self.id)


    def log_git_diff(self) -> None:
        """When the checkout is dirty, keep the diff with the run so it can be reproduced."""
        diff = _git("diff", "HEAD")
        if diff:
            _client().log_text(self.id, diff, "git_diff.patch")


def _discard_failed_model(model_id: str) -> None:
    """Mark a model whose logging failed FAILED and delete it; never raises (the tracker may be
    what failed: registry.fail_pending_models deletes it later)."""
    try:
        _client().finalize_logged_model(model_id, LoggedModelStatus.FAILED)
        registry.delete_logged_model(model_id)
    except Exception:  # noqa: BLE001
        log.debug("logged model %s: could not be discarded now", model_id, exc_info=True)


@contextmanager
def start_run(config: Config, run_name: str, command: str, tags: dict[str, Any] | None = None,
              system_metrics: bool = False, run_id: str | None = None,
              parent_run_id: str | None = None, invocation: dict[str, str] | None = None) -> Iterator[Run]:
    """Start a run, resume `run_id`, or (under `mlflow run`) attach to the run MLflow created;
    every one carries its resolved config (Run.log_config). It ends FINISHED, FAILED if the body
    raises (tag `exptrack.failure` says why), or KILLED when a signal stopped it."""
    experiment_id = configure(config, run_id=run_id, parent_run_id=parent_run_id)
    # `mlflow run` exports MLFLOW_RUN_ID for the run it created: this command's run is that one.
    # Taken out of the environment once used (as MLflow's own start_run does): the runs this
    # process makes after it (tune trials, evaluations) are new runs.
    project_run = os.environ.get("MLFLOW_RUN_ID") if run_id is None and parent_run_id is None else None
    if project_run or parent_run_id:
        os.environ.pop("MLFLOW_RUN_ID", None)
    existing = run_id or project_run
    run = Run(existing or _create_run(experiment_id, run_name, parent_run_id))
    if existing:
        _client().update_run(existing, status="RUNNING")
    with ExitStack() as stack:
        metrics = stack.enter_context(SystemMetrics(run.id, resumed=bool(existing)))  # stops after the run ends
        stack.enter_context(_ended(run.id))  # from here a signal or an error ends the run: it is never left RUNNING
        if system_metrics and config.mlflow.log_system_metrics:
            metrics.start()
        run.set_tags({"exptrack.command": command, **source_tags(), **(tags or {})})
        if project_run and _named_by_mlflow(_client().get_run(run.id).info.run_name):
            run.set_tags({"mlflow.runName": run_name})  # `mlflow run` without --run-name: a random name
        run.log_config(config, invocation)
        name = _client().get_run(run.id).info.run_name if run_id else run_name  # a resume keeps its own name
        log.info("MLflow run %s (%s) at %s", run.id, name or run_name, tracking_uri())
        yield run


def _create_run(experiment_id: str, run_name: str, parent_run_id: str | None) -> str:
    """A new run, with the tags MLflow's own start_run gives one (user, source, git commit)."""
    tags = {MLFLOW_RUN_NAME: run_name, **({MLFLOW_PARENT_RUN_ID: parent_run_id} if parent_run_id else {})}
    return _client().create_run(experiment_id, tags=context_registry.resolve_tags(tags), run_name=run_name).info.run_id


@contextmanager
def _ended(run_id: str):
    """The run ends FINISHED when the body does. One that fails ends FAILED and says why in its
    tag `exptrack.failure` (first line, 500 characters). One stopped by SIGTERM or SIGINT
    (preemption.Preempted) ends KILLED with the tag `exptrack.preempted=<signal>`: it can be
    resumed, nothing in it failed."""
    try:
        yield
    except BaseException as exc:
        end_run_on(run_id, exc)
        raise
    _client().set_terminated(run_id, "FINISHED")


def end_run_on(run_id: str, exc: BaseException) -> None:
    """End a run that `exc` interrupted: KILLED with `exptrack.preempted=<signal>` for a SIGTERM or
    SIGINT (preemption.Preempted), else FAILED with `exptrack.failure` (its first line, 500
    characters). Never raises: the tracker may be what failed."""
    client = _client()
    try:
        if isinstance(exc, Preempted):
            client.set_tag(run_id, PREEMPTED_TAG, exc.name)
            client.set_terminated(run_id, "KILLED")
            exc.killed_runs.append(run_id)
        else:
            message = (str(exc).strip().splitlines() or [""])[0]
            client.set_tag(run_id, "exptrack.failure", f"{type(exc).__name__}: {message}"[:500])
            client.set_terminated(run_id, "FAILED")
    except Exception:  # noqa: BLE001
        pass


def newest_finished_run(tags: dict[str, str]) -> str | None:
    """The newest FINISHED run, in any experiment, that has every one of `tags`; None if none."""
    client = _client()
    experiments = [e.experiment_id for e in client.search_experiments()]
    where = " and ".join([*(f"tags.`{k}` = '{v}'" for k, v in tags.items()), "attributes.status = 'FINISHED'"])
    runs = client.search_runs(experiments, max_results=1, order_by=["attributes.start_time DESC"], filter_string=where)
    return runs[0].info.run_id if runs else None


def run_record(run_id: str) -> dict[str, Any]:
    """A run's status and latest metrics, tags and params."""
    run = _client().get_run(run_id)
    return {"status": run.info.status, "metrics": dict(run.data.metrics), "tags": dict(run.data.tags),
            "params": dict(run.data.params)}


def child_runs(parent_run_id: str) -> list[dict[str, Any]]:
    """The runs whose parent is `parent_run_id` (in its experiment): run_id, status, tags, oldest first."""
    client = _client()
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                              order_by=["attributes.start_time ASC"], max_results=1000)
    return [{"run_id": r.info.run_id, "status": r.info.status, "tags": dict(r.data.tags),
             "metrics": dict(r.data.metrics)} for r in runs]


def metric_history(run_id: str, key: str) -> dict[int, float]:
    """step -> value of a run's metric (the last value logged at each step)."""
    return {m.step: m.value for m in sorted(_client().get_metric_history(run_id, key), key=lambda m: m.timestamp)}


def download_run_artifact(run_id: str, path: str, dst: str | Path) -> Path:
    with quiet_downloads():
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst)))


def log_artifacts_to_run(run_id: str, folder: str | Path, artifact_path: str) -> None:
    """Add files to an existing (possibly finished) run without reopening it."""
    _client().log_artifacts(run_id, str(folder), artifact_path)


def point_to_work_run(run_id: str, work_run_id: str, what: str) -> None:
    """A run that did no work of its own says where the work is: under `mlflow run`, a tune worker
    that joined a study whose parent run another process made still has the run MLflow created
    for it (tag `exptrack.work_run`, a note, and a name instead of MLflow's made-up one)."""
    client = _client()
    client.set_tag(run_id, "exptrack.work_run", work_run_id)
    client.set_tag(run_id, "mlflow.note.content", f"{what}: this worker's runs are children of run {work_run_id}, "
                   "which holds the study's results.")
    if _named_by_mlflow(client.get_run(run_id).info.run_name):
        client.set_tag(run_id, "mlflow.runName", f"{what} (joined {work_run_id[:8]})")


def create_parent_run(config: Config, run_name: str, tags: dict[str, Any], searched: dict[str, str] | None = None) -> str:
    """A run that stays RUNNING while children in this and other processes attach to it
    (created without becoming this process's active run). It carries the config its children
    start from (params and config.yaml), with each `searched` key's param saying its range."""
    experiment_id = configure(config)
    client = _client()
    run_id = os.environ.get("MLFLOW_RUN_ID")  # under `mlflow run`, the run it created
    if run_id:
        if _named_by_mlflow(client.get_run(run_id).info.run_name):
            client.set_tag(run_id, "mlflow.runName", run_name)
    else:
        run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
    for key, value in {**source_tags(), **tags}.items():
        client.set_tag(run_id, key, str(value))
    have = client.get_run(run_id).data.params  # under `mlflow run`: the MLproject's
    params = {k: ("" if v is None else str(v)) for k, v in {**to_flat_dict(config), **(searched or {})}.items()}
    _log_params_to_run(run_id, {k: v for k, v in params.items() if k not in have})
    client.log_text(run_id, to_yaml(config), "config.yaml")
    return run_id


def _log_params_to_run(run_id: str, params: dict[str, str]) -> None:
    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        _client().log_batch(run_id, params=items[start:start + 100])


def finish_run(run_id: str, status: str = "FINISHED") -> None:
    _client().set_terminated(run_id, status)


def fail_run_if_running(run_id: str, tags: dict[str, Any]) -> bool:
    """End a run whose process died (it would stay RUNNING forever) as FAILED, with `tags`."""
    client = _client()
    if client.get_run(run_id).info.status != "RUNNING":
        return False
    set_run_tags(run_id, tags)
    client.set_terminated(run_id, "FAILED")
    return True


def train_run_config(run_id: str) -> dict[str, Any] | None:
    """For an existing train run: its logged config.yaml as a dict ({} when it was stopped before
    logging it); None when there is no such train run."""
    try:
        run = _client().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None
    if run.data.tags.get("exptrack.command") != "train":
        return None
    try:
        with quiet_downloads():
            return yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml")) or {}
    except Exception:  # noqa: BLE001 - not logged yet
        return {}


def run_tags(run_id: str) -> dict[str, str]:
    return dict(_client().get_run(run_id).data.tags)


def set_run_tags(run_id: str, tags: dict[str, Any]) -> None:
    items = [RunTag(k, str(v)) for k, v in tags.items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 tags per batch
        _client().log_batch(run_id, tags=items[start:start + 100])


def log_to_run(run_id: str, metrics: dict[str, float] | None = None, folder: str | Path | None = None,
               artifact_path: str | None = None) -> None:
    client = _client()
    for key, value in (metrics or {}).items():
        client.log_metric(run_id, key, float(value))
    if folder is not None:
        client.log_artifacts(run_id, str(folder), artifact_path)
