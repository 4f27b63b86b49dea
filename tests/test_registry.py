"""Promotion by a fair comparison, in a real MLflow model registry."""

from __future__ import annotations

import mlflow
import pytest

from exptrack import tracking
from exptrack.registry import Candidate, decide, promote

NAME = "promo-test"


def _add_version(tmp_path, value: float | None, digest: str = "d1") -> str:
    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(NAME)
    except mlflow.exceptions.MlflowException:
        pass
    mlflow.set_experiment("registry-test")  # this test's store (the active id is process-global)
    with mlflow.start_run() as run:
        mlflow.log_text("weights", "model/placeholder.txt")
    mv = client.create_model_version(NAME, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    if value is not None:
        tracking.set_model_version_tags(NAME, mv.version, {"test_mean_class_accuracy": value, "test_data_digest": digest})
    return str(mv.version)


def _no_evaluation(*_args):
    raise AssertionError("every version already has the metric: nothing should be evaluated")


def _today(digest: str = "d1"):
    """current_digest: the test data today has this digest (for every version)."""
    return lambda uri, split, data_root: digest


def _evaluator(values: dict[str, float], digest: str, calls: list):
    """evaluate: tags the version with its value from `values` on `digest` (as exptrack's evaluate does)."""
    def evaluate(uri: str, split: str, data_root):
        calls.append(uri)
        version = uri.rsplit("/", 1)[1]
        tracking.set_model_version_tags(NAME, version, {"test_mean_class_accuracy": values[version],
                                                        "test_data_digest": digest})
    return evaluate


def _tags(version: str) -> dict:
    return mlflow.MlflowClient().get_model_version(NAME, version).tags


def test_champion_moves_only_to_a_better_version_on_the_same_data(tmp_path):
    v1, v2 = _add_version(tmp_path, 0.80), _add_version(tmp_path, 0.90)
    assert promote(NAME, evaluate=_no_evaluation, current_digest=_today()).champion == v2
    assert tracking.alias_version(NAME, "champion") == v2
    assert "no champion before" in _tags(v2)["promotion.decision"]

    v3 = _add_version(tmp_path, 0.85)  # worse: the champion stays
    assert promote(NAME, evaluate=_no_evaluation, current_digest=_today()).champion == v2
    assert "does not beat champion" in _tags(v3)["promotion.decision"]

    v4 = _add_version(tmp_path, 0.90)  # a tie keeps the champion
    assert promote(NAME, evaluate=_no_evaluation, current_digest=_today()).champion == v2

    v5 = _add_version(tmp_path, 0.95)  # better: promoted, the old champion becomes 'previous'
    decision = promote(NAME, evaluate=_no_evaluation, current_digest=_today())
    assert decision.champion == v5 and decision.previous == v2
    assert tracking.alias_version(NAME, "champion") == v5 and tracking.alias_version(NAME, "previous") == v2
    tags = _tags(v5)
    assert tags["promotion.metric"] == "test_mean_class_accuracy" and tags["promotion.compared_on_digest"] == "d1"
    assert float(tags["promotion.value"]) == 0.95 and "promotion.time" in tags

    v6 = _add_version(tmp_path, 0.99, digest="other")  # evaluated on other test data: never compared
    assert promote(NAME, evaluate=_no_evaluation, current_digest=_today()).champion == v5
    assert "not compared: evaluated on other data (digest other, now d1)" in _tags(v6)["promotion.decision"]
    assert _tags(v6)["promotion.compared_on_digest"] == "d1"
    assert "below the best candidate" in _tags(v1)["promotion.decision"] or v1 not in promote(
        NAME, evaluate=_no_evaluation).reasons
    assert tracking.alias_version(NAME, "champion") not in (v4, v6)


def test_versions_without_the_metric_are_evaluated_first(tmp_path):
    v1 = _add_version(tmp_path, 0.5)
    v2 = _add_version(tmp_path, None)
    evaluated = []

    fake_evaluate = _evaluator({v2: 0.7}, "d1", evaluated)
    assert promote(NAME, evaluate=fake_evaluate, current_digest=_today()).champion == v2
    assert evaluated == [f"models:/{NAME}/{v2}"]
    assert "below the best candidate" in _tags(v1)["promotion.decision"]


def test_without_a_champion_only_versions_evaluated_on_todays_data_compete(tmp_path):
    v1 = _add_version(tmp_path, 0.90, digest="A")
    v2 = _add_version(tmp_path, 0.95, digest="B")  # better, but on other data than today's
    assert promote(NAME, evaluate=_no_evaluation, current_digest=_today("A")).champion == v1
    assert "not compared: evaluated on other data (digest B, now A)" in _tags(v2)["promotion.decision"]


def test_a_champion_evaluated_on_other_data_is_evaluated_again_first(tmp_path):
    v1 = _add_version(tmp_path, 0.90, digest="old")
    assert promote(NAME, evaluate=_no_evaluation, current_digest=_today("old")).champion == v1
    v2 = _add_version(tmp_path, 0.80, digest="new")  # the data changed: v2 was evaluated on it
    calls: list = []
    # on today's data the champion scores 0.70: v2 (0.80) is better on the same clips
    decision = promote(NAME, evaluate=_evaluator({v1: 0.70}, "new", calls), current_digest=_today("new"))
    assert calls == [f"models:/{NAME}/{v1}"]  # only the champion; v2 is already on today's data
    assert decision.champion == v2 and decision.digest == "new"
    assert _tags(v1)["test_data_digest"] == "new" and _tags(v1)["promotion.decision"] == f"replaced by v{v2}"

    v3 = _add_version(tmp_path, 0.99, digest="old")  # stale and not champion: sits out unless --reevaluate
    assert promote(NAME, evaluate=_no_evaluation, current_digest=_today("new")).champion == v2
    calls.clear()
    decision = promote(NAME, evaluate=_evaluator({v3: 0.85}, "new", calls), current_digest=_today("new"),
                       reevaluate=True)
    assert calls == [f"models:/{NAME}/{v3}"] and decision.champion == v3


def test_decide_rule_without_registry():
    c = [Candidate("1", 0.8, "a"), Candidate("2", 0.8, "a")]
    assert decide(None, c).champion == "1"  # ties without a champion: the older version
    assert decide(Candidate("1", 0.8, "a"), [Candidate("2", float("nan"), "a")]).champion == "1"


def test_promote_without_versions_is_an_error():
    with pytest.raises(ValueError, match="has no versions"):
        promote("nothing-here", evaluate=_no_evaluation)


def test_promote_command_shows_each_versions_scores(tmp_path, capsys, monkeypatch):
    from exptrack import evaluation
    from exptrack.cli import main

    monkeypatch.setattr(evaluation, "evaluation_digest", lambda uri, split, data_root, memo=None: "d1")

    v1 = _add_version(tmp_path, 0.8)
    tracking.set_model_version_tags(NAME, v1, {"test_accuracy": 0.85, "test_top3_accuracy": 0.97})
    assert main(["promote", "--name", NAME]) == 0
    out = capsys.readouterr().out
    assert f"version {v1}: " in out and "[test: accuracy 0.850, top3_accuracy 0.970, mean_class_accuracy 0.800]" in out
    assert f"champion of {NAME}: version {v1}" in out
