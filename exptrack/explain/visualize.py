"""`exptrack visualize`: GradCAM videos for sampled clips, or one long per-subject sample,
logged as artifacts of a visualize run linked to the model."""

from __future__ import annotations

import base64
import html
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import tracking
from ..data.dataset import ClipDataset, make_loader
from ..data.errors import DataError
from ..data.layout import class_label
from ..data.prepare import PreparedData, prepare_data
from ..data.video import probe_video, read_frames
from ..data.transforms import to_model_input
from ..evaluation import evaluation_config
from ..formatting import figure, frame_scores_text
from ..models.load import LoadedModel, load_model
from ..windows import clip_batches, clip_probabilities, padded_to_clip, window_stride
from ..metrics import frame_labels, frame_probabilities, frame_scores, output_index, window_average, window_starts
from ..outputs import check_save_dir, invocation_folder
from ..device import resolve_device
from ..training.loop import predict
from . import render
from .gradcam import gradcam
from ..options import VisualizeOptions

log = logging.getLogger("exptrack.visualize")


def model_probs_and_heat(loaded: LoadedModel, videos: np.ndarray, layer: str, device: torch.device,
                         classes: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (B, T, H, W, 3) clips (as the model sees them) -> softmax (B, K), heat (B, T, H, W)."""
    probs = clip_probabilities(loaded.model, [videos], loaded.config, loaded.placement)  # as predict and serving score them
    x = to_model_input(torch.from_numpy(videos).to(device)).contiguous()  # (B, 3, T, H, W), for the gradients
    targets = classes if classes is not None else probs.argmax(1).tolist()
    heat = gradcam(loaded.model, x, layer, targets)
    return probs, heat


def choose_clips(loaded: LoadedModel, data: PreparedData, options: VisualizeOptions, device: torch.device) -> np.ndarray:
    """Row indices to render: random (seeded), or random among the misclassified clips."""
    index = data.splits[options.split]
    rows = np.arange(len(index))
    if options.misclassified_only:
        loader = make_loader(data, options.split, train=False, batch_size=32, num_workers=0)
        logits, labels = predict(loaded.model, loader, loaded.placement)
        rows = rows[(logits.argmax(1) != labels).numpy()]
        log.info("%d of %d clips are misclassified", len(rows), len(index))
    rng = np.random.default_rng(options.seed)
    return np.sort(rng.permutation(rows)[: options.num_samples])


def min_side(options: VisualizeOptions, model_size: int) -> int:
    """The short side explanations are shown at, at least: render.MIN_SIDE (readable), and
    --scale-factor times the model's input."""
    return max(render.MIN_SIDE, options.scale_factor * model_size)


def shown_size(path: Path, options: VisualizeOptions, model_size: int) -> tuple[int, int]:
    """(H, W) the frames of the video at `path` are shown at (its own aspect, from its header)."""
    info = probe_video(path)
    return render.display_size(info.height, info.width, min_side(options, model_size))


def render_clip(sample_dir: Path, frames: np.ndarray, heat: np.ndarray, probs: np.ndarray, true: int,
                meta: dict, options: VisualizeOptions, names: list[str] | None = None) -> None:
    """The six files of one sample, and preview.gif for index.html. `frames` (T, H, W, 3) are the
    video's own, shown at display size with the heatmap stretched over them."""
    pred = int(probs.argmax())
    shown, big_heat, over = render.explanation_frames(frames, heat, options.alpha, min_side(options, heat.shape[-1]))
    chart = render.probability_chart(probs, true, pred, height=over.shape[1], names=names)
    with_probs = np.stack([render.hstack(f, chart) for f in over])
    side = np.concatenate([shown, over], axis=2)
    fps = options.fps
    render.save_video(sample_dir / "original.mp4", shown, fps)
    render.save_video(sample_dir / "heatmap.mp4", render.colorize(big_heat), fps)
    render.save_video(sample_dir / "overlay.mp4", over, fps)
    render.save_video(sample_dir / "overlay_with_probs.mp4", with_probs, fps)
    render.save_video(sample_dir / "side_by_side.mp4", side, fps)
    render.save_gif(sample_dir / PREVIEW, with_probs, fps)
    lines = [f"{k}: {v}" for k, v in meta.items()]
    lines += [f"true: {class_label(true, names)}", f"predicted: {class_label(pred, names)}", f"layer: {options.layer}",
              "probabilities: " + ", ".join(f"{class_label(c, names)}={figure(p)}" for c, p in enumerate(probs))]
    (sample_dir / "metadata.txt").write_text("\n".join(lines) + "\n")


def render_samples(loaded: LoadedModel, data: PreparedData, options: VisualizeOptions, device: torch.device,
                   out: Path) -> pd.DataFrame:
    ds = ClipDataset(data, options.split, train=False)
    names = loaded.class_names
    rows = []
    for n, i in enumerate(choose_clips(loaded, data, options, device)):
        sample = ds[int(i)]
        subject = ds.index.subjects[int(sample["subject"])]
        start = int(sample["start"])
        true = int(sample["label"])
        probs, heat = model_probs_and_heat(loaded, sample["video"].numpy()[None], options.layer, device)
        # the video's own frames (unweighted, at its resolution): what a person recognises
        frames = read_frames(data.subjects[subject].files.video, start, ds.clip_len)
        name = f"sample_{n:03d}"
        meta = {"subject": subject, "frames": f"{start}-{start + ds.clip_len - 1}"}
        render_clip(out / name, frames, heat[0], probs[0], true, meta, options, names)
        pred = int(probs[0].argmax())
        rows.append({"sample": name, "subject": subject, "start_frame": start, "true": class_label(true, names),
                     "predicted": class_label(pred, names), "confidence": round(float(probs[0].max()), 3)})
    return pd.DataFrame(rows)


def render_long_sample(loaded: LoadedModel, data: PreparedData, options: VisualizeOptions, device: torch.device,
                       out: Path) -> pd.DataFrame:
    """Slide the model over `sample_duration` frames of one subject; the chart follows the video."""
    ds = ClipDataset(data, options.split, train=False)
    names = list(ds.index.subjects)
    subject = options.subject_id or names[0]
    if subject not in data.subjects:
        raise DataError(f"subject {subject!r} is not in the {options.split} split (known: {', '.join(names)})")
    subj = data.subjects[subject]
    clip_len = ds.clip_len
    start = min(max(options.start_frame, 0), max(subj.num_frames - clip_len, 0))
    end = min(start + options.sample_duration, subj.num_frames)
    # predict's windows (the whole video's grid, a short video padded), those that reach into the
    # sample: its frames average the same windows as in predict's timeline
    stride = window_stride(loaded.config)
    grid = window_starts(max(subj.num_frames, clip_len), clip_len, stride)
    starts = [int(s) for s in grid if s < end and s + clip_len > start]
    k = loaded.config.model.num_classes
    class_names = loaded.class_names
    window_probs, window_heat = [], []
    for videos in clip_batches(starts, lambda s: padded_to_clip(ds.clip_at(subj, s), clip_len),
                               loaded.config.train.eval_batch_size):
        probs, heat = model_probs_and_heat(loaded, videos, options.layer, device)
        window_probs.append(probs)
        window_heat.append(heat)
    rel = np.asarray(starts) - start  # window starts relative to the sample (the first may be before it)
    # the same averaging as evaluate and predict (metrics.py), windows clipped to the sample
    probs = frame_probabilities(rel, np.concatenate(window_probs), end - start, clip_len)
    heat = window_average(rel, np.concatenate(window_heat), end - start, clip_len, per_frame=True)
    size = shown_size(subj.files.video, options, heat.shape[-1])
    frames = read_frames(subj.files.video, start, end - start, size)  # (T, H, W, 3) at display size
    true = subj.labels[start:end].astype(np.int64)
    rest = loaded.config.model.rest_index
    pred = frame_labels(probs, rest, loaded.rest_weight)  # -1: rest
    big = render.overlay(frames, render.display_heat(heat, *size), options.alpha)
    rows = []
    for t in range(end - start):
        chart = render.probability_chart(probs[t], output_index(int(true[t]), rest), output_index(int(pred[t]), rest),
                                         height=big.shape[1], names=class_names)
        row = render.hstack(big[t], chart)
        strip = render.label_timeline_strip(true, pred, t, row.shape[1], k)
        rows.append(np.concatenate([row, strip], axis=0))
    video = np.stack(rows)
    video = video[:, : video.shape[1] // 2 * 2, : video.shape[2] // 2 * 2]  # even sides for the video codec
    sample_dir = out / f"long_{subject}_{start}"
    render.save_video(sample_dir / "long_sample.mp4", video, options.fps)
    render.save_gif(sample_dir / PREVIEW, video, options.fps)
    scores = frame_scores(pred, true)
    pd.DataFrame({"frame": np.arange(start, end), "true": true, "predicted": pred}).to_csv(sample_dir / "frames.csv",
                                                                                           index=False)
    (sample_dir / "metadata.txt").write_text(
        f"subject: {subject}\nframes: {start}-{end - 1}\nlayer: {options.layer}\nwindow stride: {stride}\n"
        f"{frame_scores_text(scores)}\n")
    return pd.DataFrame([{"sample": sample_dir.name, "subject": subject, "start_frame": start,
                          "frames": end - start, **{k: round(v, 3) for k, v in scores.items()}}])


@dataclass(frozen=True)
class VisualizeResult:
    out_dir: Path
    samples: pd.DataFrame  # index.csv
    run_id: str


PREVIEW = "preview.gif"


# MLflow's artifact viewer gives an HTML artifact a narrow frame (about 500 px in a 1280 px
# window with its assistant panel open): one card per sample, as wide as the frame allows and
# wrapping, never a table wider than the frame (bench/ui_check.py looks at it there).
INDEX_STYLE = ("body{font-family:sans-serif;font-size:13px;margin:8px}"
               ".card{display:inline-block;vertical-align:top;width:min(100%,360px);margin:0 8px 12px 0}"
               ".card img{width:100%;height:auto;display:block}figcaption{margin-top:4px;line-height:1.4}"
               "code{font-size:11px;word-break:break-all}")


def write_index(table: pd.DataFrame, out: Path) -> None:
    """index.csv, and index.html with each sample's animated preview embedded in the page (a
    data: URI): MLflow shows an HTML artifact in a sandboxed iframe from a blob: URL, where
    links to other artifacts do not resolve and videos stay blank. Under each preview, its row
    of index.csv and the MP4 file to play (in the artifact tree and from disk)."""
    table.to_csv(out / "index.csv", index=False)
    cards = []
    for _, r in table.iterrows():
        sample = str(r["sample"])
        video = "long_sample.mp4" if sample.startswith("long_") else "overlay_with_probs.mp4"
        gif = out / sample / PREVIEW
        preview = (f"<img src='data:image/gif;base64,{base64.b64encode(gif.read_bytes()).decode()}' alt='{sample}'>"
                   if gif.exists() else "")
        facts = " &middot; ".join(f"{html.escape(str(k))} <b>{html.escape(figure(v))}</b>" for k, v in r.items()
                                   if k != "sample")
        cards.append(f"<figure class='card'>{preview}<figcaption><b>{html.escape(sample)}</b> &middot; {facts}<br>"
                     f"<code>{html.escape(sample)}/{video}</code></figcaption></figure>")
    (out / "index.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><style>{INDEX_STYLE}</style>"
                                    f"</head><body>{''.join(cards)}</body></html>\n")


def run_visualize(model_ref: str, options: VisualizeOptions, device_name: str = "auto",
                  data_root: str | None = None, progress: bool = True) -> "VisualizeResult":
    check_save_dir(options.save_dir, options.overwrite)
    device = resolve_device(device_name, key="--device")
    loaded = load_model(model_ref, device)
    config = evaluation_config(loaded.config, data_root, {})  # files go here, never where the model's config says
    tags = {"model_uri": model_ref, "model_run_id": loaded.source.get("run_id", ""), "split": options.split,
            "layer": options.layer}
    if "version" in loaded.source:
        tags.update({"model_name": loaded.source["name"], "model_version": loaded.source["version"]})
    # The run spans the work (data, GradCAM, rendering), so its duration in the UI is the command's.
    with tracking.start_run(config, run_name="visualize", command="visualize", tags=tags) as run:
        run.log_params({f"visualize.{k}": v for k, v in vars(options).items()})
        data = prepare_data(config, splits=(options.split,), progress=progress)
        run.set_tags({"data_digest": data.digest()})
        with invocation_folder(options.save_dir, Path(config.paths.outputs) / "visualize" / run.id,
                               options.overwrite) as out:
            if options.long_sample:
                table = render_long_sample(loaded, data, options, device, out)
            else:
                table = render_samples(loaded, data, options, device, out)
            write_index(table, out)
            run.log_artifacts(out, "visualizations")
    return VisualizeResult(out, table, run.id)
