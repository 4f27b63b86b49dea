"""tune: an Optuna study whose trials are nested MLflow runs; resumable; several workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest

from exptrack.config import ConfigError
from exptrack.tune import load_study_spec, run_tune

ROOT = Path(__file__).resolve().parents[1]


def _study_file(tmp_path, tiny_demo, storage: str, n_trials: int, name: str = "t") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""
config: {ROOT / 'experiments' / 'demo.yaml'}
overrides: [train.epochs=2, mlflow.log_system_metrics=false, "data.root={tiny_demo}", model.num_classes=3,
            data.clip_len=8, data.train_stride=4, data.eval_stride=8, data.min_purity=0.5, model.width=0.125,
            train.batch_size=8, train.num_workers=0, train.precise_bn_batches=2, "paths.cache={tmp_path / 'cache'}",
            "paths.outputs={tmp_path / 'out'}", mlflow.experiment=tune-test, mlflow.registered_model=tuned]
study: {name}
storage: "{storage}"
n_trials: {n_trials}
pruner: median
space:
  loss.focal_gamma: {{type: float, low: 0.0, high: 5.0}}
  data.skeleton_sigma: {{type: float, low: 2.0, high: 30.0}}
  optim.lr: {{type: float, low: 1.0e-5, high: 1.0e-3, log: true}}
""")
    return path


def _children(parent: str) -> list:
    return mlflow.search_runs(experiment_names=["tune-test"], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
                              output_format="list")


@pytest.mark.slow
def test_study_runs_nested_trials_registers_the_best_and_resumes(tiny_demo, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = run_tune(load_study_spec(_study_file(tmp_path, tiny_demo, storage, 2)))
    parent = study.user_attrs["mlflow_parent_run_id"]
    children = _children(parent)
    assert sorted(r.info.run_name for r in children) == ["trial-0", "trial-1"]
    assert {r.data.tags["optuna.state"] for r in children} <= {"COMPLETE", "PRUNED"}
    assert all("loss.focal_gamma" in r.data.params for r in children)
    run = mlflow.MlflowClient().get_run(parent)
    assert "best_val_mean_class_acc" in run.data.metrics and run.data.tags["best_model_version"] == "1"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent, "tune")}
    assert "tune/trials.csv" in artifacts and "tune/optimization_history.png" in artifacts
    assert len(mlflow.MlflowClient().search_model_versions("name='tuned'")) == 1  # only the best trial

    # the same command with a larger total continues the study: no lost or repeated trials
    study = run_tune(load_study_spec(_study_file(tmp_path, tiny_demo, storage, 3)))
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert study.user_attrs["mlflow_parent_run_id"] == parent
    assert len(_children(parent)) == 3


@pytest.mark.slow
def test_two_workers_share_a_journal_study(tiny_demo, tmp_path):
    study_file = _study_file(tmp_path, tiny_demo, str(tmp_path / "study.log"), 4, name="shared")
    env = {**os.environ, "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"], "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "exptrack", "tune", "--study-file", str(study_file), "--no-progress"]
    workers = [subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs[0][-2000:] + outputs[1][-2000:]
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="shared",
                              storage=optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "study.log"))))
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))  # no trial number twice
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert 4 <= len(finished) <= 5  # the total is shared (a worker may finish one it had started)
    parent = study.user_attrs["mlflow_parent_run_id"]
    assert len(_children(parent)) == len(study.trials)  # every trial under the one parent
    assert len(mlflow.search_runs(experiment_names=["tune-test"], filter_string="tags.`exptrack.command` = 'tune'",
                                  output_format="list")) == 1


def test_study_file_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"config: {ROOT / 'experiments' / 'demo.yaml'}\nspace:\n  optim.lrr: {{type: float, low: 0.1, high: 1}}\n")
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_study_spec(bad)
    bad.write_text(f"config: {ROOT / 'experiments' / 'demo.yaml'}\ntrials: 3\n")
    with pytest.raises(ConfigError, match="unknown study keys trials"):
        load_study_spec(bad)


def test_shipped_study_file_loads():
    spec = load_study_spec(ROOT / "experiments" / "tune" / "demo.yaml")
    assert {p.key for p in spec.space} == {"loss.focal_gamma", "data.skeleton_sigma", "optim.lr"}
    assert spec.metric == "val_mean_class_acc" and spec.direction == "maximize"
