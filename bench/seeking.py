"""The original scripts' way of reading a clip, kept outside the package as a baseline."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from exptrack.data.errors import DataError
from exptrack.data.video import resize_frame


def read_clip_by_seeking(path: Path, start: int, length: int, size: int) -> np.ndarray:
    """The original per-clip approach: open, seek, decode `length` frames, resize.

    The baseline that bench/loader.py measures the cache against (and tests/data/test_cache.py
    checks the cache equals).
    """
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DataError(f"{path}: cannot open video")
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, start)
        frames = []
        for _ in range(length):
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(resize_frame(frame, size))
    finally:
        cap.release()
    if not frames:
        raise DataError(f"{path}: no frame at {start}")
    while len(frames) < length:  # pad a short tail by repeating the last frame
        frames.append(frames[-1])
    return np.stack(frames)
