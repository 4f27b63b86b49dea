"""Is B better than A? Paired comparisons of two models on the same clips, with the subject as
the unit (clips of one subject are correlated: a model that fails one person fails many of
that person's clips together).

Pure functions on arrays: `subject` (N,) ids, `y_true` (N,) class ids, `pred_a` / `pred_b`
(N,) predicted class ids of the two models on the same N clips. Two interval methods:

- `t`: the per-subject metric difference (B - A), averaged over subjects, with a Student t
  interval on n - 1 degrees of freedom; P(B better) is the posterior probability that the mean
  difference is above 0 under a flat prior (the t distribution's CDF).
- `bootstrap`: resample subjects with replacement, recompute the pooled metric of both models
  on the resampled clips, take the percentile interval of the difference; P(B better) is the
  share of resamples where B is ahead. With 3 subjects there are only 10 distinct resamples,
  so it is narrow where it should be wide; `bench/compare.py` measures which is calibrated.

A single subject gives no interval (None), never a fake one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats as scipy_stats

Metric = Callable[[np.ndarray, np.ndarray], float]  # (y_true, y_pred) -> value


def _from_counts(metric: str, n: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """The metric from per-class clip counts and correct counts (..., C) -> (...): how every
    metric here is computed, so that a resample is a weighted sum of subjects' counts."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric == "acc":
            return correct.sum(-1) / n.sum(-1)
        if metric == "mean_class_acc":  # over the classes present
            return np.nanmean(np.where(n > 0, correct / n, np.nan), axis=-1)
    raise ValueError(f"unknown metric {metric!r} (one of {', '.join(METRICS)})")


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float((np.asarray(y_true) == np.asarray(y_pred)).mean()) if len(y_true) else float("nan")


def mean_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over the classes present in `y_true` of the share of their clips predicted right."""
    classes = np.unique(y_true)
    if not len(classes):
        return float("nan")
    return float(np.mean([(y_pred[y_true == c] == c).mean() for c in classes]))


METRICS: dict[str, Metric] = {"acc": accuracy, "mean_class_acc": mean_class_accuracy}  # metrics.HEADLINE_METRICS' names


def subject_counts(subject: np.ndarray, y_true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(subjects (S,), n (S, C) clips per subject and class, correct (S, C) of them predicted right)."""
    subjects, s_idx = np.unique(subject, return_inverse=True)
    classes, c_idx = np.unique(y_true, return_inverse=True)
    n = np.zeros((len(subjects), len(classes)))
    correct = np.zeros_like(n)
    np.add.at(n, (s_idx, c_idx), 1)
    np.add.at(correct, (s_idx, c_idx), (pred == y_true).astype(float))
    return subjects, n, correct


# A spread (or difference) of shares below this is floating-point rounding, not data: 0.3 - 0.2 and
# 0.8 - 0.7 differ by 1e-16, and a t interval on that "spread" is a point (certainty from 2 subjects).
NO_SPREAD = 1e-9


