"""Decode-once cache: frames, masks, keypoints and attention maps as memory-mapped .npy files.

Every video is decoded once (and every mask folder read once) at the training frame size into
(T, H, W, C) uint8 arrays; training then only slices memory maps. An entry's folder name holds
a key over its inputs (file size, mtime and a hash of the first and last bytes, plus the frame
size and the format version), so a changed video or frame size builds a new entry instead of
serving a stale one. An entry is built in a private temp folder under a file lock and renamed
into place, so two processes building the same entry at once end with one intact copy and a
reader never sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import cv2
import numpy as np
from filelock import FileLock

from .._proc import process_alive
from ..progress import progress_bar
from . import layout, transforms
from .errors import DataError, DataWarnings, require_file
from .layout import SubjectFiles
from .video import VideoInfo, decode_video, probe_video

log = logging.getLogger("exptrack.data")
T = TypeVar("T")

FORMAT_VERSION = 1
_HASH_BYTES = 1 << 20
MASK_READER = 2  # layout.read_mask's rules; masks cached by older rules are read again
ENTRY_KINDS = ("video", "mask", "keypoints", "attention")  # one folder under paths.cache each
_ENTRY_NAME = re.compile(r".+-[0-9a-f]{16}")  # <subject>-<key>, see _digest
_BUILD_NAME = re.compile(r"\..+-[0-9a-f]{16}\.tmp-[0-9]+")  # see _build


def file_key(path: Path) -> str:
    """Identity of a file's content: size, mtime and a hash of its first and last MiB."""
    st = require_file(path, "video file").stat()
    h = hashlib.sha1(f"{st.st_size}:{st.st_mtime_ns}".encode())
    with path.open("rb") as fh:
        h.update(fh.read(_HASH_BYTES))
        if st.st_size > 2 * _HASH_BYTES:
            fh.seek(-_HASH_BYTES, os.SEEK_END)
            h.update(fh.read(_HASH_BYTES))
    return h.hexdigest()


