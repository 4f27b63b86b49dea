"""Which final model does the data allow? Singles, seed and fold ensembles, refits (issue 33).

Each recipe is trained `--repeats` times on a demo preset (hard by default: 9 subjects, 6 train
and val, 3 test, 10 classes) with and without person masks, and every model it yields is scored
on the test subjects (mean class accuracy, `exptrack evaluate`). Repeat r draws seeds 3r, 3r+1,
3r+2 and fold seed r, so repeats are independent draws of the same recipe.

    seeds        train.seeds=3r,3r+1,3r+2, group_model=ensemble -> rows `single` (its first member:
                 one run with the validation carve-out, exptrack's plain default), `seed members`
                 (all three), `seed best` (the member `group_model=best` registers: the highest
                 validation score) and `seed ensemble`
    folds-K      data.folds=K, fold_seed r -> `folds-K members`, `folds-K best` (each member
                 validated on other subjects) and `folds-K ensemble` (what `train --folds K`
                 registers by default)
    refit        data.train_on_val=true, seeds 3r..3r+2, ensemble -> `refit` (its first member:
                 one model on every non-test subject, `tune --retrain-best`'s fit), `refit members`
                 and `refit ensemble` (an ensemble of refits; no `best`: refits have no validation).
                 As `--retrain-best` does, a refit trains for the median kept epoch of the
                 validated runs of its recipe: this repeat's seeds recipe (column kept_epochs; run
                 it first, or give --refit-epochs)

A repeat trains 3 + 2 + 3 + 3 = 11 models per mask setting (folds 2 and 3). Rows are appended
to <out>/final_model.csv as they come, so the bench runs in parts (`--masks on`, `--repeats 1`,
`--recipes folds-3`) across sessions or machines; `--summary` prints, per mask setting and row,
the mean over repeats with its 95% interval (t over repeats) and the mean paired difference to
`single` of the same repeat, per training length (rows of different `--epochs` never mix), then each
ensemble against its recipe's `best`, its members' mean and `single`, and the recipes' ensembles
against each other, paired over repeats.

A recipe stopped part-way (a SIGTERM, the end of a session) loses only its unfinished member's
last epoch: `--resume-group <its group run id>` with the same --masks, --repeats, --recipes and
--out continues it (exptrack's `train --resume` of a group).

Usage:
  python bench/final_model.py [--preset hard] [--masks on,off] [--repeats 0,1,2]
                              [--recipes seeds,folds-2,folds-3,refit] [--frame-size 64]
                              [--epochs 40] [--width 0.25] [--out DIR] [--summary]
                              [--resume-group RUN_ID]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

OUT_DEFAULT = Path(tempfile.gettempdir()) / "exptrack-bench-final"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="hard", choices=["hard", "easy"])
    p.add_argument("--masks", default="on,off")
    p.add_argument("--repeats", default="0,1,2")
    p.add_argument("--recipes", default="seeds,folds-2,folds-3,refit")
    p.add_argument("--frame-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=40,
                   help="hard-preset models at 15 epochs are far from trained (bench/RESULTS.md, rest at 40 epochs)")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--refit-epochs", type=int, default=None,
                   help="epochs of a refit whose repeat has no seeds row with kept_epochs (older rows)")
    p.add_argument("--out", type=Path, default=OUT_DEFAULT)
    p.add_argument("--resume-group", metavar="RUN_ID",
                   help="continue the group run of a recipe that was stopped (one --masks, --repeats and --recipes): "
                        "its finished members are kept, the unfinished one resumes from its checkpoint")
    p.add_argument("--summary", action="store_true", help="only print the table of <out>/final_model.csv")
    args = p.parse_args()
    if args.resume_group and any("," in v for v in (args.masks, args.repeats, args.recipes)):
        p.error("--resume-group continues one recipe: give one --masks, one --repeats and one --recipes")
    return args


ARGS = parse_args()
ARGS.out.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{ARGS.out / 'mlflow.db'}")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from filelock import FileLock  # noqa: E402

from exptrack import preemption  # noqa: E402
from exptrack.config import load_config  # noqa: E402
from exptrack.data.demo import preset_spec  # noqa: E402
from exptrack.evaluation import run_evaluate  # noqa: E402
from exptrack.options import EvaluateOptions  # noqa: E402
from exptrack.stats import mean_interval  # noqa: E402
from exptrack.train import train  # noqa: E402
from exptrack.training.groups import MemberResult  # noqa: E402


def settings(masks: bool, *extra: str) -> list[str]:
    """The user's few choices (as bench/groups.py), and where to write."""
    spec = preset_spec(ARGS.preset)
    return [f"data.root={ARGS.out / f'data-{ARGS.preset}'}", "data.demo=true", f"data.demo_preset={ARGS.preset}",
            f"model.num_classes={spec.classes}", f"data.frame_size={ARGS.frame_size}", f"model.width={ARGS.width}",
            f"train.epochs={ARGS.epochs}", f"data.use_masks={str(masks).lower()}", f"paths.cache={ARGS.out / 'cache'}",
            f"paths.outputs={ARGS.out / 'outputs'}", "mlflow.experiment=final-model-bench",
            "mlflow.log_system_metrics=false", "mlflow.registered_model=bench-final", *extra]


