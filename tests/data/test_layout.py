"""The dataset reader on generated data, and every bad-input case DATASET.md names."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from exptrack.cli import main
from exptrack.data import layout
from exptrack.data.demo import DemoSpec, write_demo_dataset
from exptrack.data.errors import DataError, DataWarnings
from exptrack.data.prepare import prepare_data

from ..conftest import TINY


def _first_subject(root: Path) -> str:
    return sorted(p.stem for p in (root / "dataset" / "anon").glob("*.mp4"))[0]


# ---------------------------------------------------------------------------------------------
# reading good data


def test_discover_finds_every_subject(tiny_demo):
    w = DataWarnings()
    found = layout.discover(tiny_demo, w)
    assert len(found.subjects) == TINY.subjects
    assert {s.split for s in found.subjects} == {"train", "test"}
    assert all(s.mask_dir is not None and s.keypoints is not None for s in found.subjects)
    assert not w


def test_labels_zero_padded_text_and_background(tiny_demo):
    subject = _first_subject(tiny_demo)
    path = tiny_demo / "label" / f"{subject}.csv"
    first = path.read_text().splitlines()[0]
    assert first.startswith("0000,") and first.endswith(",-001")  # background as the original writes it
    n = len(path.read_text().splitlines())
    labels = layout.read_labels(path, n, 3, DataWarnings())
    assert labels.dtype == np.int16 and labels[0] == -1
    assert set(np.unique(labels)) <= {-1, 0, 1, 2}


def test_label_header_and_one_based_frames(tmp_path):
    root = write_demo_dataset(tmp_path / "d", DemoSpec(**{**TINY.__dict__, "subjects": 3, "label_header": True}))
    root0 = write_demo_dataset(tmp_path / "d0", DemoSpec(**{**TINY.__dict__, "subjects": 3}))
    subject = _first_subject(root)
    n = len((root0 / "label" / f"{subject}.csv").read_text().splitlines())
    with_header = layout.read_labels(root / "label" / f"{subject}.csv", n, 3, DataWarnings())
    plain = layout.read_labels(root0 / "label" / f"{subject}.csv", n, 3, DataWarnings())
    np.testing.assert_array_equal(with_header, plain)


def test_frames_missing_from_label_file_are_background(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("0000,0000,0002\n0003,0000,0001\n")
    w = DataWarnings()
    labels = layout.read_labels(path, 6, 3, w)
    np.testing.assert_array_equal(labels, [2, -1, -1, 1, -1, -1])
    assert w["label_length_mismatch"] == 1


@pytest.mark.parametrize("header", ["names", "index"])
def test_keypoint_header_styles_read_the_same(tmp_path, header):
    spec = DemoSpec(**{**TINY.__dict__, "subjects": 3, "keypoint_header": header})
    root = write_demo_dataset(tmp_path / header, spec)
    subject = _first_subject(root)
    path = root / "dataset" / "skeleton" / "yolo_pose_csv" / f"{subject}.csv"
    assert ("left_shoulder_x" in path.read_text().splitlines()[0]) == (header == "names")
    n = len(path.read_text().splitlines()) - 1
    kps = layout.read_keypoints(path, n, DataWarnings())
    assert kps.shape == (n, 17, 3)
    detected = kps[..., 2] > 0
    assert detected.mean() > 0.9  # 3% dropout in the generator
    # the person stands inside the frame: detected joints lie within it (with noise)
    assert (kps[..., 0][detected] > -5).all() and (kps[..., 0][detected] < spec.width + 5).all()
    assert (kps[..., 2][~detected] == 0).all() and (kps[..., :2][~detected] == 0).all()


def test_both_header_styles_give_identical_keypoints(tmp_path):
    kps = []
    for header in ("names", "index"):
        root = write_demo_dataset(tmp_path / header, DemoSpec(**{**TINY.__dict__, "subjects": 3, "keypoint_header": header}))
        subject = _first_subject(root)
        path = root / "dataset" / "skeleton" / "yolo_pose_csv" / f"{subject}.csv"
        kps.append(layout.read_keypoints(path, len(path.read_text().splitlines()) - 1, DataWarnings()))
    np.testing.assert_allclose(kps[0], kps[1])


def test_most_confident_person_is_kept(tmp_path):
    spec = DemoSpec(**{**TINY.__dict__, "subjects": 3, "extra_person": True})
    root = write_demo_dataset(tmp_path / "p", spec)
    subject = _first_subject(root)
    path = root / "dataset" / "skeleton" / "yolo_pose_csv" / f"{subject}.csv"
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["person"] for r in rows} == {"0", "1"}
    n = len(rows) // 2
    kps = layout.read_keypoints(path, n, DataWarnings())
    conf = kps[..., 2]
    # the real person has confidences in [0.6, 1], the ghost in [0.05, 0.3]
    assert conf[conf > 0].min() >= 0.6


def test_a_joint_at_infinity_is_a_counted_warning_and_undetected(tmp_path):
    import math

    path = tmp_path / "kp.csv"
    header = ",".join(f"kp{j}_{c}" for j in range(17) for c in ("x", "y", "conf"))
    cells = ["10", "20", "0.9"] * 17
    cells[0] = "inf"  # joint 0 "at infinity", confident
    path.write_text(f"frame,{header}\n0,{','.join(cells)}\n")
    warnings = DataWarnings()
    kps = layout.read_keypoints(path, 1, warnings)
    assert warnings["keypoint_not_finite"] == 1
    assert kps[0, 0, 2] == 0.0 and kps[0, 1].tolist() == [10.0, 20.0, pytest.approx(0.9)]
    assert all(math.isfinite(v) for v in kps.ravel())


@pytest.mark.parametrize("dtype, person", [(np.uint8, 255), (np.uint8, 1), (np.uint16, 65535), (np.uint16, 1),
                                           (np.uint16, 255 * 257), (np.uint16, 255)])
def test_masks_of_every_common_encoding_read_the_same(tmp_path, dtype, person):
    """0/255, 0/1 label images and 16-bit masks: the person is at 255 in each (a 0/1 mask was
    once read as no person at all, and so were 16-bit files holding 0/255)."""
    import cv2

    img = np.zeros((12, 16), dtype=dtype)
    img[2:8, 4:10] = person
    path = tmp_path / "000001_mask.png"
    assert cv2.imwrite(str(path), img)
    read = layout.read_mask(path)
    assert read.dtype == np.uint8 and set(np.unique(read)) == {0, 255}
    assert (read == 255).sum() == 36 and (read[2:8, 4:10] == 255).all()


@pytest.mark.parametrize("alpha", ["opaque", "cut out"])
def test_masks_with_an_alpha_channel_read_the_person_not_the_opacity(tmp_path, alpha):
    """An opaque RGBA mask was read as all person (alpha 255 everywhere): the frame went unmasked
    and nothing was counted."""
    import cv2

    img = np.zeros((12, 16, 4), dtype=np.uint8)
    if alpha == "opaque":  # white person on black, alpha 255 everywhere
        img[..., 3] = 255
        img[2:8, 4:10, :3] = 255
    else:  # a black person cut out on a transparent background
        img[2:8, 4:10, 3] = 255
    path = tmp_path / "000001_mask.png"
    assert cv2.imwrite(str(path), img)
    read = layout.read_mask(path)
    assert (read == 255).sum() == 36 and (read[2:8, 4:10] == 255).all()


def test_split_csv_accepts_subject_column(tiny_copy):
    text = (tiny_copy / "split.csv").read_text().replace("id,split", "subject_id,split")
    (tiny_copy / "split.csv").write_text(text)
    assert len(layout.discover(tiny_copy, DataWarnings()).subjects) == TINY.subjects


def test_explicit_validation_subjects_are_used(tiny_copy, make_config):
    lines = (tiny_copy / "split.csv").read_text().splitlines()
    train_line = next(i for i, line in enumerate(lines) if line.endswith(",train"))
    val_subject = lines[train_line].split(",")[0]
    lines[train_line] = f"{val_subject},val"
    (tiny_copy / "split.csv").write_text("\n".join(lines) + "\n")
    data = prepare_data(make_config(tiny_copy), progress=False)
    assert data.split_subjects["val"] == [val_subject]
    assert val_subject not in data.split_subjects["train"]


def test_missing_masks_are_counted_and_used_unmasked(tiny_copy, make_config):
    subjects = sorted(p.name for p in (tiny_copy / "dataset" / "mask").iterdir())
    shutil.rmtree(tiny_copy / "dataset" / "mask" / subjects[0])  # a whole folder
    dropped = sorted((tiny_copy / "dataset" / "mask" / subjects[1]).glob("*_mask.png"))[:5]
    for p in dropped:  # and five single frames
        p.unlink()
    data = prepare_data(make_config(tiny_copy, "data.use_masks=true"), progress=False)
    w = data.warnings
    assert w["missing_mask_folder"] == 1
    n0 = data.subjects[subjects[0]].num_frames
    assert w["missing_mask_frames"] == n0 + 5
    present = data.subjects[subjects[1]].mask_present
    assert not present[:5].any() and present[5:].all()


# ---------------------------------------------------------------------------------------------
# bad input: a DataError naming the file (and line), or a counted warning


def _prepare(root: Path, make_config, *overrides: str):
    return prepare_data(make_config(root, *overrides), progress=False)


@pytest.mark.parametrize("row, message", [
    ("999_nobody,train", r"split\.csv:8: subject '999_nobody' has no video"),
    ("x,holdout", r"split\.csv:8: split 'holdout'"),
])
def test_bad_split_rows(tiny_copy, make_config, row, message):
    with (tiny_copy / "split.csv").open("a") as fh:
        fh.write(row + "\n")
    with pytest.raises(DataError, match=message):
        _prepare(tiny_copy, make_config)


def test_video_without_split_row_is_skipped_with_a_warning(tiny_copy, make_config):
    subject = _first_subject(tiny_copy)
    shutil.copy(tiny_copy / "dataset" / "anon" / f"{subject}.mp4", tiny_copy / "dataset" / "anon" / "extra.mp4")
    data = _prepare(tiny_copy, make_config)
    assert data.warnings["subject_without_split"] == 1
    assert "extra" not in data.subjects


def test_unreadable_video(tiny_copy, make_config):
    subject = _first_subject(tiny_copy)
    video = tiny_copy / "dataset" / "anon" / f"{subject}.mp4"
    video.write_bytes(b"this is not a video" * 100)
    with pytest.raises(DataError) as err:
        _prepare(tiny_copy, make_config)
    assert str(video) in str(err.value)


def test_truncated_video_without_index_is_an_error(tiny_copy, make_config):
    """The demo's MP4s keep their index (moov) at the end: cut in half, nothing can be read."""
    subject = _first_subject(tiny_copy)
    video = tiny_copy / "dataset" / "anon" / f"{subject}.mp4"
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"{video}: cannot open video \(truncated or corrupt"):
        _prepare(tiny_copy, make_config)


