"""The README's path as a new user walks it (issue 18): every MLproject entry point through
`mlflow run`, with and without --experiment-name, and the commands after it, each a real
subprocess whose stderr is not a terminal (as in a log file or CI).

One walk (module fixture) runs everything once in a folder of its own; each test asserts one
promise about what it left behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import yaml

from .helpers import artifact_paths

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Ran:
    name: str
    args: list[str]
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Walk:
    folder: Path
    uri: str
    ran: dict[str, Ran]

    def client(self) -> mlflow.MlflowClient:
        mlflow.set_tracking_uri(self.uri)
        return mlflow.MlflowClient(self.uri)

    def run_id(self, name: str) -> str:
        """The run id a command's last line names (every command prints its run's URL)."""
        found = re.findall(r"/runs/([0-9a-f]{32})\?workflowType=machine_learning", self.ran[name].stdout)
        assert found, f"{name} printed no run URL:\n{self.ran[name].stdout[-2000:]}"
        return found[-1]


def _env(folder: Path) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", "PYTHONUNBUFFERED": "1"}
    for inherited in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        env.pop(inherited, None)
    return env


def _mlflow_run(entry: str, experiment: str | None, run_name: str | None = None, **params: str) -> list[str]:
    return [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry, "--env-manager", "local",
            *(["--experiment-name", experiment] if experiment else []), *(["--run-name", run_name] if run_name else []),
            *[a for k, v in params.items() for a in ("-P", f"{k}={v}")]]


def _exptrack(*args: str) -> list[str]:
    return [sys.executable, "-m", "exptrack", *args]


@pytest.fixture(scope="module")
def walk(tiny_demo, tmp_path_factory) -> Walk:
    folder = tmp_path_factory.mktemp("walk")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"root": str(tiny_demo), "demo": False, "frame_size": 32, "clip_len": 8, "train_stride": 4,
                 "eval_stride": 8, "use_masks": True, "use_skeleton_attention": True, "skeleton_sigma": 3.0},
        "model": {"num_classes": 3, "width": 0.125},
        "train": {"epochs": 2, "batch_size": 8, "num_workers": 0, "checkpoint_every": 2, "early_stop_patience": 0},
        "mlflow": {"experiment": "tiny"},
    }))
    study = folder / "study.yaml"
    study.write_text(yaml.safe_dump({"config": str(config), "overrides": [],
                                     "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}}}))
    video = sorted((tiny_demo / "dataset" / "anon").glob("*.mp4"))[0]
    bare = folder / video.name  # the same video outside any layout: nothing beside it
    bare.write_bytes(video.read_bytes())
    optuna_db = f"sqlite:///{folder / 'optuna.db'}"
    own_study = folder / "own-study.yaml"
    own_study.write_text(yaml.safe_dump({**yaml.safe_load(study.read_text()), "study": "from-the-file",
                                         "storage": optuna_db}))
    steps = [
        ("mlflow-train", _mlflow_run("train", "walk", config=str(config), overrides="train.seed=1")),
        ("exptrack-train", _exptrack("train", "--no-progress", "--config", str(config), "--sets", "train.seed=1")),
        ("mlflow-train-default", _mlflow_run("train", None, config=str(config))),
        ("promote", _exptrack("promote", "--no-progress")),
        ("evaluate", _exptrack("evaluate", "--no-progress")),
        ("visualize", _exptrack("visualize", "--no-progress", "--num-samples", "1")),
        ("predict", _exptrack("predict", str(video))),
        ("predict-bare", _exptrack("predict", str(bare))),
        ("analyze", _exptrack("analyze", "--config", str(config))),
        ("cache", _exptrack("cache", "--config", str(config))),
        ("mlflow-evaluate", _mlflow_run("evaluate", "walk")),
        ("mlflow-evaluate-default", _mlflow_run("evaluate", None)),
        ("mlflow-visualize", _mlflow_run("visualize", "walk")),
        ("mlflow-visualize-default", _mlflow_run("visualize", None)),
        ("mlflow-analyze", _mlflow_run("analyze", "walk", config=str(config))),
        ("mlflow-analyze-default", _mlflow_run("analyze", None, config=str(config))),
        ("mlflow-cache", _mlflow_run("cache", "walk", config=str(config))),
        ("mlflow-cache-default", _mlflow_run("cache", None, config=str(config))),
        ("mlflow-compare", _mlflow_run("compare", "walk", a="models:/c3d-exercise/1", b="models:/c3d-exercise/2")),
        ("mlflow-compare-default", _mlflow_run("compare", None, a="models:/c3d-exercise/1",
                                               b="models:/c3d-exercise/3")),
        ("mlflow-tune", _mlflow_run("tune", "walk-tune", study_file=str(study), n_trials="2", study="named",
                                    storage=optuna_db, retrain_best="true")),
        # no -P study/storage: the study file's name and storage hold
        ("mlflow-tune-default", _mlflow_run("tune", None, study_file=str(own_study), n_trials="2")),
        ("mlflow-train-seeds", _mlflow_run("train", "walk", config=str(config), seeds="0,1",
                                           overrides="train.epochs=1")),
        # the user's run name holds characters MLflow refuses in a logged model's name
        ("mlflow-train-folds", _mlflow_run("train", "walk", run_name="folds.lr=1e-3/v2", config=str(config),
                                           folds="2", overrides="train.epochs=1 optim.lr=0.001")),
    ]
    ran: dict[str, Ran] = {}
    for name, args in steps:
        proc = subprocess.run(args, cwd=folder, env=_env(folder), capture_output=True, text=True, timeout=900,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"{name} failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
        ran[name] = Ran(name, args, proc.returncode, proc.stdout, proc.stderr)
        if name == "exptrack-train":  # plots of the run exptrack train made
            run_id = re.findall(r"/runs/([0-9a-f]{32})", proc.stdout)[-1]
            proc = subprocess.run(_exptrack("plots", "--run", run_id), cwd=folder, env=_env(folder),
                                  capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
            assert proc.returncode == 0, proc.stderr[-3000:]
            ran["plots"] = Ran("plots", [], 0, proc.stdout, proc.stderr)
    yield Walk(folder, f"sqlite:///{folder / 'mlflow.db'}", ran)
    mlflow.set_tracking_uri(None)


def _own_tags(tags: dict[str, str]) -> dict[str, str]:
    """Tags exptrack sets (MLflow's own differ by how a run was started)."""
    return {k: v for k, v in tags.items() if not k.startswith("mlflow.")}


def test_mlflow_run_train_carries_what_exptrack_train_carries(walk):
    """Same config through the MLproject entry point and through `exptrack train`: the same
    params (the resolved config, plus `config` and `overrides`), artifacts and tags."""
    client = walk.client()
    project, direct = (client.get_run(walk.run_id(name)) for name in ("mlflow-train", "exptrack-train"))
    assert project.data.params == direct.data.params
    assert len(project.data.params) > 70 and project.data.params["train.seed"] == "1"
    logged = lambda run: {k for k in run.data.metrics if not k.startswith("system/")}  # noqa: E731 (sampled every 10 s)
    assert logged(project) == logged(direct)
    assert {"data_wait_fraction", "loader_clips_per_s", "step_clips_per_s"} <= set(project.data.metrics)
    checkout = {"git_diff.patch"}  # logged when the checkout is dirty at that moment
    assert artifact_paths(project.info.run_id) - checkout == artifact_paths(direct.info.run_id) - checkout
    assert "config.yaml" in artifact_paths(project.info.run_id)
    ours = _own_tags(project.data.tags)
    assert set(ours) == set(_own_tags(direct.data.tags))
    assert {k: ours[k] for k in ("data_digest", "clips_train", "exptrack.command")} == {
        k: direct.data.tags[k] for k in ("data_digest", "clips_train", "exptrack.command")}


@pytest.mark.parametrize("entry", ["train", "evaluate", "visualize", "analyze", "cache", "compare", "tune"])
@pytest.mark.parametrize("named", [True, False], ids=["with-experiment-name", "without"])
def test_every_run_of_one_invocation_lands_in_its_experiment(walk, entry, named):
    """The run `mlflow run` made, and every run under it (trials, refits), in the experiment
    --experiment-name picked (Default without it), which opens on the runs table."""
    client = walk.client()
    name = f"mlflow-{entry}" + ("" if named else "-default")
    run = client.get_run(walk.run_id(name))
    experiment = client.get_experiment(run.info.experiment_id)
    expected = ("walk-tune" if entry == "tune" else "walk") if named else "Default"
    assert experiment.name == expected
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    children = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert {c.info.experiment_id for c in children} <= {run.info.experiment_id}
    if entry == "tune":
        assert len(children) == (3 if named else 2)  # two trials, and the refit of the best one
        assert run.data.tags["optuna.study"] == ("named" if named else "from-the-file")  # -P study, else the file's
        assert run.data.params["optim.lr"] == "float [0.0001, 0.001] log"  # a searched key: its range
    assert "config.yaml" in artifact_paths(run.info.run_id)
    assert len(run.data.params) > 70  # the resolved config (a tune parent: its trials' starting config)


@pytest.mark.parametrize("name", ["cache", "mlflow-cache"])
def test_cache_says_what_it_will_write_before_it_builds(walk, name):
    first = walk.ran[name].stdout.splitlines()[0]
    # the train runs before it built every entry this config uses
    assert first.startswith("frame cache ") and ": 0.0 MiB to write for 0 cache entries (" in first, first


def test_mlflow_run_train_with_seeds_makes_its_run_the_group(walk):
    """`-P seeds=0,1`: the run `mlflow run` made is the group's parent; each seed a child of it,
    in the same experiment, and the group's best member registered with the group's figures."""
    client = walk.client()
    parent = client.get_run(walk.run_id("mlflow-train-seeds"))
    assert parent.data.tags["exptrack.group"] == "seeds" and parent.data.params["seeds"] == "0,1"
    assert parent.info.status == "FINISHED" and "group_val_mean_class_acc_mean" in parent.data.metrics
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.data.params["train.seed"] for c in children) == ["0", "1"]
    version = client.get_model_version("c3d-exercise", parent.data.tags["group_model_version"])
    assert version.tags["group_run_id"] == parent.info.run_id
    assert "group " + parent.info.run_id in walk.ran["mlflow-train-seeds"].stdout
    assert parent.info.run_name == "seeds-0,1 train.epochs=1"  # `mlflow run` named it at random: exptrack names it


