"""GradCAM heatmaps, the visualize videos (read back: codec, frames, size, fps) and predict."""

from __future__ import annotations

from pathlib import Path

import av
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from exptrack.config import ConfigError
from exptrack.data.errors import DataError
from exptrack.data.layout import read_class_names
from exptrack.errors import OutputError
from exptrack.explain.gradcam import gradcam
from exptrack.explain.visualize import run_visualize
from exptrack.options import VisualizeOptions
from exptrack.models.c3d import C3D
from exptrack.metrics import FRAME_SCORES
from exptrack.predict import predict_video, segments
from exptrack.options import PredictOptions


def _read(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return stream.codec_context.name, frames, float(stream.average_rate)


def test_heatmaps_are_finite_in_unit_range_and_per_frame():
    torch.manual_seed(0)
    model = C3D(num_classes=4, width=0.125)
    x = torch.randn(2, 3, 16, 64, 64)
    for layer in ("block3", "block4", "block5"):
        heat = gradcam(model, x, layer)
        assert heat.shape == (2, 16, 64, 64) and heat.dtype == np.float32
        assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
        assert heat.max() > 0.5  # scaled per clip, not all zero
    assert not any(m._forward_hooks for m in model.modules())  # the context manager removed its hooks


def test_heatmaps_depend_on_the_target_class():
    torch.manual_seed(1)
    model = C3D(num_classes=4, width=0.125)
    x = torch.randn(1, 3, 16, 64, 64)
    a, b = gradcam(model, x, "block4", [0]), gradcam(model, x, "block4", [3])
    assert np.abs(a - b).mean() > 0.01


def test_a_class_the_model_does_not_have_is_named():
    """pytorch-grad-cam's context manager swallows the IndexError: an unbound local followed."""
    torch.manual_seed(0)
    model = C3D(num_classes=5, width=0.125)
    with pytest.raises(ValueError, match=r"GradCAM classes \[7\]: the model has outputs 0..4"):
        gradcam(model, torch.randn(1, 3, 8, 32, 32), "block4", [7])


@pytest.mark.slow
def test_visualize_writes_decodable_h264_videos(tiny_trained, tmp_path, monkeypatch):
    uri, cfg, result = tiny_trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    out = tmp_path / "viz"
    options = VisualizeOptions(num_samples=2, fps=7, scale_factor=3, save_dir=str(out), layer="block3")
    run_visualize(f"models:/{cfg.mlflow.registered_model}/{result.model_version}", options, progress=False)
    index = pd.read_csv(out / "index.csv")
    assert len(index) == 2 and (out / "index.html").exists()
    for sample in index["sample"]:
        folder = out / sample
        for name in ("original", "heatmap", "overlay", "overlay_with_probs", "side_by_side"):
            codec, frames, fps = _read(folder / f"{name}.mp4")
            assert codec == "h264" and len(frames) == 8 and fps == 7, name
        assert _read(folder / "overlay_with_probs.mp4")[1][0].shape[0] >= 240  # a readable chart
        # the video's own frames (80x64) with the heat of the 32 px input over them, shown at 256 px and up
        assert _read(folder / "overlay.mp4")[1][0].shape[:2] == (320, 256)
        assert _read(folder / "side_by_side.mp4")[1][0].shape[:2] == (320, 512)
        meta = (folder / "metadata.txt").read_text()
        assert "true:" in meta and "predicted:" in meta and "layer: block3" in meta
        assert (folder / "preview.gif").stat().st_size > 0
    assert "data:image/gif;base64," in (out / "index.html").read_text()
    assert list(index.columns) == ["sample", "subject", "start_frame", "true", "predicted", "confidence"]
    named = {f"{name} ({c})" for c, name in enumerate(read_class_names(cfg.data.root, 3))} | {"rest"}
    assert set(index["true"]) <= named and set(index["predicted"]) <= named  # names, once each
    assert all(len(str(c)) <= 5 for c in index["confidence"])  # 0.973, not 0.973980188369751


@pytest.mark.slow
def test_misclassified_only_and_long_sample(tiny_trained, tmp_path, monkeypatch):
    uri, cfg, result = tiny_trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    ref = f"runs:/{result.run_id}/model"
    out = tmp_path / "mis"
    run_visualize(ref, VisualizeOptions(num_samples=50, misclassified_only=True, save_dir=str(out)), progress=False)
    index = pd.read_csv(out / "index.csv")
    assert len(index) > 0 and (index["true"] != index["predicted"]).all()

    out = tmp_path / "long"
    run_visualize(ref, VisualizeOptions(long_sample=True, sample_duration=40, start_frame=5, save_dir=str(out)),
                  progress=False)
    row = pd.read_csv(out / "index.csv").iloc[0]
    codec, frames, _ = _read(out / row["sample"] / "long_sample.mp4")
    assert codec == "h264" and len(frames) == 40 and row["start_frame"] == 5
    # the sample's frames average predict's windows (the whole video's grid), so they agree with
    # predict's timeline of the subject's video frame by frame, edges included
    from exptrack.predict import predict_video

    timeline = predict_video(f"{cfg.data.root}/dataset/anon/{row['subject']}.mp4", ref,
                             PredictOptions(save_dir=tmp_path / "p"))
    shown = pd.read_csv(out / row["sample"] / "frames.csv")
    np.testing.assert_array_equal(shown["predicted"], timeline.frames["predicted"][5:45])


def test_segments_from_frame_labels():
    labels = np.array([-1, 2, 2, 2, -1, 0, 0])
    conf = np.array([0.1, 0.9, 0.8, 0.7, 0.2, 0.6, 0.4])
    table = segments(labels, conf, rest=False)
    assert table[["start", "end", "class", "frames"]].values.tolist() == [[1, 3, 2, 3], [5, 6, 0, 2]]
    assert table["mean_confidence"].tolist() == pytest.approx([0.8, 0.5])
    with_rest = segments(labels, conf)  # a model with a rest output: rest runs are segments too
    assert with_rest[["start", "end", "class"]].values.tolist() == [[0, 0, -1], [1, 3, 2], [4, 4, -1], [5, 6, 0]]


@pytest.mark.slow
def test_predict_on_a_new_video(tiny_trained, tiny_demo, tmp_path, monkeypatch):
    uri, cfg, result = tiny_trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    video = sorted((tiny_demo / "dataset" / "anon").glob("*.mp4"))[0]
    timeline = predict_video(video, str(result.checkpoint_dir / "best_model.pt"), PredictOptions(overlay=True))
    n = len(timeline.frames)
    assert n == len((tiny_demo / "label" / f"{video.stem}.csv").read_text().splitlines())
    out = timeline.out_dir  # by default a fresh folder per call
    assert out.parent == Path("outputs/predict") and out.name.startswith(video.stem)
    again = predict_video(video, str(result.checkpoint_dir / "best_model.pt"))
    assert again.out_dir != out and again.out_dir.parent == out.parent
    with pytest.raises(OutputError, match="not empty"):  # an explicit folder that holds files
        predict_video(video, str(result.checkpoint_dir / "best_model.pt"), PredictOptions(save_dir=out))
    predict_video(video, str(result.checkpoint_dir / "best_model.pt"), PredictOptions(save_dir=out, overwrite=True))
    assert not (out / "overlay.mp4").exists()  # emptied first: only this call's files
    predict_video(video, str(result.checkpoint_dir / "best_model.pt"), PredictOptions(save_dir=out, overwrite=True, overlay=True))
    for name in ("frames.csv", "segments.csv", "timeline.json", "timeline.png"):
        assert (out / name).exists(), name
    codec, frames, _ = _read(out / "overlay.mp4")
    assert codec == "h264" and len(frames) == n
    probs = timeline.frames["probability"]
    assert ((probs > 0) & (probs <= 1)).all()
    assert {"predicted_name", "smoothed_name", "true", "true_name"} <= set(timeline.frames.columns)
    assert "name" in timeline.segments.columns
    # a video in its dataset layout brings its labels: compared, and drawn in the timeline
    labels = tiny_demo / "label" / f"{video.stem}.csv"
    assert timeline.truth is not None and timeline.truth.labels == labels and 0 <= timeline.truth.frame_acc <= 1
    assert timeline.truth.exercise_frames + timeline.truth.rest_frames == n
    # the model has a rest output (the default): rest is a label, named, with its own confidence
    assert timeline.truth.rest_output and set(timeline.truth.scores) == set(FRAME_SCORES)
    rest = timeline.frames["predicted"] == -1
    assert (timeline.frames.loc[rest, "predicted_name"] == "rest").all() and probs[rest].notna().all()
    assert (timeline.frames.loc[timeline.frames["true"] == -1, "true_name"] == "rest").all()
    # every predict is a run: its files as artifacts, the model as its input
    run = mlflow.MlflowClient().get_run(timeline.run_id)
    assert run.data.tags["exptrack.command"] == "predict" and run.data.tags["video"] == str(video)
    assert {"frame_acc", "frame_acc_all", "rest_recall"} <= set(run.data.metrics)  # against the video's labels
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(timeline.run_id, "predict")}
    assert {"predict/frames.csv", "predict/segments.csv", "predict/timeline.png"} <= logged


