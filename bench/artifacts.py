"""Bytes a train run and a tune trial leave in the MLflow artifact store and on local disk (issue 10).

A real `exptrack train` of the full C3D (27.8M parameters at 17 classes) for a few tiny epochs
on a tiny generated dataset, checkpointing every epoch, then a two-trial `exptrack tune` of the
same model. Printed per run: bytes in the artifact store (mlruns/), of which logged-model
weights, and bytes of local checkpoints; the baseline in the same run is what exptrack uploaded
before logged models: every local checkpoint file (weights + AdamW state), i.e. the local
checkpoint folder itself. Target: the store holds at most keep_checkpoints + 1 models' weights.

Usage: python bench/artifacts.py [--epochs 3] [--width 1.0] [--frame-size 112] [--trials 2]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

WORK = Path(tempfile.mkdtemp(prefix="exptrack-artifacts-"))
atexit.register(shutil.rmtree, WORK, True)
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{WORK / 'mlflow.db'}"
os.environ.setdefault("MPLBACKEND", "Agg")
os.chdir(WORK)  # mlruns/ (the artifact store) and outputs/ land here

from exptrack.config import load_config  # noqa: E402
from exptrack.data.demo import DemoSpec, write_demo_dataset  # noqa: E402
from exptrack.models.c3d import build_model, count_parameters  # noqa: E402

MB = 1e6


def size(path: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file()) if path.exists() else 0


def overrides(args: argparse.Namespace, root: Path) -> list[str]:
    return [f"data.root={root}", "data.demo=false", "model.num_classes=17", f"model.width={args.width}",
            f"data.frame_size={args.frame_size}", "data.clip_len=16", "data.train_stride=16", "data.eval_stride=16",
            f"train.epochs={args.epochs}", "train.early_stop_patience=0", "train.checkpoint_every=1",
            "train.batch_size=4", "train.eval_batch_size=8", "train.num_workers=0", "train.precise_bn_batches=2",
            "mlflow.log_system_metrics=false", "mlflow.experiment=artifacts-bench"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--frame-size", type=int, default=112)
    parser.add_argument("--trials", type=int, default=2)
    args = parser.parse_args()

    from exptrack.train import train

    root = write_demo_dataset(WORK / "data", DemoSpec(subjects=4, classes=3, width=128, height=96, segment_frames=(32, 40), background_frames=(8, 12)))
    cfg = load_config(None, overrides(args, root))
    params = count_parameters(build_model(cfg.model))
    weights = params * 4
    result = train(cfg, progress=False)
    store = size(WORK / "mlruns")
    model_bytes = size(WORK / "mlruns", "weights.pt")
    local = size(Path(cfg.paths.outputs) / "runs" / result.run_id / "checkpoints")
    models = len(list((WORK / "mlruns").rglob("weights.pt")))
    print(f"model: {params:,} parameters ({weights / MB:.0f} MB of fp32 weights); {args.epochs} epochs, "
          f"checkpoint every epoch, keep_checkpoints {cfg.train.keep_checkpoints}")
    print("| what | artifact store (mlruns/) | of which model weights | logged models | local checkpoints |")
    print("|---|---|---|---|---|")
    print(f"| train run | {store / MB:.0f} MB | {model_bytes / MB:.0f} MB | {models} "
          f"(at most {cfg.train.keep_checkpoints + 1}) | {local / MB:.0f} MB |")
    print(f"| baseline: the same run uploading every checkpoint with its optimizer state (before) | "
          f"{(local + store - model_bytes) / MB:.0f} MB | - | - | {local / MB:.0f} MB |")

    if args.trials:
        from exptrack.tune.run import run_tune
        from exptrack.tune.study_file import Param, StudySpec

        before_store, before_local = size(WORK / "mlruns"), size(Path(cfg.paths.outputs))
        spec = StudySpec(config=None, overrides=tuple(overrides(args, root)), study="artifacts",
                         storage=f"sqlite:///{WORK / 'optuna.db'}", n_trials=args.trials, pruner="none",
                         space=(Param("optim.lr", "float", 1e-4, 1e-3, True),))
        run_tune(spec)
        added_store = size(WORK / "mlruns") - before_store
        added_local = size(Path(cfg.paths.outputs)) - before_local
        print(f"| tune, per trial ({args.trials} trials, best registered) | {added_store / args.trials / MB:.0f} MB | "
              f"- | - | {added_local / args.trials / MB:.0f} MB |")
    print(f"ratio, train run upload: {(local + store - model_bytes) / max(store, 1):.1f}x less than before")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
