"""Evaluation: clip metrics (scikit-learn), confusion matrices, predictions, error analysis,
and the frame-level view over whole videos (timeline, temporal smoothing)."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import model_card, figures, tracking
from .tracking import registry
from .config import Config, ConfigError, replace
from .data.clips import ClipIndex
from .data.dataset import ModelView, make_loader
from .data.errors import DataError
from .data.layout import REST
from .data.prepare import PreparedData, prepare_data
from .errors import ModelError
from .models.load import LoadedModel, load_model
from .metrics import (
    HEADLINE_METRICS,
    FRAME_SCORES,
    classification_metrics,
    confusion_tables,
    frame_labels,
    frame_scores,
    smooth_labels,
)
from .outputs import DEFAULT_OUTPUTS, check_save_dir, invocation_folder
from .device import resolve_device
from .training.loop import predict
from .windows import video_probabilities
from .options import EvaluateOptions

log = logging.getLogger("exptrack.evaluate")

# What `evaluate --set` may change: where the data and outputs are, and the input weighting
# (warned when it differs from the model's training). The rest of data.* and model.* is the
# model's own (clip length, frame size, classes): changing it would not evaluate that model.
EVALUATE_DATA_KEYS = ("root", "use_masks", "use_skeleton_attention", "skeleton_sigma", "mask_alpha",
                      "skeleton_floor", "keypoint_min_conf", "frame_base", "eval_stride", "min_purity", "demo",
                      "cache_workers")
EVALUATE_SECTIONS = ("mlflow", "paths")
# The input weighting: an evaluation that changes any of these from the model's training is an
# ablation (how the model does on other inputs), not the model's score: it never becomes the
# version's figures, and compare and promote never reuse it.
INPUT_KEYS = ("use_masks", "use_skeleton_attention", "skeleton_sigma", "mask_alpha", "skeleton_floor",
              "keypoint_min_conf")
INPUTS_TAG = "inputs"  # "as trained", or the keys changed (data.use_masks=False, ...)


def inputs_changed(trained: Config, evaluated: Config) -> str:
    """"as trained", or the input-weighting keys `evaluated` changes from `trained`."""
    changed = [f"data.{k}={getattr(evaluated.data, k)}" for k in INPUT_KEYS
               if getattr(evaluated.data, k) != getattr(trained.data, k)]
    return ", ".join(changed) or "as trained"


class SplitIsTrainingData(ModelError):
    """The split asked for is (some of) the model's training data: no score of it means anything."""


@dataclass
class ClipReport:
    summary: dict[str, float]
    per_class: pd.DataFrame  # class -> precision, recall, f1, support
    confusion: pd.DataFrame  # counts, rows = true, columns = predicted
    confusion_normalized: pd.DataFrame  # each row sums to 1
    errors: pd.DataFrame  # most frequent confusions


def clip_metrics(y_true: np.ndarray, probs: np.ndarray, top_errors: int = 10) -> ClipReport:
    """Metrics over the classes that occur in `y_true` (mean class accuracy = balanced accuracy)."""
    m = classification_metrics(y_true, probs, probs.shape[1])
    confusion, normalized = confusion_tables(y_true, probs.argmax(1))
    return ClipReport(m.summary, m.per_class, confusion, normalized, error_analysis(confusion, top_errors))


def error_analysis(confusion: pd.DataFrame, top: int = 10) -> pd.DataFrame:
    """The most frequent confusions: (true, predicted, count, share of the true class)."""
    rows = []
    totals = confusion.sum(axis=1)
    for t in confusion.index:
        for p in confusion.columns:
            n = int(confusion.loc[t, p])
            if t != p and n > 0:
                rows.append({"true": t, "predicted": p, "count": n, "share_of_true": n / totals[t]})
    table = pd.DataFrame(rows, columns=["true", "predicted", "count", "share_of_true"])
    return table.sort_values(["count", "share_of_true"], ascending=False).head(top).reset_index(drop=True)


def predictions_table(index: ClipIndex, probs: np.ndarray, names: list[str] | None = None) -> pd.DataFrame:
    top3 = np.argsort(-probs, axis=1)[:, :3]
    name_of = np.asarray(names or [str(c) for c in range(probs.shape[1])])
    table = pd.DataFrame({
        "subject": np.asarray(index.subjects)[index.subject_idx],
        "start_frame": index.start,
        "true": index.label,
        "predicted": probs.argmax(1),
        "true_name": name_of[index.label],
        "predicted_name": name_of[probs.argmax(1)],
        "top3": [" ".join(map(str, row)) for row in top3],
    })
    for c in range(probs.shape[1]):
        table[f"prob_{c}"] = probs[:, c].round(5)
    return table


# ---------------------------------------------------------------------------------------------
# frame-level view


