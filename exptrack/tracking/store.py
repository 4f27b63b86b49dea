"""The tracking store and where runs go: the store checked before any work (an unknown scheme,
an SQLite file that is not a database or not writable, a server that does not answer as
MLflow), the experiment a run joins (the resumed run's, the parent's, the one `mlflow run`
made, else `mlflow.experiment`, created once even by workers starting together), and the
UI's addresses of runs and models.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import nullcontext
from pathlib import Path

import mlflow
import requests
import urllib3
from filelock import FileLock
from mlflow.tracking._tracking_service.utils import _tracking_store_registry, get_default_host_creds
from mlflow.utils.rest_utils import http_request
from sqlalchemy.engine import make_url

from ..config import Config, ConfigError
from ..errors import TrackingUnavailable


log = logging.getLogger("exptrack.tracking")


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


def _experiment_named(uri: str, name: str):
    """The experiment `name`, created when missing (tolerating another process creating it
    first); a deleted one is an error that says what to do."""
    client = _client()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            client.create_experiment(name)
        except mlflow.exceptions.MlflowException as exc:
            if "already exists" not in str(exc) and getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
        experiment = client.get_experiment_by_name(name)
        assert experiment is not None, f"experiment {name} was just created"
    if experiment.lifecycle_stage == "deleted":
        raise ConfigError(f"mlflow.experiment {name!r} is deleted in {uri}: restore it (`mlflow experiments restore "
                          f"--experiment-id {experiment.experiment_id}`) or name another")
    return experiment


# The experiment each tracking store's runs of this process go to, once `mlflow run` has fixed
# it: the run it made is in --experiment-name's experiment (Default without one), and every run
# this invocation makes (tune trials, refits, evaluations) joins it there. Kept per store, since
# MLFLOW_RUN_ID is taken out of the environment once children start (see start_run).
_INVOCATION_EXPERIMENT: dict[str, str] = {}


MODEL_TRAINING_KIND = "custom_model_development"


def configure(config: Config, run_id: str | None = None, parent_run_id: str | None = None) -> str:
    """Point MLflow at the configured tracking store (if any); returns the id of the experiment a
    run goes to (no "active experiment" is set). The experiment is, in this order: the experiment of the
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
        experiment = _client().get_experiment(experiment_id)
    else:
        with _store_lock(uri):
            experiment = _experiment_named(uri, config.mlflow.experiment)
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


def ui_hint() -> str:
    """How to open the UI that `run_url` points at: a server's is up already; `mlflow ui` opens
    ./mlflow.db only, so any other store is named."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return "the tracking server's UI"
    if uri in ("sqlite:///mlflow.db", f"sqlite:///{Path.cwd() / 'mlflow.db'}"):
        return "start `mlflow ui` in this folder to open it"
    return f"start `mlflow ui --backend-store-uri {uri}` to open it"


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


def _client() -> "mlflow.MlflowClient":
    """A client of the current tracking URI: the one way this package reaches MLflow's store."""
    return mlflow.MlflowClient()
