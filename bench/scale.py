"""The original's scale on one machine: cache, loader and epoch cost as the data grows (issue 23).

Our users' data is the original's size: 60 subjects of about 400x550 video at 30 fps, 28,413
training clips (stride 8) and about 23,000 test clips (stride 16) per pass, so about 595,000
frames (5.5 hours). This bench generates demo subjects at that resolution and frame rate (16
classes, the demo's most, masks and keypoints), shorter than the original's (about 10,000 frames each) so that it
fits a 2-core machine, and measures, at each N of --subjects:

  cache     exptrack's cache build (decode once at 112 px, masks, keypoints, skeleton attention)
            in one process: wall time, frames/s, and frames per CPU-second (per core); its size on
            disk per hour of video, frames alone and the masks beside them; at the largest N also
            with one process per core (data.cache_workers)
  decode    in the same run, plain sequential decoders on the same videos, full resolution, no
            resize: OpenCV (cv2.VideoCapture), PyAV (to RGB arrays), torchcodec if it imports
  loader    exptrack's train loader at 112 px with the default augmentation, masks and skeleton
            attention on: clips/s with each --workers count, per worker; the peak resident and
            private (USS) memory of its worker processes; the wall time of one whole epoch of
            the loader alone (no model)
  step      a full C3D train step (bf16 + channels_last on CUDA, fp32 on the CPU) at --step-batch:
            clips/s, and the workers the loader needs to keep it fed

It prints one table (a row per N), the growth per subject of each cost (a least-squares line
through the N points), and the extrapolation to the original's size: the per-frame and
per-clip costs measured here times the original's frames and clips, and the loader's epoch with
16 workers assuming that workers scale linearly up to the cores (measured here at 1 and 2).

Usage: python bench/scale.py [--subjects 5,10,20] [--segment-frames 24,36] [--workers 1,2]
                             [--device auto|cpu|cuda] [--step-batch 4] [--no-step] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import psutil
import torch

from exptrack.config import load_config
from exptrack.data.cache import ENTRY_KINDS
from exptrack.data.dataset import make_loader
from exptrack.data.demo import MAX_CLASSES, DemoSpec, write_demo_dataset
from exptrack.data.prepare import PreparedData, prepare_data
from exptrack.device import resolve_device

# The original's size (its README): 60 subjects, 30 train (28,413 clips, stride 8) and 30 test
# (about 23,000 clips, stride 16).
ORIGINAL_SUBJECTS = 60
ORIGINAL_TRAIN_CLIPS = 28_413
ORIGINAL_FRAMES = ORIGINAL_TRAIN_CLIPS * 8 + 23_000 * 16
ORIGINAL_WORKERS = 16
FPS = 30.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", default="5,10,20", help="the N to measure at (comma-separated)")
    p.add_argument("--segment-frames", default="24,36",
                   help="frames of one exercise segment, min,max (the demo's 48,72 makes 50 s subjects)")
    p.add_argument("--size", default="400x550", help="video WxH (the original: about 400x550)")
    p.add_argument("--frame-size", type=int, default=112)
    p.add_argument("--workers", default="1,2", help="loader worker counts to measure")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--loader-clips", type=int, default=640, help="clips timed per worker count")
    p.add_argument("--device", default="auto", help="the step's device")
    p.add_argument("--step-batch", type=int, default=4)
    p.add_argument("--no-step", action="store_true", help="skip the C3D step")
    p.add_argument("--out", type=Path, help="keep data and cache here (default: a temp folder, removed)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# measuring helpers


def cpu_seconds() -> float:
    """User + system CPU time of this process, all its threads (OpenCV decodes on several)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Cost:
    seconds: float
    cpu_seconds: float
    frames: int

    @property
    def fps(self) -> float:
        return self.frames / self.seconds

    @property
    def frames_per_cpu_second(self) -> float:
        return self.frames / max(self.cpu_seconds, 1e-9)


def timed(fn) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn()
    return result, time.perf_counter() - wall, cpu_seconds() - cpu


class MemoryWatch:
    """Peak summed RSS and USS (private memory) of this process's children (loader workers),
    sampled every 50 ms on a thread. RSS counts the memory-mapped cache pages a worker has
    touched, which the page cache shares between workers; USS is what each adds on its own."""

    def __init__(self) -> None:
        self.peak_rss = self.peak_uss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.05):
            rss = uss = 0
            for child in me.children(recursive=True):
                try:
                    info = child.memory_full_info()
                except psutil.Error:
                    continue
                rss, uss = rss + info.rss, uss + info.uss
            self.peak_rss, self.peak_uss = max(self.peak_rss, rss), max(self.peak_uss, uss)

    def __enter__(self) -> "MemoryWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------------------------
# data


