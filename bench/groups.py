"""How much does one recipe move between seeds and between folds, and what do groups buy? (issue 20)

On a demo preset (`--preset`: hard, 9 subjects: 6 train and val, 3 test, 10 classes; or easy,
12 subjects, 6 classes), with exptrack's defaults and masks on, each part trains one group
(training/groups.py) and scores every member's kept model on the test subjects (mean class
accuracy), so that the spread a single run hides is printed next to the group's own figures:

- seeds:    train.seeds=0,1,2, train.group_model=ensemble: the members' test figures (mean, sd,
            range) against the ensemble's (one model averaging their probabilities);
- folds:    data.folds=3: each fold validates on a third of the train and val subjects;
            per-fold validation and test figures, their mean and 95% interval over folds;
- sampler:  the same folds with train.weighted_sampler=false (a recipe decision of issue 9,
            "the balanced sampler is worth 16 points", measured on one seed of the hard
            preset), compared with `folds` fold by fold (paired t over folds, as `exptrack
            compare` does for two groups);
- tiebreak: the easy preset (validation saturates), seeds 0,1,2, with
            train.selection_tiebreak=first (the kept model is the first of tied windows, the old
            rule) against the default val_loss: members' test figures and kept epochs.

Usage:
  python bench/groups.py [--parts seeds,folds,sampler,tiebreak] [--frame-size 32] [--epochs 15]
                         [--width 0.25] [--preset hard] [--data DIR] [--easy-data DIR] [--out DIR]
Prints one line per member and a table per part; the rows go to <out>/groups.csv.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

OUT_DEFAULT = Path(tempfile.gettempdir()) / "exptrack-bench-groups"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="seeds,folds,sampler,tiebreak")
    p.add_argument("--frame-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--preset", default="hard", choices=["hard", "easy"],
                   help="the demo preset of the seeds, folds and sampler parts (default: hard)")
    p.add_argument("--data", type=Path, help="that preset's root (generated there when missing)")
    p.add_argument("--easy-data", type=Path, help="easy preset root (generated there when missing)")
    p.add_argument("--out", type=Path, default=OUT_DEFAULT)
    return p.parse_args()


ARGS = parse_args()
ARGS.out.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{ARGS.out / 'mlflow.db'}")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from exptrack.compare import run_compare_groups  # noqa: E402
from exptrack.config import load_config  # noqa: E402
from exptrack.data.demo import preset_spec, write_demo_dataset  # noqa: E402
from exptrack.evaluation import run_evaluate  # noqa: E402
from exptrack.options import EvaluateOptions  # noqa: E402
from exptrack.stats import mean_interval  # noqa: E402
from exptrack.train import train  # noqa: E402


def dataset(root: Path | None, preset: str) -> tuple[Path, int]:
    spec = preset_spec(preset, None, None, 0)
    root = root or ARGS.out / f"data-{preset}"
    if not root.exists():
        write_demo_dataset(root, spec)
    return root, spec.classes


def settings(root: Path, classes: int, *extra: str) -> list[str]:
    """The user's few choices (as bench/recipe.py), masks on, and where to write."""
    return [f"data.root={root}", "data.demo=false", f"model.num_classes={classes}",
            f"data.frame_size={ARGS.frame_size}", f"model.width={ARGS.width}", f"train.epochs={ARGS.epochs}",
            "data.use_masks=true", f"paths.cache={ARGS.out / 'cache'}", f"paths.outputs={ARGS.out / 'outputs'}",
            "mlflow.experiment=groups-bench", "mlflow.log_system_metrics=false", "mlflow.registered_model=bench-groups",
            *extra]


def test_score(model_id: str, config) -> float:
    result = run_evaluate(f"models:/{model_id}", EvaluateOptions(split="test", progress=False), base_config=config)
    return float(result.report.summary["mean_class_acc"])


