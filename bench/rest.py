"""Rest in the timeline: a model without a rest output against one with it (issue 32).

A workout video is mostly rest between sets. For each preset and seed this trains the recipe twice,
`model.rest_class=false` (before: every frame gets an exercise) and `true` (after: a rest output
trained on the windows that are mostly background), and runs both over every test subject's whole
video as `exptrack predict` does (metrics.frame_scores of the frame labels):

- frame accuracy over the exercise frames (what was reported before), and over all frames with
  rest as a class;
- rest precision and recall (rest = background, -1, in the labels).

For the model without rest it also tries the other method: "rest where the highest probability is
below tau", with tau the lowest threshold that reaches rest recall 0.9 on the test frames
themselves (an oracle, so the most a threshold can do), and what that costs the exercise frames.

Goal (issue 32): rest recall >= 0.9 while exercise-frame accuracy drops by at most 0.02.
Each figure is the mean over the test subjects; the table gives the mean over seeds and its 95%
interval (t over seeds).

Presets: `demo` is experiments/demo.yaml (the README's main command; 20 subjects, 7 test);
`hard` the hard demo preset (9 subjects, 3 test, 10 classes) at bench/groups.py's settings
(64 px, width 0.25, masks on, the rest exptrack's defaults) but 15 epochs.

The timelines are today's computation (windows a quarter clip apart, their probabilities averaged
per frame): the "before" model is scored the same way, so the difference is the rest output
alone. A rest model is scored under three rules for its rest probability (rest_rules): weighed by
the training windows' prior (clips.rest_weight, method "rest output"), by the weight chosen on the
validation videos' frame timelines (training's rule: metrics.calibrated_rest_weight), and the
plain argmax. Rows are appended to <out>/rest.csv as
they come; `--summary` prints the tables from it without training.

Usage: python bench/rest.py [--presets demo,hard] [--seeds 0,1,2] [--epochs N] [--out DIR] [--summary | --rescore]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

OUT_DEFAULT = Path(tempfile.gettempdir()) / "exptrack-bench-rest"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="demo,hard")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, help="override train.epochs (a quick check of the bench itself)")
    p.add_argument("--out", type=Path, default=OUT_DEFAULT)
    p.add_argument("--summary", action="store_true", help="only print the tables of <out>/rest.csv")
    p.add_argument("--rescore", action="store_true",
                   help="score every model of <out>/rest.csv per test subject again (no training), then --summary")
    return p.parse_args()


ARGS = parse_args()
ARGS.out.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{ARGS.out / 'mlflow.db'}")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from exptrack.config import Config, load_config  # noqa: E402
from exptrack.data.errors import DataWarnings  # noqa: E402
from exptrack.data.layout import BACKGROUND, read_labels, video_companions  # noqa: E402
from exptrack.data.prepare import PreparedData, prepare_data  # noqa: E402
from exptrack.models.load import LoadedModel, load_model  # noqa: E402
from exptrack.metrics import FRAME_SCORES, frame_labels, frame_scores  # noqa: E402
from exptrack.predict import model_frames  # noqa: E402
from exptrack.stats import mean_interval  # noqa: E402
from exptrack.train import train  # noqa: E402
from exptrack.data.dataset import make_loader  # noqa: E402
from exptrack.training.loop import predict  # noqa: E402
from exptrack.training.run import rest_weight_calibration, training_rest_weight  # noqa: E402
from exptrack.windows import video_probabilities  # noqa: E402

REST_RECALL_GOAL = 0.9
SUBJECTS = ARGS.out / "rest_subjects.csv"  # one row per model and test subject


def overrides(preset: str, seed: int, rest: bool) -> tuple[str | None, list[str]]:
    where = [f"paths.cache={ARGS.out / 'cache'}", f"paths.outputs={ARGS.out / 'outputs'}",
             "mlflow.experiment=rest-bench", "mlflow.log_system_metrics=false", "mlflow.registered_model=bench-rest",
             f"train.seed={seed}", f"model.rest_class={str(rest).lower()}",
             *([f"train.epochs={ARGS.epochs}"] if ARGS.epochs else [])]
    if preset == "demo":
        return "experiments/demo.yaml", [f"data.root={ARGS.out / 'data-demo'}", *where]
    return None, [f"data.root={ARGS.out / 'data-hard'}", "data.demo=true", "data.demo_preset=hard",
                  "model.num_classes=10", "data.frame_size=64", "model.width=0.25",
                  *([] if ARGS.epochs else ["train.epochs=15"]), "data.use_masks=true", *where]


def video_frames(loaded: LoadedModel, data: PreparedData, split: str = "test") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per subject of `split`: (T, outputs) frame probabilities over the whole video, as predict
    computes them from the source video, and the (T,) true labels."""
    d = loaded.config.data
    out = {}
    for subject in data.split_subjects[split]:
        files = video_companions(data.subjects[subject].files.video)
        frames, _ = model_frames(files, loaded.config, DataWarnings())
        probs = video_probabilities(loaded.model, frames, loaded.config, loaded.placement)  # (T, outputs)
        true = read_labels(files.labels, len(frames), loaded.config.model.num_classes, DataWarnings(), d.frame_base)
        out[subject] = (probs, true.astype(np.int64))
    return out


