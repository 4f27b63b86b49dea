"""tune: an Optuna study whose trials are nested MLflow runs; resumable; several workers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest

from exptrack.tracking import registry
from exptrack.tune import objective as tune_objective
from exptrack.tune import pruning as tune_pruning
from exptrack.tune import report as tune_report
from exptrack.tune import run as tune_run
from exptrack.tune import workers as tune_workers
from exptrack.config import ConfigError
from exptrack.tune.run import run_tune
from exptrack.tune.study_file import load_study_spec
from exptrack.tune.workers import retried_from, worker_id

from .helpers import child_runs

ROOT = Path(__file__).resolve().parents[1]


def _study_file(tmp_path, tiny_demo, storage: str, n_trials: int, name: str = "t", epochs: int = 2,
                extra: str = "", pruner: str = "median") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""
config: {ROOT / 'experiments' / 'demo.yaml'}
overrides: [train.epochs={epochs}, mlflow.log_system_metrics=false, "data.root={tiny_demo}", model.num_classes=3,
            data.clip_len=8, data.train_stride=4, data.eval_stride=8, data.min_purity=0.5, model.width=0.125,
            train.batch_size=8, train.num_workers=0, train.precise_bn_batches=2, "paths.cache={tmp_path / 'cache'}",
            "paths.outputs={tmp_path / 'out'}", mlflow.experiment=tune-test, mlflow.registered_model=tuned]
study: {name}
storage: "{storage}"
n_trials: {n_trials}
pruner: {pruner}
{extra}
space:
  loss.focal_gamma: {{type: float, low: 0.0, high: 5.0}}
  data.skeleton_sigma: {{type: float, low: 2.0, high: 30.0}}
  optim.lr: {{type: float, low: 1.0e-5, high: 1.0e-3, log: true}}
""")
    return path


@pytest.mark.slow
def test_a_signal_while_the_study_is_concluded_ends_its_parent_killed_and_a_rerun_finishes_it(
        tiny_demo, tmp_path, monkeypatch):
    import signal

    from exptrack.preemption import Preempted

    spec = load_study_spec(_study_file(tmp_path, tiny_demo, f"sqlite:///{tmp_path / 'optuna.db'}", 1, epochs=1))

    def stopped(*args, **kwargs):  # the SIGTERM arrives while the best trial's model is registered
        raise Preempted(signal.SIGTERM)

    monkeypatch.setattr(tune_report, "register_best_once", stopped)
    with pytest.raises(Preempted):
        run_tune(spec)
    parent = optuna.load_study(study_name=spec.study, storage=spec.storage).user_attrs["mlflow_parent_run_id"]
    assert mlflow.MlflowClient().get_run(parent).info.status == "KILLED"  # not left RUNNING

    monkeypatch.undo()
    client = mlflow.MlflowClient()
    project = client.create_run(client.get_run(parent).info.experiment_id, run_name="fortunate-koi-479").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", project)  # the rerun is `mlflow run -e tune`: MLflow made this run for it
    run_tune(spec)  # the same command again: no trial left to run, the study is concluded
    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and run.data.tags["best_model_version"] == "1"
    # the run MLflow made says where the study's results are (it was an empty run named fortunate-koi-479)
    tags = client.get_run(project).data.tags
    assert tags["exptrack.work_run"] == parent and tags["mlflow.runName"].startswith("tune-")