@dataclass(frozen=True)
class Comparison:
    """B against A on one metric, over `n_subjects` subjects."""

    metric: str
    a: float  # pooled over every clip
    b: float
    n_subjects: int
    method: str
    diff: float  # the estimate the interval is about (t: mean per-subject difference; bootstrap: pooled)
    low: float | None  # 95% interval of B - A; None with one subject, or a few that all moved alike (_no_spread)
    high: float | None
    p_better: float | None  # probability that B is better; None with one subject
    unit: str = "subjects"  # what n_subjects counts: subjects (two models), or seeds / folds (two groups)
    sizes: tuple[int, int] | None = None  # two groups of different sizes: (A's, B's); n_subjects is the smaller

    @property
    def diff_label(self) -> str:
        """What `diff` is: with the t method over subjects, the mean of the per-subject differences
        (each subject weighs the same), which is not B's pooled figure minus A's."""
        return "mean per-subject B - A" if self.method == "t" and self.unit == "subjects" else "B - A"

    @property
    def verdict(self) -> str:
        """'better', 'worse' or 'not distinguishable' (B against A), by the interval."""
        if self.low is None or self.high is None:
            return "not distinguishable"
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "not distinguishable"

    def sentence(self) -> str:
        interval = (f"{self.diff_label} {self.diff:+.3f}, 95% interval [{self.low:+.3f}, {self.high:+.3f}], "
                    f"P(B better) {self.p_better:.2f}" if self.low is not None else
                    f"{self.diff_label} {self.diff:+.3f}, no interval with {self.n_subjects} {self.unit}")
        scope = ("these two models on this population of subjects, not their recipes" if self.unit == "subjects" else
                 f"the two recipes over {self.n_subjects} {self.unit} each, on their validation subjects"
                 if self.sizes is None else f"the two recipes over {self.sizes[0]} and {self.sizes[1]} {self.unit}, "
                 "on their validation subjects")
        return (f"B is {self.verdict if self.verdict != 'not distinguishable' else 'not distinguishable from'}"
                f"{' than' if self.verdict in ('better', 'worse') else ''} A on {self.metric} ({interval}; "
                f"{self.n_subjects} {self.unit}, method {self.method}; {scope})")


def compare(subject: np.ndarray, y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray,
            metric: str = "mean_class_acc", method: str = "t", confidence: float = 0.95,
            resamples: int = 2000, seed: int = 0) -> Comparison:
    """B against A on the same clips, paired by subject (see the module docstring)."""
    subject, y_true = np.asarray(subject), np.asarray(y_true)
    pred_a, pred_b = np.asarray(pred_a), np.asarray(pred_b)
    if not (len(subject) == len(y_true) == len(pred_a) == len(pred_b)):
        raise ValueError("subject, y_true, pred_a and pred_b must have one entry per clip")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} (one of {', '.join(METRICS)})")
    subjects, n, correct_a = subject_counts(subject, y_true, pred_a)
    _, _, correct_b = subject_counts(subject, y_true, pred_b)
    return compare_counts(n, correct_a, correct_b, metric, method, confidence, resamples, seed)


def compare_counts(n: np.ndarray, correct_a: np.ndarray, correct_b: np.ndarray, metric: str = "mean_class_acc",
                   method: str = "t", confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> Comparison:
    """`compare` on per-subject counts (subject_counts): n, correct_a, correct_b are (S, C)."""
    a = float(_from_counts(metric, n.sum(0), correct_a.sum(0)))
    b = float(_from_counts(metric, n.sum(0), correct_b.sum(0)))
    k = len(n)
    if k < 2:
        return Comparison(metric, a, b, k, method, b - a, None, None, None)
    if method == "t":
        d = _from_counts(metric, n, correct_b) - _from_counts(metric, n, correct_a)  # (S,) per subject
        d = d[np.isfinite(d)]
        mean, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))
        if se <= NO_SPREAD:
            return _no_spread(metric, a, b, len(d), method, mean, confidence)
        q = float(scipy_stats.t.ppf(0.5 + confidence / 2, len(d) - 1))
        p = float(scipy_stats.t.cdf(mean / se, len(d) - 1))
        # a difference of two shares lies in [-1, 1]: a t interval on few subjects can overshoot
        return Comparison(metric, a, b, k, method, mean, max(mean - q * se, -1.0), min(mean + q * se, 1.0), p)
    if method == "bootstrap":
        rng = np.random.default_rng(seed)
        weights = rng.multinomial(k, np.full(k, 1.0 / k), size=resamples).astype(float)  # (R, S) draws per subject
        diffs = (_from_counts(metric, weights @ n, weights @ correct_b)
                 - _from_counts(metric, weights @ n, weights @ correct_a))  # (R,)
        low, high = np.percentile(diffs, [50 * (1 - confidence), 50 * (1 + confidence)])
        return Comparison(metric, a, b, k, method, b - a, float(low), float(high),
                          float((diffs > 0).mean() + 0.5 * (diffs == 0).mean()))
    raise ValueError(f"unknown interval method {method!r} (t or bootstrap)")