def test_predict_on_a_corrupt_video_is_a_clear_error(tiny_trained, tmp_path, monkeypatch):
    uri, cfg, result = tiny_trained
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(DataError, match=f"{bad}: cannot open video"):
        predict_video(bad, str(result.checkpoint_dir / "best_model.pt"), PredictOptions(save_dir=tmp_path / "out"))


def test_predict_refuses_a_stride_that_would_leave_frames_without_a_window(tiny_trained, tiny_demo, tmp_path):
    _, cfg, result = tiny_trained
    video = next(tiny_demo.rglob("*.mp4"))
    too_far = cfg.data.clip_len + 1  # windows 0, clip_len + 1, ...: frame clip_len would be in none of them
    with pytest.raises(ConfigError, match=f"--stride {too_far}: above the model's clip length"):
        predict_video(video, str(result.checkpoint_dir / "best_model.pt"),
                      PredictOptions(save_dir=tmp_path / "out", stride=too_far))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_predict_recovers_the_segments_of_a_demo_video(tmp_path):
    """The demo recipe without masks and attention (a new video has neither), then predict on a
    held-out subject's whole video: measured 0.96 smoothed frame accuracy; asserted >= 0.8."""
    from pathlib import Path

    from exptrack.config import load_config
    from exptrack.data.errors import DataWarnings
    from exptrack.data.layout import read_labels, read_split
    from exptrack.train import train

    demo_yaml = Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml"
    cfg = load_config(demo_yaml, [f"data.root={tmp_path / 'demo'}", f"paths.cache={tmp_path / 'cache'}",
                                  f"paths.outputs={tmp_path / 'out'}", "data.use_masks=false",
                                  "data.use_skeleton_attention=false", "mlflow.log_system_metrics=false"])
    result = train(cfg, progress=False)
    test_subject = sorted(s for s, (split, _) in read_split(tmp_path / "demo" / "split.csv").items() if split == "test")[0]
    video = tmp_path / "demo" / "dataset" / "anon" / f"{test_subject}.mp4"
    timeline = predict_video(video, str(result.checkpoint_dir / "best_model.pt"), PredictOptions(save_dir=tmp_path / "pred"))
    true = read_labels(tmp_path / "demo" / "label" / f"{test_subject}.csv", len(timeline.frames), 6, DataWarnings())
    scored = true >= 0
    accuracy = (timeline.frames["smoothed"].to_numpy()[scored] == true[scored]).mean()
    assert accuracy >= 0.8, accuracy
    assert len(timeline.segments) >= 6  # every exercise of the video shows up as a segment


