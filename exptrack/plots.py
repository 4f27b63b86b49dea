"""Every matplotlib/seaborn figure of exptrack. Functions take tables, write a PNG, return its path."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def grouped_bars(table: pd.DataFrame, title: str, ylabel: str, path: Path) -> Path:
    """Bars per index value (x) and column (hue), e.g. class x split counts."""
    long = table.reset_index(names="x").melt(id_vars="x", var_name="group", value_name="value")
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(table) * max(1, table.shape[1] / 2)), 4))
    sns.barplot(data=long, x="x", y="value", hue="group", ax=ax)
    ax.set_title(title)
    ax.set_xlabel(table.index.name or "")
    ax.set_ylabel(ylabel)
    return _save(fig, path)


def video_properties(videos: pd.DataFrame, path: Path) -> Path:
    """Histograms of duration, fps and frame size over the subjects' videos."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    sns.histplot(data=videos, x="duration_s", hue="split", multiple="stack", ax=axes[0])
    axes[0].set_title("video length (s)")
    sns.countplot(data=videos.assign(fps=videos["fps"].round(2)), x="fps", hue="split", ax=axes[1])
    axes[1].set_title("frame rate")
    sns.scatterplot(data=videos, x="width", y="height", hue="split", ax=axes[2])
    axes[2].set_title("frame size (px)")
    return _save(fig, path)