def subject_timelines(data: PreparedData, split: str, loaded: LoadedModel, smooth_window: int) -> dict[str, dict]:
    """Per subject of `split`: the true frame labels and the model's timeline over the whole
    video, raw and smoothed (-1 = rest), computed as `exptrack predict` computes it (windows a quarter
    clip apart, their probabilities averaged per frame): evaluate and predict say the same about
    the same video."""
    d, rest = data.config.data, loaded.config.model.rest_index
    out = {}
    for name in data.split_subjects[split]:
        subj = data.subjects[name]
        frames = ModelView(subj, d.use_masks, d.use_skeleton_attention, d.mask_alpha)
        raw = frame_labels(video_probabilities(loaded.model, frames, loaded.config, loaded.placement), rest,
                           loaded.rest_weight)
        out[name] = {"true": subj.labels.astype(np.int64), "raw": raw, "smoothed": smooth_labels(raw, smooth_window)}
    return out


def timeline_scores(timelines: dict[str, dict]) -> dict[str, float]:
    """metrics.frame_scores of the timelines, raw and `_smoothed`, each the mean over subjects
    (a subject's frames are correlated: the subject is the unit). NaN where no subject has the
    figure (rest precision of a model that never says rest)."""
    out = {}
    for series, suffix in (("raw", ""), ("smoothed", "_smoothed")):
        per_subject = [frame_scores(t[series], t["true"]) for t in timelines.values()]
        for key in FRAME_SCORES:
            values = [s[key] for s in per_subject if np.isfinite(s[key])]
            out[key + suffix] = float(np.mean(values)) if values else float("nan")
    return out


# ---------------------------------------------------------------------------------------------
# the evaluate command




def evaluate_key(key: str) -> bool:
    """Whether evaluate can apply `section.key` (a data key that does not change what the model
    sees, or where files and runs go)."""
    section, _, name = key.partition(".")
    return section in EVALUATE_SECTIONS or (section == "data" and name in EVALUATE_DATA_KEYS)


def evaluate_overrides(given: Config, keys: list[str]) -> dict[str, dict]:
    """The data.* overrides among the `--set` keys of an evaluate command, with their values in
    `given`; a key evaluate cannot apply is a ConfigError naming it."""
    out: dict[str, dict] = {}
    for key in keys:
        section, _, name = key.partition(".")
        if section in EVALUATE_SECTIONS:
            continue  # taken from the caller's config as a whole (base_config)
        if section == "data" and name in EVALUATE_DATA_KEYS:
            out.setdefault("data", {})[name] = getattr(given.data, name)
            continue
        raise ConfigError(f"--set {key}: evaluate uses the model's own {section}.* settings; it can change only "
                          f"{', '.join('data.' + k for k in EVALUATE_DATA_KEYS)}, mlflow.* and paths.*")
    return out


def evaluation_config(trained: Config, data_root: str | None, overrides: dict[str, dict]) -> Config:
    """The model's own config (preprocessing, sizes, classes), with the data root and any
    explicit overrides; contradicting how the model was trained is allowed but warned about.

    Where files go is never taken from the model: its saved `paths.*` (possibly absolute paths
    of the machine that trained it) give way to this working folder's defaults, its
    `mlflow.tracking_uri` to the store this process uses (the one the model was found in, from
    MLFLOW_TRACKING_URI), and its `data.demo` does not apply (a missing data root is an error,
    not a place to generate demo data), unless the caller overrides them."""
    changes: dict[str, dict] = {s: dict(v) for s, v in overrides.items()}
    for section, values in overrides.items():
        for key, value in values.items():
            was = getattr(getattr(trained, section), key)
            if was != value:
                log.warning("%s.%s=%s differs from the model's training (%s): results may not be comparable",
                            section, key, value, was)
    data = changes.setdefault("data", {})
    if data_root:  # another dataset: its own split.csv, not the folds of the one the model was trained on
        data["root"] = data_root
        data.setdefault("folds", 0)
        data.setdefault("fold", None)
    data.setdefault("demo", False)
    changes["paths"] = {**vars(Config().paths), **changes.get("paths", {})}
    changes["mlflow"] = {"tracking_uri": Config().mlflow.tracking_uri, **changes.get("mlflow", {})}
    return replace(trained, **changes)


