"""Where and how a model runs: the device, the precision and the memory layout.

One rule for every command. Training resolves `train.device`, `train.amp` and
`train.channels_last` strictly: a setting this machine cannot honour is a ConfigError naming the
key. Scoring (validate, evaluate, compare, visualize, predict, serving) takes the same settings
from the model's own config, so a model is scored the way it was trained; where the device lacks
the model's half precision it scores in fp32 and says so.

Why the GPU checks are here: torch from PyPI is built for one CUDA version and a list of GPU
architectures. On a host whose NVIDIA driver is older than that build needs,
`torch.cuda.is_available()` is False and "auto" would train the full C3D on the CPU at about 1
clip/s; NVML (nvidia-ml-py, the driver's own library) still sees such GPUs, so exptrack compares
the two and refuses to fall back silently. A GPU older than the build's architectures is another
case: torch counts it as available (it only warns) and the first kernel fails with "no kernel
image is available", after the data is prepared; exptrack checks each visible GPU's capability
against the build's architectures first.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, ContextManager, Literal

import torch

from .config import DEVICE, ConfigError

log = logging.getLogger("exptrack.device")


class DeviceError(ConfigError):
    """A device, precision or layout setting that this machine cannot honour (exit 2)."""


# ---------------------------------------------------------------------------------------------
# What the NVIDIA driver sees (NVML), whatever torch can use


@dataclass(frozen=True)
class NvmlGpu:
    index: int  # NVML's numbering: the physical order, which ignores CUDA_VISIBLE_DEVICES
    name: str
    uuid: str
    memory_gib: float
    capability: tuple[int, int] | None


@dataclass(frozen=True)
class NvmlReport:
    gpus: tuple[NvmlGpu, ...] = ()
    driver: str = ""
    cuda_driver: tuple[int, int] | None = None  # the newest CUDA version the driver supports
    error: str = ""  # why NVML could not be asked (no driver: the usual case on a CPU machine)


def nvml_report() -> NvmlReport:
    """The GPUs the NVIDIA driver reports, via NVML; empty (with `error`) without a driver."""
    try:
        import pynvml
    except ImportError:
        return NvmlReport(error="nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        return NvmlReport(error=f"{type(exc).__name__}: {exc}")
    try:
        count = pynvml.nvmlDeviceGetCount()
    except Exception as exc:  # noqa: BLE001 - a driver in a bad state: say so, never crash a command
        _ask(pynvml.nvmlShutdown, None)
        return NvmlReport(error=f"{type(exc).__name__}: {exc}")
    try:
        # Each detail on its own: a GPU whose memory or name NVML cannot read still counts as a
        # GPU (an empty list would let train.device=auto fall back to the CPU unnoticed).
        raw = _ask(pynvml.nvmlSystemGetCudaDriverVersion, 0)  # e.g. 12040 for CUDA 12.4
        gpus = []
        for i in range(count):
            handle = _ask(lambda i=i: pynvml.nvmlDeviceGetHandleByIndex(i), None)
            capability = _ask(lambda h=handle: tuple(int(v) for v in pynvml.nvmlDeviceGetCudaComputeCapability(h)), None)
            gpus.append(NvmlGpu(i, _text(_ask(lambda h=handle: pynvml.nvmlDeviceGetName(h), "NVIDIA GPU (name unknown)")),
                                _text(_ask(lambda h=handle: pynvml.nvmlDeviceGetUUID(h), "")),
                                _ask(lambda h=handle: pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**30, 0.0),
                                capability))
        return NvmlReport(tuple(gpus), _text(_ask(pynvml.nvmlSystemGetDriverVersion, "?")),
                          (raw // 1000, raw % 1000 // 10) if raw else None)
    finally:
        _ask(pynvml.nvmlShutdown, None)


def _ask(call: Any, default: Any) -> Any:
    """One NVML query, or `default` when the driver does not answer it."""
    try:
        return call()
    except Exception:  # noqa: BLE001 - NVMLError_NotSupported and kin
        return default


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _version(text: str | None) -> tuple[int, int] | None:
    found = re.match(r"(\d+)\.(\d+)", text or "")
    return (int(found.group(1)), int(found.group(2))) if found else None


def runs_on(capability: tuple[int, int], arches: list[str]) -> bool:
    """Whether a build for `arches` (torch.cuda.get_arch_list(): sm_75, sm_90a, compute_120...)
    has kernels for a GPU of `capability`: a binary of the same major version and no newer minor
    one (sm_86 runs on 8.9, sm_75 not on 7.0), or PTX of the same or an older one (compute_XY).
    True when the list says nothing (torch then decides)."""
    parsed = [(m.group(1), int(m.group(2)), int(m.group(3)))
              for m in (re.fullmatch(r"(sm|compute)_(\d+)(\d)[a-z]?", a) for a in arches) if m]
    if not parsed:
        return True
    return any((kind == "sm" and major == capability[0] and minor <= capability[1])
               or (kind == "compute" and (major, minor) <= capability) for kind, major, minor in parsed)


def _unsupported_cuda_gpu() -> str:
    """Why a GPU torch counts as available has no kernels in this build; "" when every one has."""
    arches = torch.cuda.get_arch_list()
    for index in range(torch.cuda.device_count()):
        capability = torch.cuda.get_device_capability(index)
        if not runs_on(capability, arches):
            return (f"{torch.cuda.get_device_name(index)} (cuda:{index}) is sm_{capability[0]}{capability[1]}; this "
                    f"torch ({torch.__version__}) has kernels for {' '.join(arches)} only: use a newer GPU, or a torch "
                    "build that supports it")
    return ""


def unusable_gpu_reason(report: NvmlReport) -> str:
    """Why torch cannot use the GPUs the driver sees, with what to do; "" when it can (or when
    there are none)."""
    if torch.cuda.is_available():
        return _unsupported_cuda_gpu()
    if not report.gpus:
        return ""
    build = _version(torch.version.cuda)
    if build is None:
        return (f"this torch ({torch.__version__}) is a CPU-only build: install the CUDA build "
                f"(pip install torch=={torch.__version__.split('+')[0]} from PyPI)")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU: unset it or name the GPUs to use"
    if report.cuda_driver is not None and report.cuda_driver[0] < build[0]:
        return (f"the NVIDIA driver {report.driver} supports CUDA up to {report.cuda_driver[0]}.{report.cuda_driver[1]}, "
                f"but this torch ({torch.__version__}) is built for CUDA {torch.version.cuda}: update the driver, or "
                f"install a torch build for CUDA {report.cuda_driver[0]}")
    arches = torch.cuda.get_arch_list()
    old = [g for g in report.gpus if g.capability and not runs_on(g.capability, arches)]
    if old:
        cc = old[0].capability or (0, 0)
        return (f"{old[0].name} is sm_{cc[0]}{cc[1]}; this torch ({torch.__version__}) has kernels for "
                f"{' '.join(arches)} only: use a newer GPU, or a torch build that supports it")
    if visible is not None:
        return f"CUDA_VISIBLE_DEVICES={visible!r} names no GPU torch can open: check the indices or UUIDs it lists"
    return "torch cannot initialise CUDA (see torch's warning above): check the driver with nvidia-smi"


# ---------------------------------------------------------------------------------------------
# Device


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(name: str = "auto", key: str = "train.device") -> torch.device:
    """'auto' picks cuda > mps > cpu; anything else is checked against this machine. 'auto' on
    a machine whose driver sees GPUs that torch cannot use is refused, saying why: the full C3D
    would otherwise train on the CPU unnoticed. An explicit 'cpu' is always taken."""
    if not DEVICE.fullmatch(name):
        raise DeviceError(f"{key}={name!r}: expected auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda") and not torch.cuda.is_available():
        reason = unusable_gpu_reason(nvml_report()) or "it has no NVIDIA GPU"
        raise DeviceError(f"{key}={name}: this machine has no CUDA device torch can use ({reason}); "
                          f"use {key}=cpu or auto")
    if name.startswith("cuda") or (name == "auto" and torch.cuda.is_available()):
        if reason := _unsupported_cuda_gpu():
            raise DeviceError(f"{key}={name}: {reason}. To run on the CPU anyway, set {key}=cpu")
    if name.startswith("cuda:") and int(name.split(":")[1]) >= torch.cuda.device_count():
        raise DeviceError(f"{key}={name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if name == "mps" and not _mps_available():
        raise DeviceError(f"{key}=mps: this machine has no MPS device; use cpu or auto")
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    reason = unusable_gpu_reason(nvml_report())
    if reason:
        raise DeviceError(f"{key}=auto: the NVIDIA driver sees a GPU that torch cannot use: {reason}. To run on "
                          f"the CPU anyway, set {key}=cpu (exptrack doctor shows the details)")
    return torch.device("mps") if _mps_available() else torch.device("cpu")


def bind(device: torch.device) -> torch.device:
    """Make a CUDA device the current one (pinned-memory thread, caching allocator, NCCL and
    every bare .cuda() use it); without this, work on cuda:1 also opens a context on GPU 0.
    Returns the device with its index."""
    if device.type != "cuda":
        return device
    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def cudnn_version() -> str:
    """cuDNN's version as people write it (92400 -> 9.24.0); "none" without cuDNN."""
    raw = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return f"{raw // 10000}.{raw % 10000 // 100}.{raw % 100}" if raw else "none"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return {"cpu": "CPU", "mps": "Apple GPU (MPS)"}.get(device.type, device.type)


