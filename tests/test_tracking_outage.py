"""Training never waits on tracking (issue 11): a real `mlflow server` is killed during training
and started again once several epochs have ended without it; every epoch arrives exactly once."""

from __future__ import annotations

import threading

import mlflow
import pytest

from exptrack.train import train

from .postgres import MlflowServer

EPOCHS_DOWN = 5  # epochs that must end while the server is down
OVERALL_TIMEOUT_S = 600.0  # the server comes back then at the latest (the test then fails)


@pytest.mark.slow
def test_a_tracking_server_outage_never_stops_training(tiny_demo, make_config, tmp_path, monkeypatch, request):
    """The server dies after epoch 2 and stays down until EPOCHS_DOWN more epochs have ended:
    if training waited on tracking, no epoch would end and the server would come back only at
    the overall timeout, failing the count. Events and order are asserted, not seconds (the
    machine may be loaded)."""
    server = MlflowServer(tmp_path)
    request.addfinalizer(server.kill)  # also when the test fails: no server is left behind
    server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    # MLflow's own retries (7, doubling from 2 s) would keep one call waiting for minutes after
    # the server is back; exptrack retries the call itself, so MLflow's are shortened here.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    mlflow.set_tracking_uri(server.url)
    ended_while_down: list[int] = []
    enough = threading.Event()
    outage: dict[str, bool] = {}

    def restart_when_enough() -> None:
        enough.wait(timeout=OVERALL_TIMEOUT_S)
        server.start()
        outage["over"] = True

    def clock(metrics, per_class, saved, state) -> None:
        if state.epoch == 2:
            server.kill()
            outage["down"] = True
            threading.Thread(target=restart_when_enough, daemon=True).start()
        elif outage.get("down") and not outage.get("over") and not enough.is_set():
            ended_while_down.append(state.epoch)
            if len(ended_while_down) >= EPOCHS_DOWN:
                enough.set()

    cfg = make_config(tiny_demo, "model.width=0.125", "train.batch_size=8", "train.num_workers=0",
                      "train.checkpoint_every=2", "train.epochs=20", "train.early_stop_patience=0",
                      "mlflow.experiment=outage-test", "mlflow.log_system_metrics=false")
    result = train(cfg, progress=False, callbacks=[clock])

    assert ended_while_down == list(range(3, 3 + EPOCHS_DOWN)), "epochs kept ending while the server was down"
    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    for key in ("train_loss", "val_loss", "val_mean_class_acc"):
        steps = sorted(m.step for m in client.get_metric_history(result.run_id, key))
        assert steps == list(range(1, result.state.epoch + 1)), key  # every epoch, exactly once
    assert run.data.metrics["tracking_failures"] >= 1
    version = client.get_model_version(cfg.mlflow.registered_model, result.model_version)
    assert version.source == f"models:/{result.model_id}"