def test_truncated_video_with_index_first_is_a_counted_warning(tiny_copy, make_config):
    """A 'faststart' MP4 cut in half still opens: the decodable frames are used, and reported."""
    import av
    from fractions import Fraction

    subject = _first_subject(tiny_copy)
    video = tiny_copy / "dataset" / "anon" / f"{subject}.mp4"
    n_labels = len((tiny_copy / "label" / f"{subject}.csv").read_text().splitlines())
    frames = np.random.default_rng(0).integers(0, 255, (n_labels, 80, 64, 3), dtype=np.uint8)
    with av.open(str(video), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=Fraction(15))
        stream.width, stream.height, stream.pix_fmt = 64, 80, "yuv420p"
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])
    prepared = _prepare(tiny_copy, make_config)
    w = prepared.warnings
    assert w["truncated_video"] == 1 and str(video) in w.examples["truncated_video"][0]
    n = prepared.subjects[subject].num_frames
    assert 0 < n < n_labels
    assert w["label_length_mismatch"] == 1


@pytest.mark.parametrize("line, message", [
    ("0005,0000", "expected 3 columns"),
    ("0005,0000,0001,0009", "expected 3 columns"),
    ("00x5,0000,0001", "frame number '00x5' is not an integer"),
    ("0005,0000,one", "class id 'one' is not an integer"),
    ("0005,0000,0023", "unknown class id 23"),
    ("-002,0000,0001", "negative frame number"),
])
def test_malformed_label_rows(tiny_copy, make_config, line, message):
    subject = _first_subject(tiny_copy)
    path = tiny_copy / "label" / f"{subject}.csv"
    rows = path.read_text().splitlines()
    rows.insert(3, line)  # becomes line 4
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=rf"{path}:4: .*{message}"):
        _prepare(tiny_copy, make_config)


