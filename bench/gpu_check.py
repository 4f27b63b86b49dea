"""The GPU self-check: correctness first, speed second, in one short device call.

Sized for the GPU windows we get (about 15 minutes in all, at most 10 for one command): at most
6 minutes on one H100-class GPU, no flag needed. It writes one Markdown table (check.md) and a
log of every command it ran (check.log) into a folder it creates, prints the table, and exits 1
when a correctness check fails (2 when the check itself could not run: no CUDA GPU under the
default --device auto, no demo data).

Correctness:
  conv3d   bf16 and fp16 autocast against fp32 for Conv3d forward and weight gradient at the
           shapes of every C3D convolution (112 px, 16 frames: T = 16, 16, 8, 8, 4, 4, 2, 2);
           torch 2.14.1's CPU bf16 weight gradient was wrong at T = 2 in one run, so the CPU cannot vouch for this
  c3d      the whole C3D's logits and parameter gradients, bf16 against fp32
  train    `exptrack train` on tiny demo data with the defaults: it must resolve to the GPU and
           the precision by capability, and say so (log line and run tags)
  evaluate, visualize --misclassified-only, predict: the real commands on that model
  compile  train.compile=true, then --resume for one more epoch
  torchrun `torchrun --nproc_per_node 1`: the run itself must say NCCL and the GPU (gloo and the CPU)
  fp16     on a GPU with bf16: one epoch with train.amp=fp16 (GradScaler), the path of GPUs without it
  sysmetrics  the GPU system metrics of the train run, read by its gpu_nvml_index tag
Speed:
  speed    the full C3D (width 1.0, 112 px) train step and eval forward, clips/s at two batch
           sizes, bf16 + channels_last_3d, eager (bench/gpu.py measures more, in 20+ minutes)

`--device cpu` runs every part that can run on the CPU at small sizes (a test keeps it working,
so the first GPU call is not its first run); the CPU's half-precision rows are informational,
since exptrack never trains in half precision there.

On a lent machine, whose image has PyTorch but not MLflow, Optuna, grad-cam or PyAV, and no way to
fetch them: run bench/device_wheels.py here first; its docstring gives the one device call.

Usage: python bench/gpu_check.py [--device auto|cuda|cpu] [--out FOLDER]
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from exptrack.data.demo import DemoSpec, write_demo_dataset
from exptrack.device import DeviceError, Precision, cudnn_version, half_precisions, resolve_device
from exptrack.models.c3d import BLOCKS, C3D
from exptrack.training.loop import grad_scaler, step

ROOT = Path(__file__).resolve().parents[1]
# Relative error (norm of the difference over the norm of the fp32 result) a half precision may
# have. bf16 keeps 8 bits of mantissa (about 4e-3 per element, accumulated in fp32); the CPU's
# wrong T=2 weight gradient is off by more than 100%.
TOLERANCE = {"bf16": 0.05, "fp16": 0.01}
TINY = DemoSpec(subjects=6, classes=3, seed=7, width=64, height=80, segment_frames=(24, 30),
                background_frames=(6, 10), dominant_factor=2.0)


@dataclass
class Row:
    part: str
    check: str
    ok: bool | None  # None: informational
    detail: str

    def markdown(self) -> str:
        verdict = {True: "pass", False: "**FAIL**", None: "info"}[self.ok]
        return f"| {self.part} | {self.check} | {verdict} | {self.detail} |"


class Checker:
    def __init__(self, device: torch.device, out: Path) -> None:
        self.device, self.out = device, out
        self.rows: list[Row] = []
        self.log = (out / "check.log").open("a")

    def add(self, part: str, check: str, ok: bool | None, detail: str) -> None:
        row = Row(part, check, ok, detail)
        self.rows.append(row)
        print(row.markdown(), flush=True)
        self.log.write(row.markdown() + "\n")
        self.log.flush()

    def guarded(self, part: str, fn: Callable[[], None]) -> None:
        """A part that raises is a failed row, and the next part still runs."""
        start = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - reported as a failure, never hidden
            self.add(part, "ran", False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
        self.log.write(f"# {part}: {time.perf_counter() - start:.1f} s\n")

    def command(self, label: str, args: list[str], env: dict[str, str], launcher: tuple[str, ...] = (),
                timeout: float = 240) -> subprocess.CompletedProcess:
        cmd = [sys.executable, *launcher, "-m", "exptrack", *args]
        self.log.write(f"\n$ {' '.join(cmd)}\n")
        proc = subprocess.run(cmd, env=env, cwd=self.out, capture_output=True, text=True, timeout=timeout)
        self.log.write(proc.stdout + proc.stderr + f"[exit {proc.returncode}]\n")
        self.log.flush()
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"{label} exited {proc.returncode}: {last[:200]}")
        return proc


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.float() - reference.float()).norm() / reference.float().norm().clamp_min(1e-30))


def verdict(errors: tuple[float, float], precision: str, informational: bool, first: str = "forward",
            second: str = "weight grad") -> tuple[bool | None, str]:
    """(ok, detail) of a (forward, gradient) relative-error pair: None (info) on the CPU, where
    exptrack never uses a half precision, with what a wrong result there is."""
    within = max(errors) < TOLERANCE[precision]  # (NaN compares False: a NaN is wrong)
    detail = f"{first} {errors[0]:.1e}, {second} {errors[1]:.1e} (limit {TOLERANCE[precision]:.0e})"
    if informational and not within:
        detail += ": WRONG on this CPU, which is why exptrack never uses half precision there"
    return (None if informational else within), detail


def conv_shapes(size: int, channels: float) -> list[tuple[int, int, int, int]]:
    """(in channels, out channels, T, H) of every C3D convolution for 16-frame clips of `size` px."""
    shapes, cin, t, h = [], 3, 16, size
    for block, outs in enumerate(BLOCKS, start=1):
        for c in outs:
            cout = max(4, round(c * channels))
            shapes.append((cin, cout, t, h))
            cin = cout
        t, h = (t, h // 2) if block == 1 else (max(1, t // 2), max(1, h // 2))
    return shapes


def check_conv3d(c: Checker, precisions: tuple[str, ...], informational: bool, size: int, width: float) -> None:
    torch.manual_seed(0)
    for cin, cout, t, h in conv_shapes(size, width):
        conv = nn.Conv3d(cin, cout, 3, padding=1).to(c.device)
        x = torch.randn(2, cin, t, h, h, device=c.device)  # (B, C, T, H, W)
        grad_out = torch.randn(2, cout, t, h, h, device=c.device)
        y = conv(x)
        (weight_grad,) = torch.autograd.grad(y, conv.weight, grad_out)
        for name in precisions:
            with Precision(name).autocast(c.device):  # type: ignore[arg-type]
                y_half = conv(x)
            (weight_grad_half,) = torch.autograd.grad(y_half, conv.weight, grad_out.to(y_half.dtype))
            errors = relative_error(y_half, y), relative_error(weight_grad_half, weight_grad)
            c.add("conv3d", f"{name} {cin}->{cout} T={t} {h}px", *verdict(errors, name, informational))


def check_c3d(c: Checker, precision: str, informational: bool, size: int, width: float) -> None:
    torch.manual_seed(0)
    model = C3D(17, width=width, dropout=0.0, dropout_fc=0.0).to(c.device).eval()  # eval: BN uses fixed stats
    x = torch.randn(4, 3, 16, size, size, device=c.device)
    y = torch.randint(0, 17, (4,), device=c.device)

    def logits_and_grads(autocast) -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        with autocast:
            logits = model(x)
        nn.functional.cross_entropy(logits.float(), y).backward()
        return logits.float().detach(), torch.cat([p.grad.flatten() for p in model.parameters()])

    ref_logits, ref_grads = logits_and_grads(Precision("fp32").autocast(c.device))
    logits, grads = logits_and_grads(Precision(precision).autocast(c.device))  # type: ignore[arg-type]
    errors = relative_error(logits, ref_logits), relative_error(grads, ref_grads)
    c.add("c3d", f"{precision} width {width} {size}px", *verdict(errors, precision, informational, "logits", "gradients"))


def tiny_sets(root: Path, out: Path, *extra: str) -> list[str]:
    sets = [f"data.root={root}", "data.demo=false", f"paths.cache={out / 'cache'}", f"paths.outputs={out / 'outputs'}",
            "model.num_classes=3", "data.frame_size=32", "data.clip_len=8", "data.train_stride=4",
            "data.eval_stride=8", "model.width=0.125", "train.batch_size=8", "train.num_workers=2",
            "train.epochs=2", "mlflow.experiment=gpu-check", *extra]
    return ["--set", *sets]


def check_commands(c: Checker, root: Path, env: dict[str, str], expected_precision: str) -> None:
    import mlflow

    proc = c.command("train", ["train", "--no-progress", *tiny_sets(root, c.out)], env)
    device_lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "device: " in line]
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    run = mlflow.search_runs(experiment_names=["gpu-check"], output_format="list", order_by=["start_time DESC"])[0]
    tags = run.data.tags
    ok = tags.get("device", "").split(":")[0] == c.device.type and tags.get("precision") == expected_precision
    c.add("train", "defaults resolve and are logged", ok,
          f"log: {device_lines[0].split('device: ', 1)[1] if device_lines else 'NO device line'}; tags device="
          f"{tags.get('device')} precision={tags.get('precision')} layout={tags.get('memory_layout')} "
          f"gpu_nvml_index={tags.get('gpu_nvml_index', '-')}")
    model = "models:/c3d-exercise/1"
    c.command("evaluate", ["evaluate", "--model", model, "--no-progress", "--save-dir", str(c.out / "evaluate")], env)
    c.add("evaluate", model, True, "exit 0")
    c.command("visualize", ["visualize", "--model", model, "--misclassified-only", "--num-samples", "2",
                            "--no-progress", "--save-dir", str(c.out / "visualize")], env)
    c.add("visualize", "--misclassified-only", True, "exit 0")
    video = sorted(root.rglob("*.mp4"))[0]
    c.command("predict", ["predict", str(video), "--model", model, "--save-dir", str(c.out / "predict")], env)
    c.add("predict", video.name, (c.out / "predict" / "segments.csv").exists(), "segments.csv written")
    check_system_metrics(c, run.info.run_id)


def check_system_metrics(c: Checker, run_id: str) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    tags = client.get_run(run_id).data.tags
    index = tags.get("gpu_nvml_index")
    if c.device.type != "cuda":
        c.add("sysmetrics", "GPU system metrics", None, "no GPU: none expected")
        return
    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith(f"system/gpu_{index}_")]
    c.add("sysmetrics", f"system/gpu_{index}_* (NVML index of the run's GPU)", index is not None and bool(keys),
          ", ".join(sorted(keys)[:4]) or "none logged")


def check_compile_resume(c: Checker, root: Path, env: dict[str, str]) -> None:
    import mlflow

    sets = tiny_sets(root, c.out, "train.compile=true", "train.epochs=1", "mlflow.experiment=gpu-compile")
    c.command("train compile", ["train", "--no-progress", *sets], env, timeout=400)
    run_id = mlflow.search_runs(experiment_names=["gpu-compile"], output_format="list")[0].info.run_id
    more = tiny_sets(root, c.out, "train.compile=true", "train.epochs=2", "mlflow.experiment=gpu-compile")
    c.command("resume compile", ["train", "--no-progress", "--resume", run_id, *more], env, timeout=400)
    steps = sorted(m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "val_loss"))
    c.add("compile", "train.compile=true, then --resume", steps == [1, 2], f"val_loss at epochs {steps}")


def check_torchrun(c: Checker, root: Path, env: dict[str, str]) -> None:
    sets = tiny_sets(root, c.out, "train.epochs=1", "mlflow.experiment=gpu-torchrun")
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1")
    proc = c.command("torchrun", ["train", "--no-progress", *sets], env, launcher)
    output = (proc.stdout + proc.stderr).splitlines()
    said = next((line.split("device: ", 1)[1] for line in output if "device: " in line), "NO device line")
    group = next((line.split("process group: ", 1)[1] for line in output if "process group: " in line), "none logged")
    backend = "nccl" if c.device.type == "cuda" else "gloo"
    ok = group.startswith(f"{backend} backend") and said.startswith(c.device.type)  # what the run itself said
    c.add("torchrun", f"--nproc_per_node 1 ({backend} on {c.device.type})", ok, f"{said}; process group: {group}")


def check_fp16(c: Checker, root: Path, env: dict[str, str]) -> None:
    """fp16 autocast with a GradScaler: the path of GPUs without bf16 (T4), which a GPU with bf16
    never takes by default."""
    import mlflow

    sets = tiny_sets(root, c.out, "train.amp=fp16", "train.epochs=1", "mlflow.experiment=gpu-fp16")
    c.command("train fp16", ["train", "--no-progress", *sets], env)
    run = mlflow.search_runs(experiment_names=["gpu-fp16"], output_format="list")[0]
    loss = run.data.metrics.get("train_loss", float("nan"))
    c.add("fp16", "train.amp=fp16 (GradScaler)", run.data.tags.get("precision") == "fp16" and math.isfinite(loss),
          f"precision={run.data.tags.get('precision')}, train_loss {loss:.4f}")


def time_steps(step: Callable[[], None], steps: int, device: torch.device) -> float:
    for _ in range(2):  # warm-up: cudnn.benchmark's autotune, the allocator
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def check_speed(c: Checker, batches: tuple[int, ...], width: float, size: int, steps: int) -> None:
    from exptrack.device import Placement, resolve_precision

    where = Placement(c.device, resolve_precision("auto", c.device, strict=False), channels_last=True)
    model = where.prepare(C3D(17, width=width))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = grad_scaler(where)  # fp16 (a GPU without bf16) steps through one, as training does
    for batch in batches:
        x = where.input(torch.randn(batch, 3, 16, size, size, device=c.device))  # (B, C, T, H, W)
        y = torch.randint(0, 17, (batch,), device=c.device)
        model.train()
        train_s = time_steps(lambda: train_step(model, optimizer, where, x, y, scaler), steps, c.device)  # noqa: B023
        model.eval()
        eval_s = time_steps(lambda: eval_step(model, where, x), steps, c.device)  # noqa: B023 - used at once
        c.add("speed", f"C3D width {width} {size}px batch {batch}, {where.precision.name} + channels_last_3d, eager",
              None, f"train {batch * steps / train_s:.1f} clips/s, eval {batch * steps / eval_s:.1f} clips/s")


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, where, x: torch.Tensor, y: torch.Tensor,
               scaler) -> None:
    """What train_one_epoch does per batch, minus the data (its own step())."""
    with where.autocast():
        loss = nn.functional.cross_entropy(model(x).float(), y)
    optimizer.zero_grad(set_to_none=True)
    step(loss, model, optimizer, 1.0, scaler)


def eval_step(model: nn.Module, where, x: torch.Tensor) -> None:
    with torch.no_grad(), where.autocast():
        model(x)


def machine(device: torch.device) -> str:
    from exptrack.device import nvml_report

    report = nvml_report()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    try:  # a device image may have no git
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    return (f"{datetime.date.today()}, {gpu}, driver {report.driver or '-'}, torch {torch.__version__} "
            f"(CUDA {torch.version.cuda}, cuDNN {cudnn_version()}), commit {commit or '?'}, device {device}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda, else exit 2: a GPU check without a GPU "
                        "proves nothing), cuda or cpu (the CPU rows)")
    parser.add_argument("--out", type=Path, help="folder to create (default: gpu_check-<date>-<time>)")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device, key="--device")
    except DeviceError as exc:
        print(f"gpu_check: cannot run: {exc}", file=sys.stderr)
        return 2
    if args.device == "auto" and device.type != "cuda":
        print(f"gpu_check: cannot run: --device auto found no CUDA GPU here (it would use {device}); "
              "`--device cpu` runs the CPU rows", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.cuda.set_device(device.index or 0)
        torch.backends.cudnn.benchmark = True  # as exptrack train sets it
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 is the reference
    out = (args.out or Path(f"gpu_check-{datetime.datetime.now():%Y%m%d-%H%M%S}")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    c = Checker(device, out)
    header = machine(device)
    print(header, flush=True)
    c.log.write(header + "\n")
    start = time.perf_counter()
    gpu = device.type == "cuda"
    halves = half_precisions(device) if gpu else ("bf16", "fp16")
    size, width = (112, 1.0) if gpu else (16, 0.125)  # the CPU rows: the same T values, small
    c.guarded("conv3d", lambda: check_conv3d(c, halves, not gpu, size, width))
    c.guarded("c3d", lambda: check_c3d(c, halves[0], not gpu, size if gpu else 32, width if gpu else 0.25))
    try:
        root = write_demo_dataset(out / "data", TINY)
    except Exception as exc:  # noqa: BLE001 - no data, no command checks: the check itself could not run
        print(f"gpu_check: cannot run: the demo data could not be written to {out / 'data'}: {exc}", file=sys.stderr)
        return 2
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}", "PYTHONUNBUFFERED": "1",
           "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])  # every part reads the runs its commands made there
    if not gpu:
        env["OMP_NUM_THREADS"] = "1"
    precision = half_precisions(device)[0] if gpu else "fp32"
    c.guarded("commands", lambda: check_commands(c, root, env, precision))
    c.guarded("compile", lambda: check_compile_resume(c, root, env))
    c.guarded("torchrun", lambda: check_torchrun(c, root, env))
    if gpu and "fp16" in halves:
        c.guarded("fp16", lambda: check_fp16(c, root, env))
    if gpu:
        c.guarded("speed", lambda: check_speed(c, (32, 96), 1.0, 112, 10))
    else:
        c.guarded("speed", lambda: check_speed(c, (2, 4), 0.125, 32, 2))
    seconds = time.perf_counter() - start
    failed = [r for r in c.rows if r.ok is False]
    table = "\n".join([f"GPU self-check: {header}", "", "| part | check | result | detail |", "|---|---|---|---|",
                       *(r.markdown() for r in c.rows), "",
                       f"{len(failed)} correctness check(s) failed; {seconds:.0f} s."])
    (out / "check.md").write_text(table + "\n")
    print()
    print(table)
    print(f"\nwritten: {out / 'check.md'}, {out / 'check.log'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
