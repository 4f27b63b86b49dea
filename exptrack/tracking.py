"""Run logging: the store, runs, metrics, artifacts, logged models made from a run, the
background tracker. With model_store.py (the registry and logged-model access) the only code
that calls MLflow's tracking and registry APIs; the rest of the package receives a run object.

Tracking follows MLflow's own defaults (MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db`` in
the working directory with artifacts under ``mlruns/``), so a plain ``mlflow ui`` in the same
folder shows every run. ``mlflow.tracking_uri`` in the config points elsewhere.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import subprocess
import tempfile
import threading
import time
import warnings
from collections import deque
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import mlflow
import mlflow.artifacts
import mlflow.pyfunc
import requests
import torch
import urllib3
import yaml
from filelock import FileLock
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import LoggedModelInput, LoggedModelOutput, LoggedModelStatus, Param
from mlflow.tracking._tracking_service.utils import _tracking_store_registry, get_default_host_creds
from mlflow.utils.rest_utils import http_request
from sqlalchemy.engine import make_url

from . import model_store
from .config import Config, ConfigError, to_flat_dict, to_yaml
from .errors import TrackingUnavailable
from .model_store import quiet_model_logging
from .preemption import PREEMPTED_TAG, Preempted
from .serving.package import save_clip_model

if TYPE_CHECKING:
    import pandas as pd

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


_CHECKED_STORES: set[str] = set()


def _known_schemes() -> set[str]:
    """The URI schemes MLflow has a tracking store for (its own and installed plugins')."""
    try:
        return set(_tracking_store_registry._registry) | {"file"}
    except AttributeError:  # its private registry moved: the stores MLflow 3.17 has
        return {"sqlite", "postgresql", "mysql", "mssql", "file", "http", "https", "databricks"}


def check_store(config: Config) -> str:
    """The configured tracking store, checked before any work (decoding, training) so that a
    store that is not there or not writable is named in one line, not found by MLflow's retries
    minutes later: an unknown scheme, an SQLite file that is a folder, not a database or not
    writable, an HTTP address where nothing answers or something other than MLflow does.
    Once per store and process. Returns the tracking URI."""
    use_tracking_uri(config)
    uri = mlflow.get_tracking_uri()
    if uri in _CHECKED_STORES:
        return uri
    scheme = uri.split(":", 1)[0].split("+")[0] if ":" in uri else "file"
    if scheme not in _known_schemes():
        raise ConfigError(f"tracking store {uri!r}: unknown scheme {scheme!r} (sqlite:///FILE, postgresql://..., "
                          "http(s)://HOST:PORT of an MLflow server, ...; MLFLOW_TRACKING_URI or mlflow.tracking_uri)")
    db = _sqlite_file(uri)
    if db is not None:
        _check_sqlite_file(uri, db)
    elif scheme in ("http", "https"):
        _check_server(uri)
    _CHECKED_STORES.add(uri)
    return uri


def _check_sqlite_file(uri: str, db: Path) -> None:
    if db.is_dir():
        raise TrackingUnavailable(f"tracking store {uri}: {db} is a folder, not an SQLite database file")
    if db.exists():
        with db.open("rb") as fh:
            header = fh.read(16)
        if header and header != b"SQLite format 3\x00":
            raise TrackingUnavailable(f"tracking store {uri}: {db} is not an SQLite database (damaged, or another "
                                      "kind of file); move it away or point MLFLOW_TRACKING_URI elsewhere")
        if not os.access(db, os.W_OK) or not os.access(db.parent, os.W_OK):
            raise TrackingUnavailable(f"tracking store {uri}: {db} (or its folder) is read-only; runs cannot be "
                                      "recorded there")
    elif db.parent.exists() and not os.access(db.parent, os.W_OK):
        raise TrackingUnavailable(f"tracking store {uri}: cannot create {db}: its folder is read-only")


def _check_server(uri: str, timeout_s: float = 10.0) -> None:
    """One bounded request to the MLflow REST API, made as MLflow makes them (its credentials and
    TLS settings: MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN, MLFLOW_TRACKING_INSECURE_TLS, ...),
    without its retries: refused, silent, or not MLflow's answer."""
    endpoint = "/api/2.0/mlflow/experiments/get-by-name"
    try:
        response = http_request(get_default_host_creds(uri), endpoint, "GET", max_retries=0, timeout=timeout_s,
                                raise_on_status=False, params={"experiment_name": "Default"})
    except (requests.exceptions.RequestException, mlflow.exceptions.MlflowException) as exc:
        # MLflow wraps it: MlflowException <- ConnectionError <- MaxRetryError <- ReadTimeoutError
        if _caused_by(exc, (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError)):
            raise TrackingUnavailable(f"tracking server {uri} accepted the connection but did not answer in "
                                      f"{timeout_s:.0f} s") from None
        reason = type(exc).__name__ if not str(exc) else str(exc).splitlines()[0][:160]
        raise TrackingUnavailable(f"tracking server {uri} is not reachable ({reason}); start it, or point "
                                  "MLFLOW_TRACKING_URI at a running one") from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code in (401, 403):
        raise TrackingUnavailable(f"tracking server {uri} refused exptrack's credentials (HTTP {response.status_code}): "
                                  "check MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN")
    if not isinstance(body, dict) or not ("experiment" in body or "error_code" in body):
        raise TrackingUnavailable(f"{uri} answers, but not as an MLflow tracking server (HTTP {response.status_code} "
                                  f"from {endpoint}); check the address and port")


def _caused_by(exc: BaseException | None, kind: type[BaseException] | tuple[type[BaseException], ...]) -> bool:
    while exc is not None:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a local ``sqlite:///`` store, or None for any other store."""
    if not uri.startswith("sqlite:"):
        return None
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


# The experiment each tracking store's runs of this process go to, once `mlflow run` has fixed
# it: the run it made is in --experiment-name's experiment (Default without one), and every run
# this invocation makes (tune trials, refits, evaluations) joins it there. Kept per store, since
# MLFLOW_RUN_ID is taken out of the environment once children start (see start_run).
_INVOCATION_EXPERIMENT: dict[str, str] = {}
MODEL_TRAINING_KIND = "custom_model_development"


def configure(config: Config, run_id: str | None = None, parent_run_id: str | None = None) -> str:
    """Point MLflow at the configured tracking store (if any) and at the experiment a run goes
    to; returns that experiment's id. The experiment is, in this order: the experiment of the
    run being resumed (`run_id`), of the parent run (`parent_run_id`), of the run `mlflow run`
    made (and of the runs after it in this process), else `mlflow.experiment` (created once,
    even when several processes start together on a fresh local SQLite store)."""
    uri = check_store(config)
    # An existing run means an existing store; a fresh one is first touched under the lock (even
    # making a client may create its tables).
    project_run = os.environ.get("MLFLOW_RUN_ID")
    if project_run and uri not in _INVOCATION_EXPERIMENT:
        _INVOCATION_EXPERIMENT[uri] = _client().get_run(project_run).info.experiment_id
    existing = run_id or parent_run_id
    if existing or uri in _INVOCATION_EXPERIMENT:
        experiment_id = _client().get_run(existing).info.experiment_id if existing else _INVOCATION_EXPERIMENT[uri]
        experiment = mlflow.set_experiment(experiment_id=experiment_id)
    else:
        with _store_lock(uri):
            experiment = _set_experiment(config.mlflow.experiment)
    client = _client()
    if EXPERIMENT_KIND not in experiment.tags:
        # MLflow 3's UI treats an experiment without this tag as GenAI (traces). With it, the UI
        # redirects the experiment to its runs table, unless the browser already shows the GenAI
        # view (its default on a first visit, MLflow 3.17): hence the URLs exptrack prints carry
        # workflowType=machine_learning (run_url; bench/ui_check.py shows both cases)
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING_KIND)
    return experiment.experiment_id


