"""Property tests: whatever bytes a label, keypoint or split file holds, its reader returns a
parsed result or raises DataError naming the file, never another exception (issue 11)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exptrack.data.errors import DataError, DataWarnings
from exptrack.data.layout import KEYPOINT_NAMES, read_keypoints, read_labels, read_split

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NUM_FRAMES, NUM_CLASSES = 50, 4

# Random bytes rarely get past a header; these build files that do, with hostile cells.
_CELL = st.one_of(st.integers(-3, 60).map(str), st.sampled_from(["", " ", "nan", "inf", "-inf", "1e400", "1.5",
                                                                 "-1", "99999999999999999999", "x", "1_0", "٣"]),
                  st.text(max_size=6))
_KP_HEADER = ["frame"] + [f"{n}_{s}" for n in KEYPOINT_NAMES for s in ("x", "y", "conf")]


def _write(data: bytes) -> Path:
    # hypothesis runs many examples in one test call, so function-scoped tmp_path cannot be used
    folder = Path(tempfile.mkdtemp(prefix="exptrack-fuzz-"))
    path = folder / "file.csv"
    path.write_bytes(data)
    return path


def _csv(rows: list[list[str]]) -> bytes:
    return "\n".join(",".join(row) for row in rows).encode("utf-8", "surrogatepass")


def _call(reader, data: bytes):
    path = _write(data)
    try:
        return reader(path)
    except DataError as exc:
        assert str(path) in str(exc)  # every refusal names the file ...
        assert len(str(exc)) < 400  # ... and never echoes its content
        return None
    finally:
        shutil.rmtree(path.parent)


def _labels(path: Path):
    out = read_labels(path, NUM_FRAMES, NUM_CLASSES, DataWarnings(log_first=0))
    assert out.shape == (NUM_FRAMES,) and out.min() >= -1 and out.max() < NUM_CLASSES
    return out


def _keypoints(path: Path):
    out = read_keypoints(path, NUM_FRAMES, DataWarnings(log_first=0))
    assert out.shape == (NUM_FRAMES, len(KEYPOINT_NAMES), 3) and out.dtype == np.float32
    return out


@FUZZ
@given(st.lists(st.lists(_CELL, min_size=1, max_size=3), max_size=8))
def test_split_reader_on_hostile_rows(rows):
    _call(read_split, _csv([["id", "split"], *rows]))


@FUZZ
@given(st.lists(st.lists(_CELL, min_size=3, max_size=3), max_size=12))
def test_label_reader_on_hostile_rows(rows):
    _call(_labels, _csv(rows))


@FUZZ
@given(st.lists(st.lists(_CELL, min_size=len(_KP_HEADER), max_size=len(_KP_HEADER)), max_size=4))
def test_keypoint_reader_on_hostile_rows(rows):
    _call(_keypoints, _csv([_KP_HEADER, *rows]))


@pytest.mark.parametrize("reader", [read_split, _labels, _keypoints], ids=["split", "labels", "keypoints"])
@FUZZ
@given(data=st.binary(max_size=2000))
def test_reader_on_any_bytes(reader, data):
    _call(reader, data)
