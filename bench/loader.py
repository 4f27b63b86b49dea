"""Train-loader throughput: exptrack's cached loader vs the original per-clip decoding.

Both run through the same DataLoader harness (same batch size, same workers, same clips); only
the Dataset differs:
  exptrack   memory-mapped decode-once cache, masks + skeleton attention + augmentation ON
  per-clip   the original approach: open the video, seek, decode 16 frames, resize (and nothing
             else: no masks, no attention, no augmentation, so the baseline is flattered)

Usage: python bench/loader.py [--data-root DIR] [--video-size 400x544] [--clips 3000]
Prints clips/s for both and the ratio. Targets on a 2-core machine: >= 1000 clips/s, >= 20x.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from exptrack.config import load_config
from exptrack.data.dataset import make_loader, prepare_batch
from exptrack.data.demo import DemoSpec, write_demo_dataset
from exptrack.data.prepare import prepare_data
from seeking import read_clip_by_seeking  # bench/seeking.py, beside this script


class PerClipDecoding(Dataset):
    """The original loader's work per clip."""

    def __init__(self, data, split: str) -> None:
        self.index = data.splits[split]
        self.videos = [data.subjects[s].files.video for s in self.index.subjects]
        self.clip_len, self.size = data.config.data.clip_len, data.config.data.frame_size

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        video = self.videos[self.index.subject_idx[i]]
        clip = read_clip_by_seeking(video, int(self.index.start[i]), self.clip_len, self.size)
        return {"video": torch.from_numpy(clip), "label": torch.tensor(int(self.index.label[i]))}


def drain(loader, clips: int, epoch_hook=None) -> float:
    """Clips per second until at least `clips` clips have come out (whole batches)."""
    seen, epoch = 0, 0
    start = time.perf_counter()
    while seen < clips:
        if epoch_hook:
            epoch_hook(epoch)
        for batch in loader:
            seen += len(batch["label"])
            if seen >= clips:
                break
        epoch += 1
    return seen / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="dataset root (default: demo data generated in a temp folder)")
    parser.add_argument("--video-size", default="128x160", help="demo video WxH (the original is about 400x550)")
    parser.add_argument("--clips", type=int, default=3000, help="clips to load for the cached loader")
    parser.add_argument("--baseline-clips", type=int, default=300, help="clips to load for the per-clip baseline")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="exptrack-bench-"))
    atexit.register(shutil.rmtree, tmp, True)  # demo data, cache and runs: hundreds of MB per run
    root = Path(args.data_root) if args.data_root else tmp / "demo"
    if not args.data_root:
        w, h = (int(v) for v in args.video_size.split("x"))
        t0 = time.perf_counter()
        write_demo_dataset(root, DemoSpec(width=w, height=h))
        print(f"demo data {w}x{h}: {time.perf_counter() - t0:.1f} s")
    cfg = load_config(None, [f"data.root={root}", f"paths.cache={tmp / 'cache'}", "model.num_classes=17",
                             "data.use_masks=true", "data.use_skeleton_attention=true", "augment.enabled=true"])
    t0 = time.perf_counter()
    data = prepare_data(cfg, progress=False)
    print(f"cache build (decode once, masks, keypoints, attention): {time.perf_counter() - t0:.1f} s "
          f"for {len(data.subjects)} videos")

    loader = make_loader(data, "train", train=True, batch_size=args.batch_size, num_workers=args.workers)
    drain(loader, args.batch_size * 4)  # warm up workers and page cache
    ours = drain(loader, args.clips, epoch_hook=loader.dataset.set_epoch)

    baseline_loader = DataLoader(PerClipDecoding(data, "train"), batch_size=args.batch_size, shuffle=True,
                                 num_workers=args.workers, persistent_workers=args.workers > 0)
    drain(baseline_loader, args.batch_size)
    baseline = drain(baseline_loader, args.baseline_clips)

    batch = next(iter(loader))
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    for _ in range(5):
        prepare_batch(batch, torch.device("cpu"))
    finish_ms = (time.perf_counter() - t0) / 5 / len(batch["label"]) * 1000

    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, workers {args.workers}, "
          f"batch {args.batch_size}, frame size {cfg.data.frame_size}, clip {cfg.data.clip_len}")
    print(f"exptrack loader (cache + masks + attention + augmentation): {ours:8.0f} clips/s")
    print(f"per-clip seek + decode + resize (original approach):       {baseline:8.0f} clips/s")
    print(f"ratio: {ours / baseline:.1f}x")
    print(f"normalise on CPU (device step, per clip): {finish_ms:.2f} ms")
    ok = ours >= 1000 and ours / baseline >= 20
    print("targets (>= 1000 clips/s, >= 20x):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