def test_index_html_embeds_previews_that_play_inside_the_mlflow_ui(tmp_path):
    """MLflow shows an HTML artifact in a sandboxed iframe from a blob: URL: relative <video>
    links stay blank there, so each preview is an animated GIF inside the page."""
    import base64
    import re

    from PIL import Image

    from exptrack.explain import render
    from exptrack.explain.visualize import PREVIEW, write_index

    frames = np.random.default_rng(0).integers(0, 255, size=(6, 40, 60, 3), dtype=np.uint8)
    render.save_gif(tmp_path / "sample_000" / PREVIEW, frames, fps=5)
    write_index(pd.DataFrame([{"sample": "sample_000", "true": 1, "true_name": "squat (1)"}]), tmp_path)
    page = (tmp_path / "index.html").read_text()
    assert "<video" not in page and "squat (1)" in page and "sample_000/overlay_with_probs.mp4" in page
    data = base64.b64decode(re.search(r"data:image/gif;base64,([A-Za-z0-9+/=]+)", page).group(1))
    (tmp_path / "back.gif").write_bytes(data)
    with Image.open(tmp_path / "back.gif") as gif:
        assert gif.n_frames == 6 and gif.size == (60, 40)


def test_timeline_of_a_video_without_ground_truth_draws_no_true_line(tmp_path, monkeypatch):
    from exptrack import figures

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or path)
    labels = np.array([0, 0, 1, 1, 2])
    figures.timeline(None, labels, labels, "v", tmp_path / "t.png", ["a", "b", "c"])
    ax = drawn[0].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["predicted", "smoothed"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["rest", "a", "b", "c"]


def test_the_probability_chart_leaves_the_player_controls_room_and_names_their_own_column():
    from exptrack.explain import render

    names = ["a_rather_long_exercise_name", "squat", "leg_spread"]
    chart = render.probability_chart(np.array([0.2, 0.7, 0.1]), 1, 1, height=256, names=names)
    assert (chart[-render.controls_room(256):] == 255).all()  # nothing under the controls (64 px here)
    bars = np.flatnonzero((chart[:, :, 0] != chart[:, :, 1]).any(axis=0))  # coloured columns: the bars
    text = np.flatnonzero((chart[40:-render.controls_room(256), :bars.min()] < 128).any(axis=(0, 2)))
    assert len(text) and text.max() < bars.min()  # every name ends before the bars begin
