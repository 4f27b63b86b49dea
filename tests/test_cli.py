"""The command line: argument parsing, help texts, and what the commands print."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from exptrack.errors import ModelError
from exptrack.cli import _config, build_parser, end_of_run_line, main
from exptrack.config import ConfigError, load_config
from exptrack.training.loop import TrainState


def test_several_values_per_set_and_repeated_set():
    args = build_parser().parse_args(["train", "--set", "optim.lr=0.01", "train.epochs=3", "--set", "train.seed=5"])
    cfg = _config(args)
    assert (cfg.optim.lr, cfg.train.epochs, cfg.train.seed) == (0.01, 3, 5)


@pytest.mark.parametrize("command", ["evaluate", "visualize", "predict", "promote", "plots", "tune"])
def test_every_option_has_help_and_shows_its_default(command, capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"
        if action.default not in (None, False, [], "") and action.default is not True:
            assert "%(default)s" in action.help or "default" in action.help, (command, action.dest)


def test_promote_takes_no_progress(monkeypatch):
    import exptrack.promote as promotion

    seen = {}

    def fake_promote(name, options):
        seen["options"] = options
        raise ModelError("stop here")

    monkeypatch.setattr(promotion, "promote", fake_promote)
    assert main(["promote", "--no-progress"]) == 2
    assert seen["options"].progress is False


def _result(history, best_epoch, version="4"):
    from types import SimpleNamespace

    state = TrainState(epoch=len(history), history=history, best_epoch={"val_mean_class_acc": best_epoch})
    return SimpleNamespace(run_id="abc", state=state, model_version=version)


def test_end_of_run_line_is_one_epoch_of_the_registered_model():
    history = [{"epoch": 1.0, "train_acc": 0.3, "val_acc": 0.14, "val_mean_class_acc": 0.09, "val_top3_acc": 0.5},
               {"epoch": 2.0, "train_acc": 0.4, "val_acc": 0.12, "val_mean_class_acc": 0.11, "val_top3_acc": 0.6}]
    line = end_of_run_line(_result(history, 2))
    assert "model of epoch 2" in line and "mean class accuracy 0.110" in line and "val accuracy 0.120" in line
    assert "0.140" not in line and "registered as version 4" in line


def test_end_of_run_line_of_a_train_plus_val_fit_says_there_was_no_validation():
    line = end_of_run_line(_result([{"epoch": 1.0, "train_acc": 0.5}, {"epoch": 2.0, "train_acc": 0.7}], 2))
    assert "no validation" in line and "inf" not in line and "train accuracy 0.700" in line


def test_evaluate_set_applies_data_keys_and_refuses_others_by_name():
    from exptrack.evaluation import evaluate_overrides

    given = load_config(None, ["data.root=/elsewhere", "data.use_masks=true"])
    assert evaluate_overrides(given, ["data.root", "data.use_masks", "paths.cache"]) == {
        "data": {"root": "/elsewhere", "use_masks": True}}
    with pytest.raises(ConfigError, match="--set data.clip_len: evaluate uses the model's own data"):
        evaluate_overrides(given, ["data.clip_len"])
    with pytest.raises(ConfigError, match="--set model.num_classes"):
        evaluate_overrides(given, ["model.num_classes"])


def test_predict_on_a_missing_video_fails_before_loading_the_model(monkeypatch, tmp_path, capsys):
    import exptrack.predict as predict

    monkeypatch.setattr(predict, "load_model", lambda *a, **k: pytest.fail("model loaded first"))
    assert main(["predict", str(tmp_path / "nope.mp4")]) == 2
    assert "nope.mp4: video file not found" in capsys.readouterr().err


def test_predict_prints_segments_with_class_names(monkeypatch, tmp_path, capsys):
    import exptrack.predict as predict

    segs = pd.DataFrame({"start": [0], "end": [9], "class": [2], "name": ["squat"], "mean_confidence": [0.8],
                         "frames": [10], "start_s": [0.0], "end_s": [1.0]})
    scores = {"frame_acc": 0.9671, "frame_acc_all": 0.95, "rest_precision": 0.9, "rest_recall": 0.92}
    truth = predict.Truth(tmp_path / "label.csv", scores, scores, 484, 152, True)
    client = mlflow.MlflowClient()  # the run predict_video would have made (no fluent state: other tests set it)
    run_id = client.create_run(client.create_experiment("cli-predict")).info.run_id
    timeline = predict.Timeline(pd.DataFrame({"frame": np.arange(10)}), segs, 10.0, tmp_path, ["a", "b", "squat"],
                                run_id, truth)
    monkeypatch.setattr(predict, "predict_video", lambda *a, **k: timeline)
    assert main(["predict", "video.mp4"]) == 0
    out = capsys.readouterr().out
    assert "1 segment over 10 frames" in out and "squat (2)" in out and "2.0" not in out.replace("1.0 s", "")
    assert "(484 exercise frames, 152 rest): frame accuracy 0.967 on exercise frames, 0.950 on all frames" in out
    assert "rest precision 0.900, recall 0.920" in out
    assert out.strip().splitlines()[-1].startswith("MLflow run: http")  # its run, last, as every command


def test_own_errors_are_one_line_and_bugs_a_full_traceback(monkeypatch, capsys):
    import exptrack.promote as promotion

    def bug(name, options):
        raise ValueError("a library bug deep inside")  # not one of exptrack's own errors

    monkeypatch.setattr(promotion, "promote", bug)
    assert main(["promote"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "a library bug deep inside" in err
    assert "this is a bug in exptrack" in err and "please report it" in err

    def refused(name, options):
        raise ModelError("registered model 'x' has no versions")

    monkeypatch.setattr(promotion, "promote", refused)
    assert main(["promote"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "exptrack promote: error: registered model 'x' has no versions"


def test_tune_exits_non_zero_when_no_trial_completed(monkeypatch, capsys):
    import optuna

    import exptrack.tune.run as tune_run

    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params={}, distributions={}))
    monkeypatch.setattr(tune_run, "run_tune", lambda spec, **kw: study)
    study_file = Path(__file__).resolve().parents[1] / "experiments" / "tune" / "demo.yaml"
    assert main(["tune", "--study-file", str(study_file), "--n-trials", "1"]) == 2
    assert "no trial completed (1 failed, 0 pruned)" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["predict", "v.mp4", "--stride", "-4"], ["predict", "v.mp4", "--smooth", "-5"],
                                  ["evaluate", "--batch-size", "0"], ["visualize", "--fps", "0"]])
def test_counts_and_sizes_below_one_are_refused_by_the_parser(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2 and "expected an integer >= 1" in capsys.readouterr().err


def test_the_mlproject_tune_entry_leaves_study_storage_and_trials_to_the_study_file():
    """Its defaults were demo-tune, sqlite:///optuna.db and 6: `-P study_file=folds.yaml` alone ran
    the fold study as the demo study (mixing trials into it, or running none)."""
    import shlex

    import yaml

    entry = yaml.safe_load((Path(__file__).resolve().parents[1] / "MLproject").read_text())["entry_points"]["tune"]
    defaults = {k: shlex.quote(str(v["default"])) for k, v in entry["parameters"].items()}  # as mlflow run quotes them
    argv = shlex.split(entry["command"].format(**defaults))[3:]  # after `python -m exptrack`
    args = build_parser().parse_args(argv)
    assert (args.study, args.storage, args.n_trials) == (None, None, None)
    assert build_parser().parse_args(["tune", "--study", "s", "--n-trials", "3"]).n_trials == 3
