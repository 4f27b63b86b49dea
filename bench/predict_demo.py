"""Does `exptrack predict` give a meaningful timeline on a held-out video? (issue 18)

`exptrack evaluate` scores clips cut from the test subjects' videos and turns them into frame
labels; `exptrack predict` slides the model over a whole video. Both should agree on a test
subject's video. This runs, for each test subject of the model's dataset:

- evaluate's frame accuracy on the test split (the baseline, same run);
- predict on the video where it lies in the dataset layout (its masks and keypoints are found
  beside it, as a model trained with them needs);
- predict on a copy of the video outside the layout (nothing beside it: plain frames), which is
  what a model trained with masks sees on a new video without them.

Frame accuracy counts the frames that carry an exercise label (metrics.frame_accuracy), raw and
smoothed (the same majority window, 31 frames, as both commands use by default).

Usage (in the folder of the README's main command, after `exptrack promote`):
  python bench/predict_demo.py [--model models:/c3d-exercise@champion]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from exptrack.data.errors import DataWarnings
from exptrack.data.layout import discover, read_labels
from exptrack.evaluation import run_evaluate
from exptrack.options import EvaluateOptions
from exptrack.models.load import load_model
from exptrack.metrics import frame_accuracy
from exptrack.predict import predict_video
from exptrack.options import PredictOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models:/c3d-exercise@champion")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    config = load_model(args.model, torch.device("cpu")).config
    evaluation = run_evaluate(args.model, EvaluateOptions(split="test", progress=False))
    layout = discover(config.data.root, DataWarnings())
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        for subject in layout.by_split("test"):
            bare = Path(tmp) / subject.video.name  # outside any layout: nothing beside it
            shutil.copyfile(subject.video, bare)
            row = {"subject": subject.subject}
            for name, video in (("layout", subject.video), ("bare", bare)):
                timeline = predict_video(video, args.model, PredictOptions(save_dir=Path(tmp) / f"{subject.subject}-{name}"))
                true = read_labels(subject.labels, len(timeline.frames), config.model.num_classes, DataWarnings(0),
                                   config.data.frame_base)
                row[f"{name}_raw"] = frame_accuracy(timeline.frames["predicted"].to_numpy(), true)
                row[f"{name}_smoothed"] = frame_accuracy(timeline.frames["smoothed"].to_numpy(), true)
                row[f"{name}_segments"] = len(timeline.segments)
            rows.append(row)

    d = config.data
    print(f"model {args.model}: masks {d.use_masks}, skeleton attention {d.use_skeleton_attention}, "
          f"static removal {config.model.static_removal}; {len(rows)} test subjects")
    print(f"{'subject':<14} {'layout raw':>10} {'smoothed':>9} {'segs':>5} {'bare raw':>9} {'smoothed':>9} {'segs':>5}")
    for r in rows:
        print(f"{r['subject']:<14} {r['layout_raw']:>10.3f} {r['layout_smoothed']:>9.3f} {r['layout_segments']:>5d} "
              f"{r['bare_raw']:>9.3f} {r['bare_smoothed']:>9.3f} {r['bare_segments']:>5d}")
    mean = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if k != "subject"}
    print(f"{'mean':<14} {mean['layout_raw']:>10.3f} {mean['layout_smoothed']:>9.3f} {'':>5} "
          f"{mean['bare_raw']:>9.3f} {mean['bare_smoothed']:>9.3f}")
    f = evaluation.frame
    print(f"evaluate (same model, test split): frame accuracy {f['frame_acc']:.3f}, smoothed "
          f"{f['frame_acc_smoothed']:.3f}; target for predict: >= evaluate - 0.1 = {f['frame_acc'] - 0.1:.3f}")


if __name__ == "__main__":
    main()
