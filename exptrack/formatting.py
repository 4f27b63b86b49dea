"""Numbers as people read them in reports (the compare report, model cards, visualize's index):
one rule, so that a learning rate never prints as 0.000 and an accuracy never as 0.973980188369751."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


def figure(value: Any, digits: int = 3) -> str:
    """A number at the precision it needs: whole numbers as they are, ordinary magnitudes with
    `digits` decimals (0.938), small (below 0.01) or very large ones in scientific notation with
    `digits` significant figures (3.00e-04, 1.20e-03); NaN and None as ""; anything else as its text."""
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
    if number.is_integer() and 10 <= abs(number) < 1e15:  # a count stored as a float (epochs, clips)
        return f"{number:.0f}"
    if number == 0 or 0.01 <= abs(number) < 10**6:
        return f"{number:.{digits}f}"
    return f"{number:.{digits - 1}e}"


def figures_table(df: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """`df` with every number written by figure() (strings and labels unchanged)."""
    return df.apply(lambda column: column.map(lambda v: figure(v, digits) if _numeric(v) else v))


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
