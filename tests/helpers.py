"""Helpers shared by several test files (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import mlflow


def nothing_tracked() -> bool:
    """True when the test's MLflow store holds no run and no experiment but its Default one: a
    command that refused its input wrote nothing there."""
    client = mlflow.MlflowClient()
    return ([e.name for e in client.search_experiments()] == ["Default"]
            and not client.search_runs(["0"], max_results=1))


# The tiny data settings every training test uses (frames of 32 px, clips of 8 frames, 3 classes).
TINY_DATA = ("model.num_classes=3", "data.frame_size=32", "data.clip_len=8", "data.train_stride=4",
             "data.eval_stride=8")


def tiny_overrides(root: Path, folder: Path, *extra: str) -> list[str]:
    """--set overrides for the tiny dataset at `root`, with the cache and outputs under `folder`
    (for a config made in a subprocess; in-process tests use the make_config fixture)."""
    return [f"data.root={root}", f"paths.cache={folder / 'cache'}", f"paths.outputs={folder / 'out'}", *TINY_DATA,
            *extra]


def metric_steps(run_id: str, key: str) -> list[int]:
    """The steps at which run `run_id` logged metric `key`, in order."""
    return sorted(m.step for m in mlflow.MlflowClient().get_metric_history(run_id, key))


def artifact_paths(run_id: str, path: str | None = None) -> set[str]:
    """Every artifact file of a run (under `path`), recursively."""
    client, out = mlflow.MlflowClient(), set()
    for a in client.list_artifacts(run_id, path):
        out |= artifact_paths(run_id, a.path) if a.is_dir else {a.path}
    return out


def child_runs(parent: str) -> list[mlflow.entities.Run]:
    """The runs whose parent is `parent`, in its experiment."""
    client = mlflow.MlflowClient()
    experiment = client.get_run(parent).info.experiment_id
    return client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'")