def folder_key(folder: Path | None) -> str:
    """Identity of a folder of many small files (mask PNGs): names, sizes and mtimes."""
    if folder is None or not folder.is_dir():
        return "none"
    h = hashlib.sha1()
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        st = entry.stat()
        h.update(f"{entry.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def _digest(*parts: object) -> str:
    return hashlib.sha1("|".join(str(p) for p in (FORMAT_VERSION, *parts)).encode()).hexdigest()[:16]


class MappedArray(np.memmap):
    """A read-only memory map that pickles as its file path.

    DataLoader workers started by spawn or forkserver (the default on macOS) receive the Dataset
    pickled; this way they reopen the cache file instead of being sent a copy of every frame.
    Slices taken from it pickle as ordinary arrays.
    """

    _whole = False

    def __array_finalize__(self, obj) -> None:
        super().__array_finalize__(obj)
        self._whole = False

    def __reduce__(self):
        if self._whole and self.filename:
            return (open_map, (self.filename,))
        return np.asarray(self).copy().__reduce__()


def open_map(path: str | Path) -> MappedArray:
    arr = np.load(path, mmap_mode="r").view(MappedArray)
    arr._whole = True
    return arr


def _build_in_progress(entry: Path) -> bool:
    """A `.name.tmp-<pid>` build folder whose process is still alive."""
    if not entry.name.startswith(".") or ".tmp-" not in entry.name:
        return False
    pid = entry.name.rsplit("-", 1)[1]
    return pid.isdigit() and process_alive(int(pid))


@dataclass(frozen=True)
class VideoEntry:
    subject: str
    frames: np.ndarray  # (T, S, S, 3) uint8 RGB, memory-mapped
    info: VideoInfo


# How a cut entry fails to read: ValueError a cut .npy or JSON, EOFError an empty .npy.
UNREADABLE = (OSError, ValueError, TypeError, KeyError, EOFError)


class FrameCache:
    def __init__(self, root: str | Path, frame_size: int) -> None:
        self.root = Path(root)
        self.size = frame_size
        self.used: set[Path] = set()  # entries opened through this object (what `prune` keeps)
        # file_key of each input file, by (path, size, mtime): the size estimate and the build both
        # key every entry, and a video's key reads 2 MiB of it; a changed file misses this memo.
        self._file_keys: dict[tuple[Path, int, int], str] = {}

    def _file_key(self, path: Path) -> str:
        st = require_file(path, "video file").stat()
        memo = (path, st.st_size, st.st_mtime_ns)
        if memo not in self._file_keys:
            self._file_keys[memo] = file_key(path)
        return self._file_keys[memo]

    # -- generic entry machinery ---------------------------------------------------------------

    def _entry(self, kind: str, subject: str, key: str, build: Callable[[Path, DataWarnings], None],
               warnings: DataWarnings, read: Callable[[Path], T]) -> T:
        """`read` of a finished entry's folder, building the entry first (once, under a lock) if
        needed. An entry that cannot be read (a file cut short by a crash after it was marked
        done, or by an interrupted copy of the cache) is built again, with a warning naming it.

        Warnings raised while building are stored with the entry and replayed on every open,
        so a truncated video is reported by every run that uses it, not only the first.
        """
        assert kind in ENTRY_KINDS, kind  # prune only looks under these
        final = self.root / kind / f"{subject}-{key}"
        def opened() -> tuple[dict, T]:
            return json.loads((final / "warnings.json").read_text()), read(final)

        for attempt in (1, 2):
            if not (final / "done").exists():
                self._check_writable(final.parent)
                with FileLock(str(final) + ".lock"):
                    if not (final / "done").exists():  # else another process built it while we waited
                        self._build(final, build)
            try:
                stored, value = opened()
                break
            except UNREADABLE as exc:
                if attempt == 2:
                    raise DataError(f"{final}: cache entry cannot be read after building it again ({exc}); "
                                    "check the disk, or set paths.cache to another folder") from exc
                with FileLock(str(final) + ".lock"):
                    try:  # another process may have rebuilt it while this one waited: never delete that
                        stored, value = opened()
                        break
                    except UNREADABLE:
                        log.warning("%s: cache entry is damaged (%s); building it again", final, exc)
                        shutil.rmtree(final, ignore_errors=True)
        self.used.add(final)
        for kind_name, (count, message) in stored.items():
            warnings.warn(kind_name, message, count=count)
        return value

    def _check_writable(self, folder: Path) -> None:
        """Create `folder`, or DataError blaming the cache folder (not the video being cached)."""
        try:
            folder.mkdir(parents=True, exist_ok=True)
            writable = os.access(folder, os.W_OK | os.X_OK)
            reason = "no write permission"
        except OSError as exc:
            writable, reason = False, exc.strerror or str(exc)
        if not writable:
            raise DataError(f"{self.root}: cache folder is not writable ({reason}); fix its permissions "
                            f"or set paths.cache to a writable folder")

    @staticmethod
    def _build(final: Path, build: Callable[[Path, DataWarnings], None]) -> None:
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            local = DataWarnings(log_first=0)  # stored with the entry, logged when replayed
            build(tmp, local)
            stored = {k: (n, local.examples[k][0] if local.examples[k] else k) for k, n in local.counts.items()}
            (tmp / "warnings.json").write_text(json.dumps(stored))
            (tmp / "done").touch()
            shutil.rmtree(final, ignore_errors=True)  # a leftover without 'done'
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def prune(self) -> tuple[int, int]:
        """Delete every entry this object has not opened (other frame sizes, changed or removed
        videos, other sigmas) and the leftovers of builds whose process died. Returns (entries
        removed, bytes freed). Only what is provably a cache entry is touched: a folder named
        `<subject>-<key>` under one of the entry kinds, holding the `done` mark, or a dead
        build's `.<name>.tmp-<pid>` folder. Anything else under `paths.cache` (a user's files,
        outputs when the cache shares their folder) stays. An entry being built by a live process
        is left alone; one that a run with another config is reading is not protected (readers
        take no lock): prune when no other run is preparing data."""
        removed = freed = 0
        for entry in self._prunable():
            size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
            lock = FileLock(str(entry) + ".lock")
            try:
                with lock.acquire(timeout=0):
                    shutil.rmtree(entry, ignore_errors=True)
            except TimeoutError:  # filelock.Timeout: someone is building or checking it now
                continue
            # the .lock file stays: deleting it would let two processes hold "the same" lock
            removed, freed = removed + 1, freed + size
        return removed, freed

    def bytes_by_subject(self) -> dict[str, int]:
        """Disk bytes of the entries opened through this object, per subject (an entry's folder
        is `<subject>-<16 hex key>`)."""
        sizes: Counter[str] = Counter()
        for entry in self.used:
            sizes[entry.name[:-17]] += sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
        return dict(sizes)

    def _prunable(self) -> Iterator[Path]:
        for kind in ENTRY_KINDS:
            kind_dir = self.root / kind
            if not kind_dir.is_dir() or kind_dir.is_symlink():
                continue
            for entry in kind_dir.iterdir():
                if entry in self.used or entry.is_symlink() or not entry.is_dir():
                    continue
                if _ENTRY_NAME.fullmatch(entry.name) and (entry / "done").is_file():
                    yield entry
                elif _BUILD_NAME.fullmatch(entry.name) and not _build_in_progress(entry):
                    yield entry

    # -- frames ----------------------------------------------------------------------------------

    def video_key(self, subject: SubjectFiles) -> str:
        return _digest("video", self._file_key(subject.video), self.size)

    def mask_key(self, subject: SubjectFiles, num_frames: int, video_size: tuple[int, int] | None) -> str:
        return _digest("mask", MASK_READER, folder_key(subject.mask_dir), self.size, num_frames,
                       video_size)

    def keypoints_key(self, keypoints: Path, info: VideoInfo, frame_base: str) -> str:
        return _digest("kp", self._file_key(keypoints), self.size, info.width, info.height,
                       info.num_frames, frame_base)

    def attention_key(self, kps: np.ndarray, sigma: float, floor: float, min_conf: float) -> str:
        # keyed by the keypoint values themselves: they already fold in the video size and base
        return _digest("att", hashlib.sha1(np.ascontiguousarray(kps).tobytes()).hexdigest(), self.size, sigma,
                       floor, min_conf)

    def built(self, kind: str, subject: str, key: str) -> Path | None:
        """The folder of a finished entry, or None."""
        final = self.root / kind / f"{subject}-{key}"
        return final if (final / "done").exists() else None

    def video(self, subject: SubjectFiles, warnings: DataWarnings) -> VideoEntry:
        key = self.video_key(subject)

        def build(tmp: Path, w: DataWarnings) -> None:
            frames, info = decode_video(subject.video, self.size, w)
            np.save(tmp / "frames.npy", frames)
            (tmp / "info.json").write_text(json.dumps(info.__dict__))

        def read(folder: Path) -> VideoEntry:
            info = VideoInfo(**json.loads((folder / "info.json").read_text()))
            return VideoEntry(subject.subject, open_map(folder / "frames.npy"), info)

        return self._entry("video", subject.subject, key, build, warnings, read)

    # -- masks -------------------------------------------------------------------------------------

    def masks(self, subject: SubjectFiles, num_frames: int, warnings: DataWarnings,
              video_size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(T, S, S) uint8 person masks (0/255 at the edges blended) and (T,) bool present.
        `video_size` (width, height): masks of another size are still resized, but counted."""
        key = self.mask_key(subject, num_frames, video_size)

        def build(tmp: Path, w: DataWarnings) -> None:
            files = layout.mask_files(subject.mask_dir)
            masks = np.lib.format.open_memmap(tmp / "masks.npy", mode="w+", dtype=np.uint8,
                                              shape=(num_frames, self.size, self.size))
            present = np.zeros(num_frames, dtype=bool)
            mismatched: Counter[tuple[int, int]] = Counter()  # (width, height) -> masks of that size
            for frame, path in files.items():
                if frame >= num_frames:
                    continue
                img = layout.read_mask(path)
                if img is None:
                    w.warn("unreadable_mask", f"{path}: cannot read mask image (an 8- or 16-bit PNG); frame used "
                           "unmasked")
                    continue
                if video_size is not None and (img.shape[1], img.shape[0]) != tuple(video_size):
                    mismatched[(img.shape[1], img.shape[0])] += 1
                small = cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_AREA)
                masks[frame] = np.where(small > 127, 255, 0)
                present[frame] = True
            for (mw, mh), n in mismatched.items():  # stretched masks no longer cover the person
                assert video_size is not None  # only then is a size mismatched
                w.warn("mask_size_mismatch", f"{subject.mask_dir}: {n} masks of subject {subject.subject} are "
                       f"{mw}x{mh} but its video is {video_size[0]}x{video_size[1]}; stretched to fit", count=n)
            masks.flush()
            del masks
            np.save(tmp / "present.npy", present)

        def read(folder: Path) -> tuple[MappedArray, np.ndarray]:
            return open_map(folder / "masks.npy"), np.load(folder / "present.npy")

        masks, present = self._entry("mask", subject.subject, key, build, warnings, read)
        missing = int((~present).sum())
        if missing:
            where = subject.mask_dir or f"mask folder of {subject.subject}"
            warnings.warn("missing_mask_frames",
                          f"{where}: {missing} of {num_frames} frames have no mask; used unmasked", count=missing)
        return masks, present

    # -- keypoints and skeleton attention ----------------------------------------------------------

    def keypoints(self, subject: SubjectFiles, info: VideoInfo, warnings: DataWarnings,
                  frame_base: str = "auto") -> np.ndarray | None:
        """(T, 17, 3) float32 keypoints scaled to the cached frame size, or None if no file."""
        if subject.keypoints is None:
            warnings.warn("missing_keypoints", f"no keypoint CSV for subject {subject.subject}; attention is uniform")
            return None
        keypoints = subject.keypoints
        key = self.keypoints_key(keypoints, info, frame_base)

        def build(tmp: Path, w: DataWarnings) -> None:
            kps = layout.read_keypoints(keypoints, info.num_frames, w, frame_base)
            kps[..., 0] *= self.size / max(info.width, 1)
            kps[..., 1] *= self.size / max(info.height, 1)
            np.save(tmp / "keypoints.npy", kps)

        return self._entry("keypoints", subject.subject, key, build, warnings, lambda f: np.load(f / "keypoints.npy"))

    def attention(self, subject: SubjectFiles, kps: np.ndarray, sigma: float, floor: float,
                  min_conf: float, warnings: DataWarnings) -> np.ndarray:
        """(T, S, S) uint8 skeleton attention maps (255 = weight 1) from cached keypoints."""
        key = self.attention_key(kps, sigma, floor, min_conf)

        def build(tmp: Path, w: DataWarnings) -> None:
            maps = np.lib.format.open_memmap(tmp / "attention.npy", mode="w+", dtype=np.uint8,
                                             shape=(len(kps), self.size, self.size))
            for start in range(0, len(kps), 64):  # bounded memory for long videos
                chunk = transforms.skeleton_attention(kps[start:start + 64], self.size, sigma, floor, min_conf)
                maps[start:start + 64] = np.round(chunk * 255).astype(np.uint8)
            maps.flush()

        return self._entry("attention", subject.subject, key, build, warnings, lambda f: open_map(f / "attention.npy"))


# ---------------------------------------------------------------------------------------------
# size: what a config's entries take on disk, before any is built

_NPY_HEADER = 128  # bytes in front of an .npy array (format 1.0, small shapes)


@dataclass(frozen=True)
class Guides:
    """Which per-frame guides a config caches beside the frames (config.data's switches)."""

    masks: bool = False
    attention: tuple[float, float, float] | None = None  # (sigma, floor, min_conf) when used
    frame_base: str = "auto"


@dataclass(frozen=True)
class CacheNeed:
    """Disk space of a config's cache entries. `to_write` is what is not built yet; videos whose
    header gives no frame count are in `unsized` and not in the figures."""

    total: int  # bytes of every entry the config uses, built or not
    to_write: int  # of those, bytes still to be built
    entries_to_build: int
    frames: int  # video frames the entries cover
    frames_to_decode: int = 0  # of those, in videos not cached yet
    videos_to_decode: int = 0
    unsized: tuple[Path, ...] = ()
    largest: tuple[Path, int] | None = None  # the video with the most frames still to decode

    def describe(self) -> str:
        text = (f"{size_text(self.to_write)} to write for {self.entries_to_build} cache entries "
                f"({size_text(self.total)} for this config in all, {self.frames} frames")
        if self.largest is not None:
            text += f"; the largest: {self.largest[0]}, {self.largest[1]} frames by its header"
        text += ")"
        if self.unsized:
            text += (f"; {len(self.unsized)} videos without a believable frame count in their header (first: "
                     f"{self.unsized[0]}) are not included")
        return text


def size_text(n: float) -> str:
    """Bytes as GiB, or MiB below a quarter GiB."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def entry_bytes(kind: str, frames: int, size: int) -> int:
    """Bytes of one entry of `kind` over `frames` frames at `size` px (what _build writes)."""
    per_frame = {"video": size * size * 3, "mask": size * size + 1, "keypoints": 17 * 3 * 4,
                 "attention": size * size}[kind]
    arrays = 2 if kind == "mask" else 1  # masks.npy and present.npy
    return frames * per_frame + arrays * _NPY_HEADER


def _cached_info(folder: Path) -> VideoInfo | None:
    """A built video entry's info; None when it cannot be read (the build repairs the entry)."""
    try:
        return VideoInfo(**json.loads((folder / "info.json").read_text()))
    except UNREADABLE:
        return None


def _cached_array(path: Path) -> np.ndarray | None:
    try:
        return np.load(path)
    except UNREADABLE:
        return None


def cache_need(cache: FrameCache, subjects: list[SubjectFiles], guides: Guides) -> CacheNeed:
    """What building `subjects`' entries will write, from the built entries and the headers of
    the videos not decoded yet (their frame count; a truncated file decodes fewer, so this is an
    upper bound). Reads no frame."""
    total = to_write = entries = frames_all = to_decode = videos = 0
    unsized: list[Path] = []
    largest: tuple[Path, int] | None = None
    for subject in subjects:
        wanted = _wanted_entries(cache, subject, guides)
        if wanted is None:
            unsized.append(subject.video)
            continue
        frames, kinds = wanted
        frames_all += frames
        for kind, present in kinds:
            size = entry_bytes(kind, frames, cache.size)
            total += size
            if not present:
                to_write, entries = to_write + size, entries + 1
                if kind == "video":
                    to_decode, videos = to_decode + frames, videos + 1
                    if largest is None or frames > largest[1]:
                        largest = (subject.video, frames)
    return CacheNeed(total, to_write, entries, frames_all, to_decode, videos, tuple(unsized), largest)


def _wanted_entries(cache: FrameCache, subject: SubjectFiles,
                    guides: Guides) -> tuple[int, list[tuple[str, bool]]] | None:
    """(frames, [(kind, already built)]) of one subject's entries; None when the video is not
    cached and its header has no frame count."""
    folder = cache.built("video", subject.subject, cache.video_key(subject))
    info = _cached_info(folder) if folder is not None else None
    if info is None:  # not built, or damaged: counted as to be built again
        folder, info = None, probe_video(subject.video)
    if info.num_frames <= 0:
        return None
    if folder is None and info.num_frames > subject.video.stat().st_size:
        return None  # fewer bytes than frames: a header that lies (the decode counts the real ones)
    kinds = [("video", folder is not None)]
    if guides.masks:
        kinds.append(("mask", folder is not None and cache.built(
            "mask", subject.subject, cache.mask_key(subject, info.num_frames, (info.width, info.height))) is not None))
    if subject.keypoints is not None:
        kp_folder = cache.built("keypoints", subject.subject, cache.keypoints_key(subject.keypoints, info,
                                                                                   guides.frame_base))
        kinds.append(("keypoints", kp_folder is not None))
        if guides.attention is not None:
            keypoints = _cached_array(kp_folder / "keypoints.npy") if kp_folder is not None else None
            if keypoints is None:  # not built or damaged: both are built (again)
                kinds[-1] = ("keypoints", False)
            kinds.append(("attention", keypoints is not None and cache.built(
                "attention", subject.subject, cache.attention_key(keypoints, *guides.attention)) is not None))
    return info.num_frames, kinds


def free_bytes(folder: Path) -> int:
    """Free space on the file system that holds `folder` (or would, once created)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return shutil.disk_usage(existing).free


# Kept free beyond the estimate: the file system's own use, an estimate off by a few frames.
DISK_RESERVE = 64 * 2**20


def check_space(cache: FrameCache, need: CacheNeed) -> None:
    """DataError before anything is built when the cache's disk cannot hold what is to be written."""
    if need.to_write == 0:
        return
    free = free_bytes(cache.root)
    if need.to_write + DISK_RESERVE > free:
        raise DataError(f"{cache.root}: the frame cache needs {need.describe()}, but only {size_text(free)} are free "
                        f"on its disk; free space there, set paths.cache to a larger disk, or lower "
                        f"data.frame_size (the cache grows with its square)")


# ---------------------------------------------------------------------------------------------
# building


# Below this many frames to decode, starting the processes of a parallel build (a fresh
# interpreter each, about 3 s) costs about what it saves; above it, data.cache_workers=0 decodes
# with one process per core. (400x550 H.264 decodes and resizes at about 200 frames/s per core:
# bench/scale.py, RESULTS.md.)
PARALLEL_MIN_FRAMES = 10_000


def build_processes(requested: int, videos: int, frames_to_decode: int) -> int:
    """Processes for decoding `videos` videos: data.cache_workers resolved (0: auto)."""
    if videos < 2:
        return 1
    if requested == 0:
        return min(os.cpu_count() or 1, videos) if frames_to_decode >= PARALLEL_MIN_FRAMES else 1
    return min(requested, videos)


def _decode_into(root: str, size: int, subject: SubjectFiles) -> None:
    """A build process's work: one video's entry (its warnings are stored with it)."""
    cv2.setNumThreads(1)  # the processes already fill the cores
    FrameCache(root, size).video(subject, DataWarnings(log_first=0))


def _decode_error(subject: SubjectFiles, exc: BaseException) -> DataError:
    return exc if isinstance(exc, DataError) else DataError(f"{subject.video}: failed to decode: {exc}")


def build_videos(cache: FrameCache, subjects: list[SubjectFiles], processes: int, progress: bool = True) -> None:
    """Decode `subjects`' videos into the cache with `processes` processes at once. Spawned, not
    forked: this process may be running threads (MLflow's tracker), which a fork copies
    mid-lock. Each entry is built under its lock and renamed into place as in one process, so a
    failure or a kill leaves only whole entries."""
    log.info("frame cache %s: decoding %d videos with %d processes", cache.root, len(subjects), processes)
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_decode_into, str(cache.root), cache.size, s): s for s in subjects}
        try:
            for future in progress_bar(as_completed(futures), f"frame cache ({processes} processes)", "video",
                                       progress, total=len(futures)):
                if future.exception() is not None:
                    raise _decode_error(futures[future], future.exception())  # type: ignore[arg-type]
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # the running builds finish or clean up; none starts
            raise


def ensure_cached(cache: FrameCache, subjects: list[SubjectFiles], warnings: DataWarnings,
                  progress: bool = True, processes: int = 1) -> dict[str, VideoEntry]:
    """Decode (or open) every subject's video once, with a progress bar; with `processes` > 1
    the videos not cached yet are decoded by that many processes first."""
    if processes > 1:
        missing = [s for s in subjects if cache.built("video", s.subject, cache.video_key(s)) is None]
        build_videos(cache, missing, processes, progress)
    entries = {}
    for subject in progress_bar(subjects, "frame cache", "video", progress and processes <= 1):
        try:
            entries[subject.subject] = cache.video(subject, warnings)  # replays each entry's warnings
        except DataError:
            raise
        except Exception as exc:  # a decoder crash still names the file
            raise _decode_error(subject, exc) from exc
    return entries
