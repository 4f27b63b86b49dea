"""Clip index, validation carve-out, class-1 downsampling, class and sampler weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exptrack.data import clips
from exptrack.data.dataset import make_loader
from exptrack.data.prepare import prepare_data


def test_window_majority_over_non_background_and_purity():
    labels = np.array([-1, -1, -1, 2, 2, 3, -1, -1] + [-1] * 4 + [5, 5, 4, 4], dtype=np.int16)
    starts, lab, purity = clips.window_labels(labels, clip_len=4, stride=4)
    np.testing.assert_array_equal(starts, [0, 4, 8, 12])
    # [-1 -1 -1 2] -> 2 (background ignored); [2 3 -1 -1] -> tie 2/3 -> lower id;
    # all background -> -1; [5 5 4 4] -> tie -> 4
    np.testing.assert_array_equal(lab, [2, 2, -1, 4])
    np.testing.assert_allclose(purity, [0.25, 0.25, 0.0, 0.5])


def test_windows_mostly_background_are_rest_with_a_rest_label():
    labels = np.array([-1, -1, -1, 2, 2, 2, -1, -1] + [-1] * 4 + [5, 5, 4, 4], dtype=np.int16)
    starts, lab, purity = clips.window_labels(labels, clip_len=4, stride=2, rest_label=9)
    np.testing.assert_array_equal(starts, [0, 2, 4, 6, 8, 10, 12])
    # 3 of 4 background -> rest; 2 of 4 (a tie) stays the exercise; all background -> rest
    np.testing.assert_array_equal(lab, [9, 2, 2, 9, 9, 5, 4])
    np.testing.assert_allclose(purity, [0.75, 0.75, 0.5, 1.0, 1.0, 0.5, 0.5])
    index = clips.build_clip_index({"a": labels}, clip_len=4, stride=2, rest_label=9)
    assert len(index) == 7 and (index.label == 9).sum() == 3  # no window is dropped as background


def test_the_rest_weight_is_rests_share_in_the_videos_over_its_share_in_training():
    def index(labels):
        n = len(labels)
        return clips.ClipIndex(("a",), np.zeros(n, np.int32), np.arange(n), np.array(labels), np.ones(n, np.float32), 4)

    natural = index([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])  # rest (3) is 20% of the windows
    assert clips.rest_weight(natural, natural, 3, 4, weighted_sampler=True) == pytest.approx(0.2 / 0.25)
    fed = index([0, 0, 0, 1, 1, 1, 2, 2, 2, 3])  # downsampled, no balancing sampler: 10%
    assert clips.rest_weight(natural, fed, 3, 4, weighted_sampler=False) == pytest.approx(2.0)
    assert clips.rest_weight(natural, natural, None, 3, weighted_sampler=True) == 1.0  # no rest output


def test_index_drops_background_and_impure_clips():
    labels = {"a": np.array([-1] * 4 + [1] * 6 + [2] * 6, dtype=np.int16)}
    idx = clips.build_clip_index(labels, clip_len=4, stride=2)
    assert (idx.label >= 0).all()
    assert 0 not in idx.start  # the all-background window
    pure = clips.build_clip_index(labels, clip_len=4, stride=2, min_purity=1.0)
    assert (pure.purity == 1.0).all() and len(pure) < len(idx)


def test_short_video_gives_no_clips():
    idx = clips.build_clip_index({"a": np.ones(5, dtype=np.int16)}, clip_len=16, stride=8)
    assert len(idx) == 0


def test_validation_carve_out_is_subject_disjoint_and_deterministic():
    subjects = [f"s{i:02d}" for i in range(10)]
    train, val = clips.carve_validation(subjects, 0.2, seed=3)
    assert len(val) == 2 and not set(train) & set(val) and sorted(train + val) == subjects
    assert clips.carve_validation(list(reversed(subjects)), 0.2, seed=3) == (train, val)
    assert clips.carve_validation(subjects, 0.2, seed=4) != (train, val)
    assert len(clips.carve_validation(["a", "b"], 0.9, seed=0)[0]) == 1  # always one left to train on


def test_prepared_validation_split_is_subject_disjoint(tiny_demo, make_config):
    data = prepare_data(make_config(tiny_demo), progress=False)
    s = data.split_subjects
    assert s["val"] and not (set(s["train"]) & set(s["val"]))
    assert not (set(s["test"]) & (set(s["train"]) | set(s["val"])))
    for split, idx in data.splits.items():
        assert {idx.subjects[i] for i in np.unique(idx.subject_idx)} <= set(s[split])


def _index(counts: dict[int, int]) -> clips.ClipIndex:
    label = np.concatenate([np.full(n, c) for c, n in counts.items()]).astype(np.int64)
    n = len(label)
    return clips.ClipIndex(("a",), np.zeros(n, np.int32), np.arange(n, dtype=np.int64), label,
                           np.ones(n, np.float32), 16)


def test_downsampling_class1_to_the_median_of_the_others():
    idx = _index({1: 100, 2: 10, 3: 20, 4: 40})
    down = clips.downsample_class(idx, 1, 5, seed=0)
    np.testing.assert_array_equal(down.class_counts(5), [0, 20, 10, 20, 40])
    again = clips.downsample_class(idx, 1, 5, seed=0)
    np.testing.assert_array_equal(down.start, again.start)  # reproducible


def test_downsampling_is_a_no_op_when_class1_is_small():
    idx = _index({1: 5, 2: 10, 3: 20})
    assert len(clips.downsample_class(idx, 1, 4, seed=0)) == len(idx)


def test_class_weights_inverse_frequency():
    w = clips.class_weights(np.array([0, 10, 30, 60]))
    assert w[0] == 0
    np.testing.assert_allclose(w[1:] * [10, 30, 60], [100 / 3] * 3)  # weight x count equal per class
    assert w[1:].mean() == pytest.approx(100 / 3 * (1 / 10 + 1 / 30 + 1 / 60) / 3)


def test_sampler_draws_classes_equally(tiny_demo, make_config):
    data = prepare_data(make_config(tiny_demo), progress=False)
    loader = make_loader(data, "train", train=True, batch_size=64, num_workers=0, seed=0)
    k = data.config.model.outputs  # 3 exercises and rest
    counts = np.zeros(k)
    draws = []
    for epoch in range(8):
        loader.sampler.set_epoch(epoch)
        draws.append(list(loader.sampler))
        for batch in loader:
            counts += np.bincount(batch["label"].numpy(), minlength=k)
    share = counts / counts.sum()
    raw = data.splits["train"].class_counts(k) / len(data.splits["train"])
    assert raw.max() - raw.min() > 0.1  # the data itself is imbalanced (class 1 dominant)
    np.testing.assert_allclose(share, [1 / k] * k, atol=0.05)
    assert draws[0] != draws[1]  # a new draw every epoch...
    loader.sampler.set_epoch(0)
    assert list(loader.sampler) == draws[0]  # ...that depends on (seed, epoch) only: resume-exact


def test_distributed_ranks_split_the_single_process_draw():
    from exptrack.data.sampling import DistributedWeightedSampler

    weights = torch.rand(50)
    whole = list(DistributedWeightedSampler(weights, 48, rank=0, world_size=1, seed=3))
    parts = [list(DistributedWeightedSampler(weights, 48, rank=r, world_size=3, seed=3)) for r in range(3)]
    assert all(len(p) == 16 for p in parts)
    assert sorted(sum(parts, [])) == sorted(whole)


def test_downsampling_flag_changes_train_split_only(tiny_demo, make_config):
    plain = prepare_data(make_config(tiny_demo), progress=False)
    down = prepare_data(make_config(tiny_demo, "data.downsample_class1=true"), progress=False)
    counts = down.splits["train"].class_counts(3)
    others = np.delete(counts, 1)
    assert counts[1] == int(np.median(others)) < plain.splits["train"].class_counts(3)[1]
    assert len(down.splits["test"]) == len(plain.splits["test"])
    assert len(down.train_before_downsampling) == len(plain.splits["train"])


def test_digest_changes_with_the_clips(tiny_demo, make_config):
    a = prepare_data(make_config(tiny_demo), progress=False)
    b = prepare_data(make_config(tiny_demo, "data.eval_stride=4"), progress=False)
    assert a.digest() == prepare_data(make_config(tiny_demo), progress=False).digest()
    assert a.digest() != b.digest()
    assert torch.is_tensor(torch.as_tensor(a.splits["train"].label))
