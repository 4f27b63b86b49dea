"""Does early stopping end runs that would still have improved? Patience 10 / 20 / off on held-out subjects.

Early stopping watches the validation subjects' mean class accuracy (the mean of the last
`train.selection_window` epochs) and ends a run after `train.early_stop_patience` epochs without a
rise. With one or two validation subjects that score sits on plateaus: on the hard preset without
masks (issue 33, session 18) patience 10 stopped seed 0 at epoch 22 near 0.5, while seeds 1 and 2
sat on plateaus of 10+ epochs of their own and rose to 0.72-0.76 by epoch 40.

Each (mask setting, seed) is trained once with early stopping off for `--epochs` epochs. The
learning-rate schedule (ReduceLROnPlateau on the validation loss) does not depend on the
patience, so a run with patience P is this run's first epochs, up to the epoch where P would have
stopped it: the bench replays the run's history through training's own rule
(training/loop.py:record_epoch) for each P, and scores on the test subjects the model that P keeps
(the best model up to its stop; a copy of best_model.pt is taken each time it changes). The rows
of one run are therefore exact pairs: they differ only in where training stopped.

Rows (appended to <out>/early_stop.csv): preset, masks, seed, patience (0 = off), stop (the
last epoch trained), kept (the epoch of the model kept), val (its selection score), test_mca.
`--summary` prints, per mask setting and patience, the mean test mean class accuracy over seeds
with its 95% interval (t over seeds), the mean difference to patience 10 (exptrack's default)
paired over seeds, and the mean epochs trained.

Usage:
  python bench/early_stop.py [--preset hard] [--masks off,on] [--seeds 0,1,2] [--patience 10,20]
                             [--epochs 40] [--frame-size 64] [--width 0.25] [--out DIR] [--summary]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

OUT_DEFAULT = Path(tempfile.gettempdir()) / "exptrack-bench-early-stop"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="hard", choices=["hard", "easy"])
    p.add_argument("--masks", default="off,on")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--patience", default="10,20", help="the patiences replayed besides off (0)")
    p.add_argument("--epochs", type=int, default=40, help="the length of the run without early stopping")
    p.add_argument("--frame-size", type=int, default=64)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--out", type=Path, default=OUT_DEFAULT)
    p.add_argument("--summary", action="store_true", help="only print the table of <out>/early_stop.csv")
    return p.parse_args()


ARGS = parse_args()
ARGS.out.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{ARGS.out / 'mlflow.db'}")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from exptrack import preemption  # noqa: E402
from exptrack.config import Config, load_config  # noqa: E402
from exptrack.data.demo import preset_spec  # noqa: E402
from exptrack.evaluation import run_evaluate  # noqa: E402
from exptrack.options import EvaluateOptions  # noqa: E402
from exptrack.stats import mean_interval  # noqa: E402
from exptrack.train import train  # noqa: E402
from exptrack.training import checkpoint as ckpt  # noqa: E402
from exptrack.training.loop import TrainState, record_epoch  # noqa: E402

CSV = ARGS.out / "early_stop.csv"
DEFAULT_PATIENCE = Config().train.early_stop_patience  # the paired column: exptrack's default


def settings(masks: bool, seed: int) -> list[str]:
    """bench/final_model.py's settings (the issue 33 table), one seed, early stopping off."""
    spec = preset_spec(ARGS.preset)
    return [f"data.root={ARGS.out / f'data-{ARGS.preset}'}", "data.demo=true", f"data.demo_preset={ARGS.preset}",
            f"model.num_classes={spec.classes}", f"data.frame_size={ARGS.frame_size}", f"model.width={ARGS.width}",
            f"train.epochs={ARGS.epochs}", f"data.use_masks={str(masks).lower()}", f"train.seed={seed}",
            "train.early_stop_patience=0", f"paths.cache={ARGS.out / 'cache'}", f"paths.outputs={ARGS.out / 'outputs'}",
            "mlflow.experiment=early-stop-bench", "mlflow.log_system_metrics=false",
            "mlflow.registered_model=bench-early-stop"]


