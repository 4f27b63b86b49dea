"""Which promotion rule can be trusted on a few test subjects? (issue 19)

A ground truth first: the `hard` demo preset with a large population of test subjects (30 by
default) and a few training subjects. Several models are trained on the training subjects:
seeds of one config (the same recipe, different draws) and at least one worse config. Each
model is evaluated on the whole population; its score there is its truth, and so is the
difference of any two models.

Then many small test splits (3, 5, 10 subjects) are drawn from the population, and each rule
judges every ordered pair of models (A the champion, B the challenger) on the split alone:

- `best`: promote B when its pooled figure on the split is strictly higher (exptrack's old rule);
- `t`: promote B when the lower end of the 95% Student t interval over the per-subject
  differences is above 0 (exptrack.stats, the default of `exptrack promote`);
- `bootstrap`: the same with a percentile interval from resampling subjects.

Reported per rule and split size:
- false promotion: the rule promotes B although B is not better on the population;
- missed promotion: B is better on the population by `--clear` (5 points) or more, and the rule
  keeps A;
- coverage (interval rules): how often the population difference lies inside the interval (for
  `t` the mean per-subject difference over the population, for `bootstrap` the pooled one).

Usage:
  python bench/compare.py [--train-subjects 6 --population 30 --frame-size 32 --epochs 10]
                          [--seeds 0,1,2] [--draws 400] [--quick]
Prints the models' population figures and the rule table (markdown).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import itertools
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

WORK = Path(tempfile.mkdtemp(prefix="exptrack-compare-bench-"))
atexit.register(shutil.rmtree, WORK, True)
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{WORK / 'mlflow.db'}")
os.environ.setdefault("MPLBACKEND", "Agg")

from exptrack.config import load_config  # noqa: E402  (after the tracking URI is set)
from exptrack.data.demo import preset_spec, write_demo_dataset  # noqa: E402
from exptrack.evaluation import run_evaluate  # noqa: E402
from exptrack.options import EvaluateOptions  # noqa: E402
from exptrack.stats import _from_counts, compare_counts, subject_counts  # noqa: E402
from exptrack.train import train  # noqa: E402

METRIC = "mean_class_acc"


def models_to_train(seeds: list[int]) -> dict[str, list[str]]:
    """name -> overrides: one recipe over several seeds, and two worse ones."""
    out = {f"masks-seed{s}": ["data.use_masks=true", f"train.seed={s}"] for s in seeds}
    out["raw-frames"] = ["data.use_masks=false", "model.static_removal=0", "model.stabilize=false", "train.seed=0"]
    out["masks-2-epochs"] = ["data.use_masks=true", "train.seed=0", "train.epochs=2"]
    return out


def population_predictions(root: Path, name: str, overrides: list[str], common: list[str]) -> pd.DataFrame:
    """Train one model, evaluate it on every test subject: its per-clip predictions."""
    config = load_config(None, [*common, *overrides, f"mlflow.registered_model=bench-{name}"])
    result = train(config, progress=False)
    evaluation = run_evaluate(f"models:/{result.model_id}", EvaluateOptions(split="test", progress=False, save_dir=WORK / "eval" / name))
    table = pd.read_csv(evaluation.out_dir / "predictions.csv")
    return table[["subject", "start_frame", "true", "predicted"]]


def truth(n: np.ndarray, correct: dict[str, np.ndarray]) -> tuple[dict[str, float], dict]:
    """Each model's pooled population figure, and each pair's population differences
    (pooled, and mean per-subject: the estimands of the bootstrap and of the t interval)."""
    pooled = {m: float(_from_counts(METRIC, n.sum(0), c.sum(0))) for m, c in correct.items()}
    per_subject = {m: _from_counts(METRIC, n, c) for m, c in correct.items()}
    diffs = {(a, b): (pooled[b] - pooled[a], float(np.nanmean(per_subject[b] - per_subject[a])))
             for a, b in itertools.permutations(correct, 2)}
    return pooled, diffs


def judge(n: np.ndarray, correct: dict[str, np.ndarray], diffs: dict, sizes: list[int], draws: int,
          clear: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    counts = {(size, rule): {"false": 0, "false_n": 0, "missed": 0, "missed_n": 0, "covered": 0, "cover_n": 0}
              for size in sizes for rule in ("best", "t", "bootstrap")}
    for size in sizes:
        for _ in range(draws):
            pick = rng.choice(len(n), size=size, replace=False)
            for (a, b), (pooled_diff, subject_diff) in diffs.items():
                for rule in ("best", "t", "bootstrap"):
                    if rule == "best":
                        promoted = float(_from_counts(METRIC, n[pick].sum(0), correct[b][pick].sum(0))) > \
                            float(_from_counts(METRIC, n[pick].sum(0), correct[a][pick].sum(0)))
                        low = high = None
                    else:
                        r = compare_counts(n[pick], correct[a][pick], correct[b][pick], METRIC, method=rule,
                                           resamples=500, seed=int(rng.integers(1 << 31)))
                        promoted, low, high = r.low > 0, r.low, r.high
                    c = counts[(size, rule)]
                    if pooled_diff <= 0:
                        c["false_n"] += 1
                        c["false"] += promoted
                    if pooled_diff >= clear:
                        c["missed_n"] += 1
                        c["missed"] += not promoted
                    if low is not None:
                        target = subject_diff if rule == "t" else pooled_diff
                        c["cover_n"] += 1
                        c["covered"] += low <= target <= high
    for (size, rule), c in counts.items():
        rows.append({"subjects": size, "rule": rule,
                     "false promotion": c["false"] / max(c["false_n"], 1), "pairs not better": c["false_n"],
                     "missed promotion": c["missed"] / max(c["missed_n"], 1), "pairs clearly better": c["missed_n"],
                     "coverage": c["covered"] / c["cover_n"] if c["cover_n"] else float("nan")})
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    def cell(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-subjects", type=int, default=6)
    parser.add_argument("--population", type=int, default=30)
    parser.add_argument("--frame-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--sizes", default="3,5,10")
    parser.add_argument("--draws", type=int, default=400)
    parser.add_argument("--clear", type=float, default=0.05, help="a population gain at least this large must be promoted")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2+6 subjects, 1 seed, 2 epochs, 30 draws")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        args.train_subjects, args.population, args.epochs, args.seeds, args.draws, args.sizes = 3, 6, 2, "0", 30, "3,5"
    start = time.perf_counter()
    subjects = args.train_subjects + args.population
    spec = dataclasses.replace(preset_spec("hard", subjects=subjects, seed=11), test_fraction=args.population / subjects)
    root = write_demo_dataset(WORK / "data", spec)
    common = [f"data.root={root}", "data.demo=false", f"model.num_classes={spec.classes}",
              f"data.frame_size={args.frame_size}", "model.width=0.25", f"train.epochs={args.epochs}",
              "train.num_workers=2", "train.early_stop_patience=0", f"paths.cache={WORK / 'cache'}",
              f"paths.outputs={WORK / 'outputs'}", "mlflow.experiment=compare-bench", "mlflow.log_system_metrics=false"]
    tables = {}
    for name, overrides in models_to_train([int(s) for s in args.seeds.split(",")]).items():
        if args.quick and name == "masks-2-epochs":
            continue
        t0 = time.perf_counter()
        tables[name] = population_predictions(root, name, overrides, common)
        print(f"trained and evaluated {name} in {time.perf_counter() - t0:.0f} s", flush=True)
    first = next(iter(tables.values()))
    n = subject_counts(first["subject"].to_numpy(), first["true"].to_numpy(), first["predicted"].to_numpy())[1]
    correct = {m: subject_counts(t["subject"].to_numpy(), t["true"].to_numpy(), t["predicted"].to_numpy())[2]
               for m, t in tables.items()}
    pooled, diffs = truth(n, correct)
    print(f"\nhard preset, {args.train_subjects} training subjects (validation carved from them), population of "
          f"{args.population} test subjects, {args.frame_size} px, width 0.25, {args.epochs} epochs")
    print("| model | population mean class accuracy |\n|---|---|")
    for m, v in sorted(pooled.items(), key=lambda kv: -kv[1]):
        print(f"| {m} | {v:.3f} |")
    table = judge(n, correct, diffs, [int(s) for s in args.sizes.split(",")], args.draws, args.clear, seed=0)
    print(f"\n{len(diffs)} ordered pairs, {args.draws} random test splits per size; 'clearly better' = by "
          f"{args.clear:.2f} or more on the population\n")
    print(markdown(table))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
