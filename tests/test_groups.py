"""Seed groups and subject folds (training/groups.py), their bad input, ties in model selection,
and tune, compare and the registry on groups; against a real MLflow store."""

from __future__ import annotations

import math

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from exptrack import stats
from exptrack.config import Config, ConfigError, load_config, replace
from exptrack.data import clips
from exptrack.data.errors import DataError, DataWarnings
from exptrack.data.layout import discover
from exptrack.data.prepare import assign_splits, warn_fold_classes
from exptrack.models.load import load_model
from exptrack.models.c3d import C3D, C3DEnsemble
from exptrack.training import groups
from exptrack.training.loop import TrainState, record_epoch

from .faults import KillAfter
from .helpers import child_runs, metric_steps, nothing_tracked, tiny_overrides

FAST = ("model.width=0.125", "train.batch_size=8", "train.eval_batch_size=16", "train.num_workers=0",
        "train.epochs=2", "optim.lr=0.001", "mlflow.log_system_metrics=false", "mlflow.registered_model=grouped")


def _children(run_id: str) -> dict[str, mlflow.entities.Run]:
    return {r.data.tags[groups.MEMBER_TAG]: r for r in child_runs(run_id)}


# --- config and data: what a group may be -------------------------------------------------


@pytest.mark.parametrize("text, seeds", [("0,1,2", (0, 1, 2)), ("[3, 4]", (3, 4)), ("", ()), ("7", (7,))])
def test_seeds_are_read_from_a_list_or_commas(text, seeds):
    assert load_config(None, [f"train.seeds={text}"]).train.seeds == seeds


def test_a_group_run_is_named_by_its_members_and_the_overrides_that_change_the_model():
    from exptrack.training.groups import group_run_name
    from exptrack.training.run import RunOptions

    typed = "data.root=/d paths.cache=/c train.seeds=0,1 optim.lr=0.001 paths.outputs=/o"
    config = load_config(None, typed.split())
    assert group_run_name(config, "seeds", RunOptions(invocation={"overrides": typed})) == "seeds-0,1 data.root=/d optim.lr=0.001"
    assert group_run_name(config, "seeds", RunOptions(run_name="mine", invocation={"overrides": typed})) == "mine"


@pytest.mark.parametrize("text, says", [("0,1,1", "1 given more than once"), ("0,x", "'x' is not an integer"),
                                        ("0.5", "expected a list of integers")])
def test_bad_seeds_name_the_key(text, says):
    with pytest.raises(ConfigError, match=f"train.seeds.*{says}"):
        load_config(None, [f"train.seeds={text}"])


@pytest.mark.parametrize("overrides, says", [
    (["data.folds=1"], "data.folds must be 0 \\(off\\) or >= 2"),
    (["data.folds=3", "train.seeds=0,1"], "data.folds and train.seeds cannot be combined"),
    (["data.folds=3", "data.fold=3"], "data.fold must be in 0..data.folds-1"),
    (["data.folds=3", "data.train_on_val=true"], "data.folds and data.train_on_val"),
])
def test_group_keys_that_do_not_fit_are_refused(overrides, says):
    with pytest.raises(ConfigError, match=says):
        load_config(None, overrides)


def test_a_seed_group_config_saves_as_yaml_and_loads_back():
    from exptrack.config import config_from_dict, to_yaml
    import yaml

    config = load_config(None, ["train.seeds=0,1,2"])
    assert config_from_dict(yaml.safe_load(to_yaml(config))).train.seeds == (0, 1, 2)


def test_folds_split_every_non_test_subject_once_and_never_touch_test(tiny_demo):
    layout = discover(tiny_demo, DataWarnings())
    test = sorted(s.subject for s in layout.by_split("test"))
    pool = sorted(s.subject for s in layout.by_split("train") + layout.by_split("val"))
    splits = [assign_splits(layout, 0.2, 42, folds=2, fold=i, fold_seed=0) for i in range(2)]
    assert sorted(s for sp in splits for s in sp["val"]) == pool  # each subject validates exactly once
    for sp in splits:
        assert sorted(sp["train"] + sp["val"]) == pool and not set(sp["train"]) & set(sp["val"])
        assert sp["test"] == test
    other_seed = [assign_splits(layout, 0.2, 42, folds=2, fold=i, fold_seed=1)["val"] for i in range(2)]
    assert sorted(map(tuple, other_seed)) != sorted(tuple(sp["val"]) for sp in splits) or len(pool) <= 2


