"""Paired comparisons over subjects (exptrack/stats.py) on small generated predictions."""

from __future__ import annotations

import numpy as np
import pytest

from exptrack.stats import compare, mean_class_accuracy


def _clips(n_subjects: int, per_subject: int = 40, classes: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    subject = np.repeat(np.arange(n_subjects), per_subject)
    y_true = rng.integers(0, classes, size=len(subject))
    return rng, subject, y_true


def _predict(rng, y_true, accuracy_by_subject, subject, classes=4):
    """Right with the subject's accuracy, else a wrong class."""
    right = rng.random(len(y_true)) < np.asarray(accuracy_by_subject)[subject]
    wrong = (y_true + rng.integers(1, classes, size=len(y_true))) % classes
    return np.where(right, y_true, wrong)


def test_mean_class_accuracy_by_hand():
    y_true = np.array([0, 0, 0, 1])
    y_pred = np.array([0, 0, 1, 0])
    assert mean_class_accuracy(y_true, y_pred) == pytest.approx((2 / 3 + 0) / 2)


@pytest.mark.parametrize("method", ["t", "bootstrap"])
def test_a_clearly_better_model_is_called_better(method):
    rng, subject, y_true = _clips(10)
    a = _predict(rng, y_true, np.full(10, 0.5), subject)
    b = _predict(rng, y_true, np.full(10, 0.9), subject)
    result = compare(subject, y_true, a, b, method=method)
    assert result.verdict == "better" and result.low > 0 and result.p_better > 0.99


@pytest.mark.parametrize("method", ["t", "bootstrap"])
def test_the_same_predictions_are_not_distinguishable(method):
    rng, subject, y_true = _clips(5)
    a = _predict(rng, y_true, np.full(5, 0.7), subject)
    result = compare(subject, y_true, a, a.copy(), method=method)
    assert result.verdict == "not distinguishable" and result.diff == 0


def test_a_worse_model_is_called_worse():
    rng, subject, y_true = _clips(10)
    a = _predict(rng, y_true, np.full(10, 0.9), subject)
    b = _predict(rng, y_true, np.full(10, 0.4), subject)
    assert compare(subject, y_true, a, b).verdict == "worse"


def test_a_gain_on_one_subject_of_three_is_not_a_proof():
    """B is far better on one subject and the same on the others: the t interval over 3 subjects
    spans 0, though the pooled score rose."""
    rng, subject, y_true = _clips(3)
    a = _predict(rng, y_true, np.array([0.6, 0.6, 0.6]), subject)
    b = np.where(subject == 0, y_true, a)  # perfect on subject 0 only
    result = compare(subject, y_true, a, b, method="t")
    assert result.b > result.a and result.verdict == "not distinguishable" and result.low < 0


def test_one_subject_gives_no_interval_and_says_so():
    rng, subject, y_true = _clips(1)
    a = _predict(rng, y_true, np.array([0.5]), subject)
    b = _predict(rng, y_true, np.array([0.9]), subject)
    result = compare(subject, y_true, a, b)
    assert result.low is None and result.p_better is None and result.verdict == "not distinguishable"
    assert "no interval with 1 subject" in result.sentence()


def test_clips_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="one entry per clip"):
        compare(np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(2))


def test_the_pooled_figures_are_the_plain_metrics():
    """The comparison's A and B are the ordinary metrics over every clip (computed from counts)."""
    from exptrack.stats import accuracy

    rng, subject, y_true = _clips(4)
    a = _predict(rng, y_true, np.array([0.3, 0.5, 0.7, 0.9]), subject)
    b = _predict(rng, y_true, np.array([0.6, 0.6, 0.6, 0.6]), subject)
    for name, fn in (("mean_class_acc", mean_class_accuracy), ("acc", accuracy)):
        result = compare(subject, y_true, a, b, metric=name)
        assert result.a == pytest.approx(fn(y_true, a)) and result.b == pytest.approx(fn(y_true, b))


@pytest.mark.parametrize("subjects, verdict", [(2, "not distinguishable"), (5, "not distinguishable"), (6, "better")])
def test_subjects_that_all_gain_the_same_are_a_sign_test_not_a_certainty(subjects, verdict):
    """Each subject has 10 clips of one class and B gets one more right on every one: the
    differences have no spread, and a t interval would be the point itself (certainty from two
    subjects). A sign test over the agreeing subjects decides: 6 at 95%."""
    from exptrack.stats import compare_counts, compare_groups

    n = np.full((subjects, 1), 10.0)
    result = compare_counts(n, np.full((subjects, 1), 5.0), np.full((subjects, 1), 6.0))
    assert result.verdict == verdict and result.diff == pytest.approx(0.1)
    assert (result.low is None) is (verdict == "not distinguishable")
    groups = compare_groups([0.5] * subjects, [0.6] * subjects, paired=True, metric="m", unit="folds")
    assert groups.verdict == verdict


def test_rounding_noise_is_no_spread():
    """Two subjects from different counts that both gain one clip in ten: 0.3 - 0.2 and 0.8 - 0.7
    differ by 1e-16, and a t interval on that "spread" said better, [+0.100, +0.100], P 1.00."""
    from exptrack.stats import compare_counts, compare_groups

    n = np.full((2, 1), 10.0)
    result = compare_counts(n, np.array([[2.0], [7.0]]), np.array([[3.0], [8.0]]), metric="acc")
    assert result.verdict == "not distinguishable" and result.low is None
    assert compare_groups([0.2, 0.7], [0.3, 0.8], paired=True, metric="m", unit="folds").low is None


def test_the_difference_says_it_is_the_mean_over_subjects():
    """With subjects of very different sizes the mean per-subject difference is not pooled B - A
    (here -0.167 against +0.033): the figure is named for what it is."""
    from exptrack.stats import compare_counts

    n = np.array([[100.0], [10.0], [10.0]])
    result = compare_counts(n, np.array([[50.0], [10.0], [10.0]]), np.array([[60.0], [7.0], [7.0]]), metric="acc")
    assert result.b - result.a == pytest.approx(0.0333, abs=1e-3) and result.diff == pytest.approx(-0.1667, abs=1e-3)
    assert "mean per-subject B - A -0.167" in result.sentence()


def test_groups_of_different_sizes_say_both():
    from exptrack.stats import compare_groups

    result = compare_groups([0.5, 0.6, 0.55], [0.7, 0.72, 0.69, 0.71, 0.7], paired=False, metric="m", unit="seeds")
    assert "over 3 and 5 seeds" in result.sentence()
