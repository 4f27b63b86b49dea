"""The device rule (exptrack/device.py): precision by capability, one rule for training and
scoring, no silent CPU fallback when the driver sees a GPU that torch cannot use, and `doctor`.

This machine has no GPU: where a test needs one, the GPU's capability or NVML's answer is the
injected fault (monkeypatched), never MLflow or Optuna."""

from __future__ import annotations

import logging
import re

import pytest
import yaml
import torch
from torch import nn

from exptrack import device as dev
from exptrack.cli import main
from exptrack.config import ConfigError, config_from_dict, load_config, to_nested_dict
from exptrack.device import FP32, DeviceError, NvmlGpu, NvmlReport, Placement, Precision, resolve_precision

from .helpers import nothing_tracked

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.fixture
def fake_cuda(monkeypatch):
    """A CUDA device of a given capability, for the precision rule alone (no kernel runs)."""

    def make(bf16: bool) -> None:
        monkeypatch.setattr(dev, "cuda_bf16", lambda device: bf16)
        monkeypatch.setattr(dev, "device_name", lambda device: "FakeGPU" if device.type == "cuda" else "CPU")

    return make


@pytest.fixture
def hidden_gpu(monkeypatch):
    """The driver sees a Tesla T4 whose driver supports CUDA 12.2; this torch needs 13."""
    report = NvmlReport((NvmlGpu(0, "Tesla T4", "GPU-0000", 15.0, (7, 5)),), "535.104", (12, 2))
    monkeypatch.setattr(dev, "nvml_report", lambda: report)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return report


@pytest.mark.parametrize("capability, runs", [((7, 0), False), ((7, 5), True), ((8, 9), True), ((9, 0), True),
                                              ((10, 3), True), ((11, 0), False), ((12, 1), True)])
def test_a_build_runs_on_a_gpu_of_its_major_version_and_no_newer_minor(capability, runs):
    arches = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # torch 2.14.1's CUDA 13 wheel
    assert dev.runs_on(capability, arches) is runs
    assert dev.runs_on((7, 0), ["sm_90a", "compute_70"])  # PTX of an older or equal architecture


def test_a_gpu_older_than_the_build_is_refused_though_torch_counts_it_available(monkeypatch, capsys):
    """torch only warns for a V100 under a build for sm_75+ (is_available() is True); the first
    kernel then failed with "no kernel image is available", a traceback after the data was prepared."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Tesla V100-SXM2-16GB")
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_90"])
    for name in ("auto", "cuda", "cuda:0"):
        with pytest.raises(DeviceError, match=rf"train.device={name}: Tesla V100-SXM2-16GB \(cuda:0\) is sm_70; this "
                                              r"torch .* has kernels for sm_75 sm_80 sm_90 only"):
            dev.resolve_device(name)
    assert dev.resolve_device("cpu").type == "cpu"


@pytest.mark.parametrize("bf16, auto, scaler", [(True, "bf16", False), (False, "fp16", True)])
def test_auto_precision_follows_the_gpu_capability(fake_cuda, bf16, auto, scaler):
    fake_cuda(bf16)
    chosen = resolve_precision("auto", CUDA, strict=True)
    assert (chosen.name, chosen.needs_scaler) == (auto, scaler)
    assert resolve_precision(True, CUDA, strict=True).name == auto
    assert resolve_precision(False, CUDA, strict=True) == FP32


def test_bf16_demanded_on_a_gpu_without_it_is_refused_naming_the_key(fake_cuda):
    fake_cuda(False)
    with pytest.raises(DeviceError, match=r"train.amp=bf16: FakeGPU \(cuda\) has fp16"):
        resolve_precision("bf16", CUDA, strict=True)


def test_the_cpu_has_no_half_precision_auto_is_fp32_and_a_demand_is_an_error():
    """torch 2.14.1's CPU bf16 Conv3d weight gradient was wrong at T=2 in one run: never bf16 on the CPU."""
    assert resolve_precision("auto", CPU, strict=True) == FP32
    for demand in (True, "bf16", "fp16"):
        with pytest.raises(DeviceError, match="has no half precision exptrack trusts there"):
            resolve_precision(demand, CPU, strict=True)