def run_evaluate(model_ref: str, options: EvaluateOptions = EvaluateOptions(),
                 overrides: dict[str, dict] | None = None, base_config: Config | None = None,
                 parent_run_id: str | None = None) -> "Evaluation":
    """Evaluate a model on a split, as an MLflow run that takes the model as an input; the files
    go to `options.save_dir`, by default a fresh outputs/evaluate/<run id>/. `base_config`: the
    caller's tracking and paths (else the model's own); `overrides`: evaluate_overrides."""
    check_save_dir(options.save_dir, options.overwrite)
    device = resolve_device(options.device, key="--device")
    tracking.check_store(base_config or Config())  # before the model is looked up in it
    loaded = load_model(model_ref, device)
    if loaded.config.model.ensemble > 1 and loaded.config.data.folds and options.split != "test":
        raise SplitIsTrainingData(f"model {model_ref}: an ensemble of fold models trained on every non-test "
                                  f"subject; its {options.split} split is some member's training data: evaluate it "
                                  "on test")
    if loaded.config.data.train_on_val and options.split == "val":  # before a run: promote leaves it out
        raise SplitIsTrainingData(f"model {model_ref}: trained on its validation subjects too (data.train_on_val, "
                                  "a --retrain-best refit); its val split is training data: evaluate it on test")
    config = evaluation_config(loaded.config, options.data_root, overrides or {})
    if base_config is not None:  # tracking and paths come from the caller's config
        config = replace(config, mlflow=vars(base_config.mlflow), paths=vars(base_config.paths))
    # The run spans the work (data, inference, report), so its duration in the UI is the command's.
    inputs = inputs_changed(loaded.config, config)
    with tracking.start_run(config, run_name=f"evaluate-{options.split}", command="evaluate",
                            tags={**_model_tags(loaded.source, options.split), **loaded.timeline_tags(), INPUTS_TAG: inputs},
                            parent_run_id=parent_run_id) as run:
        data = prepare_data(config, splits=(options.split,), progress=options.progress)
        if len(data.splits[options.split]) == 0:
            why = (" (the model was trained on the validation subjects, data.train_on_val: evaluate it on test)"
                   if options.split == "val" and config.data.train_on_val else "")
            raise DataError(f"{model_ref}: the {options.split} split has no clips{why}")
        loader = make_loader(data, options.split, train=False, batch_size=options.batch_size,
                             num_workers=config.train.num_workers,
                             pin_memory=device.type == "cuda")
        start = time.perf_counter()
        logits, labels = predict(loaded.model, loader, loaded.placement, progress=options.progress,
                                 desc=f"evaluate {options.split}")
        seconds = time.perf_counter() - start
        probs = torch.softmax(logits, dim=1).numpy()
        y_true = labels.numpy()
        report = clip_metrics(y_true, probs)
        names = loaded.class_names
        report.per_class.insert(0, "name", [names[c] for c in report.per_class.index])
        timelines = subject_timelines(data, options.split, loaded, options.smooth_window)
        frame = {**timeline_scores(timelines), "clips_per_s": len(y_true) / max(seconds, 1e-9)}
        log.info("%d clips in %.1f s (%.0f clips/s on %s)", len(y_true), seconds, frame["clips_per_s"], device)
        outputs = Path(base_config.paths.outputs) if base_config is not None else DEFAULT_OUTPUTS
        with invocation_folder(options.save_dir, outputs / "evaluate" / run.id, options.overwrite) as out:
            write_report(report, predictions_table(data.splits[options.split], probs, names), timelines, out, names)
            log_evaluation(run, loaded.source if inputs == "as trained" else _unversioned(loaded.source),
                           options.split, data, report, frame, out)
    if inputs != "as trained" and "version" in loaded.source:
        log.warning("%s evaluated with other inputs than it was trained on (%s): an ablation, so version %s's "
                    "figures and card keep its own evaluation", model_ref, inputs, loaded.source["version"])
    return Evaluation(report, frame, out, run.id)


def _unversioned(source: dict[str, str]) -> dict[str, str]:
    """The model's source without its registered version: nothing is written to the version."""
    return {k: v for k, v in source.items() if k not in ("name", "version")}


@dataclass(frozen=True)
class Evaluation:
    report: ClipReport
    frame: dict[str, float]  # timeline_scores (frame accuracy two ways, rest precision/recall; raw, smoothed), clips/s
    out_dir: Path
    run_id: str


def evaluation_digest(model_ref: str, split: str = "test", data_root: str | None = None,
                      memo: dict | None = None) -> str:
    """The digest of the clips `evaluate` would score `model_ref` on today (the split's subjects,
    clip starts and labels under the model's clip settings): what promotion compares on. Models
    with the same data settings share one computation through `memo`."""
    config = evaluation_config(load_model(model_ref).config, data_root, {})
    key = (split, tuple(sorted(vars(config.data).items())), config.model.num_classes, config.model.rest_index,
           config.paths.cache)
    memo = {} if memo is None else memo
    if key not in memo:
        memo[key] = prepare_data(config, splits=(split,), progress=False).splits[split].digest()
    return memo[key]


PREDICTIONS_ARTIFACT = "results/predictions.csv"  # what write_report writes, as log_evaluation logs it


