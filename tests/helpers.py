"""Helpers shared by several test files (fixtures live in conftest.py)."""

from __future__ import annotations

import mlflow


def nothing_tracked() -> bool:
    """True when the test's MLflow store holds no run and no experiment but its Default one: a
    command that refused its input wrote nothing there."""
    client = mlflow.MlflowClient()
    return ([e.name for e in client.search_experiments()] == ["Default"]
            and not client.search_runs(["0"], max_results=1))
