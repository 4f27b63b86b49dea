"""The decode-once cache: equal to direct decoding, rebuilt on change, safe under concurrency."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from exptrack.data import layout
from exptrack.data.cache import FrameCache
from exptrack.data.demo import DemoSpec, write_demo_dataset
from exptrack.data.errors import DataWarnings
from bench.seeking import read_clip_by_seeking
from exptrack.data.video import decode_video

from ..conftest import TINY


def _subject(root: Path) -> layout.SubjectFiles:
    return layout.discover(root, DataWarnings()).subjects[0]


def test_cache_equals_direct_decoding(tiny_demo, tmp_path):
    subject = _subject(tiny_demo)
    entry = FrameCache(tmp_path / "c", 32).video(subject, DataWarnings())
    direct, info = decode_video(subject.video, 32)
    assert isinstance(entry.frames, np.memmap)  # served from disk, not held in memory
    np.testing.assert_array_equal(np.asarray(entry.frames), direct)
    assert entry.info == info
    assert info.width == TINY.width and info.height == TINY.height and info.fps == TINY.fps
    # and equal to the original per-clip approach (seek + decode) at any position
    clip = read_clip_by_seeking(subject.video, 20, 8, 32)
    np.testing.assert_array_equal(np.asarray(entry.frames[20:28]), clip)


@pytest.mark.parametrize("left", [0.5, 0.0], ids=["cut", "empty"])
def test_a_damaged_cache_entry_is_built_again_and_named(tiny_demo, tmp_path, caplog, left):
    """A frames.npy cut short after its entry was marked done (a crash, an interrupted copy of the
    cache) failed every run as "<video>: failed to decode", naming neither the entry nor a fix."""
    subject = _subject(tiny_demo)
    cache = FrameCache(tmp_path / "c", 32)
    first = np.asarray(cache.video(subject, DataWarnings()).frames).copy()
    frames = next((tmp_path / "c" / "video").glob("*/frames.npy"))
    with open(frames, "r+b") as f:
        f.truncate(int(frames.stat().st_size * left))
    caplog.set_level(logging.WARNING, logger="exptrack.data")
    again = FrameCache(tmp_path / "c", 32).video(subject, DataWarnings())
    np.testing.assert_array_equal(np.asarray(again.frames), first)
    assert f"{frames.parent}: cache entry is damaged" in caplog.text


def test_a_damaged_entry_does_not_stop_the_size_check_before_a_build(tiny_demo, make_config, tmp_path):
    """prepare_data sizes the cache from the built entries (info.json, keypoints.npy) before it
    builds: a cut one there was a JSONDecodeError traceback on every run, not a rebuild."""
    from exptrack.data.prepare import prepare_data

    cfg = make_config(tiny_demo, f"paths.cache={tmp_path / 'c'}", "data.use_skeleton_attention=true")
    first = prepare_data(cfg, splits=("test",), progress=False)
    for name in ("info.json", "keypoints.npy"):
        for path in (tmp_path / "c").rglob(name):
            path.write_bytes(path.read_bytes()[:10])
    again = prepare_data(cfg, splits=("test",), progress=False)
    assert len(again.subjects) == len(first.subjects) > 0


def test_an_entry_another_process_rebuilt_while_this_one_waited_is_kept(tmp_path):
    """The first read failed (a damaged entry), but by the time this process holds the lock another
    one has built it again: it is read, not deleted and built a third time."""
    cache, builds, reads = FrameCache(tmp_path / "c", 32), [], []

    def build(folder, warnings):
        builds.append(folder)
        (folder / "value.txt").write_text("ok")

    def read(folder):
        reads.append(folder)
        if len(reads) == 2:  # the read after the first build: damaged then, fine once the lock is held
            raise ValueError("cut short")
        return (folder / "value.txt").read_text()

    assert cache._entry("video", "s", "k", build, DataWarnings(), read) == "ok"  # built once
    assert cache._entry("video", "s", "k", build, DataWarnings(), read) == "ok"
    assert len(builds) == 1 and len(reads) == 3


def test_a_header_that_claims_a_billion_frames_decodes_what_is_there(tiny_demo, monkeypatch):
    """decode_video allocated the header's frame count up front: 34 TiB for a readable video."""
    from exptrack.data import video

    subject = _subject(tiny_demo)
    direct, _ = decode_video(subject.video, 32)
    capture = cv2.VideoCapture

    class Lying:  # a real capture whose header frame count is 1e9
        def __init__(self, path):
            self.cap = capture(path)

        def get(self, prop):
            return 1e9 if prop == cv2.CAP_PROP_FRAME_COUNT else self.cap.get(prop)

        def __getattr__(self, name):
            return getattr(self.cap, name)

    monkeypatch.setattr(video.cv2, "VideoCapture", Lying)
    frames, info = decode_video(subject.video, 32)
    np.testing.assert_array_equal(frames, direct)
    assert info.num_frames == len(direct)


