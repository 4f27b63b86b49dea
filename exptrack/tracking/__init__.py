"""Everything exptrack says to MLflow's tracking and registry APIs: the only package that calls
them (serving/ subclasses its PythonModel and saves the pyfunc package that runs.py logs).

- store.py: the tracking store, checked before any work; the experiment a run joins; UI addresses.
- runs.py: starting, attaching to and resuming runs; the `Run` handle other modules log through;
  reads and writes on existing runs by id.
- background.py: a run's tracking calls made by a worker thread, retried through outages.
- registry.py: registered models, versions, aliases and logged models.

Tracking follows MLflow's own defaults (MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db`` in
the working directory with artifacts under ``mlruns/``), so a plain ``mlflow ui`` in the same
folder shows every run. ``mlflow.tracking_uri`` in the config points elsewhere. The rest of
exptrack calls the names below as ``tracking.<name>``.
"""

from .background import BackgroundTracker
from .runs import (Run, child_runs, create_parent_run, download_run_artifact, end_run_on, fail_run_if_running, finish_run,
                   log_artifacts_to_run, log_to_run, metric_history, newest_finished_run, point_to_work_run, run_record,
                   run_tags,
                   set_run_tags, source_tags, start_run, train_run_config)
from .store import (EXPERIMENT_KIND, check_store, configure, is_run_id, model_url, run_url, tracking_uri, ui_hint,
                    use_tracking_uri)

__all__ = ["EXPERIMENT_KIND", "BackgroundTracker", "Run", "check_store", "child_runs", "configure",
           "create_parent_run", "download_run_artifact", "end_run_on", "fail_run_if_running", "finish_run", "is_run_id",
           "log_artifacts_to_run", "log_to_run", "metric_history", "model_url", "newest_finished_run", "point_to_work_run",
           "run_record", "run_tags", "run_url", "set_run_tags", "source_tags", "start_run", "tracking_uri",
           "train_run_config", "ui_hint", "use_tracking_uri"]
