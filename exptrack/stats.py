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


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float((y_true == y_pred).mean()) if len(y_true) else float("nan")


def mean_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over the classes present in `y_true` of the share of their clips predicted right."""
    classes = np.unique(y_true)
    if not len(classes):
        return float("nan")
    return float(np.mean([(y_pred[y_true == c] == c).mean() for c in classes]))


METRICS: dict[str, Metric] = {"accuracy": accuracy, "mean_class_accuracy": mean_class_accuracy}


@dataclass(frozen=True)
class Comparison:
    """B against A on one metric, over `n_subjects` subjects."""

    metric: str
    a: float  # pooled over every clip
    b: float
    n_subjects: int
    method: str
    diff: float  # the estimate the interval is about (t: mean per-subject difference; bootstrap: pooled)
    low: float | None  # 95% interval of B - A; None with one subject
    high: float | None
    p_better: float | None  # probability that B is better; None with one subject

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
        interval = (f"difference {self.diff:+.3f}, 95% interval [{self.low:+.3f}, {self.high:+.3f}], "
                    f"P(B better) {self.p_better:.2f}" if self.low is not None else
                    f"difference {self.b - self.a:+.3f}, no interval with {self.n_subjects} subject")
        return (f"B is {self.verdict if self.verdict != 'not distinguishable' else 'not distinguishable from'}"
                f"{' than' if self.verdict in ('better', 'worse') else ''} A on {self.metric} ({interval}; "
                f"{self.n_subjects} subjects, method {self.method}; these two models on this population of "
                "subjects, not their recipes)")


def per_subject(metric: Metric, subject: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """subject -> the metric on that subject's clips."""
    return {s: metric(y_true[subject == s], y_pred[subject == s]) for s in np.unique(subject)}


def compare(subject: np.ndarray, y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray,
            metric: str = "mean_class_accuracy", method: str = "t", confidence: float = 0.95,
            resamples: int = 2000, seed: int = 0) -> Comparison:
    """B against A on the same clips, paired by subject (see the module docstring)."""
    subject, y_true = np.asarray(subject), np.asarray(y_true)
    pred_a, pred_b = np.asarray(pred_a), np.asarray(pred_b)
    if not (len(subject) == len(y_true) == len(pred_a) == len(pred_b)):
        raise ValueError("subject, y_true, pred_a and pred_b must have one entry per clip")
    fn = METRICS[metric]
    a, b = fn(y_true, pred_a), fn(y_true, pred_b)
    subjects = np.unique(subject)
    n = len(subjects)
    if n < 2:
        return Comparison(metric, a, b, n, method, b - a, None, None, None)
    if method == "t":
        da, db = per_subject(fn, subject, y_true, pred_a), per_subject(fn, subject, y_true, pred_b)
        d = np.array([db[s] - da[s] for s in subjects])
        d = d[np.isfinite(d)]
        mean, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))
        if se == 0:  # every subject moved by the same amount: no spread to put an interval on
            return Comparison(metric, a, b, n, method, mean, mean, mean, float(mean > 0) if mean != 0 else 0.5)
        q = float(scipy_stats.t.ppf(0.5 + confidence / 2, len(d) - 1))
        p = float(scipy_stats.t.cdf(mean / se, len(d) - 1))
        return Comparison(metric, a, b, n, method, mean, mean - q * se, mean + q * se, p)
    if method == "bootstrap":
        rng = np.random.default_rng(seed)
        rows = {s: np.flatnonzero(subject == s) for s in subjects}
        diffs = np.empty(resamples)
        for i in range(resamples):
            picked = np.concatenate([rows[s] for s in rng.choice(subjects, size=n, replace=True)])
            diffs[i] = fn(y_true[picked], pred_b[picked]) - fn(y_true[picked], pred_a[picked])
        low, high = np.percentile(diffs, [50 * (1 - confidence), 50 * (1 + confidence)])
        return Comparison(metric, a, b, n, method, b - a, float(low), float(high),
                          float((diffs > 0).mean() + 0.5 * (diffs == 0).mean()))
    raise ValueError(f"unknown interval method {method!r} (t or bootstrap)")
