"""The GPU path, end to end: one command, one table.

Rows of the table:
  train   a full C3D train step (forward, focal loss, backward, gradient clipping, AdamW) on
          synthetic clips for fp32, bf16, bf16 + channels_last_3d and bf16 + channels_last_3d +
          torch.compile, at each --batches size and at the largest batch that fits: clips/s over
          timed steps after warm-up, peak device memory, and, in a column of its own, the time of
          the first step (cudnn.benchmark autotune, compilation), which clips/s leaves out
  eval    no_grad forward (bf16, channels_last_3d) at a large batch
  loader  exptrack's train loader (masks, skeleton attention, augmentation; one worker per core)
          against the fastest train step's demand: does it starve the GPU?
  sync    the real train_one_epoch on the real loader under torch.cuda.set_sync_debug_mode:
          host synchronisations only at the train.sync_every checks?
  profile data-wait share of a few real-loader steps; after the table, the top 10 CUDA kernels
          of a torch.profiler trace (summary and trace written next to --out)

How long: on one H100-class GPU, about 20-30 minutes by its design (a batch search that doubles
up to 16,384, cuDNN autotune for every probe in three variants, about five compilations of the
full C3D); not yet run on a GPU. Our GPU windows are shorter: run bench/gpu_check.py first (at
most 6 minutes), and this with --no-max --no-compile when a window allows.

Without CUDA, or with --device cpu, it runs a small model (width 0.25, 32 px, batches 4 and 8,
a few steps) so that CI can check that it runs in well under a minute; the variants are then
the two memory layouts, the choice behind train.channels_last="auto" on the CPU.

Usage: python bench/gpu.py [--device auto|cuda|cpu] [--steps N] [--batches 8,32,64] [--width W]
                           [--size PX] [--threads N] [--no-max] [--no-compile] [--out table.md|.csv]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import itertools
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

# Kineto (torch.profiler) logs every start and stop, and an ERROR line on a machine without a GPU.
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

import torch
from torch import nn

from exptrack.config import Config, load_config
from exptrack.data.dataset import make_loader
from exptrack.data.demo import DemoSpec, write_demo_dataset
from exptrack.data.prepare import prepare_data
from exptrack.losses import FocalLoss
from exptrack.models.c3d import C3D, count_parameters
from hostsync import check_syncs  # bench/hostsync.py, beside this script
from exptrack.device import FP32, Placement, Precision, memory_format, resolve_device
from exptrack.training.loop import train_one_epoch

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 17


@dataclass(frozen=True)
class Variant:
    name: str
    bf16: bool
    channels_last: bool
    compile: bool = False


CUDA_VARIANTS = (Variant("fp32", False, False), Variant("bf16", True, False),
                 Variant("bf16+channels_last", True, True), Variant("bf16+channels_last+compile", True, True, True))
CPU_VARIANTS = (Variant("fp32", False, False), Variant("fp32+channels_last", False, True),
                Variant("fp32+channels_last+compile", False, True, True))


@dataclass(frozen=True)
class Spec:
    """What one mode measures."""

    width: float
    size: int
    clip: int
    batches: tuple[int, ...]
    steps: int
    warmup: int
    eval_batch: int
    find_max: bool
    compile: bool
    loader_clips: int
    demo: DemoSpec
    sync_batches: int
    sync_every: int


CUDA_SPEC = Spec(width=1.0, size=112, clip=16, batches=(8, 32, 64), steps=20, warmup=3, eval_batch=256,
                 find_max=True, compile=True, loader_clips=3000, sync_batches=12, sync_every=5,
                 demo=DemoSpec(subjects=6, classes=6, width=128, height=160))
CPU_SPEC = Spec(width=0.25, size=32, clip=16, batches=(4, 8), steps=3, warmup=2, eval_batch=16,
                find_max=False, compile=False, loader_clips=160, sync_batches=6, sync_every=3,
                demo=DemoSpec(subjects=4, classes=3, width=48, height=64, segment_frames=(24, 30),
                              background_frames=(6, 10)))


@dataclass
class Row:
    part: str
    variant: str
    batch: str
    clips_s: float | None = None
    peak_gib: float | None = None
    first_step_s: float | None = None
    note: str = ""

    def cells(self) -> list[str]:
        def fmt(v: float | None, spec: str) -> str:
            return "-" if v is None else format(v, spec)
        rate = ".2f" if self.clips_s is not None and self.clips_s < 10 else ".1f"
        return [self.part, self.variant, self.batch, fmt(self.clips_s, rate), fmt(self.peak_gib, ".2f"),
                fmt(self.first_step_s, ".2f"), self.note]


HEADER = ["part", "variant", "batch", "clips/s", "peak GiB", "first step s", "note"]


# ---------------------------------------------------------------------------------------------
# device helpers


_START = time.perf_counter()


def progress(what: str) -> None:
    """Where the run is (stderr), so that a slow part shows itself."""
    print(f"[{time.perf_counter() - _START:6.1f} s] {what}", file=sys.stderr, flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc)


# ---------------------------------------------------------------------------------------------
# train and eval steps on synthetic clips


def precision_of(variant: Variant) -> Precision:
    return Precision("bf16") if variant.bf16 else FP32


def build(spec: Spec, variant: Variant, device: torch.device, train: bool) -> nn.Module:
    model = C3D(NUM_CLASSES, width=spec.width).to(device, memory_format=memory_format(variant.channels_last))
    model.train(train)
    if variant.compile:
        torch._dynamo.reset()  # every compiled row pays its own compilation, as a fresh process would
        model = torch.compile(model)
    return model


def synthetic_batch(spec: Spec, batch: int, variant: Variant, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, 3, spec.clip, spec.size, spec.size, device=device)  # (B, C, T, H, W)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    return x.contiguous(memory_format=memory_format(variant.channels_last)), y


def train_step_fn(model: nn.Module, variant: Variant, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """What train_one_epoch does per batch, minus the data: the same loss, clipping and optimizer."""
    criterion = FocalLoss(2.0, torch.ones(NUM_CLASSES, device=device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-5)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with precision_of(variant).autocast(device):
            logits = model(x)
        loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step


def eval_step_fn(model: nn.Module, variant: Variant, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], None]:
    def step(x: torch.Tensor, _: torch.Tensor) -> None:
        with torch.no_grad(), precision_of(variant).autocast(device):
            model(x)

    return step


@dataclass(frozen=True)
class Timing:
    clips_s: float
    peak_gib: float | None
    first_step_s: float


def measure(spec: Spec, variant: Variant, batch: int, device: torch.device, train: bool = True,
            steps: int | None = None) -> Timing:
    """clips/s over `steps` timed steps after the first step and spec.warmup - 1 more."""
    steps = steps if steps is not None else spec.steps
    model = build(spec, variant, device, train)
    step = (train_step_fn if train else eval_step_fn)(model, variant, device)
    x, y = synthetic_batch(spec, batch, variant, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        synchronize(device)
        start = time.perf_counter()
        step(x, y)
        synchronize(device)
        first = time.perf_counter() - start
        for _ in range(spec.warmup - 1):
            step(x, y)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step(x, y)
        synchronize(device)
        return Timing(batch * steps / (time.perf_counter() - start), peak_gib(device), first)
    finally:
        del model, step, x, y
        free_memory(device)


def fits(spec: Spec, variant: Variant, batch: int, device: torch.device) -> bool:
    """Two train steps (the second holds the optimizer state too) without running out of memory."""
    try:
        measure(replace(spec, warmup=1), variant, batch, device, steps=1)
        return True
    except RuntimeError as exc:
        if not is_oom(exc):
            raise
    free_memory(device)  # out here: the traceback and the tensors it holds are gone
    return False


def largest_batch(spec: Spec, variant: Variant, fitting: int, device: torch.device, limit: int = 16384) -> int:
    """Doubling from a batch that fits, then bisection to within 1/8 (each probe autotunes a
    new shape: a finer search costs minutes of GPU time for a few percent)."""
    low, high = fitting, fitting * 2
    while high <= limit and fits(spec, variant, high, device):
        low, high = high, high * 2
    while high - low > max(1, low // 8):
        mid = (low + high) // 2
        low, high = (mid, high) if fits(spec, variant, mid, device) else (low, mid)
    return low


def train_rows(spec: Spec, variants: Iterable[Variant], device: torch.device) -> tuple[list[Row], dict[str, int]]:
    rows: list[Row] = []
    largest: dict[str, int] = {}
    for variant in variants:
        if variant.compile and not spec.compile:
            rows.append(Row("train", variant.name, "-", note="skipped: compiling takes minutes on a small CPU"))
            continue
        fitting = 0
        for batch in spec.batches:
            rows.append(train_row(spec, variant, batch, device))
            progress(f"train {variant.name} batch {batch}")
            if rows[-1].clips_s is not None:
                fitting = batch
        if spec.find_max and fitting:
            if variant.compile:  # compiling every probed size would take minutes: the eager limit
                batch = largest.get(variant.name.removesuffix("+compile"), fitting)
            else:
                batch = largest_batch(spec, variant, fitting, device)
            largest[variant.name] = batch
            progress(f"train {variant.name}: largest batch {batch}")
            row = train_row(spec, variant, batch, device)
            row.batch, row.note = f"max {batch}", (row.note or "largest that fits (to 1/8)")
            rows.append(row)
    return rows, largest


def train_row(spec: Spec, variant: Variant, batch: int, device: torch.device, train: bool = True) -> Row:
    part = "train" if train else "eval"
    try:
        t = measure(spec, variant, batch, device, train=train)
        return Row(part, variant.name, str(batch), t.clips_s, t.peak_gib, t.first_step_s)
    except RuntimeError as exc:
        if not is_oom(exc):
            raise
    free_memory(device)
    return Row(part, variant.name, str(batch), note="out of memory")


def eval_rows(spec: Spec, variants: Iterable[Variant], device: torch.device) -> list[Row]:
    rows = []
    for variant in variants:
        batch = spec.eval_batch
        row = train_row(spec, variant, batch, device, train=False)
        while row.note == "out of memory" and batch > 1:
            batch //= 2
            row = train_row(spec, variant, batch, device, train=False)
        rows.append(row)
        progress(f"eval {variant.name} batch {batch}")
    return rows


# ---------------------------------------------------------------------------------------------
# the real loader, the real train_one_epoch


def demo_config(root: Path, tmp: Path, spec: Spec) -> Config:
    return load_config(None, [f"data.root={root}", f"paths.cache={tmp / 'cache'}", f"paths.outputs={tmp / 'out'}",
                              f"model.num_classes={NUM_CLASSES}", "model.rest_class=false", f"data.frame_size={spec.size}",
                              f"data.clip_len={spec.clip}", "data.use_masks=true", "data.use_skeleton_attention=true",
                              "augment.enabled=true", "data.demo=false"])


class Timed:
    """An iterable whose `wait` is the time spent waiting for its next item."""

    def __init__(self, iterable: Iterable) -> None:
        self.iterable, self.wait = iterable, 0.0

    def __iter__(self) -> Iterator:
        it = iter(self.iterable)
        while True:
            start = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                self.wait += time.perf_counter() - start
            yield item


def batches_of(loader, n: int) -> Iterator:
    """`n` batches, through as many epochs as needed."""
    for epoch in itertools.count(1):
        loader.dataset.set_epoch(epoch)
        for batch in loader:
            if n == 0:
                return
            n -= 1
            yield batch
        if n == 0:
            return


def loader_rate(loader, clips: int) -> float:
    for _ in batches_of(loader, 2):  # workers started, page cache warm
        pass
    seen, start = 0, time.perf_counter()
    for batch in batches_of(loader, max(1, clips // loader.batch_size)):
        seen += len(batch["label"])
    return seen / (time.perf_counter() - start)


def real_epoch(spec: Spec, variant: Variant, device: torch.device, sync_every: int) -> Callable[[Iterable], dict]:
    model = build(spec, variant, device, train=True)
    criterion = FocalLoss(2.0, torch.ones(NUM_CLASSES, device=device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-5)

    def run(loader: Iterable) -> dict:
        return train_one_epoch(model, loader, criterion, optimizer,
                               Placement(device, precision_of(variant), variant.channels_last), progress=False,
                               sync_every=sync_every)

    return run


def profile_summary(prof: torch.profiler.profile, device: torch.device, top: int = 10) -> str:
    cuda = device.type == "cuda"
    kind = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU

    def self_time(e) -> float:  # noqa: ANN001
        if cuda:
            return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)
        return e.self_cpu_time_total

    events = [e for e in prof.key_averages() if e.device_type == kind and self_time(e) > 0]
    total = sum(self_time(e) for e in events) or 1.0
    lines = [f"top {top} {'CUDA kernels' if cuda else 'CPU ops'} by self time:"]
    for e in sorted(events, key=self_time, reverse=True)[:top]:
        lines.append(f"  {100 * self_time(e) / total:5.1f}%  {self_time(e) / 1e3:9.1f} ms  {e.count:5d}x  {e.key[:100]}")
    return "\n".join(lines)


def loader_rows(spec: Spec, variant: Variant, batch: int, demand: float, device: torch.device,
                out: Path | None) -> tuple[list[Row], str]:
    workers = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="exptrack-gpu-bench-") as tmp_name:
        tmp = Path(tmp_name)
        root = write_demo_dataset(tmp / "demo", spec.demo)
        data = prepare_data(demo_config(root, tmp, spec), splits=("train",), progress=False)
        progress(f"demo data written and cached ({len(data.splits['train'])} train clips)")
        loader = make_loader(data, "train", train=True, batch_size=batch, num_workers=workers,
                             pin_memory=device.type == "cuda")
        try:
            rate = loader_rate(loader, spec.loader_clips)
            progress("loader")
            verdict = "keeps up" if rate >= demand else "STARVES the device"
            rows = [Row("loader", f"{workers} workers, masks+attention+augment", str(batch), rate,
                        note=f"train step demand {demand:.0f} clips/s ({variant.name}): {verdict} ({rate / demand:.2f}x)")]
            sync_row, profile_row, text = real_loader_rows(spec, variant, batch, loader, device, out)
        finally:
            del loader  # its persistent workers exit before the folder goes
            gc.collect()
    return [*rows, sync_row, profile_row], text


def real_loader_rows(spec: Spec, variant: Variant, batch: int, loader, device: torch.device,
                     out: Path | None) -> tuple[Row, Row, str]:
    epoch = real_epoch(spec, variant, device, spec.sync_every)
    epoch(list(batches_of(loader, 2)))  # cudnn autotune, lazy optimizer state: not per-step costs
    if device.type == "cuda":  # the real loader, pinned memory and all
        check = check_syncs(epoch, batches_of(loader, spec.sync_batches), device, spec.sync_every)
    else:  # the host-read count needs batches that no Dataset code in this process touches
        check = check_syncs(epoch, list(batches_of(loader, spec.sync_batches)), device, spec.sync_every)
    sync_row = Row("sync", variant.name, str(batch), note=check.summary())
    progress("sync check")

    timed = Timed(batches_of(loader, spec.sync_batches))
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        metrics = epoch(timed)
        synchronize(device)
    wall = time.perf_counter() - start
    progress("profile")
    share = timed.wait / wall
    profile_row = Row("profile", variant.name, str(batch), metrics["train_clips_per_s"],
                      note=f"data wait {100 * share:.0f}% of {spec.sync_batches} real-loader steps ({wall:.1f} s, profiled)")
    text = (f"profile: {spec.sync_batches} steps of train_one_epoch on the real loader, {variant.name}, batch {batch}; "
            f"waiting for data {timed.wait:.2f} s of {wall:.2f} s ({100 * share:.0f}%)\n" + profile_summary(prof, device))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)  # (before: a missing folder lost the trace)
        prof.export_chrome_trace(str(out.with_suffix(".trace.json")))
    return sync_row, profile_row, text


# ---------------------------------------------------------------------------------------------
# report


def machine_line(device: torch.device, spec: Spec) -> str:
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{os.cpu_count()}-core CPU, {torch.get_num_threads()} torch threads")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                                timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    model = C3D(NUM_CLASSES, width=spec.width)
    return (f"{datetime.date.today()} | {name} | torch {torch.__version__} | commit {commit} | "
            f"C3D width {spec.width} ({count_parameters(model):,} params), {spec.clip}x{spec.size}x{spec.size} clips"
            f"{' | fp32 = PyTorch default (cuDNN may use TF32)' if device.type == 'cuda' else ''}")


def render(rows: list[Row]) -> str:
    table = [HEADER] + [r.cells() for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER) - 1)]
    lines = []
    for i, line in enumerate(table):  # a row has one cell more than widths: the last
        lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)) + "  " + line[-1])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 4)
    return "\n".join(lines)


def write_table(rows: list[Row], out: Path, header: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        with out.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(HEADER)
            writer.writerows(r.cells() for r in rows)
        return
    lines = [header, "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r.cells()) + " |" for r in rows]
    out.write_text("\n".join(lines) + "\n")


def fastest(rows: list[Row], part: str) -> Row | None:
    measured = [r for r in rows if r.part == part and r.clips_s is not None]
    return max(measured, key=lambda r: r.clips_s) if measured else None


def defaults_line(rows: list[Row], device: torch.device) -> str:
    best = fastest(rows, "train")
    if best is None:
        return "no train step measured"
    from exptrack.config import TrainConfig
    from exptrack.device import resolve_precision, use_channels_last

    d = TrainConfig()
    default = resolve_precision(d.amp, device, strict=False).name + \
        ("+channels_last" if use_channels_last(d.channels_last, device) else "") + ("+compile" if d.compile else "")
    same = best.variant == default
    return (f"fastest train step: {best.variant} at batch {best.batch} ({best.clips_s:.1f} clips/s); "
            f"the defaults on {device.type} run {default}: {'the fastest' if same else 'NOT the fastest'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cuda or cpu")
    parser.add_argument("--steps", type=int, help="timed steps per row (default: 20 on CUDA, 3 on CPU)")
    parser.add_argument("--batches", help="comma-separated train batch sizes (default: 8,32,64 on CUDA, 4,8 on CPU)")
    parser.add_argument("--width", type=float, help="C3D width (default: 1.0 on CUDA, 0.25 on CPU)")
    parser.add_argument("--size", type=int, help="frame size in pixels (default: 112 on CUDA, 32 on CPU)")
    parser.add_argument("--no-max", action="store_true", help="skip the search for the largest batch that fits")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice)")
    parser.add_argument("--out", type=Path, help="also write the table (.md or .csv), the profile summary "
                                                 "(.profile.txt) and the trace (.trace.json) there")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type not in ("cuda", "cpu"):
        device = torch.device("cpu")  # the small model: what CI checks
    spec = CUDA_SPEC if device.type == "cuda" else CPU_SPEC
    variants = CUDA_VARIANTS if device.type == "cuda" else CPU_VARIANTS
    spec = replace(spec, steps=args.steps or spec.steps, width=args.width or spec.width, size=args.size or spec.size, find_max=spec.find_max and not args.no_max,
                   compile=spec.compile and not args.no_compile,
                   batches=tuple(int(b) for b in args.batches.split(",")) if args.batches else spec.batches)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as exptrack train sets it
    header = machine_line(device, spec)
    print(header, flush=True)
    if device.type == "cuda" and (spec.find_max or spec.compile):
        print("this takes 20-30 minutes on one GPU (largest-batch search, compiled rows); bench/gpu_check.py is the "
              "6-minute check, and --no-max --no-compile the short form of this one", flush=True)
    start = time.perf_counter()

    rows, _ = train_rows(spec, variants, device)
    best = fastest(rows, "train")
    # eval: bf16 + channels_last, eager and compiled, on CUDA; both layouts on the CPU
    evaluated = variants[2:] if device.type == "cuda" else variants[:2]
    rows += eval_rows(spec, [v for v in evaluated if spec.compile or not v.compile], device)
    text = ""
    if best is not None:
        best_variant = next(v for v in variants if v.name == best.variant)
        run_variant = replace(best_variant, compile=False, name=best_variant.name.replace("+compile", ""))
        batch = min(int(best.batch.removeprefix("max ")), max(spec.batches))  # a batch the loader is tuned for
        demand = best.clips_s
        loader, text = loader_rows(spec, run_variant, batch, demand, device, args.out)
        rows += loader
    print()
    print(render(rows))
    print()
    print(defaults_line(rows, device))
    print(f"bench time {time.perf_counter() - start:.0f} s")
    if text:
        print()
        print(text)
    if args.out:
        write_table(rows, args.out, header)
        args.out.with_suffix(".profile.txt").write_text(header + "\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