@pytest.mark.slow
def test_study_runs_nested_trials_registers_the_best_and_resumes(tiny_demo, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = run_tune(load_study_spec(_study_file(tmp_path, tiny_demo, storage, 2)))
    parent = study.user_attrs["mlflow_parent_run_id"]
    children = child_runs(parent)
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
    assert len(child_runs(parent)) == 3

    # --retrain-best on the finished study: the best params once more on train + val subjects
    spec = load_study_spec(_study_file(tmp_path, tiny_demo, storage, 3))
    study = run_tune(spec, retrain_best=True)
    retrained = [r for r in child_runs(parent) if r.info.run_name.startswith("retrain-best")]
    assert len(retrained) == 1
    run = retrained[0]
    assert run.data.tags["trained_on"] == "train+val" and run.data.tags["clips_val"] == "0"
    assert run.data.tags["optuna.retrain_of"] == str(study.best_trial.number)
    assert run.data.params["data.train_on_val"] == "True"
    assert all(run.data.params[k] == str(v) for k, v in study.best_trial.params.items())
    assert run.data.params["train.epochs"] == str(study.best_trial.user_attrs["best_epoch"])
    versions = mlflow.MlflowClient().search_model_versions("name='tuned'")
    assert len(versions) == 2 and mlflow.MlflowClient().get_run(parent).data.tags["retrained_model_version"] == "2"
    run_tune(spec, retrain_best=True)  # once per study
    assert len(mlflow.MlflowClient().search_model_versions("name='tuned'")) == 2


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
    assert len(child_runs(parent)) == len(study.trials)  # every trial under the one parent
    assert len(mlflow.search_runs(experiment_names=["tune-test"], filter_string="tags.`exptrack.command` = 'tune'",
                                  output_format="list")) == 1
    # one version, the study's result: the worker that finished first did not register its best so far
    versions = mlflow.MlflowClient().search_model_versions("name='tuned'")
    assert [v.run_id for v in versions] == [study.best_trial.user_attrs["run_id"]]
    assert mlflow.get_run(parent).info.status == "FINISHED"


def test_study_file_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"config: {ROOT / 'experiments' / 'demo.yaml'}\nspace:\n  optim.lrr: {{type: float, low: 0.1, high: 1}}\n")
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_study_spec(bad)
    bad.write_text(f"config: {ROOT / 'experiments' / 'demo.yaml'}\ntrials: 3\n")
    with pytest.raises(ConfigError, match="unknown study keys trials"):
        load_study_spec(bad)


@pytest.mark.parametrize("lines, says", [
    ("folds: 3\nseeds: [0, 1]", "folds and seeds cannot both be set"),
    ("seeds: [0, x]", "seeds: 'x' is not an integer"),
    ("seeds: [1, 1]", "seeds: 1 given more than once"),
    ("folds: 1", "folds must be 0 \\(off\\) or >= 2"),
    ("pruner: medain", "pruner 'medain' is not one of median, hyperband, wilcoxon, none"),
    ("n_trials: x", "n_trials: expected int, got str 'x'"),
    ("n_trials: 0", "n_trials must be >= 1, got 0"),
    ("heartbeat_interval: 30s", "heartbeat_interval: expected int"),
    ("metric: val_mean_class_accuracy", "metric 'val_mean_class_accuracy' is not logged every epoch"),
    ("storage: oracle://db", "storage 'oracle://db': a journal file"),
    ("overrides: train.epochs=2", "overrides: a list of section.key=value strings"),
    ("space:\n  optim.lr: {type: float, high: 1.0}", "space.optim.lr needs numbers low < high, got low None, high 1.0"),
    ("space:\n  optim.lr: {type: float, low: 0.1, high: 0.01}", "space.optim.lr needs numbers low < high"),
    ("space:\n  optim.lr: {type: float, low: 0, high: 0.1, log: true}", "space.optim.lr is log-scaled: low must be > 0"),
    ("space:\n  optim.lr: {type: categorical}", "space.optim.lr is categorical but has no choices"),
    ("space:\n  optim.lr: {type: float, low: 1e-5, high: nan}", "space.optim.lr needs numbers low < high"),
    ("space:\n  - optim.lr", "space: a mapping of section.key to its range"),
    ("space:\n  optim.scheduler: {type: categorical, choices: cosine}", "space.optim.scheduler.choices: a list"),
    ("space:\n  optim.lr: {type: float, low: 1e-5, high: 1e-3, log: maybe}", "space.optim.lr.log: true or false"),
    ("overrides: [data.folds=3]", "the trials' config sets data.folds or train.seeds; a study groups"),
])
def test_study_file_values_of_the_wrong_type_or_shape_name_the_key(tmp_path, lines, says):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"config: {ROOT / 'experiments' / 'demo.yaml'}\n{lines}\n")
    with pytest.raises(ConfigError, match=f"bad.yaml: {says}"):
        load_study_spec(bad)


def test_a_bad_storage_on_the_command_line_is_blamed_on_the_flag_not_the_file():
    with pytest.raises(ConfigError, match="^--storage 'bogus': a journal file"):
        load_study_spec(ROOT / "experiments" / "tune" / "demo.yaml", storage="bogus")