def _no_spread(metric: str, a: float, b: float, n: int, method: str, diff: float, confidence: float,
               unit: str = "subjects", sizes: tuple[int, int] | None = None) -> Comparison:
    """Every one of the n subjects (or members) moved by exactly `diff`: a t interval has no
    spread to work on and would shrink to the point, a certainty no sample gives. n agreeing
    signs are a sign test instead: the direction stands (the interval is the point) only when
    chance would give it less often than 1 - confidence (n >= 6 at 95%); else no interval."""
    if abs(diff) <= NO_SPREAD:
        return Comparison(metric, a, b, n, method, 0.0, 0.0, 0.0, 0.5, unit, sizes)
    if 2 * 0.5 ** n < 1 - confidence:
        return Comparison(metric, a, b, n, method, diff, diff, diff, float(diff > 0), unit, sizes)
    return Comparison(metric, a, b, n, method, diff, None, None, None, unit, sizes)


@dataclass(frozen=True)
class Interval:
    """The mean of n values (a group's per-seed or per-fold figures) with a Student t interval."""

    mean: float
    std: float  # sample standard deviation (ddof 1); 0 for one value
    low: float | None  # None for fewer than 2 values
    high: float | None
    n: int

    def text(self) -> str:
        spread = f" +- {self.std:.3f} (sd)" if self.n > 1 else ""
        interval = f", 95% interval [{self.low:.3f}, {self.high:.3f}]" if self.low is not None else ""
        return f"{self.mean:.3f}{spread}{interval}, n {self.n}"


def mean_interval(values, confidence: float = 0.95, bounds: tuple[float, float] = (0.0, 1.0)) -> Interval:
    """Mean, spread and t interval of the finite `values`, clipped to `bounds` (shares by
    default; (-1, 1) for differences of shares)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return Interval(float("nan"), float("nan"), None, None, 0)
    mean = float(v.mean())
    if len(v) < 2:
        return Interval(mean, 0.0, None, None, 1)
    sd = float(v.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, len(v) - 1)) * sd / np.sqrt(len(v))
    return Interval(mean, sd, max(mean - half, bounds[0]), min(mean + half, bounds[1]), len(v))


def compare_groups(a_values, b_values, paired: bool, metric: str, unit: str, confidence: float = 0.95) -> Comparison:
    """Group B against group A from their members' figures (one per seed or fold). `paired`:
    member i of both saw the same data (folds of one fold_seed on one dataset): a t interval on
    the differences. Else (seeds) Welch's interval on the two means."""
    a, b = np.asarray(a_values, dtype=float), np.asarray(b_values, dtype=float)
    diff = float(b.mean() - a.mean())
    n = min(len(a), len(b))
    sizes = (len(a), len(b)) if len(a) != len(b) else None
    if paired:
        if len(a) != len(b):
            raise ValueError("paired groups need the same members")
        d = b - a
        se, dof = (float(d.std(ddof=1) / np.sqrt(len(d))), float(len(d) - 1)) if len(d) > 1 else (0.0, 0.0)
    else:
        va, vb = (a.var(ddof=1) / len(a) if len(a) > 1 else np.nan), (b.var(ddof=1) / len(b) if len(b) > 1 else np.nan)
        se = float(np.sqrt(va + vb))
        dof = float((va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))) if se > 0 else 0.0
    method = "paired t" if paired else "Welch t"
    if n < 2 or not np.isfinite(se):
        return Comparison(metric, float(a.mean()), float(b.mean()), n, method, diff, None, None, None, unit, sizes)
    if se <= NO_SPREAD:
        return _no_spread(metric, float(a.mean()), float(b.mean()), n, method, diff, confidence, unit, sizes)
    q = float(scipy_stats.t.ppf(0.5 + confidence / 2, dof))
    return Comparison(metric, float(a.mean()), float(b.mean()), n, method, diff, max(diff - q * se, -1.0),
                      min(diff + q * se, 1.0), float(scipy_stats.t.cdf(diff / se, dof)), unit, sizes)
