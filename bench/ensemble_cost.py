"""What the final model costs: a fold ensemble (B) against one model (A), in one run (issue 33).

For each model: the wall time of the run that trained it (a group's run spans all its members),
`exptrack evaluate`'s clips/s on the test split, and `mlflow.pyfunc` serving clips/s on random
clips. Each model is measured in a process of its own: two exptrack models packaged by different
code versions cannot share one (mlflow.pyfunc imports the first one's packaged code for both).

Usage (in the folder of the README's main command, after `exptrack train --config
experiments/demo.yaml --folds 4`): python bench/ensemble_cost.py --a models:/c3d-exercise/1 --b models:/c3d-exercise/2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def measure(ref: str, clips: int, repeats: int) -> dict[str, float]:
    """One model's figures (run in a process of its own)."""
    import mlflow

    from exptrack.evaluation import run_evaluate
    from exptrack.options import EvaluateOptions
    from exptrack.models.load import load_model

    client = mlflow.MlflowClient()
    loaded = load_model(ref)
    run = client.get_run(loaded.source["run_id"])
    train_s = (run.info.end_time - run.info.start_time) / 1000
    with tempfile.TemporaryDirectory(prefix="exptrack-bench-") as tmp:
        result = run_evaluate(ref, EvaluateOptions(save_dir=Path(tmp) / "eval", progress=False))
    evaluate = client.get_run(result.run_id).data.metrics["test_clips_per_s"]
    d = loaded.config.data
    batch = np.random.default_rng(0).integers(0, 255, (clips, d.clip_len, d.frame_size, d.frame_size, 3), dtype=np.uint8)
    served = mlflow.pyfunc.load_model(ref)
    served.predict(batch[:8])  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        served.predict(batch)
        rates.append(clips / (time.perf_counter() - start))
    return {"members": loaded.config.model.ensemble, "train_s": train_s, "evaluate": evaluate, "serve": max(rates),
            "test_mca": result.report.summary["mean_class_acc"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", default="models:/c3d-exercise/1", help="the single model (the baseline)")
    p.add_argument("--b", default="models:/c3d-exercise/2", help="the fold ensemble")
    p.add_argument("--clips", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure this model and print JSON
    args = p.parse_args()
    if args.one:
        print("RESULT " + json.dumps(measure(args.one, args.clips, args.repeats)))
        return 0
    rows = {}
    for label, ref in (("A", args.a), ("B", args.b)):
        out = subprocess.run([sys.executable, __file__, "--one", ref, "--clips", str(args.clips), "--repeats",
                              str(args.repeats)], capture_output=True, text=True, check=True).stdout
        rows[label] = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    a, b = rows["A"], rows["B"]
    print(f"| | A {args.a} | B {args.b} | B / A |\n|---|---|---|---|")
    print(f"| members | {a['members']} | {b['members']} | |")
    for key, what in (("train_s", "training run, wall s"), ("evaluate", "evaluate clips/s (test split)"),
                      ("serve", f"pyfunc serving clips/s ({args.clips} clips, best of {args.repeats})")):
        print(f"| {what} | {a[key]:.1f} | {b[key]:.1f} | {b[key] / a[key]:.2f} |")
    print(f"| test mean class accuracy (one split; `exptrack compare` gives the interval) | {a['test_mca']:.3f} | "
          f"{b['test_mca']:.3f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