class BestModelCopies:
    """An epoch callback that copies best_model.pt each time an epoch replaces it (later epochs
    overwrite the file; the replayed patiences need the model each of them kept)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, metrics, per_class, saved, state) -> None:
        for path in saved:
            if Path(path).name == ckpt.BEST_MODEL:
                shutil.copy2(path, self.folder / f"epoch_{int(metrics['epoch']):04d}.pt")

    def of(self, epoch: int) -> Path:
        return self.folder / f"epoch_{epoch:04d}.pt"


def replay(history: list[dict[str, float]], config: Config, patience: int) -> tuple[int, int, float]:
    """(last epoch trained, epoch of the model kept, its selection score) had the run used
    `patience`: training's own bookkeeping (record_epoch) and stopping test, epoch by epoch."""
    cfg = replace(config.train, early_stop_patience=patience)
    stop_after = patience or float("inf")
    state = TrainState()
    for metrics in history:
        record_epoch(state, dict(metrics), np.full(config.model.outputs, np.nan), cfg)
        if state.stale_epochs >= stop_after:
            break
    return state.epoch, state.best_epoch["val_mean_class_acc"], state.best["selection_score"]


def test_score(model: Path, config: Config) -> float:
    result = run_evaluate(str(model), EvaluateOptions(split="test", progress=False), base_config=config)
    return float(result.report.summary["mean_class_acc"])


def run_seed(masks: bool, seed: int) -> list[dict]:
    config = load_config(None, settings(masks, seed))
    copies = BestModelCopies(ARGS.out / "kept" / f"masks-{'on' if masks else 'off'}-seed-{seed}")
    began = time.perf_counter()
    result = train(config, progress=False, callbacks=[copies])
    minutes = (time.perf_counter() - began) / 60
    # the replay is training's bookkeeping: without a patience it keeps the model training kept
    assert replay(result.state.history, config, 0)[1] == result.state.best_epoch["val_mean_class_acc"]
    rows, scored = [], {}
    for patience in [0, *(int(p) for p in ARGS.patience.split(","))]:
        stop, kept, val = replay(result.state.history, config, patience)
        if kept not in scored:  # patiences that keep the same epoch share its score
            scored[kept] = test_score(copies.of(kept), config)
        rows.append({"preset": ARGS.preset, "masks": masks, "seed": seed, "epochs": ARGS.epochs,
                     "frame_size": ARGS.frame_size, "minutes": minutes, "patience": patience, "stop": stop,
                     "kept": kept, "val": val, "test_mca": scored[kept]})
        print(f"masks {'on' if masks else 'off'} seed {seed} patience {patience or 'off':>3}: stop {stop:2d} "
              f"kept {kept:2d} val {val:.3f} test {scored[kept]:.3f}", flush=True)
    return rows


def summary(table: pd.DataFrame) -> None:
    print("\n| epochs | masks | patience | seeds | test mean class acc | - patience 10 (paired) | epochs trained |")
    print("|---|---|---|---|---|---|---|")
    for (epochs, masks), runs in table.groupby(["epochs", "masks"]):
        wide = runs.pivot_table(index="seed", columns="patience", values="test_mca")
        trained = runs.pivot_table(index="seed", columns="patience", values="stop")
        for patience in wide.columns:
            score = mean_interval(wide[patience].dropna(), bounds=(0, 1))
            spread = f" [{score.low:.3f}, {score.high:.3f}]" if score.low is not None else ""
            diff = "-"
            if DEFAULT_PATIENCE in wide.columns and patience != DEFAULT_PATIENCE:
                d = mean_interval((wide[patience] - wide[DEFAULT_PATIENCE]).dropna(), bounds=(-1, 1))
                diff = f"{d.mean:+.3f}" + (f" [{d.low:+.3f}, {d.high:+.3f}]" if d.low is not None else "")
            print(f"| {epochs} | {'on' if masks else 'off'} | {patience or 'off'} | {score.n} | {score.mean:.3f}{spread} "
                  f"| {diff} | {trained[patience].mean():.1f} |")


def run_all() -> None:
    for masks in [m.strip() == "on" for m in ARGS.masks.split(",")]:
        for seed in (int(s) for s in ARGS.seeds.split(",")):
            rows = pd.DataFrame(run_seed(masks, seed))
            rows.to_csv(CSV, mode="a", header=not CSV.exists(), index=False)


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    if not ARGS.summary:
        try:
            with preemption.installed():  # a kill ends its runs KILLED, as the CLI's would, not RUNNING
                run_all()
        except preemption.Preempted as stop:
            print(f"{stop}: the rows of the seeds that finished are in {CSV}", file=sys.stderr)
            return stop.exit_code
    if not CSV.exists():
        print(f"no rows yet: {CSV}", file=sys.stderr)
        return 1
    summary(pd.read_csv(CSV))
    return 0


if __name__ == "__main__":
    sys.exit(main())
