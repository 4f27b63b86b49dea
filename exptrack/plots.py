"""The `plots` command: a run's training figures (figures.py) drawn again from its logged metric
tables, written to a folder and logged to the run under plots/."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from . import figures, tracking
from .errors import ModelError
from .outputs import check_folder_path


def plot_run(run_id: str, save_dir: str | Path, top_classes: int = 10) -> Path:
    """`exptrack plots --run`: the training figures from a run's logged metrics tables."""
    out = Path(save_dir) / run_id
    check_folder_path(out, "--save-dir")
    with tempfile.TemporaryDirectory(prefix="exptrack-plots-") as tmp:
        try:
            history = pd.read_csv(tracking.download_run_artifact(run_id, "metrics/training_metrics.csv", Path(tmp)))
            per_class = pd.read_csv(tracking.download_run_artifact(run_id, "metrics/per_class_accuracy.csv", Path(tmp)))
        except Exception as exc:  # noqa: BLE001 - MLflow raises several kinds for a missing artifact
            raise ModelError(f"run {run_id}: no metrics/training_metrics.csv to plot ({exc})") from exc
    figures.training_plots(history, per_class, out, top_classes)
    tracking.log_artifacts_to_run(run_id, out, "plots")
    return out
