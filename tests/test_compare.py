"""`exptrack compare A B` end to end on tiny trained models, in a real MLflow store."""

from __future__ import annotations

import html
import re

import mlflow
import pandas as pd
import pytest

from exptrack.cli import main
from exptrack.compare import run_compare
from exptrack.options import CompareOptions
from exptrack.train import train

FAST = ("model.width=0.125", "train.batch_size=8", "train.num_workers=0", "mlflow.experiment=compare-test",
        "mlflow.log_system_metrics=false", "mlflow.registered_model=compare-test")


@pytest.fixture
def two_models(tiny_demo, make_config):
    a = train(make_config(tiny_demo, *FAST, "train.epochs=2"), progress=False)
    b = train(make_config(tiny_demo, *FAST, "train.epochs=3", "train.seed=5"), progress=False)
    return f"models:/compare-test/{a.model_version}", f"models:/compare-test/{b.model_version}"


def _evaluate_runs() -> int:
    client = mlflow.MlflowClient()
    return len(client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string="tags.`exptrack.command` = 'evaluate'"))


@pytest.mark.slow
def test_compare_pairs_two_models_and_writes_one_run_with_its_report(two_models):
    result = run_compare(*two_models, CompareOptions(progress=False, gradcam=1))
    assert result.paired and result.comparisons["mean_class_acc"].n_subjects == 2
    report = (result.out_dir / "report.html").read_text()
    assert result.verdict.split(" (")[0] in report and "data:image/png;base64," in report  # self-contained
    run = mlflow.MlflowClient().get_run(result.run_id)
    assert len(run.inputs.model_inputs) == 2  # both logged models are the run's inputs
    assert {"diff_mean_class_acc", "low_mean_class_acc", "p_better_mean_class_acc"} <= set(run.data.metrics)
    assert run.data.tags["compare.verdict"] in ("better", "worse", "not distinguishable")
    artifacts = {f.path for f in mlflow.MlflowClient().list_artifacts(result.run_id, "compare")}
    assert {"compare/report.html", "compare/per_class.csv", "compare/fixed_clips.csv"} <= artifacts


@pytest.mark.slow
def test_compare_reuses_evaluations_of_the_same_clips(two_models):
    run_compare(*two_models, CompareOptions(progress=False, gradcam=0))
    before = _evaluate_runs()
    run_compare(*two_models, CompareOptions(progress=False, gradcam=0))
    assert _evaluate_runs() == before


@pytest.mark.slow
def test_compare_on_one_subject_gives_no_interval_and_says_so(two_models):
    result = run_compare(*two_models, CompareOptions(split="val", progress=False, gradcam=0))  # the tiny data: 1 val subject
    assert result.comparisons["mean_class_acc"].low is None
    assert "no interval with 1 subject" in result.verdict


def test_compare_of_an_unknown_model_is_one_line(capsys):
    assert main(["compare", "models:/nothing/1", "models:/nothing/2"]) == 2
    err = capsys.readouterr().err
    assert "exptrack compare: error:" in err and "Traceback" not in err


def test_config_values_that_differ_never_print_alike():
    """weight_decay 0.05 against 0.0502 read `0.050 | 0.050` under "Config keys that differ"."""
    from exptrack.compare import config_difference
    from exptrack.config import load_config

    diff = config_difference(load_config(None, ["optim.weight_decay=0.05", "optim.lr=3e-4"]),
                             load_config(None, ["optim.weight_decay=0.0502", "optim.lr=0.000159123456789"]))
    assert diff.set_index("key").loc["optim.weight_decay"].tolist() == ["0.05", "0.0502"]
    assert diff.set_index("key").loc["optim.lr"].tolist() == ["0.0003", "0.000159123"]


