"""Pure functions on clips: skeleton attention, geometric and colour augmentation, normalisation.

The split of work is chosen for speed. A worker only does what is cheap on uint8 data: one
OpenCV affine warp per frame (flip and rotation folded into one matrix, identical for every
frame of a clip, applied to frames, masks and attention alike) and the matching keypoint
transform. Colour jitter, mask/attention weighting and ImageNet normalisation are all affine
per pixel, so they run once per batch in `to_model_input`, on the training device, on 4x less
data than float clips would be. torchvision's v2 transforms do the same operations, but per clip
on float tensors (grid_sample rotation, HSV hue), which is about 10x slower on this path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .layout import ATTENTION_JOINTS, FLIP_PAIRS

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
    ok = joints[..., 2] >= min_conf  # (T, J)
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
    background = round((1.0 - alpha) * 255)
    w = np.where(masks > 127, np.uint8(255), np.uint8(background))
    w[~present] = 255
    return w


# ---------------------------------------------------------------------------------------------
# augmentation parameters (one draw per clip, applied to every frame)


@dataclass(frozen=True)
class AugmentParams:
    flip: bool = False
    angle: float = 0.0  # degrees, counter-clockwise
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0  # fraction of a full turn, in [-0.5, 0.5]

    @property
    def geometric(self) -> bool:
        return self.flip or self.angle != 0.0

    def color(self) -> np.ndarray:
        return np.array([self.brightness, self.contrast, self.saturation, self.hue], dtype=np.float32)


IDENTITY = AugmentParams()


def sample_augment(rng: np.random.Generator, cfg) -> AugmentParams:
    """Draw one clip's augmentation from an AugmentConfig."""
    def around_one(amount: float) -> float:
        return float(rng.uniform(max(0.0, 1.0 - amount), 1.0 + amount)) if amount > 0 else 1.0

    return AugmentParams(
        flip=bool(rng.random() < cfg.hflip_p),
        angle=float(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)) if cfg.rotation_deg > 0 else 0.0,
        brightness=around_one(cfg.brightness),
        contrast=around_one(cfg.contrast),
        saturation=around_one(cfg.saturation),
        hue=float(rng.uniform(-cfg.hue, cfg.hue)) if cfg.hue > 0 else 0.0,
    )


# ---------------------------------------------------------------------------------------------
# geometry


def geometry_matrix(params: AugmentParams, size: int) -> np.ndarray:
    """2x3 affine matrix in pixel coordinates: horizontal flip first, then rotation about the centre."""
    centre = (size - 1) / 2.0
    flip = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) if params.flip else np.eye(3)
    rot = np.vstack([cv2.getRotationMatrix2D((centre, centre), params.angle, 1.0), [0.0, 0.0, 1.0]])
    return (rot @ flip)[:2]


def warp_frames(frames: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply one affine matrix to every frame of (T, S, S[, C]) uint8; outside pixels become 0."""
    size = frames.shape[1]
    out = np.empty_like(frames)
    for t in range(len(frames)):
        cv2.warpAffine(frames[t], matrix, (size, size), dst=out[t], flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out


def warp_keypoints(kps: np.ndarray, matrix: np.ndarray, flipped: bool) -> np.ndarray:
    """(T, 17, 3) keypoints through the same matrix; a flip also swaps left and right joints."""
    out = kps.copy()
    xy1 = np.concatenate([kps[..., :2], np.ones_like(kps[..., :1])], axis=-1)  # (T, 17, 3)
    out[..., :2] = xy1 @ matrix.T
    if flipped:
        left, right = zip(*FLIP_PAIRS)
        out[:, list(left) + list(right)] = out[:, list(right) + list(left)]
    out[out[..., 2] <= 0, :2] = 0.0  # undetected joints stay at the origin
    return out


# ---------------------------------------------------------------------------------------------
# per-batch colour, weighting and normalisation (runs on the training device)


def color_matrices(color: torch.Tensor, gray_mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 4) jitter factors (brightness, contrast, saturation, hue) -> (B, 3, 3) matrix, (B, 3) offset.

    Brightness scales, contrast blends with the clip's mean gray, saturation blends with each
    pixel's gray and hue rotates chroma: all linear, so one matrix and offset does all four.
    """
    b, c, s, h = color.unbind(dim=1)
    dev, dt = color.device, color.dtype
    gray = torch.tensor(_GRAY, device=dev, dtype=dt)
    eye = torch.eye(3, device=dev, dtype=dt)
    sat = s[:, None, None] * eye + (1 - s)[:, None, None] * gray[None, None, :].expand(-1, 3, -1)  # (B, 3, 3)
    yiq = torch.tensor(_YIQ, device=dev, dtype=dt)
    theta = h * 2 * math.pi
    rot = torch.zeros(len(color), 3, 3, device=dev, dtype=dt)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = torch.cos(theta), -torch.sin(theta)
    rot[:, 2, 1], rot[:, 2, 2] = torch.sin(theta), torch.cos(theta)
    hue = torch.linalg.inv(yiq) @ rot @ yiq  # (B, 3, 3)
    matrix = (hue @ sat) * (b * c)[:, None, None]
    offset = ((1 - c) * b * gray_mean)[:, None].expand(-1, 3)
    return matrix, offset


def to_model_input(video: torch.Tensor, weight: torch.Tensor | None = None,
                   color: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) clips -> float (B, 3, T, H, W) model input.

    Applies colour jitter (if `color`, (B, 4)), the mask/attention weight (if `weight`,
    (B, T, H, W) uint8 with 255 = 1) and ImageNet normalisation. The result is a permuted view
    whose memory is channels_last_3d, the layout cuDNN prefers for Conv3d.
    """
    x = video.float()  # (B, T, H, W, 3)
    if color is not None and not torch.all(color == torch.tensor([1.0, 1.0, 1.0, 0.0], device=color.device)):
        gray = torch.tensor(_GRAY, device=x.device)
        gray_mean = (x @ gray).mean(dim=(1, 2, 3))  # (B,)
        matrix, offset = color_matrices(color.float(), gray_mean)
        b, t, h, w, ch = x.shape
        x = torch.bmm(x.reshape(b, t * h * w, ch), matrix.transpose(1, 2))  # (B, THW, 3)
        x = x.reshape(b, t, h, w, ch) + offset[:, None, None, None, :]
        x = x.clamp_(0.0, 255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device)
    std = torch.tensor(IMAGENET_STD, device=x.device)
    if weight is not None:
        x = x * weight.float().unsqueeze(-1)  # weight 255 = 1, folded into the scale below
        scale = 1.0 / (255.0 * 255.0 * std)
    else:
        scale = 1.0 / (255.0 * std)
    x = x * scale - mean / std
    return x.permute(0, 4, 1, 2, 3)  # (B, 3, T, H, W)
