"""Sliding-window inference: a model applied to the windows of a video, in batches, in the
precision and memory layout of the model's own config (device.py's one rule). One implementation
for predict, serving, visualize, evaluate's timelines and training's rest-weight calibration;
evaluate's clip figures and validation run the loader path (training/loop.py's predict)."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence, overload

import numpy as np
import torch

from .config import Config
from .data.dataset import ModelView
from .data.transforms import to_model_input
from .device import Placement
from .metrics import frame_probabilities, window_starts


def clip_batches(starts: Sequence[int] | np.ndarray, clip_at: Callable[[int], np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """The clips at `starts`, stacked into (B, T, S, S, 3) uint8 batches; one batch in memory at a time."""
    for b in range(0, len(starts), batch_size):
        yield np.stack([clip_at(int(s)) for s in starts[b:b + batch_size]])


def clip_probabilities(model: torch.nn.Module, batches: Iterable[np.ndarray], config: Config,
                       placement: Placement) -> np.ndarray:
    """Softmax probabilities (N, K) of uint8 clip batches as training validates them: the
    model's precision and layout on this device (LoadedModel.placement)."""
    model.eval()
    out = []
    cuda = placement.device.type == "cuda"
    with torch.no_grad():
        for clips in batches:
            # Pinned and asynchronous on a GPU, and the probabilities stay there until the end: the
            # CPU stacks the next batch while the GPU computes this one (a .cpu() per batch waited).
            host = torch.from_numpy(clips).pin_memory() if cuda else torch.from_numpy(clips)
            x = to_model_input(host.to(placement.device, non_blocking=cuda))  # (B, T, S, S, 3) -> (B, 3, T, S, S)
            with placement.autocast():
                logits = model(placement.input(x))
            out.append(torch.softmax(logits.float(), dim=1))
    return torch.cat(out).cpu().numpy() if out else np.zeros((0, config.model.outputs), np.float32)


def window_stride(config: Config, stride: int | None = None) -> int:
    """The frames between windows of a whole-video timeline: `stride` if given, else a quarter
    clip (every frame then averages four windows). Against half a clip it raised exercise-frame
    accuracy, rest recall and rest precision on each of 3 demo models, for twice the windows
    (bench/rest.py, bench/RESULTS.md)."""
    return stride or max(1, config.data.clip_len // 4)


@overload
def padded_to_clip(frames: np.ndarray, clip_len: int) -> np.ndarray: ...
@overload
def padded_to_clip(frames: ModelView, clip_len: int) -> np.ndarray | ModelView: ...
def padded_to_clip(frames: np.ndarray | ModelView, clip_len: int) -> np.ndarray | ModelView:
    """Frames shorter than a clip with their last frame repeated up to `clip_len` (what the model
    sees of a video shorter than a clip); longer ones as they are."""
    if len(frames) >= clip_len:
        return frames
    frames = np.asarray(frames[0:len(frames)])
    return np.concatenate([frames, np.repeat(frames[-1:], clip_len - len(frames), axis=0)])


def window_probabilities(model: torch.nn.Module, frames: np.ndarray | ModelView, config: Config, stride: int,
                         placement: Placement) -> tuple[np.ndarray, np.ndarray]:
    """(T, S, S, 3) uint8 frames (or a ModelView, sliced per window) -> (window starts, their
    (W, K) probabilities): windows of `data.clip_len` every `stride` frames, the last ending at the
    last frame (metrics.window_starts), in batches of `train.eval_batch_size`. A video shorter
    than a clip is one window, its last frame repeated."""
    clip_len = config.data.clip_len
    frames = padded_to_clip(frames, clip_len)
    starts = window_starts(len(frames), clip_len, stride)
    batches = clip_batches(starts, lambda s: frames[s:s + clip_len], config.train.eval_batch_size)
    return starts, clip_probabilities(model, batches, config, placement)


def video_probabilities(model: torch.nn.Module, frames: np.ndarray | ModelView, config: Config, placement: Placement,
                        stride: int | None = None) -> np.ndarray:
    """A whole video's (T, K) frame probabilities as predict, evaluate's timelines and the rest
    weight's calibration compute them: window_probabilities at `window_stride`, each frame the
    mean of the windows covering it (NaN rows where none does). visualize averages its windows
    the same way (metrics.window_average) beside their heatmaps."""
    starts, probs = window_probabilities(model, frames, config, window_stride(config, stride), placement)
    return frame_probabilities(starts, probs, len(frames), config.data.clip_len)
