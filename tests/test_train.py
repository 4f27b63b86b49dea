"""Training end to end against a real MLflow store: params, per-epoch metrics, artifacts,
registered model, resume after a kill, a failing tracker, NaN loss."""

from __future__ import annotations

import logging
import textwrap
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from exptrack import tracking
from exptrack.cli import build_parser, main
from exptrack.data.layout import read_class_names
from exptrack.evaluation import run_evaluate
from exptrack.device import Placement
from exptrack.metrics import MIN_CALIBRATION_FRAMES
from exptrack.models.load import load_model
from exptrack.models.c3d import C3D
from exptrack.options import EvaluateOptions
from exptrack.train import train
from exptrack.training import run as train_run
from exptrack.data.dataset import prepare_batch
from exptrack.training.loop import NonFiniteLossError, train_one_epoch

from .faults import KillAfter
from .helpers import artifact_paths, metric_steps, tiny_overrides

FAST = ("model.width=0.125", "train.batch_size=8", "train.eval_batch_size=16", "train.num_workers=0",
        "train.checkpoint_every=2", "optim.lr=0.001", "mlflow.experiment=train-test", "mlflow.log_system_metrics=false")


def _config(make_config, root, *extra):
    return make_config(root, *FAST, *extra)


def _run(run_id: str):
    return mlflow.MlflowClient().get_run(run_id)


@pytest.mark.slow
def test_train_logs_a_complete_run_and_registers_the_model(tiny_demo, make_config, caplog):
    cfg = _config(make_config, tiny_demo, "train.epochs=3", "data.use_masks=true",
                  "data.use_skeleton_attention=true", "data.downsample_class1=true")
    caplog.set_level(logging.INFO, logger="exptrack.train")
    result = train(cfg, progress=False)
    assert "device: cpu (CPU), fp32, channels_last_3d" in caplog.text  # where it ran, said once at the start
    run = _run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["data.clip_len"] == "8" and run.data.params["loss.focal_gamma"] == "2.0"
    assert run.data.params["data.use_masks"] == "True"
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_mean_class_acc", "val_top3_acc", "lr",
                "val_acc_class_0", "data_wait_fraction", "loader_clips_per_s", "step_clips_per_s"):
        assert metric_steps(result.run_id, key) == [1, 2, 3], key
    tags = run.data.tags
    assert tags["exptrack.command"] == "train" and tags["device"] == "cpu"
    assert (tags["device_name"], tags["precision"], tags["memory_layout"]) == ("CPU", "fp32", "channels_last_3d")
    assert tags["data_digest"] and tags["data_root"] == str(tiny_demo)
    assert "torch_version" in tags and "mlflow_version" in tags
    assert tags["validation_weak"].startswith("1 validation subject (< 3)")  # 6 subjects: 1 held out
    inputs = {d.dataset.name: [t.value for t in d.tags if t.key == "mlflow.data.context"]
              for d in run.inputs.dataset_inputs}
    assert inputs == {"clips-train": ["training"], "clips-val": ["validation"]}

    # what stays on disk: what resume needs and the best model; the other files' weights are logged models
    assert sorted(p.name for p in result.checkpoint_dir.glob("*.pt")) == ["best_model.pt", "last.pt"]
    artifacts = artifact_paths(result.run_id)
    assert {"config.yaml", "metrics/training_metrics.csv", "metrics/per_class_accuracy.csv"} <= artifacts
    assert not [a for a in artifacts if a.endswith(".pt")]  # checkpoints stay local (lean artifacts)
    history = pd.read_csv(result.checkpoint_dir.parent / "metrics" / "training_metrics.csv")
    assert list(history.epoch) == [1, 2, 3]
    figures = {"loss_curves.png", "accuracy_curves.png", "learning_rate.png", "combined_metrics.png",
               "per_class_accuracy.png", "per_class_accuracy_top10.png", "per_class_heatmap.png",
               "final_class_comparison.png"}
    assert {f"plots/{f}" for f in figures} <= artifacts  # made at the end of the run

    # and again on demand, from the run's logged history
    assert main(["plots", "--run", result.run_id, "--top-classes", "2", "--save-dir", "replot"]) == 0
    made = {p.name for p in (Path("replot") / result.run_id).glob("*.png")}
    assert "per_class_accuracy_top2.png" in made and len(made) == 8

    # the kept checkpoints are MLflow logged models, ranked by the validation metrics linked to them
    experiment = mlflow.MlflowClient().get_run(result.run_id).info.experiment_id  # exptrack sets no active one
    models = mlflow.search_logged_models(experiment_ids=[experiment], filter_string=f"source_run_id = '{result.run_id}'",
                                         order_by=[{"field_name": "metrics.val_mean_class_acc", "ascending": False}],
                                         output_format="list")
    assert models and all(m.status.value == "READY" for m in models)
    epochs = {int(m.tags["exptrack.epoch"]) for m in models}
    best_epoch = result.state.best_epoch["val_mean_class_acc"]
    assert best_epoch in epochs and epochs <= {best_epoch, 2}  # the best and the periodic epoch 2, no others
    for m in models:
        linked = {x.key: x for x in m.metrics}
        assert linked["val_mean_class_acc"].step == int(m.tags["exptrack.epoch"])
        assert linked["val_mean_class_acc"].dataset_name == "clips-val"
        assert linked["val_rest_weight"].step == int(m.tags["exptrack.epoch"])  # on the model's page and card
    assert [m.model_id for m in models if m.tags["exptrack.best"] == "true"] == [result.model_id]

    version = mlflow.MlflowClient().get_model_version(cfg.mlflow.registered_model, result.model_version)
    assert version.source == f"models:/{result.model_id}"  # the version is that logged model
    assert version.tags["run_id"] == result.run_id and "val_mean_class_acc" in version.tags
    assert version.tags["training_data_digest"] == tags["data_digest"]
    assert f"the weights of epoch {best_epoch} " in version.description  # its model card
    loaded = load_model(f"models:/{cfg.mlflow.registered_model}/{result.model_version}")
    assert isinstance(loaded.model, C3D) and hasattr(loaded.model, "block4")  # named layers, for GradCAM
    assert loaded.model(torch.zeros(2, 3, 8, 32, 32)).shape == (2, 4)  # 3 exercises and rest
    assert loaded.class_names == [*read_class_names(tiny_demo, 3), "rest"]  # the model carries its class names
    # and its rest weight, chosen on the validation videos for each epoch that became a logged model
    chosen = {m.step: m.value for m in mlflow.MlflowClient().get_metric_history(result.run_id, "val_rest_weight")}
    assert epochs <= set(chosen) and loaded.rest_weight == pytest.approx(chosen[best_epoch])
    data = train_run.prepare_data(cfg, progress=False)
    true = np.concatenate([data.subjects[s].labels for s in data.split_subjects["val"]])
    assert min((true == -1).sum(), (true >= 0).sum()) >= MIN_CALIBRATION_FRAMES  # chosen, not the prior fallback
    calibrate = train_run.rest_weight_calibration(data, loaded.placement)
    assert calibrate is not None and calibrate(loaded.model) == pytest.approx(loaded.rest_weight)