def test_a_verdict_on_training_data_is_refused(capsys):
    with pytest.raises(SystemExit) as exited:  # argparse's own exit, before anything is loaded
        main(["compare", "models:/a/1", "models:/b/1", "--split", "train"])
    assert exited.value.code == 2
    assert "invalid choice: 'train'" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_refuses_models_with_different_classes(tiny_demo, make_config, capsys):
    a = train(make_config(tiny_demo, *FAST, "train.epochs=1"), progress=False)
    b = train(make_config(tiny_demo, *FAST, "train.epochs=1", "model.num_classes=4"), progress=False)
    assert main(["compare", f"models:/compare-test/{a.model_version}", f"models:/compare-test/{b.model_version}",
                 "--no-progress"]) == 2
    assert "predict different classes" in capsys.readouterr().err
    c = train(make_config(tiny_demo, *FAST, "train.epochs=1", "model.rest_class=false"), progress=False)
    assert main(["compare", f"models:/compare-test/{a.model_version}", f"models:/compare-test/{c.model_version}",
                 "--no-progress"]) == 2
    assert f"only models:/compare-test/{a.model_version} has a rest output" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_and_promote_through_a_remote_tracking_server(tiny_demo, make_config, tmp_path, monkeypatch, request):
    """Everything through an `mlflow server` whose artifacts are proxied: evaluations'
    predictions come back through it, for promotion's evidence and for the report."""
    from exptrack.promote import promote

    from .postgres import MlflowServer

    server = MlflowServer(tmp_path)
    request.addfinalizer(server.kill)
    server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    mlflow.set_tracking_uri(server.url)
    a = train(make_config(tiny_demo, *FAST, "train.epochs=2"), progress=False)
    b = train(make_config(tiny_demo, *FAST, "train.epochs=3", "train.seed=5"), progress=False)
    promote("compare-test")  # v_a alone: champion, evaluated through the server
    result = run_compare(f"models:/compare-test/{a.model_version}", f"models:/compare-test/{b.model_version}", CompareOptions(progress=False, gradcam=0))
    assert result.paired and result.comparisons["mean_class_acc"].low is not None
    assert "compare/report.html" in {f.path for f in mlflow.MlflowClient().list_artifacts(result.run_id, "compare")}
    assert not (tmp_path / "mlruns").exists()  # nothing was written around the server


@pytest.mark.slow
def test_models_with_other_clip_settings_are_compared_unpaired_and_say_so(tiny_demo, make_config):
    a = train(make_config(tiny_demo, *FAST, "train.epochs=1"), progress=False)
    b = train(make_config(tiny_demo, *FAST, "train.epochs=1", "data.eval_stride=4"), progress=False)  # other clips
    result = run_compare(f"models:/compare-test/{a.model_version}", f"models:/compare-test/{b.model_version}", CompareOptions(progress=False, gradcam=0))
    assert not result.paired and result.comparisons["mean_class_acc"].low is None
    assert "not paired" in result.verdict
    assert "Not paired" in (result.out_dir / "report.html").read_text()


@pytest.mark.slow
def test_each_model_is_explained_on_the_clips_as_its_own_config_prepares_them(tiny_demo, make_config):
    """A with masks, B without (the usual ablation): B's GradCAM caption says what B's own
    evaluation predicted (it was computed on A's masked frames before)."""
    a = train(make_config(tiny_demo, *FAST, "train.epochs=1", "data.use_masks=true"), progress=False)
    b = train(make_config(tiny_demo, *FAST, "train.epochs=1", "data.use_masks=false", "train.seed=5"), progress=False)
    result = run_compare(f"models:/compare-test/{a.model_version}", f"models:/compare-test/{b.model_version}",
                         CompareOptions(progress=False, gradcam=1000))
    report = (result.out_dir / "report.html").read_text()
    captions = {c.split(", true")[0]: c for c in map(html.unescape, re.findall("<figcaption>(.*?)</figcaption>", report))
                if c.startswith("subject ")}  # the GradCAM strips' captions
    changed = pd.concat([pd.read_csv(result.out_dir / f"{kind}_clips.csv", dtype={"subject": str})
                         for kind in ("fixed", "broken")])
    assert len(changed) > 0 and len(captions) == len(changed)  # every changed clip explained
    for row in changed.itertuples():
        caption = captions[f"subject {row.subject}, frames {row.start_frame}-{row.end_frame}"]
        assert f"A: {row.predicted_a} (" in caption and f"B: {row.predicted_b} (" in caption


def test_predictions_keep_subject_ids_as_written(tmp_path):
    """`001` is the subject data.subjects knows, not the number 1 (compare looked it up and failed)."""
    from exptrack.evaluation import read_predictions

    (tmp_path / "predictions.csv").write_text("subject,start_frame,true,predicted\n001,0,1,1\n010,8,0,1\n")
    assert list(read_predictions(tmp_path / "predictions.csv")["subject"]) == ["001", "010"]
