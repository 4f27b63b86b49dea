"""The one home of classification metrics and of clip -> frame labels.

Clip metrics (accuracy, top-3, mean class accuracy, per-class accuracy, macro P/R/F1, confusion)
are used by validation (through `validation_metrics`) and evaluation; frame labels (averaged
window probabilities, majority smoothing, frame accuracy) by evaluate, predict and visualize,
so that evaluate's frame accuracy and predict's timeline are the same computation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from .data.layout import BACKGROUND

# One vocabulary for every logged figure, training's and evaluate's alike: <split>_acc,
# <split>_mean_class_acc, <split>_top3_acc, <split>_macro_f1, <split>_frame_acc, ... Runs and
# versions from before it carry the long spellings on the left; they are still read.
LEGACY_SUFFIXES = {"mean_class_acc": "mean_class_accuracy", "top3_acc": "top3_accuracy",
                   "frame_acc_smoothed": "frame_accuracy_smoothed", "frame_acc": "frame_accuracy", "acc": "accuracy"}

# The clip metrics a registered version carries as tags per split (promotion compares them);
# every other figure is on the evaluation run and the version's model card.
HEADLINE_METRICS = ("acc", "top3_acc", "mean_class_acc", "macro_f1")


def canonical_metric(name: str) -> str:
    """`name` in today's vocabulary (test_mean_class_accuracy -> test_mean_class_acc)."""
    return _respelled(name, [(old, new) for new, old in LEGACY_SUFFIXES.items()]) or name


def legacy_metric(name: str) -> str | None:
    """The spelling that `name` (today's vocabulary) had in earlier runs and tags, if it changed."""
    return _respelled(name, list(LEGACY_SUFFIXES.items()))


def _respelled(name: str, suffixes: list[tuple[str, str]]) -> str | None:
    """`name` with the first matching (from, to) suffix replaced; longest first, so frame_acc
    is tried before acc. None when none matches."""
    for before, after in suffixes:
        if name == before or name.endswith("_" + before):
            return name[: len(name) - len(before)] + after
    return None

# ---------------------------------------------------------------------------------------------
# clip metrics


@dataclass(frozen=True)
class ClassificationMetrics:
    summary: dict[str, float]  # acc, top3_acc, mean_class_acc, macro_*, clips
    per_class_accuracy: np.ndarray  # (K,) recall of each class; NaN for a class with no clip
    per_class: pd.DataFrame  # classes present: precision, recall, f1, support


def top_k_accuracy(y_true: np.ndarray, scores: np.ndarray, k: int = 3) -> float:
    """Share of rows whose true class is among the k highest scores (ties: the lower id ranks
    first). With k >= K every class is in the top k, so it is 1.0 by definition."""
    if len(y_true) == 0:
        return float("nan")
    if k >= scores.shape[1]:
        return 1.0
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (N, k)
    return float((top == y_true[:, None]).any(axis=1).mean())


def classification_metrics(y_true: np.ndarray, scores: np.ndarray, num_classes: int | None = None) -> ClassificationMetrics:
    """Metrics of (N,) true ids against (N, K) probabilities or logits (only their order matters).

    Mean class accuracy, macro precision/recall/F1 and `per_class` are over the classes that
    occur in `y_true` (mean class accuracy = balanced accuracy); per-class accuracy is NaN for
    the others."""
    y_true = np.asarray(y_true, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    num_classes = num_classes or scores.shape[1]
    y_pred = scores.argmax(1) if len(y_true) else np.zeros(0, dtype=np.int64)
    support = np.bincount(y_true, minlength=num_classes)[:num_classes].astype(np.float64)
    hits = np.bincount(y_true[y_pred == y_true], minlength=num_classes)[:num_classes]
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class_acc = np.where(support > 0, hits / support, np.nan)
    present = np.flatnonzero(support > 0).tolist()
    if present:
        p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=present, zero_division=0)
    else:
        p = r = f = s = np.zeros(0)
    per_class = pd.DataFrame({"precision": p, "recall": r, "f1": f, "support": s},
                             index=pd.Index(present, name="class"))
    nan = float("nan")
    summary = {
        "acc": float((y_pred == y_true).mean()) if len(y_true) else nan,
        "top3_acc": top_k_accuracy(y_true, scores, 3),
        "mean_class_acc": float(np.nanmean(per_class_acc)) if present else nan,
        "macro_precision": float(np.mean(p)) if present else nan,
        "macro_recall": float(np.mean(r)) if present else nan,
        "macro_f1": float(np.mean(f)) if present else nan,
        "clips": float(len(y_true)),
    }
    return ClassificationMetrics(summary, per_class_acc, per_class)


