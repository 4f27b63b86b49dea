"""GradCAM visualisation throughput: samples/s of `exptrack visualize` (six H.264 videos and
metadata per sample) on the demo model, on the CPU unless --device says otherwise.

The model is trained for one epoch on the demo recipe first (its quality does not matter here).
Usage: python bench/visualize.py [--samples 20] [--layer block4] [--device cpu]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--layer", default="block4")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from exptrack.config import load_config
    from exptrack.explain.visualize import run_visualize
    from exptrack.options import VisualizeOptions
    from exptrack.train import train

    tmp = Path(tempfile.mkdtemp(prefix="exptrack-bench-"))
    atexit.register(shutil.rmtree, tmp, True)  # demo data, cache and runs: hundreds of MB per run
    os.chdir(tmp)
    cfg = load_config(ROOT / "experiments" / "demo.yaml", ["train.epochs=1", "mlflow.log_system_metrics=false"])
    result = train(cfg, progress=False)
    ref = str(result.checkpoint_dir / "best_model.pt")
    for n, name in ((2, "warm-up"), (args.samples, "timed")):
        start = time.perf_counter()
        run_visualize(ref, VisualizeOptions(num_samples=n, layer=args.layer, save_dir=str(tmp / name)),
                      device_name=args.device, progress=False)
        seconds = time.perf_counter() - start
    print(f"visualize: {args.samples} samples in {seconds:.1f} s = {args.samples / seconds:.2f} samples/s "
          f"({args.layer}, {cfg.data.frame_size} px clips, device {args.device}, {os.cpu_count()} CPU threads; "
          f"includes loading the model and data and logging the run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
