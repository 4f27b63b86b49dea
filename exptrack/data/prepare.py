"""From a config to ready splits: data root (demo generated if asked), layout, cache, clip indexes."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from filelock import FileLock

from ..config import Config
from . import clips, layout
from .cache import (CacheNeed, FrameCache, Guides, VideoEntry, build_processes, cache_need, check_space,
                    ensure_cached)
from .demo import partial_path, preset_spec, write_demo_dataset
from .errors import DataError, DataWarnings
from .layout import DatasetLayout, SubjectFiles

log = logging.getLogger("exptrack.data")


@dataclass
class SubjectData:
    """Everything cached for one subject; arrays are memory maps shared by all clips."""

    files: SubjectFiles
    video: VideoEntry
    labels: np.ndarray  # (T,) int16, -1 = background
    keypoints: np.ndarray | None = None  # (T, 17, 3) float32, pixels of the cached frame size
    masks: np.ndarray | None = None  # (T, S, S) uint8
    mask_present: np.ndarray | None = None  # (T,) bool
    attention: np.ndarray | None = None  # (T, S, S) uint8

    @property
    def num_frames(self) -> int:
        return self.video.info.num_frames


@dataclass
class PreparedData:
    config: Config
    layout: DatasetLayout
    subjects: dict[str, SubjectData]
    split_subjects: dict[str, list[str]]  # train / val / test -> subject names
    splits: dict[str, clips.ClipIndex]  # train after downsampling, val, test
    train_before_downsampling: clips.ClipIndex
    warnings: DataWarnings = field(default_factory=DataWarnings)
    cache: FrameCache | None = None  # the entries this data uses: cache.used

    def validation_weaknesses(self, min_subjects: int = 3, min_clips_per_class: int = 10) -> list[str]:
        """Why validation scores of this data are noisy, if they are: too few subjects, a trained
        class that fewer than `min_subjects` validation subjects perform (clips of one subject are
        correlated: the subject is the unit of evidence), or too few clips of some class. Empty
        when validation looks sound (or there is none)."""
        index = self.splits.get("val")
        if index is None or len(index) == 0:
            return []
        reasons = []
        k = self.config.model.num_classes
        n_subjects = len(self.split_subjects["val"])
        if n_subjects < min_subjects:
            reasons.append(f"{n_subjects} validation subject{'s' if n_subjects != 1 else ''} (< {min_subjects})")
        counts = index.class_counts(k)
        trained = np.flatnonzero(self.splits["train"].class_counts(k) > 0 if "train" in self.splits else counts > 0)
        subjects_per_class = np.array([len(np.unique(index.subject_idx[index.label == c])) for c in range(k)])
        rare = [c for c in trained if subjects_per_class[c] < min(min_subjects, n_subjects)]
        if rare:
            reasons.append(f"{len(rare)} class{'es' if len(rare) != 1 else ''} performed by fewer than "
                           f"{min(min_subjects, n_subjects)} validation subjects (classes {', '.join(map(str, rare))})")
        thin = [c for c in trained if counts[c] < min_clips_per_class]
        if thin:
            reasons.append(f"{len(thin)} class{'es' if len(thin) != 1 else ''} with fewer than "
                           f"{min_clips_per_class} validation clips (fewest: {int(counts[thin].min())})")
        return reasons

    def manifest(self, split: str) -> pd.DataFrame:
        """One row per clip of `split`: subject, start frame, label, purity (an MLflow dataset)."""
        index = self.splits[split]
        return pd.DataFrame({"subject": np.asarray(index.subjects)[index.subject_idx], "start": index.start,
                             "label": index.label, "purity": index.purity})

    def digest(self) -> str:
        """One hash over every split's clips: two runs with the same digest saw the same data."""
        return "-".join(self.splits[s].digest()[:8] for s in ("train", "val", "test") if s in self.splits)


def ensure_data_root(config: Config) -> Path:
    """The data root; generated demo data when it does not exist and the config allows it."""
    d = config.data
    root = Path(d.root)
    if root.exists():
        return root
    if not d.demo:
        raise DataError(f"{root}: data root not found (set data.root, or data.demo=true to generate demo data)")
    root.parent.mkdir(parents=True, exist_ok=True)
    # Several workers (tune) may start on the same folder at once: one generates, the others wait
    # and then read the finished dataset. It is written beside the root and renamed into place,
    # so that a killed generation never leaves a half dataset that looks complete.
    with FileLock(str(root) + ".lock"):
        if root.exists():
            return root
        spec = preset_spec(d.demo_preset, d.demo_subjects, d.demo_classes, d.demo_seed)
        log.info("data root %s does not exist: generating the %s demo dataset there (%d subjects, %d classes, seed %d)",
                 root, d.demo_preset, spec.subjects, spec.classes, spec.seed)
        for stale in root.parent.glob(partial_path(root, "*").name):  # under the lock: all from dead runs
            shutil.rmtree(stale, ignore_errors=True)
        write_demo_dataset(root, spec, progress=True)  # written beside root, renamed into place
    return root


