"""Pure functions on clips: skeleton attention, geometric and colour augmentation, normalisation.

The split of work is chosen for speed. Loader workers stay on uint8 data and OpenCV's SIMD
kernels: one affine warp per frame (flip, rotation, scale and shift folded into one matrix, the same for
every frame of a clip, applied to frames, masks and attention alike), colour jitter as one 3x4
colour matrix over the whole clip, and the mask/attention weight as one saturating multiply. Only the ImageNet normalisation, the one step that needs
float, runs per batch on the training device (`to_model_input`), so 4x fewer bytes cross to
the GPU. torchvision's v2 transforms do these operations per clip on float tensors
(grid_sample rotation, HSV hue), measured about 10x slower here: bench/loader.py.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .layout import ATTENTION_JOINTS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_GRAY = (0.299, 0.587, 0.114)
# RGB -> YIQ; hue jitter is a rotation of the chroma plane (I, Q) around the gray axis.
_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


# ---------------------------------------------------------------------------------------------
# skeleton attention


def skeleton_attention(kps: np.ndarray, size: int, sigma: float, floor: float, min_conf: float) -> np.ndarray:
    """(T, 17, 3) keypoints in pixels of a (size, size) frame -> (T, size, size) float32 in [floor, 1].

    A Gaussian blob of std `sigma` at each confident attention joint, max-combined. A frame with
    no confident joint gets uniform weight 1 (nothing to focus on is no reason to black it out).
    """
    joints = kps[:, ATTENTION_JOINTS].astype(np.float32)  # (T, J, 3)
    ok = (joints[..., 2] > 0) & (joints[..., 2] >= min_conf)  # (T, J); conf 0 = undetected, whatever min_conf
    grid = np.arange(size, dtype=np.float32)
    inv = -1.0 / (2.0 * sigma * sigma)
    # Separable Gaussian: exp(-(dx^2 + dy^2)/2s^2) = gx * gy, so only 2*J*S exps per frame.
    gx = np.exp(inv * (grid[None, None, :] - joints[..., 0:1]) ** 2) * ok[..., None]  # (T, J, S)
    gy = np.exp(inv * (grid[None, None, :] - joints[..., 1:2]) ** 2)  # (T, J, S)
    blobs = gy[:, :, :, None] * gx[:, :, None, :]  # (T, J, S, S)
    peak = blobs.max(axis=1)  # (T, S, S)
    att = floor + (1.0 - floor) * peak
    att[~ok.any(axis=1)] = 1.0
    return att.astype(np.float32)


def mask_weight(masks: np.ndarray, present: np.ndarray, alpha: float) -> np.ndarray:
    """(T, S, S) uint8 masks -> uint8 weights: 255 on the person, (1 - alpha)*255 elsewhere.

    Frames without a mask get weight 255 everywhere (used unmasked).
    """
    lut = np.full(256, round((1.0 - alpha) * 255), dtype=np.uint8)
    lut[128:] = 255
    t, h, w = masks.shape
    # OpenCV reads a 3-D array's last axis as channels (at most 512): one (T*S, S) image instead.
    weight = cv2.LUT(np.ascontiguousarray(masks).reshape(t * h, w), lut).reshape(t, h, w)
    weight[~present] = 255
    return weight


def combine_weights(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two (T, S, S) uint8 weights (255 = 1) multiplied, rounded, in uint8."""
    t, h, w = a.shape
    flat = (t * h, w)  # as in mask_weight: no axis of OpenCV's is read as channels
    return cv2.multiply(np.ascontiguousarray(a).reshape(flat), np.ascontiguousarray(b).reshape(flat),
                        scale=1.0 / 255.0).reshape(t, h, w)


# ---------------------------------------------------------------------------------------------
# augmentation parameters (one draw per clip, applied to every frame)


@dataclass(frozen=True)
class AugmentParams:
    flip: bool = False
    angle: float = 0.0  # degrees, counter-clockwise
    scale: float = 1.0  # > 1 zooms in, about the centre
    shift: tuple[float, float] = (0.0, 0.0)  # (dx, dy) as shares of the frame size
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0  # fraction of a full turn, in [-0.5, 0.5]

    @property
    def geometric(self) -> bool:
        return self.flip or self.angle != 0.0 or self.scale != 1.0 or self.shift != (0.0, 0.0)

    @property
    def colored(self) -> bool:
        return (self.brightness, self.contrast, self.saturation, self.hue) != (1.0, 1.0, 1.0, 0.0)


IDENTITY = AugmentParams()


