"""Pure clip transforms and the Dataset samples built from them."""

from __future__ import annotations

import dataclasses
import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from exptrack.config import AugmentConfig
from exptrack.data import transforms as T
from exptrack.data.dataset import ClipDataset, prepare_batch
from exptrack.data.layout import KEYPOINT_NAMES
from exptrack.data.prepare import prepare_data

S = 64
LW, RW = KEYPOINT_NAMES.index("left_wrist"), KEYPOINT_NAMES.index("right_wrist")


def _dot_clip(kps: np.ndarray) -> np.ndarray:
    """A clip with a red dot at the left wrist and a green dot at the right wrist."""
    clip = np.zeros((len(kps), S, S, 3), dtype=np.uint8)
    for t, frame_kps in enumerate(kps):
        for joint, color in ((LW, (255, 0, 0)), (RW, (0, 255, 0))):
            x, y = np.round(frame_kps[joint, :2]).astype(int)
            clip[t, y - 2:y + 3, x - 2:x + 3] = color
    return clip


@pytest.mark.parametrize("flip, angle, scale, shift", [(True, 0.0, 1.0, (0.0, 0.0)), (False, 9.0, 1.0, (0.0, 0.0)),
                                                       (True, -7.5, 1.0, (0.0, 0.0)), (False, 0.0, 1.15, (0.1, -0.05)),
                                                       (True, 5.0, 0.85, (-0.1, 0.1))])
def test_geometry_matrix_says_where_the_pixels_go(flip, angle, scale, shift):
    """The one affine warp per clip (flip then rotation) moves a pixel to matrix @ (x, y, 1), so
    anything drawn with the same matrix (masks, attention) stays aligned with the frames."""
    kps = np.zeros((4, 17, 3), dtype=np.float32)
    kps[:, LW] = (44, 20, 0.9)
    kps[:, RW] = (18, 26, 0.8)
    clip = _dot_clip(kps)
    m = T.geometry_matrix(T.AugmentParams(flip=flip, angle=angle, scale=scale, shift=shift), S)
    warped = T.warp_frames(clip, m)
    for joint, channel in ((LW, 0), (RW, 1)):
        x, y = np.round(m @ np.array([*kps[0, joint, :2], 1.0])).astype(int)
        assert warped[0, y, x, channel] > 150 and warped[0, y, x, 1 - channel] < 60, (joint, warped[0, y, x])
    if flip:  # mirrored: the left dot is now left of the right one
        assert (m @ [44, 20, 1])[0] < (m @ [18, 26, 1])[0]


def test_scale_and_shift_move_the_picture_as_drawn():
    """A dot at the centre stays there under zoom alone; a shift of 0.1 moves it by 0.1 of the frame."""
    clip = np.zeros((2, S, S, 3), dtype=np.uint8)
    c = (S - 1) // 2
    clip[:, c - 1:c + 2, c - 1:c + 2] = 255
    zoomed = T.warp_frames(clip, T.geometry_matrix(T.AugmentParams(scale=1.2), S))
    assert zoomed[0, c, c, 0] == 255 and zoomed.sum() > clip.sum()  # bigger, same place
    moved = T.warp_frames(clip, T.geometry_matrix(T.AugmentParams(shift=(0.1, 0.0)), S))
    assert moved[0, c, c + round(0.1 * S), 0] == 255 and moved[0, c, c, 0] == 0
    cfg = dataclasses.replace(AugmentConfig(), scale=0.2, translate=0.1)
    draws = [T.sample_augment(np.random.default_rng(i), cfg) for i in range(50)]
    assert all(0.8 <= d.scale <= 1.2 and max(map(abs, d.shift)) <= 0.1 for d in draws)
    assert len({d.scale for d in draws}) == 50 and all(d.geometric for d in draws)
    off = T.sample_augment(np.random.default_rng(3), AugmentConfig(rotation_deg=0.0, hflip_p=0.0))
    assert (off.scale, off.shift, off.geometric) == (1.0, (0.0, 0.0), False)  # the default: no warp at all


def test_plain_flip_is_an_exact_mirror():
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 255, (3, S, S, 3), dtype=np.uint8)
    m = T.geometry_matrix(T.AugmentParams(flip=True), S)
    np.testing.assert_array_equal(T.warp_frames(clip, m), clip[:, :, ::-1])


