"""Models you can trust (issue 10): a registered version is its logged model's weights, the
logged model is a standard MLflow pyfunc model (load_model, `mlflow models serve`), and a kill while
logging leaves nothing PENDING (the MLproject entry points: test_mlproject.py)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from exptrack.tracking import registry
from exptrack.data.layout import output_names
from exptrack.models.load import load_model
from exptrack.training import checkpoint as ckpt
from exptrack.models.weights import load_weights, save_atomic
from exptrack.train import train

from .helpers import tiny_overrides

REPO = Path(__file__).resolve().parents[1]
FAST = ("model.width=0.125", "train.batch_size=8", "train.eval_batch_size=16", "train.num_workers=0",
        "train.checkpoint_every=2", "optim.lr=0.001", "mlflow.experiment=models-test", "mlflow.log_system_metrics=false",
        "train.early_stop_patience=0")


def state_dict_hash(model: torch.nn.Module) -> str:
    """A hash of a model's weights: two loads with the same hash hold the same model."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.slow
def test_a_version_keeps_its_weights_when_the_run_goes_on(tiny_demo, make_config):
    cfg = make_config(tiny_demo, *FAST, "train.epochs=2")
    first = train(cfg, progress=False)
    name = cfg.mlflow.registered_model
    v1 = load_model(f"models:/{name}/{first.model_version}")
    h1 = state_dict_hash(v1.model)
    assert v1.source["model_id"] == first.model_id

    # The run's best_model.pt on disk is overwritten by later epochs (here: by hand, then by a
    # resume for more epochs): version 1 still loads the weights it was registered with.
    best = first.checkpoint_dir / ckpt.BEST_MODEL
    payload = load_weights(best)
    payload["model"] = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in payload["model"].items()}
    save_atomic(payload, best)
    resumed = train(make_config(tiny_demo, *FAST, "train.epochs=5"), resume=first.run_id, progress=False)
    assert resumed.run_id == first.run_id and resumed.state.epoch == 5
    assert state_dict_hash(load_model(f"models:/{name}/{first.model_version}").model) == h1
    # one version per kept model: a new one exactly when epochs 3-5 kept a better model, pinned to
    # its own weights (the run is deterministic on the CPU, so which case this is never varies)
    new_best = resumed.state.best_epoch["val_mean_class_acc"] > first.state.best_epoch["val_mean_class_acc"]
    assert (resumed.model_version != first.model_version) is new_best
    assert state_dict_hash(load_model(f"models:/{name}/{resumed.model_version}").model) == state_dict_hash(
        load_model(f"models:/{resumed.model_id}").model)

    # lean: never more than keep_checkpoints + 1 logged models; superseded ones are gone with their files
    models = registry.run_logged_models(first.run_id)
    assert len(models) <= cfg.train.keep_checkpoints + 1 + 1  # + the registered first best, kept for its version
    assert all(m["status"] == "READY" for m in models)
    kept = {m["model_id"] for m in models}
    assert first.model_id in kept  # a registered version's model is never deleted
    stored = {p.parents[2].name for p in Path("mlruns").rglob("artifacts/artifacts/weights.pt")}
    assert stored == kept  # the deleted models' weights left the artifact store too


@pytest.mark.slow
def test_a_version_registered_by_others_keeps_its_weights_when_the_run_prunes(tiny_trained, tmp_path):
    """A group member's run registers nothing itself; its group (or tune) registers one of its
    models under its own name. When the member trains on, that model must not be pruned."""
    from exptrack import tracking
    from exptrack.training.logged_models import ModelLog

    _, _, result = tiny_trained  # for its weights file; the run here is in this test's own store
    weights = result.checkpoint_dir / ckpt.BEST_MODEL
    run = tracking.Run(mlflow.MlflowClient().create_run("0").info.run_id)
    models = ModelLog(run, ckpt.CheckpointManager(tmp_path / "checkpoints", 0, 1),
                      list(load_weights(weights)["class_names"]), registered_model=None)  # as a member's
    registered, superseded = models.log_file(weights, 1), models.log_file(weights, 2)
    registry.register_logged_model(registered, "the-groups-model", {})
    models.prune()  # neither epoch is best or a kept periodic checkpoint any more
    assert {m["model_id"] for m in registry.run_logged_models(run.id)} == {registered}
    assert superseded != registered


