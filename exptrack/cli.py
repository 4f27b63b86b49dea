"""`exptrack <command>`: each command parses its options, builds a config and makes one call."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from typing import Any, Callable

from . import preemption
from .config import SEED_MAX, Config, ConfigError, MlflowConfig, given_keys, load_config
from .data.errors import DataError, DataWarnings
from .options import CompareOptions, EvaluateOptions, PredictOptions, PromoteOptions, VisualizeOptions
from .errors import CheckpointError, ModelError, OutputError, TrackingUnavailable, TuneFailed
from .training.loop import NonFiniteLossError

# The original train.py flags `exptrack train` keeps, and the config keys they set.
TRAIN_FLAGS = {"epochs": "train.epochs", "batch_size": "train.batch_size", "device": "train.device",
               "seed": "train.seed", "skeleton_sigma": "data.skeleton_sigma", "seeds": "train.seeds",
               "folds": "data.folds", "group_model": "train.group_model"}
TRAIN_SWITCHES = {"downsample_class1": "data.downsample_class1", "use_masks": "data.use_masks",
                  "use_skeleton_attention": "data.use_skeleton_attention"}

REGISTERED_MODEL = MlflowConfig().registered_model  # the one definition: the config's default
DEFAULT_MODEL = f"models:/{REGISTERED_MODEL}@champion"


def _config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="experiment YAML (e.g. experiments/demo.yaml)")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                        help="override config keys, type-checked (several per --set, and --set repeatable)")
    parser.add_argument("--sets", default="", help="space-separated overrides in one argument (for MLproject)")


def _overrides(args: argparse.Namespace) -> list[str]:
    """Every `--set` and `--sets` override, in order."""
    return [*args.overrides, *(getattr(args, "sets", "") or "").split()]


def _config(args: argparse.Namespace, extra: list[str] | None = None) -> Config:
    return load_config(args.config, [*_overrides(args), *(extra or [])])


def cmd_demo_data(args: argparse.Namespace) -> None:
    from .data.demo import preset_spec, write_demo_dataset

    spec = preset_spec(args.preset, args.subjects, args.classes, args.seed)
    root = write_demo_dataset(args.out, spec, progress=True)
    print(f"{args.preset} demo dataset written to {root} ({spec.subjects} subjects, {spec.classes} classes, "
          f"seed {spec.seed})")


def cmd_analyze(args: argparse.Namespace) -> None:
    from .analyze import run_analyze

    result = run_analyze(_config(args), args.out, args.overwrite)
    print(result.splits.to_string())
    print(result.clips_per_class.to_string())
    warnings = DataWarnings()
    warnings.counts.update(result.summary["warnings"])
    print(warnings.summary())
    print(f"analysis written to {result.out_dir} and logged to the run under analysis/")
    _print_run_link(result.run_id)


def _print_run_link(run_id: str) -> None:
    """The last line of a command that made a run: where the MLflow UI shows it."""
    from .tracking import run_url, ui_hint

    print(f"MLflow run: {run_url(run_id)}  ({ui_hint()})")


def cmd_cache(args: argparse.Namespace) -> None:
    from .cache import run_cache

    config = _config(args)
    # what will be written, before anything is (and before a refusal when the disk cannot hold it)
    result = run_cache(config, prune=args.prune,
                       on_need=lambda need: print(f"frame cache {config.paths.cache}: {need.describe()}", flush=True))
    data = result.data
    print(f"cache ready at {config.paths.cache}: {len(data.subjects)} subjects, {result.size_bytes / 2**20:.0f} MiB; "
          + ", ".join(f"{s} {len(ix)} clips" for s, ix in data.splits.items()))
    print(data.warnings.summary())
    if result.pruned:
        print(f"pruned {result.pruned[0]} cache entries that this config does not use "
              f"({result.pruned[1] / 2**20:.0f} MiB freed)")
    _print_run_link(result.run_id)


NOT_GIVEN = ("", "none")  # --seeds / --folds values meaning "the config's" (the MLproject's defaults)


def _train_overrides(args: argparse.Namespace) -> list[str]:
    """The original train.py flags, as config overrides (applied after --set)."""
    out = []
    for flag, key in TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None and value not in NOT_GIVEN:
            out.append(f"{key}={value}")
    out.extend(f"{key}=true" for flag, key in TRAIN_SWITCHES.items() if getattr(args, flag))
    return out


def cmd_train(args: argparse.Namespace) -> None:
    from .train import train
    from .training.run import RunOptions

    overrides = [*_overrides(args), *_train_overrides(args)]
    # the MLproject's parameters, as `mlflow run` logs them ("none" when not given, as its defaults)
    invocation = {"config": args.config or "", "overrides": " ".join(overrides), "seeds": args.seeds or "none",
                  "folds": args.folds or "none"}
    explicit = given_keys(args.config, overrides) if args.resume else None  # what the resume takes
    result = train(load_config(args.config, overrides), resume=args.resume, progress=not args.no_progress,
                   options=RunOptions(invocation=invocation, explicit=explicit))
    if not result.run_id:  # a non-zero torchrun rank: rank 0 reports
        return
    print(group_line(result) if hasattr(result, "members") else end_of_run_line(result))
    _print_run_link(result.run_id)


def group_line(result) -> str:
    """What a seed or fold group ends with: each member's kept-model score, their summary, and
    what was registered."""
    members = ", ".join(f"{m.key} {m.value():.3f}" for m in result.members)
    registered = f"; registered version {result.model_version}: {result.registered}" if result.model_version else ""
    return (f"group {result.run_id}: {len(result.members)} {result.kind} ({members}); val mean class accuracy of "
            f"the kept models {result.interval.text()}{registered}")


def end_of_run_line(result) -> str:
    """What `exptrack train` ends with: the kept (registered) model's epoch and that epoch's
    validation metrics, all from one epoch; a train+val fit says it had no validation."""
    state = result.state
    epoch = state.best_epoch.get("val_mean_class_acc")
    row: dict[str, float] = next((r for r in state.history if int(r["epoch"]) == epoch), {})
    registered = f"; registered as version {result.model_version}" if result.model_version else ""
    if "val_mean_class_acc" not in row:
        return (f"run {result.run_id}: {state.epoch} epochs on train+val (no validation): model of epoch {epoch}, "
                f"train accuracy {row.get('train_acc', float('nan')):.3f}{registered}")
    return (f"run {result.run_id}: {state.epoch} epochs; model of epoch {epoch}: val mean class accuracy "
            f"{row['val_mean_class_acc']:.3f}, val accuracy {row['val_acc']:.3f}, val top-3 "
            f"{row['val_top3_acc']:.3f}{registered}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluation import evaluate_key, evaluate_overrides, run_evaluate
    from .formatting import frame_scores_text
    from .metrics import FRAME_SCORES

    given = _config(args) if (args.config or args.overrides or args.sets) else None
    set_keys = [o.partition("=")[0].strip() for o in _overrides(args)]
    # A config file's evaluate-able keys apply (its other sections are the model's own); every --set
    # key must be one evaluate can apply (others are refused, naming the key).
    file_keys = sorted(k for k in given_keys(args.config) if evaluate_key(k)) if args.config else []
    overrides = evaluate_overrides(given, [*file_keys, *set_keys]) if given else {}
    # The model's own experiment and paths unless mlflow.* or paths.* keys are given
    tracking_given = any(k.startswith(("mlflow.", "paths.")) for k in [*file_keys, *set_keys])
    for flag, key in (("use_masks", "use_masks"), ("use_skeleton_attention", "use_skeleton_attention"),
                      ("skeleton_sigma", "skeleton_sigma")):
        value = getattr(args, flag)
        if value not in (None, False):
            overrides.setdefault("data", {})[key] = value
    options = EvaluateOptions(split=args.split, batch_size=args.batch_size, device=args.device, save_dir=args.save_dir,
                              overwrite=args.overwrite, data_root=args.data_root, progress=not args.no_progress)
    result = run_evaluate(args.model, options, overrides=overrides, base_config=given if tracking_given else None)
    report, frame = result.report, result.frame
    s = report.summary
    print(f"{args.split} clips: accuracy {s['acc']:.3f}, top-3 {s['top3_acc']:.3f}, mean class accuracy "
          f"{s['mean_class_acc']:.3f}, macro F1 {s['macro_f1']:.3f}")
    print(f"{args.split} frames (mean over subjects): {frame_scores_text(frame)}")
    print(f"  smoothed: {frame_scores_text({k: frame[k + '_smoothed'] for k in FRAME_SCORES})}")
    print(f"results in {result.out_dir}")
    _print_run_link(result.run_id)


def cmd_plots(args: argparse.Namespace) -> None:
    from .plots import plot_run

    out = plot_run(args.run, args.save_dir, args.top_classes)
    print(f"plots of run {args.run} written to {out} and logged to the run under plots/")
    _print_run_link(args.run)


def cmd_promote(args: argparse.Namespace) -> None:
    from .promote import promote, version_groups, version_scores
    from .tracking import model_url

    decision = promote(args.name, PromoteOptions(
        metric=args.metric or f"{args.split}_mean_class_acc", split=args.split, data_root=args.data_root,
        progress=not args.no_progress, reevaluate=args.reevaluate, rule=args.rule,
        min_improvement=args.min_improvement))
    scores, groups = version_scores(args.name, args.split), version_groups(args.name)
    for version, reason in sorted(decision.reasons.items(), key=lambda kv: int(kv[0])):
        shown = ", ".join(f"{m} {v:.3f}" for m, v in scores.get(version, {}).items())
        print(f"version {version}: {reason}" + (f"  [{args.split}: {shown}]" if shown else "")
              + (f"  [{groups[version]}]" if version in groups else ""))
    print(f"champion of {args.name}: version {decision.champion}"
          + (f", the best of {decision.compared} versions on this {args.split} set" if decision.compared > 1 else ""))
    print(f"MLflow model: {model_url(args.name, decision.champion)}")


def cmd_compare(args: argparse.Namespace) -> None:
    from .compare import run_compare

    result = run_compare(args.a, args.b, CompareOptions(
        split=args.split, metric=args.metric, method=args.method, gradcam=args.gradcam, data_root=args.data_root,
        device=args.device, save_dir=args.save_dir, overwrite=args.overwrite, progress=not args.no_progress))
    first = next(iter(result.comparisons.values()))
    per_subject = first.diff_label != "B - A"
    print(f"{'metric':<22}{'A':>8}{'B':>8}{'B - A*' if per_subject else 'B - A':>9}  95% interval       P(B better)  "
          f"{first.unit:>8}")
    for name, c in result.comparisons.items():
        interval = f"[{c.low:+.3f}, {c.high:+.3f}]" if c.low is not None else "none"
        better = f"{c.p_better:.2f}" if c.p_better is not None else "-"
        print(f"{name:<22}{c.a:>8.3f}{c.b:>8.3f}{c.diff:>+9.3f}  {interval:<18} {better:>11}  {c.n_subjects:>8}")
    if per_subject:
        print("* the mean of the per-subject differences (each subject weighs the same; the interval is about it); "
              "A and B pool every clip")
    print(result.verdict)
    print(f"report: {result.out_dir / 'report.html'}")
    _print_run_link(result.run_id)


def cmd_visualize(args: argparse.Namespace) -> None:
    from .explain.visualize import run_visualize

    options = VisualizeOptions(split=args.split, num_samples=args.num_samples, layer=args.layer, alpha=args.alpha,
                               fps=args.fps, misclassified_only=args.misclassified_only,
                               scale_factor=args.scale_factor, long_sample=args.long_sample,
                               sample_duration=args.sample_duration, start_frame=args.start_frame,
                               subject_id=args.subject_id, save_dir=args.save_dir, overwrite=args.overwrite)
    result = run_visualize(args.model, options, device_name=args.device, data_root=args.data_root,
                           progress=not args.no_progress)
    print(f"{len(result.samples)} sample(s) written to {result.out_dir} and logged to run {result.run_id}")
    _print_run_link(result.run_id)


def cmd_predict(args: argparse.Namespace) -> None:
    from .data.layout import class_label
    from .formatting import frame_scores_text
    from .predict import predict_video

    timeline = predict_video(args.video, args.model, PredictOptions(
        save_dir=args.save_dir, device=args.device, stride=args.stride, smooth_window=args.smooth,
        overlay=args.overlay, overwrite=args.overwrite, masks=args.masks, keypoints=args.keypoints))
    n = len(timeline.segments)
    print(f"{args.video}: {n} segment{'' if n == 1 else 's'} over {len(timeline.frames)} frames -> {timeline.out_dir}")
    for _, seg in timeline.segments.iterrows():
        print(f"  {seg.start_s:7.1f}-{seg.end_s:7.1f} s  {class_label(int(seg['class']), timeline.class_names)}  "
              f"confidence {seg.mean_confidence:.2f}")
    truth = timeline.truth
    if truth is not None:
        print(f"against {truth.labels} ({truth.exercise_frames} exercise frames, {truth.rest_frames} rest): "
              f"{frame_scores_text(truth.scores)}")
        if not truth.rest_output:
            print("  this model has no rest output (model.rest_class false): it gives every rest frame an exercise")
    _print_run_link(timeline.run_id)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import diagnose

    diagnosis = diagnose(_config(args))
    print(diagnosis.render())
    return 1 if diagnosis.problems else 0


def cmd_tune(args: argparse.Namespace) -> None:
    from .tune.run import run_tune
    from .tune.study_file import load_study_spec
    from .tune.workers import PARENT_ATTR

    spec = load_study_spec(args.study_file, study=args.study, storage=args.storage, n_trials=args.n_trials)
    study = run_tune(spec, progress=not args.no_progress, retrain_best=args.retrain_best)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    pruned = sum(t.state.name == "PRUNED" for t in study.trials)
    print(f"study {spec.study}: {len(complete)} complete trials, {pruned} pruned"
          + (f", best {spec.metric} {study.best_value:.4f} with {study.best_params}" if complete else ""))
    if not complete:
        failed = sum(t.state.name == "FAIL" for t in study.trials)
        raise TuneFailed(f"study {spec.study}: no trial completed ({failed} failed, {pruned} pruned): "
                         f"the log above says why each failed; a failed trial's MLflow run (if it got one) has "
                         "the tag exptrack.failure, or optuna.fail_reason when its worker died")
    _print_run_link(study.user_attrs[PARENT_ATTR])


def _given(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type: `kind` of the value, or None for "" and "none" (the MLproject's way of
    leaving an option to the study file or config)."""
    def parse(text: str) -> Any:
        return None if text.strip().lower() in NOT_GIVEN else kind(text)
    return parse


