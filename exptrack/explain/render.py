"""Rendering explanations: heatmap overlays, probability charts, and H.264 videos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..data.video import write_video


def colorize(heat: np.ndarray) -> np.ndarray:
    """(T, H, W) heat in [0, 1] -> (T, H, W, 3) uint8 RGB (jet colour map)."""
    out = np.empty((*heat.shape, 3), dtype=np.uint8)
    for t, frame in enumerate(heat):
        bgr = cv2.applyColorMap((np.clip(frame, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
        out[t] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return out


def overlay(frames: np.ndarray, heat: np.ndarray, alpha: float) -> np.ndarray:
    """Blend the coloured heatmap over (T, H, W, 3) uint8 frames: alpha = heatmap weight."""
    colored = colorize(heat).astype(np.float32)
    return np.clip((1 - alpha) * frames.astype(np.float32) + alpha * colored, 0, 255).astype(np.uint8)


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return frames
    t, h, w, _ = frames.shape
    return np.stack([cv2.resize(f, (w * factor, h * factor), interpolation=cv2.INTER_NEAREST) for f in frames])


def probability_chart(probs: np.ndarray, true: int | None, predicted: int, height: int,
                      width: int = 360, names: list[str] | None = None) -> np.ndarray:
    """A bar per class (uint8 RGB image): true class green, predicted red (both: olive),
    others gray; drawn with OpenCV so that one chart per frame stays cheap."""
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    k = len(probs)
    names = names or [str(c) for c in range(k)]
    top, row = 28, (height - 34) / max(k, 1)
    cv2.putText(img, "class probabilities", (8, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    bar_left, bar_right = 44, width - 52
    scale = max(0.35, min(0.5, row / 30))
    for c, p in enumerate(probs):
        y0 = int(top + c * row)
        y1 = int(top + (c + 1) * row - max(2, row * 0.2))
        color = (150, 150, 150)
        if c == true and c == predicted:
            color = (120, 160, 0)
        elif c == true:
            color = (0, 170, 60)
        elif c == predicted:
            color = (220, 40, 40)
        cv2.rectangle(img, (bar_left, y0), (bar_left + int((bar_right - bar_left) * float(p)), y1), color, -1)
        baseline = (y0 + y1) // 2 + 5
        cv2.putText(img, names[c], (6, baseline), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, f"{p:.2f}", (bar_right + 4, baseline), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return img


def label_timeline_strip(true: np.ndarray, pred: np.ndarray, current: int, width: int, num_classes: int) -> np.ndarray:
    """Two rows of colour-coded labels over the sample (true above, predicted below) with a
    cursor at the current frame."""
    height = 24
    strip = np.full((height, width, 3), 255, dtype=np.uint8)
    palette = (np.array([cv2.applyColorMap(np.array([[255 * c // max(num_classes - 1, 1)]], np.uint8), cv2.COLORMAP_TURBO)[0, 0]
                         for c in range(num_classes)])[:, ::-1])
    n = len(true)
    xs = (np.arange(width) * n // width).clip(0, n - 1)
    for row, labels in ((0, true), (1, pred)):
        for x, i in enumerate(xs):
            lab = int(labels[i])
            if lab >= 0:
                strip[row * 12 + 1:(row + 1) * 12 - 1, x] = palette[lab]
    cx = int(current * width / max(n, 1))
    strip[:, max(cx - 1, 0):cx + 1] = 0
    return strip


def hstack(*images: np.ndarray) -> np.ndarray:
    """Side by side, padded to the tallest (white)."""
    h = max(i.shape[0] for i in images)
    padded = [np.pad(i, ((0, h - i.shape[0]), (0, 0), (0, 0)), constant_values=255) for i in images]
    return np.concatenate(padded, axis=1)


def save_video(path: Path, frames: np.ndarray, fps: float) -> Path:
    write_video(path, frames, fps)
    return path


def save_gif(path: Path, frames: np.ndarray, fps: float, max_width: int = 320, max_frames: int = 120) -> Path:
    """An animated GIF preview of (T, H, W, 3) uint8 frames: at most `max_width` px wide and
    `max_frames` frames (evenly subsampled, the frame rate lowered to keep the duration).
    Browsers show it anywhere, also inside MLflow's sandboxed HTML artifact view."""
    step = max(1, -(-len(frames) // max_frames))
    frames = frames[::step]
    scale = min(1.0, max_width / frames.shape[2])
    size = (max(1, int(frames.shape[2] * scale)), max(1, int(frames.shape[1] * scale)))
    images = [Image.fromarray(cv2.resize(f, size, interpolation=cv2.INTER_AREA)) for f in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 * step / max(fps, 1)), loop=0)
    return path
