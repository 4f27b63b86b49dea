"""The built-in demo dataset: procedurally rendered people doing motion-defined exercises.

A person's pose is three numbers in [0, 1]: arm raise A, squat depth S and leg spread L.
An exercise moves some of them with a triangle wave and holds the others at a random value
for the whole segment. A triangle wave spends equal time at every value, so in any single
frame (A, S, L) is spread over the same range whatever the exercise: the class is only in
the motion (which variables move, how fast, and in which order). The motions are mirror
symmetric, so a horizontal flip never changes the class.

The generator writes the DATASET.md layout with real H.264 MP4 files, true masks, noisy keypoints and
a subject-wise split, and is deterministic for a seed.

Two presets. `easy` (the default): a large person in front of a plain gradient, every class
learnable at 32 px. `hard`, made to look like the real recordings on which exptrack once lost to
a plain script (issue 9): 9 subjects split 6 train / 3 test, a person filling about a tenth of
the frame at a random place, a textured, cluttered background of its own per subject, a camera
that shakes by a few pixels, and 10 classes among which several pairs differ only in tempo
(arm_raise / fast_arm_raise) or in one limb (arm_squat_forward / arm_leg_forward).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import shutil
import string
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..config import ConfigError
from ..errors import OutputError
from ..progress import progress_bar
from .layout import BACKGROUND, KEYPOINT_NAMES, NUM_KEYPOINTS, write_class_names
from .video import write_video

log = logging.getLogger("exptrack.data")
LOG_EVERY_S = 10.0  # without a terminal (a log file, CI), a line this often instead of a bar

A, S, L = 0, 1, 2
SLOW, FAST = 12.0, 6.0  # frames per cycle


@dataclass(frozen=True)
class Pattern:
    """Which pose variables move, with what period, and their phase offsets (in cycles)."""

    name: str
    moves: tuple[tuple[int, float, float], ...]  # (variable, period, phase)


PATTERNS: tuple[Pattern, ...] = (
    Pattern("arm_raise", ((A, SLOW, 0.0),)),
    Pattern("squat", ((S, SLOW, 0.0),)),
    Pattern("leg_spread", ((L, SLOW, 0.0),)),
    Pattern("fast_arm_raise", ((A, FAST, 0.0),)),
    Pattern("fast_squat", ((S, FAST, 0.0),)),
    Pattern("fast_leg_spread", ((L, FAST, 0.0),)),
    # Two variables a quarter cycle apart: the same poses, visited in opposite orders.
    Pattern("arm_squat_forward", ((A, SLOW, 0.0), (S, SLOW, 0.25))),
    Pattern("arm_squat_backward", ((A, SLOW, 0.0), (S, SLOW, -0.25))),
    Pattern("arm_leg_forward", ((A, SLOW, 0.0), (L, SLOW, 0.25))),
    Pattern("arm_leg_backward", ((A, SLOW, 0.0), (L, SLOW, -0.25))),
    Pattern("squat_leg_forward", ((S, SLOW, 0.0), (L, SLOW, 0.25))),
    Pattern("squat_leg_backward", ((S, SLOW, 0.0), (L, SLOW, -0.25))),
    Pattern("slow_arms_fast_legs", ((A, SLOW, 0.0), (L, FAST, 0.0))),
    Pattern("fast_arms_slow_legs", ((A, FAST, 0.0), (L, SLOW, 0.0))),
    Pattern("slow_squat_fast_arms", ((S, SLOW, 0.0), (A, FAST, 0.0))),
    Pattern("full_body", ((A, SLOW, 0.0), (S, SLOW, 1 / 3), (L, SLOW, 2 / 3))),
)
MAX_CLASSES = len(PATTERNS)


@dataclass(frozen=True)
class DemoSpec:
    subjects: int = 12
    classes: int = 6
    seed: int = 0
    width: int = 128
    height: int = 160
    fps: float = 15.0
    test_fraction: float = 1 / 3
    segment_frames: tuple[int, int] = (48, 72)
    background_frames: tuple[int, int] = (12, 30)
    # Class 1 gets this many times more frames, like the original's dominant class.
    dominant_factor: float = 3.0
    # 'names' (left_shoulder_x), 'index' (kp5_x) or 'alternate' between subjects.
    keypoint_header: str = "alternate"
    # Add a second, less confident person to the keypoint rows (with a person column).
    extra_person: bool = False
    # Write the label files with a header line and 1-based frame numbers.
    label_header: bool = False
    keypoint_noise_px: float = 1.5
    keypoint_dropout: float = 0.03
    # Person height as a share of the frame height, and where its centre may stand (share of width).
    person_height: tuple[float, float] = (0.62, 0.8)
    person_x: tuple[float, float] = (0.4, 0.6)
    # Number of textured clutter shapes in the background; 0 = the plain gradient with a few blocks.
    clutter: int = 0
    # Camera shake: random walk of the whole view, at most this many pixels from its rest position.
    shake_px: float = 0.0


# Each preset is a full spec; `subjects`, `classes` and `seed` given by the user override it.
PRESETS: dict[str, DemoSpec] = {
    "easy": DemoSpec(),
    "hard": DemoSpec(subjects=9, classes=10, width=192, height=144, person_height=(0.36, 0.46),
                     person_x=(0.2, 0.8), clutter=40, shake_px=3.0, keypoint_noise_px=2.5, keypoint_dropout=0.1),
}


def preset_spec(preset: str, subjects: int | None = None, classes: int | None = None, seed: int = 0) -> DemoSpec:
    """The spec of a named preset, with the user's subject and class counts where given."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown demo preset {preset!r} (known: {', '.join(PRESETS)})")
    base = PRESETS[preset]
    return dataclasses.replace(base, subjects=base.subjects if subjects is None else subjects,
                               classes=base.classes if classes is None else classes, seed=seed)