@pytest.mark.parametrize("name", ["demo.yaml", "folds.yaml"])
def test_shipped_study_files_load(name):
    spec = load_study_spec(ROOT / "experiments" / "tune" / name)
    assert {p.key for p in spec.space} == {"loss.focal_gamma", "data.skeleton_sigma", "optim.lr"}
    assert spec.metric == "val_mean_class_acc" and spec.direction == "maximize"
    assert (spec.folds, spec.pruner) == ((4, "wilcoxon") if name == "folds.yaml" else (0, "median"))


@pytest.mark.parametrize("extra, group_model", [("", "ensemble"), ("overrides: [train.group_model=best]", "best")])
def test_a_seed_study_registers_its_best_trials_ensemble_unless_told_otherwise(tmp_path, extra, group_model):
    """As a fold study does (issue 33); a plain `train --seeds` registers its best member."""
    from exptrack.config import load_config
    from exptrack.tune.study_file import group_overrides

    path = tmp_path / "seeds.yaml"
    path.write_text(f"config: {ROOT / 'experiments' / 'demo.yaml'}\nseeds: [0, 1]\n{extra}\n")
    spec = load_study_spec(path)
    config = load_config(spec.config, [*spec.overrides, *group_overrides(spec)])
    assert config.train.seeds == (0, 1) and config.train.group_model == group_model


@pytest.mark.slow
def test_a_study_on_folds_scores_each_trial_by_its_folds_mean(tiny_demo, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = run_tune(load_study_spec(_study_file(tmp_path, tiny_demo, storage, 1, epochs=1, extra="folds: 2",
                                                 pruner="wilcoxon")))
    trial = study.best_trial
    folds = {r.data.tags["exptrack.group_member"]: r for r in child_runs(trial.user_attrs["run_id"])}
    assert set(folds) == {"fold=0", "fold=1"}  # every fold a grandchild of the study's parent run
    values = [r.data.metrics["best_val_mean_class_acc"] for r in folds.values()]
    assert trial.value == pytest.approx(np.mean(values)) and trial.user_attrs["member_std"] >= 0
    version = mlflow.MlflowClient().get_model_version("tuned", "1")
    # the best trial's fold ensemble, logged on its group run: no extra training
    assert version.run_id == trial.user_attrs["run_id"] and version.tags["group_model"] == "the ensemble of 2 members"
    assert version.tags["group_run_id"] == trial.user_attrs["run_id"] and version.tags["group_members"] == "2"
    from exptrack.models.load import load_model
    from exptrack.models.c3d import C3DEnsemble

    loaded = load_model("models:/tuned/1")  # what predict, visualize, promote and serving load
    assert isinstance(loaded.model, C3DEnsemble) and loaded.config.model.ensemble == 2
    card = version.description  # which trial, which members
    assert f"trial {trial.number} of the Optuna study" in card and all(f"`{r.info.run_id}`" in card for r in folds.values())


def test_the_wilcoxon_pruner_stops_a_trial_worse_on_every_member_so_far():
    """The pruner tune uses for fold and seed studies, through the hook tune gives each member."""
    from exptrack.training.groups import MemberResult

    study = optuna.create_study(direction="maximize", pruner=tune_pruning.make_pruner("wilcoxon"))
    def member(i: int, value: float) -> MemberResult:
        return MemberResult(f"fold={i}", "", pd.DataFrame({"epoch": [1], "val_mean_class_acc": [value]}), None, 1)

    members = [member(i, v) for i, v in enumerate([0.9, 0.8, 0.85, 0.95, 0.7])]
    good = study.ask()
    for i, m in enumerate(members):
        tune_pruning.PruneAcrossMembers(good, "val_mean_class_acc")(i, m)
    study.tell(good, 0.84)
    bad = study.ask()
    with pytest.raises(optuna.TrialPruned, match="pruned after member fold=3"):
        for i, m in enumerate(members):
            tune_pruning.PruneAcrossMembers(bad, "val_mean_class_acc")(i, member(i, m.value() - 0.3))


def _worker(study_file: Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "exptrack", "tune", "--study-file", str(study_file), "--no-progress"],
                            env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(workers: list[subprocess.Popen]) -> None:
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), "\n----\n".join(o[-3000:] for o in outputs)


