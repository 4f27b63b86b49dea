"""`exptrack analyze` and `exptrack cache` end to end, against a real MLflow SQLite store."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

from exptrack.analyze import run_analyze
from exptrack.cli import main
from exptrack.data import cache as cache_module
from exptrack.data.prepare import config_cache_need


def test_analyze_writes_tables_plots_and_an_mlflow_run(tiny_demo, make_config, tmp_path):
    cfg = make_config(tiny_demo, "mlflow.experiment=analysis-test")
    result = run_analyze(cfg)
    out = tmp_path / "outputs" / "analysis" / result.run_id
    assert result.out_dir == out
    for name in ("split_statistics.csv", "class_distribution_frames.csv", "class_distribution_clips.csv",
                 "video_properties.csv", "summary.json", "class_distribution_frames.png",
                 "class_distribution_clips.png", "video_properties.png"):
        assert (out / name).stat().st_size > 0, name
    clips = pd.read_csv(out / "class_distribution_clips.csv", index_col="class", dtype={"class": str})
    before, after = clips.iloc[:, 0], clips.iloc[:, 1]
    assert after["1"] < before["1"] and after["rest"] <= before["rest"]  # down to the others' median
    assert (after.drop(["1", "rest"]) == before.drop(["1", "rest"])).all()  # the other classes untouched
    videos = pd.read_csv(out / "video_properties.csv")
    assert len(videos) == 6 and (videos.fps == 15).all() and (videos.width == 64).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data_digest"] == result.summary["data_digest"]

    splits = pd.read_csv(out / "split_statistics.csv", index_col="split")
    cached = sum(f.stat().st_size for f in (tmp_path / "cache").rglob("*.npy"))
    assert (splits.cache_mib > 0).all()  # every split's share of the cache, which is all of it
    assert splits.cache_mib.sum() == pytest.approx(cached / 2**20, abs=0.2)

    runs = mlflow.search_runs(experiment_names=["analysis-test"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["exptrack.command"] == "analyze"
    assert run.data.params["data.clip_len"] == "8"
    assert run.data.metrics["train_subjects"] + run.data.metrics["val_subjects"] == 4
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "analysis")}
    assert "analysis/class_distribution_clips.png" in artifacts


def test_analyze_writes_only_to_a_folder_of_its_own(tiny_demo, make_config, tmp_path, capsys):
    """--out of a folder that held the user's files uploaded them with the report (and replaced
    any of the report's names); --out that is a file failed after all the decoding."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    args = ["analyze", "--set", f"data.root={tiny_demo}", "--set", "model.num_classes=3", "--set", "data.frame_size=32",
            "--set", f"paths.cache={tmp_path / 'c'}", "--set", "mlflow.experiment=analysis-out"]
    assert main([*args, "--out", str(mine)]) == 2
    assert "--out " in capsys.readouterr().err and (mine / "notes.txt").read_text() == "the user's"
    assert main([*args, "--out", str(mine / "notes.txt" / "x")]) == 2
    assert "notes.txt is a file, not a folder" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()  # refused before any decoding
    assert not mlflow.search_runs(experiment_names=["analysis-out"], output_format="list")


def test_cache_command_builds_masks_and_attention(tiny_demo, tmp_path, capsys):
    code = main(["cache", "--set", f"data.root={tiny_demo}", "--set", f"paths.cache={tmp_path / 'c'}",
                 "--set", "model.num_classes=3", "--set", "data.frame_size=32", "--set", "data.use_masks=true",
                 "--set", "data.use_skeleton_attention=true"])
    assert code == 0
    assert "cache ready" in capsys.readouterr().out
    for kind in ("video", "mask", "keypoints", "attention"):
        assert len([p for p in (tmp_path / "c" / kind).iterdir() if p.is_dir()]) == 6, kind


def test_the_cache_size_is_known_before_it_is_built(tiny_demo, make_config, tmp_path, capsys):
    cfg = make_config(tiny_demo, "data.use_masks=true", "data.use_skeleton_attention=true",
                      f"paths.cache={tmp_path / 'c'}")
    before = config_cache_need(cfg)
    assert before.to_write == before.total and before.entries_to_build == 24  # 6 subjects x 4 kinds
    args = ["cache", "--set", f"data.root={tiny_demo}", "--set", f"paths.cache={tmp_path / 'c'}",
            "--set", "model.num_classes=3", "--set", "data.frame_size=32", "--set", "data.use_masks=true",
            "--set", "data.use_skeleton_attention=true"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith(f"frame cache {tmp_path / 'c'}: {before.describe()}")
    written = sum(f.stat().st_size for f in (tmp_path / "c").rglob("*.npy"))
    assert written == before.to_write  # the headers' frame counts, exactly
    after = config_cache_need(cfg)
    assert after.to_write == 0 and after.total == before.total


def test_cache_refuses_a_disk_too_small_and_writes_nothing(tiny_demo, tmp_path, monkeypatch, capsys):
    # the fault: a disk with 1 MiB free, less than any need plus the 64 MiB kept in reserve
    monkeypatch.setattr(cache_module, "free_bytes", lambda folder: 2**20)
    code = main(["cache", "--set", f"data.root={tiny_demo}", "--set", f"paths.cache={tmp_path / 'c'}",
                 "--set", "model.num_classes=3", "--set", "mlflow.experiment=cache-full"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'c'}: the frame cache needs" in err and "only 1.0 MiB are free" in err
    assert f"the largest: {tiny_demo}" in err  # which video the need comes from
    assert not [f for f in (tmp_path / "c").rglob("*") if f.is_file()]  # nothing half-written
    runs = mlflow.search_runs(experiment_names=["cache-full"], output_format="list")
    assert [r.info.status for r in runs] == ["FAILED"]


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
    run = mlflow.search_runs(search_all_experiments=True, order_by=["attributes.start_time DESC"], max_results=1,
                             output_format="list")[0]
    assert run.data.metrics["cache_bytes"] == sum(f.stat().st_size for f in cache.rglob("*.npy"))  # after pruning
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


def test_a_header_claiming_more_frames_than_its_file_has_bytes_is_not_trusted(tiny_demo, make_config, tmp_path,
                                                                               monkeypatch):
    """A video whose header claims 2^31 frames made the cache refuse with "needs 10650 GiB",
    naming no video: such a count is not believed, and the video is named."""
    real = cache_module.probe_video
    liar = sorted(tiny_demo.rglob("*.mp4"))[0]

    def lying(path):  # the fault: one header's frame count
        info = real(path)
        return info if path != liar else type(info)(**{**vars(info), "num_frames": 2**31})

    monkeypatch.setattr(cache_module, "probe_video", lying)
    need = config_cache_need(make_config(tiny_demo, f"paths.cache={tmp_path / 'c'}"))
    assert need.unsized == (liar,) and need.to_write < 2**30
    assert f"(first: {liar}) are not included" in need.describe()
