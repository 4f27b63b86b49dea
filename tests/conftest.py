"""Shared fixtures: tiny generated datasets and a private MLflow store per test."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from exptrack.config import load_config
from exptrack.data.demo import DemoSpec, write_demo_dataset

from .helpers import tiny_overrides

pytest_plugins = ["tests.leftovers"]  # the session fails if a test leaves a process running

# Small enough that a dataset is written in about a second.
TINY = DemoSpec(subjects=6, classes=3, seed=7, width=64, height=80, segment_frames=(24, 30),
                background_frames=(6, 10), dominant_factor=2.0)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """A read-only-by-convention tiny demo dataset; copy it (tiny_copy) before changing files."""
    return write_demo_dataset(tmp_path_factory.mktemp("demo") / "data", TINY)


@pytest.fixture
def tiny_copy(tiny_demo, tmp_path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(tiny_demo, dst)
    return dst


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """One migrated MLflow SQLite store per test session. MLflow migrates a fresh store in
    seconds; a copy of this one costs a millisecond (see copy_mlflow_store)."""
    import mlflow

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()  # creates and migrates it
    return db


def copy_mlflow_store(template: Path, folder: Path) -> str:
    """A private copy of the template store in `folder`, its artifacts under folder/mlruns as a
    store made there would have them; returns its tracking URI."""
    db = folder / "mlflow.db"
    shutil.copyfile(template, db)
    connection = sqlite3.connect(db)
    try:  # the Default experiment's artifact location is the one absolute path the store holds
        with connection:
            connection.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                               (str(folder / "mlruns" / "0"),))
    finally:
        connection.close()
    return f"sqlite:///{db}"


@pytest.fixture(autouse=True)
def mlflow_store(tmp_path, monkeypatch, mlflow_template):
    """Every test gets its own real MLflow SQLite store (a copy of the session's migrated
    template) and artifact folder."""
    import mlflow

    uri = copy_mlflow_store(mlflow_template, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)  # the process-wide setting, in case an earlier test changed it
    yield
    mlflow.set_tracking_uri(None)


@pytest.fixture
def make_config(tmp_path):
    """make_config(root, 'section.key=value', ...) -> a Config for tiny data under tmp_path."""

    def make(root: Path, *overrides: str):
        return load_config(None, [*tiny_overrides(root, tmp_path), f"paths.outputs={tmp_path / 'outputs'}",
                                  *overrides])

    return make


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory, tiny_demo):
    """(tracking uri, config, TrainResult) of one tiny model trained for 2 epochs on the tiny
    demo and registered, in a store of its own; shared by the evaluation and explain tests."""
    import os

    from exptrack.train import train

    tmp = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    old_uri, old_cwd = os.environ.get("MLFLOW_TRACKING_URI"), os.getcwd()
    import mlflow

    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    os.chdir(tmp)
    try:
        cfg = load_config(None, [*tiny_overrides(tiny_demo, tmp), "model.width=0.125",
                                 "train.batch_size=8", "train.num_workers=0", "train.epochs=2",
                                 "mlflow.experiment=eval-test", "mlflow.log_system_metrics=false"])
        result = train(cfg, progress=False)
    finally:
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
        mlflow.set_tracking_uri(old_uri)
    return uri, cfg, result


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for this test session (see tests/postgres.py); skips with the
    reason when none can be started here."""
    from .postgres import postgres_server

    server = postgres_server()
    yield server
    server.stop()
