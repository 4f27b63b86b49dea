"""`exptrack predict VIDEO`: run a model over a whole video and write its exercise timeline.

A model trained with person masks or skeleton attention sees each frame weighted by them. A
video that lies in a dataset layout (`<root>/dataset/anon/<subject>.mp4`) brings its own masks
and keypoints, found beside it; `--masks DIR` and `--keypoints CSV` name them for any other
video. Without them the frames are used as they are, which is said in a warning: such a model
then sees input unlike its training data and its timeline is unreliable.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from . import figures, tracking
from .config import Config, ConfigError, PathsConfig
from .data.cache import FrameCache
from .data.dataset import weighted_frames
from .data.errors import DataWarnings, require_file
from .data.layout import BACKGROUND, REST, SubjectFiles, class_label, read_labels, video_companions
from .data.prepare import SubjectData, load_guides
from .data.video import VideoInfo, decode_video, write_video
from .evaluation import evaluation_config
from .models.load import LoadedModel, load_model
from .metrics import frame_confidence, frame_labels, frame_scores, smooth_labels
from .outputs import DEFAULT_OUTPUTS, check_save_dir, invocation_folder
from .device import resolve_device
from .windows import video_probabilities
from .options import PredictOptions

log = logging.getLogger("exptrack.predict")


@dataclass(frozen=True)
class Timeline:
    frames: pd.DataFrame  # frame, predicted, probability, smoothed (and true, where the video has labels)
    segments: pd.DataFrame  # start, end, class, mean_confidence, frames
    fps: float
    out_dir: Path
    class_names: list[str]
    run_id: str = ""
    truth: "Truth | None" = None  # the video's labels compared, when it has a label file


@dataclass(frozen=True)
class Truth:
    """How the timeline compares with the video's own labels (a video in a dataset layout)."""

    labels: Path
    scores: dict[str, float]  # metrics.frame_scores of the frame labels (before smoothing)
    smoothed: dict[str, float]  # the same of the smoothed labels (the segments)
    exercise_frames: int
    rest_frames: int  # labelled background (-1)
    rest_output: bool  # False: the model cannot say rest and gives those frames an exercise

    @property
    def frame_acc(self) -> float:
        return self.scores["frame_acc"]


def model_frames(files: SubjectFiles, config: Config, warnings: DataWarnings) -> tuple[np.ndarray, VideoInfo]:
    """(T, S, S, 3) uint8 frames of a video (`files`: it and its companions) as the model saw its
    training clips, and the video's info: weighted by the person masks and skeleton attention the
    model was trained with, when the video has them (given, or beside it in a dataset layout;
    decoded once into the cache)."""
    d = config.data
    video = files.video
    wants = {"masks": d.use_masks, "skeleton attention": d.use_skeleton_attention}
    found = {"masks": files.mask_dir is not None, "skeleton attention": files.keypoints is not None}
    missing = [what for what, on in wants.items() if on and not found[what]]
    if missing:
        log.warning("the model was trained with %s, but %s has none (give --masks DIR / --keypoints CSV, or "
                    "predict on a video inside its dataset layout): those frames are used as they are, unlike "
                    "the model's training clips, so its timeline is unreliable", " and ".join(missing), video)
    if not any(on and found[what] for what, on in wants.items()):
        return decode_video(video, d.frame_size, warnings)  # DataError names the file if unreadable
    cache = FrameCache(PathsConfig().cache, d.frame_size)  # the working folder's cache, as evaluate uses
    entry = cache.video(files, warnings)
    background = np.full(entry.info.num_frames, BACKGROUND, dtype=np.int16)  # no labels: not needed here
    subject = load_guides(cache, SubjectData(files=files, video=entry, labels=background), config, warnings)
    used = [what for what, on in wants.items() if on and found[what]]
    log.info("frames weighted by %s from %s", " and ".join(used), ", ".join(
        str(p) for p in (files.mask_dir if d.use_masks else None, files.keypoints if d.use_skeleton_attention else None) if p))
    frames = weighted_frames(subject, slice(None), d.use_masks, d.use_skeleton_attention, d.mask_alpha)
    return np.asarray(frames), entry.info


def segments(labels: np.ndarray, confidence: np.ndarray, min_length: int = 1, rest: bool = True) -> pd.DataFrame:
    """Runs of one label: start, end (inclusive), class (-1 = rest), mean confidence, frames;
    without `rest`, rest runs are left out."""
    rows = []
    start = 0
    for t in range(1, len(labels) + 1):
        if t == len(labels) or labels[t] != labels[start]:
            if (rest or labels[start] != BACKGROUND) and t - start >= min_length:
                rows.append({"start": start, "end": t - 1, "class": int(labels[start]),
                             "mean_confidence": float(confidence[start:t].mean()), "frames": t - start})
            start = t
    return pd.DataFrame(rows, columns=["start", "end", "class", "mean_confidence", "frames"])