def _use_tracking(uri: str, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)


@pytest.mark.slow
def test_workers_on_postgres_share_a_study_and_survive_a_killed_worker(tiny_demo, tmp_path, postgres, monkeypatch):
    storage = postgres.create_database("tune_workers")
    _use_tracking(postgres.create_database("tune_workers_mlflow"), monkeypatch)
    mlflow.search_experiments()  # MLflow creates its tables here, before two workers race to
    study_file = _study_file(tmp_path, tiny_demo, storage, 4, name="pg", epochs=3,
                             extra="heartbeat_interval: 1\ngrace_period: 30")
    a, b = _worker(study_file, tmp_path), _worker(study_file, tmp_path)

    # kill worker A (SIGKILL: no cleanup of any kind) in the middle of a trial
    deadline, victim = time.monotonic() + 300, None
    while victim is None and time.monotonic() < deadline and a.poll() is None:
        time.sleep(0.2)
        try:
            trials = optuna.load_study(study_name="pg", storage=storage).trials
        except KeyError:  # not created yet
            continue
        victim = next((t for t in trials if t.state == optuna.trial.TrialState.RUNNING and "run_id" in t.user_attrs
                       and t.user_attrs.get("worker", "").endswith(f":{a.pid}")), None)
    assert victim is not None, "worker A never ran a trial"
    a.kill()
    a.wait()
    _finish([b, _worker(study_file, tmp_path)])  # B goes on; A is restarted as a user would
    _finish([_worker(study_file, tmp_path)])  # a later rerun runs what is still queued, nothing else

    study = optuna.load_study(study_name="pg", storage=storage)
    by_number = {t.number: t for t in study.trials}
    assert len(by_number) == len(study.trials)  # no trial number twice
    assert by_number[victim.number].state == optuna.trial.TrialState.FAIL
    retries = [t for t in study.trials
               if retried_from(t) == victim.number]
    assert len(retries) == 1 and retries[0].params == victim.params  # retried once, same params
    counted = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert retries[0] in counted
    assert 4 <= len(counted) <= 6  # the total, + a trial the other worker had started, + the retry
    assert len(study.trials) == len(counted) + 1  # nothing lost: every other trial finished

    parent = study.user_attrs["mlflow_parent_run_id"]
    children = {r.info.run_id: r for r in child_runs(parent)}
    assert set(children) == {t.user_attrs["run_id"] for t in study.trials}  # every trial under the one parent
    dead = children[victim.user_attrs["run_id"]]
    assert dead.info.status == "FAILED" and dead.data.tags["optuna.state"] == "FAIL"
    assert children[retries[0].user_attrs["run_id"]].data.tags["optuna.retry_of"] == str(victim.number)
    assert mlflow.MlflowClient().get_run(parent).info.status == "FINISHED"


@pytest.fixture
def mlflow_server(postgres, tmp_path):
    """A real `mlflow server` process: PostgreSQL backend store, artifacts proxied into a folder."""
    from .postgres import free_port, wait_until_healthy

    port, artifacts = free_port(), tmp_path / "server-artifacts"
    log = open(tmp_path / "mlflow-server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", postgres.create_database("mlflow_server"),
                               "--artifacts-destination", str(artifacts), "--workers", "1"],
                              stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server, tmp_path / "mlflow-server.log")
        yield url, artifacts
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_tune_against_an_mlflow_server_backed_by_postgres(tiny_demo, tmp_path, postgres, mlflow_server, monkeypatch):
    from exptrack.models.load import load_model

    url, artifacts = mlflow_server
    _use_tracking(url, monkeypatch)
    storage = postgres.create_database("tune_server")
    study = run_tune(load_study_spec(_study_file(tmp_path, tiny_demo, storage, 2, name="srv")))

    parent = study.user_attrs["mlflow_parent_run_id"]
    client = mlflow.MlflowClient()
    assert client.get_run(parent).info.status == "FINISHED"
    assert sorted(r.info.run_name for r in child_runs(parent)) == ["trial-0", "trial-1"]
    assert "tune/trials.csv" in {a.path for a in client.list_artifacts(parent, "tune")}
    # artifacts went through the server into its own artifact folder, not into a local mlruns/
    assert list(artifacts.rglob("trials.csv")) and not (tmp_path / "mlruns").exists()
    version = client.get_run(parent).data.tags["best_model_version"]
    assert client.get_model_version("tuned", version).run_id == study.best_trial.user_attrs["run_id"]
    loaded = load_model(f"models:/tuned/{version}")  # the registered model loads back through the server
    assert loaded.config.model.num_classes == 3