def test_label_file_longer_than_video_is_reported(tiny_copy, make_config):
    subject = _first_subject(tiny_copy)
    path = tiny_copy / "label" / f"{subject}.csv"
    n = len(path.read_text().splitlines())
    with path.open("a") as fh:
        for t in range(n, n + 10):
            fh.write(f"{t:04d},0000,0001\n")
    data = _prepare(tiny_copy, make_config)
    assert data.warnings["label_length_mismatch"] == 1
    assert len(data.subjects[subject].labels) == n  # the overlap is used


def test_a_subject_labelled_only_background_is_a_counted_warning(tiny_copy, make_config):
    subject = _first_subject(tiny_copy)
    path = tiny_copy / "label" / f"{subject}.csv"
    path.write_text("".join(f"{line.rsplit(',', 1)[0]},-001\n" for line in path.read_text().splitlines()))
    data = _prepare(tiny_copy, make_config)
    assert data.warnings["subject_only_background"] == 1
    assert "every frame of subject" in data.warnings.examples["subject_only_background"][0]


def test_missing_label_file(tiny_copy, make_config):
    subject = _first_subject(tiny_copy)
    (tiny_copy / "label" / f"{subject}.csv").unlink()
    with pytest.raises(DataError, match=rf"{subject}\.csv: label file .* not found"):
        _prepare(tiny_copy, make_config)


