"""Every matplotlib/seaborn figure of exptrack. Functions take tables, write a PNG, return its path."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402 - after matplotlib.use, before pyplot picks a backend
import numpy as np
import pandas as pd  # noqa: E402 - (kept with the imports above)
import seaborn as sns  # noqa: E402 - imports pyplot

from .data.layout import BACKGROUND, REST  # noqa: E402


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
    ax.set_xlabel(str(table.index.name or ""))
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


def difference_heatmap(table: pd.DataFrame, title: str, path: Path) -> Path:
    """A signed table (e.g. B's row-normalised confusion minus A's): red where it grew, blue
    where it shrank, white at 0."""
    n = len(table)
    fig, ax = plt.subplots(figsize=(max(5, 0.55 * n + 2), max(4, 0.5 * n + 1.5)))
    limit = max(float(abs(table.to_numpy()).max()), 1e-9)
    sns.heatmap(table, annot=n <= 20, fmt="+.2f", cmap="RdBu_r", vmin=-limit, vmax=limit, center=0, ax=ax, square=True)
    ax.set_title(title)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return _save(fig, path)


def overlaid_curves(histories: dict[str, pd.DataFrame], path: Path) -> Path:
    """Training curves of several runs on shared axes: loss (train dashed, validation solid) and
    validation mean class accuracy, per epoch; one colour per run in every panel."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for i, (label, h) in enumerate(histories.items()):
        h = h.reindex(columns=[*h.columns, *(c for c in VAL_COLUMNS if c not in h.columns)])
        color = f"C{i}"
        for column, ax, name, style in (("train_loss", axes[0], f"{label} train", "--"),
                                        ("val_loss", axes[0], f"{label} validation", "-"),
                                        ("val_mean_class_acc", axes[1], label, "-")):
            if pd.notna(h[column]).any():  # a train + val fit has no validation series
                ax.plot(h["epoch"], h[column], style, color=color, marker="o", markersize=3, label=name)
    for ax, title, ylabel in ((axes[0], "loss", "loss"), (axes[1], "validation mean class accuracy", "accuracy")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return _save(fig, path)


def timeline(true, raw, smoothed, title: str, path: Path, class_names: list[str] | None = None,
             rest_output: bool = True) -> Path:
    """Frame-level labels over a whole video: true (None: no ground truth, no line), predicted
    per clip, and smoothed (-1 = rest); the y axis names the classes when names are given. With
    `rest_output` (the model says rest) the frames it calls rest are shaded, with their share;
    without it, -1 only marks frames no clip covered."""
    if class_names and class_names[-1] == REST:  # a model's rest output: drawn as -1, like the labels' rest
        class_names = class_names[:-1]
    fig, ax = plt.subplots(figsize=(12, 2.8 if not class_names else max(2.8, 0.3 * len(class_names) + 1)))
    frames = np.arange(len(raw))
    series = [(0.0, true, "true"), (0.15, raw, "predicted"), (0.3, smoothed, "smoothed")]
    for offset, labels, name in series:
        if labels is not None:
            ax.step(frames, np.asarray(labels) + offset, where="post", label=name, linewidth=1.2)
    rest = (np.asarray(smoothed) == BACKGROUND) & rest_output
    edges = np.flatnonzero(np.diff(np.r_[0, rest.astype(np.int8), 0]))  # run starts and ends, alternating
    for n, (lo, hi) in enumerate(zip(edges[::2], edges[1::2], strict=True)):  # shaded: where it says rest
        ax.axvspan(lo, hi, color="0.85", zorder=0, label=f"{REST} (smoothed), {rest.mean():.0%} of frames" if n == 0 else None)
    ax.set_xlabel("frame")
    if class_names:
        ax.set_yticks(range(-1, len(class_names)), [REST, *class_names], fontsize=7)
        ax.set_ylabel("class")
    else:
        ax.set_ylabel(f"class (-1 = {REST})")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1), fontsize=8)  # beside the plot, never over a line
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# training curves (from training_metrics.csv and per_class_accuracy.csv)


def _line(ax, x, ys: dict, title: str, ylabel: str) -> None:
    drawn = 0
    for label, y in ys.items():
        if pd.notna(y).any():  # a train + val fit has no validation series
            ax.plot(x, y, marker="o", markersize=3, label=label)
            drawn += 1
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)