def rest_rules(loaded: LoadedModel, data: PreparedData) -> dict[str, float]:
    """How a rest model's timeline weighs its rest probability (metrics.frame_labels), method name
    -> weight: the training windows' prior (clips.rest_weight; exptrack's rule until session 16),
    the weight chosen on the validation videos' frame timelines (training's rule since: what a
    model trained now carries; computed here for models trained before it too), and the plain
    argmax (1). (Sessions 14-15 also scored a weight chosen on validation windows: it did worse.)"""
    calibrate = rest_weight_calibration(data, loaded.placement)
    prior = training_rest_weight(data)
    began = time.perf_counter()
    chosen = calibrate(loaded.model) if calibrate else prior
    calibration_s = time.perf_counter() - began
    # its cost against what every epoch already does: one pass over the validation clips
    began = time.perf_counter()
    predict(loaded.model, make_loader(data, "val", train=False, batch_size=loaded.config.train.eval_batch_size,
                                      num_workers=0), loaded.placement)
    print(f"rest weight {chosen:.2f} chosen on the validation videos in {calibration_s:.1f} s; one pass over the "
          f"validation clips {time.perf_counter() - began:.1f} s", flush=True)
    return {"rest output": prior, "rest output, validation-video weight": chosen, "rest output, argmax": 1.0}


def subject_rows(loaded: LoadedModel, config: Config, data: PreparedData,
                 videos: dict[str, tuple[np.ndarray, np.ndarray]], base: dict) -> list[dict]:
    """One row per test subject (`videos`: video_frames of the test split) and rule: `base` and its
    frame scores. A model without rest has one rule (its argmax); a rest model each of rest_rules."""
    rules = rest_rules(loaded, data) if config.model.rest_class else {base["method"]: 1.0}
    return [{**base, "method": method, "rest_weight": w, "subject": s,
             **frame_scores(frame_labels(p, config.model.rest_index, w), t)}
            for method, w in rules.items() for s, (p, t) in videos.items()]