@pytest.mark.slow
def test_resume_continues_the_same_run_without_gaps_or_duplicates(tiny_demo, make_config, monkeypatch):
    cfg = _config(make_config, tiny_demo, "train.epochs=4", "train.early_stop_patience=10")
    # Epoch 3 reaches its checkpoint but not MLflow (the tracker is down), then the run is killed.
    real_log = tracking.Run.log_metrics

    def flaky(self, metrics, step=None, **kwargs):
        if step == 3:
            raise ConnectionError("tracking server unreachable")
        return real_log(self, metrics, step, **kwargs)

    monkeypatch.setattr(tracking.Run, "log_metrics", flaky)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, callbacks=[KillAfter(3)])
    monkeypatch.setattr(tracking.Run, "log_metrics", real_log)
    run_id = mlflow.search_runs(experiment_names=["train-test"], output_format="list")[0].info.run_id
    assert metric_steps(run_id, "val_loss") == [1, 2]
    assert _run(run_id).info.status in ("FAILED", "KILLED")

    result = train(cfg, resume=run_id, progress=False)
    assert result.run_id == run_id
    assert _run(run_id).info.status == "FINISHED"
    for key in ("val_loss", "train_loss", "val_mean_class_acc"):
        assert metric_steps(run_id, key) == [1, 2, 3, 4], key  # none missing, none twice
    for key in ("best_val_loss", "tracking_seconds", "tracking_failures"):
        assert metric_steps(run_id, key) == [4], key  # the end of the run, once
    assert _run(run_id).data.metrics["tracking_seconds"] > 0
    assert len(mlflow.search_runs(experiment_names=["train-test"], output_format="list")) == 1


@pytest.mark.slow
def test_a_resumed_run_continues_exactly_as_the_uninterrupted_one(tiny_demo, make_config, tmp_path):
    """Kill after epoch 1 and resume: epochs 2-3 are bit-identical to an uninterrupted run (loader
    workers on, as by default; CPU)."""
    def history(cfg, kill_after=None, resume=None):
        if kill_after:
            with pytest.raises(KeyboardInterrupt):
                train(cfg, progress=False, callbacks=[KillAfter(kill_after)])
            resume = mlflow.search_runs(experiment_names=[cfg.mlflow.experiment], output_format="list")[0].info.run_id
        return train(cfg, resume=resume, progress=False).state.history

    extra = ("train.epochs=3", "train.num_workers=1", "train.early_stop_patience=0")
    whole = history(_config(make_config, tiny_demo, *extra, "mlflow.experiment=exact-a", f"paths.outputs={tmp_path / 'a'}"))
    resumed = history(_config(make_config, tiny_demo, *extra, "mlflow.experiment=exact-b",
                              f"paths.outputs={tmp_path / 'b'}"), kill_after=1)
    keys = ("train_loss", "train_acc", "val_loss", "val_mean_class_acc")
    assert [[row[k] for k in keys] for row in resumed] == [[row[k] for k in keys] for row in whole]