def test_same_augmentation_for_every_frame():
    clip = np.repeat(np.random.default_rng(1).integers(0, 255, (1, S, S, 3), dtype=np.uint8), 5, axis=0)
    params = T.sample_augment(np.random.default_rng(2), AugmentConfig())
    out = T.warp_frames(clip, T.geometry_matrix(params, S))
    out = T.jitter_colors(out, params)
    assert all(np.array_equal(out[0], f) for f in out[1:])


@pytest.mark.parametrize("kind, factor, reference", [
    ("brightness", 1.3, TF.adjust_brightness),
    ("brightness", 0.7, TF.adjust_brightness),
    ("saturation", 0.4, TF.adjust_saturation),
    ("saturation", 1.6, TF.adjust_saturation),
    ("contrast", 0.6, TF.adjust_contrast),
])
def test_color_jitter_matches_torchvision(kind, factor, reference):
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 255, (S, S, 3), dtype=np.uint8)
    clip = np.repeat(frame[None], 2, axis=0)  # torchvision's contrast uses each frame's own mean
    ours = T.jitter_colors(clip, T.AugmentParams(**{kind: factor}))[0]
    theirs = reference(torch.from_numpy(frame).permute(2, 0, 1), factor).permute(1, 2, 0).numpy()
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 2


def test_hue_rotation_keeps_gray_and_changes_color():
    clip = np.array([[[[128, 128, 128], [200, 40, 40]]]], dtype=np.uint8)  # (1, 1, 2, 3)
    out = T.jitter_colors(clip, T.AugmentParams(hue=0.25))
    np.testing.assert_allclose(out[0, 0, 0], [128, 128, 128], atol=1)
    assert np.abs(out[0, 0, 1].astype(int) - [200, 40, 40]).max() > 40


def test_skeleton_attention_peaks_at_joints():
    kps = np.zeros((2, 17, 3), dtype=np.float32)
    kps[0, 9] = (40, 30, 0.9)  # left wrist
    kps[0, 10] = (10, 10, 0.1)  # below min_conf: ignored
    att = T.skeleton_attention(kps, S, sigma=4.0, floor=0.2, min_conf=0.3)
    assert att.shape == (2, S, S) and att.dtype == np.float32
    assert att[0, 30, 40] == pytest.approx(1.0)
    assert att[0, 10, 10] == pytest.approx(0.2)
    assert att[0, 30, 44] == pytest.approx(0.2 + 0.8 * np.exp(-0.5), rel=1e-4)  # one sigma away
    assert (att[1] == 1.0).all()  # no confident joint: uniform


def test_mask_weight_soft_background():
    masks = np.zeros((2, 4, 4), dtype=np.uint8)
    masks[:, 1:3, 1:3] = 255
    w = T.mask_weight(masks, np.array([True, False]), alpha=0.7)
    assert w[0, 1, 1] == 255 and abs(int(w[0, 0, 0]) - 0.3 * 255) <= 1
    assert (w[1] == 255).all()  # frame without a mask: used unmasked


def test_min_conf_zero_still_ignores_undetected_joints():
    """Undetected joints are (0, 0, conf 0): at min_conf=0 they drew blobs in the corner and dimmed
    the rest of a frame with no detection at all."""
    att = T.skeleton_attention(np.zeros((1, 17, 3), dtype=np.float32), S, sigma=4.0, floor=0.2, min_conf=0.0)
    assert (att == 1.0).all()


def test_weights_of_frames_larger_than_opencvs_channel_limit():
    """OpenCV reads a (T, S, S) array's last axis as channels, at most 512: frame_size 520 crashed."""
    masks = np.zeros((2, 520, 520), dtype=np.uint8)
    masks[:, :260] = 255
    w = T.mask_weight(masks, np.array([True, True]), alpha=0.5)
    assert w.shape == (2, 520, 520) and w[0, 0, 0] == 255 and w[0, 300, 0] == 128
    both = T.combine_weights(w, np.full_like(w, 128))
    assert both[0, 0, 0] == 128 and both[0, 300, 0] == 64


