"""Training never waits on tracking (issue 11): a real `mlflow server` is killed during training
for 30 s and started again; epochs keep advancing, and every epoch arrives exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest

from exptrack.training import run as train_run

from .postgres import free_port, wait_until_healthy

OUTAGE_S = 30.0


class Server:
    """`mlflow server` on 127.0.0.1 with a SQLite store; can be killed and started again."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.folder / "server.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
             "--artifacts-destination", str(self.folder / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.folder, start_new_session=True)
        wait_until_healthy(self.url, self.proc, self.folder / "server.log")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.mark.slow
def test_a_tracking_server_outage_never_stops_training(tiny_demo, make_config, tmp_path, monkeypatch):
    server = Server(tmp_path)
    server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    # MLflow's own retries (7, doubling from 2 s) would keep one call waiting for minutes after
    # the server is back; exptrack retries the call itself, so MLflow's are shortened here.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    mlflow.set_tracking_uri(server.url)
    ends: dict[int, float] = {}
    outage: dict[str, float] = {}

    def clock(metrics, per_class, saved, state) -> None:
        ends[state.epoch] = time.monotonic()
        if state.epoch == 2:  # the server dies after epoch 2 and is back OUTAGE_S later
            server.kill()
            outage["start"] = time.monotonic()

            def restart() -> None:
                time.sleep(OUTAGE_S)
                server.start()
                outage["end"] = time.monotonic()

            threading.Thread(target=restart, daemon=True).start()

    def slow_enough(metrics, per_class, saved, state) -> None:
        time.sleep(1.0)  # tiny epochs take ~1 s here: make the run outlast the outage

    cfg = make_config(tiny_demo, "model.width=0.125", "train.batch_size=8", "train.num_workers=0",
                      "train.checkpoint_every=2", "train.epochs=40", "train.early_stop_patience=0",
                      "mlflow.experiment=outage-test", "mlflow.log_system_metrics=false")
    try:
        result = train_run.train(cfg, progress=False, callbacks=[clock, slow_enough])
    finally:
        server.kill()
        server.start()  # for the checks below, whatever happened

    during = [e for e, t in ends.items() if outage["start"] < t < outage.get("end", float("inf"))]
    assert len(during) >= 5, f"epochs kept advancing during the outage: {sorted(during)}"
    gaps = [ends[e + 1] - ends[e] for e in range(1, max(ends)) if e + 1 in ends]
    assert max(gaps) < 15, f"an epoch waited on tracking: gaps {gaps}"

    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    for key in ("train_loss", "val_loss", "val_mean_class_acc"):
        steps = sorted(m.step for m in client.get_metric_history(result.run_id, key))
        assert steps == list(range(1, result.state.epoch + 1)), key  # every epoch, exactly once
    assert run.data.metrics["tracking_failures"] >= 1
    version = client.get_model_version(cfg.mlflow.registered_model, result.model_version)
    assert version.source == f"models:/{result.model_id}"