def _seed(text: str) -> int:
    """An argparse type: a seed, 0..2**32 - 1 (numpy's and torch's range)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected a seed in 0..{SEED_MAX}, got {value}")
    return value


def _positive(text: str) -> int:
    """An argparse type: an integer >= 1 (a batch size, stride, frame rate, count)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _flag_value(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


_DEFAULT = " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exptrack", description="Exercise recognition experiments on MLflow")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", help="write the built-in demo dataset")
    p.add_argument("--out", required=True, help="folder to write (DATASET.md layout)")
    p.add_argument("--preset", choices=["easy", "hard"], default="easy",
                   help="easy: large people, plain backgrounds; hard: small people, cluttered shaking scenes "
                        "(default: %(default)s)")
    p.add_argument("--subjects", type=_positive, default=None, help="default: the preset's (easy 12, hard 9)")
    p.add_argument("--classes", type=_positive, default=None, help="default: the preset's (easy 6, hard 10)")
    p.add_argument("--seed", type=_seed, default=0, help="default: %(default)s")
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("analyze", help="dataset statistics and plots, logged as an MLflow run")
    _config_options(p)
    p.add_argument("--out", help="output folder, new or empty (default: a fresh <paths.outputs>/analysis/<run id>/)")
    p.add_argument("--overwrite", action="store_true", help="replace the contents of an --out folder exptrack wrote")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("train", help="train C3D; one MLflow run, best model registered")
    _config_options(p)
    p.add_argument("--epochs", type=_positive, help="train.epochs (default: the config's)")
    p.add_argument("--batch-size", type=_positive, help="train.batch_size (default: the config's)")
    p.add_argument("--device",
                   help="cuda, cuda:1, mps or cpu (default: the config's train.device; auto: cuda > mps > cpu)")
    p.add_argument("--seed", type=_seed, help="train.seed (default: the config's)")
    p.add_argument("--downsample-class1", action="store_true", help="downsample class 1 to the median class")
    p.add_argument("--use-masks", action="store_true", help="black out the background with the person masks")
    p.add_argument("--use-skeleton-attention", action="store_true", help="weight frames by skeleton attention")
    p.add_argument("--skeleton-sigma", type=float, help="attention blob std in pixels at the clip size "
                   "(default: the config's data.skeleton_sigma)")
    p.add_argument("--seeds", help="train.seeds: train once per seed (e.g. 0,1,2) as child runs of one group run "
                                   "(none: the config's)")
    p.add_argument("--folds", help="data.folds: K subject folds of the train and val subjects, one run each "
                                   "(none: the config's)")
    p.add_argument("--group-model", choices=["auto", "best", "ensemble"],
                   help="train.group_model: what a group registers (default: the config's, auto: the ensemble "
                        "of folds, the best of seeds)")
    p.add_argument("--resume", help="a checkpoint file, or the run id of a run (or group) to continue "
                                    "(default: a new run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cache", help="decode every video (and masks, keypoints) into the frame cache; an MLflow run")
    _config_options(p)
    p.add_argument("--prune", action="store_true",
                   help="then delete the entries this config does not use (other frame sizes, changed videos, "
                        "other sigmas, dead builds)")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("evaluate", help="metrics of a model on a split, logged as an MLflow run")
    _config_options(p)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="models:/name@alias, models:/name/version, runs:/id, a run id or a checkpoint file"
                        + _DEFAULT)
    p.add_argument("--split", default=EvaluateOptions.split, choices=["test", "val", "train"],
                   help="split to evaluate on" + _DEFAULT)
    p.add_argument("--batch-size", type=_positive, default=EvaluateOptions.batch_size,
                   help="clips per batch" + _DEFAULT)
    p.add_argument("--device", default=EvaluateOptions.device,
                   help="cuda, cuda:1, mps, cpu or auto (cuda > mps > cpu)" + _DEFAULT)
    p.add_argument("--save-dir", help="folder for the report files (default: a fresh outputs/evaluate/<run id>/)")
    p.add_argument("--overwrite", action="store_true", help="replace the contents of a --save-dir that holds files")
    p.add_argument("--data-root", help="evaluate on this dataset (default: the one the model was trained on)")
    p.add_argument("--use-masks", action="store_true", help="override the model's setting (warned)")
    p.add_argument("--use-skeleton-attention", action="store_true", help="override the model's setting (warned)")
    p.add_argument("--skeleton-sigma", type=float, help="override the model's setting (warned)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("plots", help="training curves of a run (also made at the end of every train run)")
    p.add_argument("--run", required=True, help="MLflow run id of a train run")
    p.add_argument("--top-classes", type=_positive, default=10, help="classes in the top-classes figure" + _DEFAULT)
    p.add_argument("--save-dir", default="outputs/plots", help="folder for the figures" + _DEFAULT)
    p.set_defaults(func=cmd_plots)

    p = sub.add_parser("promote", help="move the alias 'champion' to the best version (fair comparison)")
    p.add_argument("--name", default=REGISTERED_MODEL, help="registered model name" + _DEFAULT)
    p.add_argument("--metric", help="the metric compared, higher wins (default: <split>_mean_class_acc)")
    p.add_argument("--split", default=PromoteOptions.split, choices=["test", "val"],
                   help="split the versions are evaluated on" + _DEFAULT)
    p.add_argument("--data-root", help="evaluate on this dataset (default: each model's own)")
    p.add_argument("--rule", choices=["interval", "best"], default=PromoteOptions.rule,
                   help="interval: the challenger replaces the champion only when the lower end of the 95%% paired "
                        "interval over subjects of (challenger - champion) is above --min-improvement; best: when "
                        "its value is strictly higher" + _DEFAULT)
    p.add_argument("--min-improvement", type=float, default=PromoteOptions.min_improvement,
                   help="the least improvement the interval rule must show" + _DEFAULT)
    p.add_argument("--reevaluate", action="store_true",
                   help="evaluate again every version whose last evaluation was on other data (by default only "
                        "the champion is; the others sit out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars while versions are evaluated")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("compare", help="is model B better than model A? paired, with intervals over subjects; "
                                       "an MLflow run with report.html")
    p.add_argument("a", help="model A (the reference): any model reference evaluate takes, or a seed or fold "
                             "group's run id (then B is one too: compared over their members)")
    p.add_argument("b", help="model B (the challenger), or a group's run id")
    p.add_argument("--split", default=CompareOptions.split, choices=["test", "val"],
                   help="split both are evaluated on (not train: a verdict on training data means nothing)" + _DEFAULT)
    p.add_argument("--metric", default=CompareOptions.metric, help="the metric of the verdict: mean_class_acc or acc"
                   + _DEFAULT)
    p.add_argument("--method", default=CompareOptions.method, choices=["t", "bootstrap"],
                   help="interval over subjects" + _DEFAULT)
    p.add_argument("--gradcam", type=int, default=CompareOptions.gradcam,
                   help="GradCAM overlays of this many fixed and broken clips"
                   + _DEFAULT)
    p.add_argument("--data-root", help="evaluate both on this dataset (default: the one A was trained on)")
    p.add_argument("--device", default=CompareOptions.device, help="cuda, mps, cpu or auto" + _DEFAULT)
    p.add_argument("--save-dir", help="output folder (default: a fresh outputs/compare/<run id>/)")
    p.add_argument("--overwrite", action="store_true", help="replace the contents of a --save-dir that holds files")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("visualize", help="GradCAM videos of a model, logged as an MLflow run")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model reference, as for evaluate" + _DEFAULT)
    p.add_argument("--split", default=VisualizeOptions.split, choices=["test", "val", "train"],
                   help="split the clips come from" + _DEFAULT)
    p.add_argument("--num-samples", type=_positive, default=VisualizeOptions.num_samples,
                   help="clips to render" + _DEFAULT)
    p.add_argument("--layer", default=VisualizeOptions.layer, choices=["block3", "block4", "block5"],
                   help="GradCAM layer" + _DEFAULT)
    p.add_argument("--alpha", type=float, default=VisualizeOptions.alpha,
                   help="heatmap weight in the overlay" + _DEFAULT)
    p.add_argument("--fps", type=_positive, default=VisualizeOptions.fps, help="frame rate of the videos" + _DEFAULT)
    p.add_argument("--misclassified-only", action="store_true", help="sample among the misclassified clips only")
    p.add_argument("--scale-factor", type=_positive, default=VisualizeOptions.scale_factor,
                   help="every output's short side is at least this times the model's input (and 256 px)" + _DEFAULT)
    p.add_argument("--long-sample", action="store_true", help="one long sample of a subject's video")
    p.add_argument("--sample-duration", type=_positive, default=VisualizeOptions.sample_duration,
                   help="frames of the long sample" + _DEFAULT)
    p.add_argument("--start-frame", type=int, default=VisualizeOptions.start_frame,
                   help="first frame of the long sample" + _DEFAULT)
    p.add_argument("--subject-id", help="subject of the long sample (default: the first of the split)")
    p.add_argument("--save-dir", help="output folder (default: a fresh outputs/visualize/<run id>/)")
    p.add_argument("--overwrite", action="store_true", help="replace the contents of a --save-dir that holds files")
    p.add_argument("--device", default="auto", help="cuda, mps, cpu or auto" + _DEFAULT)
    p.add_argument("--data-root", help="dataset to draw clips from (default: the one the model was trained on)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.set_defaults(func=cmd_visualize)

    p = sub.add_parser("predict", help="exercise timeline of a new video")
    p.add_argument("video", help="a video file (no labels needed)")
    p.add_argument("--masks", help="the video's person masks (<NNNNN>_mask.png per frame), for a model trained with "
                   "masks (default: the mask folder beside it in a dataset layout, if any)")
    p.add_argument("--keypoints", help="the video's pose keypoint CSV, for a model trained with skeleton attention "
                   "(default: the one beside it in a dataset layout, if any)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model reference, as for evaluate" + _DEFAULT)
    p.add_argument("--save-dir", help="output folder (default: a fresh outputs/predict/<video name>-<time>/)")
    p.add_argument("--overwrite", action="store_true", help="replace the contents of a --save-dir that holds files")
    p.add_argument("--device", default=PredictOptions.device, help="cuda, mps, cpu or auto" + _DEFAULT)
    p.add_argument("--stride", type=_positive, help="window stride in frames (default: a quarter clip)")
    p.add_argument("--smooth", type=_positive, default=PredictOptions.smooth_window,
                   help="majority window (frames) for the segments" + _DEFAULT)
    p.add_argument("--overlay", action="store_true", help="also write overlay.mp4 with the predicted labels")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("tune", help="Optuna search; each trial a nested MLflow run")
    p.add_argument("--study-file", default="experiments/tune/demo.yaml", help="study YAML" + _DEFAULT)
    p.add_argument("--study", type=_given(str), help="study name (default: the study file's)")
    p.add_argument("--storage", type=_given(str), help="sqlite:///file.db, a journal file (*.log) or "
                   "postgresql://... (default: the study file's)")
    p.add_argument("--n-trials", type=_given(_positive),
                   help="total trials of the study, a rerun continues it (default: the study file's)")
    p.add_argument("--retrain-best", nargs="?", const=True, default=False, type=_flag_value,
                   help="afterwards, fit the best params on train+val subjects and register that model too "
                        "(also --retrain-best true|false, for MLproject)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("doctor", help="what this machine has (GPUs, driver, precision, store, disk) and what "
                                      "exptrack will use; exit 1 on a problem")
    _config_options(p)
    p.set_defaults(func=cmd_doctor)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not sys.stderr.isatty():  # a log file or CI: MLflow's download bars would fill it with carriage returns
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        with preemption.installed():  # SIGTERM / SIGINT: the run ends KILLED, resumable; exit 128 + signal
            code = args.func(args)
    except preemption.Preempted as exc:
        ended = (f"its run ended KILLED (tag {preemption.PREEMPTED_TAG})" if exc.killed_runs else
                 "before any run had started")
        print(f"exptrack {args.command}: {exc}; {ended}", file=sys.stderr)
        return exc.exit_code
    except (CheckpointError, ConfigError, DataError, ModelError, NonFiniteLossError, OutputError, TrackingUnavailable,
            TuneFailed) as exc:
        # exptrack's own errors say what is wrong and what to do: one line, no traceback
        print(f"exptrack {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception:  # noqa: BLE001 - anything else is a bug: the whole traceback, and say so
        traceback.print_exc()
        print(f"exptrack {args.command}: this is a bug in exptrack (or a library it uses), not a problem with "
              f"your input: please report it with the traceback above", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
