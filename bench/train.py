"""Training throughput and the cost of tracking.

1. clips/s of a training step (forward, backward, AdamW) on synthetic clips, for the demo model
   on the CPU and for the full C3D (27.8M parameters, 3x16x112x112) on the best device present
   (bf16 autocast on CUDA and the memory layout of train.channels_last="auto", as `exptrack
   train` does); bench/gpu.py measures the GPU path in detail;
2. a real `train` run of the demo config: the share of epoch time spent in MLflow logging
   (per-epoch metrics and CSV artifacts), from the run's own tracking_seconds and
   train_seconds metrics (target: < 1%), and on a GPU its mean utilisation from the run's
   MLflow system metrics (nvidia-ml-py). `--set` changes the run, e.g. the full C3D on a GPU:
   --set model.width=1.0 --set data.frame_size=112 --set train.batch_size=64

Usage: python bench/train.py [--steps 10] [--skip-run] [--set section.key=value ...]
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

from exptrack.config import TrainConfig, load_config
from exptrack.models.c3d import C3D, count_parameters
from exptrack.device import placement, resolve_device

ROOT = Path(__file__).resolve().parents[1]


def step_throughput(model: C3D, batch: int, clip: int, size: int, device: torch.device, steps: int) -> float:
    where = placement(TrainConfig(), device, strict=False)  # the defaults' precision and layout
    model = where.prepare(model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = where.input(torch.randn(batch, 3, clip, size, size, device=device))
    y = torch.randint(0, model.num_classes, (batch,), device=device)
    for i in range(steps + 2):
        if i == 2:  # after warm-up (cudnn autotune, allocator)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with where.autocast():
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def tracking_share(overrides: list[str]) -> tuple[float, float, float, str]:
    import mlflow

    from exptrack.train import train

    tmp = Path(tempfile.mkdtemp(prefix="exptrack-bench-"))
    atexit.register(shutil.rmtree, tmp, True)  # demo data, cache and runs: hundreds of MB per run
    os.chdir(tmp)
    os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # enough samples in a short run
    cfg = load_config(ROOT / "experiments" / "demo.yaml", ["train.epochs=5", "train.early_stop_patience=10", *overrides])
    result = train(cfg, progress=False)
    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    train_s = sum(m.value for m in client.get_metric_history(result.run_id, "train_seconds"))
    tracking_s = run.data.metrics["tracking_seconds"]
    return tracking_s, train_s, tracking_s / (train_s + tracking_s), gpu_utilisation(client, result.run_id)


def gpu_utilisation(client, run_id: str) -> str:  # noqa: ANN001
    """Mean utilisation of the run's own GPU from its MLflow system metrics, or why there is none.
    MLflow names GPUs by NVML's index (the physical order, whatever CUDA_VISIBLE_DEVICES says);
    the run's `gpu_nvml_index` tag says which one it trained on."""
    run = client.get_run(run_id)
    index = run.data.tags.get("gpu_nvml_index")
    if index is None:
        return f"no GPU in the run's tags (device {run.data.tags.get('device', '?')}): no GPU system metrics to read"
    samples = client.get_metric_history(run_id, f"system/gpu_{index}_utilization_percentage")
    if not samples:
        return f"no system/gpu_{index}_* metrics in the run (mlflow.log_system_metrics off, or nvidia-ml-py missing)"
    values = [m.value for m in samples]
    return (f"GPU {index} (NVML) utilisation, MLflow system metrics: mean {sum(values) / len(values):.0f}% over "
            f"{len(values)} samples")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--skip-run", action="store_true", help="skip the MLflow logging share")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the train run (repeatable)")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    cpu = torch.device("cpu")
    device = resolve_device("auto")
    demo = load_config(ROOT / "experiments" / "demo.yaml")
    demo_model = C3D(demo.model.num_classes, width=demo.model.width)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU threads, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""))
    rate = step_throughput(demo_model, demo.train.batch_size, demo.data.clip_len, demo.data.frame_size, cpu, args.steps)
    print(f"demo C3D ({count_parameters(demo_model):,} params, {demo.data.frame_size}px, batch "
          f"{demo.train.batch_size}) on cpu: {rate:8.1f} clips/s")
    full = C3D(17)
    steps = args.steps if device.type == "cuda" else 2
    batch = 32 if device.type == "cuda" else 8
    rate = step_throughput(full, batch, 16, 112, device, steps)
    print(f"full C3D ({count_parameters(full):,} params, 112px, batch {batch}) on {device.type}: {rate:8.1f} clips/s")
    if not args.skip_run:
        tracking_s, train_s, share, gpu = tracking_share(args.overrides)
        print(f"demo train run: {train_s:.1f} s training, {tracking_s:.2f} s MLflow logging per-epoch "
              f"-> {100 * share:.2f}% of epoch time (target < 1%)")
        print(gpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