def test_more_folds_than_subjects_is_a_clear_error(tiny_demo):
    layout = discover(tiny_demo, DataWarnings())
    with pytest.raises(DataError, match="split.csv: data.folds=9 needs at least 9 train and val subjects \\(one per fold\\), there are 4"):
        assign_splits(layout, 0.2, 42, folds=9, fold=0)


def test_a_fold_without_a_class_the_others_train_on_is_warned_by_name():
    train = clips.build_clip_index({"a": np.repeat([0, 1, 2], 16).astype(np.int16)}, 8, 8)
    val = clips.build_clip_index({"b": np.repeat([0, 1], 16).astype(np.int16)}, 8, 8)
    warnings = DataWarnings()
    assert warn_fold_classes(train, val, 1, 3, warnings) == [2]
    assert warnings.counts["fold_missing_classes"] == 1
    assert "validation fold 1 has no clip of class 2" in warnings.examples["fold_missing_classes"][0]


# --- ties in the selection score ---------------------------------------------------------


@pytest.mark.parametrize("tiebreak, kept", [("val_loss", 8), ("first", 3)])
def test_saturated_validation_keeps_the_surer_model_unless_told_first(tiebreak, kept):
    cfg = replace(Config(), train={"selection_window": 3, "early_stop_patience": 3,
                                   "selection_tiebreak": tiebreak}).train
    state = TrainState()
    for epoch in range(1, 9):  # validation at 1.000 from epoch 1; the loss keeps falling
        metrics = {"epoch": float(epoch), "val_loss": 1.0 / epoch, "val_acc": 1.0, "val_mean_class_acc": 1.0}
        record_epoch(state, metrics, np.ones(3), cfg)
    assert state.best_epoch["val_mean_class_acc"] == kept
    # with the tie-break the run is still getting better: early stopping does not count it stale
    assert (state.stale_epochs == 0) == (tiebreak == "val_loss")


# --- statistics of groups ----------------------------------------------------------------


def test_a_group_interval_is_the_t_interval_of_its_members():
    i = stats.mean_interval([0.6, 0.7, 0.8])
    assert math.isclose(i.mean, 0.7) and math.isclose(i.std, 0.1)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2)
    assert math.isclose(i.low, 0.7 - half) and math.isclose(i.high, min(1.0, 0.7 + half))
    assert stats.mean_interval([0.5]).low is None  # one member: no interval, never a fake one


def test_paired_folds_see_a_consistent_gain_that_unpaired_seeds_cannot():
    a, b = [0.50, 0.70, 0.90], [0.55, 0.76, 0.94]  # B is 0.04 to 0.06 better on every fold
    paired = stats.compare_groups(a, b, paired=True, metric="m", unit="folds")
    welch = stats.compare_groups(a, b, paired=False, metric="m", unit="seeds")
    assert paired.verdict == "better" and 0 < paired.low < 0.05 < paired.high
    # all three exactly +0.05 (up to rounding) would be a sign test: 3 folds are too few at 95%
    same = stats.compare_groups(a, [0.55, 0.75, 0.95], paired=True, metric="m", unit="folds")
    assert same.verdict == "not distinguishable" and same.low is None
    assert welch.verdict == "not distinguishable" and welch.low < 0 < welch.high
    assert "3 seeds" in welch.sentence() and "recipes" in welch.sentence()


def test_an_ensemble_outputs_the_mean_of_its_members_probabilities():
    torch.manual_seed(0)
    members = [C3D(num_classes=3, width=0.125).eval() for _ in range(2)]
    ensemble = C3DEnsemble(members).eval()
    x = torch.rand(2, 3, 8, 32, 32)
    with torch.no_grad():
        expected = torch.stack([torch.softmax(m(x), 1) for m in members]).mean(0)
        assert torch.allclose(torch.softmax(ensemble(x), 1), expected, atol=1e-6)


def test_training_a_config_that_is_an_ensemble_is_refused(tiny_demo, make_config):
    from exptrack.train import train

    with pytest.raises(ConfigError, match="model.ensemble is set on the model a group registers"):
        train(make_config(tiny_demo, *FAST, "model.ensemble=2"), progress=False)


