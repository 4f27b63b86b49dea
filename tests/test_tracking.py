"""tracking.py: what exptrack sets up in MLflow, and store set-up under concurrency (several
exptrack processes on one fresh store)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow

from exptrack import tracking
from exptrack.config import load_config


def test_experiments_open_on_the_runs_table_in_mlflow_3():
    tracking.configure(load_config(None, ["mlflow.experiment=kind-test"]))
    experiment = mlflow.get_experiment_by_name("kind-test")
    assert experiment.tags[tracking.EXPERIMENT_KIND] == "custom_model_development"

# What `exptrack train` does with MLflow before training: configure the store and experiment,
# start a run, end it. Every process waits on a barrier (files) after its imports so that all
# of them touch the fresh store at the same moment.
_WORKER = """
import sys, time
from pathlib import Path
from exptrack import tracking
from exptrack.config import load_config
barrier, me, n, uri = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
(barrier / me).touch()
while len(list(barrier.iterdir())) < n:
    time.sleep(0.005)
cfg = load_config(None, [f"mlflow.tracking_uri={uri}", "mlflow.experiment=race",
                         "mlflow.log_system_metrics=false"])
with tracking.start_run(cfg, run_name=f"worker-{me}", command="test"):
    pass
"""


def test_three_processes_starting_together_on_a_fresh_store_all_succeed(tmp_path):
    store = tmp_path / "fresh"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(barrier), str(i), "3", uri], cwd=store, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(3)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("race")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["worker-0", "worker-1", "worker-2"]
    assert all(r.info.status == "FINISHED" for r in runs)