@dataclass(frozen=True)
class Style:
    """Per-subject look and timing."""

    height_px: float
    centre_x: float
    ground_y: float
    skin: tuple[int, int, int]
    shirt: tuple[int, int, int]
    pants: tuple[int, int, int]
    background: np.ndarray  # (H, W, 3) uint8
    tempo: float
    noise: float


def _random_color(rng: np.random.Generator, lo: int = 30, hi: int = 230) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(lo, hi, size=3))
    return r, g, b


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A vertical gradient with a few static blocks of clutter."""
    top, bottom = np.array(_random_color(rng, 60, 200)), np.array(_random_color(rng, 60, 200))
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    img = (top * (1 - ramp) + bottom * ramp).repeat(width, axis=1).astype(np.uint8)
    for _ in range(int(rng.integers(2, 5))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(8, 40)), y0 + int(rng.integers(8, 40))
        cv2.rectangle(img, (x0, y0), (x1, y1), _random_color(rng), -1)
    return img


def _cluttered_background(rng: np.random.Generator, width: int, height: int, shapes: int) -> np.ndarray:
    """Blotchy low-frequency colour, fine grain and many random shapes (boxes, discs, bars, some
    in skin and clothing tones): a room full of things, different for every subject."""
    coarse = rng.integers(40, 220, size=(max(2, height // 24), max(2, width // 24), 3)).astype(np.uint8)
    img = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(shapes):
        color = _random_color(rng, 20, 240)
        kind = int(rng.integers(3))
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(4, max(6, min(width, height) // 5)))
        if kind == 0:
            cv2.rectangle(img, (x0, y0), (x0 + size, y0 + int(rng.integers(4, size + 5))), color, -1)
        elif kind == 1:
            cv2.circle(img, (x0, y0), size // 2, color, -1, cv2.LINE_AA)
        else:
            x1, y1 = x0 + int(rng.integers(-2 * size, 2 * size)), y0 + int(rng.integers(-2 * size, 2 * size))
            cv2.line(img, (x0, y0), (x1, y1), color, int(rng.integers(1, 4)), cv2.LINE_AA)
    grain = rng.normal(0.0, 12.0, size=img.shape)
    return np.clip(img + grain, 0, 255).astype(np.uint8)


def subject_style(rng: np.random.Generator, spec: DemoSpec) -> Style:
    height_px = spec.height * rng.uniform(*spec.person_height)
    margin = int(np.ceil(spec.shake_px))  # the background is wider by the shake on every side
    bg_w, bg_h = spec.width + 2 * margin, spec.height + 2 * margin
    return Style(
        height_px=height_px,
        centre_x=spec.width * rng.uniform(*spec.person_x),
        # low enough that the raised arms stay in the frame: head and hands reach about 0.95 h up
        ground_y=(spec.height * rng.uniform(0.9, 0.96) if spec.clutter == 0
                  else rng.uniform(height_px * 1.05, spec.height * 0.97)),
        skin=_random_color(rng, 90, 240),
        shirt=_random_color(rng),
        pants=_random_color(rng),
        background=(_background(rng, bg_w, bg_h) if spec.clutter == 0
                    else _cluttered_background(rng, bg_w, bg_h, spec.clutter)),
        tempo=float(rng.uniform(0.87, 1.15)),
        noise=float(rng.uniform(2.0, 6.0)),
    )


# ---------------------------------------------------------------------------------------------
# motion


def triangle(t: np.ndarray, period: float, phase: float) -> np.ndarray:
    """Triangle wave in [0, 1]: uniform dwell time at every value."""
    x = (t / period + phase) % 1.0
    return 1.0 - np.abs(2.0 * x - 1.0)


def segment_motion(pattern: Pattern | None, n: int, tempo: float, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) pose variables for one segment; `None` is background (slow idle drift)."""
    held = rng.uniform(0.0, 1.0, size=3)
    pose = np.tile(held, (n, 1))
    t = np.arange(n, dtype=np.float64)
    if pattern is None:
        drift = np.cumsum(rng.normal(0.0, 0.01, size=(n, 3)), axis=0)
        return np.clip(pose + drift, 0.0, 1.0)
    offset = rng.uniform(0.0, 1.0)
    for var, period, phase in pattern.moves:
        pose[:, var] = triangle(t, period * tempo, phase + offset)
    return pose