def test_masks_equal_direct_reading(tiny_demo, tmp_path):
    subject = _subject(tiny_demo)
    cache = FrameCache(tmp_path / "c", 32)
    n = cache.video(subject, DataWarnings()).info.num_frames
    masks, present = cache.masks(subject, n, DataWarnings())
    assert present.all()
    img = cv2.imread(str(subject.mask_dir / "00011_mask.png"), cv2.IMREAD_GRAYSCALE)  # frame index 10
    expected = np.where(cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA) > 127, 255, 0)
    np.testing.assert_array_equal(masks[10], expected)


def test_second_open_does_not_decode_again(tiny_demo, tmp_path, monkeypatch):
    subject = _subject(tiny_demo)
    cache = FrameCache(tmp_path / "c", 32)
    first = cache.video(subject, DataWarnings())
    import exptrack.data.cache as cache_module

    def fail(*_a, **_k):
        raise AssertionError("decoded twice")

    monkeypatch.setattr(cache_module, "decode_video", fail)
    second = cache.video(subject, DataWarnings())
    np.testing.assert_array_equal(np.asarray(first.frames), np.asarray(second.frames))


def test_changed_video_rebuilds(tmp_path):
    root = write_demo_dataset(tmp_path / "d", DemoSpec(**{**TINY.__dict__, "subjects": 3}))
    other = write_demo_dataset(tmp_path / "o", DemoSpec(**{**TINY.__dict__, "subjects": 3, "seed": 99}))
    subject = _subject(root)
    cache = FrameCache(tmp_path / "c", 32)
    before = np.asarray(cache.video(subject, DataWarnings()).frames).copy()
    replacement = sorted((other / "dataset" / "anon").glob("*.mp4"))[0]
    os.replace(replacement, subject.video)  # new content under the same name
    after = cache.video(subject, DataWarnings())
    direct, _ = decode_video(subject.video, 32)
    np.testing.assert_array_equal(np.asarray(after.frames), direct)
    assert not np.array_equal(before[: len(direct)], direct[: len(before)])
    assert len([p for p in (tmp_path / "c" / "video").glob(f"{subject.subject}-*") if p.is_dir()]) == 2


def test_changed_frame_size_rebuilds(tiny_demo, tmp_path):
    subject = _subject(tiny_demo)
    small = FrameCache(tmp_path / "c", 32).video(subject, DataWarnings())
    large = FrameCache(tmp_path / "c", 48).video(subject, DataWarnings())
    assert small.frames.shape[1:] == (32, 32, 3) and large.frames.shape[1:] == (48, 48, 3)


def test_warnings_of_a_build_are_replayed_on_every_open(tiny_copy, tmp_path):
    subject = _subject(tiny_copy)
    for p in sorted(subject.mask_dir.glob("*_mask.png"))[:3]:
        p.write_bytes(b"not a png")
    cache = FrameCache(tmp_path / "c", 32)
    n = cache.video(subject, DataWarnings()).info.num_frames
    for _ in range(2):
        w = DataWarnings()
        cache.masks(subject, n, w)
        assert w["unreadable_mask"] == 3 and w["missing_mask_frames"] == 3
        assert str(subject.mask_dir) in w.examples["unreadable_mask"][0]  # the message names the file