def read_predictions(path: str | Path) -> pd.DataFrame:
    """An evaluation's predictions.csv, subject ids as the strings they are (`001` stays `001`,
    the key of data.subjects, not the number 1)."""
    return pd.read_csv(path, dtype={"subject": str})


def evaluation_predictions(run_id: str) -> pd.DataFrame | None:
    """The per-clip predictions an evaluate run logged (subject, start_frame, true, predicted,
    ...), or None when it has none (an older evaluation, a run that is gone)."""
    with tempfile.TemporaryDirectory(prefix="exptrack-predictions-") as tmp:
        try:
            return read_predictions(tracking.download_run_artifact(run_id, PREDICTIONS_ARTIFACT, tmp))
        except Exception:  # noqa: BLE001 - not logged, or no such run
            return None


def write_report(report: ClipReport, predictions: pd.DataFrame, timelines: dict[str, dict], out: Path,
                 names: list[str]) -> None:
    """The evaluation's files: tables by class id (CSV), figures by class name."""
    out.mkdir(parents=True, exist_ok=True)
    pd.Series(report.summary).to_csv(out / "metrics.csv", header=["value"])
    report.per_class.to_csv(out / "per_class_metrics.csv")
    report.confusion.to_csv(out / "confusion_matrix.csv")
    report.confusion_normalized.to_csv(out / "confusion_matrix_normalized.csv")
    report.errors.to_csv(out / "error_analysis.csv", index=False)
    predictions.to_csv(out / "predictions.csv", index=False)
    figures.confusion_heatmap(_named(report.confusion, names), "confusion matrix (clips)", out / "confusion_matrix.png",
                            fmt="d")
    figures.confusion_heatmap(_named(report.confusion_normalized, names), "confusion matrix (row-normalised)",
                            out / "confusion_matrix_normalized.png", fmt=".2f")
    for name, t in timelines.items():
        (out / "timelines").mkdir(exist_ok=True)
        pd.DataFrame({"frame": np.arange(len(t["true"])), "true": t["true"], "predicted": t["raw"],
                      "smoothed": t["smoothed"]}).to_csv(out / "timelines" / f"{name}.csv", index=False)
        figures.timeline(t["true"], t["raw"], t["smoothed"], f"subject {name}", out / "timelines" / f"{name}.png", names,
                       rest_output=names[-1] == REST)


def _named(table: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """A class-by-class table with names instead of ids on both axes."""
    return table.rename(index=lambda c: names[int(c)], columns=lambda c: names[int(c)])


def find_evaluation(model_id: str, split: str, digest: str) -> str | None:
    """The newest finished evaluate run of logged model `model_id` on `split` whose clips had
    `digest` (the tags log_evaluation sets) and the inputs it was trained on, in any experiment;
    None when there is none."""
    return tracking.newest_finished_run({"exptrack.command": "evaluate", "model_id": model_id, "split": split,
                                         "data_digest": digest, INPUTS_TAG: "as trained"})


def _model_tags(source: dict[str, str], split: str) -> dict[str, str]:
    tags = {"model_uri": source.get("uri", ""), "model_run_id": source.get("run_id", ""), "split": split,
            "model_id": source.get("model_id", "")}  # compare finds an evaluation by it
    if "version" in source:
        tags.update({"model_name": source["name"], "model_version": source["version"]})
    return tags


def log_evaluation(run: tracking.Run, source: dict[str, str], split: str, data: PreparedData, report: ClipReport,
                   frame: dict[str, float], out: Path) -> None:
    prefix = f"{split}_"
    metrics = {prefix + k: v for k, v in {**report.summary, **frame}.items() if np.isfinite(v)}
    digest = data.splits[split].digest()
    run.set_tags({"data_digest": digest, "data_root": data.layout.root})
    model_id = source.get("model_id")
    if model_id:  # the model's page lists this evaluation and its metrics
        run.log_model_input(model_id)
    dataset = run.dataset(data.manifest(split), name=f"clips-{split}", source=str(data.layout.root), digest=digest)
    run.log_dataset(dataset, "evaluation")
    run.log_metrics(metrics, model_id=model_id, dataset=dataset)
    run.log_table(report.per_class.reset_index(), "per_class_metrics.json")
    run.log_table(read_predictions(out / "predictions.csv"), "predictions.json")
    run.log_artifacts(out, "results")
    if "version" in source:  # the headline scores as tags (promotion compares them); the rest on the card
        headline = {prefix + k: round(v, 6) for k, v in report.summary.items() if k in HEADLINE_METRICS}
        registry.set_model_version_tags(source["name"], source["version"],
                                        {**headline, f"{prefix}data_digest": digest, f"{prefix}evaluation_run": run.id})
        model_card.refresh(source["name"], source["version"])
