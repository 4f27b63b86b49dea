"""`exptrack doctor`: what this machine gives and what exptrack will use on it, in seconds.

One screen: torch and its CUDA and cuDNN, the GPUs the NVIDIA driver sees (NVML) against the
GPUs torch can use, bf16, NCCL, what `train.device`, `train.amp` and `train.channels_last` of
the given config resolve to, the tracking store and the cache folder's free space. Every problem
is said with what to do; the command exits 1 when there is one. Nothing is written.
"""

from __future__ import annotations

import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from . import tracking
from .config import Config
from . import device
from .device import DeviceError, cuda_bf16, cudnn_version, training_placement, unusable_gpu_reason
from .errors import OutputError
from .outputs import check_folder_path


@dataclass
class Diagnosis:
    lines: list[tuple[str, str]] = field(default_factory=list)  # (what, finding)
    problems: list[str] = field(default_factory=list)

    def add(self, what: str, finding: str) -> None:
        self.lines.append((what, finding))

    def render(self) -> str:
        width = max(len(what) for what, _ in self.lines)
        text = [f"{what:<{width}}  {finding}" for what, finding in self.lines]
        text.append("")
        text += [f"problem: {p}" for p in self.problems] or ["no problems found"]
        return "\n".join(text)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _torch_line() -> str:
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    return (f"{torch.__version__} ({build}, cuDNN {cudnn_version()}, archs {' '.join(torch.cuda.get_arch_list()) or '-'}); "
            f"Python {platform.python_version()}")


def _gpus(d: Diagnosis) -> None:
    report = device.nvml_report()  # (looked up when called: a test injects the driver's answer)
    if report.error and not report.gpus:
        d.add("NVIDIA driver", f"none seen (NVML: {report.error[:100]})")
    else:
        cuda = f"CUDA {report.cuda_driver[0]}.{report.cuda_driver[1]}" if report.cuda_driver else "CUDA ?"
        d.add("NVIDIA driver", f"{report.driver} (supports up to {cuda})")
        for gpu in report.gpus:
            cc = f"sm_{gpu.capability[0]}{gpu.capability[1]}" if gpu.capability else "sm_?"
            d.add(f"GPU {gpu.index} (NVML)", f"{gpu.name}, {gpu.memory_gib:.1f} GiB, {cc}")
    usable = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for i in range(usable):
        props = torch.cuda.get_device_properties(i)
        bf16 = "bf16 yes" if cuda_bf16(torch.device("cuda", i)) else "bf16 no (fp16 + GradScaler)"
        d.add(f"cuda:{i} (torch)", f"{props.name}, {_gib(props.total_memory)}, sm_{props.major}{props.minor}, {bf16}")
    if not usable:
        d.add("GPUs torch uses", "none")
    reason = unusable_gpu_reason(report)
    if reason:
        d.problems.append(f"a GPU that torch cannot use: {reason}")
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if usable and dist.is_nccl_available() else None
    d.add("NCCL (multi-GPU)", nccl or ("not available" if usable else "not needed (no GPU); DDP uses gloo"))


def _resolved(d: Diagnosis, config: Config) -> None:
    t = config.train
    try:
        where = training_placement(t)
    except DeviceError as exc:
        if t.device == "auto" and d.problems:  # the unusable GPU, already said
            d.add("train runs on", "refused with train.device=auto (the GPU problem below); train.device=cpu "
                                   "trains on the CPU")
        else:
            d.add("train runs on", "refused (see below)")
            d.problems.append(str(exc))
        return
    d.add("train runs on", f"{where.describe()}  [train.device={t.device}, train.amp={str(t.amp).lower()}, "
                           f"train.channels_last={str(t.channels_last).lower()}]")
    if where.device.type == "cpu":
        d.add("", "the full C3D trains at about 1 clip/s on a CPU: for the paper's model use a GPU")


def _store(d: Diagnosis, config: Config) -> None:
    try:
        uri = tracking.check_store(config)
        d.add("tracking store", f"{uri} (usable)")
    except Exception as exc:  # noqa: BLE001 - TrackingUnavailable, ConfigError: the problem is the finding
        d.add("tracking store", "not usable (see below)")
        d.problems.append(str(exc))


def _cache(d: Diagnosis, config: Config) -> None:
    folder = Path(config.paths.cache)
    try:
        check_folder_path(folder, "paths.cache")
    except OutputError as exc:  # `cache` and `train` would refuse it
        d.add("cache folder", f"{folder} (not a folder: see below)")
        d.problems.append(str(exc))
        return
    existing = next((p for p in (folder, *folder.resolve().parents) if p.exists()), Path("/"))
    d.add("cache folder", f"{folder} ({'exists' if folder.exists() else 'not yet made'}): "
                          f"{_gib(shutil.disk_usage(existing).free)} free on its disk")


def diagnose(config: Config) -> Diagnosis:
    d = Diagnosis()
    d.add("torch", _torch_line())
    _gpus(d)
    _resolved(d, config)
    _store(d, config)
    _cache(d, config)
    return d