@pytest.mark.slow
def test_workers_starting_together_on_an_empty_postgres_database(tmp_path, tiny_demo, postgres):
    from concurrent.futures import ThreadPoolExecutor

    from exptrack.tune.workers import open_study

    spec = load_study_spec(_study_file(tmp_path, tiny_demo, postgres.create_database("tune_fresh"), 2, name="fresh"))
    with ThreadPoolExecutor(4) as pool:  # Optuna creates its tables on first use: all four race to
        studies = list(pool.map(lambda _: open_study(spec), range(4)))
    assert len({s._study_id for s in studies}) == 1


@pytest.mark.slow
def test_best_model_registered_once_even_when_two_workers_race(tiny_demo, tmp_path, monkeypatch, caplog):
    import shutil

    spec = load_study_spec(_study_file(tmp_path, tiny_demo, f"sqlite:///{tmp_path / 'optuna.db'}", 1))
    study = run_tune(spec)
    best = study.best_trial.user_attrs
    assert [str(v.version) for v in mlflow.MlflowClient().search_model_versions("name='tuned'")] == ["1"]

    # a second worker, on a machine without the trial's checkpoint, checked before version 1 existed
    shutil.rmtree(best["checkpoint_dir"])
    real, calls = tune_report.registry.model_versions, []

    def first_look_sees_none(name):  # the second worker's check, made before version 1 existed
        calls.append(name)
        return [] if len(calls) == 1 else real(name)

    monkeypatch.setattr(tune_report.registry, "model_versions", first_look_sees_none)
    with caplog.at_level("INFO", logger="exptrack.tune"):
        kept = tune_report.register_best_once(best["run_id"], tune_report.best_trial_config(study, spec))
    assert kept == "1" and "registered twice (versions 1 and 2)" in caplog.text  # v2 from the logged model
    assert [str(v.version) for v in mlflow.MlflowClient().search_model_versions("name='tuned'")] == ["1"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test asks for a trial by hand
def test_rerun_retries_a_dead_local_worker_at_once_and_runs_every_queued_trial(tiny_demo, tmp_path, monkeypatch):

    store, storage = f"sqlite:///{tmp_path / 'configured.db'}", f"sqlite:///{tmp_path / 'optuna.db'}"
    path = _study_file(tmp_path, tiny_demo, storage, 1, name="q")
    # the tracking store comes from the config alone, as on a machine without MLFLOW_TRACKING_URI
    path.write_text(path.read_text().replace("mlflow.experiment=tune-test", f'mlflow.experiment=tune-test, "mlflow.tracking_uri={store}"'))
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    spec = load_study_spec(path)
    parent = run_tune(spec).user_attrs["mlflow_parent_run_id"]

    # the total (1) is reached; then a worker on this machine dies mid-trial (its pid is gone,
    # long before any grace period), and a user queues one more trial
    study = optuna.load_study(study_name="q", storage=storage)
    gone = subprocess.Popen(["true"])
    gone.wait()
    crashed = study.ask()
    crashed.set_user_attr("worker", worker_id(gone.pid))
    study.enqueue_trial({"optim.lr": 1e-4})
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")  # a new process starts elsewhere

    study = run_tune(spec)  # the same command again
    states = {t.number: t.state for t in study.trials}
    assert states[crashed.number] == optuna.trial.TrialState.FAIL
    assert [retried_from(t) for t in study.trials].count(crashed.number) == 1  # retried at once
    assert all(s.is_finished() for s in states.values())  # the retry and the queued trial both ran
    assert sum(s != optuna.trial.TrialState.FAIL for s in states.values()) == 3
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    run_tune(spec)  # a finished study, rerun from a fresh process: only the summary, in the configured store
    mlflow.set_tracking_uri(store)
    assert mlflow.MlflowClient().get_run(parent).info.status == "FINISHED"


@pytest.mark.slow
def test_a_worker_whose_running_trial_another_worker_failed_goes_on(tiny_demo, tmp_path, monkeypatch, caplog):
    """A worker that stalls past grace_period finds its trial failed (and its retry queued) by
    another worker: it abandons that trial and runs the next, where Optuna alone would crash."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    suggest = tune_objective.suggest

    def suggest_then_lose(trial: optuna.Trial, space) -> list[str]:
        overrides = suggest(trial, space)
        if trial.number == 0:  # the fault: another worker finds trial 0's heartbeat stale
            other = optuna.load_study(study_name="lost", storage=storage)
            tune_workers.on_dead_worker_trial(other, tune_workers.fail_trial(other, trial.number))
        return overrides

    monkeypatch.setattr(tune_objective, "suggest", suggest_then_lose)
    study = run_tune(load_study_spec(_study_file(tmp_path, tiny_demo, storage, 2, name="lost", epochs=1)))
    states = [t.state for t in study.trials]
    assert states[0] == optuna.trial.TrialState.FAIL and retried_from(study.trials[1]) == 0
    assert study.trials[1].params == study.trials[0].params
    assert all(s in tune_workers.COUNTED for s in states[1:]) and len(states) == 3  # the retry + the total
    assert "trial 0 was marked FAIL by another worker while this one ran it" in caplog.text
    lost = [r for r in child_runs(study.user_attrs["mlflow_parent_run_id"]) if r.info.run_name == "trial-0"]
    assert [(r.info.status, r.data.tags["optuna.state"]) for r in lost] == [("FAILED", "FAIL")]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test asks for a trial by hand
def test_parent_run_made_by_the_next_worker_when_trial_0_died_without_one(tiny_demo, tmp_path):
    from exptrack.tune.workers import open_study

    spec = load_study_spec(_study_file(tmp_path, tiny_demo, f"sqlite:///{tmp_path / 'optuna.db'}", 1, name="p0"))
    study = open_study(spec)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # trial 0 ended before making the parent run
    started = time.monotonic()
    study = run_tune(spec)
    assert time.monotonic() - started < 120  # no long wait for a parent that trial 0 will never make
    parent = study.user_attrs["mlflow_parent_run_id"]
    assert [r.info.run_name for r in child_runs(parent)] == ["trial-1"]


def test_a_dead_local_worker_trial_is_failed_and_retried_through_public_optuna_api(tmp_path):
    """fail_dead_local_trials uses study.tell (public ask-and-tell) on another worker's trial;
    a second attempt (another worker, same moment) finds it finished and does nothing."""

    from exptrack._proc import process_alive
    from exptrack.tune.workers import fail_dead_local_trials, fail_trial

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="dead")
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert not process_alive(gone.pid) and process_alive(os.getpid())
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.set_user_attr("worker", worker_id(gone.pid))
    trial.set_user_attr("run_id", "0" * 32)  # its run: the retry must not name it (nor its worker)
    alive = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    alive.set_user_attr("worker", worker_id())
    fail_dead_local_trials(study)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[trial.number] == optuna.trial.TrialState.FAIL
    assert states[alive.number] == optuna.trial.TrialState.RUNNING
    retries = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.WAITING]
    assert len(retries) == 1 and retries[0].params == {"x": trial.params["x"]}
    assert retries[0].user_attrs == {}
    assert fail_trial(study, trial.number) is None  # already finished: nothing to do


def test_a_worker_of_another_pid_namespace_on_this_host_is_left_to_the_heartbeat(tmp_path):
    """Two containers with the host's name and their own pids: a pid absent here may be alive
    there, so only trials of this process space are failed by the process check."""
    import socket

    from exptrack.tune.workers import fail_dead_local_trials

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="ns")
    gone = subprocess.Popen(["true"])
    gone.wait()
    elsewhere = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    elsewhere.set_user_attr("worker", f"{socket.gethostname()}/pidns-1:{gone.pid}")
    here = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    here.set_user_attr("worker", worker_id(gone.pid))
    fail_dead_local_trials(study)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[elsewhere.number] == optuna.trial.TrialState.RUNNING
    assert states[here.number] == optuna.trial.TrialState.FAIL


def test_a_dead_local_worker_trial_is_failed_and_retried_on_a_journal_file_too(tmp_path):
    """A journal file (several processes on one machine) has no heartbeat: without the process
    check its dead trial stayed RUNNING for ever, blocking --retrain-best and the parent's end."""

    from exptrack.tune.study_file import StudySpec
    from exptrack.tune.workers import make_storage, trials_to_run

    spec = StudySpec(config="unused.yaml", storage=str(tmp_path / "study.log"), study="journal-dead", n_trials=3)
    study = optuna.create_study(storage=make_storage(spec), study_name=spec.study)
    gone = subprocess.Popen(["true"])
    gone.wait()
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.set_user_attr("worker", worker_id(gone.pid))
    assert trials_to_run(study, spec) == 3  # none counted; the retry is one of them
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]