def run_group(part: str, overrides: list[str]) -> tuple[object, list[dict]]:
    config = load_config(None, overrides)
    start = time.perf_counter()
    group = train(config, progress=False)
    minutes = (time.perf_counter() - start) / 60
    rows = []
    for m in group.members:
        row = {"part": part, "member": m.key, "run_id": m.run_id, "kept_epoch": m.kept_epoch,
               "val_mca": m.value(), "test_mca": test_score(m.model_id, config), "group_minutes": minutes}
        rows.append(row)
        print(f"{part:9s} {m.key:8s} kept epoch {m.kept_epoch}  val {row['val_mca']:.3f}  test {row['test_mca']:.3f}",
              flush=True)
    if group.registered.startswith("ensemble"):
        rows.append({"part": part, "member": "ensemble", "run_id": group.run_id, "test_mca": test_score(group.model_id, config),
                     "group_minutes": minutes})
        print(f"{part:9s} ensemble of {len(group.members)}: test {rows[-1]['test_mca']:.3f}", flush=True)
    return group, rows


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    out = []
    for part, df in rows[rows.member != "ensemble"].groupby("part", sort=False):
        val, test = mean_interval(df.val_mca), mean_interval(df.test_mca)
        ens = rows[(rows.part == part) & (rows.member == "ensemble")].test_mca
        out.append({"part": part, "members": len(df), "val mean": val.mean, "val sd": val.std,
                    "test mean": test.mean, "test sd": test.std, "test min": df.test_mca.min(),
                    "test max": df.test_mca.max(), "test 95% low": test.low, "test 95% high": test.high,
                    "ensemble test": float(ens.iloc[0]) if len(ens) else np.nan,
                    "minutes per group": float(df.group_minutes.iloc[0])})
    return pd.DataFrame(out)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    parts = ARGS.parts.split(",")
    root, classes = dataset(ARGS.data, ARGS.preset)
    rows, groups = [], {}
    if "seeds" in parts:
        groups["seeds"], r = run_group("seeds", settings(root, classes, "train.seeds=0,1,2",
                                                         "train.group_model=ensemble"))
        rows += r
    if "folds" in parts or "sampler" in parts:
        groups["folds"], r = run_group("folds", settings(root, classes, "data.folds=3"))
        rows += r
    if "sampler" in parts:
        groups["sampler"], r = run_group("sampler", settings(root, classes, "data.folds=3",
                                                             "train.weighted_sampler=false"))
        rows += r
    if "tiebreak" in parts:
        easy, easy_classes = dataset(ARGS.easy_data, "easy")
        for rule in ("first", "val_loss"):
            groups[f"tiebreak-{rule}"], r = run_group(f"tie-{rule}", settings(
                easy, easy_classes, "train.seeds=0,1,2", f"train.selection_tiebreak={rule}"))
            rows += r
    table = pd.DataFrame(rows)
    table.to_csv(ARGS.out / "groups.csv", index=False)
    pd.set_option("display.width", 200)
    print(summary(table).round(3).to_string(index=False))
    for a, b in (("folds", "sampler"), ("tiebreak-first", "tiebreak-val_loss")):
        if a in groups and b in groups:  # B against A on the groups' validation figures
            print(f"{b} against {a}: {run_compare_groups(groups[a].run_id, groups[b].run_id).verdict}")
            test_a = table[(table.part == groups_part(a)) & (table.member != "ensemble")].test_mca.to_numpy()
            test_b = table[(table.part == groups_part(b)) & (table.member != "ensemble")].test_mca.to_numpy()
            if len(test_a) == len(test_b):
                d = mean_interval(test_b - test_a, bounds=(-1.0, 1.0))
                interval = f"95% interval [{d.low:+.3f}, {d.high:+.3f}]" if d.low is not None else "no interval"
                print(f"  on test, member by member: {d.mean:+.3f} ({interval}, n {d.n})")


def groups_part(name: str) -> str:
    return name.replace("tiebreak-", "tie-")


if __name__ == "__main__":
    sys.exit(main())
