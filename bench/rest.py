"""Can a threshold on the model's confidence say "rest"? (issue 32: a workout video is mostly rest)

Runs a registered model over every test subject's whole video, as `exptrack predict` does (the
frame probabilities average the windows covering each frame), and compares the frames labelled
rest (background, -1) with the frames labelled with an exercise: their highest class probability,
by percentile, and for thresholds tau, the share of rest frames below tau (rest recall of a
"rest when max probability < tau" rule) against the share of exercise frames kept above it.

The goal of issue 32 is rest recall >= 0.9 with exercise-frame accuracy down by at most 0.02;
a threshold that cannot reach it means the model must learn rest (a rest class).

Usage (in the folder of the README's main command): python bench/rest.py [--model models:/c3d-exercise/1]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from exptrack.data.errors import DataWarnings
from exptrack.data.layout import BACKGROUND, read_labels, video_companions
from exptrack.inference import load_model
from exptrack.metrics import frame_probabilities
from exptrack.predict import model_frames
from exptrack.windows import window_probabilities


def confidences(model_ref: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """(max probability of each rest frame, of each exercise frame) over the test subjects."""
    loaded = load_model(model_ref)
    d = loaded.config.data
    with (root / "split.csv").open() as fh:
        test = [row["id"] for row in csv.DictReader(fh) if row["split"] == "test"]
    rest, exercise = [], []
    for subject in test:
        files = video_companions(root / "dataset" / "anon" / f"{subject}.mp4")
        frames, _ = model_frames(files, loaded.config, DataWarnings())
        starts, windows = window_probabilities(loaded.model, frames, loaded.config, max(1, d.clip_len // 2),
                                               loaded.placement)
        top = frame_probabilities(starts, windows, len(frames), d.clip_len).max(1)  # (T,)
        labels = read_labels(files.labels, len(frames), loaded.config.model.num_classes, DataWarnings(), d.frame_base)
        rest.append(top[labels == BACKGROUND])
        exercise.append(top[labels != BACKGROUND])
    return np.concatenate(rest), np.concatenate(exercise)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/c3d-exercise/1")
    parser.add_argument("--data-root", default="data/demo")
    args = parser.parse_args()
    rest, exercise = confidences(args.model, Path(args.data_root))
    print(f"{args.model} on the test subjects of {args.data_root}: {len(rest)} rest frames, {len(exercise)} exercise frames")
    print("| percentile | rest frames' max probability | exercise frames' max probability |\n|---|---|---|")
    for q in (10, 25, 50, 75, 90):
        print(f"| {q} | {np.percentile(rest, q):.3f} | {np.percentile(exercise, q):.3f} |")
    print("\n| tau | rest recall (rest frames below tau) | exercise frames kept (at or above tau) |\n|---|---|---|")
    for tau in (0.5, 0.6, 0.7, 0.8, 0.9):
        print(f"| {tau} | {np.mean(rest < tau):.3f} | {np.mean(exercise >= tau):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
