"""The torch Dataset over a clip index, its DataLoader, and the step that turns a batch into
model input on the device."""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from . import clips, transforms
from .layout import NUM_KEYPOINTS
from .prepare import PreparedData, SubjectData

class ClipDataset(Dataset):
    """Samples are dicts with fixed keys:

    video     (T, S, S, 3) uint8   RGB frames: augmented (train), masked and attention-weighted
    keypoints (T, 17, 3) float32   in clip pixels, through the same flip/rotation (zeros if none)
    label     int64                clip class
    subject   int64                index into `subjects`
    start     int64                first frame of the clip in the subject's video
    """

    def __init__(self, data: PreparedData, split: str, train: bool, seed: int = 0) -> None:
        self.index: clips.ClipIndex = data.splits[split]
        self.subjects = [data.subjects[name] for name in self.index.subjects]
        cfg = data.config
        self.clip_len = cfg.data.clip_len
        self.start_jitter = cfg.data.start_jitter if train else 0
        self.augment = cfg.augment if (train and cfg.augment.enabled) else None
        self.mask_alpha = cfg.data.mask_alpha
        self.use_masks = cfg.data.use_masks
        self.use_attention = cfg.data.use_skeleton_attention
        self.seed = seed
        # Shared memory, so that persistent loader workers see the epoch the main process sets.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Augmentation depends on (seed, epoch, index) only, not on worker count or order."""
        self._epoch[0] = epoch

    def __len__(self) -> int:
        return len(self.index)

    def _weight(self, subj: SubjectData, sl: slice) -> np.ndarray | None:
        """(T, S, S) uint8 mask x attention weight for frames `sl`, or None when both are off."""
        weight = None
        if self.use_masks and subj.masks is not None:
            weight = transforms.mask_weight(subj.masks[sl], subj.mask_present[sl], self.mask_alpha)
        if self.use_attention and subj.attention is not None:
            att = subj.attention[sl]
            att = np.asarray(att)
            weight = att if weight is None else cv2.multiply(weight, att, scale=1.0 / 255.0)
        return weight

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        subj = self.subjects[self.index.subject_idx[i]]
        rng = np.random.default_rng((self.seed, int(self._epoch[0]), int(i)))
        start = int(self.index.start[i])
        if self.start_jitter:
            start += int(rng.integers(-self.start_jitter, self.start_jitter + 1))
            start = min(max(start, 0), subj.num_frames - self.clip_len)
        sl = slice(start, start + self.clip_len)
        video = np.array(subj.video.frames[sl])  # a private copy, never a view of the read-only map
        weight = self._weight(subj, sl)
        kps = subj.keypoints[sl] if subj.keypoints is not None else np.zeros((self.clip_len, NUM_KEYPOINTS, 3), np.float32)
        params = transforms.sample_augment(rng, self.augment) if self.augment else transforms.IDENTITY
        # Weight and colour are per pixel and the warp is geometric, so they commute: weighting
        # before warping needs one warp per frame instead of two (frames and weight).
        if weight is not None:
            video = transforms.apply_weight(video, weight)
        if params.colored:
            video = transforms.jitter_colors(video, params)
        if params.geometric:
            matrix = transforms.geometry_matrix(params, video.shape[1])
            video = transforms.warp_frames(video, matrix)
            kps = transforms.warp_keypoints(kps, matrix, params.flip)
        return {
            "video": torch.from_numpy(np.ascontiguousarray(video)),
            "keypoints": torch.from_numpy(np.ascontiguousarray(kps, dtype=np.float32)),
            "label": torch.tensor(int(self.index.label[i])),
            "subject": torch.tensor(int(self.index.subject_idx[i])),
            "start": torch.tensor(start),
        }


def default_workers(requested: int) -> int:
    return max(0, min(requested, os.cpu_count() or 1))


def _single_threaded_worker(_: int) -> None:
    """One torch thread per worker: the workers already fill the cores. (OpenCV's pool is left
    alone: cv2.setNumThreads in a forked child can deadlock on the parent's pool lock.)"""
    torch.set_num_threads(1)


def make_loader(data: PreparedData, split: str, train: bool, batch_size: int, num_workers: int,
                seed: int = 0, weighted_sampler: bool = True, pin_memory: bool = False) -> DataLoader:
    """Training loaders draw with class-balancing weights (with replacement) when asked;
    evaluation loaders go through the clips in order."""
    dataset = ClipDataset(data, split, train=train, seed=seed)
    sampler = None
    if train and weighted_sampler:
        weights = clips.sampler_weights(dataset.index, data.config.model.num_classes)
        sampler = WeightedRandomSampler(torch.from_numpy(weights), num_samples=len(dataset), replacement=True,
                                        generator=torch.Generator().manual_seed(seed))
    workers = default_workers(num_workers)
    return DataLoader(
        dataset,
        worker_init_fn=_single_threaded_worker,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=False,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed) if train and sampler is None else None,
    )


def prepare_batch(batch: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a uint8 batch to the device and finish it there: (B, 3, T, H, W) float input, (B,) labels."""
    non_blocking = device.type == "cuda"
    x = transforms.to_model_input(batch["video"].to(device, non_blocking=non_blocking))
    return x, batch["label"].to(device, non_blocking=non_blocking)