@pytest.mark.timeout(120)  # the bug this guards against is a read that never returns
@pytest.mark.parametrize("which", ["video", "labels", "keypoints", "split"])
def test_a_fifo_named_like_a_data_file_is_an_error_not_a_hang(tiny_copy, make_config, which):
    import os

    subject = _first_subject(tiny_copy)
    path = {"video": tiny_copy / "dataset" / "anon" / f"{subject}.mp4",
            "labels": tiny_copy / "label" / f"{subject}.csv",
            "keypoints": tiny_copy / "dataset" / "skeleton" / "yolo_pose_csv" / f"{subject}.csv",
            "split": tiny_copy / "split.csv"}[which]
    path.unlink()
    os.mkfifo(path)  # opening it for reading blocks until a writer comes: none will
    with pytest.raises(DataError, match=rf"{path.name}: .* is a FIFO, not a regular file"):
        _prepare(tiny_copy, make_config)


@pytest.mark.timeout(120)
def test_a_fifo_among_the_mask_files_is_a_counted_warning(tiny_copy, make_config):
    import os

    subject = _first_subject(tiny_copy)
    mask = sorted((tiny_copy / "dataset" / "mask" / subject).glob("*_mask.png"))[0]
    mask.unlink()
    os.mkfifo(mask)
    data = _prepare(tiny_copy, make_config, "data.use_masks=true")
    assert data.warnings["unreadable_mask"] == 1 and not data.subjects[subject].mask_present[0]


def _keypoint_file(root: Path) -> Path:
    return root / "dataset" / "skeleton" / "yolo_pose_csv" / f"{_first_subject(root)}.csv"


def test_keypoint_row_with_wrong_column_count(tiny_copy, make_config):
    path = _keypoint_file(tiny_copy)
    rows = path.read_text().splitlines()
    rows[4] = rows[4] + ",1.0"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=rf"{path}:5: expected 52 columns"):
        _prepare(tiny_copy, make_config, "data.use_skeleton_attention=true")


def test_keypoint_non_numeric_value(tiny_copy, make_config):
    path = _keypoint_file(tiny_copy)
    rows = path.read_text().splitlines()
    cells = rows[6].split(",")
    cells[1] = "abc"  # the first joint's x
    rows[6] = ",".join(cells)
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=rf"{path}:7: column '.*_x' value 'abc' is not a number"):
        _prepare(tiny_copy, make_config, "data.use_skeleton_attention=true")


def test_keypoint_file_with_header_only(tiny_copy, make_config):
    path = _keypoint_file(tiny_copy)
    path.write_text(path.read_text().splitlines()[0] + "\n")
    data = _prepare(tiny_copy, make_config, "data.use_skeleton_attention=true")
    subject = path.stem
    assert (data.subjects[subject].keypoints == 0).all()
    assert data.warnings["keypoint_frames_missing"] == data.subjects[subject].num_frames


