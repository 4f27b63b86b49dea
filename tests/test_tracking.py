"""tracking.py: what exptrack sets up in MLflow."""

from __future__ import annotations

import mlflow

from exptrack import tracking
from exptrack.config import load_config


def test_experiments_open_on_the_runs_table_in_mlflow_3():
    tracking.configure(load_config(None, ["mlflow.experiment=kind-test"]))
    experiment = mlflow.get_experiment_by_name("kind-test")
    assert experiment.tags[tracking.EXPERIMENT_KIND] == "custom_model_development"