def test_to_model_input_normalises_and_permutes():
    video = torch.zeros(2, 3, 4, 4, 3, dtype=torch.uint8)
    video[..., 0] = 255
    x = T.to_model_input(video)
    assert x.shape == (2, 3, 3, 4, 4) and x.dtype == torch.float32
    mean, std = torch.tensor(T.IMAGENET_MEAN), torch.tensor(T.IMAGENET_STD)
    torch.testing.assert_close(x[0, :, 0, 0, 0], torch.stack([(1 - mean[0]) / std[0], -mean[1] / std[1], -mean[2] / std[2]]))
    assert x.is_contiguous(memory_format=torch.channels_last_3d)


# ---------------------------------------------------------------------------------------------
# Dataset samples


def test_sample_keys_shapes_and_types(tiny_demo, make_config):
    data = prepare_data(make_config(tiny_demo), progress=False)
    sample = ClipDataset(data, "train", train=True)[0]
    assert set(sample) == {"video", "label", "subject", "start", "load_seconds"}
    assert sample["video"].shape == (8, 32, 32, 3) and sample["video"].dtype == torch.uint8
    assert sample["load_seconds"].dtype == torch.float64 and sample["load_seconds"] > 0  # the loader's own cost
    x, y = prepare_batch({k: v[None] for k, v in sample.items()}, torch.device("cpu"))
    assert x.shape == (1, 3, 8, 32, 32) and y.shape == (1,)


def test_masks_black_out_the_background(tiny_demo, make_config):
    data = prepare_data(make_config(tiny_demo, "data.use_masks=true"), progress=False)
    ds = ClipDataset(data, "test", train=False)
    sample = ds[0]
    subj = ds.subjects[int(sample["subject"])]
    start = int(sample["start"])
    mask = np.asarray(subj.masks[start:start + 8])
    video = sample["video"].numpy()
    assert (video[mask == 0] == 0).all()
    np.testing.assert_array_equal(video[mask == 255], np.asarray(subj.video.frames[start:start + 8])[mask == 255])


def test_skeleton_attention_weights_the_frames(tiny_demo, make_config):
    data = prepare_data(make_config(tiny_demo, "data.use_skeleton_attention=true", "data.skeleton_sigma=3"),
                        progress=False)
    ds = ClipDataset(data, "test", train=False)
    sample = ds[0]
    subj = ds.subjects[int(sample["subject"])]
    start = int(sample["start"])
    frames = np.asarray(subj.video.frames[start:start + 8]).astype(np.float64)
    att = np.asarray(subj.attention[start:start + 8]).astype(np.float64) / 255
    np.testing.assert_allclose(sample["video"].numpy(), frames * att[..., None], atol=1)
    assert att.min() == pytest.approx(0.2, abs=0.01) and att.max() == 1.0


def test_augmentation_is_reproducible_per_epoch(tiny_demo, make_config):
    data = prepare_data(make_config(tiny_demo), progress=False)
    ds = ClipDataset(data, "train", train=True, seed=5)
    a = ds[3]["video"]
    assert torch.equal(a, ClipDataset(data, "train", train=True, seed=5)[3]["video"])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[3]["video"])


def test_flip_in_dataset_mirrors_frames(tiny_demo, make_config):
    cfg = make_config(tiny_demo, "augment.hflip_p=1.0", "augment.rotation_deg=0", "augment.brightness=0",
                      "augment.contrast=0", "augment.saturation=0", "augment.hue=0", "data.start_jitter=0")
    data = prepare_data(cfg, progress=False)
    flipped = ClipDataset(data, "train", train=True)[2]
    plain = ClipDataset(data, "train", train=False)[2]
    np.testing.assert_array_equal(flipped["video"].numpy(), plain["video"].numpy()[:, :, ::-1])


def test_loader_workers_fill_batches_in_shared_memory(tiny_demo, make_config):
    """A worker allocates its batch with the private torch call of dataset._batch_tensor: this
    fails as soon as a torch version drops or changes it."""
    from exptrack.data.dataset import make_loader, stop_workers

    data = prepare_data(make_config(tiny_demo), progress=False)
    loader = make_loader(data, "test", train=False, batch_size=4, num_workers=1)
    batch = next(iter(loader))
    stop_workers(loader)
    assert batch["video"].is_shared() and batch["video"].shape[1:] == (8, 32, 32, 3)