def nvml_index(device: torch.device, report: NvmlReport | None = None) -> int | None:
    """NVML's index of a CUDA device (MLflow's system metrics name GPUs `gpu_<NVML index>`, in
    the physical order, whatever CUDA_VISIBLE_DEVICES says); None when unknown."""
    if device.type != "cuda":
        return None
    report = report or nvml_report()
    uuid = str(torch.cuda.get_device_properties(device).uuid)
    for gpu in report.gpus:
        if gpu.uuid.removeprefix("GPU-") == uuid.removeprefix("GPU-"):
            return gpu.index
    return None


# ---------------------------------------------------------------------------------------------
# Precision


PrecisionName = Literal["bf16", "fp16", "fp32"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """The autocast dtype of the forward pass (fp32: no autocast). fp16's narrow range needs a
    GradScaler in training; bf16 has fp32's range and needs none."""

    name: PrecisionName = "fp32"

    @property
    def dtype(self) -> torch.dtype | None:
        return DTYPES.get(self.name)

    @property
    def needs_scaler(self) -> bool:
        return self.name == "fp16"

    def autocast(self, device: torch.device) -> ContextManager[Any]:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)


FP32 = Precision("fp32")


def cuda_bf16(device: torch.device) -> bool:
    """Native bf16 (Ampere, sm_80, and newer). torch's is_bf16_supported() is also True on sm_75
    through emulation, which is slow: not what "the card has bf16" means here."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def half_precisions(device: torch.device) -> tuple[PrecisionName, ...]:
    """The half precisions exptrack uses on `device`, best first. CPU: none: torch 2.14.1's bf16
    Conv3d weight gradient on the CPU is wrong whenever the time dimension is 2 (block 5 of
    every 16-frame C3D; a tiny run went NaN in epoch 2), and CPU fp16 convolutions are slower
    than fp32. MPS: none, unmeasured."""
    if device.type != "cuda":
        return ()
    return ("bf16", "fp16") if cuda_bf16(device) else ("fp16",)


AmpSetting = Literal["auto", True, False, "bf16", "fp16"]


def resolve_precision(amp: AmpSetting, device: torch.device, *, strict: bool, key: str = "train.amp") -> Precision:
    """`train.amp` on `device`: "auto" = the best half precision the device has, else fp32;
    True = the best half precision, which must exist; "bf16"/"fp16" = that one; False = fp32.
    `strict` (training): a demand the device cannot meet is a DeviceError. Not strict (scoring a
    model with its own setting): fp32, with a warning."""
    if amp is False or amp == "fp32":
        return FP32
    available = half_precisions(device)
    wanted: tuple[PrecisionName, ...] = available if amp in ("auto", True) else (amp,)  # type: ignore[assignment]
    for name in wanted:
        if name in available:
            return Precision(name)
    if amp == "auto":
        return FP32
    has = ", ".join(available) or "no half precision exptrack trusts there"
    message = f"{key}={str(amp).lower()}: {device_name(device)} ({device}) has {has}"
    if strict:
        raise DeviceError(f"{message}; use {key}=auto (the best this device has) or false")
    log.warning("%s: scoring in fp32", message)
    return FP32


# ---------------------------------------------------------------------------------------------
# Memory layout

# Device types on which train.channels_last="auto" means channels_last_3d. CUDA: NVIDIA's
# guidance for tensor-core convolutions is channels-last (NDHWC) memory; not yet measured here
# (bench/gpu.py's bf16 and bf16+channels_last rows compare the two: update this if they disagree). CPU:
# oneDNN's Conv3d measured as fast or faster in channels_last_3d: demo model +15-45% train,
# +50% eval; full C3D equal train, +20% eval (bench/gpu.py --device cpu, bench/RESULTS.md).
# MPS is left out: unmeasured.
CHANNELS_LAST_DEVICES = frozenset({"cuda", "cpu"})


def use_channels_last(setting: str | bool, device: torch.device) -> bool:
    """train.channels_last ("auto", True or False) resolved for `device`."""
    if setting == "auto":
        return device.type in CHANNELS_LAST_DEVICES
    return bool(setting)


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last_3d if channels_last else torch.contiguous_format


def to_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A (B, C, T, H, W) batch in the model's memory layout. A convolution runs channels-last as
    soon as its input or its weight is, so a contiguous model needs a contiguous input as well
    (to_model_input returns a channels-last view); a no-op when the layout already matches."""
    return x.contiguous(memory_format=memory_format(channels_last))


