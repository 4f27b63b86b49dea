"""exptrack/tracking/: what exptrack sets up in MLflow, and store set-up under concurrency (several
exptrack processes on one fresh store)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from exptrack import tracking
from exptrack.config import load_config


def test_experiments_open_on_the_runs_table_in_mlflow_3():
    tracking.configure(load_config(None, ["mlflow.experiment=kind-test"]))
    experiment = mlflow.get_experiment_by_name("kind-test")
    assert experiment.tags[tracking.EXPERIMENT_KIND] == "custom_model_development"


def test_a_deleted_experiment_is_named_with_how_to_restore_it():
    from exptrack.config import ConfigError

    client = mlflow.MlflowClient()
    client.delete_experiment(client.create_experiment("gone"))
    with pytest.raises(ConfigError, match="mlflow.experiment 'gone' is deleted in .*: restore it"):
        tracking.configure(load_config(None, ["mlflow.experiment=gone"]))


def test_runs_are_named_by_id_and_leave_no_active_run():
    """No MLflow "active run" state: a run and a child of it are open at once, each logged by id."""
    config = load_config(None, ["mlflow.experiment=ids"])
    with tracking.start_run(config, "parent", "test") as parent:
        with tracking.start_run(config, "child", "test", parent_run_id=parent.id) as child:
            child.log_metrics({"x": 1.0})
            parent.log_metrics({"y": 2.0})
            assert mlflow.active_run() is None
    client = mlflow.MlflowClient()
    runs = {r: client.get_run(r) for r in (parent.id, child.id)}
    assert runs[child.id].data.tags["mlflow.parentRunId"] == parent.id
    assert (runs[parent.id].data.metrics, runs[child.id].data.metrics) == ({"y": 2.0}, {"x": 1.0})
    assert {r.info.status for r in runs.values()} == {"FINISHED"}

def test_system_metrics_go_on_after_a_failed_tracking_call(monkeypatch, caplog):
    """MLflow's monitor stops for good on its first failed call (a server blip): exptrack starts a
    new one, at the step after the old one's (no step logged twice), while the run goes on."""
    import threading
    import time

    from mlflow.tracking.client import MlflowClient

    pytest.importorskip("psutil")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    real_get_run, calls = MlflowClient.get_run, []

    def blip(self, run_id):  # the monitor's third status check fails, as with the server away
        if threading.current_thread().name == "SystemMetricsMonitor":
            calls.append(run_id)
            if len(calls) == 3:
                raise mlflow.exceptions.MlflowException("connection refused")
        return real_get_run(self, run_id)

    monkeypatch.setattr(MlflowClient, "get_run", blip)
    client = mlflow.MlflowClient()
    caplog.set_level("INFO", logger="exptrack.tracking")
    config = load_config(None, ["mlflow.experiment=sysmetrics"])
    with tracking.start_run(config, "sys", "test", system_metrics=True) as run:
        deadline = time.monotonic() + 120  # a hang guard, not a timing claim
        while time.monotonic() < deadline and max(_system_steps(client, run.id), default=-1) < 4:
            time.sleep(0.1)
    assert len(calls) > 3 and "restarted after a tracking failure" in caplog.text
    steps = _system_steps(client, run.id)
    assert max(steps) >= 4 and len(steps) == len(set(steps))  # on after the blip (at step 2), each once
    assert client.get_run(run.id).info.status == "FINISHED"


def _system_steps(client, run_id: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, "system/cpu_utilization_percentage")]


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
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("race")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["worker-0", "worker-1", "worker-2"]
    assert all(r.info.status == "FINISHED" for r in runs)


def _store_error(uri: str, monkeypatch, capsys, tmp_path) -> str:
    """`exptrack train` against `uri`: its one-line error, before any data is decoded."""
    from exptrack.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)  # as in a new process: the store is MLFLOW_TRACKING_URI's
    tracking.store._CHECKED_STORES.clear()
    assert main(["train", "--set", f"data.root={tmp_path / 'data'}", f"paths.cache={tmp_path / 'cache'}",
                 "data.demo_subjects=3", "data.demo_classes=2", "model.num_classes=2", "train.epochs=1",
                 "data.frame_size=16", "model.width=0.125"]) == 2  # tiny, should the check ever miss
    err = capsys.readouterr().err
    assert "Traceback" not in err and not (tmp_path / "cache").exists()  # nothing decoded
    return err


def test_an_sqlite_store_that_is_a_folder_or_not_a_database_is_named(tmp_path, monkeypatch, capsys):
    (tmp_path / "folder.db").mkdir()
    assert "folder.db is a folder, not an SQLite database file" in _store_error(
        f"sqlite:///{tmp_path / 'folder.db'}", monkeypatch, capsys, tmp_path)
    (tmp_path / "broken.db").write_bytes(b"\x00garbage, not sqlite" * 10)
    assert "broken.db is not an SQLite database" in _store_error(
        f"sqlite:///{tmp_path / 'broken.db'}", monkeypatch, capsys, tmp_path)