def _build_in_child(root: str, cache_dir: str, barrier, out) -> None:
    import exptrack.data.cache as cache_module

    real_decode = cache_module.decode_video

    def counted_slow_decode(*args, **kwargs):
        with open(Path(cache_dir).parent / "decodes.log", "a") as fh:
            fh.write("decode\n")
        time.sleep(1.0)  # hold the build open: the other process must wait, not build too
        return real_decode(*args, **kwargs)

    cache_module.decode_video = counted_slow_decode
    subject = layout.discover(Path(root), DataWarnings()).subjects[0]
    barrier.wait()
    entry = FrameCache(cache_dir, 40).video(subject, DataWarnings())
    out.put(int(np.asarray(entry.frames, dtype=np.int64).sum()))


def test_two_processes_building_the_same_entry(tiny_demo, tmp_path):
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(str(tiny_demo), str(tmp_path / "c"), barrier, out))
             for _ in range(2)]
    for p in procs:
        p.start()
    sums = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    direct, _ = decode_video(_subject(tiny_demo).video, 40)
    assert sums == [int(direct.astype(np.int64).sum())] * 2
    entries = [p for p in (tmp_path / "c" / "video").iterdir() if p.is_dir()]
    assert len(entries) == 1 and (entries[0] / "done").exists()  # one entry, no temp leftovers
    assert (tmp_path / "decodes.log").read_text().count("decode") == 1  # built once, under the lock


def test_interrupted_build_leaves_no_entry(tiny_demo, tmp_path, monkeypatch):
    subject = _subject(tiny_demo)
    import exptrack.data.cache as cache_module

    def crash(*_a, **_k):
        time.sleep(0.01)
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "decode_video", crash)
    cache = FrameCache(tmp_path / "c", 32)
    try:
        cache.video(subject, DataWarnings())
    except KeyboardInterrupt:
        pass
    assert [p for p in (tmp_path / "c" / "video").iterdir() if p.is_dir()] == []
    monkeypatch.undo()
    assert cache.video(subject, DataWarnings()).frames.shape[1:] == (32, 32, 3)


def test_cache_workers_decode_in_parallel_only_where_it_pays():
    from exptrack.data.cache import PARALLEL_MIN_FRAMES, build_processes

    cores = os.cpu_count() or 1
    assert build_processes(0, 60, PARALLEL_MIN_FRAMES) == min(cores, 60)  # auto, a large build
    assert build_processes(0, 60, PARALLEL_MIN_FRAMES - 1) == 1  # auto, small: start-up would cost more
    assert build_processes(3, 2, 100) == 2 and build_processes(3, 1, 10**6) == 1  # never more than videos
    assert build_processes(1, 60, 10**6) == 1


def test_a_parallel_build_equals_the_serial_one(tiny_demo, make_config, tmp_path, caplog):
    from exptrack.data.prepare import prepare_data

    caplog.set_level(logging.INFO, logger="exptrack.data")
    serial = prepare_data(make_config(tiny_demo, f"paths.cache={tmp_path / 'serial'}", "data.cache_workers=1",
                                      "data.use_masks=true"), progress=False)
    parallel = prepare_data(make_config(tiny_demo, f"paths.cache={tmp_path / 'parallel'}", "data.cache_workers=2",
                                        "data.use_masks=true"), progress=False)
    assert [r.message for r in caplog.records if "processes" in r.message] == [
        f"frame cache {tmp_path / 'parallel'}: decoding 6 videos with 2 processes"]
    for name, subject in serial.subjects.items():
        np.testing.assert_array_equal(np.asarray(parallel.subjects[name].video.frames), np.asarray(subject.video.frames))
        assert parallel.subjects[name].video.info == subject.video.info
    assert parallel.warnings.counts == serial.warnings.counts
    assert not list((tmp_path / "parallel" / "video").glob(".*.tmp-*"))  # only whole entries


