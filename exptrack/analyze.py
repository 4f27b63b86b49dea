"""The `analyze` command, an MLflow run: dataset statistics (splits, class distribution in frames
and clips, before/after downsampling, video properties; CSV + PNG)."""

from __future__ import annotations

import json
import logging
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import figures, tracking
from .config import Config
from .data import clips
from .data.layout import BACKGROUND, REST
from .data.prepare import PreparedData, prepare_data
from .outputs import check_save_dir, invocation_folder

log = logging.getLogger("exptrack.analyze")

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Analysis:
    splits: pd.DataFrame
    frames_per_class: pd.DataFrame
    clips_per_class: pd.DataFrame
    videos: pd.DataFrame
    summary: dict
    run_id: str = ""  # the MLflow run it was logged as
    out_dir: Path | None = None  # where its files were written


def _class_name(c: int) -> str:
    return REST if c == BACKGROUND else str(c)


def frames_per_class(data: PreparedData) -> pd.DataFrame:
    num_classes = data.config.model.num_classes
    table = {}
    for split in SPLITS:
        labels = [data.subjects[s].labels for s in data.split_subjects[split]]
        all_labels = np.concatenate(labels) if labels else np.empty(0, np.int16)
        table[split] = np.bincount(all_labels.astype(np.int64) + 1, minlength=num_classes + 1)
    df = pd.DataFrame(table, index=[_class_name(c) for c in range(BACKGROUND, num_classes)])
    df.index.name = "class"
    return df.loc[df.sum(axis=1) > 0]


def clips_per_class(data: PreparedData) -> pd.DataFrame:
    """Clip counts per split (the rest class, when the model has one, last); train both before and
    after downsampling class 1 (and rest)."""
    cfg = data.config
    m = cfg.model
    before = data.train_before_downsampling
    after = clips.downsample_classes(before, (cfg.data.dominant_class, m.rest_index), m.outputs, cfg.data.val_seed)
    downsampled = f"class {cfg.data.dominant_class}" + (f" and {REST}" if m.rest_class else "")
    df = pd.DataFrame({
        "train (all)": before.class_counts(m.outputs),
        f"train ({downsampled} downsampled)": after.class_counts(m.outputs),
        "val": data.splits["val"].class_counts(m.outputs),
        "test": data.splits["test"].class_counts(m.outputs),
    }, index=[str(c) for c in range(m.num_classes)] + [REST] * m.rest_class)
    df.index.name = "class"
    return df.loc[df.sum(axis=1) > 0]


def video_table(data: PreparedData) -> pd.DataFrame:
    cached = data.cache.bytes_by_subject() if data.cache is not None else {}
    rows = []
    for split in SPLITS:
        for name in data.split_subjects[split]:
            subj = data.subjects[name]
            info = subj.video.info
            rows.append({
                "subject": name, "split": split, "fps": info.fps, "width": info.width, "height": info.height,
                "frames": info.num_frames, "duration_s": info.num_frames / info.fps,
                "labelled_frames": int((subj.labels != BACKGROUND).sum()),
                "has_masks": subj.files.mask_dir is not None, "has_keypoints": subj.files.keypoints is not None,
                "cache_bytes": cached.get(name, 0),  # frames and the guides this config uses
            })
    return pd.DataFrame(rows)


def analyze(data: PreparedData) -> Analysis:
    videos = video_table(data)
    clip_counts = clips_per_class(data)
    split_rows = []
    for split in SPLITS:
        v = videos[videos.split == split]
        split_rows.append({"split": split, "subjects": len(v), "frames": int(v.frames.sum()),
                           "labelled_frames": int(v.labelled_frames.sum()), "clips": len(data.splits[split]),
                           "cache_mib": round(float(v.cache_bytes.sum()) / 2**20, 1)})
    splits = pd.DataFrame(split_rows).set_index("split")
    summary = {
        "data_root": str(data.layout.root),
        "data_digest": data.digest(),
        "subjects": {s: data.split_subjects[s] for s in SPLITS},
        "clips_train_before_downsampling": int(len(data.train_before_downsampling)),
        "clips_train_after_downsampling": int(clip_counts.iloc[:, 1].sum()),
        "warnings": dict(data.warnings.counts),
    }
    return Analysis(splits, frames_per_class(data), clip_counts, videos, summary)


def write_report(analysis: Analysis, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    analysis.splits.to_csv(out_dir / "split_statistics.csv")
    analysis.frames_per_class.to_csv(out_dir / "class_distribution_frames.csv")
    analysis.clips_per_class.to_csv(out_dir / "class_distribution_clips.csv")
    analysis.videos.to_csv(out_dir / "video_properties.csv", index=False)
    (out_dir / "summary.json").write_text(json.dumps(analysis.summary, indent=2))
    figures.grouped_bars(analysis.frames_per_class, "frames per class", "frames", out_dir / "class_distribution_frames.png")
    figures.grouped_bars(analysis.clips_per_class, "clips per class (before/after downsampling)", "clips",
                       out_dir / "class_distribution_clips.png")
    figures.grouped_bars(analysis.splits[["subjects"]], "subjects per split", "subjects", out_dir / "split_subjects.png")
    figures.video_properties(analysis.videos, out_dir / "video_properties.png")
    return out_dir


def run_analyze(config: Config, out_dir: str | Path | None = None, overwrite: bool = False) -> Analysis:
    """The `exptrack analyze` command, an MLflow run (started first: the store is checked before
    any decoding) that computes the report, writes it to `out_dir` (default a fresh
    <paths.outputs>/analysis/<run id>/; an explicit folder must be empty, or exptrack's with
    `overwrite`) and logs it."""
    check_save_dir(out_dir, overwrite, flag="--out")
    with tracking.start_run(config, run_name="analyze", command="analyze") as run:
        data = prepare_data(config)
        result = analyze(data)
        run.set_tags({"data_root": data.layout.root, "data_digest": data.digest()})
        with invocation_folder(out_dir, Path(config.paths.outputs) / "analysis" / run.id, overwrite) as out:
            write_report(result, out)
            run.log_metrics({f"{split}_{col}": float(v) for split, row in result.splits.iterrows()
                             for col, v in row.items()})
            run.log_metrics({f"data_warnings_{k}": v for k, v in data.warnings.counts.items()})
            run.log_artifacts(out, "analysis")
    log.info("analysis written to %s", out)
    return dataclasses.replace(result, run_id=run.id, out_dir=out)