# ---------------------------------------------------------------------------------------------
# The whole rule


@dataclass(frozen=True)
class Placement:
    """Where and how a model runs: what every command resolves once and passes down."""

    device: torch.device
    precision: Precision = FP32
    channels_last: bool = False
    name: str = field(default="", compare=False)  # the device's product name, for people

    @property
    def layout(self) -> str:
        return "channels_last_3d" if self.channels_last else "contiguous"

    def describe(self) -> str:
        precision = f"{self.precision.name} autocast" if self.precision.dtype is not None else "fp32"
        scaler = " + GradScaler" if self.precision.needs_scaler else ""
        return f"{self.device} ({self.name or device_name(self.device)}), {precision}{scaler}, {self.layout}"

    def tags(self) -> dict[str, str]:
        return {"device": str(self.device), "device_name": self.name or device_name(self.device),
                "precision": self.precision.name, "memory_layout": self.layout}

    def autocast(self) -> ContextManager[Any]:
        return self.precision.autocast(self.device)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model on this device, in this layout."""
        return model.to(self.device).to(memory_format=memory_format(self.channels_last))

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return to_layout(x, self.channels_last)


def placement(train_config: Any, device: torch.device, *, strict: bool, trained: str | None = None) -> Placement:
    """The one rule: `train_config` is a TrainConfig (its amp and channels_last), `device` a
    resolved device. strict=True for training (a demand this device cannot meet is an error),
    False for scoring a model with its own config. `trained`: the precision the model was
    trained in (its weights file says; None for files older than that), which scoring keeps
    where the device has it, else fp32: a model trained in fp32 on a CPU is not scored in bf16
    on a GPU, nor a bf16 model in fp16 on a GPU without bf16."""
    if trained in ("bf16", "fp16", "fp32") and not strict:  # said in a warning when it falls back to fp32
        precision = resolve_precision(trained, device, strict=False, key="the model's trained precision")  # type: ignore[arg-type]
    else:
        precision = resolve_precision(train_config.amp, device, strict=strict)
    return Placement(device, precision, use_channels_last(train_config.channels_last, device), device_name(device))


def training_placement(train_config: Any) -> Placement:
    """Where training with `train_config` would run on this machine (train.device, amp and
    channels_last, strictly): a DeviceError now, before any run or file, when it cannot."""
    return placement(train_config, resolve_device(train_config.device), strict=True)