@pytest.mark.slow
def test_resume_of_a_run_killed_before_its_first_checkpoint(tiny_demo, make_config, monkeypatch):
    from exptrack.training import loop

    cfg = _config(make_config, tiny_demo, "train.epochs=2")
    real_epoch = loop.run_epoch

    def killed_in_epoch_1(setup, epoch, *args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C (or a kill) during the first epoch: no checkpoint yet

    monkeypatch.setattr(loop, "run_epoch", killed_in_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    run_id = mlflow.search_runs(experiment_names=["train-test"], output_format="list")[0].info.run_id
    assert _run(run_id).info.status in ("FAILED", "KILLED")
    assert _run(run_id).data.tags["exptrack.failure"].startswith("KeyboardInterrupt")
    monkeypatch.setattr(loop, "run_epoch", real_epoch)

    result = train(make_config(tiny_demo, *FAST, "train.epochs=3"), resume=run_id, progress=False)
    assert result.run_id == run_id and result.state.epoch == 3 and result.model_version
    assert _run(run_id).info.status == "FINISHED" and metric_steps(run_id, "train_loss") == [1, 2, 3]
    assert _run(run_id).data.params["train.epochs"] == "2"  # the params it logged first stay (MLflow forbids changes)


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_fails_the_run_clearly_and_it_resumes(tiny_demo, make_config, monkeypatch):
    import errno

    from exptrack.errors import CheckpointError

    cfg = _config(make_config, tiny_demo, "train.epochs=3", "train.checkpoint_every=0")
    real_save = torch.save
    calls = {"n": 0}

    def disk_fills_up(obj, fh, *args, **kwargs):
        calls["n"] += 1
        if isinstance(obj, dict) and obj.get("epoch") == 2:  # epoch 2: half a file, then ENOSPC
            fh.write(b"x" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, fh, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_up)
    with pytest.raises(CheckpointError, match=r"cannot write the checkpoint of epoch 2 \(No space left on device\)"):
        train(cfg, progress=False)
    monkeypatch.setattr(torch, "save", real_save)
    run = mlflow.search_runs(experiment_names=["train-test"], output_format="list")[0]
    assert run.info.status == "FAILED" and run.data.tags["exptrack.failure"].startswith("CheckpointError")
    folder = Path(cfg.paths.outputs) / "runs" / run.info.run_id / "checkpoints"
    assert torch.load(folder / "last.pt", weights_only=True)["epoch"] == 1  # epoch 1's files are whole
    assert not list(folder.glob(".*tmp*"))  # no half-written leftovers

    result = train(cfg, resume=run.info.run_id, progress=False)
    assert result.run_id == run.info.run_id and result.state.epoch == 3
    assert metric_steps(run.info.run_id, "train_loss") == [1, 2, 3]


def test_a_checkpoint_error_is_one_line_in_the_cli(tiny_demo, make_config, monkeypatch, capsys, tmp_path):
    import exptrack.train
    from exptrack.errors import CheckpointError

    def fails(*args, **kwargs):
        raise CheckpointError("outputs/runs/x/checkpoints: cannot write the checkpoint of epoch 1 (Read-only file system)")

    monkeypatch.setattr(exptrack.train, "train", fails)
    assert main(["train", "--config", str(Path(__file__).parents[1] / "experiments" / "demo.yaml")]) == 2
    err = capsys.readouterr().err
    assert "Read-only file system" in err and "Traceback" not in err


@pytest.mark.slow
def test_resume_from_a_checkpoint_file(tiny_demo, make_config):
    cfg = _config(make_config, tiny_demo, "train.epochs=2")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, callbacks=[KillAfter(1)])
    run_id = mlflow.search_runs(experiment_names=["train-test"], output_format="list")[0].info.run_id
    last = train_run.find_checkpoint(run_id, Path(cfg.paths.outputs))
    assert last.name == "last.pt"
    result = train(cfg, resume=str(last), progress=False)
    assert result.run_id == run_id and result.state.epoch == 2
    assert metric_steps(run_id, "val_loss") == [1, 2]


def test_a_received_checkpoint_resumes_with_this_folders_paths_not_its_own(tmp_path, monkeypatch):
    """A checkpoint from another machine names its data root and folders there: nothing is
    written to them (demo data was once generated at the checkpoint's data.root)."""
    from exptrack.config import load_config
    from exptrack.data.errors import DataError

    monkeypatch.chdir(tmp_path)
    theirs = tmp_path / "alice"
    saved = load_config(None, [f"data.root={theirs / 'data'}", f"paths.outputs={theirs / 'outputs'}",
                               f"paths.cache={theirs / 'cache'}", "data.demo=true", "train.epochs=5"])
    with pytest.raises(DataError, match=f"data.root {theirs / 'data'} \\(from the config of {theirs / 'last.pt'}\\) "
                                         "does not exist here"):
        train_run.resume_config(saved, load_config(None, []), source=str(theirs / "last.pt"))  # names the file
    mine = tmp_path / "mine"
    mine.mkdir()
    resumed = train_run.resume_config(saved, load_config(None, [f"data.root={mine}"]))
    assert (resumed.data.root, resumed.paths.outputs, resumed.paths.cache) == (str(mine), "outputs", "outputs/cache")
    assert resumed.train.epochs == 5 and not theirs.exists()


def test_a_resume_takes_what_the_user_set_even_when_it_equals_the_default(tmp_path):
    """`--resume RUN --epochs 100` where 100 is the default: the user chose it (it was once
    ignored, being indistinguishable from not given)."""
    from exptrack.config import Config, given_keys, load_config

    saved = load_config(None, ["train.epochs=5"])
    default_epochs = Config().train.epochs
    given = load_config(None, [f"train.epochs={default_epochs}"])
    explicit = given_keys(None, [f"train.epochs={default_epochs}"])
    assert train_run.resume_config(saved, given, explicit).train.epochs == default_epochs
    assert train_run.resume_config(saved, load_config(None, []), given_keys(None, [])).train.epochs == 5
    yaml = tmp_path / "more.yaml"
    yaml.write_text("train:\n  epochs: 100\n")
    assert given_keys(yaml, ["train.device=cpu"]) == {"train.epochs", "train.device"}


def test_nan_loss_stops_with_a_clear_error_and_a_failed_run(tiny_demo, make_config, monkeypatch, capsys):
    class NanLoss(train_run.FocalLoss):
        def forward(self, logits, target):
            return super().forward(logits, target) * float("nan")

    monkeypatch.setattr(train_run, "FocalLoss", NanLoss)
    cfg = _config(make_config, tiny_demo, "train.epochs=2")
    with pytest.raises(NonFiniteLossError, match="training loss became NaN or infinite at epoch 1, batch 1 "):
        train(cfg, progress=False)
    run = mlflow.search_runs(experiment_names=["train-test"], output_format="list")[0]
    assert run.info.status == "FAILED"


def _batches(n: int, batch: int = 4, size: int = 8, frames: int = 4, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"video": torch.randint(0, 256, (batch, frames, size, size, 3), dtype=torch.uint8, generator=g),  # (B, T, H, W, 3)
             "label": torch.randint(0, 3, (batch,), generator=g)} for _ in range(n)]