def predict_video(video: str | Path, model_ref: str, options: PredictOptions = PredictOptions()) -> Timeline:
    """The timeline of a video; files go to `options.save_dir`, by default a fresh
    outputs/predict/<video name>-<time>/."""
    video = Path(video)
    require_file(video, "video file")  # before the model is loaded (a download can take a while)
    check_save_dir(options.save_dir, options.overwrite)
    device = resolve_device(options.device, key="--device")
    loaded = load_model(model_ref, device)
    if options.stride and options.stride > loaded.config.data.clip_len:  # before the run: nothing to end FAILED
        raise ConfigError(f"--stride {options.stride}: above the model's clip length ({loaded.config.data.clip_len} "
                          "frames), the frames between its windows would get no prediction; use at most "
                          f"{loaded.config.data.clip_len} (default: a quarter clip)")
    files = video_companions(video, Path(options.masks) if options.masks else None,
                             Path(options.keypoints) if options.keypoints else None)
    config = evaluation_config(loaded.config, None, {})  # the model's experiment; files go here
    tags = {"video": str(video), "model_uri": model_ref, "model_run_id": loaded.source.get("run_id", ""),
            **loaded.timeline_tags()}
    with tracking.start_run(config, run_name=f"predict-{video.stem}", command="predict", tags=tags) as run:
        if loaded.source.get("model_id"):
            run.log_model_input(loaded.source["model_id"])
        timeline = _timeline(files, loaded, model_ref, options)
        run.log_artifacts(timeline.out_dir, "predict")
        scores = {**timeline.truth.scores, **{f"{k}_smoothed": v for k, v in timeline.truth.smoothed.items()}} \
            if timeline.truth else {}
        run.log_metrics({"segments": len(timeline.segments), "frames": len(timeline.frames),
                         **{k: v for k, v in scores.items() if np.isfinite(v)}})
    return dataclasses.replace(timeline, run_id=run.id)


def _timeline(files: SubjectFiles, loaded: LoadedModel, model_ref: str, options: PredictOptions) -> Timeline:
    video = files.video
    d = loaded.config.data
    names = loaded.class_names  # with the rest output's name last, when the model has one
    rest = loaded.config.model.rest_index
    name_of = np.array([*names[: loaded.config.model.num_classes], REST])  # index -1: rest
    warnings = DataWarnings()
    frames, info = model_frames(files, loaded.config, warnings)
    probs = video_probabilities(loaded.model, frames, loaded.config, loaded.placement, options.stride)  # (T, K)
    predicted = frame_labels(probs, rest, loaded.rest_weight)  # -1 where rest wins
    smoothed = smooth_labels(predicted, options.smooth_window)
    confidence, smoothed_confidence = frame_confidence(probs, predicted, rest), frame_confidence(probs, smoothed, rest)
    table = pd.DataFrame({"frame": np.arange(len(predicted)), "time_s": np.arange(len(predicted)) / info.fps,
                          "predicted": predicted, "predicted_name": name_of[predicted],
                          "probability": confidence.round(5), "smoothed": smoothed,
                          "smoothed_name": name_of[smoothed]})
    segs = segments(smoothed, smoothed_confidence, rest=rest is not None)
    segs.insert(3, "name", name_of[segs["class"].to_numpy(dtype=np.int64)])
    segs["start_s"], segs["end_s"] = segs["start"] / info.fps, (segs["end"] + 1) / info.fps
    true, truth = None, None
    if files.labels is not None:
        true = read_labels(files.labels, len(frames), loaded.config.model.num_classes, warnings, d.frame_base)
        table["true"], table["true_name"] = true, name_of[true]
        truth = Truth(files.labels, frame_scores(predicted, true), frame_scores(smoothed, true),
                      int((true != BACKGROUND).sum()), int((true == BACKGROUND).sum()), rest is not None)
    with invocation_folder(options.save_dir, DEFAULT_OUTPUTS / "predict" / f"{video.stem}-{time.strftime('%Y%m%d-%H%M%S')}",
                           options.overwrite) as out:
        table.to_csv(out / "frames.csv", index=False)
        segs.to_csv(out / "segments.csv", index=False)
        (out / "timeline.json").write_text(json.dumps({"video": str(video), "model": model_ref, "fps": info.fps,
                                                       "class_names": names,
                                                       "segments": segs.to_dict(orient="records")}, indent=2))
        title = f"{video.name}: exercises and rest" + (f" (true labels: {files.labels})" if true is not None else "")
        figures.timeline(true, predicted, smoothed, title, out / "timeline.png", names, rest_output=rest is not None)
        if options.overlay:
            # the label drawn is the smoothed one, so is its probability
            write_video(out / "overlay.mp4", label_overlay(frames, smoothed, smoothed_confidence, names), info.fps)
    return Timeline(table, segs, info.fps, out, names, truth=truth)


def label_overlay(frames: np.ndarray, labels: np.ndarray, confidence: np.ndarray, names: list[str] | None = None,
                  scale: int = 4) -> Iterator[np.ndarray]:
    """The video with the predicted class and confidence written on each frame, one frame at a
    time (scaled up, a whole workout video would not fit in memory)."""
    for frame, label, conf in zip(frames, labels, confidence, strict=True):
        text = f"{class_label(int(label), names)}" + (f" ({conf:.2f})" if np.isfinite(conf) else "")
        big = cv2.resize(frame, (frame.shape[1] * scale, frame.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
        cv2.putText(big, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 2,
                    cv2.LINE_AA)
        cv2.putText(big, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
        yield big
