"""The torch Dataset over a clip index, its DataLoader, and the step that turns a batch into
model input on the device."""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info

from . import clips, transforms
from .errors import DataError
from .prepare import PreparedData, SubjectData
from .sampling import DistributedWeightedSampler, EvaluationShard


class ClipDataset(Dataset):
    """Samples are dicts with fixed keys:

    video     (T, S, S, 3) uint8   RGB frames: augmented (train), masked and attention-weighted
    label     int64                clip class
    subject   int64                index into `subjects`
    start     int64                first frame of the clip in the subject's video
    load_seconds float64           wall time this process spent making the clip (the loader's own
                                   cost, read by the training loop's data-wait report)
    """

    def __init__(self, data: PreparedData, split: str, train: bool, seed: int = 0, rank: int = 0) -> None:
        self.index: clips.ClipIndex = data.splits[split]
        self.subjects = [data.subjects[name] for name in self.index.subjects]
        cfg = data.config
        self.clip_len = cfg.data.clip_len
        self.start_jitter = cfg.data.start_jitter if train else 0
        self.augment = cfg.augment if (train and cfg.augment.enabled) else None
        self.mask_alpha = cfg.data.mask_alpha
        self.use_masks = cfg.data.use_masks
        self.use_attention = cfg.data.use_skeleton_attention
        # (seed,) on rank 0, as one process always drew; (seed, rank) elsewhere: a clip that two
        # DDP ranks draw in one epoch gets two augmentations, not one twice
        self.seed_key: tuple[int, ...] = (seed,) if rank == 0 else (seed, rank)
        # Shared memory, so that persistent loader workers see the epoch the main process sets.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Augmentation depends on (seed, epoch, index) only, not on worker count or order."""
        self._epoch[0] = epoch

    def __len__(self) -> int:
        return len(self.index)

    def _weighted_frames(self, subj: SubjectData, sl: slice) -> np.ndarray:
        return weighted_frames(subj, sl, self.use_masks, self.use_attention, self.mask_alpha)

    def clip_at(self, subj: SubjectData, start: int) -> np.ndarray:
        """(T, S, S, 3) uint8 model view of any window (no augmentation), e.g. for sliding."""
        return np.array(self._weighted_frames(subj, slice(start, start + self.clip_len)))

    def _fill(self, i: int, video_out: np.ndarray) -> int:
        """Write clip `i` into its batch slot (T, S, S, 3); return its start frame. (Keypoints are
        not in the batch: skeleton attention is already in the cached weights, and the model
        sees only frames.)"""
        subj = self.subjects[self.index.subject_idx[i]]
        rng = np.random.default_rng((*self.seed_key, int(self._epoch[0]), int(i)))
        start = int(self.index.start[i])
        if self.start_jitter:
            start += int(rng.integers(-self.start_jitter, self.start_jitter + 1))
            start = min(max(start, 0), subj.num_frames - self.clip_len)
        sl = slice(start, start + self.clip_len)
        params = transforms.sample_augment(rng, self.augment) if self.augment else transforms.IDENTITY
        # Weight and colour are per pixel and the warp is geometric, so they commute: weighting
        # before warping needs one warp per frame instead of two (frames and weight).
        video = self._weighted_frames(subj, sl)
        if params.colored:
            video = transforms.jitter_colors(video, params)
        if params.geometric:
            transforms.warp_frames(video, transforms.geometry_matrix(params, video.shape[1]), out=video_out)
        else:
            video_out[...] = video
        return start

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """A whole batch at once: each clip is written straight into the batch tensor (in shared
        memory inside a loader worker), so there is no per-clip tensor to stack afterwards."""
        n, size = len(indices), self.subjects[0].video.frames.shape[1]
        video = _batch_tensor((n, self.clip_len, size, size, 3), torch.uint8)
        video_np = video.numpy()
        starts, seconds = [], []
        for j, i in enumerate(indices):
            began = time.perf_counter()
            starts.append(self._fill(int(i), video_np[j]))
            seconds.append(time.perf_counter() - began)
        rows = np.asarray(indices, dtype=np.int64)
        return {
            "video": video,
            "label": torch.from_numpy(self.index.label[rows].astype(np.int64)),
            "subject": torch.from_numpy(self.index.subject_idx[rows].astype(np.int64)),
            "start": torch.tensor(starts, dtype=torch.int64),
            "load_seconds": torch.tensor(seconds, dtype=torch.float64),
        }

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {key: value[0] for key, value in self.__getitems__([i]).items()}


def frame_weight(subj: SubjectData, sl: slice, use_masks: bool, use_attention: bool,
                 mask_alpha: float) -> np.ndarray | None:
    """(T, S, S) uint8 mask x attention weight for frames `sl`, or None when both are off (or
    the subject has neither)."""
    weight = None
    if use_masks and subj.masks is not None and subj.mask_present is not None:
        weight = transforms.mask_weight(subj.masks[sl], subj.mask_present[sl], mask_alpha)
    if use_attention and subj.attention is not None:
        att = np.asarray(subj.attention[sl])
        weight = att if weight is None else transforms.combine_weights(weight, att)
    return weight