def _ui_base() -> str:
    """The MLflow UI's address: the tracking server's, else `mlflow ui`'s default."""
    uri = mlflow.get_tracking_uri()
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"


def run_url(run_id: str) -> str:
    """Where the MLflow UI shows a run, in the model-training view (not the GenAI one)."""
    experiment_id = _client().get_run(run_id).info.experiment_id
    return f"{_ui_base()}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def model_url(name: str, version: str | None = None) -> str:
    """Where the MLflow UI shows a registered model (or one of its versions)."""
    return f"{_ui_base()}/#/models/{name}" + (f"/versions/{version}" if version else "")


_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def is_run_id(text: str) -> bool:
    """Whether `text` has the form of an MLflow run id (32 hex digits)."""
    return bool(_RUN_ID.match(text))


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

    def log_config(self, config: Config, invocation: dict[str, str] | None = None) -> None:
        """The resolved config as flat params and as config.yaml, with what the user typed
        (`invocation`: the `config` and `overrides` params, as the MLproject logs them).

        Params cannot change once logged: keys the run already has (the ones `mlflow run` logged,
        or a resumed run's own) are left as they are, and a resumed run keeps its config.yaml."""
        run = _client().get_run(self.id)
        params = {**(invocation or {}), **to_flat_dict(config)}
        self.log_params({k: v for k, v in params.items() if k not in run.data.params})
        if not any(f.path == "config.yaml" for f in _client().list_artifacts(self.id)):
            mlflow.log_text(to_yaml(config), "config.yaml")

    def set_tags(self, tags: dict[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, model_id: str | None = None,
                    dataset: Any = None) -> None:
        """`model_id` links the values to a logged model (its page and search_logged_models
        show them); `dataset` (from `dataset()`) says which data they were measured on."""
        if metrics:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step, model_id=model_id,
                               dataset=dataset)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifacts(str(folder), artifact_path)

    def log_table(self, table: "pd.DataFrame", artifact_file: str) -> None:
        mlflow.log_table(table, artifact_file)

    def latest_metrics(self, keys: tuple[str, ...]) -> dict[str, float]:
        """The last logged value of each of `keys` that this run has."""
        metrics = _client().get_run(self.id).data.metrics
        return {k: metrics[k] for k in keys if k in metrics}

    def logged_steps(self, key: str) -> set[int]:
        """Steps at which metric `key` has been logged in this run."""
        return {m.step for m in mlflow.MlflowClient().get_metric_history(self.id, key)}

    @staticmethod
    def dataset(table: "pd.DataFrame", name: str, source: str, digest: str) -> Any:
        """An MLflow dataset for a clip manifest (to log as an input, or to link metrics to)."""
        with warnings.catch_warnings():  # a local path "can be interpreted in multiple ways": it is local
            warnings.simplefilter("ignore", UserWarning)
            return from_pandas(table, source=source, name=name, targets="label", digest=digest)

    def log_dataset(self, dataset: Any, context: str) -> None:
        """Shown under the run's Datasets."""
        mlflow.log_input(dataset, context=context)

    def log_model_input(self, model_id: str) -> None:
        """The run used this logged model (an evaluation): listed on the model's page."""
        # the client call: mlflow.log_inputs(models=) refuses non-Databricks stores, which do store it
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
        name = f"{run.info.run_name or 'run'}-{self.id[:8]}-{label or f'epoch-{epoch:04d}'}"
        model = mlflow.initialize_logged_model(name=name, source_run_id=self.id, experiment_id=run.info.experiment_id,
                                               tags={k: str(v) for k, v in tags.items()},
                                               params={k: str(v) for k, v in run.data.params.items()})
        try:
            with tempfile.TemporaryDirectory(prefix="exptrack-model-") as tmp, quiet_model_logging():
                local = Path(tmp) / "model"
                save_clip_model(local, weights, clip_len, class_names, model.model_id, self.id)
                client.log_model_artifacts(model.model_id, str(local))
        except BaseException:
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
            raise
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        client.log_outputs(self.id, [LoggedModelOutput(model.model_id, step=epoch)])  # the run's Logged models
        return model.model_id

    def logged_models(self) -> list[dict[str, Any]]:
        return model_store.run_logged_models(self.id)

    def log_git_diff(self) -> None:
        """When the checkout is dirty, keep the diff with the run so it can be reproduced."""
        diff = _git("diff", "HEAD")
        if diff:
            mlflow.log_text(diff, "git_diff.patch")


