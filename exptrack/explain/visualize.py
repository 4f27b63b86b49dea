"""`exptrack visualize`: GradCAM videos for sampled clips, or one long per-subject sample,
logged as artifacts of a visualize run linked to the model."""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import tracking
from ..config import replace
from ..data.dataset import ClipDataset, make_loader
from ..data.prepare import PreparedData, prepare_data
from ..data.transforms import to_model_input
from ..inference import LoadedModel, load_model
from ..training.loop import predict, resolve_device
from . import render
from .gradcam import gradcam

log = logging.getLogger("exptrack.visualize")


@dataclass(frozen=True)
class VisualizeOptions:
    split: str = "test"
    num_samples: int = 20
    layer: str = "block4"
    alpha: float = 0.5
    fps: int = 10
    misclassified_only: bool = False
    scale_factor: int = 3
    long_sample: bool = False
    sample_duration: int = 300
    start_frame: int = 0
    subject_id: str | None = None
    save_dir: str = "outputs/visualizations"
    seed: int = 0


def model_probs_and_heat(loaded: LoadedModel, videos: np.ndarray, layer: str, device: torch.device,
                         classes: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (B, T, H, W, 3) clips (as the model sees them) -> softmax (B, K), heat (B, T, H, W)."""
    x = to_model_input(torch.from_numpy(videos).to(device)).contiguous()  # (B, 3, T, H, W)
    with torch.no_grad():
        probs = torch.softmax(loaded.model(x).float(), dim=1).cpu().numpy()
    targets = classes if classes is not None else probs.argmax(1).tolist()
    heat = gradcam(loaded.model, x, layer, targets)
    return probs, heat


def choose_clips(loaded: LoadedModel, data: PreparedData, options: VisualizeOptions, device: torch.device) -> np.ndarray:
    """Row indices to render: random (seeded), or random among the misclassified clips."""
    index = data.splits[options.split]
    rows = np.arange(len(index))
    if options.misclassified_only:
        loader = make_loader(data, options.split, train=False, batch_size=32, num_workers=0)
        logits, labels = predict(loaded.model, loader, device, channels_last=True)
        rows = rows[(logits.argmax(1) != labels).numpy()]
        log.info("%d of %d clips are misclassified", len(rows), len(index))
    rng = np.random.default_rng(options.seed)
    return np.sort(rng.permutation(rows)[: options.num_samples])


def display_scale(options: VisualizeOptions, height: int) -> int:
    """The scale factor, raised so the chart beside the overlay is at least 240 px high (readable
    text even for the 32 px demo clips)."""
    return max(options.scale_factor, -(-240 // height))


def render_clip(sample_dir: Path, frames: np.ndarray, heat: np.ndarray, probs: np.ndarray, true: int,
                meta: dict, options: VisualizeOptions) -> None:
    """The six files of one sample."""
    pred = int(probs.argmax())
    over = render.overlay(frames, heat, options.alpha)
    big = render.upscale(over, display_scale(options, over.shape[1]))
    chart = render.probability_chart(probs, true, pred, height=big.shape[1])
    with_probs = np.stack([render.hstack(f, chart) for f in big])
    side = np.concatenate([frames, over], axis=2)
    fps = options.fps
    render.save_video(sample_dir / "original.mp4", frames, fps)
    render.save_video(sample_dir / "heatmap.mp4", render.colorize(heat), fps)
    render.save_video(sample_dir / "overlay.mp4", over, fps)
    render.save_video(sample_dir / "overlay_with_probs.mp4", with_probs, fps)
    render.save_video(sample_dir / "side_by_side.mp4", side, fps)
    lines = [f"{k}: {v}" for k, v in meta.items()]
    lines += [f"true: {true}", f"predicted: {pred}", f"layer: {options.layer}",
              "probabilities: " + ", ".join(f"{c}={p:.4f}" for c, p in enumerate(probs))]
    (sample_dir / "metadata.txt").write_text("\n".join(lines) + "\n")


def render_samples(loaded: LoadedModel, data: PreparedData, options: VisualizeOptions, device: torch.device,
                   out: Path) -> pd.DataFrame:
    ds = ClipDataset(data, options.split, train=False)
    rows = []
    for n, i in enumerate(choose_clips(loaded, data, options, device)):
        sample = ds[int(i)]
        subject = ds.index.subjects[int(sample["subject"])]
        start = int(sample["start"])
        true = int(sample["label"])
        probs, heat = model_probs_and_heat(loaded, sample["video"].numpy()[None], options.layer, device)
        frames = np.asarray(data.subjects[subject].video.frames[start:start + ds.clip_len])  # unweighted, for people
        name = f"sample_{n:03d}"
        meta = {"subject": subject, "frames": f"{start}-{start + ds.clip_len - 1}"}
        render_clip(out / name, frames, heat[0], probs[0], true, meta, options)
        rows.append({"sample": name, "subject": subject, "start_frame": start, "true": true,
                     "predicted": int(probs[0].argmax()), "confidence": float(probs[0].max())})
    return pd.DataFrame(rows)


def render_long_sample(loaded: LoadedModel, data: PreparedData, options: VisualizeOptions, device: torch.device,
                       out: Path) -> pd.DataFrame:
    """Slide the model over `sample_duration` frames of one subject; the chart follows the video."""
    ds = ClipDataset(data, options.split, train=False)
    names = list(ds.index.subjects)
    subject = options.subject_id or names[0]
    if subject not in data.subjects:
        raise ValueError(f"subject {subject!r} is not in the {options.split} split (known: {', '.join(names)})")
    subj = data.subjects[subject]
    clip_len = ds.clip_len
    start = min(max(options.start_frame, 0), max(subj.num_frames - clip_len, 0))
    end = min(start + options.sample_duration, subj.num_frames)
    stride = max(1, clip_len // 2)
    starts = list(range(start, max(end - clip_len, start) + 1, stride))
    k = loaded.config.model.num_classes
    heat_sum = np.zeros((end - start, *subj.video.frames.shape[1:3]), dtype=np.float32)
    prob_sum = np.zeros((end - start, k), dtype=np.float32)
    cover = np.zeros(end - start, dtype=np.float32)
    for b in range(0, len(starts), 8):
        batch = starts[b:b + 8]
        videos = np.stack([ds.clip_at(subj, s) for s in batch])
        probs, heat = model_probs_and_heat(loaded, videos, options.layer, device)
        for s, p, h in zip(batch, probs, heat):
            n = min(clip_len, end - s)
            heat_sum[s - start:s - start + n] += h[:n]
            prob_sum[s - start:s - start + n] += p
            cover[s - start:s - start + n] += 1
    cover = np.maximum(cover, 1)[:, None]
    heat = heat_sum / cover[:, :, None]
    probs = prob_sum / cover
    frames = np.asarray(subj.video.frames[start:end])
    true = subj.labels[start:end].astype(np.int64)
    pred = probs.argmax(1)
    big = render.upscale(render.overlay(frames, heat, options.alpha), display_scale(options, frames.shape[1]))
    video = []
    for t in range(end - start):
        chart = render.probability_chart(probs[t], int(true[t]) if true[t] >= 0 else None, int(pred[t]),
                                         height=big.shape[1])
        row = render.hstack(big[t], chart)
        strip = render.label_timeline_strip(true, pred, t, row.shape[1], k)
        video.append(np.concatenate([row, strip], axis=0))
    video = np.stack(video)
    video = video[:, : video.shape[1] // 2 * 2, : video.shape[2] // 2 * 2]
    sample_dir = out / f"long_{subject}_{start}"
    render.save_video(sample_dir / "long_sample.mp4", video, options.fps)
    scored = true >= 0
    acc = float((pred[scored] == true[scored]).mean()) if scored.any() else float("nan")
    (sample_dir / "metadata.txt").write_text(
        f"subject: {subject}\nframes: {start}-{end - 1}\nlayer: {options.layer}\nwindow stride: {stride}\n"
        f"frame accuracy (labelled frames): {acc:.4f}\n")
    return pd.DataFrame([{"sample": sample_dir.name, "subject": subject, "start_frame": start,
                          "frames": end - start, "frame_accuracy": acc}])


def write_index(table: pd.DataFrame, out: Path) -> None:
    table.to_csv(out / "index.csv", index=False)
    rows = []
    for _, r in table.iterrows():
        video = "long_sample.mp4" if str(r["sample"]).startswith("long_") else "overlay_with_probs.mp4"
        cells = "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values)
        rows.append(f"<tr>{cells}<td><video src='{r['sample']}/{video}' controls width='320'></video></td></tr>")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    (out / "index.html").write_text(f"<html><body><table border=1><tr>{head}<th>video</th></tr>"
                                    f"{''.join(rows)}</table></body></html>\n")


def run_visualize(model_ref: str, options: VisualizeOptions, device_name: str = "auto",
                  data_root: str | None = None, progress: bool = True) -> Path:
    device = resolve_device(device_name)
    loaded = load_model(model_ref, device)
    config = replace(loaded.config, data={"root": data_root}) if data_root else loaded.config
    data = prepare_data(config, splits=(options.split,), progress=progress)
    out = Path(options.save_dir)
    out.mkdir(parents=True, exist_ok=True)
    if options.long_sample:
        table = render_long_sample(loaded, data, options, device, out)
    else:
        table = render_samples(loaded, data, options, device, out)
    write_index(table, out)
    tags = {"model_uri": model_ref, "model_run_id": loaded.source.get("run_id", ""), "split": options.split,
            "layer": options.layer, "data_digest": data.digest()}
    if "version" in loaded.source:
        tags.update({"model_name": loaded.source["name"], "model_version": loaded.source["version"]})
    with tracking.start_run(config, run_name="visualize", command="visualize", tags=tags) as run:
        run.log_params({f"visualize.{k}": v for k, v in vars(options).items()})
        run.log_artifacts(out, "visualizations")
    print(f"{len(table)} sample(s) written to {out} and logged to run {run.id}")
    return out