def test_mlflow_run_keeps_the_users_run_name_and_logs_the_fold_ensemble_under_it(walk):
    client = walk.client()
    parent = client.get_run(walk.run_id("mlflow-train-folds"))
    assert parent.info.run_name == "folds.lr=1e-3/v2" and parent.info.status == "FINISHED"
    version = client.get_model_version("c3d-exercise", parent.data.tags["group_model_version"])
    model = client.get_logged_model(version.source.removeprefix("models:/"))
    assert model.source_run_id == parent.info.run_id and model.name.startswith("folds_lr=1e-3_v2-")


def test_no_third_party_warning_or_progress_bar_reaches_a_log(walk):
    """stderr of every command, not a terminal: no Python warning (MLflow's type-hint advice,
    ...) and no carriage return (download progress bars)."""
    for ran in walk.ran.values():
        assert "\r" not in ran.stderr, f"{ran.name}: a progress bar in its log"
        warned = [line for line in ran.stderr.splitlines() if re.search(r"\w+Warning\b", line)]
        assert not warned, f"{ran.name}: {warned[:3]}"


def test_logged_models_link_only_their_own_metrics_and_have_unique_names(walk):
    client = walk.client()
    models = mlflow.search_logged_models(experiment_ids=[e.experiment_id for e in client.search_experiments()],
                                         output_format="list")
    assert models
    names = [m.name for m in models]
    assert len(names) == len(set(names))
    for model in models:
        keys = {m.key for m in model.metrics or []}
        refit = client.get_run(model.source_run_id).data.tags.get("trained_on") == "train+val"  # no validation
        ensemble = "exptrack.ensemble_members" in model.tags  # its members were validated, it was not
        assert (keys or refit or ensemble) and all(k.startswith(("val_", "test_")) for k in keys), (model.name, sorted(keys))