@pytest.mark.slow
def test_a_run_named_with_dots_and_slashes_logs_its_model(tiny_trained, tmp_path):
    """A group run is named by the overrides typed (`folds-2 optim.lr=0.001 data.root=/data`);
    MLflow refuses those characters in a logged model's name, and the group's ensemble is logged
    on that run."""
    from exptrack import tracking

    _, _, result = tiny_trained
    run_name = "folds-2 optim.lr=0.001 data.root=/data/x:y %'\""
    run = tracking.Run(mlflow.MlflowClient().create_run("0", run_name=run_name).info.run_id)
    model_id = run.log_clip_model(result.checkpoint_dir / ckpt.BEST_MODEL, 8, ["a", "b", "c"], 0, {}, label="ensemble")
    name = mlflow.MlflowClient().get_logged_model(model_id).name
    assert name.startswith("folds-2 optim_lr=0_001 data_root=_data_x_y __") and name.endswith("-ensemble")


@pytest.mark.slow
@pytest.mark.parametrize("failing", ["upload", "link"])
def test_a_failed_model_logging_leaves_no_model_behind(tiny_trained, monkeypatch, failing):
    """Training's tracker retries a failed call: each failed attempt (the artifact store away, or
    the link to the run refused after the model was READY) left a FAILED or orphaned READY model."""
    from mlflow.store.artifact import local_artifact_repo

    from exptrack import tracking

    _, _, result = tiny_trained
    run = tracking.Run(mlflow.MlflowClient().create_run("0").info.run_id)
    where = {"upload": (local_artifact_repo.LocalArtifactRepository, "log_artifacts"),
             "link": (mlflow.MlflowClient, "log_outputs")}[failing]
    real, calls = getattr(*where), []

    def once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError("store away")
        return real(*args, **kwargs)

    monkeypatch.setattr(*where, once)
    weights = result.checkpoint_dir / ckpt.BEST_MODEL
    with pytest.raises(OSError, match="store away"):
        run.log_clip_model(weights, 8, ["a", "b", "c"], 1, {})
    model_id = run.log_clip_model(weights, 8, ["a", "b", "c"], 1, {})  # the retry
    assert [(m["model_id"], m["status"]) for m in registry.run_logged_models(run.id)] == [(model_id, "READY")]


def _serving_model(tiny_trained):
    uri, cfg, result = tiny_trained
    mlflow.set_tracking_uri(uri)
    registry.set_alias(cfg.mlflow.registered_model, "champion", result.model_version)
    return uri, cfg, result, f"models:/{cfg.mlflow.registered_model}@champion"


@pytest.mark.slow
def test_pyfunc_model_takes_raw_clips_or_a_video(tiny_trained, tiny_demo, monkeypatch):
    uri, cfg, result, model_uri = _serving_model(tiny_trained)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    info = mlflow.models.get_model_info(model_uri)
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["dtype"] == "uint8"
    assert info.signature.params is not None and info.saved_input_example_info is not None
    model = mlflow.pyfunc.load_model(model_uri)
    names = output_names(tiny_demo, 3, rest_class=True)  # the exercises, then the rest output

    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (2, cfg.data.clip_len, 40, 48, 3), dtype=np.uint8)  # raw frames, another size
    table = model.predict(clips)
    assert list(table.columns) == [*names, "predicted"] and len(table) == 2
    np.testing.assert_allclose(table[names].sum(axis=1), 1.0, atol=1e-5)
    assert set(table["predicted"]) <= set(names)
    # the same numbers as exptrack's own loader with the same preprocessing
    from exptrack.serving.pyfunc import ClipClassifierCore

    core = ClipClassifierCore(load_weights(result.checkpoint_dir / ckpt.BEST_MODEL))
    np.testing.assert_allclose(table[names].to_numpy(), core.probabilities(clips), atol=1e-5)

    video = next(tiny_demo.rglob("*.mp4"))
    windows = model.predict(np.zeros((0, cfg.data.clip_len, 1, 1, 3), np.uint8), params={"video": str(video)})
    assert windows.columns[0] == "start_frame" and len(windows) > 1 and windows["start_frame"].is_monotonic_increasing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outside_requirements() -> list[str]:
    """Top-level modules of exptrack's dependencies that neither the model's requirements nor
    what they depend on install."""
    import re
    from importlib import metadata

    from exptrack.serving.package import model_requirements

    def name(requirement: str) -> str:
        return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")

    seen: set[str] = set()
    todo = [name(r) for r in model_requirements()]
    while todo:
        dist = todo.pop()
        if dist not in seen:
            seen.add(dist)
            try:
                todo += [name(r) for r in metadata.requires(dist) or [] if "extra ==" not in r]
            except metadata.PackageNotFoundError:
                pass
    modules = set()
    for dist in [name(r) for r in metadata.requires("exptrack") or [] if "extra ==" not in r]:
        if dist not in seen:
            files = metadata.distribution(dist).files or []
            modules |= {str(f).split("/")[0].removesuffix(".py") for f in files
                        if not str(f).split("/")[0].endswith((".dist-info", ".libs", ".pth")) and "__pycache__" not in str(f)}
    return sorted(modules)