def _tiny_model() -> C3D:
    torch.manual_seed(0)
    return C3D(3, width=0.125, dropout=0.0, dropout_fc=0.0)  # no dropout: a forward is repeatable


def test_train_one_epoch_reads_the_device_only_at_its_checks():
    from bench.hostsync import check_syncs

    model, batches = _tiny_model(), _batches(7)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=0.0)  # weights stay put
    criterion, cpu = torch.nn.CrossEntropyLoss(), Placement(torch.device("cpu"))
    result = {}

    def epoch(loader):
        result.update(train_one_epoch(model, loader, criterion, optimizer, cpu, progress=False, sync_every=3))

    check = check_syncs(epoch, batches, cpu.device, sync_every=3)
    assert check.ok, check.summary()
    assert set(check.at) == {3, 6, 7}  # the checks read the device, nothing else does
    # the totals kept on the device are the per-batch ones
    model.train()
    with torch.no_grad():
        losses = [criterion(model(prepare_batch(b, cpu.device)[0]), b["label"]).item() for b in batches]
    assert result["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert 0.0 <= result["train_acc"] <= 1.0


class SlowLoader:
    """Batches that each arrive `delay` seconds late, as from a loader with too few workers;
    every clip says it took a worker 2 * delay / batch seconds to make (2 workers)."""

    num_workers = 2

    def __init__(self, batches: list[dict[str, torch.Tensor]], delay: float) -> None:
        self.batches, self.delay = batches, delay

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            time.sleep(self.delay)
            n = len(batch["label"])
            yield {**batch, "load_seconds": torch.full((n,), 2 * self.delay / n, dtype=torch.float64)}


def test_a_starved_step_is_reported_once_naming_num_workers(caplog):
    from exptrack.training.data_wait import StarvationAlarm

    model, cpu = _tiny_model(), Placement(torch.device("cpu"))
    optimizer, criterion = torch.optim.SGD(model.parameters(), lr=0.01), torch.nn.CrossEntropyLoss()
    caplog.set_level(logging.WARNING, logger="exptrack.train")
    fed = train_one_epoch(model, _batches(4), criterion, optimizer, cpu, progress=False, sync_every=2)
    assert not [r for r in caplog.records if "waited for data" in r.message]  # batches already in memory

    alarm = StarvationAlarm(workers=SlowLoader.num_workers)  # one per run, as fit() keeps it
    starved = [train_one_epoch(model, SlowLoader(_batches(4), delay=0.3), criterion, optimizer, cpu, epoch=epoch,
                               progress=False, sync_every=2, alarm=alarm) for epoch in (1, 2)]
    warnings = [r.message for r in caplog.records if "waited for data" in r.message]
    assert len(warnings) == 1 and "train.num_workers (now 2)" in warnings[0], warnings
    assert warnings[0].startswith("epoch 1:")
    assert all(m["data_wait_fraction"] > fed["data_wait_fraction"] for m in starved)
    assert starved[0]["loader_clips_per_s"] == pytest.approx(4 / 0.3)  # 4 clips per 0.3 s, from load_seconds
    assert "loader_clips_per_s" not in fed  # not measured: those batches carry no making time


def test_a_nan_loss_is_caught_at_the_next_check_naming_its_batch():
    class NanAtBatch5(torch.nn.CrossEntropyLoss):
        calls = 0

        def forward(self, logits, target):
            self.calls += 1
            return super().forward(logits, target) * (float("nan") if self.calls == 5 else 1.0)

    from bench.hostsync import StepCounter

    model = _tiny_model()
    loader = StepCounter(_batches(10))
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, batch 5 \(found at the check of batches 5 to 8"):
        train_one_epoch(model, loader, NanAtBatch5(), torch.optim.SGD(model.parameters(), lr=0.1),
                        Placement(torch.device("cpu")), epoch=2, progress=False, sync_every=4)
    assert loader.step == 8  # no per-batch look at the loss: it ran on to the check


def _torchrun_worker(program: str, out: Path, ranks: int) -> None:
    """Runs one program of tests/ddp_workers.py under torchrun, `ranks` CPU processes (gloo)."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
           str(Path(__file__).with_name("ddp_workers.py")), program, str(out)]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_nan_on_one_ddp_rank_stops_every_rank_with_the_same_error(tmp_path):
    """torchrun, 2 CPU processes (gloo): rank 1's loss alone becomes NaN; both ranks raise the
    same error at the same check and none is left waiting in a collective."""
    _torchrun_worker("nan_on_one_rank", tmp_path, ranks=2)
    messages = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert messages[0] == messages[1], messages
    assert "at epoch 1, batch 3 (found at the check of batches 3 to 4" in messages[0]


def test_ddp_ranks_draw_their_own_dropout_masks_from_the_same_weights(tmp_path):
    """torchrun, 2 CPU processes (gloo), seeded as `exptrack train` seeds them: N ranks must see
    N views of their batches, not one view N times; DDP still starts every rank from rank 0's
    weights."""
    _torchrun_worker("dropout_masks", tmp_path, ranks=2)
    ranks = torch.load(tmp_path / "ranks.pt", weights_only=True)
    assert torch.equal(ranks[0]["weights"], ranks[1]["weights"])
    assert not torch.equal(ranks[0]["mask"], ranks[1]["mask"])


def test_ddp_ranks_validate_their_own_shares_and_each_gets_every_clip_once_in_order(tmp_path):
    """torchrun, 3 CPU processes (gloo): validation's EvaluationShard and gather_shards together
    give every rank all n clips once, in order, and every rank the same number of batches (DDP's
    forward may be a collective), also with fewer clips than ranks."""
    _torchrun_worker("validation_shards", tmp_path, ranks=3)
    result = torch.load(tmp_path / "shards.pt", weights_only=True)
    for n, expected_counts in ((7, [3, 3, 3]), (2, [1, 1, 1]), (9, [3, 3, 3])):
        assert result[n]["gathered"].tolist() == list(range(n))
        assert result[n]["counts"] == expected_counts


def test_torchrun_with_one_process_joins_the_process_group(monkeypatch):
    """`torchrun --nproc_per_node 1` runs the DDP path (NCCL on a GPU, gloo here), so that one
    GPU can check what N GPUs run."""
    import socket

    import torch.distributed as dist

    from exptrack.training import distributed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"TORCHELASTIC_RUN_ID": "test", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    env = distributed.init_distributed(torch.device("cpu"))
    try:
        assert env.enabled and env.world_size == 1 and dist.is_initialized()
        assert dist.get_backend() == "gloo"
        assert distributed.all_reduce_min(torch.tensor([3, 7])).tolist() == [3, 7]
    finally:
        distributed.cleanup()
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    assert not distributed.init_distributed(torch.device("cpu")).enabled  # a plain single process: no group


@pytest.mark.parametrize("setting", [True, False])
def test_channels_last_setting_sets_the_layout_the_model_sees(setting):
    from exptrack.config import load_config
    from exptrack.device import CHANNELS_LAST_DEVICES, use_channels_last

    cfg = load_config(None, [f"train.channels_last={str(setting).lower()}"])
    assert cfg.train.channels_last is setting and load_config().train.channels_last == "auto"
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_channels_last("auto", cuda) and use_channels_last("auto", cpu) == ("cpu" in CHANNELS_LAST_DEVICES)
    assert use_channels_last(setting, cuda) is setting and use_channels_last(setting, cpu) is setting
    model, layouts = _tiny_model(), []
    model.register_forward_pre_hook(lambda m, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last_3d)))
    train_one_epoch(model, _batches(2), torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1),
                    Placement(cpu, channels_last=setting), progress=False)
    assert layouts == [setting, setting]


def test_original_train_flags_map_to_config():
    args = build_parser().parse_args(["train", "--epochs", "5", "--batch-size", "4", "--device", "cpu",
                                      "--seed", "7", "--downsample-class1", "--use-masks",
                                      "--use-skeleton-attention", "--skeleton-sigma", "12.5",
                                      "--set", "optim.lr=0.01"])
    from exptrack.cli import _config, _train_overrides

    cfg = _config(args, _train_overrides(args))
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.device, cfg.train.seed) == (5, 4, "cpu", 7)
    assert cfg.data.downsample_class1 and cfg.data.use_masks and cfg.data.use_skeleton_attention
    assert cfg.data.skeleton_sigma == 12.5 and cfg.optim.lr == 0.01


def test_train_cli_reports_missing_resume_target(tmp_path, capsys):
    code = main(["train", "--resume", "no-such-run", "--set", f"paths.outputs={tmp_path}"])
    assert code == 2
    assert "neither a checkpoint file nor a run id" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_with_two_processes_makes_one_run(tiny_demo, tmp_path, monkeypatch):
    """torchrun with 2 CPU processes (gloo): one MLflow run, every epoch logged once, the
    ranks agree on the metrics, which are those of every validation clip."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'ddp.db'}", "OMP_NUM_THREADS": "1"}
    sets = tiny_overrides(tiny_demo, tmp_path, *FAST, "train.epochs=2", "data.val_fraction=0.5")  # 2 val subjects
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "exptrack", "train", "--no-progress", *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["train-test"], output_format="list")
    assert len(runs) == 1 and runs[0].data.tags["world_size"] == "2"
    assert metric_steps(runs[0].info.run_id, "val_loss") == [1, 2]
    history = mlflow.MlflowClient().get_metric_history(runs[0].info.run_id, "train_loss")
    assert all(m.value > 0 for m in history)  # every rank had batches: the loss is a real mean
    assert proc.stdout.count("registered as version") == 1
    # each rank validated half of the clips; the figures logged are those of all of them: the
    # registered model scored on the validation split in one process gives the same
    version = mlflow.MlflowClient().search_model_versions(f"run_id='{runs[0].info.run_id}'")[0]
    linked = {m.key: m.value for m in mlflow.get_logged_model(version.source.removeprefix("models:/")).metrics}
    evaluation = run_evaluate(f"models:/{version.name}/{version.version}",
                              EvaluateOptions(split="val", save_dir=tmp_path / "ev", progress=False))
    assert evaluation.report.summary["acc"] == pytest.approx(linked["val_acc"], abs=1e-6)
    assert evaluation.report.summary["mean_class_acc"] == pytest.approx(linked["val_mean_class_acc"], abs=1e-6)
    # the ranks calibrated the rest weight on their shares of the validation videos: the weight the
    # model carries is the one a single process chooses from all of them
    loaded = load_model(f"models:/{version.name}/{version.version}")
    data = train_run.prepare_data(loaded.config, progress=False)
    assert len(data.split_subjects["val"]) >= 2  # each rank had videos to score
    true = np.concatenate([data.subjects[s].labels for s in data.split_subjects["val"]])
    assert min((true == -1).sum(), (true >= 0).sum()) >= MIN_CALIBRATION_FRAMES  # chosen, not the prior fallback
    assert loaded.rest_weight == pytest.approx(linked["val_rest_weight"])
    assert train_run.rest_weight_calibration(data, loaded.placement)(loaded.model) == pytest.approx(loaded.rest_weight)