def test_a_store_on_a_read_only_disk_is_named_by_train_and_evaluate(tiny_trained, tmp_path, monkeypatch, capsys):
    """A real read-only filesystem (a tmpfs remounted ro): root may write anywhere else, so
    a chmod would not do."""
    from exptrack.cli import main

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    try:
        uri = f"sqlite:///{disk / 'mlflow.db'}"
        # a real store, made by a process that then ends (an open database keeps the mount busy)
        subprocess.run([sys.executable, "-c", f"import mlflow; mlflow.set_tracking_uri({uri!r}); "
                        "mlflow.MlflowClient().create_experiment('made-before')"], check=True, capture_output=True)
        assert subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True).returncode == 0
        assert "mlflow.db (or its folder) is read-only" in _store_error(uri, monkeypatch, capsys, tmp_path)
        checkpoint = tiny_trained[2].checkpoint_dir / "best_model.pt"
        assert main(["evaluate", "--model", str(checkpoint), "--save-dir", str(tmp_path / "r"), "--no-progress"]) == 2
        assert "mlflow.db (or its folder) is read-only" in capsys.readouterr().err
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_store_uri_with_an_unknown_scheme_is_named(tmp_path, monkeypatch, capsys):
    assert "unknown scheme 'garbage'" in _store_error("garbage://x", monkeypatch, capsys, tmp_path)


def test_a_tracking_server_that_is_not_there_is_named_at_once(tmp_path, monkeypatch, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = _store_error(f"http://127.0.0.1:{port}", monkeypatch, capsys, tmp_path)
    assert f"tracking server http://127.0.0.1:{port} is not reachable" in err


def test_a_tracking_server_that_accepts_and_never_answers_fails_in_one_bounded_call():
    import socket

    from exptrack.errors import TrackingUnavailable

    with socket.socket() as silent:  # the kernel completes the handshake; nobody ever reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(TrackingUnavailable, match=f"tracking server {uri} accepted the connection but did not "
                                                      "answer in 1 s"):
            tracking.store._check_server(uri, timeout_s=1.0)


def test_an_http_server_that_is_not_mlflow_is_named(tmp_path, monkeypatch, capsys):
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        err = _store_error(f"http://127.0.0.1:{server.server_port}", monkeypatch, capsys, tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert "answers, but not as an MLflow tracking server (HTTP 404" in err


def test_reading_a_runs_files_prints_no_download_bars(tiny_trained, tmp_path, monkeypatch, capfd):
    """A resume reads the run's config.yaml, evaluate and compare read its CSVs, scoring reads a
    model's weights: MLflow would print a progress bar for each small file, into the user's
    terminal and logs."""
    uri, _, result = tiny_trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    assert tracking.train_run_config(result.run_id)
    tracking.download_run_artifact(result.run_id, "metrics/training_metrics.csv", tmp_path)
    tracking.registry.download_model_weights(result.model_id, tmp_path / "weights")
    assert "Downloading artifacts" not in capfd.readouterr().err


def test_the_printed_ui_hint_opens_the_store_the_run_is_in(tmp_path):
    """`mlflow ui` opens ./mlflow.db: for any other store the hint names it."""
    import mlflow

    from exptrack.tracking import ui_hint

    assert ui_hint() == "start `mlflow ui` in this folder to open it"  # the test's store: ./mlflow.db
    other = f"sqlite:///{tmp_path / 'elsewhere' / 'other.db'}"
    mlflow.set_tracking_uri(other)
    assert ui_hint() == f"start `mlflow ui --backend-store-uri {other}` to open it"


@pytest.mark.slow
def test_a_failed_validation_metrics_call_is_retried_without_logging_the_training_figures_twice(
        tiny_demo, make_config, monkeypatch):
    """An epoch's training and validation figures are two tracking calls; the second failing
    once must not repeat the first on its retry (a metric logged twice at one step)."""
    from mlflow.exceptions import MlflowException

    from exptrack.train import train

    real, failed = tracking.Run.log_metrics, []

    def flaky(self, metrics, step=None, model_id=None, dataset=None):
        if dataset is not None and not failed:  # the first validation row: a transient failure
            failed.append(step)
            raise MlflowException("injected: the server went away")
        return real(self, metrics, step=step, model_id=model_id, dataset=dataset)

    monkeypatch.setattr(tracking.Run, "log_metrics", flaky)
    cfg = make_config(tiny_demo, "model.width=0.125", "train.batch_size=8", "train.num_workers=0", "train.epochs=2",
                      "train.early_stop_patience=0", "mlflow.experiment=flaky", "mlflow.log_system_metrics=false")
    result = train(cfg, progress=False)
    assert failed == [1]
    history = mlflow.MlflowClient().get_metric_history
    assert sorted(m.step for m in history(result.run_id, "train_loss")) == [1, 2]
    assert sorted(m.step for m in history(result.run_id, "val_loss")) == [1, 2]