def generate(root: Path, subjects: int, size: tuple[int, int], segment_frames: tuple[int, int]) -> float:
    """All subjects once (seconds taken); the N-subject views below link to them."""
    if (root / "split.csv").exists():
        return 0.0
    spec = DemoSpec(subjects=subjects, classes=MAX_CLASSES, width=size[0], height=size[1], fps=FPS,
                    segment_frames=segment_frames, background_frames=(segment_frames[0] // 4, segment_frames[0] // 2))
    _, seconds, _ = timed(lambda: write_demo_dataset(root, spec))
    return seconds


def first_subjects(full: Path, n: int) -> list[str]:
    return [row.split(",")[0] for row in (full / "split.csv").read_text().splitlines()[1:]][:n]


def first_videos(full: Path, n: int) -> list[Path]:
    return [full / "dataset" / "anon" / f"{name}.mp4" for name in first_subjects(full, n)]


def subset(full: Path, view: Path, n: int) -> Path:
    """A data root with the first `n` subjects of `full` (its split.csv rows; the files are
    links). Keeps a third of them as test, at least one, like the demo."""
    if view.exists():
        return view
    names = first_subjects(full, n)
    n_test = max(1, round(n / 3))
    view.mkdir(parents=True)
    for part in ("dataset", "label", "classes.csv"):
        (view / part).symlink_to(full / part)
    with (view / "split.csv").open("w") as fh:
        fh.write("id,split\n")
        for i, name in enumerate(names):
            fh.write(f"{name},{'test' if i < n_test else 'train'}\n")
    return view


def config(root: Path, cache: Path, frame_size: int, cache_workers: int = 1):
    return load_config(None, [f"data.root={root}", "data.demo=false", f"paths.cache={cache}",
                              f"data.cache_workers={cache_workers}",
                              f"paths.outputs={cache.parent / 'outputs'}", f"model.num_classes={MAX_CLASSES}",
                              f"data.frame_size={frame_size}", "data.use_masks=true",
                              "data.use_skeleton_attention=true"])


def kind_bytes(cache: Path) -> dict[str, int]:
    return {kind: sum(f.stat().st_size for f in (cache / kind).rglob("*.npy")) for kind in ENTRY_KINDS
            if (cache / kind).is_dir()}


# ---------------------------------------------------------------------------------------------
# decoders


def decode_opencv(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def decode_pyav(path: Path) -> int:
    import av

    n = 0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frame.to_ndarray(format="rgb24")
            n += 1
    return n


def decode_torchcodec(path: Path) -> int:
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(str(path))
    n = 0
    for start in range(0, len(decoder), 64):
        n += len(decoder.get_frames_in_range(start, min(start + 64, len(decoder))).data)
    return n


def decode_all(decode, videos: list[Path]) -> int:
    return sum(decode(v) for v in videos)


DECODERS = {"opencv": decode_opencv, "pyav": decode_pyav, "torchcodec": decode_torchcodec}


def baseline(videos: list[Path]) -> dict[str, Cost | str]:
    """Each decoder over the same videos, full resolution (a string says why one did not run)."""
    out: dict[str, Cost | str] = {}
    for name, decode in DECODERS.items():
        try:
            frames, seconds, cpu = timed(partial(decode_all, decode, videos))
        except Exception as exc:  # noqa: BLE001 - an optional decoder that does not install or load
            out[name] = f"unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})"
            continue
        out[name] = Cost(seconds, cpu, int(frames))  # type: ignore[arg-type]
    return out


# ---------------------------------------------------------------------------------------------
# loader and step


@dataclass(frozen=True)
class LoaderFigures:
    clips_per_s: float
    peak_rss: int
    peak_uss: int


def loader_figures(data: PreparedData, workers: int, batch: int, clips: int) -> LoaderFigures:
    loader = make_loader(data, "train", train=True, batch_size=batch, num_workers=workers, seed=0)
    with MemoryWatch() as memory:
        it = iter(loader)
        next(it)  # worker start-up, first pages of the cache
        seen, start = 0, time.perf_counter()
        epoch = 1
        while seen < clips:
            for batch_ in it:
                seen += len(batch_["label"])
                if seen >= clips:
                    break
            else:
                epoch += 1
                loader.dataset.set_epoch(epoch)
                it = iter(loader)
        rate = seen / (time.perf_counter() - start)
        del it, loader
    return LoaderFigures(rate, memory.peak_rss, memory.peak_uss)


def loader_epoch_seconds(data: PreparedData, workers: int, batch: int) -> tuple[float, int]:
    """Wall time of one whole training epoch of the loader alone, start-up included; its clips."""
    loader = make_loader(data, "train", train=True, batch_size=batch, num_workers=workers, seed=0)
    start, seen = time.perf_counter(), 0
    for batch_ in loader:
        seen += len(batch_["label"])
    return time.perf_counter() - start, seen


def step_clips_per_s(device_name: str, batch: int) -> tuple[float, str]:
    """A full C3D train step at 112 px (bench/gpu.py's measure)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu import CUDA_SPEC, Variant, measure  # bench/gpu.py, beside this script

    device = resolve_device(device_name)
    cuda = device.type == "cuda"
    variant = Variant("bf16+channels_last", True, True) if cuda else Variant("fp32+channels_last", False, True)
    spec = CUDA_SPEC if cuda else replace(CUDA_SPEC, steps=2, warmup=1)
    return measure(spec, variant, batch, device).clips_s, f"{device} {variant.name}, batch {batch}"


# ---------------------------------------------------------------------------------------------
# one N


@dataclass(frozen=True)
class Point:
    n: int
    frames: int
    hours: float
    cache: Cost
    bytes_by_kind: dict[str, int]
    loader: dict[int, LoaderFigures]
    epoch_seconds: float
    epoch_clips: int
    epoch_workers: int


def parallel_build(full: Path, work: Path, n: int, frame_size: int) -> Cost:
    """The cache build of N subjects with one process per core (data.cache_workers)."""
    cache = work / f"cache-{n}-parallel"
    shutil.rmtree(cache, ignore_errors=True)
    cfg = config(work / f"data-{n}", cache, frame_size, cache_workers=os.cpu_count() or 1)
    data, seconds, _ = timed(lambda: prepare_data(cfg, progress=False))
    assert isinstance(data, PreparedData)
    shutil.rmtree(cache, ignore_errors=True)
    # (CPU time: the build processes' is not told apart from the loader workers' in RUSAGE_CHILDREN)
    return Cost(seconds, float("nan"), sum(s.num_frames for s in data.subjects.values()))


def measure_point(full: Path, work: Path, n: int, args: argparse.Namespace, workers: list[int]) -> Point:
    root = subset(full, work / f"data-{n}", n)
    cache = work / f"cache-{n}"
    shutil.rmtree(cache, ignore_errors=True)
    cfg = config(root, cache, args.frame_size)
    data, seconds, cpu = timed(lambda: prepare_data(cfg, progress=False))
    assert isinstance(data, PreparedData)
    frames = sum(s.num_frames for s in data.subjects.values())
    loader = {w: loader_figures(data, w, args.batch_size, args.loader_clips) for w in workers}
    epoch_s, epoch_clips = loader_epoch_seconds(data, max(workers), args.batch_size)
    point = Point(n, frames, frames / FPS / 3600, Cost(seconds, cpu, frames), kind_bytes(cache), loader, epoch_s,
                  epoch_clips, max(workers))
    shutil.rmtree(cache, ignore_errors=True)  # GBs at larger N
    return point


# ---------------------------------------------------------------------------------------------
# report


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def per_hour(point: Point, kinds: tuple[str, ...]) -> float:
    return sum(point.bytes_by_kind.get(k, 0) for k in kinds) / point.hours


def table(points: list[Point], workers: list[int]) -> str:
    head = ["N", "frames", "video h", "cache s", "cache fps", "fps/core", "cache GiB", "GiB/h frames",
            "GiB/h +masks", *[f"loader {w}w clips/s" for w in workers], "per worker", "peak RSS GiB",
            "peak USS GiB", "epoch s", "epoch clips"]
    rows = []
    for p in points:
        top = p.loader[max(workers)]
        rows.append([str(p.n), str(p.frames), f"{p.hours:.3f}", f"{p.cache.seconds:.1f}", f"{p.cache.fps:.0f}",
                     f"{p.cache.frames_per_cpu_second:.0f}", gib(sum(p.bytes_by_kind.values())),
                     gib(per_hour(p, ("video",))), gib(per_hour(p, ("video", "mask"))),
                     *[f"{p.loader[w].clips_per_s:.0f}" for w in workers],
                     f"{p.loader[workers[0]].clips_per_s / workers[0]:.0f}", gib(top.peak_rss), gib(top.peak_uss),
                     f"{p.epoch_seconds:.1f}", str(p.epoch_clips)])
    return markdown(head, rows)


def markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def growth(points: list[Point], workers: list[int]) -> str:
    """Least-squares slope per subject of each cost (needs two N or more)."""
    n = np.array([p.n for p in points], dtype=float)
    costs = {"frames": [p.frames for p in points], "cache build s": [p.cache.seconds for p in points],
             "cache GiB": [sum(p.bytes_by_kind.values()) / 2**30 for p in points],
             "loader peak RSS GiB": [p.loader[max(workers)].peak_rss / 2**30 for p in points],
             "loader epoch s": [p.epoch_seconds for p in points], "epoch clips": [p.epoch_clips for p in points]}
    rows = []
    for name, values in costs.items():
        slope, intercept = np.polyfit(n, np.asarray(values, dtype=float), 1)
        rows.append([name, f"{slope:.4g}", f"{intercept:.4g}"])
    return markdown(["cost", "per subject", "at N=0"], rows)


def extrapolation(points: list[Point], workers: list[int], step: float | None, frame_size: int) -> str:
    """The original's size from the largest N's per-frame and per-clip rates."""
    p = points[-1]
    hours = ORIGINAL_FRAMES / FPS / 3600
    per_worker = p.loader[workers[0]].clips_per_s / workers[0]
    lines = [
        f"- video: {ORIGINAL_FRAMES:,} frames ({hours:.1f} h at {FPS:.0f} fps) over {ORIGINAL_SUBJECTS} subjects",
        f"- cache build: {ORIGINAL_FRAMES / p.cache.fps / 60:.0f} min in one process "
        f"({ORIGINAL_FRAMES / p.cache.frames_per_cpu_second / 3600:.1f} CPU-hours), "
        f"{ORIGINAL_FRAMES / (p.cache.frames_per_cpu_second * ORIGINAL_WORKERS) / 60:.0f} min with "
        f"{ORIGINAL_WORKERS} processes on {ORIGINAL_WORKERS} cores (data.cache_workers=0 there; linear in cores)",
        f"- cache size at {frame_size} px: frames {gib(per_hour(p, ('video',)) * hours)} "
        f"GiB, with masks {gib(per_hour(p, ('video', 'mask')) * hours)} GiB, everything (+ attention, keypoints) "
        f"{gib(per_hour(p, tuple(ENTRY_KINDS)) * hours)} GiB",
        f"- loader: {per_worker:.0f} clips/s per worker; an epoch of {ORIGINAL_TRAIN_CLIPS:,} clips with "
        f"{ORIGINAL_WORKERS} workers (linear in workers, one core each): "
        f"{ORIGINAL_TRAIN_CLIPS / (per_worker * ORIGINAL_WORKERS):.0f} s",
    ]
    if step is not None:
        lines.append(f"- step: {step:.1f} clips/s; workers needed to keep it fed: {step / per_worker:.2g}")
    return "\n".join(lines)


def machine() -> str:
    return (f"{os.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, torch {torch.__version__}, "
            f"OpenCV {cv2.__version__}, CUDA {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ns = sorted(int(v) for v in args.subjects.split(","))
    workers = sorted(int(v) for v in args.workers.split(","))
    seg = tuple(int(v) for v in args.segment_frames.split(","))
    size = tuple(int(v) for v in args.size.split("x"))
    work = args.out or Path(tempfile.mkdtemp(prefix="exptrack-scale-"))
    try:
        print(f"machine: {machine()}", flush=True)
        gen = generate(work / "full", max(ns), size, seg)  # type: ignore[arg-type]
        if gen:
            print(f"generated {max(ns)} subjects at {args.size}, {FPS:.0f} fps in {gen:.0f} s", flush=True)
        videos = first_videos(work / "full", min(ns))  # the smallest N's, whose cache build they face
        decoders = baseline(videos)
        points = []
        for n in ns:
            points.append(measure_point(work / "full", work, n, args, workers))
            print(f"N={n}: measured", flush=True)
        parallel = parallel_build(work / "full", work, ns[-1], args.frame_size)
        step = None if args.no_step else step_clips_per_s(args.device, args.step_batch)
        print(f"\n## Scale at {args.size}, {FPS:.0f} fps, frame size {args.frame_size}, masks and skeleton attention, "
              f"default augmentation, batch {args.batch_size}\n")
        print(table(points, workers))
        print(f"\ncache build at N={ns[-1]} with {os.cpu_count()} processes (data.cache_workers): "
              f"{parallel.seconds:.1f} s, {parallel.fps:.0f} frames/s, against {points[-1].cache.seconds:.1f} s in one")
        print(f"\nplain decoders on the first {len(videos)} videos (full resolution, no resize), against the "
              f"cache build at N={ns[0]} (decode + resize + masks + attention):\n")
        rows = [["exptrack cache build", f"{points[0].cache.fps:.0f}", f"{points[0].cache.frames_per_cpu_second:.0f}"]]
        for name, cost in decoders.items():
            rows.append([name, cost if isinstance(cost, str) else f"{cost.fps:.0f}",
                         "" if isinstance(cost, str) else f"{cost.frames_per_cpu_second:.0f}"])
        print(markdown(["decoder", "frames/s", "frames per CPU-s"], rows))
        if len(points) > 1:
            print("\ngrowth per subject (least squares over N):\n")
            print(growth(points, workers))
        print(f"\nextrapolated to the original ({ORIGINAL_SUBJECTS} subjects):\n")
        print(extrapolation(points, workers, step[0] if step else None, args.frame_size))
        if step:
            print(f"  (step measured on {step[1]})")
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
