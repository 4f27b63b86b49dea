"""Numbers as people read them in reports (the compare report, model cards, visualize's index):
one rule, so that a learning rate never prints as 0.000 and an accuracy never as 0.973980188369751."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


ZERO = 1e-12  # below this a figure is floating-point rounding (0.3 - 0.2 - 0.1 = -2.8e-17), printed as 0


def figure(value: Any, digits: int = 3, fixed: bool = False, count: bool = False) -> str:
    """A number at the precision it needs: whole numbers as they are, ordinary magnitudes with
    `digits` decimals (0.938), small (below 0.01) or very large ones in scientific notation with
    `digits` significant figures (3.00e-04, 1.20e-03); NaN and None as ""; anything else as its text.
    `fixed`: always `digits` decimals (probabilities, differences of shares: 0.004, not 4.00e-03).
    `count`: a whole number stored as a float prints as one however small (7 clips, not 7.000)."""
    if value is None or isinstance(value, bool):
        return "" if value is None else str(value)
    if isinstance(value, int) or (hasattr(value, "dtype") and value.dtype.kind in "iu"):
        return str(int(value))
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():  # an int as text (MLflow params)
        return value.strip()
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number) or math.isinf(number):
        return "" if math.isnan(number) else str(number)
    if abs(number) < ZERO:
        number = 0.0  # also no "-0.000"
    if number.is_integer() and (count or 10 <= abs(number)) and abs(number) < 1e15:  # a count stored as a float
        return f"{number:.0f}"
    if fixed or number == 0 or 0.01 <= abs(number) < 10**6:
        return f"{number:.{digits}f}"
    return f"{number:.{digits - 1}e}"


def setting(value: Any) -> str:
    """A config value as set, exact enough to tell two settings apart (0.05 and 0.0502, not 0.050
    twice): numbers to 6 significant figures, everything else as its text."""
    if isinstance(value, bool) or value is None:
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if isinstance(value, str) and not value.strip():
        return value
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else f"{number:.6g}"


def figures_table(df: pd.DataFrame, digits: int = 3, fixed: tuple[str, ...] = ()) -> pd.DataFrame:
    """`df` with every number written by figure() (strings and labels unchanged); the columns
    named in `fixed` with `digits` decimals always."""
    return df.apply(lambda column: column.map(lambda v: figure(v, digits, fixed=column.name in fixed)
                                              if _numeric(v) else v))


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) or value is None or (
        hasattr(value, "dtype") and value.dtype.kind in "iuf")


def frame_scores_text(scores: dict[str, float]) -> str:
    """metrics.frame_scores in one line: frame accuracy both ways, then rest precision and recall
    (or why there are none)."""
    text = (f"frame accuracy {figure(scores['frame_acc'])} on exercise frames, {figure(scores['frame_acc_all'])} "
            "on all frames (rest a class)")
    if math.isnan(scores["rest_recall"]):
        return text + "; no frame labelled rest"
    if math.isnan(scores["rest_precision"]):
        return text + f"; no frame called rest (rest recall {figure(scores['rest_recall'])})"
    return text + f"; rest precision {figure(scores['rest_precision'])}, recall {figure(scores['rest_recall'])}"