def validation_metrics(logits, labels, num_classes: int) -> tuple[dict[str, float], np.ndarray]:
    """The contract of the training loop's validation: ({acc, mean_class_acc, top3_acc}, (K,)
    per-class accuracy with NaN for absent classes). Takes torch tensors or arrays."""
    scores = logits.detach().float().cpu().numpy() if hasattr(logits, "detach") else np.asarray(logits)
    y = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    m = classification_metrics(y, scores, num_classes)
    return {k: m.summary[k] for k in ("acc", "mean_class_acc", "top3_acc")}, m.per_class_accuracy


def confusion_tables(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Confusion in counts (rows = true, columns = predicted, over the classes seen in either)
    and row-normalised (each row sums to 1)."""
    labels = sorted(set(np.asarray(y_true).tolist()) | set(np.asarray(y_pred).tolist()))
    counts = confusion_matrix(y_true, y_pred, labels=labels)
    confusion = pd.DataFrame(counts, index=pd.Index(labels, name="true"), columns=pd.Index(labels, name="predicted"))
    rows = confusion.sum(axis=1).replace(0, np.nan)
    return confusion, confusion.div(rows, axis=0).fillna(0.0)


# ---------------------------------------------------------------------------------------------
# clip -> frame labels


def window_starts(num_frames: int, clip_len: int, stride: int) -> np.ndarray:
    """Starts of windows every `stride` frames, plus one ending at the last frame, so that every
    frame is covered (a video shorter than a clip: one window at 0)."""
    starts = list(range(0, max(num_frames - clip_len, 0) + 1, stride))
    if starts[-1] < num_frames - clip_len:
        starts.append(num_frames - clip_len)
    return np.asarray(starts, dtype=np.int64)


def window_average(starts: np.ndarray, values: np.ndarray, num_frames: int, clip_len: int,
                   per_frame: bool = False) -> np.ndarray:
    """Average per frame of the windows [start, start + clip_len) that cover it.

    `values` is (N, *F), one value per window for all of its frames, or with `per_frame`
    (N, clip_len, *F), a value per frame of the window. Windows are clipped to [0, num_frames).
    Returns (num_frames, *F) float32; NaN where no window covers a frame."""
    values = np.asarray(values, dtype=np.float32)
    tail = values.shape[2:] if per_frame else values.shape[1:]
    sums = np.zeros((num_frames, *tail), dtype=np.float32)
    cover = np.zeros(num_frames, dtype=np.float32)
    for s, v in zip(np.asarray(starts, dtype=np.int64), values, strict=True):
        lo, hi = max(int(s), 0), min(int(s) + clip_len, num_frames)
        if hi <= lo:
            continue
        sums[lo:hi] += v[lo - s:hi - s] if per_frame else v
        cover[lo:hi] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / cover.reshape(-1, *([1] * len(tail)))  # 0 / 0 = NaN where uncovered


def frame_probabilities(starts: np.ndarray, probs: np.ndarray, num_frames: int, clip_len: int) -> np.ndarray:
    """(N,) window starts and (N, K) window probabilities -> (num_frames, K): each frame the mean
    of the windows covering it; NaN rows for frames no window covers."""
    return window_average(starts, probs, num_frames, clip_len)


def frame_labels(frame_probs: np.ndarray, rest_index: int | None = None, rest_weight: float = 1.0) -> np.ndarray:
    """(T, K) frame probabilities -> (T,) int64 labels: the most probable class (ties: the
    lower id), the rest output's probability (`rest_index`) first multiplied by `rest_weight`
    (the model's: calibrated_rest_weight, or the prior clips.rest_weight); background
    (-1) where rest wins and for uncovered (NaN) frames."""
    covered = ~np.isnan(frame_probs).any(axis=1)
    out = np.full(len(frame_probs), BACKGROUND, dtype=np.int64)
    scores = frame_probs[covered]
    if rest_index is not None and rest_weight != 1.0:
        scores = scores.copy()
        scores[:, rest_index] *= rest_weight
    out[covered] = scores.argmax(1)
    if rest_index is not None:
        out[out == rest_index] = BACKGROUND
    return out


# The rest weights a validation calibration chooses among: a quarter octave apart, 1/16 to 16.
REST_WEIGHT_GRID = tuple(float(2 ** (k / 4)) for k in range(-16, 17))
MIN_CALIBRATION_FRAMES = 20  # fewer rest (or exercise) frames than this: too few to choose by, the prior stands


def calibrated_rest_weight(frame_probs: np.ndarray, true: np.ndarray, rest_index: int, prior: float) -> float:
    """The rest weight (frame_labels) under which the most frames of validation videos are
    labelled right, rest counted as a class: (T, K) frame probabilities (NaN rows: uncovered,
    skipped) against (T,) true labels (-1: rest). `prior` (clips.rest_weight) when the videos hold
    too few rest or exercise frames to choose by; ties go to the weight nearest the prior.

    Why on frames of whole videos: a rest weight chosen this way beat the prior on the hard
    preset (+0.11 of the exercise frames, +0.06 of all frames, 4 seeds x 3 subjects) and tied it
    on the demo, while one chosen on validation clips did worse: clips leave out the windows that
    straddle a set and the rest after it (bench/rest.py, bench/RESULTS.md)."""
    covered = ~np.isnan(frame_probs).any(axis=1)
    labels = np.where(true == BACKGROUND, rest_index, true)[covered]
    if min((labels == rest_index).sum(), (labels != rest_index).sum()) < MIN_CALIBRATION_FRAMES:
        return prior
    scores = np.array(frame_probs[covered], dtype=np.float64)  # one copy; only the rest column changes
    rest = scores[:, rest_index].copy()
    best, best_right = prior, -1
    for weight in sorted((prior, *REST_WEIGHT_GRID), key=lambda w: abs(np.log(w / prior))):  # nearest first
        scores[:, rest_index] = rest * weight
        right = int((scores.argmax(1) == labels).sum())
        if right > best_right:
            best, best_right = weight, right
    return float(best)


def output_index(label: int, rest_index: int | None) -> int | None:
    """The model output of a frame label: rest (-1) is the rest output, None without one."""
    return label if label != BACKGROUND else rest_index


def frame_confidence(frame_probs: np.ndarray, labels: np.ndarray, rest_index: int | None = None) -> np.ndarray:
    """The probability of each frame's label: of the rest output for background frames when the
    model has one, else NaN there (and for uncovered frames)."""
    out = np.full(len(labels), np.nan, dtype=np.float32)
    columns = np.where(labels == BACKGROUND, -1 if rest_index is None else rest_index, labels)
    scored = columns >= 0
    out[scored] = frame_probs[np.flatnonzero(scored), columns[scored]]
    return out


def smooth_labels(labels: np.ndarray, window: int) -> np.ndarray:
    """Majority vote over a centred window (edges repeat the first/last label; ties: the lower
    id); background (-1) is a vote like any other."""
    if window <= 1 or len(labels) == 0:
        return labels.copy()
    half = window // 2
    padded = np.pad(labels, half, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, window)[: len(labels)]  # (T, window)
    shifted = windows - BACKGROUND  # ids >= 0
    counts = np.apply_along_axis(np.bincount, 1, shifted, minlength=int(shifted.max()) + 1)
    return counts.argmax(axis=1) + BACKGROUND


def frame_accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    """Accuracy over the frames that carry an exercise label (background is not scored)."""
    scored = true != BACKGROUND
    return float((pred[scored] == true[scored]).mean()) if scored.any() else float("nan")


# What frame_scores returns, in the order reports show them.
FRAME_SCORES = ("frame_acc", "frame_acc_all", "rest_precision", "rest_recall")


def frame_scores(pred: np.ndarray, true: np.ndarray, scored: np.ndarray | None = None) -> dict[str, float]:
    """Frame labels (-1 = rest) against the true ones, over the `scored` frames (all by default):

    frame_acc       over the frames labelled with an exercise (as a model without rest is scored)
    frame_acc_all   over every frame, rest counted as a class
    rest_precision  of the frames called rest, the share labelled rest (NaN: none called rest)
    rest_recall     of the frames labelled rest, the share called rest (NaN: none labelled rest)
    """
    pred, true = np.asarray(pred), np.asarray(true)
    if scored is not None:
        pred, true = pred[scored], true[scored]
    said, is_rest = pred == BACKGROUND, true == BACKGROUND
    nan = float("nan")
    return {"frame_acc": frame_accuracy(pred, true),
            "frame_acc_all": float((pred == true).mean()) if len(true) else nan,
            "rest_precision": float((said & is_rest).sum() / said.sum()) if said.any() else nan,
            "rest_recall": float((said & is_rest).sum() / is_rest.sum()) if is_rest.any() else nan}