def recipe_overrides(recipe: str, r: int) -> tuple[str, list[str]]:
    """(row prefix, overrides) of one recipe in repeat r."""
    seeds = f"train.seeds={3 * r},{3 * r + 1},{3 * r + 2}"
    if recipe == "seeds":
        return "seed", [seeds, "train.group_model=ensemble"]
    if recipe == "refit":
        return "refit", [seeds, "train.group_model=ensemble", "data.train_on_val=true"]
    if recipe.startswith("folds-"):
        return recipe, [f"data.folds={int(recipe.split('-')[1])}", f"data.fold_seed={r}", "train.group_model=ensemble"]
    raise SystemExit(f"unknown recipe {recipe!r} (known: seeds, refit, folds-K)")


def test_score(model_id: str, config) -> float:
    result = run_evaluate(f"models:/{model_id}", EvaluateOptions(split="test", progress=False), base_config=config)
    return float(result.report.summary["mean_class_acc"])


def refit_epochs(path: Path, masks: bool, r: int) -> int:
    """How long a refit of repeat r trains: what `tune --retrain-best` trains, the median kept epoch
    of the validated runs (tune/objective.py), here the seeds recipe of the same repeat."""
    table = pd.read_csv(path) if path.exists() else pd.DataFrame()
    if "kept_epochs" in table:
        seeds = table[(table.preset == ARGS.preset) & (table.masks == masks) & (table.repeat == r)
                      & (table.epochs == ARGS.epochs) & (table.recipe == "seeds")].kept_epochs.dropna()
        kept = [int(e) for e in str(seeds.iloc[-1]).split(";") if e.isdigit()] if len(seeds) else []
        if kept:  # (a member that kept no model is left out, as tune/objective.py does)
            return int(np.median(kept))
    if ARGS.refit_epochs:
        return ARGS.refit_epochs
    raise SystemExit(f"a refit trains for the median kept epoch of repeat {r}'s seeds recipe (as --retrain-best "
                     f"does), and {path} has none for masks {'on' if masks else 'off'}: run --recipes seeds,refit, "
                     "or give --refit-epochs")


def run_recipe(recipe: str, masks: bool, r: int, path: Path) -> list[dict]:
    prefix, extra = recipe_overrides(recipe, r)
    trained = refit_epochs(path, masks, r) if recipe == "refit" else ARGS.epochs
    config = load_config(None, settings(masks, *extra, f"train.epochs={trained}"))
    began = time.perf_counter()
    group = train(config, resume=ARGS.resume_group, progress=False)
    minutes = (time.perf_counter() - began) / 60  # (of this process: a resumed recipe's earlier part is not in it)
    # `epochs` is the recipe's length, which rows are compared at; a refit trains `trained_epochs`
    base = {"preset": ARGS.preset, "masks": masks, "repeat": r, "recipe": recipe, "minutes": minutes,
            "frame_size": ARGS.frame_size, "epochs": ARGS.epochs, "trained_epochs": trained,
            "kept_epochs": ";".join(str(m.kept_epoch) for m in group.members)}
    members = [test_score(m.model_id, config) for m in group.members]
    rows = [{**base, "row": f"{prefix} members", "test_mca": float(np.mean(members)), "members": len(members)},
            {**base, "row": f"{prefix} ensemble", "test_mca": test_score(group.model_id, config), "members": len(members)}]
    if recipe != "refit":  # what group_model=best would register (refits carry no validation score to rank by)
        best = group.members.index(max(group.members, key=MemberResult.rank))
        rows.insert(1, {**base, "row": f"{prefix} best", "test_mca": members[best], "members": 1})
    if recipe in ("seeds", "refit"):  # its first member: one run of the recipe
        rows.insert(0, {**base, "row": "single" if recipe == "seeds" else "refit", "test_mca": members[0], "members": 1})
    for row in rows:
        print(f"masks {'on' if masks else 'off'} repeat {r} {row['row']:18s} test {row['test_mca']:.3f}", flush=True)
    return rows


