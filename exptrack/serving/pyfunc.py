"""The MLflow pyfunc face of a trained model, for `mlflow.pyfunc.load_model` and `mlflow models serve`.

A logged model holds one file, ``weights.pt``: a weights-only checkpoint (state dict, resolved
config, class names, epoch, validation metrics; no optimizer state). The pyfunc model rebuilds the
C3D from it and applies the model's own preprocessing, so callers send raw frames:

- ``predict(clips)``: uint8 clips ``(N, T, H, W, 3)`` (RGB, T = the model's clip length, any
  frame size: frames are resized to the model's) -> one row per clip, a probability column per
  class name (``rest`` last, for a model with a rest output: no exercise performed) and
  ``predicted`` (the most likely class name).
- ``predict(<any array of the signature's shape, e.g. (0, T, 1, 1, 3)>, params={"video":
  "path.mp4"})``: the video is decoded, cut into windows of the clip length (a quarter clip
  apart) -> one row per window with ``start_frame`` first. A tensor signature cannot also accept
  a string, so the path travels as an inference parameter, MLflow's way of passing options with
  a request; the array is not read, but MLflow checks its shape against the signature (over REST,
  where `[]` has shape (0,), send one clip of shape (1, T, 1, 1, 3)).

A model trained with person masks or skeleton attention expects frames prepared the same way;
raw frames give it plain video (as `exptrack predict` warns).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc.model import PythonModel

from ..config import config_from_dict
from ..data.errors import DataWarnings
from ..data.video import decode_video
from ..device import placement
from ..models.c3d import model_with_weights
from ..models.load import class_names_of
from ..models.weights import WEIGHTS_FILE, load_weights
from ..windows import clip_batches, clip_probabilities, window_probabilities, window_stride
from .package import VIDEO_PARAM

def resize_clips(clips: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, T, H, W, 3) -> (N, T, size, size, 3), as the cache resizes training frames."""
    if clips.shape[2:4] == (size, size):
        return clips
    n, t = clips.shape[:2]
    flat = clips.reshape(n * t, *clips.shape[2:])  # (N*T, H, W, 3)
    out = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in flat])
    return out.reshape(n, t, size, size, 3)


class ClipClassifierCore:
    """The model and its preprocessing, without MLflow (tested directly; wrapped below)."""

    def __init__(self, payload: dict[str, Any], source: str = WEIGHTS_FILE) -> None:
        self.config = config_from_dict(payload["config"], source)
        # the CPU: where `mlflow models serve` and pyfunc.load_model run it; the model's own rule there
        self.placement = placement(self.config.train, torch.device("cpu"), strict=False, trained=payload.get("precision"))
        self.model = self.placement.prepare(model_with_weights(self.config.model, payload["model"])).eval()
        self.class_names = class_names_of(payload, self.config)

    def probabilities(self, clips: np.ndarray) -> np.ndarray:
        d = self.config.data
        clips = np.asarray(clips)
        if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[-1] != 3 or clips.shape[1] != d.clip_len:
            raise ValueError(f"expected uint8 clips of shape (N, {d.clip_len}, H, W, 3), got {clips.dtype} {clips.shape}")
        batches = clip_batches(range(len(clips)), lambda i: resize_clips(clips[i:i + 1], d.frame_size)[0],
                               self.config.train.eval_batch_size)
        return clip_probabilities(self.model, batches, self.config, self.placement)

    def table(self, probs: np.ndarray) -> pd.DataFrame:
        table = pd.DataFrame(probs.astype(np.float64), columns=self.class_names)
        table["predicted"] = [self.class_names[i] for i in probs.argmax(1)] if len(probs) else []
        return table

    def predict_clips(self, clips: np.ndarray) -> pd.DataFrame:
        return self.table(self.probabilities(clips))

    def predict_video(self, path: str | Path) -> pd.DataFrame:
        d = self.config.data
        frames, _ = decode_video(Path(path), d.frame_size, DataWarnings())  # (T, S, S, 3)
        starts, probs = window_probabilities(self.model, frames, self.config, window_stride(self.config),
                                             self.placement)
        table = self.table(probs)
        table.insert(0, "start_frame", starts)
        return table


def _load_core(path: str | Path) -> ClipClassifierCore:
    return ClipClassifierCore(load_weights(path), str(path))


class ClipClassifier(PythonModel):
    """What `mlflow.pyfunc.load_model` returns for an exptrack model (see the module docstring)."""

    def load_context(self, context) -> None:
        self.core = _load_core(context.artifacts["weights"])

    # np.ndarray is a hint MLflow takes as "no schema from type hints": the signature is given
    # explicitly (package.clip_model_signature). Without any hint MLflow warns on every import,
    # under a filter of its own that a caller's warning filters cannot override.
    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None):
        video = (params or {}).get(VIDEO_PARAM)
        if video:
            return self.core.predict_video(video)
        return self.core.predict_clips(np.asarray(model_input))