def sample_augment(rng: np.random.Generator, cfg) -> AugmentParams:
    """Draw one clip's augmentation from an AugmentConfig."""
    def around_one(amount: float) -> float:
        return float(rng.uniform(max(0.0, 1.0 - amount), 1.0 + amount)) if amount > 0 else 1.0

    flip = bool(rng.random() < cfg.hflip_p)
    angle = float(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)) if cfg.rotation_deg > 0 else 0.0
    scale = around_one(cfg.scale)
    dx, dy = rng.uniform(-cfg.translate, cfg.translate, size=2) if cfg.translate > 0 else (0.0, 0.0)
    return AugmentParams(
        flip=flip,
        angle=angle,
        scale=scale,
        shift=(float(dx), float(dy)),
        brightness=around_one(cfg.brightness),
        contrast=around_one(cfg.contrast),
        saturation=around_one(cfg.saturation),
        hue=float(rng.uniform(-cfg.hue, cfg.hue)) if cfg.hue > 0 else 0.0,
    )


# ---------------------------------------------------------------------------------------------
# geometry


def geometry_matrix(params: AugmentParams, size: int) -> np.ndarray:
    """2x3 affine matrix in pixel coordinates: horizontal flip first, then rotation and scale
    about the centre, then the shift."""
    centre = (size - 1) / 2.0
    flip = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) if params.flip else np.eye(3)
    rot = np.vstack([cv2.getRotationMatrix2D((centre, centre), params.angle, params.scale), [0.0, 0.0, 1.0]])
    rot[:2, 2] += np.asarray(params.shift) * size
    return (rot @ flip)[:2]


def warp_frames(frames: np.ndarray, matrix: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Apply one affine matrix to every frame of (T, S, S[, C]) uint8; outside pixels become 0."""
    size = frames.shape[1]
    out = np.empty_like(frames) if out is None else out
    for t in range(len(frames)):
        cv2.warpAffine(frames[t], matrix, (size, size), dst=out[t], flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out


# ---------------------------------------------------------------------------------------------
# colour and weighting (uint8, in the loader workers)


def color_matrix(params: AugmentParams, gray_mean: float) -> np.ndarray:
    """3x4 affine colour transform for OpenCV: brightness, contrast, saturation, hue in one.

    Brightness scales; contrast blends with the clip's mean gray; saturation blends each pixel
    with its own gray; hue rotates the chroma plane (YIQ) around the gray axis. All four are
    linear, and saturation and hue leave gray untouched, so they fold into one matrix plus an
    offset along the gray axis.
    """
    b, c, s = params.brightness, params.contrast, params.saturation
    gray = np.asarray(_GRAY)
    sat = s * np.eye(3) + (1.0 - s) * np.tile(gray, (3, 1))
    theta = params.hue * 2.0 * math.pi
    rot = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(theta), -math.sin(theta)], [0.0, math.sin(theta), math.cos(theta)]])
    yiq = np.asarray(_YIQ)
    hue = np.linalg.inv(yiq) @ rot @ yiq
    matrix = np.empty((3, 4), dtype=np.float32)
    matrix[:, :3] = (hue @ sat) * (b * c)
    matrix[:, 3] = (1.0 - c) * b * gray_mean
    return matrix


def jitter_colors(frames: np.ndarray, params: AugmentParams) -> np.ndarray:
    """(T, S, S, 3) uint8 RGB through one colour transform (saturating at 0 and 255)."""
    t, h, w, _ = frames.shape
    gray_mean = float((frames[:, ::4, ::4].reshape(-1, 3) @ np.asarray(_GRAY)).mean())  # subsampled: cheap
    flat = frames.reshape(t * h, w, 3)  # OpenCV sees the clip as one tall image
    return cv2.transform(flat, color_matrix(params, gray_mean)).reshape(t, h, w, 3)


def apply_weight(frames: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(T, S, S, 3) uint8 frames x (T, S, S) uint8 weight (255 = 1), rounded, in uint8."""
    t, h, w, _ = frames.shape
    w3 = cv2.merge([weight.reshape(t * h, w)] * 3)  # (T*S, S, 3)
    return cv2.multiply(frames.reshape(t * h, w, 3), w3, scale=1.0 / 255.0).reshape(t, h, w, 3)


# ---------------------------------------------------------------------------------------------
# normalisation (per batch, on the training device)


def to_model_input(video: torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) clips -> ImageNet-normalised float (B, 3, T, H, W).

    The result is a permuted view whose memory is channels_last_3d, the layout cuDNN prefers
    for Conv3d; doing this on the device moves 4x fewer bytes than float batches would.
    """
    scale, shift = _normalisation(video.device)
    x = video.float().mul_(scale).sub_(shift)  # (B, T, H, W, 3)
    return x.permute(0, 4, 1, 2, 3)  # (B, 3, T, H, W)


@functools.lru_cache(maxsize=8)
def _normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(3,) scale and shift on `device`, made once: building them from Python lists in every
    step was a blocking host-to-device copy, i.e. a GPU synchronisation per batch."""
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    return (1.0 / (255.0 * std)).to(device), (mean / std).to(device)