def subject_mean(per_subject: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's mean over the subjects that have it (NaN: rest precision of a model that
    never says rest)."""
    return {k: mean_interval([s[k] for s in per_subject]).mean for k in per_subject[0]}


def threshold_scores(videos: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """A model without rest, and "rest where max probability < tau": the lowest tau reaching rest
    recall 0.9 over all test frames (an oracle), and the frame scores with it (mean over subjects)."""
    top = np.concatenate([p.max(1) for p, _ in videos])
    rest = np.concatenate([t for _, t in videos]) == BACKGROUND
    taus = np.unique(top)
    reach = [tau for tau in taus if np.mean(top[rest] < tau) >= REST_RECALL_GOAL]
    tau = float(reach[0]) if reach else float(taus[-1])
    scores = []
    for probs, true in videos:
        pred = frame_labels(probs)
        pred[probs.max(1) < tau] = BACKGROUND
        scores.append(frame_scores(pred, true))
    return {"tau": tau, **subject_mean(scores)}


def train_and_score(preset: str, seed: int, rest: bool) -> list[dict]:
    config_file, sets = overrides(preset, seed, rest)
    config = load_config(config_file, sets)
    began = time.perf_counter()
    result = train(config, progress=False)
    minutes = (time.perf_counter() - began) / 60
    loaded = load_model(f"models:/{result.model_id}")
    method = "rest output" if rest else "none (before)"
    data = prepare_data(config, progress=False)
    videos = video_frames(loaded, data)  # decoded and scored once, for every rule and the threshold
    per_subject = subject_rows(loaded, config, data, videos, {"preset": preset, "seed": seed, "method": method})
    pd.DataFrame(per_subject).to_csv(SUBJECTS, mode="a", header=not SUBJECTS.exists(), index=False)
    rows = []
    for rule, df in pd.DataFrame(per_subject).groupby("method", sort=False):
        scores = subject_mean(df[list(FRAME_SCORES)].to_dict("records"))
        rows.append({"preset": preset, "seed": seed, "method": rule, "rest_weight": df.rest_weight.iloc[0],
                     "train_minutes": minutes, "model_id": result.model_id, **scores})
    if not rest:
        rows.append({"preset": preset, "seed": seed, "method": "threshold (oracle tau)",
                     **threshold_scores(list(videos.values()))})
    for row in rows:
        print(f"{preset} seed {seed} {row['method']}: " + ", ".join(f"{k} {row[k]:.3f}" for k in FRAME_SCORES), flush=True)
    return rows


def per_seed(table: pd.DataFrame) -> pd.DataFrame:
    """One row per preset, method and seed: the rows of rest.csv whose method has no per-subject
    rows (the oracle threshold), and each other method's mean over the test subjects of
    rest_subjects.csv (which `--rescore` rebuilds with every rule of today's bench)."""
    if not SUBJECTS.exists():
        return table
    subjects = pd.read_csv(SUBJECTS)
    means = subjects.groupby(["preset", "method", "seed"], sort=False)[list(FRAME_SCORES)].mean().reset_index()
    return pd.concat([table[~table.method.isin(subjects.method.unique())], means], ignore_index=True)


def summary(table: pd.DataFrame) -> None:
    table = per_seed(table)
    print("mean over seeds [95% interval]\n")
    print("| preset | method | seeds | " + " | ".join(FRAME_SCORES) + " |\n|---|---|---|" + "---|" * len(FRAME_SCORES))
    for (preset, method), df in table.groupby(["preset", "method"], sort=False):
        cells = []
        for k in FRAME_SCORES:
            i = mean_interval(df[k])
            cells.append(f"{i.mean:.3f}" + (f" [{i.low:.3f}, {i.high:.3f}]" if i.low is not None else ""))
        print(f"| {preset} | {method} | {len(df)} | " + " | ".join(cells) + " |")
    if not SUBJECTS.exists():
        return
    subjects = pd.read_csv(SUBJECTS)
    print("\nOver test subjects (each subject's figure the mean over seeds; clips of one subject are "
          "correlated, the subject is the unit): mean [95% interval]\n")
    print("| preset | method | seeds | subjects | " + " | ".join(FRAME_SCORES) + " |\n|---|---|---|---|"
          + "---|" * len(FRAME_SCORES))
    for (preset, method), df in subjects.groupby(["preset", "method"], sort=False):
        per = df.groupby("subject")[list(FRAME_SCORES)].mean()  # over seeds
        cells = [f"{per[k].mean():.3f}" for k in FRAME_SCORES]
        print(f"| {preset} | {method} | {df.seed.nunique()} | {len(per)} | " + " | ".join(cells) + " |")
    print()
    for preset, df in subjects.groupby("preset", sort=False):
        per = df.groupby(["method", "subject"])[list(FRAME_SCORES)].mean()  # over seeds
        before = per.loc["none (before)"]
        for method in (m for m in df.method.unique() if m.startswith("rest output")):
            after = per.loc[method]
            change = mean_interval((after.frame_acc - before.frame_acc).dropna(), bounds=(-1, 1))
            recall = mean_interval(after.rest_recall.dropna())
            print(f"{preset}, {method}: exercise-frame accuracy after - before {change.mean:+.3f} [{change.low:+.3f}, "
                  f"{change.high:+.3f}] over {change.n} subjects; rest recall {recall.mean:.3f} "
                  f"[{recall.low:.3f}, {recall.high:.3f}], lowest subject {after.rest_recall.min():.3f}; goal: recall "
                  f">= {REST_RECALL_GOAL}, change >= -0.02")


def rescore() -> None:
    """Per-subject rows of every model in rest.csv (its model_id), without training."""
    SUBJECTS.unlink(missing_ok=True)
    table = pd.read_csv(ARGS.out / "rest.csv")
    models = table[table.model_id.notna()].drop_duplicates("model_id")
    for row in models.itertuples():
        config = load_config(*overrides(row.preset, int(row.seed), row.method == "rest output"))
        loaded, data = load_model(f"models:/{row.model_id}"), prepare_data(config, progress=False)
        rows = subject_rows(loaded, config, data, video_frames(loaded, data),
                            {"preset": row.preset, "seed": int(row.seed), "method": row.method})
        pd.DataFrame(rows).to_csv(SUBJECTS, mode="a", header=not SUBJECTS.exists(), index=False)


def main() -> int:
    path = ARGS.out / "rest.csv"
    if ARGS.rescore:
        rescore()
    elif not ARGS.summary:
        for preset in ARGS.presets.split(","):
            for seed in (int(s) for s in ARGS.seeds.split(",")):
                for rest in (False, True):
                    rows = train_and_score(preset, seed, rest)
                    pd.DataFrame(rows).to_csv(path, mode="a", header=not path.exists(), index=False)
    print(f"\nrows in {path}")
    summary(pd.read_csv(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