@pytest.mark.parametrize("change, says", [({"metric": "val_loss", "direction": "minimize"},
                                           "metric val_mean_class_acc -> val_loss; direction maximize -> minimize"),
                                          ({"folds": 3}, "folds 0 -> 3")])
def test_a_study_file_that_changes_what_values_mean_is_refused_on_the_old_study(tmp_path, change, says):
    import dataclasses

    from exptrack.tune.study_file import StudySpec
    from exptrack.tune.workers import open_study

    spec = StudySpec(config="unused.yaml", storage=f"sqlite:///{tmp_path / 'o.db'}", study="s", pruner="median")
    open_study(spec)
    open_study(spec)  # the same file again: continued
    with pytest.raises(ConfigError, match=f"study s in .*o.db holds trials scored otherwise .*\\({says}\\)"):
        open_study(dataclasses.replace(spec, **change))


def test_workers_and_reruns_draw_their_own_params_and_one_worker_is_reproducible(tmp_path):
    """Trials are seeded by (study seed, trial number): two workers on one study, and a rerun
    after them, never repeat each other's draws; the same study made again draws the same."""
    from exptrack.tune.workers import TrialSeededTPE

    space = {"lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)}

    def worker(storage: str, name: str) -> optuna.Study:
        return optuna.create_study(study_name=name, storage=storage, load_if_exists=True, sampler=TrialSeededTPE(42))

    storage = f"sqlite:///{tmp_path / 'o.db'}"
    a, b = worker(storage, "two"), worker(storage, "two")
    for _ in range(3):
        for study in (a, b):
            trial = study.ask(space)
            study.tell(trial, 0.5)
    rerun = worker(storage, "two")
    study_trial = rerun.ask(space)
    rerun.tell(study_trial, 0.5)
    drawn = [t.params["lr"] for t in rerun.get_trials()]
    assert len(set(drawn)) == 7
    again = worker(f"sqlite:///{tmp_path / 'again.db'}", "two")
    for _ in range(7):
        trial = again.ask(space)
        again.tell(trial, 0.5)
    assert [t.params["lr"] for t in again.get_trials()] == drawn


def test_a_dead_workers_fold_trial_leaves_no_member_run_running(tmp_path):
    """A fold or seed trial's run is a group run with a member run per fold: when its worker dies,
    the member being trained dies too, and is closed with the group run."""

    from exptrack.tune.workers import fail_dead_local_trials

    client = mlflow.MlflowClient()
    experiment = client.create_experiment("dead-group")
    group = client.create_run(experiment).info.run_id
    finished = client.create_run(experiment, tags={"mlflow.parentRunId": group}).info.run_id
    client.set_terminated(finished, "FINISHED")
    training = client.create_run(experiment, tags={"mlflow.parentRunId": group}).info.run_id
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="dead-group")
    gone = subprocess.Popen(["true"])
    gone.wait()
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.set_user_attr("worker", worker_id(gone.pid))
    trial.set_user_attr("run_id", group)
    models = [mlflow.initialize_logged_model(name=f"m{i}", source_run_id=run, experiment_id=experiment).model_id
              for i, run in enumerate((group, finished, training))]
    fail_dead_local_trials(study)
    status = {run_id: client.get_run(run_id).info.status for run_id in (group, finished, training)}
    assert status == {group: "FAILED", finished: "FINISHED", training: "FAILED"}
    assert client.get_run(training).data.tags["optuna.fail_reason"] == "worker died"
    # as a failed trial's: nothing will use them (the retry trains anew)
    assert not mlflow.search_logged_models(experiment_ids=[experiment], output_format="list")
    assert len(models) == 3


