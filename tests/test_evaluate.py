"""Evaluation metrics on hand-checked cases, and `evaluate` by every kind of model reference."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from exptrack.evaluation import clip_metrics, run_evaluate
from exptrack.options import EvaluateOptions


def test_clip_metrics_hand_checked():
    y_true = np.array([0, 0, 1, 1, 1, 2])
    probs = np.array([
        [0.7, 0.2, 0.1],  # 0 -> 0
        [0.2, 0.5, 0.3],  # 0 -> 1
        [0.1, 0.8, 0.1],  # 1 -> 1
        [0.1, 0.6, 0.3],  # 1 -> 1
        [0.5, 0.1, 0.4],  # 1 -> 0
        [0.1, 0.2, 0.7],  # 2 -> 2
    ])
    r = clip_metrics(y_true, probs)
    assert r.summary["acc"] == pytest.approx(4 / 6)
    assert r.summary["mean_class_acc"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert r.summary["top3_acc"] == 1.0  # three classes: the true one is always in the top 3
    # class 0: predicted for clips 0 and 4 -> precision 1/2; recall 1/2
    assert r.per_class.loc[0, "precision"] == pytest.approx(0.5) and r.per_class.loc[0, "recall"] == pytest.approx(0.5)
    assert r.per_class.loc[1, "precision"] == pytest.approx(2 / 3) and r.per_class.loc[1, "support"] == 3
    np.testing.assert_array_equal(r.confusion.values, [[1, 1, 0], [1, 2, 0], [0, 0, 1]])
    np.testing.assert_allclose(r.confusion_normalized.sum(axis=1), 1.0)
    assert r.confusion_normalized.loc[1, 0] == pytest.approx(1 / 3)
    assert r.errors[["true", "predicted", "count"]].values.tolist() == [[0, 1, 1], [1, 0, 1]]
    np.testing.assert_allclose(r.errors["share_of_true"], [1 / 2, 1 / 3])  # ties: larger share first


@pytest.mark.slow
def test_evaluate_and_predict_give_a_test_video_the_same_timeline(tiny_trained, tmp_path, monkeypatch):
    """evaluate's timeline of a subject is predict's of its video (the same windows over the whole
    video, issue 32: evaluate left gaps where predict did not), so their frame figures agree."""
    from exptrack.data.layout import read_split
    from exptrack.predict import predict_video
    from exptrack.options import PredictOptions

    uri, cfg, result = tiny_trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = str(result.checkpoint_dir / "best_model.pt")
    evaluation = run_evaluate(model, EvaluateOptions(split="test", save_dir=tmp_path / "e", progress=False))
    subject = sorted(s for s, (split, _) in read_split(Path(cfg.data.root) / "split.csv").items() if split == "test")[0]
    timeline = predict_video(f"{cfg.data.root}/dataset/anon/{subject}.mp4", model, PredictOptions(save_dir=tmp_path / "p"))
    evaluated = pd.read_csv(tmp_path / "e" / "timelines" / f"{subject}.csv")
    np.testing.assert_array_equal(evaluated["predicted"], timeline.frames["predicted"])
    np.testing.assert_array_equal(evaluated["true"], timeline.frames["true"])
    # both runs say which rest weight drew their timelines: the model's, chosen in training
    weight = torch.load(model, weights_only=True)["rest_weight"]
    client = mlflow.MlflowClient()  # where the two commands logged
    for run_id in (evaluation.run_id, timeline.run_id):
        assert float(client.get_run(run_id).data.tags["rest_weight"]) == pytest.approx(weight, rel=1e-3)


@pytest.mark.slow
def test_every_model_reference_gives_the_same_numbers(tiny_trained, tmp_path, monkeypatch):
    uri, cfg, result = tiny_trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    name = cfg.mlflow.registered_model
    refs = [f"models:/{name}/{result.model_version}", f"models:/{name}/latest", f"models:/{result.model_id}",
            f"runs:/{result.run_id}", result.run_id, str(result.checkpoint_dir / "best_model.pt")]
    summaries = []
    for i, ref in enumerate(refs):
        evaluation = run_evaluate(ref, EvaluateOptions(split="test", save_dir=tmp_path / f"r{i}", progress=False))
        report = evaluation.report
        summaries.append(report.summary)
        assert (tmp_path / f"r{i}" / "predictions.csv").exists()
    for s in summaries[1:]:
        assert s == pytest.approx(summaries[0])

    client = mlflow.MlflowClient()
    version = client.get_model_version(name, result.model_version)
    assert float(version.tags["test_acc"]) == pytest.approx(summaries[0]["acc"], abs=1e-6)
    runs = mlflow.search_runs(experiment_names=["eval-test"], filter_string="tags.`exptrack.command` = 'evaluate'",
                              output_format="list")
    assert len(runs) == len(refs) and {r.data.tags["split"] for r in runs} == {"test"}
    by_version = next(r for r in runs if r.data.tags.get("model_version") == result.model_version)
    # the evaluation took the logged model as its input, and its metrics are on the model's page
    inputs = mlflow.get_run(by_version.info.run_id).inputs
    assert [m.model_id for m in inputs.model_inputs] == [result.model_id]
    linked = {m.key: m for m in mlflow.get_logged_model(result.model_id).metrics}
    assert linked["test_acc"].value == pytest.approx(summaries[0]["acc"])
    assert linked["test_acc"].dataset_name == "clips-test"
    assert by_version.data.tags["data_digest"] and by_version.data.metrics["test_acc"] == pytest.approx(
        summaries[0]["acc"])
    # promotion evaluates nothing new (the version has its test metrics) and names a champion;
    # evaluating by alias gives the same numbers again
    from exptrack.promote import promote

    assert promote(name).champion == result.model_version
    report = run_evaluate(f"models:/{name}@champion", EvaluateOptions(split="test", save_dir=tmp_path / "alias", progress=False)).report
    assert report.summary == pytest.approx(summaries[0])

    predictions = pd.read_csv(tmp_path / "r0" / "predictions.csv")
    assert {"subject", "start_frame", "true", "predicted", "true_name", "predicted_name", "top3",
            "prob_0"} <= set(predictions.columns)
    for png in ("confusion_matrix.png", "confusion_matrix_normalized.png"):
        assert (tmp_path / "r0" / png).stat().st_size > 0


def test_an_evaluation_with_other_inputs_is_an_ablation_not_the_versions_score(tiny_trained, tmp_path, monkeypatch):
    """`evaluate --set data.use_masks=...` on a registered version once became its official test
    figures (promote and compare then used them)."""
    from exptrack.config import load_config
    from exptrack.evaluation import find_evaluation

    uri, cfg, result = tiny_trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    name, client = cfg.mlflow.registered_model, mlflow.MlflowClient()
    before = client.get_model_version(name, result.model_version).tags
    base = load_config(None, [f"mlflow.tracking_uri={uri}", "mlflow.experiment=ablation-test",
                              f"paths.cache={cfg.paths.cache}", f"paths.outputs={tmp_path / 'out'}"])
    flipped = not cfg.data.use_masks
    evaluation = run_evaluate(f"models:/{name}/{result.model_version}", EvaluateOptions(split="test", progress=False),
                              overrides={"data": {"use_masks": flipped}}, base_config=base)
    assert client.get_model_version(name, result.model_version).tags == before  # its figures, card, evaluation run
    run = client.get_run(evaluation.run_id)
    assert run.data.tags["inputs"] == f"data.use_masks={flipped}"
    assert find_evaluation(result.model_id, "test", run.data.tags["data_digest"]) != evaluation.run_id


def test_unknown_model_reference_is_a_clear_error(tmp_path):
    from exptrack.data.errors import DataError
    from exptrack.errors import ModelError

    with pytest.raises(ModelError, match="not a models:/ or runs:/ URI") as caught:
        run_evaluate(str(tmp_path / "missing.pt"), EvaluateOptions(progress=False))
    assert not isinstance(caught.value, DataError)  # a model reference is not bad data
    with pytest.raises(ModelError, match="models:/nothing@champion: not found"):
        run_evaluate("models:/nothing@champion", EvaluateOptions(progress=False))
    with pytest.raises(ModelError, match="models:/nothing: which version\\? models:/nothing/<version>"):
        run_evaluate("models:/nothing", EvaluateOptions(progress=False))


def test_the_evaluate_run_spans_the_work(tiny_trained, tmp_path, monkeypatch):
    """The run is open while data is prepared and the model runs, so the UI shows how long the
    command took (it used to be opened at the end, lasting a fraction of a second)."""
    import time

    import exptrack.evaluation as evaluation

    uri, cfg, result = tiny_trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    real = evaluation.prepare_data

    def slow_prepare(*args, **kwargs):
        time.sleep(1.5)  # a stand-in for decoding a large dataset
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "prepare_data", slow_prepare)
    evaluation = run_evaluate(str(result.checkpoint_dir / "best_model.pt"), EvaluateOptions(split="test", save_dir=tmp_path / "r", progress=False))
    run = mlflow.search_runs(experiment_names=["eval-test"], filter_string="tags.`exptrack.command` = 'evaluate'",
                             order_by=["attributes.start_time DESC"], max_results=1, output_format="list")[0]
    assert run.info.end_time - run.info.start_time >= 1500
    # frame scores both ways, rest precision and recall (the model has a rest output), raw and smoothed
    assert {"test_frame_acc_all", "test_rest_recall", "test_rest_recall_smoothed"} <= set(run.data.metrics)


def _edited_checkpoint(result, tmp_path, **changes) -> str:
    """A copy of the trained model's checkpoint with `section.key` values of its config changed."""
    from exptrack.models.weights import load_weights, save_atomic

    payload = load_weights(result.checkpoint_dir / "best_model.pt")
    for key, value in changes.items():
        section, name = key.split("__")
        payload["config"][section][name] = value
    return str(save_atomic(payload, tmp_path / "edited.pt"))