VAL_COLUMNS = ("val_loss", "val_acc", "val_mean_class_acc", "val_top3_acc")


def training_plots(history: pd.DataFrame, per_class: pd.DataFrame, out: Path, top_classes: int = 10) -> list[Path]:
    """The eight figures of the original plot_training.py, from a run's metrics tables."""
    out.mkdir(parents=True, exist_ok=True)
    # a train + val fit has no validation columns: its validation lines stay empty
    history = history.reindex(columns=[*history.columns, *(c for c in VAL_COLUMNS if c not in history.columns)])
    x = history["epoch"]
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4))
    _line(ax, x, {"train": history["train_loss"], "validation": history["val_loss"]}, "loss", "loss")
    paths.append(_save(fig, out / "loss_curves.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    _line(ax, x, {"train": history["train_acc"], "validation": history["val_acc"],
                  "validation mean class": history["val_mean_class_acc"]}, "accuracy", "accuracy")
    paths.append(_save(fig, out / "accuracy_curves.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    _line(ax, x, {"lr": history["lr"]}, "learning rate", "lr")
    ax.set_yscale("log")
    paths.append(_save(fig, out / "learning_rate.png"))

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    _line(axes[0, 0], x, {"train": history["train_loss"], "validation": history["val_loss"]}, "loss", "loss")
    _line(axes[0, 1], x, {"train": history["train_acc"], "validation": history["val_acc"]}, "accuracy", "accuracy")
    _line(axes[1, 0], x, {"train - validation accuracy": history["train_acc"] - history["val_acc"]},
          "generalisation gap", "accuracy gap")
    _line(axes[1, 1], x, {"lr": history["lr"]}, "learning rate", "lr")
    axes[1, 1].set_yscale("log")
    paths.append(_save(fig, out / "combined_metrics.png"))

    classes = per_class.drop(columns="epoch").dropna(axis=1, how="all")
    if classes.empty:  # nothing was validated (train + val fit): no per-class figures
        return paths
    final = classes.iloc[-1].sort_values(ascending=False)
    for name, cols, title in (("per_class_accuracy.png", list(classes.columns), "per-class validation accuracy"),
                              (f"per_class_accuracy_top{top_classes}.png", list(final.index[:top_classes]),
                               f"top {top_classes} classes by final validation accuracy")):
        fig, ax = plt.subplots(figsize=(9, 5))
        _line(ax, per_class["epoch"], {c.replace("class_", "class "): classes[c] for c in cols}, title, "accuracy")
        paths.append(_save(fig, out / name))

    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(per_class) + 3), max(4, 0.35 * classes.shape[1] + 1.5)))
    heat = classes.T.copy()
    heat.columns = per_class["epoch"].astype(int)
    sns.heatmap(heat, vmin=0, vmax=1, cmap="viridis", ax=ax, cbar_kws={"label": "accuracy"})
    ax.set_title("per-class validation accuracy over epochs")
    ax.set_xlabel("epoch")
    paths.append(_save(fig, out / "per_class_heatmap.png"))

    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(final) + 2), 4))
    sns.barplot(x=[c.replace("class_", "") for c in final.index], y=final.values, ax=ax, color="steelblue")
    ax.set_ylim(0, 1)
    ax.set_title("final validation accuracy per class")
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy")
    paths.append(_save(fig, out / "final_class_comparison.png"))
    return paths


def group_curves(curves: pd.DataFrame, members: dict[str, pd.DataFrame], path: Path) -> Path:
    """A seed or fold group's validation curves: each member thin, the mean bold with a band of
    +-1 standard deviation over the members that reached the epoch. `curves` has epoch and
    <metric>_mean / <metric>_std columns; `members` maps a member (e.g. "seed=1") to its history."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, metric in zip(axes, ("val_mean_class_acc", "val_loss"), strict=True):
        for label, history in members.items():
            if metric in history:
                ax.plot(history["epoch"], history[metric], lw=0.8, alpha=0.5, label=label)
        if f"{metric}_mean" in curves:
            mean, std = curves[f"{metric}_mean"], curves[f"{metric}_std"].fillna(0)
            ax.plot(curves["epoch"], mean, color="black", lw=2, label="mean")
            ax.fill_between(curves["epoch"], mean - std, mean + std, color="black", alpha=0.15, label="+-1 sd")
        ax.set_title(f"{metric} over the group's members")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    return _save(fig, path)