@pytest.mark.slow
def test_early_stopping_pruning_and_resume_after_stop(tiny_demo, make_config):
    # patience 1 with min_delta 1.0: no epoch can improve by a whole accuracy point after the first
    # (and with the `first` tie-break, a tied but surer window does not restart the count either)
    cfg = _config(make_config, tiny_demo, "train.epochs=6", "train.early_stop_patience=1",
                  "train.early_stop_min_delta=1.0", "train.checkpoint_every=1", "train.keep_checkpoints=1",
                  "train.checkpoint_files=all", "train.selection_tiebreak=first")
    result = train(cfg, progress=False)
    # the first full selection window (epochs 1-3) sets the reference, epoch 4 does not beat it by 1.0
    assert result.state.epoch == 4
    periodic = sorted(p.name for p in result.checkpoint_dir.glob("epoch_*.pt"))
    assert len(periodic) == 1  # keep_checkpoints=1
    versions_before = mlflow.MlflowClient().search_model_versions(f"name='{cfg.mlflow.registered_model}'")

    again = train(cfg, resume=result.run_id, progress=False)  # killed after stopping, say
    assert again.state.epoch == 4 and metric_steps(result.run_id, "val_loss") == [1, 2, 3, 4]
    versions_after = mlflow.MlflowClient().search_model_versions(f"name='{cfg.mlflow.registered_model}'")
    assert len(versions_after) == len(versions_before)  # registered once per run

    # resumed with early stopping off, it trains on to its 6 epochs (before: nothing, silently)
    off = _config(make_config, tiny_demo, "train.epochs=6", "train.early_stop_patience=0",
                  "train.early_stop_min_delta=1.0", "train.checkpoint_every=1", "train.keep_checkpoints=1",
                  "train.checkpoint_files=all", "train.selection_tiebreak=first")
    further = train(off, resume=result.run_id, progress=False)
    assert further.state.epoch == 6 and metric_steps(result.run_id, "val_loss") == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_resume_with_more_epochs_extends_the_run(tiny_demo, make_config):
    cfg = _config(make_config, tiny_demo, "train.epochs=1")
    first = train(cfg, progress=False)
    more = _config(make_config, tiny_demo, "train.epochs=2")
    result = train(more, resume=first.run_id, progress=False)
    assert result.state.epoch == 2 and metric_steps(first.run_id, "val_loss") == [1, 2]