def schedule(rng: np.random.Generator, spec: DemoSpec) -> list[tuple[int, int]]:
    """[(class or -1, length)]: every class once in random order, background in between."""
    order = rng.permutation(spec.classes)
    out = [(BACKGROUND, int(rng.integers(*spec.background_frames)))]
    for cls in order:
        n = int(rng.integers(*spec.segment_frames))
        if cls == 1:
            n = int(n * spec.dominant_factor)
        out += [(int(cls), n), (BACKGROUND, int(rng.integers(*spec.background_frames)))]
    return out


def motion_track(segments: list[tuple[int, int]], tempo: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate segments -> (T, 3) pose variables, (T,) labels; 4-frame blends at the seams."""
    poses, labels = [], []
    for cls, n in segments:
        poses.append(segment_motion(PATTERNS[cls] if cls >= 0 else None, n, tempo, rng))
        labels.append(np.full(n, cls, dtype=np.int64))
    for i in range(1, len(poses)):
        k = min(4, len(poses[i]))
        w = np.linspace(0.0, 1.0, k + 2)[1:-1, None]
        poses[i][:k] = (1 - w) * poses[i - 1][-1] + w * poses[i][:k]
    return np.concatenate(poses), np.concatenate(labels)


# ---------------------------------------------------------------------------------------------
# rendering


def skeleton(pose: np.ndarray, style: Style) -> np.ndarray:
    """Pose variables (A, S, L) -> (17, 2) COCO joint positions in pixels."""
    arm, squat, spread = pose
    h = style.height_px
    cx = style.centre_x
    leg = 0.47 * h
    hip_y = style.ground_y - leg * (1.0 - 0.55 * squat)
    shoulder_y = hip_y - 0.3 * h
    head_y = shoulder_y - 0.1 * h
    half_shoulder, half_hip = 0.11 * h, 0.07 * h
    j = np.zeros((NUM_KEYPOINTS, 2))
    j[0] = (cx, head_y)
    j[1], j[2] = (cx + 0.025 * h, head_y - 0.015 * h), (cx - 0.025 * h, head_y - 0.015 * h)
    j[3], j[4] = (cx + 0.045 * h, head_y), (cx - 0.045 * h, head_y)
    theta = np.deg2rad(10 + 150 * arm)  # from hanging down to overhead, in the frontal plane
    for side, (s_i, e_i, w_i) in ((1, (5, 7, 9)), (-1, (6, 8, 10))):  # person's left is image right
        shoulder = np.array([cx + side * half_shoulder, shoulder_y])
        direction = np.array([side * np.sin(theta), np.cos(theta)])
        j[s_i], j[e_i], j[w_i] = shoulder, shoulder + 0.16 * h * direction, shoulder + 0.31 * h * direction
    foot_half = half_hip + 0.02 * h + 0.28 * h * spread
    knee_out = 0.2 * h * squat
    for side, (h_i, k_i, a_i) in ((1, (11, 13, 15)), (-1, (12, 14, 16))):
        hip = np.array([cx + side * half_hip, hip_y])
        ankle = np.array([cx + side * foot_half, style.ground_y])
        knee = (hip + ankle) / 2 + np.array([side * knee_out, 0.0])
        j[h_i], j[k_i], j[a_i] = hip, knee, ankle
    return j


_LIMBS = ((5, 7), (7, 9), (6, 8), (8, 10))
_LEGS = ((11, 13), (13, 15), (12, 14), (14, 16))


def draw_person(canvas: np.ndarray, joints: np.ndarray, style: Style, solid: int | None = None) -> None:
    """Draw the person; `solid` draws everything in one gray value (for the mask)."""
    h = style.height_px
    limb_w = max(2, int(0.055 * h))

    def color(c: tuple[int, int, int]) -> tuple[int, ...]:
        return (solid,) if solid is not None else c

    p = np.round(joints).astype(np.int32)
    for a, b in _LEGS:
        cv2.line(canvas, tuple(p[a]), tuple(p[b]), color(style.pants), limb_w + 1, cv2.LINE_AA)
    torso = np.array([p[5], p[6], p[12], p[11]], dtype=np.int32)
    cv2.fillConvexPoly(canvas, torso, color(style.shirt), cv2.LINE_AA)
    for a, b in _LIMBS:
        cv2.line(canvas, tuple(p[a]), tuple(p[b]), color(style.shirt if b in (7, 8) else style.skin), limb_w,
                 cv2.LINE_AA)
    cv2.circle(canvas, tuple(p[0]), max(3, int(0.06 * h)), color(style.skin), -1, cv2.LINE_AA)


def noise_bank(rng: np.random.Generator, style: Style, shape: tuple[int, ...], n: int = 8) -> np.ndarray:
    """A few frames of sensor noise, reused at random offsets: drawing fresh Gaussian noise for
    every pixel of every frame would dominate generation time at realistic frame sizes."""
    return np.round(rng.normal(0.0, style.noise, size=(n, *shape))).astype(np.int16)


def render(joints: np.ndarray, style: Style, noise: np.ndarray, rng: np.random.Generator,
           view: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """One RGB frame and its 0/255 person mask. `joints` are in frame pixels; `view` is the
    frame's top-left corner in the (larger, when the camera shakes) background."""
    height, width = noise.shape[1:3]
    x0, y0 = view
    canvas = style.background.copy()
    draw_person(canvas, joints + np.array([x0, y0]), style)
    frame = canvas[y0:y0 + height, x0:x0 + width]
    grain = np.roll(noise[rng.integers(len(noise))], shift=tuple(rng.integers(0, 64, size=2)), axis=(0, 1))
    frame = np.clip(frame + grain, 0, 255).astype(np.uint8)
    mask = np.zeros(frame.shape[:2], dtype=np.uint8)
    draw_person(mask, joints, style, solid=255)
    return frame, np.where(mask > 127, 255, 0).astype(np.uint8)


def camera_shake(rng: np.random.Generator, n: int, amplitude: float) -> np.ndarray:
    """(n, 2) integer view offsets in [0, 2*ceil(amplitude)]: a slow random walk around the
    centre, pulled back towards it, like a handheld camera."""
    margin = int(np.ceil(amplitude))
    pos, out = np.zeros(2), np.empty((n, 2), dtype=np.int64)
    for t in range(n):
        pos = 0.85 * pos + rng.normal(0.0, amplitude * 0.35, size=2)
        pos = np.clip(pos, -amplitude, amplitude)
        out[t] = np.round(pos).astype(np.int64) + margin
    return out


# ---------------------------------------------------------------------------------------------
# files


def _keypoint_header(style: str) -> list[str]:
    names = [f"kp{j}" for j in range(NUM_KEYPOINTS)] if style == "index" else list(KEYPOINT_NAMES)
    return [f"{n}_{s}" for n in names for s in ("x", "y", "conf")]


def write_keypoints(path: Path, joints: np.ndarray, spec: DemoSpec, header_style: str, rng: np.random.Generator) -> None:
    """(T, 17, 2) true joints -> noisy CSV; dropped joints are empty cells."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow((["frame", "person"] if spec.extra_person else ["frame"]) + _keypoint_header(header_style))
        for t, frame_joints in enumerate(joints):
            people = [(frame_joints, (0.6, 1.0))]
            if spec.extra_person:  # a ghost detection: random joints with low confidence
                ghost = rng.uniform(0, [spec.width, spec.height], size=(NUM_KEYPOINTS, 2))
                people.append((ghost, (0.05, 0.3)))
            for person, (pj, (lo, hi)) in enumerate(people):
                noisy = pj + rng.normal(0.0, spec.keypoint_noise_px, size=pj.shape)
                conf = rng.uniform(lo, hi, size=NUM_KEYPOINTS)
                cells = []
                for (x, y), c in zip(noisy, conf, strict=True):
                    if rng.random() < spec.keypoint_dropout:
                        cells += ["", "", "0"]
                    else:
                        cells += [f"{x:.2f}", f"{y:.2f}", f"{c:.3f}"]
                out.writerow(([t, person] if spec.extra_person else [t]) + cells)


def write_labels(path: Path, labels: np.ndarray, segment_ids: np.ndarray, header: bool) -> None:
    """frame_number, column1 (segment number), column2 (class): zero-padded text, as the original."""
    path.parent.mkdir(parents=True, exist_ok=True)
    base = 1 if header else 0
    with path.open("w", newline="") as fh:
        if header:
            fh.write("frame_number,column1,column2\n")
        for t, (label, seg) in enumerate(zip(labels, segment_ids, strict=True)):
            fh.write(f"{t + base:04d},{seg:04d},{label:04d}\n")


def subject_ids(rng: np.random.Generator, n: int) -> list[str]:
    letters = np.array(list(string.ascii_lowercase + string.digits))
    return [f"{i + 1:03d}_{''.join(rng.choice(letters, 8))}" for i in range(n)]


def write_subject(root: Path, subject: str, index: int, spec: DemoSpec, rng: np.random.Generator) -> None:
    style = subject_style(rng, spec)
    segments = schedule(rng, spec)
    poses, labels = motion_track(segments, style.tempo, rng)
    segment_ids = np.repeat(np.arange(len(segments)), [n for _, n in segments])
    joints = np.stack([skeleton(p, style) for p in poses])  # (T, 17, 2)
    # Per-frame jitter of the whole body by a pixel or so: nobody stands perfectly still.
    joints += rng.normal(0.0, 0.5, size=(len(joints), 1, 2))
    frames = np.empty((len(poses), spec.height, spec.width, 3), dtype=np.uint8)
    mask_dir = root / "dataset" / "mask" / subject
    mask_dir.mkdir(parents=True, exist_ok=True)
    noise = noise_bank(rng, style, frames.shape[1:])
    margin = int(np.ceil(spec.shake_px))
    views = camera_shake(rng, len(joints), spec.shake_px) if spec.shake_px > 0 else np.full((len(joints), 2), margin)
    # The camera moves, so the person moves the other way in the picture (and in the keypoints).
    joints -= (views - margin)[:, None, :]
    for t, pose_joints in enumerate(joints):
        frames[t], mask = render(pose_joints, style, noise, rng, (int(views[t, 0]), int(views[t, 1])))
        cv2.imwrite(str(mask_dir / f"{t + 1:05d}_mask.png"), mask)
    write_video(root / "dataset" / "anon" / f"{subject}.mp4", frames, spec.fps)
    header_style = spec.keypoint_header
    if header_style == "alternate":
        header_style = "names" if index % 2 == 0 else "index"
    write_keypoints(root / "dataset" / "skeleton" / "yolo_pose_csv" / f"{subject}.csv", joints, spec, header_style, rng)
    write_labels(root / "label" / f"{subject}.csv", labels, segment_ids, spec.label_header)


def write_demo_dataset(root: str | Path, spec: DemoSpec = DemoSpec(), progress: bool = False) -> Path:
    """Write the whole demo dataset under `root` (DATASET.md layout): beside it first, renamed into
    place when complete, so that a stopped generation leaves no half dataset (which a rerun would
    refuse as a non-empty folder, and a reader could take for a whole one)."""
    if not 2 <= spec.classes <= MAX_CLASSES:
        raise ConfigError(f"demo classes must be in 2..{MAX_CLASSES}, got {spec.classes}")
    if spec.subjects < 3:
        raise ConfigError(f"demo needs at least 3 subjects (train, validation, test), got {spec.subjects}")
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise OutputError(f"{root}: not an empty folder; the demo data is written only to a new or empty folder "
                          "(it would overwrite split.csv, classes.csv and videos of a dataset there)")
    partial = partial_path(root)
    try:
        _write(partial, spec, progress)
        os.replace(partial, root)  # also over an empty folder
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # after a failure (after success it is gone)
    return root


def partial_path(root: Path, pid: int | str | None = None) -> Path:
    """Where `root` is written before it is renamed into place (this process's; `pid="*"`: a glob
    of every process's)."""
    return root.with_name(f".{root.name}.partial-{os.getpid() if pid is None else pid}")


def _write(root: Path, spec: DemoSpec, progress: bool) -> None:
    rng = np.random.default_rng(spec.seed)
    names = subject_ids(rng, spec.subjects)
    n_test = min(max(1, round(spec.test_fraction * spec.subjects)), spec.subjects - 2)
    test = set(rng.choice(names, size=n_test, replace=False).tolist())
    # One child generator per subject: a subject's content does not depend on how many others exist.
    children = np.random.SeedSequence(spec.seed).spawn(spec.subjects)
    start = last = time.monotonic()
    for i, subject in enumerate(progress_bar(names, "demo data", "subject", progress)):
        write_subject(root, subject, i, spec, np.random.default_rng(children[i]))
        if progress and not sys.stderr.isatty() and (time.monotonic() - last >= LOG_EVERY_S or i + 1 == len(names)):
            last = time.monotonic()
            log.info("demo data: %d of %d subjects written (%.0f s)", i + 1, len(names), last - start)
    with (root / "split.csv").open("w", newline="") as fh:
        fh.write("id,split\n")
        for subject in names:
            fh.write(f"{subject},{'test' if subject in test else 'train'}\n")
    write_class_names(root, [p.name for p in PATTERNS[: spec.classes]])  # the exercise names