# --- groups end to end -------------------------------------------------------------------


@pytest.mark.slow
def test_a_seed_group_logs_its_spread_and_registers_its_best_member(tiny_demo, make_config):
    from exptrack.train import train

    result = train(make_config(tiny_demo, *FAST, "train.seeds=0,1", "mlflow.experiment=seeds"), progress=False)
    client = mlflow.MlflowClient()
    parent = client.get_run(result.run_id)
    children = _children(result.run_id)
    assert set(children) == {"seed=0", "seed=1"} and parent.info.status == "FINISHED"
    assert {r.data.params["train.seed"] for r in children.values()} == {"0", "1"}
    assert {r.info.experiment_id for r in children.values()} == {parent.info.experiment_id}
    # per epoch: the mean over seeds, logged on the parent
    values = {s: {m.step: m.value for m in client.get_metric_history(r.info.run_id, "val_mean_class_acc")}
              for s, r in children.items()}
    mean = {m.step: m.value for m in client.get_metric_history(result.run_id, "val_mean_class_acc_mean")}
    assert sorted(mean) == [1, 2] and mean[2] == pytest.approx((values["seed=0"][2] + values["seed=1"][2]) / 2)
    kept = {s: r.data.metrics["best_val_mean_class_acc"] for s, r in children.items()}
    assert parent.data.metrics["group_val_mean_class_acc_mean"] == pytest.approx(np.mean(list(kept.values())))
    assert "group_val_mean_class_acc_ci_low" in parent.data.metrics
    assert {"group/members.csv", "group/curves.png"} <= {a.path for a in client.list_artifacts(result.run_id, "group")}
    # registered: the best member's kept model, with the group's figures
    version = client.get_model_version("grouped", result.model_version)
    best = max(result.members, key=groups.MemberResult.rank)  # the kept score, ties by the lower val loss
    assert version.run_id == best.run_id and best.value() == max(kept.values())
    assert version.tags["group_run_id"] == result.run_id and version.tags["group_members"] == "2"
    assert "## Group" in version.description
    assert all(f"`{m.run_id}`" in version.description for m in result.members)  # its card lists the members' runs
    from exptrack.promote import version_groups  # what promote prints beside the version

    assert version_groups("grouped")[result.model_version].startswith("group of 2 seeds: validation mean class")


@pytest.mark.slow
def test_a_killed_group_resumes_only_what_did_not_finish(tiny_demo, make_config):
    from exptrack.train import train
    from exptrack.training.run import RunOptions

    config = make_config(tiny_demo, *FAST, "train.seeds=0,1", "mlflow.experiment=resume-group")
    hooks = groups.GroupHooks(callbacks=lambda i, member: [KillAfter(1)] if i == 1 else [])
    with pytest.raises(KeyboardInterrupt):  # killed in seed 1's run, after its epoch 1
        groups.train_group(config, progress=False, hooks=hooks)
    parent = mlflow.MlflowClient().get_run(hooks.members[0]).data.tags[groups.GROUP_RUN_TAG]
    before = {k: r.info.run_id for k, r in _children(parent).items()}
    assert mlflow.MlflowClient().get_run(parent).info.status == "FAILED"

    result = train(config, resume=parent, progress=False)
    after = _children(parent)
    assert result.run_id == parent and {k: r.info.run_id for k, r in after.items()} == before  # no new member run
    assert all(r.info.status == "FINISHED" for r in after.values())
    assert metric_steps(before["seed=0"], "train_loss") == [1, 2]  # the finished member was not trained again
    assert metric_steps(before["seed=1"], "train_loss") == [1, 2]  # the killed one continued: every epoch once
    assert mlflow.MlflowClient().get_run(parent).info.status == "FINISHED"
    assert len(mlflow.MlflowClient().search_model_versions("name='grouped'")) == 1

    # resumed for more epochs (killed again, in seed 1's epoch 4), then resumed plainly: every member
    # trains on to the 4 epochs the group last asked for, each in its own run
    more = make_config(tiny_demo, *FAST, "train.seeds=0,1", "mlflow.experiment=resume-group", "train.epochs=4")
    hooks = groups.GroupHooks(callbacks=lambda i, member: [KillAfter(3)] if i == 1 else [])
    with pytest.raises(KeyboardInterrupt):
        groups.train_group(more, resume=parent, progress=False, hooks=hooks,
                           options=RunOptions(explicit=frozenset({"train.epochs"})))
    train(config, resume=parent, progress=False, options=RunOptions(explicit=frozenset()))  # nothing set, as the CLI's
    assert {k: r.info.run_id for k, r in _children(parent).items()} == before
    assert {k: metric_steps(run_id, "train_loss") for k, run_id in before.items()} == {k: [1, 2, 3, 4] for k in before}
    # the group's figures: once at the last epoch of each finished resume (they were at step 0, every time)
    assert metric_steps(parent, "group_val_mean_class_acc_mean") == [2, 4]
    # version 1 (the best member's model after 2 epochs) still loads, whatever epochs 3 and 4 kept
    assert load_model("models:/grouped/1").source["model_id"] == result.model_id


