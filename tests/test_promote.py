"""Promotion by a fair comparison, in a real MLflow model registry: on the same data, and by
default on evidence (a paired interval over subjects)."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from exptrack.tracking import registry
from exptrack.errors import ModelError
from exptrack.promote import Candidate, _paired_on_predictions, decide, promote
from exptrack.options import PromoteOptions

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
        registry.set_model_version_tags(NAME, mv.version, {"test_mean_class_acc": value, "test_data_digest": digest})
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
        registry.set_model_version_tags(NAME, version, {"test_mean_class_acc": values[version],
                                                        "test_data_digest": digest})
    return evaluate


def _tags(version: str) -> dict:
    return mlflow.MlflowClient().get_model_version(NAME, version).tags


def test_champion_moves_only_to_a_better_version_on_the_same_data(tmp_path):
    v1, v2 = _add_version(tmp_path, 0.80), _add_version(tmp_path, 0.90)
    assert promote(NAME, PromoteOptions(rule="best"), evaluate=_no_evaluation, current_digest=_today()).champion == v2
    assert registry.alias_version(NAME, "champion") == v2
    assert "no champion before" in _tags(v2)["promotion.decision"]

    v3 = _add_version(tmp_path, 0.85)  # worse: the champion stays
    assert promote(NAME, PromoteOptions(rule="best"), evaluate=_no_evaluation, current_digest=_today()).champion == v2
    assert "does not beat champion" in _tags(v3)["promotion.decision"]

    v4 = _add_version(tmp_path, 0.90)  # a tie keeps the champion
    assert promote(NAME, PromoteOptions(rule="best"), evaluate=_no_evaluation, current_digest=_today()).champion == v2
    assert "does not beat champion" in _tags(v4)["promotion.decision"]

    v5 = _add_version(tmp_path, 0.95)  # better: promoted, the old champion becomes 'previous'
    decision = promote(NAME, PromoteOptions(rule="best"), evaluate=_no_evaluation, current_digest=_today())
    assert decision.champion == v5 and decision.previous == v2
    assert registry.alias_version(NAME, "champion") == v5 and registry.alias_version(NAME, "previous") == v2
    tags = _tags(v5)
    assert tags["promotion.metric"] == "test_mean_class_acc" and tags["promotion.compared_on_digest"] == "d1"
    assert tags["promotion.rule"] == "best" and "promotion.time" in tags and tags["promotion.versions_compared"] == "5"

    v6 = _add_version(tmp_path, 0.99, digest="other")  # evaluated on other test data: never compared
    assert promote(NAME, PromoteOptions(rule="best"), evaluate=_no_evaluation, current_digest=_today()).champion == v5
    assert "not compared: evaluated on other data (digest other, now d1)" in _tags(v6)["promotion.decision"]
    assert _tags(v6)["promotion.compared_on_digest"] == "d1"
    assert "below the best candidate" in _tags(v1)["promotion.decision"]
    assert registry.alias_version(NAME, "champion") == v5


def test_versions_without_the_metric_are_evaluated_first(tmp_path):
    v1 = _add_version(tmp_path, 0.5)
    v2 = _add_version(tmp_path, None)
    evaluated = []

    fake_evaluate = _evaluator({v2: 0.7}, "d1", evaluated)
    assert promote(NAME, PromoteOptions(rule="best"), evaluate=fake_evaluate, current_digest=_today()).champion == v2
    assert evaluated == [f"models:/{NAME}/{v2}"]
    assert "below the best candidate" in _tags(v1)["promotion.decision"]


def test_a_version_the_split_cannot_score_is_left_out_with_its_reason(tmp_path):
    """A fold ensemble trained on every non-test subject: `promote --split val` leaves it out
    (it aborted the whole promotion before); as the champion, the promotion is refused."""
    from exptrack.evaluation import SplitIsTrainingData

    v1 = _add_version(tmp_path, 0.5)
    v2 = _add_version(tmp_path, None)

    def trained_on_it(uri: str, split: str, data_root) -> None:
        raise SplitIsTrainingData(f"model {uri}: an ensemble of fold models")

    assert promote(NAME, PromoteOptions(rule="best"), evaluate=trained_on_it, current_digest=_today()).champion == v1
    assert _tags(v2)["promotion.decision"].startswith("not compared: test is its training data")
    registry.set_alias(NAME, "champion", v2)
    with pytest.raises(ModelError, match=f"champion v{v2} of {NAME}: .*promote on test"):
        promote(NAME, PromoteOptions(rule="best"), evaluate=trained_on_it, current_digest=_today())


def test_without_a_champion_only_versions_evaluated_on_todays_data_compete(tmp_path):
    v1 = _add_version(tmp_path, 0.90, digest="A")
    v2 = _add_version(tmp_path, 0.95, digest="B")  # better, but on other data than today's
    assert promote(NAME, PromoteOptions(rule="best"), evaluate=_no_evaluation, current_digest=_today("A")).champion == v1
    assert "not compared: evaluated on other data (digest B, now A)" in _tags(v2)["promotion.decision"]


def test_a_champion_evaluated_on_other_data_is_evaluated_again_first(tmp_path):
    v1 = _add_version(tmp_path, 0.90, digest="old")
    assert promote(NAME, PromoteOptions(rule="best"), evaluate=_no_evaluation, current_digest=_today("old")).champion == v1
    v2 = _add_version(tmp_path, 0.80, digest="new")  # the data changed: v2 was evaluated on it
    calls: list = []
    # on today's data the champion scores 0.70: v2 (0.80) is better on the same clips
    decision = promote(NAME, PromoteOptions(rule="best"), evaluate=_evaluator({v1: 0.70}, "new", calls), current_digest=_today("new"))
    assert calls == [f"models:/{NAME}/{v1}"]  # only the champion; v2 is already on today's data
    assert decision.champion == v2 and decision.digest == "new"
    assert _tags(v1)["test_data_digest"] == "new" and _tags(v1)["promotion.decision"] == f"replaced by v{v2}"

    v3 = _add_version(tmp_path, 0.99, digest="old")  # stale and not champion: sits out unless --reevaluate
    assert promote(NAME, PromoteOptions(rule="best"), evaluate=_no_evaluation, current_digest=_today("new")).champion == v2
    calls.clear()
    decision = promote(NAME, PromoteOptions(rule="best", reevaluate=True), evaluate=_evaluator({v3: 0.85}, "new", calls), current_digest=_today("new"))
    assert calls == [f"models:/{NAME}/{v3}"] and decision.champion == v3


def test_decide_rule_without_registry():
    c = [Candidate("1", 0.8, "a"), Candidate("2", 0.8, "a")]
    assert decide(None, c).champion == "1"  # ties without a champion: the older version
    assert decide(Candidate("1", 0.8, "a"), [Candidate("2", float("nan"), "a")]).champion == "1"


def test_promote_without_versions_is_an_error():
    with pytest.raises(ModelError, match="has no versions"):
        promote("nothing-here", PromoteOptions(rule="best"), evaluate=_no_evaluation)


def test_promote_command_shows_each_versions_scores(tmp_path, capsys, monkeypatch):
    import exptrack.promote as promotion
    from exptrack.cli import main

    monkeypatch.setattr(promotion, "evaluation_digest", lambda uri, split, data_root, memo=None: "d1")

    v1 = _add_version(tmp_path, 0.8)
    registry.set_model_version_tags(NAME, v1, {"test_acc": 0.85, "test_top3_acc": 0.97})
    assert main(["promote", "--name", NAME]) == 0
    out = capsys.readouterr().out
    assert f"version {v1}: " in out and "[test: acc 0.850, top3_acc 0.970, mean_class_acc 0.800]" in out
    assert f"champion of {NAME}: version {v1}" in out


def test_versions_tagged_in_the_old_vocabulary_are_still_compared(tmp_path):
    """Versions evaluated before the one metric vocabulary carry test_mean_class_accuracy; the
    promotion reads it, under either spelling of --metric."""
    old = _add_version(tmp_path, None)
    registry.set_model_version_tags(NAME, old, {"test_mean_class_accuracy": 0.9, "test_data_digest": "d1"})
    new = _add_version(tmp_path, 0.8)
    for metric in ("test_mean_class_acc", "test_mean_class_accuracy"):
        decision = promote(NAME, PromoteOptions(metric=metric, rule="best"), evaluate=_no_evaluation, current_digest=_today())
        assert decision.champion == old and _tags(new)["promotion.metric"] == "test_mean_class_acc"


def _predictions(accuracy_by_subject: list[float], per_subject: int = 30, seed: int = 0) -> pd.DataFrame:
    """An evaluation's predictions.csv: right with the subject's accuracy (the same clips and
    labels for every seed)."""
    rng = np.random.default_rng(seed)
    n = len(accuracy_by_subject)
    subject = np.repeat([f"s{i}" for i in range(n)], per_subject)
    true = np.tile(np.arange(per_subject) % 3, n)
    right = rng.random(len(true)) < np.repeat(accuracy_by_subject, per_subject)
    return pd.DataFrame({"subject": subject, "start_frame": np.tile(np.arange(per_subject) * 16, n), "true": true,
                         "predicted": np.where(right, true, (true + 1) % 3)})


def _add_evaluated_version(tmp_path, accuracy_by_subject: list[float], seed: int) -> str:
    """A version with an evaluation run holding its per-clip predictions, as evaluate leaves it."""
    from exptrack.stats import mean_class_accuracy

    table = _predictions(accuracy_by_subject, seed=seed)
    version = _add_version(tmp_path, mean_class_accuracy(table["true"].to_numpy(), table["predicted"].to_numpy()))
    folder = tmp_path / f"eval-{version}"
    folder.mkdir()
    table.to_csv(folder / "predictions.csv", index=False)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), "results")
    registry.set_model_version_tags(NAME, version, {"test_evaluation_run": run.info.run_id})
    return version


def test_the_interval_rule_promotes_a_clearly_better_version(tmp_path):
    champion = _add_evaluated_version(tmp_path, [0.5] * 8, seed=1)
    assert promote(NAME, evaluate=_no_evaluation, current_digest=_today()).champion == champion
    better = _add_evaluated_version(tmp_path, [0.9] * 8, seed=2)
    decision = promote(NAME, evaluate=_no_evaluation, current_digest=_today())
    assert decision.champion == better and decision.evidence.low > 0 and decision.evidence.n_subjects == 8
    assert "promoted: beats champion" in _tags(better)["promotion.decision"]
    assert _tags(better)["promotion.rule"] == "interval"
    assert _tags(better)["promotion.evidence"].startswith("t 95% [+") and "8 subjects" in _tags(better)["promotion.evidence"]


def test_the_interval_rule_keeps_the_champion_against_a_higher_but_indistinguishable_version(tmp_path):
    """Higher on the pooled figure by luck on 3 subjects: strictly-higher would promote it, the
    interval rule does not, and says why."""
    champion = _add_evaluated_version(tmp_path, [0.7, 0.7, 0.7], seed=1)
    promote(NAME, evaluate=_no_evaluation, current_digest=_today())
    lucky = _add_evaluated_version(tmp_path, [0.95, 0.6, 0.7], seed=3)
    assert float(_tags(lucky)["test_mean_class_acc"]) > float(_tags(champion)["test_mean_class_acc"])
    decision = promote(NAME, evaluate=_no_evaluation, current_digest=_today())
    assert decision.champion == champion and decision.evidence.low < 0
    assert "kept out: not shown better than champion" in _tags(lucky)["promotion.decision"]
    assert promote(NAME, PromoteOptions(rule="best"), evaluate=_no_evaluation, current_digest=_today()).champion == lucky


def test_the_interval_rule_keeps_the_champion_against_a_worse_or_tied_version(tmp_path):
    champion = _add_evaluated_version(tmp_path, [0.8] * 5, seed=1)
    promote(NAME, evaluate=_no_evaluation, current_digest=_today())
    _add_evaluated_version(tmp_path, [0.5] * 5, seed=2)  # worse
    tied = _add_evaluated_version(tmp_path, [0.8] * 5, seed=1)  # the very same predictions
    assert promote(NAME, evaluate=_no_evaluation, current_digest=_today()).champion == champion
    assert "does not beat champion" in _tags(tied)["promotion.decision"]


def test_the_interval_rule_with_one_subject_gives_no_interval_and_keeps_the_champion(tmp_path):
    champion = _add_evaluated_version(tmp_path, [0.5], seed=1)
    promote(NAME, evaluate=_no_evaluation, current_digest=_today())
    better = _add_evaluated_version(tmp_path, [0.9], seed=2)
    assert promote(NAME, evaluate=_no_evaluation, current_digest=_today()).champion == champion
    assert "on 1 subject: no interval can say it is better" in _tags(better)["promotion.decision"]


def test_the_min_improvement_is_what_the_interval_must_clear(tmp_path):
    _add_evaluated_version(tmp_path, [0.6] * 8, seed=1)
    promote(NAME, evaluate=_no_evaluation, current_digest=_today())
    better = _add_evaluated_version(tmp_path, [0.75] * 8, seed=2)
    decision = promote(NAME, PromoteOptions(min_improvement=0.5), evaluate=_no_evaluation, current_digest=_today())
    assert decision.champion != better and "by more than 0.5" in _tags(better)["promotion.decision"]


def test_the_interval_rule_refuses_a_metric_it_cannot_pair(tmp_path):
    _add_version(tmp_path, 0.8)
    with pytest.raises(ModelError, match="not test_macro_f1"):
        promote(NAME, PromoteOptions(metric="test_macro_f1"), evaluate=_no_evaluation, current_digest=_today())


@pytest.mark.slow
def test_promotion_on_evidence_end_to_end(tiny_demo, make_config):
    """Two trained versions, really evaluated: the challenger is tested against the champion on
    the same clips' predictions, paired over the test subjects; `--split val` works too."""
    from exptrack.train import train

    fast = ("model.width=0.125", "train.batch_size=8", "train.num_workers=0", "train.epochs=2",
            "mlflow.experiment=promote-e2e", "mlflow.log_system_metrics=false", f"mlflow.registered_model={NAME}")
    first = train(make_config(tiny_demo, *fast), progress=False)
    decision = promote(NAME)
    assert decision.champion == first.model_version and decision.evidence is None  # no champion before
    second = train(make_config(tiny_demo, *fast, "train.seed=7", "train.epochs=3"), progress=False)
    decision = promote(NAME)
    assert decision.compared == 2 and _tags(decision.champion)["promotion.versions_compared"] == "2"
    versions = {v["version"]: v for v in registry.model_versions(NAME)}
    evidence = _paired_on_predictions(versions, "test_mean_class_acc", "test", "t")(
        first.model_version, second.model_version)
    assert evidence.n_subjects == 2 and evidence.low is not None  # the two evaluations' clips, paired
    on_val = promote(NAME, PromoteOptions(split="val", metric="val_mean_class_acc"))
    assert on_val.champion in (first.model_version, second.model_version)
    assert "val_data_digest" in _tags(first.model_version)


