"""`exptrack analyze` and `exptrack cache` end to end, against a real MLflow SQLite store."""

from __future__ import annotations

import json

import mlflow
import pandas as pd

from exptrack.analyze import run_analyze
from exptrack.cli import main


def test_analyze_writes_tables_plots_and_an_mlflow_run(tiny_demo, make_config, tmp_path):
    cfg = make_config(tiny_demo, "mlflow.experiment=analysis-test")
    result = run_analyze(cfg)
    out = tmp_path / "outputs" / "analysis"
    for name in ("split_statistics.csv", "class_distribution_frames.csv", "class_distribution_clips.csv",
                 "video_properties.csv", "summary.json", "class_distribution_frames.png",
                 "class_distribution_clips.png", "video_properties.png"):
        assert (out / name).stat().st_size > 0, name
    clips = pd.read_csv(out / "class_distribution_clips.csv", index_col="class")
    before, after = clips.iloc[:, 0], clips.iloc[:, 1]
    assert after[1] < before[1] and (after.drop(1) == before.drop(1)).all()  # only class 1 shrinks
    videos = pd.read_csv(out / "video_properties.csv")
    assert len(videos) == 6 and (videos.fps == 15).all() and (videos.width == 64).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data_digest"] == result.summary["data_digest"]

    runs = mlflow.search_runs(experiment_names=["analysis-test"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["exptrack.command"] == "analyze"
    assert run.data.params["data.clip_len"] == "8"
    assert run.data.metrics["train_subjects"] + run.data.metrics["val_subjects"] == 4
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "analysis")}
    assert "analysis/class_distribution_clips.png" in artifacts


def test_cache_command_builds_masks_and_attention(tiny_demo, tmp_path, capsys):
    code = main(["cache", "--set", f"data.root={tiny_demo}", "--set", f"paths.cache={tmp_path / 'c'}",
                 "--set", "model.num_classes=3", "--set", "data.frame_size=32", "--set", "data.use_masks=true",
                 "--set", "data.use_skeleton_attention=true"])
    assert code == 0
    assert "cache ready" in capsys.readouterr().out
    for kind in ("video", "mask", "keypoints", "attention"):
        assert len([p for p in (tmp_path / "c" / kind).iterdir() if p.is_dir()]) == 6, kind


def test_cache_prune_keeps_only_what_the_config_uses(tiny_demo, tmp_path, capsys):
    cache = tmp_path / "c"
    common = ["--set", f"data.root={tiny_demo}", "--set", f"paths.cache={cache}", "--set", "model.num_classes=3",
              "--set", "data.use_masks=true"]
    assert main(["cache", *common, "--set", "data.frame_size=32"]) == 0
    assert main(["cache", *common, "--set", "data.frame_size=48"]) == 0
    assert len([p for p in (cache / "video").iterdir() if p.is_dir()]) == 12  # both sizes
    dead_build = cache / "video" / ".s01-0123456789abcdef.tmp-999999999"  # a build whose process is gone
    dead_build.mkdir()
    kept_before = {p: (p / "done").stat().st_mtime_ns for p in (cache / "video").iterdir()
                   if p.is_dir() and p != dead_build}
    capsys.readouterr()

    assert main(["cache", *common, "--set", "data.frame_size=48", "--prune"]) == 0
    # at 32 px: 6 videos, 6 mask sets, 6 keypoint tables (pixels of the frame size); 1 dead build
    assert "pruned 19 cache entries" in capsys.readouterr().out
    left = {p for p in (cache / "video").iterdir() if p.is_dir()}
    assert len(left) == 6 and not dead_build.exists()
    assert all(kept_before[p] == (p / "done").stat().st_mtime_ns for p in left)  # the 48 px entries untouched
    assert all(len([p for p in (cache / kind).iterdir() if p.is_dir()]) == 6 for kind in ("mask", "keypoints"))


def test_cache_prune_deletes_only_cache_entries_when_the_cache_shares_the_outputs_folder(tiny_demo, tmp_path):
    outputs = tmp_path / "outputs"  # paths.cache=outputs: runs and evaluations beside the entries
    checkpoint = outputs / "runs" / "abc" / "checkpoints" / "best_model.pt"
    report = outputs / "evaluate" / "report.json"
    lookalike = outputs / "video" / "notes" / "todo.txt"  # a user's folder inside a kind folder
    for f in (checkpoint, report, lookalike):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("keep me")
    common = ["--set", f"data.root={tiny_demo}", "--set", f"paths.cache={outputs}", "--set", "model.num_classes=3"]
    assert main(["cache", *common, "--set", "data.frame_size=32"]) == 0
    assert main(["cache", *common, "--set", "data.frame_size=48", "--prune"]) == 0
    assert all(f.read_text() == "keep me" for f in (checkpoint, report, lookalike))
    assert len([p for p in (outputs / "video").iterdir() if (p / "done").exists()]) == 6  # the 32 px ones went