@pytest.mark.slow
def test_a_checkpoint_whose_config_disagrees_with_its_weights_is_a_clear_error(tiny_trained, tmp_path, monkeypatch):
    from exptrack.errors import ModelError
    from exptrack.predict import predict_video

    uri, cfg, result = tiny_trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    edited = _edited_checkpoint(result, tmp_path, model__num_classes=5)
    with pytest.raises(ModelError, match=r"weights do not fit the C3D its own config describes \(model.num_classes 5"):
        run_evaluate(edited, EvaluateOptions(progress=False))
    video = next(Path(cfg.data.root).rglob("*.mp4"))
    with pytest.raises(ModelError, match="size mismatch for classifier"):
        predict_video(video, edited)


@pytest.mark.slow
def test_evaluate_never_writes_where_the_models_config_points(tiny_trained, tmp_path, monkeypatch):
    """A model trained on generated demo data at an absolute path elsewhere, into another
    tracking store: evaluating it never generates data or a cache there, nor tracks there (the
    store the model was found in holds the evaluation), and a missing --data-root is an error."""
    from exptrack.data.errors import DataError

    uri, cfg, result = tiny_trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    elsewhere = tmp_path / "elsewhere"
    edited = _edited_checkpoint(result, tmp_path, data__demo=True, data__root=str(elsewhere / "data"),
                                paths__cache=str(elsewhere / "cache"), paths__outputs=str(elsewhere / "outputs"),
                                mlflow__tracking_uri=f"sqlite:///{elsewhere / 'mlflow.db'}")
    with pytest.raises(DataError, match="data root not found"):
        run_evaluate(edited, EvaluateOptions(progress=False))
    with pytest.raises(DataError, match="data root not found"):
        run_evaluate(edited, EvaluateOptions(data_root=str(tmp_path / "nonexistent"), progress=False))
    assert not elsewhere.exists() and not (tmp_path / "nonexistent").exists()

    evaluation = run_evaluate(edited, EvaluateOptions(data_root=cfg.data.root, progress=False))  # real data: works, files stay here
    assert not elsewhere.exists()
    assert evaluation.out_dir.resolve().is_relative_to(Path.cwd().resolve()) and Path("outputs/cache").is_dir()
    assert mlflow.MlflowClient().get_run(evaluation.run_id).info.status == "FINISHED"  # the store in use