def fold_pool(data_layout: DatasetLayout, folds: int, fold_seed: int) -> list[list[str]]:
    """The subject folds of data.folds: every non-test subject (split.csv's train and val) in one
    of `folds` subject-disjoint folds; the test split is never touched. DataError when the
    subjects cannot fill that many folds."""
    pool = [s.subject for s in data_layout.by_split("train") + data_layout.by_split("val")]
    if folds > len(pool):
        raise DataError(f"{data_layout.root / 'split.csv'}: data.folds={folds} needs at least {folds} train and val "
                        f"subjects (one per fold), there are {len(pool)}")
    return clips.subject_folds(pool, folds, fold_seed)


def assign_splits(data_layout: DatasetLayout, val_fraction: float, val_seed: int,
                  train_on_val: bool = False, folds: int = 0, fold: int | None = None,
                  fold_seed: int = 0) -> dict[str, list[str]]:
    """train / val / test subject lists; validation comes from split.csv if it names any, else it
    is carved out of the train subjects, subject-disjoint. `train_on_val` moves the validation
    subjects into train. With `folds` (and the `fold` this run validates on), validation is that
    fold and train the other folds."""
    train = [s.subject for s in data_layout.by_split("train")]
    val = [s.subject for s in data_layout.by_split("val")]
    test = [s.subject for s in data_layout.by_split("test")]
    if folds and fold is not None:
        parts = fold_pool(data_layout, folds, fold_seed)
        val = parts[fold]
        train = [s for i, part in enumerate(parts) if i != fold for s in part]
    elif not val:
        train, val = clips.carve_validation(train, val_fraction, val_seed)
    if train_on_val:
        train, val = train + val, []
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def load_subject(cache: FrameCache, files: SubjectFiles, video: VideoEntry, config: Config,
                 warnings: DataWarnings) -> SubjectData:
    d = config.data
    if files.labels is None:
        raise DataError(f"subject {files.subject}: no label file; a dataset subject needs one ({files.video})")
    labels = layout.read_labels(files.labels, video.info.num_frames, config.model.num_classes, warnings,
                                d.frame_base)
    if len(labels) and (labels == layout.BACKGROUND).all():  # else it silently adds nothing to its split
        warnings.warn("subject_only_background", f"{files.labels}: every frame of subject {files.subject} is "
                      "background (-1 or unlabelled); it contributes no clips")
    if video.info.num_frames < d.clip_len:  # else the subject silently adds nothing to its split
        warnings.warn("video_shorter_than_clip",
                      f"{files.video}: subject {files.subject} has {video.info.num_frames} frames, fewer than one "
                      f"clip (data.clip_len {d.clip_len}); it contributes no clips")
    return load_guides(cache, SubjectData(files=files, video=video, labels=labels), config, warnings)


def load_guides(cache: FrameCache, subject: SubjectData, config: Config, warnings: DataWarnings) -> SubjectData:
    """The subject's keypoints, person masks and skeleton attention, as far as the config uses
    them (each decoded once into the cache)."""
    d, files, video = config.data, subject.files, subject.video
    # Keypoints feed only skeleton attention, but a broken keypoint file is reported either way;
    # without attention a missing one is nothing to warn about.
    subject.keypoints = cache.keypoints(files, video.info, warnings if d.use_skeleton_attention else DataWarnings(0),
                                        d.frame_base)
    if d.use_masks:
        if files.mask_dir is None:
            warnings.warn("missing_mask_folder", f"no mask folder for subject {files.subject}; frames used unmasked")
        subject.masks, subject.mask_present = cache.masks(files, video.info.num_frames, warnings,
                                                          (video.info.width, video.info.height))
    if d.use_skeleton_attention and subject.keypoints is not None:
        subject.attention = cache.attention(files, subject.keypoints, d.skeleton_sigma, d.skeleton_floor,
                                            d.keypoint_min_conf, warnings)
    return subject


def _load_subject_or_fail(cache: FrameCache, files: SubjectFiles, video: VideoEntry, config: Config,
                          warnings: DataWarnings) -> SubjectData:
    try:
        return load_subject(cache, files, video, config, warnings)
    except DataError:
        raise
    except Exception as exc:  # a parser crash still names the subject's files
        raise DataError(f"subject {files.subject}: cannot read its labels, masks or keypoints "
                        f"({files.labels}, {files.mask_dir}, {files.keypoints}): {exc!r}") from exc


def warn_absent_classes(train: clips.ClipIndex, num_classes: int, warnings: DataWarnings) -> list[int]:
    """Classes 0..num_classes-1 without a training clip (e.g. ids that start at 1): a counted
    warning naming them. Such a class is never learned: its class weight is 0, its per-class
    accuracy NaN, and the model still outputs a probability for it."""
    absent = np.flatnonzero(train.class_counts(num_classes) == 0).tolist()
    if absent:
        warnings.warn("absent_classes", f"class id{'s' if len(absent) > 1 else ''} {', '.join(map(str, absent))} "
                      f"of model.num_classes={num_classes} ha{'ve' if len(absent) > 1 else 's'} no training clip: "
                      "never learned, class weight 0, per-class accuracy NaN (expected if the ids start at 1)",
                      count=len(absent))
    return absent


