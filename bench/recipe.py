"""Does exptrack's default recipe beat a plain C3D script on small, hard data? (issue 9)

Both recipes train the same C3D on the same clips of the `hard` demo preset (9 subjects:
6 train, 3 test; small people in cluttered, shaking scenes; 10 classes) and are scored on the
test subjects by mean class accuracy, with person masks on and off, over several seeds.

- plain: the baseline, written here as a user would write it: raw frames, cross-entropy,
  horizontal flip only, no start jitter, shuffled batches, AdamW + cosine schedule, all 6 train
  subjects, the last epoch's model.
- exptrack: `exptrack train` with its defaults; the user sets only the data root, class count,
  frame size, width and epochs (and masks on or off). Its registered model (best_model.pt) is
  what is scored. `--set key=value` adds overrides to this recipe only, for ablations.

Usage:
  python bench/recipe.py [--preset hard] [--seeds 0,1,2] [--masks on,off] [--epochs 25]
                         [--recipes plain,exptrack] [--data DIR] [--set key=value ...] [--out FILE]
Prints one line per run and a summary table (mean and spread per recipe and mask setting).
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

WORK = Path(tempfile.mkdtemp(prefix="exptrack-recipe-"))
atexit.register(shutil.rmtree, WORK, True)
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{WORK / 'mlflow.db'}")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402
from sklearn.metrics import balanced_accuracy_score  # noqa: E402

from exptrack.config import Config, load_config  # noqa: E402
from exptrack.data.dataset import make_loader  # noqa: E402
from exptrack.data.prepare import prepare_data  # noqa: E402
from exptrack.models.c3d import build_model  # noqa: E402
from exptrack.training import checkpoint as ckpt  # noqa: E402
from exptrack.models.weights import load_weights  # noqa: E402
from exptrack.device import Placement  # noqa: E402
from exptrack.training.loop import predict  # noqa: E402
from exptrack.train import train  # noqa: E402
from exptrack.training.run import seed_everything  # noqa: E402


def user_settings(root: Path, classes: int, frame_size: int, width: float, epochs: int, masks: bool,
                  seed: int) -> list[str]:
    """What the issue's user changed, and nothing else (plus where to write)."""
    return [f"data.root={root}", "data.demo=false", f"model.num_classes={classes}", f"data.frame_size={frame_size}",
            f"model.width={width}", f"train.epochs={epochs}", f"data.use_masks={str(masks).lower()}",
            f"train.seed={seed}", f"paths.cache={WORK / 'cache'}", f"paths.outputs={WORK / 'outputs'}",
            "mlflow.experiment=recipe-bench", "mlflow.log_system_metrics=false"]


def test_mean_class_accuracy(model: torch.nn.Module, config: Config, device: torch.device) -> float:
    data = prepare_data(config, splits=("test",), progress=False)
    loader = make_loader(data, "test", train=False, batch_size=32, num_workers=2)
    logits, labels = predict(model.to(device), loader, Placement(device))
    return float(balanced_accuracy_score(labels.numpy(), logits.argmax(1).numpy()))


# ---------------------------------------------------------------------------------------------
# the baseline: a plain script