def test_a_version_carries_few_tags_and_a_model_card(walk):
    client = walk.client()
    champion = client.get_model_version_by_alias("c3d-exercise", "champion")
    assert len(champion.tags) <= 16, sorted(champion.tags)
    card = champion.description
    assert "## Training config" in card and "## Evaluation on test" in card and "## Promotion" in card
    assert f"`{champion.tags['run_id']}`" in card


def test_predict_reads_the_masks_and_keypoints_beside_a_video_in_its_layout(walk):
    """The walk's model is trained with masks and skeleton attention, as the demo's is."""
    ran = walk.ran["predict"]
    assert "frames weighted by masks and skeleton attention" in ran.stderr
    assert "unreliable" not in ran.stderr


def test_predict_says_when_a_video_lacks_what_the_model_needs(walk):
    assert "trained with masks and skeleton attention, but" in walk.ran["predict-bare"].stderr
    assert "unreliable" in walk.ran["predict-bare"].stderr


def test_deleted_models_leave_no_empty_folders(walk):
    """Superseded epochs' models are deleted with their files, and no empty folder stays
    (mlruns/<exp>/models/m-*, outputs/runs/<id>/pending-models)."""
    models = [*walk.folder.glob("mlruns/*/models/*"), *walk.folder.glob("mlruns/*/models/*/*")]
    assert models  # the kept ones
    pending = list(walk.folder.glob("outputs/runs/*/pending-models"))
    empty = [p for p in [*models, *pending] if p.is_dir() and not any(p.iterdir())]
    assert not empty, empty[:5]
