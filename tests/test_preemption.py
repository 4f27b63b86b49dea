"""SIGTERM and SIGINT (exptrack/preemption.py), with real signals sent to real `exptrack`
processes: the run ends KILLED with its tag, the exit code says which signal, the resume
continues exactly, a tune trial is retried once, and no run is left RUNNING."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import mlflow
import optuna
import pytest

from exptrack import preemption, tracking
from exptrack.tracking import registry
from exptrack.config import load_config
from exptrack.preemption import PREEMPTED_TAG

from .helpers import metric_steps, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
FAST = ["model.width=0.125", "train.batch_size=4", "train.eval_batch_size=16", "train.num_workers=0",
        "optim.lr=0.001", "mlflow.log_system_metrics=false", "train.early_stop_patience=0",
        "train.checkpoint_every=0", "train.precise_bn_batches=0"]


def _overrides(tiny_demo: Path, tmp_path: Path, *extra: str) -> list[str]:
    return tiny_overrides(tiny_demo, tmp_path, "data.demo=false", "data.train_stride=2", *FAST, *extra)


class Command:
    """An exptrack subprocess whose log is read as it comes, to signal it at a given line."""

    def __init__(self, args: list[str], cwd: Path, launcher: tuple[str, ...] = ()) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        # its own session: a signal to its process group (a Ctrl-C) reaches it and its children only
        self.proc = subprocess.Popen([sys.executable, *launcher, "-m", "exptrack", *args], cwd=cwd, env=env,
                                     text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.lines: list[str] = []
        self.seen = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.seen:
                self.lines.append(line)
                self.seen.notify_all()

    def wait_for(self, text: str, timeout: float = 600) -> None:
        with self.seen:
            found = self.seen.wait_for(lambda: any(text in line for line in self.lines) or self.proc.poll() is not None,
                                       timeout)
        assert found and any(text in line for line in self.lines), f"never logged {text!r}:\n{''.join(self.lines)[-3000:]}"

    def finish(self, timeout: float = 600) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self.reader.join(10)
        return code

    @property
    def log(self) -> str:
        return "".join(self.lines)


def _only_run(experiment: str) -> mlflow.entities.Run:
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_the_run_killed_and_the_resume_continues_exactly(tiny_demo, tmp_path, sig, code):
    overrides = _overrides(tiny_demo, tmp_path, "train.epochs=4", "mlflow.experiment=preempt")
    command = Command(["train", "--no-progress", "--set", *overrides], tmp_path)
    command.wait_for("epoch 2/4")
    command.proc.send_signal(sig)
    assert command.finish() == code, command.log[-3000:]
    assert f"stopped by {signal.Signals(sig).name}" in command.log and "Traceback" not in command.log
    run = _only_run("preempt")
    assert run.info.status == "KILLED" and run.data.tags[PREEMPTED_TAG] == signal.Signals(sig).name
    done = metric_steps(run.info.run_id, "train_loss")
    assert done[:2] == [1, 2] and len(done) <= 3  # stopped in epoch 3 (or right after it)

    resumed = Command(["train", "--no-progress", "--resume", run.info.run_id, "--set", *overrides], tmp_path)
    assert resumed.finish() == 0, resumed.log[-3000:]
    run = mlflow.MlflowClient().get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert metric_steps(run.info.run_id, "train_loss") == [1, 2, 3, 4]  # every epoch once
    assert metric_steps(run.info.run_id, "val_loss") == [1, 2, 3, 4]


TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM to torchrun", "Ctrl-C to the process group"])
def test_every_ddp_rank_stops_on_a_signal_and_the_run_resumes_exactly(tiny_demo, tmp_path, how):
    """torchrun forwards the signal to every rank. A Ctrl-C goes to the whole process group: the
    ranks run in sessions of their own, so it reaches them once, forwarded (a second delivery
    would be taken as "exit now" and leave the run RUNNING)."""
    overrides = _overrides(tiny_demo, tmp_path, "train.epochs=4", "mlflow.experiment=ddp-preempt")
    command = Command(["train", "--no-progress", "--set", *overrides], tmp_path, TORCHRUN)
    command.wait_for("epoch 2/4")
    if how == "SIGTERM to torchrun":
        command.proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(command.proc.pid, signal.SIGINT)
    command.finish()  # torchrun's own exit code says it was signalled; the run says how it ended
    sig = "SIGTERM" if how == "SIGTERM to torchrun" else "SIGINT"
    run = _only_run("ddp-preempt")
    assert run.info.status == "KILLED" and run.data.tags[PREEMPTED_TAG] == sig, command.log[-3000:]
    assert run.data.tags["world_size"] == "2"

    resumed = Command(["train", "--no-progress", "--resume", run.info.run_id, "--set", *overrides], tmp_path,
                      TORCHRUN)
    assert resumed.finish() == 0, resumed.log[-3000:]
    run = mlflow.MlflowClient().get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert metric_steps(run.info.run_id, "train_loss") == [1, 2, 3, 4]  # every epoch once
    assert metric_steps(run.info.run_id, "val_loss") == [1, 2, 3, 4]


def _values(run_id: str, key: str) -> list[float]:
    history = mlflow.MlflowClient().get_metric_history(run_id, key)
    return [m.value for m in sorted(history, key=lambda m: m.step)]


@pytest.mark.slow
def test_a_resumed_two_rank_run_draws_what_the_uninterrupted_one_draws(tiny_demo, tmp_path):
    """Every rank's RNG state is saved with each checkpoint and restored by that rank: after a
    SIGTERM and a resume, every epoch's figures equal an uninterrupted 2-rank run's to the bit.
    (Restoring rank 0's state on every rank, as before, changed rank 1's dropout masks.)"""
    def train(experiment: str, *extra: str) -> Command:
        overrides = _overrides(tiny_demo, tmp_path, "train.epochs=3", f"mlflow.experiment={experiment}",
                               f"paths.outputs={tmp_path / experiment}")
        return Command(["train", "--no-progress", *extra, "--set", *overrides], tmp_path, TORCHRUN)

    whole = train("ddp-whole")
    assert whole.finish() == 0, whole.log[-3000:]
    cut = train("ddp-cut")
    cut.wait_for("epoch 1/3")
    cut.proc.send_signal(signal.SIGTERM)
    cut.finish()
    run_id = _only_run("ddp-cut").info.run_id
    resumed = train("ddp-cut", "--resume", run_id)
    assert resumed.finish() == 0, resumed.log[-3000:]
    reference = _only_run("ddp-whole").info.run_id
    for key in ("train_loss", "train_acc", "val_loss"):
        assert _values(run_id, key) == _values(reference, key), key


@pytest.mark.slow
def test_a_second_signal_exits_at_once_and_corrupts_nothing(tiny_demo, tmp_path):
    overrides = _overrides(tiny_demo, tmp_path, "train.epochs=3", "mlflow.experiment=twice")
    command = Command(["train", "--no-progress", "--set", *overrides], tmp_path)
    command.wait_for("epoch 1/3")
    command.proc.send_signal(signal.SIGTERM)
    command.proc.send_signal(signal.SIGTERM)
    assert command.finish() == 143
    run_id = _only_run("twice").info.run_id
    resumed = Command(["train", "--no-progress", "--resume", run_id, "--set", *overrides], tmp_path)
    assert resumed.finish() == 0, resumed.log[-3000:]
    assert metric_steps(run_id, "train_loss") == [1, 2, 3]
    assert mlflow.MlflowClient().get_run(run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_a_signalled_tune_retries_its_trial_each_time_and_leaves_nothing_running(tiny_demo, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study_file = tmp_path / "study.yaml"
    study_file.write_text(
        f"config: {ROOT / 'experiments' / 'demo.yaml'}\n"
        f"overrides: {_overrides(tiny_demo, tmp_path, 'train.epochs=3', 'mlflow.experiment=tune-preempt')}\n"
        f"study: p\nstorage: \"{storage}\"\nn_trials: 1\npruner: none\n"
        "space:\n  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}\n")
    command = Command(["tune", "--study-file", str(study_file), "--no-progress"], tmp_path)
    command.wait_for("epoch 1/3")
    command.proc.send_signal(signal.SIGTERM)
    assert command.finish() == 143, command.log[-3000:]
    study = optuna.load_study(study_name="p", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]
    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(experiment_names=["tune-preempt"], output_format="list")
    assert {r.info.status for r in runs} == {"KILLED"}  # the trial's run and the study's parent
    assert all(r.data.tags.get(PREEMPTED_TAG) == "SIGTERM" for r in runs)

    again = Command(["tune", "--study-file", str(study_file), "--no-progress"], tmp_path)  # the retry, stopped too
    again.wait_for("epoch 1/3")
    again.proc.send_signal(signal.SIGTERM)
    assert again.finish() == 143, again.log[-3000:]
    study = optuna.load_study(study_name="p", storage=storage)
    assert [t.state for t in study.trials][-1] == optuna.trial.TrialState.WAITING  # queued again: not its fault
    assert len({tuple(t.params.items()) for t in study.trials}) == 1

    last = Command(["tune", "--study-file", str(study_file), "--no-progress"], tmp_path)
    assert last.finish() == 0, last.log[-3000:]
    study = optuna.load_study(study_name="p", storage=storage)
    assert [t.state for t in study.trials][-1] == optuna.trial.TrialState.COMPLETE
    assert len(study.trials) == 3
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"


def test_a_run_stopped_by_a_signal_ends_killed_with_its_tag(tmp_path):
    config = load_config(None, ["mlflow.experiment=killed", "mlflow.log_system_metrics=false"])
    with pytest.raises(preemption.Preempted):
        with tracking.start_run(config, run_name="evaluate", command="evaluate") as run:
            raise preemption.Preempted(signal.SIGTERM)
    ended = mlflow.MlflowClient().get_run(run.id)
    assert ended.info.status == "KILLED" and ended.data.tags[PREEMPTED_TAG] == "SIGTERM"
    assert "exptrack.failure" not in ended.data.tags
    assert mlflow.active_run() is None


def test_inside_the_loop_a_signal_waits_for_the_batch_boundary():
    before = signal.getsignal(signal.SIGTERM)
    with preemption.installed():
        with pytest.raises(preemption.Preempted) as stopped:
            with preemption.deferred():
                os.kill(os.getpid(), signal.SIGTERM)  # handled at once, but only noted
                reached = True  # the step in progress completes
                preemption.check()  # the batch boundary
        assert reached and stopped.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before and preemption.requested() is None  # handlers given back


def test_under_torchrun_the_drain_ends_before_torchrun_kills_the_ranks(monkeypatch):
    """torchrun SIGKILLs its workers its shutdown timeout after forwarding a signal: rank 0 must
    end its run (KILLED) before that, so its drain keeps a margin."""
    from exptrack.training.distributed import LAUNCHER_MARGIN_S, shutdown_budget

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert shutdown_budget(60.0) == 60.0  # no launcher: the configured wait
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.delenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", raising=False)
    monkeypatch.delenv("PET_SHUTDOWN_TIMEOUT", raising=False)
    assert shutdown_budget(60.0) == 30.0 - LAUNCHER_MARGIN_S  # torchrun's default 30 s
    monkeypatch.setenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "120")
    assert shutdown_budget(60.0) == 60.0


@pytest.mark.parametrize("command", ["evaluate", "visualize"])
def test_a_signal_while_a_command_writes_its_outputs_leaves_no_folder_and_a_killed_run(
        tiny_trained, tmp_path, monkeypatch, command):
    """A real SIGTERM to this process (the CLI's handler raises at once outside training) after
    the first output file is written: the half-written folder goes, the run ends KILLED."""
    from exptrack import evaluation
    from exptrack.cli import main
    from exptrack.explain import render

    uri, cfg, result = tiny_trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    monkeypatch.chdir(tmp_path)
    module, name = (evaluation, "write_report") if command == "evaluate" else (render, "save_video")
    real = getattr(module, name)

    def written_then_signalled(*args, **kwargs):
        real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(module, name, written_then_signalled)
    out = tmp_path / "report"
    extra = ["--num-samples", "2"] if command == "visualize" else []
    code = main([command, "--model", f"models:/{cfg.mlflow.registered_model}/{result.model_version}",
                 "--save-dir", str(out), "--no-progress", *extra])
    assert code == 143 and not out.exists()
    run = mlflow.search_runs(experiment_names=[cfg.mlflow.experiment], output_format="list",
                             filter_string=f"tags.`exptrack.command` = '{command}'",
                             order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert run.info.status == "KILLED" and run.data.tags[PREEMPTED_TAG] == "SIGTERM"


def test_a_signal_while_promote_moves_the_aliases_waits_until_they_agree(tmp_path, monkeypatch):
    """A real SIGTERM right after the champion alias moved: the previous alias and every
    version's decision are still written, then the command stops."""
    import exptrack.promote as promotion

    client = mlflow.MlflowClient()
    client.create_registered_model("signalled")
    mlflow.set_experiment("promote-signal")
    versions = []
    for value in (0.80, 0.90):
        with mlflow.start_run() as run:
            mlflow.log_text("weights", "model/placeholder.txt")
        mv = client.create_model_version("signalled", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        registry.set_model_version_tags("signalled", mv.version, {"test_mean_class_acc": value,
                                                                  "test_data_digest": "d1"})
        versions.append(str(mv.version))
    client.set_registered_model_alias("signalled", "champion", versions[0])
    real = registry.set_alias

    def moved_then_signalled(name, alias, version):
        real(name, alias, version)
        if alias == promotion.CHAMPION:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(registry, "set_alias", moved_then_signalled)
    with preemption.installed(), pytest.raises(preemption.Preempted):
        promotion.promote("signalled", promotion.PromoteOptions(rule="best"), evaluate=lambda *a: None, current_digest=lambda *a: "d1")
    assert registry.alias_version("signalled", "champion") == versions[1]
    assert registry.alias_version("signalled", "previous") == versions[0]
    assert all("promotion.decision" in client.get_model_version("signalled", v).tags for v in versions)