def test_a_broken_video_in_a_parallel_build_is_named_and_leaves_only_whole_entries(tiny_copy, tmp_path):
    from exptrack.data.cache import build_videos
    from exptrack.data.errors import DataError

    subjects = layout.discover(tiny_copy, DataWarnings()).subjects
    broken = subjects[0].video
    broken.write_bytes(b"\x00" * 4096)  # not a video (prepare_data's size estimate would refuse it first)
    with pytest.raises(DataError, match=str(broken)):
        build_videos(FrameCache(tmp_path / "c", 32), subjects[:3], processes=2, progress=False)
    for entry in (tmp_path / "c" / "video").iterdir():
        assert entry.suffix == ".lock" or (entry / "done").exists(), entry  # no half-built entry


# ---------------------------------------------------------------------------------------------
# inputs that used to pass silently or blame the wrong file (issue 11)


def test_masks_of_another_size_are_counted_naming_both_sizes(tiny_copy, tmp_path):
    subject = _subject(tiny_copy)
    files = sorted(subject.mask_dir.glob("*_mask.png"))
    for path in files[:5]:  # five masks at half the video's size
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(path), cv2.resize(img, (TINY.width // 2, TINY.height // 2)))
    cache = FrameCache(tmp_path / "c", 32)
    n = cache.video(subject, DataWarnings()).info.num_frames
    w = DataWarnings()
    _, present = cache.masks(subject, n, w, (TINY.width, TINY.height))
    assert present.all()  # still used, but not silently
    assert w["mask_size_mismatch"] == 5
    assert (f"{subject.mask_dir}: 5 masks of subject {subject.subject} are {TINY.width // 2}x{TINY.height // 2} "
            f"but its video is {TINY.width}x{TINY.height}") in w.examples["mask_size_mismatch"][0]
    again = DataWarnings()  # and replayed from the cache on the next open
    cache.masks(subject, n, again, (TINY.width, TINY.height))
    assert again["mask_size_mismatch"] == 5


def test_masks_of_the_video_size_give_no_warning(tiny_demo, tmp_path):
    subject = _subject(tiny_demo)
    cache = FrameCache(tmp_path / "c", 32)
    n = cache.video(subject, DataWarnings()).info.num_frames
    w = DataWarnings()
    cache.masks(subject, n, w, (TINY.width, TINY.height))
    assert not w


def test_a_video_shorter_than_one_clip_is_a_counted_warning(tiny_demo, make_config):
    from exptrack.data.errors import DataError
    from exptrack.data.prepare import prepare_data

    w = DataWarnings()
    with pytest.raises(DataError, match="no usable clips"):  # every video is shorter than 1000 frames
        prepare_data(make_config(tiny_demo, "data.clip_len=1000"), splits=("test",), progress=False, warnings=w)
    tests = layout.discover(tiny_demo, DataWarnings()).by_split("test")
    assert w["video_shorter_than_clip"] == len(tests)
    assert f"subject {tests[0].subject} has" in " ".join(w.examples["video_shorter_than_clip"])
    assert "fewer than one clip (data.clip_len 1000); it contributes no clips" in w.examples["video_shorter_than_clip"][0]


def _expect_unwritable_cache(root: Path, cache_dir: Path, make_config) -> None:
    from exptrack.data.errors import DataError
    from exptrack.data.prepare import prepare_data

    with pytest.raises(DataError) as err:
        prepare_data(make_config(root, f"paths.cache={cache_dir}"), splits=("test",), progress=False)
    message = str(err.value)
    assert message.startswith(f"{cache_dir}: cache folder is not writable")
    assert "set paths.cache" in message and ".mp4" not in message


def test_a_cache_path_under_a_file_blames_the_cache_not_the_video(tiny_demo, tmp_path, make_config):
    (tmp_path / "outputs").write_text("a file where a folder should be")
    _expect_unwritable_cache(tiny_demo, tmp_path / "outputs" / "cache", make_config)


def test_a_read_only_cache_folder_blames_the_cache_not_the_video(tiny_demo, tmp_path, make_config):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    cache_dir.chmod(0o555)
    try:
        if os.access(cache_dir, os.W_OK):
            pytest.skip("running as root: chmod does not make a folder read-only")
        _expect_unwritable_cache(tiny_demo, cache_dir, make_config)
    finally:
        cache_dir.chmod(0o755)
