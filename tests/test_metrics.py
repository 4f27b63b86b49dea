"""metrics.py on hand-computed cases: clip metrics (top-3 with 5 classes) and clip -> frame labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exptrack.metrics import (classification_metrics, frame_accuracy, frame_confidence, frame_labels,
                              frame_probabilities, smooth_labels, top_k_accuracy, validation_metrics,
                              window_average, window_starts)

# 5 classes, 6 clips; true class rank in each row: 1st, 4th, 2nd, 3rd, 5th, 1st
Y5 = np.array([0, 1, 2, 3, 4, 4])
P5 = np.array([
    [0.50, 0.20, 0.15, 0.10, 0.05],  # 0 ranked 1st
    [0.40, 0.05, 0.30, 0.20, 0.05],  # 1: 0.05 ties class 4, lower id first -> rank 4
    [0.35, 0.10, 0.30, 0.15, 0.10],  # 2 ranked 2nd
    [0.30, 0.25, 0.20, 0.22, 0.03],  # 3 ranked 3rd (0.22 > 0.20)
    [0.30, 0.25, 0.20, 0.15, 0.10],  # 4 ranked 5th
    [0.10, 0.10, 0.10, 0.10, 0.60],  # 4 ranked 1st
])


def test_top3_with_five_classes_is_hand_computed():
    assert top_k_accuracy(Y5, P5, 3) == pytest.approx(4 / 6)  # rows 0, 2, 3 and 5 (not 1 and 4)
    assert top_k_accuracy(Y5, P5, 4) == pytest.approx(5 / 6)  # row 1 ranks 4th (tie with 4: lower id first)
    m = classification_metrics(Y5, P5, 5)
    assert m.summary["top3_acc"] == pytest.approx(4 / 6)
    assert m.summary["acc"] == pytest.approx(2 / 6)  # rows 0 and 5
    # recall per class: 0 -> 1, 1 -> 0, 2 -> 0, 3 -> 0, 4 -> 1/2
    np.testing.assert_allclose(m.per_class_accuracy, [1, 0, 0, 0, 0.5])
    assert m.summary["mean_class_acc"] == pytest.approx(1.5 / 5)
    # precision: class 0 predicted 5 times, right once; class 4 once, right once; others never
    assert m.per_class.loc[0, "precision"] == pytest.approx(1 / 5) and m.per_class.loc[4, "precision"] == 1.0
    assert m.summary["macro_precision"] == pytest.approx((1 / 5 + 1) / 5)
    assert m.summary["macro_f1"] == pytest.approx((2 * 0.2 * 1 / 1.2 + 2 * 1 * 0.5 / 1.5) / 5)


def test_top3_with_three_classes_or_fewer_is_one_by_definition():
    assert top_k_accuracy(np.array([2, 0]), np.array([[0.9, 0.1, 0.0], [0.0, 0.1, 0.9]]), 3) == 1.0


def test_absent_classes_are_nan_and_not_averaged():
    y = np.array([1, 1, 2])
    probs = np.array([[0.1, 0.8, 0.1, 0.0], [0.1, 0.2, 0.7, 0.0], [0.0, 0.1, 0.9, 0.0]])
    m = classification_metrics(y, probs, 4)
    assert np.isnan(m.per_class_accuracy[[0, 3]]).all()
    np.testing.assert_allclose(m.per_class_accuracy[[1, 2]], [0.5, 1.0])
    assert m.summary["mean_class_acc"] == pytest.approx(0.75)
    assert list(m.per_class.index) == [1, 2]


def test_validation_adapter_keeps_the_loop_contract():
    logits, labels = torch.tensor(np.log(P5), dtype=torch.float32), torch.tensor(Y5)
    metrics, per_class = validation_metrics(logits, labels, 5)
    assert set(metrics) == {"acc", "mean_class_acc", "top3_acc"}
    assert metrics["top3_acc"] == pytest.approx(4 / 6) and metrics["acc"] == pytest.approx(2 / 6)
    assert per_class.shape == (5,)


def test_frame_probabilities_average_overlapping_windows_and_leave_gaps_nan():
    # windows of 4 frames at 0 and 2 (overlap on frames 2, 3) and at 8; frames 6, 7 and 12+ uncovered
    starts = np.array([0, 2, 8])
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.25, 0.75]])
    fp = frame_probabilities(starts, probs, num_frames=13, clip_len=4)
    np.testing.assert_allclose(fp[:6], [[1, 0], [1, 0], [0.5, 0.5], [0.5, 0.5], [0, 1], [0, 1]])
    assert np.isnan(fp[[6, 7, 12]]).all()
    np.testing.assert_allclose(fp[8:12], [[0.25, 0.75]] * 4)
    labels = frame_labels(fp)
    # frames 2, 3 tie at 0.5: the lower id; uncovered frames are background
    np.testing.assert_array_equal(labels, [0, 0, 0, 0, 1, 1, -1, -1, 1, 1, 1, 1, -1])
    conf = frame_confidence(fp, labels)
    assert conf[2] == pytest.approx(0.5) and conf[8] == pytest.approx(0.75) and np.isnan(conf[6])


def test_the_rest_output_is_background_in_frame_labels_with_its_own_confidence():
    probs = np.array([[0.7, 0.1, 0.2], [0.1, 0.3, 0.6], [np.nan] * 3])  # outputs: two exercises, then rest
    labels = frame_labels(probs, rest_index=2)
    np.testing.assert_array_equal(labels, [0, -1, -1])
    np.testing.assert_allclose(frame_confidence(probs, labels, rest_index=2), [0.7, 0.6, np.nan])
    np.testing.assert_array_equal(frame_labels(probs), [0, 2, -1])  # without a rest output, 2 is a class
    close = np.array([[0.5, 0.1, 0.4]])  # rest second: weighed by 1.3 (more rest in the videos) it wins
    assert frame_labels(close, rest_index=2)[0] == 0 and frame_labels(close, 2, rest_weight=1.3)[0] == -1


def test_the_rest_weight_is_the_one_that_labels_the_most_validation_frames_right():
    from exptrack.metrics import MIN_CALIBRATION_FRAMES, REST_WEIGHT_GRID, calibrated_rest_weight

    n = MIN_CALIBRATION_FRAMES
    # outputs: exercise 0, exercise 1, rest. Rest frames give rest 0.3 against 0.5 for exercise 0,
    # so rest needs a weight above 5/3; the exercise frames (rest 0.1 against 0.8) allow up to 8.
    rest_frames = np.tile([0.5, 0.2, 0.3], (n, 1))
    exercise_frames = np.tile([0.8, 0.1, 0.1], (n, 1))
    probs = np.vstack([rest_frames, exercise_frames, [[np.nan] * 3]])  # the last frame: no window covers it
    true = np.array([-1] * n + [0] * n + [-1])
    chosen = calibrated_rest_weight(probs, true, rest_index=2, prior=1.0)
    assert chosen == min(w for w in REST_WEIGHT_GRID if w > 5 / 3)  # every frame right, nearest the prior
    assert (frame_labels(probs, 2, chosen)[:-1] == true[:-1]).all()
    # too few rest frames to choose by: the prior stands
    assert calibrated_rest_weight(probs[n - 1:], true[n - 1:], rest_index=2, prior=1.3) == 1.3


def test_frame_scores_count_rest_both_ways():
    from exptrack.metrics import frame_scores

    true = np.array([-1, -1, -1, -1, 0, 0, 1, 1])
    pred = np.array([-1, -1, -1, 0, 0, -1, 1, 0])
    s = frame_scores(pred, true)
    assert s["frame_acc"] == pytest.approx(2 / 4)  # exercise frames only: 0 0 1 1 -> 0 -1 1 0
    assert s["frame_acc_all"] == pytest.approx(5 / 8)  # rest a class
    assert s["rest_precision"] == pytest.approx(3 / 4) and s["rest_recall"] == pytest.approx(3 / 4)
    never = frame_scores(np.array([0, 0, 1]), np.array([-1, 0, 1]))  # a model without rest
    assert np.isnan(never["rest_precision"]) and never["rest_recall"] == 0.0
    covered = frame_scores(pred, true, scored=np.arange(8) >= 4)  # only frames 4-7 scored: no rest among them
    assert np.isnan(covered["rest_recall"]) and covered["frame_acc_all"] == pytest.approx(2 / 4)


def test_window_average_per_frame_values_and_clipping():
    values = np.arange(2 * 3, dtype=np.float32).reshape(2, 3)  # per frame: window 0 -> 0,1,2; window 1 -> 3,4,5
    out = window_average(np.array([0, 2]), values, num_frames=4, clip_len=3, per_frame=True)
    np.testing.assert_allclose(out, [0, 1, (2 + 3) / 2, 4])  # window 1's frame 4 is past the end


def test_window_starts_cover_every_frame():
    np.testing.assert_array_equal(window_starts(20, 8, 4), [0, 4, 8, 12])
    np.testing.assert_array_equal(window_starts(21, 8, 4), [0, 4, 8, 12, 13])
    np.testing.assert_array_equal(window_starts(5, 8, 4), [0])


def test_smoothing_and_frame_accuracy():
    noisy = np.array([3, 3, 3, 5, 3, 3, 4, 4, 4, 4, 1, 4, 4])
    np.testing.assert_array_equal(smooth_labels(noisy, 3), [3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4])
    # a tie in a window of 4 (two 1s, two 2s): the lower id
    np.testing.assert_array_equal(smooth_labels(np.array([1, 1, 2, 2]), 4)[1:3], [1, 1])
    assert frame_accuracy(np.array([3, 4, 0, 4]), np.array([3, 3, -1, 4])) == pytest.approx(2 / 3)


def test_metric_names_have_one_spelling_and_the_old_one_is_known():
    from exptrack.metrics import canonical_metric, legacy_metric

    assert canonical_metric("test_mean_class_accuracy") == "test_mean_class_acc"
    assert canonical_metric("test_frame_accuracy_smoothed") == "test_frame_acc_smoothed"
    assert canonical_metric("val_mean_class_acc") == "val_mean_class_acc"
    assert legacy_metric("test_top3_acc") == "test_top3_accuracy" and legacy_metric("test_macro_f1") is None