def test_optuna_experimental_warnings_are_silenced_in_one_place():
    import warnings

    from exptrack.tune import optuna_experimental

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with optuna_experimental():
            warnings.warn("x", optuna.exceptions.ExperimentalWarning, stacklevel=1)
        warnings.warn("y", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["y"]


def test_a_pruned_trial_says_when_and_at_what_value():
    from types import SimpleNamespace

    from exptrack.tune.pruning import ReportEachEpoch

    trial = SimpleNamespace(report=lambda value, step: None, should_prune=lambda: True)
    with pytest.raises(optuna.TrialPruned, match=r"pruned at epoch 3 \(val_mean_class_acc 0\.2500\)"):
        ReportEachEpoch(trial, "val_mean_class_acc")({"val_mean_class_acc": 0.25}, None, None, SimpleNamespace(epoch=3))


@pytest.mark.slow
def test_pruned_trials_leave_no_checkpoints_or_logged_models(tiny_demo, tmp_path, monkeypatch):
    # a real Optuna pruner that prunes every trial at its first report (epoch 1)
    monkeypatch.setattr(tune_workers, "make_pruner", lambda name: optuna.pruners.ThresholdPruner(lower=2.0))
    spec = load_study_spec(_study_file(tmp_path, tiny_demo, f"sqlite:///{tmp_path / 'optuna.db'}", 2, epochs=3))
    study = run_tune(spec)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2
    for trial in study.trials:
        run_id = trial.user_attrs["run_id"]
        assert not (tmp_path / "out" / "runs" / run_id / "checkpoints").exists()
        assert registry.run_logged_models(run_id) == []
    assert not list((tmp_path / "mlruns").rglob("weights.pt"))


@pytest.mark.parametrize("attention", [True, False])
def test_a_search_over_skeleton_sigma_says_what_each_trial_adds_to_the_cache(tiny_demo, tmp_path, caplog, attention):
    import logging

    from exptrack.config import load_config
    from exptrack.data.cache import entry_bytes, size_text
    from exptrack.data.prepare import config_cache_need

    spec = load_study_spec(_study_file(tmp_path, tiny_demo, f"sqlite:///{tmp_path / 'o.db'}", 4))
    config = load_config(spec.config, [*spec.overrides, f"data.use_skeleton_attention={str(attention).lower()}"])
    caplog.set_level(logging.WARNING, logger="exptrack.tune")
    tune_run.warn_cache_growth(spec, config)
    said = [r.message for r in caplog.records if "of skeleton attention" in r.message]
    if not attention:  # nothing is cached per sigma then
        assert said == []
        return
    frames = config_cache_need(config, splits=("train", "val")).frames
    per_trial = size_text(entry_bytes("attention", frames, config.data.frame_size))
    assert len(said) == 1 and "searches data.skeleton_sigma" in said[0]
    assert f"writes {per_trial} of skeleton attention" in said[0] and "over 4 trials" in said[0]


def test_a_single_trial_is_scored_at_its_kept_models_epoch():
    """As a group trial's members are: the model the trial registers, not the metric's own best
    epoch (val_loss was lowest at epoch 1 here, the kept model is epoch 2's)."""
    from exptrack.training.loop import TrainState
    from exptrack.tune.objective import kept_model_value

    state = TrainState(epoch=3, best_epoch={"val_mean_class_acc": 2, "val_loss": 1},
                       history=[{"epoch": 1, "val_loss": 0.4, "val_mean_class_acc": 0.5},
                                {"epoch": 2, "val_loss": 0.6, "val_mean_class_acc": 0.8},
                                {"epoch": 3, "val_loss": 0.9, "val_mean_class_acc": 0.7}])
    assert kept_model_value(state, "val_loss") == (0.6, 2)
    assert kept_model_value(TrainState(epoch=1, history=[{"epoch": 1, "val_loss": 0.4}]), "val_loss") == (0.4, None)