@pytest.mark.slow
def test_resume_from_a_folder_without_the_checkpoints_is_refused_saying_where_they_are(tiny_demo, make_config, tmp_path):
    """The store is shared (MLFLOW_TRACKING_URI), the outputs folder is not: starting the finished
    run again from epoch 1 would log every epoch twice and register a second version."""
    from exptrack.errors import ModelError

    cfg = _config(make_config, tiny_demo, "train.epochs=1")
    first = train(cfg, progress=False)
    elsewhere = _config(make_config, tiny_demo, "train.epochs=1", f"paths.outputs={tmp_path / 'other-folder'}")
    with pytest.raises(ModelError, match=f"the run finished but its checkpoints .* they are in "
                                         f"{first.checkpoint_dir.resolve()}"):
        train(elsewhere, resume=first.run_id, progress=False)
    assert metric_steps(first.run_id, "train_loss") == [1]
    assert len(mlflow.MlflowClient().search_model_versions(f"name='{cfg.mlflow.registered_model}'")) == 1


@pytest.mark.slow
def test_logging_failure_at_the_last_epoch_is_recovered(tiny_demo, make_config, monkeypatch):
    cfg = _config(make_config, tiny_demo, "train.epochs=2")
    real_log = tracking.Run.log_metrics
    calls = {"n": 0}

    def flaky(self, metrics, step=None, **kwargs):
        if step == 2 and calls["n"] == 0:  # the tracker is down once, at the final epoch
            calls["n"] += 1
            raise ConnectionError("tracking server unreachable")
        return real_log(self, metrics, step, **kwargs)

    monkeypatch.setattr(tracking.Run, "log_metrics", flaky)
    result = train(cfg, progress=False)
    assert calls["n"] == 1
    assert metric_steps(result.run_id, "val_loss") == [1, 2]
    assert _run(result.run_id).data.metrics["tracking_failures"] == 1