@pytest.mark.slow
def test_a_fold_ensemble_resumed_for_more_epochs_holds_its_members_new_kept_models(tiny_demo, make_config):
    from exptrack.train import train
    from exptrack.training.run import RunOptions

    base = (*FAST, "data.folds=2", "mlflow.experiment=resume-folds", "train.early_stop_patience=0")
    first = train(make_config(tiny_demo, *base, "train.epochs=1"), progress=False)
    again = train(make_config(tiny_demo, *base, "train.epochs=3"), resume=first.run_id, progress=False,
                  options=RunOptions(explicit=frozenset({"train.epochs"})))
    kept = [load_model(f"models:/{m.model_id}").model for m in again.members]
    assert [m.kept_epoch for m in again.members] != [m.kept_epoch for m in first.members]  # the fault is real
    ensemble = load_model(f"models:/grouped/{again.model_version}").model
    for member, model in zip(ensemble.members, kept, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(member.state_dict().values(), model.state_dict().values(), strict=True))


@pytest.fixture(scope="module")
def two_fold_groups(tmp_path_factory, tiny_demo):
    """Two 2-fold groups on the same subjects (A with the defaults: its fold ensemble is
    registered; B with another learning rate, registering its best member), in a store of their
    own: (tracking uri, run id of A, run id of B)."""
    import os

    from exptrack.train import train

    tmp = tmp_path_factory.mktemp("folds")
    uri, old = f"sqlite:///{tmp / 'mlflow.db'}", os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    try:
        base = tiny_overrides(tiny_demo, tmp, *FAST, "data.folds=2", "mlflow.experiment=folds")
        a = train(load_config(None, base), progress=False)
        b = train(load_config(None, [*base, "optim.lr=0.0001", "train.group_model=best"]), progress=False)
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    return uri, a, b


@pytest.mark.slow
def test_a_fold_ensemble_is_one_model_that_every_loader_takes(two_fold_groups, monkeypatch):
    uri, a, _ = two_fold_groups
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    assert a.registered == "the ensemble of 2 members"
    loaded = load_model(f"models:/grouped/{a.model_version}")
    assert isinstance(loaded.model, C3DEnsemble) and loaded.config.model.ensemble == 2
    loaded_members = [load_model(f"models:/{m.model_id}") for m in a.members]
    members = [m.model for m in loaded_members]
    # each member's rest weight was chosen on its own fold's videos; the ensemble weighs rest by their geometric mean
    assert loaded.rest_weight == pytest.approx(float(np.prod([m.rest_weight for m in loaded_members])) ** 0.5)
    x = torch.rand(2, 3, 8, 32, 32)
    with torch.no_grad():
        expected = torch.stack([torch.softmax(m(x), 1) for m in members]).mean(0)
        assert torch.allclose(torch.softmax(loaded.model(x), 1), expected, atol=1e-5)
    served = mlflow.pyfunc.load_model(f"models:/grouped/{a.model_version}")
    assert len(served.predict(np.zeros((2, 8, 32, 32, 3), np.uint8))) == 2
    # its card names the data (from a member's run) and says it has no validation score of its own
    card = mlflow.MlflowClient().get_model_version("grouped", a.model_version).description
    from exptrack.model_card import GAP

    assert f"`{a.members[0].run_id}`" in card and "no validation score of its own" in card
    assert f"| root{GAP} | `?` |" not in card and "none logged" not in card
    # each fold validated on its own subjects, and no member saw a test subject
    children = _children(a.run_id)
    assert set(children) == {"fold=0", "fold=1"}
    assert {r.data.params["data.fold"] for r in children.values()} == {"0", "1"}