def test_the_model_card_keeps_speed_apart_from_quality_and_prints_numbers_as_read():
    from exptrack.model_card import GAP, render

    card = render("m", {"version": "3", "tags": {}}, {"params": {"optim.lr": "0.0001591234"}, "metrics": {}},
                  None, {"test": {"run_id": "r", "metrics": {"test_mean_class_acc": 0.973980188369751, "test_clips": 7.0,
                                                             "test_clips_per_s": 412.3456, "test_seconds": 2.5}}})
    quality, speed = card.split("Speed of that evaluation")
    assert f"| mean_class_acc{GAP} | 0.974 |" in quality and "clips_per_s" not in quality
    assert f"| clips{GAP} | 7 |" in quality  # a count, not 7.000
    assert f"| clips_per_s{GAP} | 412.346 |" in speed and f"| seconds{GAP} | 2.500 |" in speed
    assert f"| `optim.lr`{GAP} | 0.000159123 |" in card  # a setting as set (6 significant figures)


def test_figures_print_as_read():
    from exptrack.formatting import figure, setting

    assert figure(0.3 - 0.2 - 0.1) == "0.000"  # rounding noise, not -2.78e-17
    assert figure(0.004, fixed=True) == "0.004" and figure(0.004) == "4.00e-03"  # a probability; a learning rate
    assert (setting(0.05), setting(0.0502), setting(3e-4), setting(16), setting("auto")) == \
        ("0.05", "0.0502", "0.0003", "16", "auto")


def test_a_metric_of_another_split_is_refused():
    with pytest.raises(ModelError, match="--metric test_mean_class_acc is a figure of the test split.*use val_mean_class_acc"):
        promote(NAME, PromoteOptions(rule="best", split="val", metric="test_mean_class_acc"), evaluate=_no_evaluation)