def test_resume_from_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    bad = tmp_path / "notackpt.pt"
    bad.write_bytes(b"garbage" * 10)
    code = main(["train", "--resume", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and f"{bad}: not a readable checkpoint" in err and "Traceback" not in err


def test_a_finished_run_leaves_no_loader_worker_behind(tiny_demo, make_config):
    """A group, a study or a bench trains many runs in one process: each run's persistent loader
    workers stop with it (they idled on, 2 x num_workers per finished run, until a GC pass)."""
    import psutil

    before = set(psutil.Process().children(recursive=True))  # another test's, not this run's
    cfg = _config(make_config, tiny_demo, "train.epochs=1", "train.num_workers=2")
    train(cfg, progress=False)
    assert set(psutil.Process().children(recursive=True)) - before == set()


def test_train_on_train_plus_val_keeps_the_last_epoch_and_registers_it(tiny_demo, make_config):
    cfg = _config(make_config, tiny_demo, "train.epochs=2", "data.train_on_val=true")
    with_val = train_run.prepare_data(_config(make_config, tiny_demo), splits=("train", "val"), progress=False)
    result = train(cfg, progress=False)

    run = _run(result.run_id)
    assert run.data.tags["clips_val"] == "0"
    merged = train_run.prepare_data(cfg, splits=("train", "val"), progress=False)
    assert set(merged.splits["train"].subjects) == {*with_val.splits["train"].subjects, *with_val.splits["val"].subjects}
    assert int(run.data.tags["clips_train"]) == len(merged.splits["train"])
    assert result.state.epoch == 2 and result.state.best_epoch["val_mean_class_acc"] == 2  # no early stop
    assert "train_loss" in run.data.metrics
    assert not [k for k in run.data.metrics if k.startswith(("val_", "best_val"))]  # nothing was validated
    assert result.model_version is not None  # the last epoch's model, registered
    best = torch.load(result.checkpoint_dir / "best_model.pt", weights_only=True)
    assert best["epoch"] == 2
    assert best["rest_weight"] == pytest.approx(train_run.training_rest_weight(merged))  # no videos to choose by: the prior
    plots = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id, "plots")}
    assert "plots/loss_curves.png" in plots and "plots/per_class_heatmap.png" not in plots  # nothing per class

    from exptrack.evaluation import SplitIsTrainingData, run_evaluate
    from exptrack.options import EvaluateOptions

    # refused before any run, as a split that is training data (promote --split val leaves it out)
    with pytest.raises(SplitIsTrainingData, match="trained on its validation subjects too"):
        run_evaluate(str(result.checkpoint_dir / "best_model.pt"), EvaluateOptions(split="val", progress=False))


def test_selection_follows_the_smoothed_score_not_one_lucky_epoch():
    """Validation on one subject swings: a single spike must not pick the model or stop training."""
    import numpy as np

    from exptrack.config import Config, replace
    from exptrack.training.loop import TrainState, record_epoch, selection_score

    cfg = replace(Config(), train={"selection_window": 3, "early_stop_min_delta": 0.001}).train
    scores = [0.30, 0.75, 0.35, 0.55, 0.60, 0.62, 0.50]  # epoch 2 is a lucky spike
    state, kept = TrainState(), []
    for epoch, mca in enumerate(scores, start=1):
        metrics = {"epoch": float(epoch), "val_loss": 1.0, "val_acc": mca, "val_mean_class_acc": mca}
        if record_epoch(state, metrics, np.full(3, mca), cfg)["val_mean_class_acc"]:
            kept.append(epoch)
    assert state.best_epoch["val_mean_class_acc"] == 6  # window 4-6: mean 0.59 beats 1-3 (0.47)
    assert state.best["val_mean_class_acc"] == 0.62 and abs(state.best["selection_score"] - 0.59) < 1e-9
    assert state.best_epoch["val_acc"] == 2  # best_val_acc.pt still keeps the single best epoch
    assert kept[0] == 3 and kept[-1] == 6  # no model before the first full window (1-3)
    assert state.stale_epochs == 1  # the smoothed score last rose at epoch 6
    window1 = selection_score([{"val_mean_class_acc": s} for s in scores], window=1)
    assert window1 == scores[-1]  # window 1 is the original rule: the epoch itself
    assert selection_score([{"val_mean_class_acc": 0.9}], window=3) == -np.inf  # a partial window is no score
def test_validation_weaknesses_name_subjects_and_thin_classes(tiny_demo, make_config, tmp_path):
    from exptrack.data.prepare import prepare_data

    data = prepare_data(make_config(tiny_demo), splits=("train", "val"), progress=False)
    reasons = data.validation_weaknesses(min_subjects=3, min_clips_per_class=20)
    assert reasons == ["1 validation subject (< 3)", reasons[1]] and "fewer than 20 validation clips" in reasons[1]
    assert data.validation_weaknesses(min_subjects=1, min_clips_per_class=1) == []  # sound enough


def test_validation_weaknesses_name_a_class_few_validation_subjects_perform(tiny_demo, make_config):
    """Clips of one subject are correlated: a class that only one of two validation subjects
    performs is thin evidence however many clips it has."""
    from exptrack.data.prepare import prepare_data

    data = prepare_data(make_config(tiny_demo, "data.val_fraction=0.5"), splits=("train", "val"), progress=False)
    val = data.splits["val"]
    assert len(data.split_subjects["val"]) == 2
    keep = ~((val.label == 0) & (val.subject_idx == val.subject_idx.min()))  # class 0 left in one subject only
    data.splits["val"] = val.select(np.flatnonzero(keep))
    assert data.validation_weaknesses(min_subjects=2, min_clips_per_class=1) == [
        "1 class performed by fewer than 2 validation subjects (classes 0)"]


KILL_AT = textwrap.dedent("""
    import os, signal, sys
    import torch
    from exptrack.config import load_config
    from exptrack.training import checkpoint, loop
    from exptrack.train import train

    point, overrides = sys.argv[1], sys.argv[2:]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "mid-epoch-1":  # before the first checkpoint exists
        real_epoch = loop.train_one_epoch

        def train_one_epoch(*args, **kwargs):
            if kwargs.get("epoch") == 1:
                die()
            return real_epoch(*args, **kwargs)

        loop.train_one_epoch = train_one_epoch
    elif point == "mid-save-epoch-2":  # epoch 2's last.pt half written
        real_save = torch.save

        def save(obj, fh, *args, **kwargs):
            if isinstance(obj, dict) and obj.get("epoch") == 2 and ".last.pt" in getattr(fh, "name", ""):
                fh.write(b"x" * 100)
                fh.flush()
                die()
            return real_save(obj, fh, *args, **kwargs)

        torch.save = save
    elif point == "after-checkpoint-2":  # epoch 2 checkpointed, nothing of it tracked yet
        real_manager_save = checkpoint.CheckpointManager.save

        def manager_save(self, payload, improved):
            written = real_manager_save(self, payload, improved)
            if payload["epoch"] == 2:
                die()
            return written

        checkpoint.CheckpointManager.save = manager_save
    train(load_config(None, overrides), progress=False)
""")


