"""Reading and writing video files with OpenCV; every failure names the file."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from .errors import DataError, DataWarnings, require_file


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    width: int
    height: int
    # Frames actually decoded (the container's header count can be wrong for truncated files).
    num_frames: int


def _open(path: Path) -> cv2.VideoCapture:
    require_file(path, "video file")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DataError(f"{path}: cannot open video (truncated or corrupt file, not a video, or a codec OpenCV cannot read)")
    return cap


def resize_frame(frame_bgr: np.ndarray, size: int) -> np.ndarray:
    """BGR frame of any size -> RGB (size, size, 3) uint8; INTER_AREA keeps thin limbs visible."""
    small = cv2.resize(frame_bgr, (size, size), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2RGB)


def probe_video(path: Path) -> VideoInfo:
    """The header's frame rate, size and frame count (0 when the header has none), decoding nothing."""
    cap = _open(path)
    try:
        return VideoInfo(fps=float(cap.get(cv2.CAP_PROP_FPS)) or 30.0, width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                         height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                         num_frames=max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0))
    finally:
        cap.release()


MAX_PREALLOC = 1 << 16  # frames (2.5 GB at 112 px): a longer video's buffer grows as it decodes


def decode_video(path: Path, size: int, warnings: DataWarnings | None = None) -> tuple[np.ndarray, VideoInfo]:
    """Decode every frame once, resized to (size, size): (T, size, size, 3) uint8 RGB."""
    cap = _open(path)
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS)) or 0.0
        header_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        # Preallocate from the header count and grow if it was too small. A header may lie (2^31
        # frames in a small file): a file holds at most one frame per byte, and past MAX_PREALLOC
        # frames the buffer grows as frames really arrive.
        out = np.empty((min(max(header_count, 1), max(path.stat().st_size, 1), MAX_PREALLOC), size, size, 3),
                       dtype=np.uint8)
        n = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if n == len(out):
                grown = np.empty((2 * len(out), size, size, 3), dtype=np.uint8)
                grown[:n] = out
                out = grown
            out[n] = resize_frame(frame, size)
            n += 1
    finally:
        cap.release()
    if n == 0:
        raise DataError(f"{path}: no frame could be decoded (empty or corrupt video)")
    if header_count > 0 and n < header_count and warnings is not None:
        warnings.warn(
            "truncated_video",
            f"{path}: header says {header_count} frames but only {n} decode (truncated?); using {n}",
        )
    if fps <= 0 and warnings is not None:
        warnings.warn("unknown_fps", f"{path}: no frame rate in the header; assuming 30 fps")
        fps = 30.0
    return out[:n], VideoInfo(fps=fps or 30.0, width=width, height=height, num_frames=n)


def resize_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An image at (H, W) `size` for people to look at: area averaging when it shrinks (no
    aliasing), cubic when it grows (no blocks)."""
    if image.shape[:2] == size:
        return image
    shrink = size[0] * size[1] < image.shape[0] * image.shape[1]
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def read_frames(path: Path, start: int, count: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """Frames [start, start + count) of a video at its own resolution, or resized to `size`
    (H, W) as they are read: (count, H, W, 3) uint8 RGB, for showing people what a model saw
    (explanations), not for training (the cache does that). A video that ends early repeats its
    last frame."""
    cap = _open(path)
    try:
        if start > 0:
            cap.set(cv2.CAP_PROP_POS_FRAMES, start)  # FFmpeg seeks to a keyframe and decodes on to `start`
        frames = []
        for _ in range(count):
            ok, frame = cap.read()
            if not ok:
                break
            if size is not None:
                frame = resize_to(frame, size)
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if not frames:
        raise DataError(f"{path}: no frame could be decoded at {start}")
    frames += [frames[-1]] * (count - len(frames))
    return np.stack(frames)


def write_video(path: Path, frames_rgb: np.ndarray | Iterable[np.ndarray], fps: float, crf: int = 20) -> None:
    """Write uint8 RGB frames, (T, H, W, 3) or one (H, W, 3) frame at a time (a long video is
    never held whole in memory), as H.264 (yuv420p) MP4 with PyAV's libx264.

    H.264 is what cameras and the original data use, what browsers (and the MLflow artifact
    viewer) play, and what OpenCV decodes; OpenCV's own wheel cannot encode it. Odd frame sizes
    are padded by one pixel (yuv420p needs even ones).
    """
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    frames = iter(frames_rgb)
    first = next(frames, None)
    if first is None:
        raise DataError(f"{path}: no frames to write")
    h, w, _ = first.shape
    pad_h, pad_w = h % 2, w % 2
    try:
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = w + pad_w, h + pad_h, "yuv420p"
            # Deterministic output (the demo data must be reproducible for a seed): x264's
            # macroblock-tree rate control gave different bitstreams for the same frames within
            # one process, and frame threads can too.
            stream.options = {"crf": str(crf), "preset": "fast", "threads": "1", "x264-params": "no-mbtree=1"}
            for index, frame in enumerate(itertools.chain([first], frames)):
                if pad_h or pad_w:
                    frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
                out = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                out.pts = index
                container.mux(stream.encode(out))
            container.mux(stream.encode())  # flush
    except (av.FFmpegError, OSError) as exc:
        raise DataError(f"{path}: cannot write video: {exc}") from exc