class BackgroundTracker:
    """Tracking calls of a run made by one worker thread, in the order given, so that training
    never waits on the tracking server.

    Each submitted call is retried until it succeeds (backoff up to `max_wait_s`), and only then
    is the next one made: during an outage epochs keep advancing and calls queue up (small:
    metric rows, file paths); when the server is back they arrive in order, each once. `drain`
    at the end waits for the queue, and says what could not be delivered.
    """

    def __init__(self, run_id: str, max_wait_s: float = 10.0) -> None:
        self.run_id, self.max_wait_s = run_id, max_wait_s
        self.failures = 0  # failed attempts (an outage of N retries counts N)
        self._items: deque[tuple[str, Any]] = deque()
        self._cv = threading.Condition()
        self._closing = False
        self._deadline = float("inf")
        self._attached = False
        self._thread = threading.Thread(target=self._work, name="exptrack-tracking", daemon=True)
        self._thread.start()

    def submit(self, what: str, call: Any) -> None:
        with self._cv:
            self._items.append((what, call))
            self._cv.notify_all()

    def pending(self) -> list[str]:
        with self._cv:
            return [what for what, _ in self._items]

    def _attach(self) -> None:
        """MLflow's active run is per thread: this thread makes the run its own (never ends it)."""
        if not self._attached:
            mlflow.start_run(run_id=self.run_id, log_system_metrics=False)
            self._attached = True

    def _work(self) -> None:
        wait, outage = 0.5, False
        while True:
            with self._cv:
                while not self._items and not self._closing:
                    self._cv.wait()
                if not self._items or (self._closing and self._deadline_passed()):
                    return  # a drain that timed out: what is left stays undelivered (a resume delivers it)
                what, call = self._items[0]
            try:
                self._attach()
                call()
            except Exception as exc:  # noqa: BLE001 - any tracking failure: keep it, retry, never raise
                self.failures += 1
                if not outage:
                    log.warning("MLflow tracking failed (%s: %s); training goes on, the tracking calls queue up and "
                                "are retried", what, (str(exc).splitlines() or [""])[0][:200])
                outage = True
                with self._cv:
                    self._cv.wait(timeout=wait)  # a drain's close wakes it early
                    if self._closing and self._deadline_passed():
                        return
                wait = min(wait * 2, self.max_wait_s)
                continue
            if outage:
                log.warning("MLflow tracking is back: delivering what queued up")
            wait, outage = 0.5, False
            with self._cv:
                self._items.popleft()
                self._cv.notify_all()

    def _deadline_passed(self) -> bool:
        return time.monotonic() > self._deadline

    def drain(self, timeout_s: float) -> list[str]:
        """Wait until every call is delivered or `timeout_s` has passed; returns what was not
        delivered (the worker stops either way)."""
        self._deadline = time.monotonic() + timeout_s
        with self._cv:
            self._closing = True
            self._cv.notify_all()
            while self._items and not self._deadline_passed():
                self._cv.wait(timeout=0.5)
            left = [what for what, _ in self._items]
        self._thread.join(timeout=max(0.0, self._deadline - time.monotonic()) + 1.0)
        return left