@pytest.mark.slow
def test_a_logged_model_loads_and_predicts_with_only_its_requirements(tiny_trained, tmp_path):
    """Its requirements.txt is the environment `mlflow models serve` builds: everything else
    exptrack depends on (optuna, grad-cam, ...) is made unimportable in the loading process."""
    uri, _, result, model_uri = _serving_model(tiny_trained)
    blocked = _outside_requirements()
    assert "optuna" in blocked and "torch" not in blocked
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {blocked!r}:
                    raise ImportError(f"{{name}} is not in the model's requirements")
        sys.meta_path.insert(0, Block())
        import mlflow, numpy as np
        model = mlflow.pyfunc.load_model({model_uri!r})
        print(model.predict(np.zeros((1, {tiny_trained[1].data.clip_len}, 40, 48, 3), dtype=np.uint8)).shape)
    """)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("(1, ")


@pytest.mark.slow
def test_mlflow_models_serve_answers_a_rest_request(tiny_trained, tmp_path):
    uri, cfg, result, model_uri = _serving_model(tiny_trained)
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
                               "local", "-h", "127.0.0.1", "-p", str(port)], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"server did not start: {server.stdout.read().decode()[-2000:]}") from None
                time.sleep(1)
        clips = np.random.default_rng(1).integers(0, 256, (2, cfg.data.clip_len, 32, 32, 3), dtype=np.uint8)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": clips.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())["predictions"]
        expected = mlflow.pyfunc.load_model(model_uri).predict(clips)
        assert [row["predicted"] for row in answer] == list(expected["predicted"])
        names = [c for c in expected.columns if c != "predicted"]
        np.testing.assert_allclose([[row[n] for n in names] for row in answer], expected[names].to_numpy(), atol=1e-5)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


KILL_WHILE_LOGGING = textwrap.dedent("""
    import os, signal, sys
    from mlflow.store.artifact import local_artifact_repo
    from exptrack.config import load_config
    from exptrack.train import train

    real = local_artifact_repo.LocalArtifactRepository.log_artifacts
    seen = []

    def log_artifacts(self, local_dir, artifact_path=None):
        if "/models/" in self.artifact_dir:  # a logged model's upload
            seen.append(self.artifact_dir)
            if len(seen) == 2:  # the second model: half its files are written, then the process dies
                os.kill(os.getpid(), signal.SIGKILL)
        return real(self, local_dir, artifact_path)

    local_artifact_repo.LocalArtifactRepository.log_artifacts = log_artifacts
    train(load_config(None, sys.argv[1:]), progress=False)
""")


@pytest.mark.slow
def test_a_kill_while_logging_a_model_leaves_nothing_pending(tiny_demo, make_config, tmp_path):
    extra = (*FAST, "train.epochs=3", "train.checkpoint_every=1")
    cfg = make_config(tiny_demo, *extra)
    overrides = tiny_overrides(tiny_demo, tmp_path, *extra, f"paths.cache={cfg.paths.cache}",
                               f"paths.outputs={cfg.paths.outputs}")
    proc = subprocess.run([sys.executable, "-c", KILL_WHILE_LOGGING, *overrides], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run = mlflow.search_runs(experiment_names=["models-test"], output_format="list")[0]
    assert any(m["status"] == "PENDING" for m in registry.run_logged_models(run.info.run_id))  # the fault is real

    result = train(cfg, resume=run.info.run_id, progress=False)
    models = registry.run_logged_models(run.info.run_id)
    assert models and all(m["status"] == "READY" for m in models)
    version = mlflow.MlflowClient().get_model_version(cfg.mlflow.registered_model, result.model_version)
    assert version.source == f"models:/{result.model_id}" and version.tags["run_id"] == run.info.run_id
    assert "val_mean_class_acc" in version.tags and "## Validation" in version.description
    assert mlflow.get_run(run.info.run_id).info.status == "FINISHED"
    # every kept periodic checkpoint is a logged model (the killed upload's too: its file goes at
    # the end of the run), and no snapshot is left waiting for an upload
    epochs = {int(m["tags"][registry.EPOCH_TAG]) for m in models}
    assert ckpt.CheckpointManager(result.checkpoint_dir, 1, cfg.train.keep_checkpoints).kept_epochs() <= epochs
    assert not (result.checkpoint_dir.parent / "pending-models").exists()
