"""What each model command takes besides the model: evaluate, compare, predict, promote and
visualize, as typed, frozen dataclasses. The CLI's flags take their defaults from here, and the
commands' functions take one of these (`run_evaluate(model, EvaluateOptions(split="val"))`).

They live together in this light module, not in their commands' modules, so that the CLI reads
the defaults without importing every command (torch, MLflow, OpenCV) to print its help.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EvaluateOptions:
    """How `evaluate` scores a model (the command's flags take their defaults from here)."""

    split: str = "test"
    batch_size: int = 16
    device: str = "auto"  # cuda, cuda:1, mps, cpu or auto (cuda > mps > cpu)
    save_dir: str | Path | None = None  # None: a fresh outputs/evaluate/<run id>/
    overwrite: bool = False  # an explicit save_dir that holds files is emptied instead of refused
    data_root: str | None = None  # None: the dataset the model was trained on
    smooth_window: int = 31  # frames of the smoothed timelines
    progress: bool = True


@dataclass(frozen=True)
class CompareOptions:
    """How `compare` puts two models (or two groups) side by side (the command's flags take their
    defaults from here)."""

    split: str = "test"
    metric: str = "mean_class_acc"  # the verdict's metric (stats.METRICS)
    method: str = "t"  # the interval over subjects: t or bootstrap
    gradcam: int = 2  # GradCAM pairs of fixed and of broken clips in the report
    data_root: str | None = None  # None: the dataset model A was trained on
    device: str = "auto"
    save_dir: str | Path | None = None  # None: a fresh outputs/compare/<run id>/
    overwrite: bool = False
    progress: bool = True


@dataclass(frozen=True)
class PredictOptions:
    """How `predict` makes a video's timeline (the command's flags take their defaults from here)."""

    save_dir: str | Path | None = None  # None: a fresh outputs/predict/<video name>-<time>/
    device: str = "auto"
    stride: int | None = None  # frames between windows; None: a quarter clip (windows.window_stride)
    smooth_window: int = 31  # frames of the smoothed timeline
    overlay: bool = False  # also write the video with its labels drawn in
    overwrite: bool = False
    masks: str | Path | None = None  # None: found beside the video (dataset layout), if there
    keypoints: str | Path | None = None


@dataclass(frozen=True)
class PromoteOptions:
    """How `promote` chooses the champion (the command's flags take their defaults from here)."""

    metric: str = "test_mean_class_acc"  # higher wins
    split: str = "test"
    data_root: str | None = None  # None: each version's own training dataset
    progress: bool = False
    reevaluate: bool = False  # evaluate every version not evaluated on today's data
    rule: str = "interval"  # "interval": on evidence (stats.py); "best": the plain higher value
    min_improvement: float = 0.0  # what the interval's lower end must exceed (rule interval)
    method: str = "t"  # the paired interval: t or bootstrap


@dataclass(frozen=True)
class VisualizeOptions:
    split: str = "test"
    num_samples: int = 20
    layer: str = "block4"
    alpha: float = 0.5
    fps: int = 10
    misclassified_only: bool = False
    scale_factor: int = 3
    long_sample: bool = False
    sample_duration: int = 300
    start_frame: int = 0
    subject_id: str | None = None
    save_dir: str | None = None  # None: a fresh outputs/visualize/<run id>/
    overwrite: bool = False  # an explicit save_dir that holds files is emptied instead of refused
    seed: int = 0