def cell(x, sign: str = "") -> str:
    """An Interval as `mean [low, high]` (the mean alone without an interval); sign "+" signs them."""
    spread = f" [{x.low:{sign}.3f}, {x.high:{sign}.3f}]" if x.low is not None else ""
    return f"{x.mean:{sign}.3f}{spread}"


def paired_row(epochs: int, masks: bool, rows: pd.Series, a: str, b: str) -> None:
    """A table row: `a` - `b` over the repeats that measured both (none: no row)."""
    d = mean_interval((rows[a] - rows[b]).dropna(), bounds=(-1, 1))
    if d.n:
        print(f"| {epochs} | {'on' if masks else 'off'} | {a} | {b} | {d.n} | {cell(d, '+')} |")


def summary(table: pd.DataFrame) -> None:
    print("test mean class accuracy: mean over repeats [95% interval]; paired difference to `single`\n")
    print("| epochs | masks | row | repeats | test | vs single |\n|---|---|---|---|---|---|")
    for (epochs, masks), by_mask in table.groupby(["epochs", "masks"], sort=False):  # never mix training lengths
        single = by_mask[by_mask.row == "single"].set_index("repeat").test_mca
        for row, df in by_mask.groupby("row", sort=False):
            i = mean_interval(df.test_mca)
            diff = mean_interval((df.set_index("repeat").test_mca - single).dropna(), bounds=(-1, 1))
            print(f"| {epochs} | {'on' if masks else 'off'} | {row} | {i.n} | {cell(i)} | "
                  f"{'' if row == 'single' or not diff.n else cell(diff, '+')} |")
    print("\nthe ensemble against what its recipe would register otherwise: paired over repeats\n")
    print("| epochs | masks | ensemble | vs | repeats | difference |\n|---|---|---|---|---|---|")
    for (epochs, masks), by_mask in table.groupby(["epochs", "masks"], sort=False):
        rows = by_mask.set_index(["row", "repeat"]).test_mca
        for ensemble in [r for r in by_mask.row.unique() if r.endswith(" ensemble")]:
            prefix = ensemble.removesuffix(" ensemble")
            for other in (f"{prefix} best", f"{prefix} members", "single"):
                if other in rows.index.get_level_values(0):
                    paired_row(epochs, masks, rows, ensemble, other)
    print("\nthe recipes' ensembles against each other (which final model: K, seeds or folds, refit): paired over "
          "repeats\n")
    print("| epochs | masks | ensemble | vs | repeats | difference |\n|---|---|---|---|---|---|")
    for (epochs, masks), by_mask in table.groupby(["epochs", "masks"], sort=False):
        rows = by_mask.set_index(["row", "repeat"]).test_mca
        ensembles = [r for r in by_mask.row.unique() if r.endswith(" ensemble")]
        for i, a in enumerate(ensembles):
            for b in ensembles[i + 1:]:
                paired_row(epochs, masks, rows, a, b)


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    path = ARGS.out / "final_model.csv"
    if not ARGS.summary:
        try:
            with preemption.installed():  # a kill ends its runs KILLED, as the CLI's would, not RUNNING
                train_recipes(path)
        except preemption.Preempted as stop:
            print(f"{stop}: the rows of the recipes that finished are in {path}", file=sys.stderr)
            return stop.exit_code
    print(f"\nrows in {path}")
    summary(pd.read_csv(path))
    return 0


def train_recipes(path: Path) -> None:
    """Every recipe of every repeat and mask setting asked for; each one's rows appended as it ends."""
    for masks in (m == "on" for m in ARGS.masks.split(",")):
        for r in (int(x) for x in ARGS.repeats.split(",")):
            for recipe in ARGS.recipes.split(","):
                append_rows(path, pd.DataFrame(run_recipe(recipe, masks, r, path)))


def append_rows(path: Path, rows: pd.DataFrame) -> None:
    """Add rows to the table; benches of one --out may run side by side (a lock), and a table
    of earlier sessions without the newer columns is rewritten whole with them (never half)."""
    with FileLock(f"{path}.lock"):
        if not path.exists():
            rows.to_csv(path, index=False)
            return
        table = pd.read_csv(path)
        if list(table.columns) == list(rows.columns):
            rows.to_csv(path, mode="a", header=False, index=False)
            return
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".csv", delete=False) as partial:
            pd.concat([table, rows], ignore_index=True).to_csv(partial, index=False)
        Path(partial.name).replace(path)


if __name__ == "__main__":
    sys.exit(main())
