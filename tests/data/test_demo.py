"""The demo data generator: layout, determinism, and classes that only motion tells apart."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from exptrack.cli import main
from exptrack.config import load_config
from exptrack.data import layout
from exptrack.data.demo import DemoSpec, motion_track, schedule, write_demo_dataset
from exptrack.data.errors import DataWarnings
from exptrack.data.prepare import prepare_data
from exptrack.data.video import decode_video

from ..conftest import TINY


def _digest_tree(root: Path, pattern: str) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob(pattern)):
        h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_layout_is_complete(tiny_demo):
    d = tiny_demo / "dataset"
    subjects = sorted(p.stem for p in (d / "anon").glob("*.mp4"))
    assert len(subjects) == TINY.subjects
    for s in subjects:
        n = len((tiny_demo / "label" / f"{s}.csv").read_text().splitlines())
        assert len(list((d / "mask" / s).glob("*_mask.png"))) == n
        assert (d / "mask" / s / "00001_mask.png").exists()  # 1-based, 5 digits
        assert len((d / "skeleton" / "yolo_pose_csv" / f"{s}.csv").read_text().splitlines()) == n + 1
        frames, info = decode_video(d / "anon" / f"{s}.mp4", 32)
        assert info.num_frames == n and (info.width, info.height) == (TINY.width, TINY.height)
    split = layout.read_split(tiny_demo / "split.csv")
    assert sorted(split) == subjects and {v for v, _ in split.values()} == {"train", "test"}


def test_deterministic_for_a_seed(tmp_path):
    spec = DemoSpec(**{**TINY.__dict__, "subjects": 3})
    a = write_demo_dataset(tmp_path / "a", spec)
    b = write_demo_dataset(tmp_path / "b", spec)
    c = write_demo_dataset(tmp_path / "c", DemoSpec(**{**spec.__dict__, "seed": spec.seed + 1}))
    for pattern in ("*.csv", "*.png"):
        assert _digest_tree(a, pattern) == _digest_tree(b, pattern)
        assert _digest_tree(a, pattern) != _digest_tree(c, pattern)
    for video in (a / "dataset" / "anon").glob("*.mp4"):
        fa, _ = decode_video(video, 32)
        fb, _ = decode_video(b / "dataset" / "anon" / video.name, 32)
        np.testing.assert_array_equal(fa, fb)


def test_class1_dominates_like_the_original(tiny_demo, make_config):
    data = prepare_data(make_config(tiny_demo), progress=False)
    counts = data.train_before_downsampling.class_counts(3)
    assert counts[1] > 1.5 * max(counts[0], counts[2])


def _pose_windows(spec: DemoSpec, seed: int, subjects: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """The generator's own pose variables (arm, squat, legs) over 2 * window + 1 frames, plus
    their frame-to-frame differences, for frames inside one exercise segment."""
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for _ in range(subjects):
        tempo = rng.uniform(0.87, 1.15)
        poses, lab = motion_track(schedule(rng, spec), tempo, rng)
        for t in range(window + 4, len(lab) - window - 4, 2):
            seg = lab[t - window - 4:t + window + 5]  # clear of the blended seams
            if seg.min() == seg.max() == lab[t] >= 0:
                w = poses[t - window:t + window + 1]
                feats.append(np.concatenate([w.ravel(), np.diff(w, axis=0).ravel()]))
                labels.append(lab[t])
    return np.asarray(feats), np.asarray(labels)


@pytest.mark.parametrize("classes, one_frame_bound", [(6, 1 / 6 + 0.1), (16, 0.3)])
def test_classes_are_told_apart_by_motion_not_by_one_frame(classes, one_frame_bound):
    spec = DemoSpec(classes=classes)
    scores = {}
    for window in (0, 8):  # one frame vs 17 frames (what a clip of 16 sees)
        xtr, ytr = _pose_windows(spec, 0, 24, window)
        xte, yte = _pose_windows(spec, 1, 8, window)
        model = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=2).fit(xtr, ytr)
        pred = model.predict(xte)
        scores[window] = np.mean([np.mean(pred[yte == c] == c) for c in np.unique(yte)])  # mean class acc
    # A single pose says little: with 6 classes it is at chance; with all 16, pairs of variables
    # moving a quarter cycle apart only visit part of the pose space, which one frame can hint at.
    assert scores[0] < one_frame_bound, scores
    assert scores[8] > 0.9, scores  # a clip's worth of motion says nearly everything


def test_demo_data_command_and_auto_generation(tmp_path, capsys):
    assert main(["demo-data", "--out", str(tmp_path / "cli"), "--subjects", "3", "--classes", "2", "--seed", "1"]) == 0
    assert len(list((tmp_path / "cli" / "dataset" / "anon").glob("*.mp4"))) == 3
    # a missing data root with data.demo=true is generated on first use
    cfg = load_config(None, [f"data.root={tmp_path / 'auto'}", f"paths.cache={tmp_path / 'c'}", "data.demo_subjects=3",
                             "data.demo_classes=2", "model.num_classes=2", "data.frame_size=32"])
    data = prepare_data(cfg, progress=False)
    assert (tmp_path / "auto" / "split.csv").exists() and len(data.subjects) == 3


def test_demo_data_never_writes_over_a_folder_that_holds_files(tmp_path, capsys):
    dataset = tmp_path / "mine"
    dataset.mkdir()
    (dataset / "split.csv").write_text("id,split\nalice,train\n")
    assert main(["demo-data", "--out", str(dataset), "--subjects", "3", "--classes", "2"]) == 2
    assert "not an empty folder; the demo data is written only to a new or empty folder" in capsys.readouterr().err
    assert (dataset / "split.csv").read_text() == "id,split\nalice,train\n" and len(list(dataset.iterdir())) == 1


def _generate(root: str) -> str:
    from exptrack.data.prepare import ensure_data_root

    cfg = load_config(None, [f"data.root={root}", "data.demo_subjects=3", "data.demo_classes=2"])
    return str(ensure_data_root(cfg))


def test_auto_generation_is_safe_for_concurrent_workers_and_kills(tmp_path, monkeypatch):
    import multiprocessing

    root = tmp_path / "demo"
    with multiprocessing.get_context("fork").Pool(2) as pool:  # two workers start on the same folder
        assert pool.map(_generate, [str(root)] * 2) == [str(root)] * 2
    assert len(layout.discover(root, DataWarnings()).subjects) == 3
    assert not list(tmp_path.glob(".demo.partial-*"))

    # a generation that dies half way leaves no root behind that would pass for a dataset
    import exptrack.data.demo as demo

    written = []

    def dies(*args):  # killed while writing the second subject
        written.append(args)
        if len(written) == 2:
            raise KeyboardInterrupt("killed")
        return write_subject(*args)

    write_subject = demo.write_subject
    monkeypatch.setattr(demo, "write_subject", dies)
    with pytest.raises(KeyboardInterrupt):
        _generate(str(tmp_path / "other"))
    assert not (tmp_path / "other").exists() and not list(tmp_path.glob(".other.partial-*"))


def test_demo_data_stopped_leaves_no_half_dataset_and_says_no_run_ended(tmp_path, monkeypatch, capsys):
    """demo-data stopped by Ctrl-C left some videos and no split.csv in --out (a rerun refused the
    folder), and said "its run ended KILLED" of a command that has no run."""
    import signal

    import exptrack.data.demo as demo
    from exptrack.cli import main
    from exptrack.preemption import Preempted

    written = []
    write_subject = demo.write_subject

    def stopped(*args):  # Ctrl-C while the second subject is written
        written.append(args)
        if len(written) == 2:
            raise Preempted(signal.SIGINT)
        return write_subject(*args)

    monkeypatch.setattr(demo, "write_subject", stopped)
    out = tmp_path / "half"
    assert main(["demo-data", "--out", str(out), "--subjects", "4"]) == 130
    assert "stopped by SIGINT; before any run had started" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("*half*"))  # nor its partial folder
    monkeypatch.setattr(demo, "write_subject", write_subject)
    assert main(["demo-data", "--out", str(out), "--subjects", "3", "--classes", "2"]) == 0  # the rerun works
    assert (out / "split.csv").exists()


def _hard_small(tmp_path: Path, subjects: int = 3, **changes) -> Path:
    """The hard preset at its real frame size, with short segments so it writes in seconds."""
    import dataclasses

    from exptrack.data.demo import PRESETS

    spec = dataclasses.replace(PRESETS["hard"], subjects=subjects, classes=4, segment_frames=(16, 20),
                               background_frames=(4, 6), dominant_factor=1.0, **changes)
    return write_demo_dataset(tmp_path / f"hard{len(changes)}", spec)


def test_hard_preset_spec_matches_the_real_set_it_imitates():
    from exptrack.data.demo import PATTERNS, preset_spec

    spec = preset_spec("hard")
    assert (spec.subjects, spec.classes) == (9, 10)
    assert round(spec.test_fraction * spec.subjects) == 3  # 6 train / 3 test
    names = [p.name for p in PATTERNS[: spec.classes]]
    assert {"arm_raise", "fast_arm_raise"} <= set(names)  # differ only in tempo
    assert {"arm_squat_forward", "arm_leg_forward"} <= set(names)  # differ in one limb
    assert preset_spec("hard", subjects=5, classes=8, seed=3).subjects == 5
    with pytest.raises(ValueError, match="unknown demo preset"):
        preset_spec("medium")


def test_hard_preset_small_person_cluttered_shaking_scene(tmp_path):
    root = _hard_small(tmp_path)
    videos = sorted((root / "dataset" / "anon").glob("*.mp4"))
    backgrounds = []
    for video in videos:
        frames, info = decode_video(video, 96)  # (T, 96, 96, 3)
        masks = np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in
                          sorted((root / "dataset" / "mask" / video.stem).glob("*_mask.png"))])
        assert masks.shape[1:] == (info.height, info.width)
        share = (masks > 127).mean(axis=(1, 2))
        assert 0.02 < share.mean() < 0.12  # the person's pixels: a small part of the frame
        # The person's bounding box covers about a tenth of the frame.
        ys, xs = np.nonzero(masks[len(masks) // 2] > 127)
        box = (ys.max() - ys.min()) * (xs.max() - xs.min()) / (info.height * info.width)
        assert 0.04 < box < 0.25
        # Clutter: strong local texture everywhere, not a smooth gradient.
        gx = np.abs(np.diff(frames[0].astype(np.int16), axis=1)).mean()
        assert gx > 8.0
        backgrounds.append(frames[0].astype(np.float32))
    # Every subject has a room of its own.
    assert np.abs(backgrounds[0] - backgrounds[1]).mean() > 20
    # The camera shakes: far from the person the picture changes much more than the same scene
    # filmed by a still camera.
    assert _background_flicker(root) > 2.0 * _background_flicker(_hard_small(tmp_path, shake_px=0.0))


def _background_flicker(root: Path) -> float:
    """Mean change between consecutive frames of the pixels the person never comes near: grain
    and compression alone for a still camera, much more when the textured view shakes."""
    video = next((root / "dataset" / "anon").glob("*.mp4"))
    frames, _ = decode_video(video, 96)  # (T, 96, 96, 3)
    masks = [cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (96, 96)) for p in
             sorted((root / "dataset" / "mask" / video.stem).glob("*_mask.png"))]
    near = cv2.dilate((np.max(masks, axis=0) > 0).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    diffs = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=3)  # (T-1, 96, 96)
    return float(diffs[:, ~near].mean())


def test_easy_preset_stays_still_and_plain(tiny_demo):
    frames, _ = decode_video(next((tiny_demo / "dataset" / "anon").glob("*.mp4")), 96)
    gx = np.abs(np.diff(frames[0].astype(np.int16), axis=1)).mean()
    assert gx < 8.0


def test_cli_demo_data_hard_preset(tmp_path, capsys):
    main(["demo-data", "--preset", "hard", "--out", str(tmp_path / "h"), "--subjects", "3", "--classes", "2"])
    assert "hard demo dataset" in capsys.readouterr().out
    assert len(list((tmp_path / "h" / "dataset" / "anon").glob("*.mp4"))) == 3


def test_config_demo_preset_generates_hard_data(tmp_path):
    cfg = load_config(None, [f"data.root={tmp_path / 'auto'}", "data.demo_preset=hard", "data.demo_subjects=3",
                             "data.demo_classes=2"])
    from exptrack.data.prepare import ensure_data_root

    root = ensure_data_root(cfg)
    _, info = decode_video(next((root / "dataset" / "anon").glob("*.mp4")), 32)
    assert (info.width, info.height) == (192, 144)


@pytest.mark.slow
def test_the_demo_config_is_not_warned_about(tmp_path):
    """The README's main command trains on experiments/demo.yaml: its data raises none of
    exptrack's own warnings (a small validation, skipped files), or every demo run would warn."""
    config = load_config(str(Path(__file__).resolve().parents[2] / "experiments" / "demo.yaml"),
                         [f"data.root={tmp_path / 'demo'}", f"paths.cache={tmp_path / 'cache'}"])
    data = prepare_data(config, splits=("train", "val"), progress=False)
    assert data.validation_weaknesses() == []
    assert not data.warnings.counts


def test_read_frames_returns_the_frames_the_cache_decodes_after_a_seek(tiny_demo):
    """Explanations draw the heat of cached frames over frames read from the source video by a
    seek: they must be the same frames (an inexact seek would move the heat onto other ones)."""
    import cv2

    from exptrack.data.video import decode_video, read_frames

    video = sorted((tiny_demo / "dataset" / "anon").glob("*.mp4"))[0]
    cached, _ = decode_video(video, 32)
    start = 37  # not a keyframe: the seek must decode on from the one before
    read = read_frames(video, start, 4)
    small = np.stack([cv2.resize(f, (32, 32), interpolation=cv2.INTER_AREA) for f in read]).astype(np.float32)
    same = np.abs(small - cached[start:start + 4]).mean()
    shifted = np.abs(small - cached[start - 1:start + 3]).mean()
    assert same < 1.0 and shifted > 3 * same, (same, shifted)