@pytest.mark.slow
def test_evaluate_applies_a_config_files_data_keys_and_keeps_the_models_experiment(tiny_trained, tmp_path,
                                                                                  monkeypatch, capsys):
    """`--config` with a data.root was ignored (the model's own root evaluated, exit 0) while the
    same key by --set applied; and a --set data.* key moved the run to the default experiment."""
    from exptrack.cli import main

    uri, cfg, result = tiny_trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    model = f"models:/{cfg.mlflow.registered_model}/{result.model_version}"
    config = tmp_path / "other.yaml"
    config.write_text(f"data:\n  root: {tmp_path / 'nonexistent'}\ntrain:\n  epochs: 3\n")  # train.*: the model's own
    assert main(["evaluate", "--model", model, "--config", str(config), "--no-progress"]) == 2
    assert "nonexistent" in capsys.readouterr().err
    assert main(["evaluate", "--model", model, "--set", f"data.root={cfg.data.root}", "--no-progress"]) == 0
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`exptrack.command` = 'evaluate'",
                              order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    assert runs[0].info.experiment_id == mlflow.get_experiment_by_name(cfg.mlflow.experiment).experiment_id


@pytest.mark.slow
def test_evaluate_labels_classes_by_the_models_own_names_not_the_data_roots(tiny_trained, tiny_copy, tmp_path,
                                                                            monkeypatch):
    """One rule for class names (the model's own), in evaluate as in predict and visualize: a data
    root whose classes.csv names the classes otherwise does not relabel them."""
    from exptrack.data.layout import output_names, write_class_names

    uri, cfg, result = tiny_trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    own = output_names(cfg.data.root, 3, rest_class=True)
    write_class_names(tiny_copy, ["x", "y", "z"])
    evaluation = run_evaluate(str(result.checkpoint_dir / "best_model.pt"), EvaluateOptions(data_root=str(tiny_copy), save_dir=tmp_path / "r", progress=False))
    predictions = pd.read_csv(tmp_path / "r" / "predictions.csv")
    assert set(predictions["true_name"]) <= set(own) and list(evaluation.report.per_class["name"]) == [
        own[c] for c in evaluation.report.per_class.index]
