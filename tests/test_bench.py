"""bench/gpu.py (in its CPU mode, as CI can) and bench/scale.py (tiny) run and print the tables they promise."""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_device_wheels_carry_what_the_gpu_image_lacks_at_the_versions_tested_here():
    """bench/device_wheels.py: the first GPU call needs MLflow, Optuna, grad-cam and PyAV, which the
    device image lacks; what the image has (torch, numpy) and MLflow's UI stay behind (size)."""
    spec = importlib.util.spec_from_file_location("device_wheels", ROOT / "bench" / "device_wheels.py")
    assert spec is not None and spec.loader is not None
    wheels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wheels)
    carry = wheels.to_carry(wheels.requirement_closure("3.12"))
    assert {"mlflow-skinny", "optuna", "grad-cam", "av", "sqlalchemy", "alembic", "cryptography"} <= set(carry)
    assert not {"torch", "torchvision", "numpy", "mlflow", "exptrack", "psycopg"} & set(carry)
    assert carry["mlflow-skinny"] == importlib.metadata.version("mlflow-skinny")


def test_gpu_bench_runs_on_cpu_and_prints_its_table(tmp_path):
    out = tmp_path / "gpu.csv"
    leftovers = set(Path(tempfile.gettempdir()).glob("exptrack-gpu-bench-*"))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # One torch thread: on a shared 2-core machine, OpenMP threads waiting for each other turned
    # a 7 s run into 50 s. What CI checks here is that every part runs, not its speed.
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--threads", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "part  " in proc.stdout and "clips/s" in proc.stdout  # the table, printed
    rows = list(csv.DictReader(out.open()))
    by_part = lambda part: [r for r in rows if r["part"] == part]  # noqa: E731

    trained = {(r["variant"], r["batch"]): r for r in by_part("train")}
    for variant in ("fp32", "fp32+channels_last"):
        for batch in ("4", "8"):
            assert float(trained[variant, batch]["clips/s"]) > 0
            assert float(trained[variant, batch]["first step s"]) > 0
        assert [r for r in by_part("eval") if r["variant"] == variant and float(r["clips/s"]) > 0]
    assert "skipped" in trained["fp32+channels_last+compile", "-"]["note"]  # listed, with why
    (loader,) = by_part("loader")
    assert float(loader["clips/s"]) > 0 and ("keeps up" in loader["note"] or "STARVES" in loader["note"])
    (sync,) = by_part("sync")
    assert sync["note"].startswith("pass;") and "at batches 3, 6 " in sync["note"]
    (profile,) = by_part("profile")
    assert "data wait" in profile["note"]
    assert "top 10 CPU ops by self time" in proc.stdout and "fastest train step:" in proc.stdout
    assert "top 10 CPU ops" in out.with_suffix(".profile.txt").read_text()
    assert out.with_suffix(".trace.json").stat().st_size > 0
    assert set(Path(tempfile.gettempdir()).glob("exptrack-gpu-bench-*")) <= leftovers  # demo data removed


def test_gpu_check_without_a_gpu_exits_2_unless_told_to_run_on_the_cpu(tmp_path):
    """Its default --device auto fell back to the CPU, where every half-precision row is
    informational: a device call that got no GPU passed (exit 0)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--out", str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "--device auto found no CUDA GPU" in proc.stderr
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_gpu_check_runs_every_part_the_cpu_can_and_writes_its_table(tmp_path):
    """bench/gpu_check.py --device cpu: the first GPU call must not be its first run. On the CPU
    the half-precision rows are informational (on the CPU they once showed a wrong bf16 gradient)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "new" / "check"  # a folder it must create
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (out / "check.md").read_text()
    for part in ("conv3d", "c3d", "train", "evaluate", "visualize", "predict", "sysmetrics", "compile", "torchrun",
                 "speed"):
        assert f"| {part} |" in table, part
    assert "| torchrun | --nproc_per_node 1 (gloo on cpu) | pass | cpu (CPU)" in table  # what the run said
    assert "| train | defaults resolve and are logged | pass | log: cpu (CPU), fp32" in table
    assert "FAIL" not in table and "0 correctness check(s) failed" in table
    bf16_t2 = [line for line in table.splitlines() if line.startswith("| conv3d | bf16") and "T=2" in line]
    assert bf16_t2 and all("| info |" in line for line in bf16_t2)
    assert "$ " in (out / "check.log").read_text()  # the commands it ran, with their output


@pytest.mark.slow
def test_scale_bench_runs_small_and_prints_its_table_growth_and_extrapolation(tmp_path):
    leftovers = set(Path(tempfile.gettempdir()).glob("exptrack-scale-*"))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "scale.py"), "--subjects", "3,4", "--size", "96x128",
                           "--segment-frames", "8,10", "--frame-size", "32", "--workers", "1", "--loader-clips", "32",
                           "--no-step"], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| 3 |", "| 4 |"))]
    assert len(rows) == 2  # one per N
    for decoder in ("| exptrack cache build |", "| opencv |", "| pyav |", "| torchcodec |"):
        assert decoder in proc.stdout  # measured, or said to be unavailable
    assert "| cache build s |" in proc.stdout and "extrapolated to the original (60 subjects)" in proc.stdout
    assert set(Path(tempfile.gettempdir()).glob("exptrack-scale-*")) <= leftovers  # data and caches removed