def test_keypoint_frame_base_is_configurable(tmp_path):
    path = tmp_path / "kp.csv"
    header = ["frame"] + [f"kp{j}_{s}" for j in range(17) for s in ("x", "y", "conf")]
    rows = [[str(f)] + [str(10 * f), "5", "0.9"] * 17 for f in (1, 2, 3)]  # 0-based, frame 0 undetected
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    auto = layout.read_keypoints(path, 4, DataWarnings())
    zero = layout.read_keypoints(path, 4, DataWarnings(), frame_base="0")
    assert auto[0, 0, 0] == 10  # 'auto' sees no frame 0 and takes the file as 1-based
    np.testing.assert_array_equal(zero[:, 0, 0], [0, 10, 20, 30])


def test_split_csv_with_byte_order_mark(tiny_copy):
    path = tiny_copy / "split.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as Excel saves UTF-8
    assert len(layout.discover(tiny_copy, DataWarnings()).subjects) == TINY.subjects


def test_keypoint_missing_columns(tiny_copy, make_config):
    path = _keypoint_file(tiny_copy)
    rows = path.read_text().splitlines()
    rows[0] = rows[0].replace("_conf", "_confidence")
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=rf"{path}:1: missing keypoint columns"):
        _prepare(tiny_copy, make_config)