def weighted_frames(subj: SubjectData, sl: slice, use_masks: bool, use_attention: bool,
                    mask_alpha: float) -> np.ndarray:
    """Frames `sl` as the model sees them: the mask x attention weight applied (uint8
    (T, S, S, 3)). The one definition of that view, for training, evaluation and predict."""
    weight = frame_weight(subj, sl, use_masks, use_attention, mask_alpha)
    frames = subj.video.frames[sl]
    return transforms.apply_weight(frames, weight) if weight is not None else frames


class ModelView:
    """A subject's whole video as the model sees it (weighted_frames), sliced on demand: windows
    slide over a long video without all of its weighted frames in memory at once."""

    def __init__(self, subj: SubjectData, use_masks: bool, use_attention: bool, mask_alpha: float) -> None:
        self.subj, self.use_masks, self.use_attention, self.mask_alpha = subj, use_masks, use_attention, mask_alpha

    def __len__(self) -> int:
        return self.subj.num_frames

    def __getitem__(self, sl: slice) -> np.ndarray:
        return np.asarray(weighted_frames(self.subj, sl, self.use_masks, self.use_attention, self.mask_alpha))


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor; inside a loader worker it is allocated in shared memory, so that handing
    it to the main process costs no copy (what default_collate does for its stacked batches).

    `_typed_storage()._new_shared` is private torch API, the same call default_collate makes:
    the public `share_memory_()` would copy the whole batch once more. Checked by
    tests/data/test_transforms.py::test_loader_workers_fill_batches_in_shared_memory."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape))
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel)
    return torch.empty(0, dtype=dtype).new(storage).view(shape)


def collate_batch(batch: Any) -> dict[str, torch.Tensor]:
    """ClipDataset.__getitems__ already returns a collated batch (a dict, where DataLoader's
    contract says list)."""
    return batch


def default_workers(requested: int) -> int:
    return max(0, min(requested, os.cpu_count() or 1))


def _single_threaded_worker(_: int) -> None:
    """One thread per worker: the workers already fill the cores, nested pools only contend."""
    torch.set_num_threads(1)
    if multiprocessing.get_start_method(allow_none=True) != "fork":
        cv2.setNumThreads(1)  # a fresh (spawned) process: safe to size OpenCV's pool here


def make_loader(data: PreparedData, split: str, train: bool, batch_size: int, num_workers: int,
                seed: int = 0, weighted_sampler: bool = True, pin_memory: bool = False,
                rank: int = 0, world_size: int = 1) -> DataLoader:
    """Training loaders draw with class-balancing weights (with replacement) when asked, each
    rank its share under DDP; evaluation loaders go through all clips in order, under DDP each
    rank its EvaluationShard (validation: training.distributed.gather_shards joins them)."""
    dataset = ClipDataset(data, split, train=train, seed=seed, rank=rank)
    sampler: DistributedWeightedSampler | DistributedSampler | EvaluationShard | None = None
    if train and weighted_sampler:
        # Drawn from (seed, epoch) alone, so a resumed run sees the same epochs it would have.
        weights = torch.from_numpy(clips.sampler_weights(dataset.index, data.config.model.outputs))
        sampler = DistributedWeightedSampler(weights, len(dataset), rank, world_size, seed)
    elif train:  # a plain shuffle, also seeded by (seed, epoch) so that resume is exact
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    elif world_size > 1:
        sampler = EvaluationShard(len(dataset), rank, world_size)
    per_rank = len(sampler) if sampler is not None else len(dataset)
    if train and per_rank == 0:
        raise DataError(f"{split}: no training clips for rank {rank} of {world_size}")
    workers = default_workers(num_workers)
    if workers > 0:
        # A forked worker inherits OpenCV's thread pool and cannot resize it (cv2.setNumThreads
        # deadlocks there), so it is sized here, before the fork; this process does no OpenCV
        # work while training. Measured: about +30% clips/s on 2 cores (bench/loader.py).
        cv2.setNumThreads(1)
    return DataLoader(
        dataset,
        collate_fn=collate_batch,
        worker_init_fn=_single_threaded_worker,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=train and per_rank > batch_size,  # no 1-clip batch for BatchNorm
        persistent_workers=workers > 0,
        # Each new iterator draws a seed; from its own generator it leaves torch's global RNG
        # (dropout) alone. Persistent workers draw once per run, a resumed run once more: with the
        # global RNG, its dropout masks then differed from the uninterrupted run's (issue 11).
        # (Per rank: the workers' base seeds differ between ranks as their clips do.)
        generator=torch.Generator().manual_seed(seed if rank == 0 else int(np.random.SeedSequence((seed, rank))
                                                                           .generate_state(1)[0])),
    )


def stop_workers(*loaders: DataLoader | None) -> None:
    """Stop the loaders' persistent worker processes now. Left to the garbage collector, a
    finished run's workers idled on: a seed group, a study or a bench training in one process
    kept 2 x num_workers processes (and their memory) per finished member."""
    for loader in loaders:
        if loader is None or loader._iterator is None:
            continue
        shutdown = getattr(loader._iterator, "_shutdown_workers", None)  # what the iterator's __del__ calls;
        if shutdown is not None:  # torch has no public close() (single-process iterators have none)
            shutdown()
        loader._iterator = None


def prepare_batch(batch: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a uint8 batch to the device and finish it there: (B, 3, T, H, W) float input, (B,) labels."""
    non_blocking = device.type == "cuda"
    x = transforms.to_model_input(batch["video"].to(device, non_blocking=non_blocking))
    return x, batch["label"].to(device, non_blocking=non_blocking)
