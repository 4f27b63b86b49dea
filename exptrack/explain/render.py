"""Rendering explanations: heatmap overlays, probability charts, and H.264 videos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..data.video import resize_to, write_video


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


# Explanations are shown at least this many pixels on the short side (a 32 px model input scaled
# up is a blur) and at most this many on the long side (a 1080p source needs no more to be read).
MIN_SIDE, MAX_SIDE = 256, 480


def display_size(height: int, width: int, min_side: int = MIN_SIDE) -> tuple[int, int]:
    """(H, W) to show a (height, width) frame at: its aspect kept, short side >= min_side,
    long side <= MAX_SIDE where both can hold (else the short side wins); even sides for video."""
    height, width = max(height, 1), max(width, 1)  # a header without a size: a square, not a ZeroDivisionError
    scale = max(min_side / min(height, width), min(1.0, MAX_SIDE / max(height, width)))
    return round(height * scale / 2) * 2, round(width * scale / 2) * 2


def display_frames(frames: np.ndarray, min_side: int = MIN_SIDE) -> np.ndarray:
    """(T, H, W, 3) frames at display_size."""
    size = display_size(frames.shape[1], frames.shape[2], min_side)
    return frames if size == frames.shape[1:3] else np.stack([resize_to(f, size) for f in frames])


def display_heat(heat: np.ndarray, height: int, width: int) -> np.ndarray:
    """(T, S, S) heat at the model's input (the source frame resized to a square) stretched back
    over a (height, width) frame; bilinear, so the hot region stays a smooth region, not blocks."""
    return np.stack([cv2.resize(np.asarray(m, np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
                     for m in heat])


def explanation_frames(frames: np.ndarray, heat: np.ndarray, alpha: float,
                       min_side: int = MIN_SIDE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames at display size, the heat at that size, the heat overlaid on the frames) for
    (T, H, W, 3) source frames (any size: the video's own resolution where it is at hand) and
    (T, S, S) heat."""
    shown = display_frames(frames, min_side)
    big_heat = display_heat(heat, shown.shape[1], shown.shape[2])
    return shown, big_heat, overlay(shown, big_heat, alpha)


def caption(image: np.ndarray, lines: list[str]) -> np.ndarray:
    """`lines` written in a white band above an (H, W, 3) image (or each frame of (T, H, W, 3))."""
    frames = image if image.ndim == 4 else image[None]
    band = np.full((18 * len(lines) + 8, frames.shape[2], 3), 255, dtype=np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(band, line, (6, 18 * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    out = np.stack([np.concatenate([band, f], axis=0) for f in frames])
    return out if image.ndim == 4 else out[0]


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return frames
    t, h, w, _ = frames.shape
    return np.stack([cv2.resize(f, (w * factor, h * factor), interpolation=cv2.INTER_NEAREST) for f in frames])


# MLflow's video player (and most others) draw their controls over the bottom of the picture:
# about 48 screen pixels, more video pixels when the player shows the video smaller than it is
# (a 616 px wide video in a 475 px viewer frame, bench/ui_check.py's screenshot). The chart keeps
# its bottom quarter, at least 48 px, free.
def controls_room(height: int) -> int:
    return max(48, height // 4)


def probability_chart(probs: np.ndarray, true: int | None, predicted: int | None, height: int,
                      width: int = 360, names: list[str] | None = None, bottom: int | None = None) -> np.ndarray:
    """A bar per class (uint8 RGB image): true class green, predicted red (both: olive),
    others gray; drawn with OpenCV so that one chart per frame stays cheap. Names sit in a column
    of their own, as wide as the longest (never under a bar), and the bottom `bottom` px stay
    empty for the player's controls."""
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    k = len(probs)
    names = names or [str(c) for c in range(k)]
    top = 28
    bottom = controls_room(height) if bottom is None else bottom
    row = max(1.0, (height - top - bottom) / max(k, 1))
    scale = max(0.3, min(0.5, row / 30))
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, "class probabilities", (8, 19), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    name_width = max(cv2.getTextSize(n, font, scale, 1)[0][0] for n in names)
    value_width = cv2.getTextSize("0.00", font, scale, 1)[0][0]
    bar_left = min(6 + name_width + 6, width // 2)
    bar_right = width - value_width - 10
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
        label = names[c]
        while len(label) > 3 and 6 + cv2.getTextSize(label, font, scale, 1)[0][0] > bar_left - 4:
            label = label[:-2] + "."  # a name wider than half the chart is shortened, never drawn over a bar
        cv2.putText(img, label, (6, baseline), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, f"{p:.2f}", (bar_right + 4, baseline), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return img


REST_GREY = (205, 205, 205)


def label_timeline_strip(true: np.ndarray, pred: np.ndarray, current: int, width: int, num_classes: int) -> np.ndarray:
    """Two rows of colour-coded labels over the sample (true above, predicted below; rest, -1,
    light grey) with a cursor at the current frame."""
    height = 24
    strip = np.full((height, width, 3), 255, dtype=np.uint8)
    palette = (np.array([cv2.applyColorMap(np.array([[255 * c // max(num_classes - 1, 1)]], np.uint8), cv2.COLORMAP_TURBO)[0, 0]
                         for c in range(num_classes)])[:, ::-1])
    n = len(true)
    xs = (np.arange(width) * n // width).clip(0, n - 1)
    for row, labels in ((0, true), (1, pred)):
        for x, i in enumerate(xs):
            lab = int(labels[i])
            strip[row * 12 + 1:(row + 1) * 12 - 1, x] = palette[lab] if lab >= 0 else REST_GREY
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