def plain_recipe(settings: list[str], seed: int, epochs: int, device: torch.device, lr: float = 3e-4,
                 batch_size: int = 16) -> float:
    """Cross-entropy, flip only, shuffle, AdamW + cosine, all train subjects, last epoch."""
    # Raw frames: exptrack's static removal and stabilization are part of exptrack's recipe, not
    # of a plain script (until 2026-11-26 the baseline got static removal through the defaults).
    config = load_config(None, [*settings, "data.val_fraction=0", "data.start_jitter=0", "augment.rotation_deg=0",
                                "model.static_removal=0", "model.stabilize=false",
                                "augment.brightness=0", "augment.contrast=0", "augment.saturation=0", "augment.hue=0"])
    seed_everything(seed)
    data = prepare_data(config, splits=("train", "val"), progress=False)
    loader = make_loader(data, "train", train=True, batch_size=batch_size, num_workers=2, seed=seed,
                         weighted_sampler=False)
    model = build_model(config.model).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    criterion = torch.nn.CrossEntropyLoss()
    from exptrack.data.dataset import prepare_batch

    for epoch in range(1, epochs + 1):
        loader.dataset.set_epoch(epoch)
        loader.sampler.set_epoch(epoch)
        model.train()
        seen, correct, loss_sum = 0, 0, 0.0
        for batch in loader:
            x, y = prepare_batch(batch, device)
            logits = model(x)
            loss = criterion(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen, correct = seen + len(y), correct + int((logits.argmax(1) == y).sum())
            loss_sum += float(loss) * len(y)
        scheduler.step()
        # the training fit, to compare with exptrack's "train loss/acc" lines
        logging.getLogger("exptrack.bench").info("plain epoch %d/%d  train loss %.4f acc %.3f", epoch, epochs,
                                                 loss_sum / seen, correct / seen)
    return test_mean_class_accuracy(model, config, device)


# ---------------------------------------------------------------------------------------------
# exptrack's defaults


def exptrack_recipe(settings: list[str], extra: list[str], device: torch.device) -> tuple[float, int]:
    """`exptrack train` as the user runs it; returns (test mean class accuracy, best epoch)."""
    config = load_config(None, [*settings, f"train.device={device}", *extra])
    result = train(config, progress=False)
    payload = load_weights(result.checkpoint_dir / ckpt.BEST_MODEL)
    model = build_model(config.model)
    model.load_state_dict(payload["model"])
    return test_mean_class_accuracy(model, config, device), int(payload["epoch"])


# ---------------------------------------------------------------------------------------------


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    table = rows.groupby(["masks", "recipe"])["test_mca"].agg(["mean", "std", "min", "max", "count"]).round(3)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="hard", choices=["easy", "hard"])
    parser.add_argument("--data", help="an existing dataset root (default: the preset, generated in a temp folder)")
    parser.add_argument("--classes", type=int, default=None, help="default: the preset's (10 with --data)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--masks", default="on,off")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--frame-size", type=int, default=64)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--recipes", default="plain,exptrack")
    parser.add_argument("--set", dest="sets", nargs="+", action="extend", default=[],
                        help="extra overrides for the exptrack recipe (ablations)")
    parser.add_argument("--label", default="exptrack", help="name of the exptrack recipe in the output")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="both recipes train here (default: cuda when present)")
    parser.add_argument("--out", help="CSV of every run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    for name in ("exptrack.bench", "exptrack.train"):
        logging.getLogger(name).setLevel(logging.INFO)

    if args.data:  # (also lets this script drive older exptrack versions, which have no presets)
        root, classes = Path(args.data), args.classes or 10
    else:
        from exptrack.data.demo import preset_spec, write_demo_dataset

        spec = preset_spec(args.preset, classes=args.classes)
        root, classes = write_demo_dataset(WORK / "data", spec), spec.classes
    rows = []
    for masks in [m.strip() == "on" for m in args.masks.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            settings = user_settings(root, classes, args.frame_size, args.width, args.epochs, masks, seed)
            for recipe in args.recipes.split(","):
                start = time.perf_counter()
                best_epoch = args.epochs
                if recipe == "plain":
                    mca = plain_recipe(settings, seed, args.epochs, torch.device(args.device))
                else:
                    mca, best_epoch = exptrack_recipe(settings, args.sets, torch.device(args.device))
                row = {"recipe": args.label if recipe == "exptrack" else recipe, "masks": "on" if masks else "off", "seed": seed, "test_mca": round(mca, 4),
                       "model_epoch": best_epoch, "seconds": round(time.perf_counter() - start, 1)}
                rows.append(row)
                print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
                if args.out:
                    pd.DataFrame(rows).to_csv(args.out, index=False)
    table = pd.DataFrame(rows)
    print()
    print(f"preset {args.preset}, {args.frame_size} px, width {args.width}, {args.epochs} epochs, "
          f"exptrack overrides: {' '.join(args.sets) or 'none'}")
    print(summarise(table).to_string())
    if {"plain", args.label} <= set(table["recipe"]):
        means = table.groupby(["masks", "recipe"])["test_mca"].mean().unstack()
        for masks, row in means.iterrows():
            print(f"masks {masks}: {args.label} - plain = {row[args.label] - row['plain']:+.3f}")


if __name__ == "__main__":
    sys.exit(main())