def test_scoring_a_model_whose_half_precision_the_device_lacks_is_fp32_with_a_warning(caplog):
    """The path every scoring command takes: the precision the model's weights file says it was trained in."""
    from exptrack.config import TrainConfig
    from exptrack.device import placement

    caplog.set_level(logging.WARNING, logger="exptrack.device")
    assert placement(TrainConfig(), CPU, strict=False, trained="bf16").precision == FP32
    assert "the model's trained precision=bf16: CPU (cpu) has no half precision" in caplog.text
    assert "scoring in fp32" in caplog.text


def test_a_saved_amp_true_means_what_it_meant_then():
    """Before precision by capability, amp: true meant bf16 on CUDA and fp32 elsewhere: "auto"."""
    saved = to_nested_dict(load_config())
    saved["train"]["amp"] = True
    assert config_from_dict(saved).train.amp == "auto"
    assert load_config(None, ["train.amp=true"]).train.amp is True  # a user's true is a demand


def test_a_demand_for_half_precision_saved_today_stays_a_demand(tmp_path):
    """Configs are saved with their format: today's amp: true is not mistaken for an old one."""
    from exptrack.config import CONFIG_FORMAT, save_config, to_saved_dict

    demanding = load_config(None, ["train.amp=true"])
    assert config_from_dict(to_saved_dict(demanding)).train.amp is True  # a checkpoint's or model's
    path = save_config(demanding, tmp_path / "config.yaml")  # a run's config.yaml, also given as --config
    assert config_from_dict(yaml.safe_load(path.read_text())).train.amp is True
    assert load_config(path).train.amp is True
    newer = {**to_saved_dict(demanding), "format": CONFIG_FORMAT + 1}
    with pytest.raises(ConfigError, match="format 3 is unknown to the exptrack running here"):
        config_from_dict(newer, "model m-1")


def test_bf16_forced_on_the_cpu_stops_train_before_anything_is_written(tmp_path, capsys):
    code = main(["train", "--set", "train.amp=bf16", "train.device=cpu", f"paths.outputs={tmp_path / 'out'}"])
    assert code == 2
    assert "train.amp=bf16: CPU (cpu) has no half precision" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and nothing_tracked()


def test_auto_refuses_a_gpu_the_driver_sees_but_torch_cannot_use(hidden_gpu, tmp_path, capsys):
    code = main(["train", "--set", f"paths.outputs={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 2 and "train.device=auto: the NVIDIA driver sees a GPU that torch cannot use" in err
    assert "driver 535.104 supports CUDA up to 12.2" in err and "train.device=cpu" in err
    assert not (tmp_path / "out").exists() and nothing_tracked()
    assert dev.resolve_device("cpu") == CPU  # an explicit cpu is taken


def test_a_cpu_only_torch_build_is_named_as_the_reason(hidden_gpu, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "CPU-only build" in dev.unusable_gpu_reason(hidden_gpu)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "CUDA_VISIBLE_DEVICES='' hides every GPU" in dev.unusable_gpu_reason(hidden_gpu)


def test_doctor_explains_the_unusable_gpu_and_exits_1(hidden_gpu, capsys):
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"GPU 0 \(NVML\) +Tesla T4, 15.0 GiB, sm_75", out)
    assert re.search(r"train runs on +refused with train.device=auto", out)
    assert "problem: a GPU that torch cannot use: the NVIDIA driver 535.104" in out


def test_doctor_on_a_cpu_machine_says_what_train_will_use(capsys):
    assert main(["doctor", "--set", "train.channels_last=false"]) == 0
    out = capsys.readouterr().out
    assert "train runs on" in out and "cpu (CPU), fp32, contiguous" in out
    assert "tracking store" in out and "no problems found" in out


def test_doctor_finds_a_cache_folder_that_is_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    assert main(["doctor", "--set", f"paths.cache={tmp_path / 'afile'}"]) == 1
    assert f"paths.cache {tmp_path / 'afile'}: {tmp_path / 'afile'} is a file, not a folder" in capsys.readouterr().out


def test_more_ranks_than_gpus_is_refused_before_joining_a_group(monkeypatch):
    from exptrack.training import distributed

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for key, value in {"TORCHELASTIC_RUN_ID": "t", "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2",
                       "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=r"torchrun --nproc_per_node 2: this machine has 1 GPU\(s\)"):
        distributed.init_distributed(CUDA)


def test_a_model_is_scored_in_the_precision_it_was_trained_in(tiny_trained, monkeypatch, tmp_path):
    """load_model is the one loader of evaluate, compare, visualize and predict: it keeps the
    precision the weights file says the model was trained in where the device has it (here a
    device that pretends to have bf16 only), else fp32; a file from before that follows its config."""
    from exptrack.models.load import load_model
    from exptrack.training import checkpoint as ckpt
    from exptrack.models.weights import load_weights, save_atomic

    monkeypatch.setattr(dev, "half_precisions", lambda device: ("bf16",))
    _, _, result = tiny_trained
    payload = load_weights(result.checkpoint_dir / ckpt.BEST_MODEL)
    assert payload["precision"] == "fp32"  # trained on this CPU

    def scored(**changes) -> str:
        edited = {**payload, **changes}
        edited = {k: v for k, v in edited.items() if v is not None}
        save_atomic(edited, tmp_path / "m.pt")
        return load_model(str(tmp_path / "m.pt")).placement.precision.name

    assert scored() == "fp32"  # not bf16 because the device has it: scored as trained
    assert scored(precision="bf16") == "bf16" and scored(precision="fp16") == "fp32"
    older = {**payload["config"], "train": {**payload["config"]["train"], "amp": False}}
    assert scored(precision=None) == "bf16" and scored(precision=None, config=older) == "fp32"


def test_fp16_training_steps_through_the_grad_scaler():
    """An fp16 overflow: the scaler skips the step (weights unchanged) and halves its scale."""
    from exptrack.training.loop import train_one_epoch

    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 4 * 4, 3))
    before = [p.detach().clone() for p in model.parameters()]
    batches = [{"video": torch.randint(0, 256, (4, 2, 4, 4, 3), dtype=torch.uint8), "label": torch.tensor([0, 1, 2, 0])}]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)

    def overflowing(logits, target):
        return nn.functional.cross_entropy(logits, target) * 1e30  # inf once scaled

    train_one_epoch(model, batches, overflowing, torch.optim.SGD(model.parameters(), lr=0.1),
                    Placement(CPU, Precision("fp16")), progress=False, scaler=scaler)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert scaler.get_scale() == 2.0**15