@pytest.mark.slow
def test_two_fold_groups_are_compared_fold_by_fold(two_fold_groups, tmp_path, monkeypatch):
    from exptrack.compare import run_compare
    from exptrack.options import CompareOptions

    uri, a, b = two_fold_groups
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    result = run_compare(a.run_id, b.run_id, CompareOptions(save_dir=tmp_path / "cmp"))
    c = result.comparisons["val_mean_class_acc"]
    assert result.paired and c.unit == "folds" and c.n_subjects == 2
    assert c.a == pytest.approx(a.interval.mean) and c.b == pytest.approx(b.interval.mean)
    differ = pd.read_csv(tmp_path / "cmp" / "config_difference.csv")  # what tells the two recipes apart
    assert set(differ["key"]) == {"optim.lr", "train.group_model"}
    assert "<td>0.0001</td>" in (tmp_path / "cmp" / "report.html").read_text()  # as set, not 0.000
    assert b.registered.endswith("(best on validation)") and mlflow.get_run(a.run_id).info.run_name == "folds-2"
    assert (tmp_path / "cmp" / "report.html").exists()
    with pytest.raises(Exception, match="is a seed or fold group: compare two groups"):
        run_compare(a.run_id, f"models:/grouped/{a.model_version}")


def _group_run(client, experiment: str, statuses: list[str]) -> str:
    """A group's parent run with a member run per status (as train_group tags them)."""
    group = client.create_run(experiment, tags={groups.GROUP_TAG: "seeds", "group_size": str(len(statuses))})
    for i, status in enumerate(statuses):
        member = client.create_run(experiment, tags={"mlflow.parentRunId": group.info.run_id,
                                                     groups.MEMBER_TAG: f"seed={i}"})
        client.set_terminated(member.info.run_id, status)
    return group.info.run_id


def test_a_group_comparison_refuses_a_group_with_unfinished_members_and_model_only_options():
    """Comparing the two finished seeds of a three-seed recipe would pass off a part as the whole;
    --split, --metric, --method and --data-root compare models, not groups."""
    from exptrack.compare import run_compare
    from exptrack.options import CompareOptions
    from exptrack.errors import ModelError

    client = mlflow.MlflowClient()
    experiment = client.create_experiment("partial-groups")
    whole, partial = _group_run(client, experiment, ["FINISHED"] * 2), _group_run(client, experiment,
                                                                                  ["FINISHED", "FINISHED", "KILLED"])
    with pytest.raises(ModelError, match=rf"group run {partial}: 2 of its 3 members finished \(not: seed=2\); "
                                         rf"finish it first: exptrack train --resume {partial}"):
        run_compare(whole, partial)
    with pytest.raises(ModelError, match="--split val, --metric acc: a group comparison is on its members' "
                                         "kept-model validation"):
        run_compare(whole, whole, CompareOptions(metric="acc", split="val"))


@pytest.mark.parametrize("args, says", [
    (["--seeds", "0,0"], "train.seeds: 0 given more than once"),
    (["--seeds", "1,b"], "train.seeds: 'b' is not an integer"),
    (["--folds", "1"], "data.folds must be 0 (off) or >= 2"),
    (["--folds", "2", "--seeds", "0,1"], "data.folds and train.seeds cannot be combined"),
])
def test_bad_group_flags_are_one_line_errors_before_any_work(args, says, capsys, tmp_path):
    from exptrack.cli import main

    assert main(["train", "--set", f"data.root={tmp_path / 'none'}", "data.demo=false", *args]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and nothing_tracked()


def test_more_folds_than_subjects_stops_before_the_group_run_starts(tiny_demo, make_config, capsys):
    from exptrack.cli import main

    assert main(["train", "--set", f"data.root={tiny_demo}", "data.demo=false", "model.num_classes=3",
                 "--folds", "5"]) == 2
    assert "data.folds=5 needs at least 5 train and val subjects" in capsys.readouterr().err
    assert not mlflow.search_runs(search_all_experiments=True, output_format="list")  # no run was made