@contextmanager
def start_run(config: Config, run_name: str, command: str, tags: dict[str, Any] | None = None,
              system_metrics: bool = False, run_id: str | None = None,
              parent_run_id: str | None = None, invocation: dict[str, str] | None = None) -> Iterator[Run]:
    """Start a run, resume `run_id`, or (under `mlflow run`) attach to the run MLflow created;
    every one carries its resolved config (Run.log_config). It ends FAILED if the body raises."""
    experiment_id = configure(config, run_id=run_id, parent_run_id=parent_run_id)
    # `mlflow run` exports MLFLOW_RUN_ID for the run it created; start_run() attaches to it.
    attached = bool(os.environ.get("MLFLOW_RUN_ID")) and run_id is None and parent_run_id is None
    if parent_run_id and os.environ.get("MLFLOW_RUN_ID"):
        os.environ.pop("MLFLOW_RUN_ID")  # a child of a tune parent, not the run `mlflow run` made
    with mlflow.start_run(run_id=run_id, run_name=None if (attached or run_id) else run_name,
                          experiment_id=None if (attached or run_id) else experiment_id,
                          parent_run_id=parent_run_id if not run_id else None,
                          nested=bool(parent_run_id) and mlflow.active_run() is not None,  # a child of this process's run
                          log_system_metrics=system_metrics and config.mlflow.log_system_metrics) as active, \
            _failure_tag():
        run = Run(active)
        run.set_tags({"exptrack.command": command, **source_tags(), **(tags or {})})
        if attached:  # under `mlflow run` the run was created with a random name; it is called run_name now
            mlflow.set_tag("mlflow.runName", run_name)
        run.log_config(config, invocation)
        log.info("MLflow run %s (%s) at %s", run.id, run_name if attached else (active.info.run_name or run_name),
                 tracking_uri())
        yield run