@pytest.mark.slow
def test_real_kills_at_several_points_all_resume_exactly(tiny_demo, make_config, tmp_path):
    """SIGKILL before the first checkpoint, half-way through a checkpoint save, and between a
    checkpoint and its tracking: each resumes in the same run, with every epoch once and the
    same numbers as an uninterrupted run."""
    import signal
    import subprocess
    import sys

    extra = ("train.epochs=3", "train.early_stop_patience=0", "train.checkpoint_every=0")
    keys = ("train_loss", "val_loss", "val_mean_class_acc")
    whole = train(_config(make_config, tiny_demo, *extra, "mlflow.experiment=kill-none"), progress=False)
    expected = [[row[k] for k in keys] for row in whole.state.history]
    for point in ("mid-epoch-1", "mid-save-epoch-2", "after-checkpoint-2"):
        overrides = tiny_overrides(tiny_demo, tmp_path, *FAST, *extra, f"mlflow.experiment=kill-{point}",
                                   f"paths.outputs={tmp_path / point}")
        proc = subprocess.run([sys.executable, "-c", KILL_AT, point, *overrides], capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == -signal.SIGKILL, (point, proc.stderr[-2000:])
        run_id = mlflow.search_runs(experiment_names=[f"kill-{point}"], output_format="list")[0].info.run_id
        cfg = _config(make_config, tiny_demo, *extra, f"mlflow.experiment=kill-{point}", f"paths.outputs={tmp_path / point}")
        result = train(cfg, resume=run_id, progress=False)
        assert result.run_id == run_id and _run(run_id).info.status == "FINISHED", point
        assert metric_steps(run_id, "train_loss") == [1, 2, 3], point  # every epoch, once
        assert [[row[k] for k in keys] for row in result.state.history] == expected, point
        assert metric_steps(run_id, "best_val_loss") == [3], point  # end-of-run metrics once


@pytest.mark.slow
def test_a_resumed_train_plus_val_fit_logs_each_epoch_once(tiny_demo, make_config):
    cfg = _config(make_config, tiny_demo, "train.epochs=2", "data.train_on_val=true")
    first = train(cfg, progress=False)
    train(_config(make_config, tiny_demo, "train.epochs=3", "data.train_on_val=true"),
                    resume=first.run_id, progress=False)
    assert metric_steps(first.run_id, "train_loss") == [1, 2, 3]


def test_a_model_kept_from_early_in_a_long_run_is_said():
    from exptrack.training.loop import TrainState

    rows = [{"epoch": e, "val_loss": 1.0, "val_mean_class_acc": 0.5} for e in range(1, 41)]
    state = TrainState(epoch=40, best_epoch={"val_mean_class_acc": 1}, history=rows)
    assert "epoch 1 of 40" in train_run.early_best(state)
    assert train_run.early_best(TrainState(epoch=40, best_epoch={"val_mean_class_acc": 12}, history=rows)) is None
    assert train_run.early_best(TrainState(epoch=5, best_epoch={"val_mean_class_acc": 1}, history=rows[:5])) is None


def test_a_resume_logs_every_metric_an_epoch_missed_not_only_the_training_loss(tmp_path):
    """A kill between an epoch's training and validation metric calls: the resume completes
    that epoch's validation metrics, and logs nothing twice."""
    from exptrack.config import load_config
    from exptrack.training.loop import TrainState

    config = load_config(None, ["mlflow.experiment=reconcile", "mlflow.log_system_metrics=false"])
    rows = [{"epoch": float(e), "train_loss": 1.0 / e, "val_loss": 2.0 / e, "val_mean_class_acc": 0.1 * e} for e in (1, 2)]
    state = TrainState(epoch=2, history=rows, per_class_history=[[0.5, 0.5], [0.6, 0.6]])
    with tracking.start_run(config, run_name="train", command="train") as run:
        run.log_metrics({"train_loss": 1.0, "val_loss": 2.0, "val_mean_class_acc": 0.1, "val_acc_class_0": 0.5,
                         "val_acc_class_1": 0.5}, step=1)
        run.log_metrics({"train_loss": 0.5}, step=2)  # killed before epoch 2's validation metrics
        assert train_run.reconcile_history(run, state) == 1
        assert train_run.reconcile_history(run, state) == 0  # nothing left to complete
    for key in ("train_loss", "val_loss", "val_mean_class_acc", "val_acc_class_1"):
        assert metric_steps(run.id, key) == [1, 2], key  # each once


@pytest.mark.slow
def test_a_run_leaves_nothing_in_the_temp_directory(tiny_demo, make_config, tmp_path, monkeypatch):
    import tempfile

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    train(_config(make_config, tiny_demo, "train.epochs=1", "mlflow.experiment=temp"), progress=False)
    # no exptrack-code-*, -model-*, -resume-* folder (torch keeps its own compile cache there)
    assert sorted(p.name for p in temp.iterdir() if p.name.startswith("exptrack")) == []