def warn_fold_classes(train: clips.ClipIndex, val: clips.ClipIndex, fold: int, num_classes: int,
                      warnings: DataWarnings) -> list[int]:
    """Classes the other folds train on that this validation fold never shows: its score says
    nothing about them (a counted warning naming them)."""
    missing = np.flatnonzero((train.class_counts(num_classes) > 0) & (val.class_counts(num_classes) == 0)).tolist()
    if missing:
        warnings.warn("fold_missing_classes", f"validation fold {fold} has no clip of class"
                      f"{'es' if len(missing) > 1 else ''} {', '.join(map(str, missing))}, which the other folds "
                      "train on: its score leaves them out", count=len(missing))
    return missing


def plan_subjects(config: Config, splits: tuple[str, ...] = ("train", "val", "test"),
                  warnings: DataWarnings | None = None) -> tuple[DatasetLayout, dict[str, list[str]], list[SubjectFiles]]:
    """The data root's layout, the subjects of every split, and the files of those in `splits`."""
    d = config.data
    data_layout = layout.discover(ensure_data_root(config), warnings if warnings is not None else DataWarnings())
    split_subjects = assign_splits(data_layout, d.val_fraction, d.val_seed, d.train_on_val, d.folds, d.fold,
                                   d.fold_seed)
    return data_layout, split_subjects, [data_layout.subject(s) for name in splits for s in split_subjects[name]]


def guides(config: Config) -> Guides:
    """The guides config.data caches beside the frames."""
    d = config.data
    attention = (d.skeleton_sigma, d.skeleton_floor, d.keypoint_min_conf) if d.use_skeleton_attention else None
    return Guides(masks=d.use_masks, attention=attention, frame_base=d.frame_base)


def config_cache_need(config: Config, splits: tuple[str, ...] = ("train", "val", "test")) -> CacheNeed:
    """What preparing `splits` of `config` will write into its frame cache (cache_need)."""
    _, _, files = plan_subjects(config, splits)
    return cache_need(FrameCache(config.paths.cache, config.data.frame_size), files, guides(config))


def prepare_data(config: Config, splits: tuple[str, ...] = ("train", "val", "test"), progress: bool = True,
                 warnings: DataWarnings | None = None,
                 on_need: Callable[[CacheNeed], None] | None = None) -> PreparedData:
    """Every split's subjects loaded from the frame cache (built first where missing) and their
    clip indexes. `on_need` is told what the cache will write before anything is built."""
    warnings = warnings if warnings is not None else DataWarnings()
    d = config.data
    data_layout, split_subjects, files = plan_subjects(config, splits, warnings)
    root = data_layout.root
    layout.check_class_ids([f.labels for f in files if f.labels is not None], config.model.num_classes)
    cache = FrameCache(config.paths.cache, d.frame_size)
    need = cache_need(cache, files, guides(config))
    if need.to_write:
        log.info("frame cache %s: %s", cache.root, need.describe())
    if on_need is not None:
        on_need(need)
    check_space(cache, need)  # refused before anything is written
    processes = build_processes(d.cache_workers, need.videos_to_decode + len(need.unsized), need.frames_to_decode)
    videos = ensure_cached(cache, files, warnings, progress=progress, processes=processes)
    subjects = {f.subject: _load_subject_or_fail(cache, f, videos[f.subject], config, warnings) for f in files}

    indexes: dict[str, clips.ClipIndex] = {}
    for name in splits:
        stride = d.train_stride if name == "train" else d.eval_stride
        labels = {s: subjects[s].labels for s in split_subjects[name]}
        indexes[name] = clips.build_clip_index(labels, d.clip_len, stride, d.min_purity, config.model.rest_index)
        if len(indexes[name]) == 0 and (name != "val" or split_subjects["val"]):
            raise DataError(
                f"{root / 'split.csv'}: split {name!r} has no usable clips "
                f"(subjects: {', '.join(split_subjects[name]) or 'none'}; clip_len {d.clip_len}, "
                f"min_purity {d.min_purity})"
            )
    before = indexes.get("train", clips.build_clip_index({}, d.clip_len, d.train_stride))
    if "train" in indexes and d.downsample_class1:
        indexes["train"] = clips.downsample_classes(before, (d.dominant_class, config.model.rest_index),
                                                    config.model.outputs, d.val_seed)
    if "train" in indexes:
        warn_absent_classes(before, config.model.num_classes, warnings)
    if d.fold is not None and "val" in indexes:
        warn_fold_classes(before, indexes["val"], d.fold, config.model.num_classes, warnings)
    if warnings:
        log.info("%s", warnings.summary())
    return PreparedData(config=config, layout=data_layout, subjects=subjects, split_subjects=split_subjects,
                        splits=indexes, train_before_downsampling=before, warnings=warnings, cache=cache)
