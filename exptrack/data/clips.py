"""The clip index: sliding windows over frame labels, and the choices made on top of it
(validation carve-out, class-1 downsampling, class and sampler weights)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .layout import BACKGROUND


@dataclass(frozen=True)
class ClipIndex:
    """One row per clip; parallel arrays so that millions of clips stay cheap."""

    subjects: tuple[str, ...]  # subject_idx indexes this
    subject_idx: np.ndarray  # (N,) int32
    start: np.ndarray  # (N,) int64, first frame
    label: np.ndarray  # (N,) int64, majority class of the non-background frames
    purity: np.ndarray  # (N,) float32, share of the clip's frames carrying `label`
    clip_len: int

    def __len__(self) -> int:
        return len(self.label)

    def select(self, rows: np.ndarray) -> "ClipIndex":
        return ClipIndex(self.subjects, self.subject_idx[rows], self.start[rows], self.label[rows],
                         self.purity[rows], self.clip_len)

    def class_counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.label, minlength=num_classes)[:num_classes]

    def digest(self) -> str:
        """Stable hash of exactly which clips (subject, start, label) this index holds."""
        h = hashlib.sha256(f"{self.clip_len}|{'|'.join(self.subjects)}".encode())
        for arr in (self.subject_idx.astype(np.int64), self.start.astype(np.int64), self.label.astype(np.int64)):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]


def window_labels(frame_labels: np.ndarray, clip_len: int, stride: int,
                  rest_label: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sliding windows over one subject's labels -> (starts, labels, purity).

    A window's label is the majority over its non-background frames (ties go to the lower id),
    and purity the share of its frames carrying that label. With `rest_label`, a window whose
    frames are mostly background (more than half) is labelled rest instead, its purity the
    background share; without it, a window of background only gets -1.
    """
    n = len(frame_labels)
    if n < clip_len:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    starts = np.arange(0, n - clip_len + 1, stride, dtype=np.int64)
    windows = np.lib.stride_tricks.sliding_window_view(frame_labels, clip_len)[starts]  # (W, clip_len)
    num_ids = int(max(frame_labels.max(), 0)) + 2  # column 0 counts background
    counts = np.zeros((len(starts), num_ids), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(len(starts)), clip_len), windows.ravel().astype(np.int64) + 1), 1)
    fg = counts[:, 1:]
    labels = np.where(fg.sum(1) > 0, fg.argmax(1), BACKGROUND)
    purity = np.where(labels >= 0, fg.max(1) / clip_len, 0.0)
    if rest_label is not None:
        rest = 2 * counts[:, 0] > clip_len
        labels = np.where(rest, rest_label, labels)
        purity = np.where(rest, counts[:, 0] / clip_len, purity)
    return starts, labels.astype(np.int64), purity.astype(np.float32)


def build_clip_index(frame_labels: dict[str, np.ndarray], clip_len: int, stride: int,
                     min_purity: float = 0.0, rest_label: int | None = None) -> ClipIndex:
    """Windows of every subject (labelled by window_labels); background-only windows (there are
    none with `rest_label`) and those under `min_purity` dropped."""
    subjects = tuple(frame_labels)
    parts = []
    for i, subject in enumerate(subjects):
        starts, labels, purity = window_labels(frame_labels[subject], clip_len, stride, rest_label)
        keep = (labels != BACKGROUND) & (purity >= min_purity)
        parts.append((np.full(keep.sum(), i, np.int32), starts[keep], labels[keep], purity[keep]))
    if not parts:
        return ClipIndex(subjects, np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.int64),
                         np.empty(0, np.float32), clip_len)
    subject_idx, start, label, purity = (np.concatenate(c) for c in zip(*parts, strict=True))
    return ClipIndex(subjects, subject_idx, start, label, purity, clip_len)


def carve_validation(train_subjects: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split the train subjects into (train, val), subject-disjoint.

    At least one subject goes to validation (when fraction > 0) and at least one stays in
    training. The choice depends only on the sorted subject names and the seed.
    """
    names = sorted(train_subjects)
    if fraction <= 0 or len(names) < 2:
        return names, []
    n_val = min(max(1, round(fraction * len(names))), len(names) - 1)
    order = np.random.default_rng(seed).permutation(len(names))
    val = sorted(names[i] for i in order[:n_val])
    return [s for s in names if s not in val], val


def subject_folds(subjects: list[str], k: int, seed: int) -> list[list[str]]:
    """K subject-disjoint folds of near-equal size covering every subject; which subject goes
    where depends only on the sorted names and the seed."""
    names = sorted(subjects)
    order = np.random.default_rng(seed).permutation(len(names))
    return [sorted(names[i] for i in part) for part in np.array_split(order, k)]


def downsample_class(index: ClipIndex, cls: int, num_classes: int, seed: int) -> ClipIndex:
    """Keep a random subset of class `cls` clips, as many as the median count of the other
    classes that occur; the other classes are untouched."""
    counts = index.class_counts(num_classes)
    others = np.delete(counts, cls)
    others = others[others > 0]
    if counts[cls] == 0 or len(others) == 0:
        return index
    target = int(np.median(others))
    rows = np.flatnonzero(index.label == cls)
    if len(rows) <= target:
        return index
    rng = np.random.default_rng(seed)
    drop = rng.choice(rows, size=len(rows) - target, replace=False)
    keep = np.setdiff1d(np.arange(len(index)), drop)
    return index.select(keep)


def downsample_classes(index: ClipIndex, classes: tuple[int | None, ...], num_classes: int, seed: int) -> ClipIndex:
    """downsample_class for each of `classes` in turn (None: skipped): the dominant exercise
    class and the rest class, which outnumber the others in a workout video."""
    for cls in classes:
        if cls is not None:
            index = downsample_class(index, cls, num_classes, seed)
    return index


def rest_weight(natural: ClipIndex, trained: ClipIndex, rest_index: int | None, num_classes: int,
                weighted_sampler: bool) -> float:
    """How much more often rest occurs in the training videos than training showed it: the share
    of rest windows among all training windows over the share of rest in what the model was fed
    (1 / classes present with the balancing sampler, else its share after downsampling): the
    prior of the rest weight a timeline multiplies the rest probability by (metrics.frame_labels),
    since the balanced training otherwise undercalls rest, which a workout video is mostly made
    of. Training replaces it by the weight chosen on the validation videos
    (metrics.calibrated_rest_weight) where it can; a model without validation keeps it (bench/rest.py).
    1.0 without a rest output or rest windows."""
    if rest_index is None or len(natural) == 0 or not (natural.label == rest_index).any():
        return 1.0
    share = float(np.mean(natural.label == rest_index))
    fed = 1.0 / int((trained.class_counts(num_classes) > 0).sum()) if weighted_sampler else float(
        np.mean(trained.label == rest_index))
    return share / fed if fed > 0 else 1.0


def class_weights(counts: np.ndarray) -> np.ndarray:
    """Inverse-frequency weights normalised to mean 1 over the classes present; absent classes 0."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    w = np.zeros_like(counts)
    w[present] = counts[present].sum() / (present.sum() * counts[present])
    return w.astype(np.float32)


def sampler_weights(index: ClipIndex, num_classes: int) -> np.ndarray:
    """Per-clip weight 1/count(class): every class is drawn equally often in expectation."""
    counts = index.class_counts(num_classes).astype(np.float64)
    return (1.0 / counts[index.label]).astype(np.float64)