def test_empty_split_is_an_error(tiny_copy, make_config):
    lines = [line for line in (tiny_copy / "split.csv").read_text().splitlines() if not line.endswith(",test")]
    (tiny_copy / "split.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="split 'test' has no usable clips"):
        _prepare(tiny_copy, make_config)


def test_missing_data_root_without_demo(tmp_path, make_config):
    with pytest.raises(DataError, match="data root not found"):
        _prepare(tmp_path / "nowhere", make_config, "data.demo=false")


def test_cli_reports_bad_input_without_traceback(tiny_copy, tmp_path, capsys):
    subject = _first_subject(tiny_copy)
    path = tiny_copy / "label" / f"{subject}.csv"
    path.write_text(path.read_text().replace("0003,", "0003,0000,", 1))
    code = main(["cache", "--set", f"data.root={tiny_copy}", "--set", f"paths.cache={tmp_path / 'c'}",
                 "--set", "model.num_classes=3", "--set", "data.frame_size=32"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{path}:4: expected 3 columns" in err
    assert "Traceback" not in err


def test_too_small_num_classes_fails_before_any_video_is_decoded(tiny_copy, make_config, monkeypatch):
    import exptrack.data.prepare as prepare

    subject = _first_subject(tiny_copy)
    path = tiny_copy / "label" / f"{subject}.csv"
    rows = path.read_text().splitlines()
    rows.insert(3, "0005,0000,0007")  # line 4
    path.write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(prepare, "ensure_cached", lambda *a, **k: pytest.fail("decoded before the check"))
    with pytest.raises(DataError, match=rf"{path}:4: unknown class id 7, the largest .* model.num_classes is 3 .*"
                                        r"set model.num_classes=8"):
        _prepare(tiny_copy, make_config)


def test_a_class_without_training_clips_is_a_counted_warning_naming_it(tiny_demo, make_config):
    data = _prepare(tiny_demo, make_config, "model.num_classes=5")  # the tiny demo has classes 0..2
    assert data.warnings["absent_classes"] == 2
    assert "class ids 3, 4 of model.num_classes=5" in data.warnings.examples["absent_classes"][0]
    assert "absent_classes" not in _prepare(tiny_demo, make_config).warnings.counts


def test_missing_keypoints_are_reported_only_with_skeleton_attention(tiny_copy, make_config):
    _keypoint_file(tiny_copy).unlink()
    assert _prepare(tiny_copy, make_config).warnings["missing_keypoints"] == 0
    assert _prepare(tiny_copy, make_config, "data.use_skeleton_attention=true").warnings["missing_keypoints"] == 1


def test_class_names_from_classes_csv(tmp_path):
    assert layout.read_class_names(tmp_path, 3) == ["0", "1", "2"]
    (tmp_path / "classes.csv").write_text("id,name\n0,squat\n2,lunge\n7,ignored\n")
    names = layout.read_class_names(tmp_path, 3)
    assert names == ["squat", "1", "lunge"]
    assert [layout.class_label(c, names) for c in (-1, 0, 1)] == ["rest", "squat (0)", "1"]

# ---------------------------------------------------------------------------------------------
# undecodable files, contradictions and extreme values (issue 11)

_SECRET = "confidential-" * 700  # ~9,000 characters: the content must never reach a message


@pytest.mark.parametrize("reader", ["split", "labels", "keypoints"])
def test_non_utf8_file_names_file_line_and_byte_not_its_content(tmp_path, reader):
    path = tmp_path / "f.csv"
    path.write_bytes(b"id,split\n" + _SECRET.encode() + b"\n\xff\xfe" + _SECRET.encode() + b"\n")
    call = {"split": lambda: layout.read_split(path),
            "labels": lambda: layout.read_labels(path, 10, 3, DataWarnings()),
            "keypoints": lambda: layout.read_keypoints(path, 10, DataWarnings())}[reader]
    with pytest.raises(DataError) as err:
        call()
    message = str(err.value)
    assert message.startswith(f"{path}:3: not UTF-8 text (byte {9 + len(_SECRET) + 1}")
    assert "confidential" not in message and len(message) < 300


def test_long_bad_rows_are_quoted_short(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text(f"0,0,1\n1,0,{_SECRET}\n")
    with pytest.raises(DataError, match=rf"{path}:2: class id 'confidential-") as err:
        layout.read_labels(path, 10, 3, DataWarnings())
    assert len(str(err.value)) < 300


def test_a_frame_labelled_with_two_classes_names_both_lines(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("0,0,1\n1,0,1\n2,0,2\n1,0,0\n")
    with pytest.raises(DataError, match=rf"^{path}:4: frame 1 labelled 0 here but 1 on line 2$"):
        layout.read_labels(path, 3, 3, DataWarnings())


def test_a_frame_labelled_twice_with_the_same_class_is_a_counted_warning(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("0,0,1\n1,0,2\n1,0,2\n2,0,0\n0,0,1\n")
    w = DataWarnings()
    labels = layout.read_labels(path, 3, 3, w)
    assert labels.tolist() == [1, 2, 0]
    assert w["duplicate_label_rows"] == 2 and f"{path}:3: frame 1 repeats line 2" in w.examples["duplicate_label_rows"][0]


def test_a_huge_frame_number_is_an_error_not_an_overflow(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("0,0,1\n99999999999999999999,0,1\n")
    with pytest.raises(DataError, match=rf"{path}:2: frame number '99999999999999999999' is beyond"):
        layout.read_labels(path, 3, 3, DataWarnings())


def test_a_bad_keypoint_cell_is_named_by_its_line_in_the_file_across_blank_lines(tmp_path):
    header = ["frame"] + [f"{n}_{s}" for n in layout.KEYPOINT_NAMES for s in ("x", "y", "conf")]
    path = tmp_path / "k.csv"
    path.write_text(",".join(header) + "\n\n" + ",".join(["0"] + ["1"] * 51) + "\n\n\n"
                    + ",".join(["1", "oops"] + ["1"] * 50) + "\n")
    with pytest.raises(DataError, match=rf"{path}:6: column 'nose_x' value 'oops' is not a number"):
        layout.read_keypoints(path, 5, DataWarnings())


@pytest.mark.parametrize("frame", ["inf", "1e400", "-3", "1e12"])
def test_a_keypoint_frame_number_out_of_range_is_an_error(tmp_path, frame):
    header = ["frame"] + [f"{n}_{s}" for n in layout.KEYPOINT_NAMES for s in ("x", "y", "conf")]
    path = tmp_path / "k.csv"
    path.write_text(",".join(header) + "\n" + ",".join(["0"] + ["1"] * 51) + "\n"
                    + ",".join([frame] + ["1"] * 51) + "\n")
    with pytest.raises(DataError, match=rf"{path}:3: frame number '{frame}' is not an integer"):
        layout.read_keypoints(path, 5, DataWarnings())


@pytest.mark.parametrize("subject", ["a/b", "..", "a\\b"])
def test_a_subject_id_that_is_not_a_file_name_is_an_error(tmp_path, subject):
    path = tmp_path / "split.csv"
    path.write_text(f"id,split\ns1,train\n{subject},test\n")
    with pytest.raises(DataError, match=rf"{path}:3: subject id .* is not a plain file name"):
        layout.read_split(path)
