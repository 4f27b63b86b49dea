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


def confusion_heatmap(table: pd.DataFrame, title: str, path: Path, fmt: str = "d") -> Path:
    n = len(table)
    fig, ax = plt.subplots(figsize=(max(5, 0.55 * n + 2), max(4, 0.5 * n + 1.5)))
    sns.heatmap(table, annot=n <= 20, fmt=fmt, cmap="Blues", cbar=True, ax=ax, square=True)
    ax.set_title(title)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return _save(fig, path)


def timeline(true, raw, smoothed, title: str, path: Path) -> Path:
    """Frame-level labels over a whole video: true, predicted per clip, and smoothed (-1 = none)."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(12, 2.8))
    frames = np.arange(len(true))
    for offset, labels, name in ((0.0, true, "true"), (0.15, raw, "predicted"), (0.3, smoothed, "smoothed")):
        ax.step(frames, np.asarray(labels) + offset, where="post", label=name, linewidth=1.2)
    ax.set_xlabel("frame")
    ax.set_ylabel("class (-1 = background)")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)