def _client() -> "mlflow.MlflowClient":
    return mlflow.MlflowClient()


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


@contextmanager
def _failure_tag():
    """A run that ends FAILED says why, in its tag `exptrack.failure` (first line, 500 characters).
    A run stopped by SIGTERM or SIGINT (preemption.Preempted) ends KILLED instead, with the tag
    `exptrack.preempted=<signal>`: it can be resumed, nothing in it failed."""
    try:
        yield
    except Preempted as exc:
        try:
            mlflow.set_tag(PREEMPTED_TAG, exc.name)
            mlflow.end_run("KILLED")
        except Exception:  # noqa: BLE001 - the tracker may be what is gone
            pass
        raise
    except BaseException as exc:
        try:
            message = (str(exc).strip().splitlines() or [""])[0]
            mlflow.set_tag("exptrack.failure", f"{type(exc).__name__}: {message}"[:500])
        except Exception:  # noqa: BLE001 - the tracker may be what failed
            pass
        raise


def download_run_artifact(run_id: str, path: str, dst: str | Path) -> Path:
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst)))


def log_artifacts_to_run(run_id: str, folder: str | Path, artifact_path: str) -> None:
    """Add files to an existing (possibly finished) run without reopening it."""
    mlflow.MlflowClient().log_artifacts(run_id, str(folder), artifact_path)


def create_parent_run(config: Config, run_name: str, tags: dict[str, Any], searched: dict[str, str] | None = None) -> str:
    """A run that stays RUNNING while children in this and other processes attach to it
    (created without becoming this process's active run). It carries the config its children
    start from (params and config.yaml), with each `searched` key's param saying its range."""
    experiment_id = configure(config)
    client = mlflow.MlflowClient()
    run_id = os.environ.get("MLFLOW_RUN_ID")  # under `mlflow run`, the run it created
    if run_id:
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
        mlflow.MlflowClient().log_batch(run_id, params=items[start:start + 100])


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
        return yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml")) or {}
    except Exception:  # noqa: BLE001 - not logged yet
        return {}


def run_tags(run_id: str) -> dict[str, str]:
    return dict(mlflow.MlflowClient().get_run(run_id).data.tags)


def set_run_tags(run_id: str, tags: dict[str, Any]) -> None:
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def log_to_run(run_id: str, metrics: dict[str, float] | None = None, folder: str | Path | None = None,
               artifact_path: str | None = None) -> None:
    client = mlflow.MlflowClient()
    for key, value in (metrics or {}).items():
        client.log_metric(run_id, key, float(value))
    if folder is not None:
        client.log_artifacts(run_id, str(folder), artifact_path)