def test_precise_bn_statistics_are_the_plain_average_over_its_batches():
    from exptrack.training.loop import recompute_bn_stats

    torch.manual_seed(0)
    norm = nn.BatchNorm3d(3)
    batches = [{"video": torch.randint(0, 256, (4, 2, 4, 4, 3), dtype=torch.uint8), "label": torch.zeros(4, dtype=torch.long)}
               for _ in range(3)]
    recompute_bn_stats(norm, batches, Placement(CPU), batches=3)
    from exptrack.data.dataset import prepare_batch

    xs = [prepare_batch(b, CPU)[0] for b in batches]
    means = torch.stack([x.mean(dim=(0, 2, 3, 4)) for x in xs])
    variances = torch.stack([x.var(dim=(0, 2, 3, 4), unbiased=True) for x in xs])
    assert torch.allclose(norm.running_mean, means.mean(0), atol=1e-6)
    assert torch.allclose(norm.running_var, variances.mean(0), atol=1e-5)
    assert norm.momentum == 0.1  # its own momentum back


def test_rank_0_keeps_the_seed_and_other_ranks_get_their_own():
    from exptrack.training.distributed import rank_seed

    assert rank_seed(42, 0) == 42
    assert len({rank_seed(42, r) for r in range(8)}) == 8


def test_unknown_amp_values_are_config_errors():
    with pytest.raises(ConfigError, match="train.amp: 'fp8' is not one of"):
        load_config(None, ["train.amp=fp8"])


def test_precise_bn_on_a_compiled_model_compiles_nothing():
    """Its momentum changes every batch: through torch.compile each value was a recompile (up to
    dynamo's limit, after which validation ran eager). It runs on the plain module instead."""
    import torch._dynamo

    from exptrack.training.loop import recompute_bn_stats

    torch._dynamo.reset()
    model = torch.compile(nn.Sequential(nn.BatchNorm3d(3)), backend="eager")
    batches = [{"video": torch.randint(0, 256, (4, 2, 4, 4, 3), dtype=torch.uint8), "label": torch.zeros(4, dtype=torch.long)}
               for _ in range(5)]
    before = sum(torch._dynamo.utils.counters["stats"].values())
    recompute_bn_stats(model, batches, Placement(CPU), batches=5)
    assert sum(torch._dynamo.utils.counters["stats"].values()) == before
    assert model._orig_mod[0].num_batches_tracked.item() == 5  # the statistics were recomputed
