"""`exptrack compare A B`: is model B really better than model A, and where?

Both models are evaluated on the same split (an evaluation of the same model on the same clips,
by digest, is reused, not recomputed), their per-clip predictions are paired, and one MLflow
run (`compare`, taking both logged models as inputs) holds:

- each headline metric for A, B and B - A, with a 95% interval over subjects and P(B better)
  (exptrack/stats.py; the subject is the unit, and the scope is these two models on this
  population of subjects, not their recipes);
- per-class accuracy (recall) and precision of both and the difference, sorted by it;
- the row-normalised confusion matrix of B minus A's, as a heatmap;
- the clips B fixed and the clips B broke, counted per class, the first few with GradCAM
  overlays of A and of B side by side;
- the config keys that differ, and both training curves overlaid when both come from train runs;
- a one-line verdict;

as a self-contained `report.html` (images embedded: it renders in MLflow's artifact viewer), CSV
files, MLflow tables, metrics and tags. Models with different clip settings are evaluated on
their own clips: the report says the comparison is not paired, and gives no interval.
"""

from __future__ import annotations

import base64
import html
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import confusion_matrix

from . import figures, tracking
from .config import Config, config_from_dict, to_flat_dict
from .data.dataset import ClipDataset
from .data.layout import class_label
from .data.prepare import prepare_data
from .data.video import read_frames
from .errors import ModelError
from .evaluation import (evaluation_config, evaluation_digest, evaluation_predictions, find_evaluation, read_predictions,
                         run_evaluate)
from .options import EvaluateOptions
from .explain import render
from .formatting import figure, figures_table, setting
from .explain.visualize import model_probs_and_heat
from .models.load import LoadedModel, load_model
from .metrics import canonical_metric
from .outputs import DEFAULT_OUTPUTS, check_save_dir, invocation_folder
from .stats import METRICS, Comparison, compare, compare_groups
from .training.groups import GROUP_TAG, HEADLINE, MEMBER_TAG, is_group_run, member_result
from .device import resolve_device
from .options import CompareOptions

log = logging.getLogger("exptrack.compare")


@dataclass(frozen=True)
class Side:
    """One model's evaluation on the split."""

    label: str  # "A" or "B"
    ref: str
    loaded: LoadedModel
    digest: str
    evaluation_run: str
    reused: bool
    predictions: pd.DataFrame  # subject, start_frame, true, predicted, ...


@dataclass(frozen=True)
class CompareResult:
    comparisons: dict[str, Comparison]  # metric -> B against A
    verdict: str
    paired: bool
    out_dir: Path
    run_id: str


def evaluated(label: str, ref: str, loaded: LoadedModel, split: str, data_root: str | None, progress: bool,
              parent_run_id: str) -> Side:
    """The model's predictions on `split`: its existing evaluation on today's clips, else a new
    one (a child run of the compare run)."""
    digest = evaluation_digest(ref, split, data_root)
    model_id = loaded.source.get("model_id")
    run_id = find_evaluation(model_id, split, digest) if model_id else None
    table = evaluation_predictions(run_id) if run_id else None
    if run_id and table is not None:
        log.info("%s (%s): reusing evaluation run %s of the same clips", label, ref, run_id)
        return Side(label, ref, loaded, digest, run_id, True, table)
    result = run_evaluate(ref, EvaluateOptions(split=split, data_root=data_root, progress=progress),
                          parent_run_id=parent_run_id)
    table = read_predictions(result.out_dir / "predictions.csv")
    return Side(label, ref, loaded, digest, result.run_id, False, table)


def check_comparable(a: LoadedModel, b: LoadedModel, refs: tuple[str, str]) -> None:
    if a.config.model.rest_class != b.config.model.rest_class:
        with_rest = refs[0] if a.config.model.rest_class else refs[1]
        raise ModelError(f"{refs[0]} and {refs[1]}: only {with_rest} has a rest output (model.rest_class), so their "
                         "clips differ (rest clips are scored only for it) and so do their classes: compare models "
                         "trained with the same model.rest_class")
    if a.config.model.num_classes != b.config.model.num_classes or list(a.class_names) != list(b.class_names):
        raise ModelError(f"{refs[0]} and {refs[1]} predict different classes ({a.config.model.num_classes}: "
                         f"{', '.join(a.class_names)} vs {b.config.model.num_classes}: {', '.join(b.class_names)}): "
                         "they cannot be compared clip by clip")


def pair(a: Side, b: Side) -> pd.DataFrame | None:
    """Both predictions on the same clips, one row per clip; None when the clips differ."""
    if a.digest != b.digest:
        return None
    joined = a.predictions.merge(b.predictions, on=["subject", "start_frame", "true"], suffixes=("_a", "_b"))
    return joined if len(joined) == len(a.predictions) == len(b.predictions) else None


def headline(joined: pd.DataFrame | None, a: Side, b: Side, method: str) -> dict[str, Comparison]:
    out = {}
    for metric, fn in METRICS.items():
        if joined is None:  # not paired: each on its own clips, no interval
            va = fn(a.predictions["true"].to_numpy(), a.predictions["predicted"].to_numpy())
            vb = fn(b.predictions["true"].to_numpy(), b.predictions["predicted"].to_numpy())
            out[metric] = Comparison(metric, va, vb, a.predictions["subject"].nunique(), "unpaired", vb - va,
                                     None, None, None)
        else:
            out[metric] = compare(joined["subject"].to_numpy(), joined["true"].to_numpy(),
                                  joined["predicted_a"].to_numpy(), joined["predicted_b"].to_numpy(), metric, method)
    return out


def per_class(joined: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Accuracy (recall) and precision per class for A and B, and B - A, by the accuracy change."""
    rows = []
    for c, name in enumerate(names):
        true_c = joined["true"] == c
        row: dict[str, Any] = {"class": c, "name": name, "clips": int(true_c.sum())}
        for side in ("a", "b"):
            pred_c = joined[f"predicted_{side}"] == c
            row[f"accuracy_{side}"] = float((pred_c & true_c).sum() / true_c.sum()) if true_c.any() else np.nan
            row[f"precision_{side}"] = float((pred_c & true_c).sum() / pred_c.sum()) if pred_c.any() else np.nan
        row["accuracy_diff"] = row["accuracy_b"] - row["accuracy_a"]
        row["precision_diff"] = row["precision_b"] - row["precision_a"]
        rows.append(row)
    return pd.DataFrame(rows).sort_values("accuracy_diff", ascending=False, na_position="last")


def confusion_difference(joined: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Row-normalised confusion of B minus A's (rows: true classes present)."""
    k = len(names)
    tables = []
    for side in ("a", "b"):
        m = confusion_matrix(joined["true"], joined[f"predicted_{side}"], labels=list(range(k))).astype(float)
        with np.errstate(invalid="ignore"):
            tables.append(m / m.sum(1, keepdims=True))
    present = [c for c in range(k) if (joined["true"] == c).any()]
    diff = (tables[1] - tables[0])[present]
    return pd.DataFrame(diff, index=[names[c] for c in present], columns=names)


def changed_clips(joined: pd.DataFrame, names: list[str], clip_len: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fixed, broken): the clips A got wrong and B right, and the other way round."""
    right_a, right_b = joined["predicted_a"] == joined["true"], joined["predicted_b"] == joined["true"]
    name = np.asarray(names)
    table = pd.DataFrame({"subject": joined["subject"], "start_frame": joined["start_frame"],
                          "end_frame": joined["start_frame"] + clip_len - 1, "true": joined["true"],
                          "true_name": name[joined["true"]], "predicted_a": name[joined["predicted_a"]],
                          "predicted_b": name[joined["predicted_b"]]})
    return table[~right_a & right_b].reset_index(drop=True), table[right_a & ~right_b].reset_index(drop=True)


def config_difference(a: Config, b: Config) -> pd.DataFrame:
    """The config keys whose values differ, with both values as set (formatting.setting: two
    values that differ never print alike)."""
    fa, fb = to_flat_dict(a), to_flat_dict(b)
    keys = [k for k in fa if fa[k] != fb.get(k)]
    shown = [(setting(fa[k]), setting(fb.get(k))) for k in keys]
    shown = [(va, vb) if va != vb else (repr(fa[k]), repr(fb.get(k))) for k, (va, vb) in zip(keys, shown, strict=True)]
    return pd.DataFrame({"key": keys, "A": [va for va, _ in shown], "B": [vb for _, vb in shown]})


def training_histories(a: Side, b: Side) -> dict[str, pd.DataFrame]:
    """Both train runs' per-epoch metrics, when both models come from train runs."""
    out = {}
    for side in (a, b):
        run_id = side.loaded.source.get("run_id")
        if not run_id or tracking.run_tags(run_id).get("exptrack.command") != "train":
            return {}
        with tempfile.TemporaryDirectory(prefix="exptrack-compare-") as tmp:
            try:
                out[side.label] = pd.read_csv(tracking.download_run_artifact(run_id, "metrics/training_metrics.csv", tmp))
            except Exception:  # noqa: BLE001 - a run stopped before its first epoch
                return {}
    return out


def gradcam_strips(a: Side, b: Side, clips: pd.DataFrame, count: int, split: str, data_root: str | None,
                   device: torch.device, out: Path) -> list[tuple[Path, str]]:
    """For the first `count` clips: A's and B's GradCAM over the clip at the video's own resolution
    (at least render.MIN_SIDE px), side by side as a GIF, each with its caption (subject, frames,
    true class, both predictions with their probabilities)."""
    if count <= 0 or clips.empty:
        return []
    # each model sees the clip as its own config prepares it (frame size, masks, attention): B
    # trained without masks is explained on unmasked frames, as its evaluation scored it
    prepared = {side.label: prepare_data(evaluation_config(side.loaded.config, data_root, {}), splits=(split,),
                                         progress=False) for side in (a, b)}
    views = {label: ClipDataset(data, split, train=False) for label, data in prepared.items()}
    clip_len = views[a.label].clip_len
    names = a.loaded.class_names
    figures = []
    for _, row in clips.head(count).iterrows():
        subject, start = str(row["subject"]), int(row["start_frame"])
        video = prepared[a.label].subjects[subject].files.video
        source = read_frames(video, start, clip_len)  # (T, H, W, 3), the video's own pixels
        overlays, said = [], []
        for side in (a, b):
            # (1, T, S, S, 3) as this model sees it
            view = views[side.label].clip_at(prepared[side.label].subjects[subject], start)[None]
            probs, heat = model_probs_and_heat(side.loaded, view, "block4", device)
            overlays.append(render.caption(render.explanation_frames(source, heat[0], 0.5)[2], [side.label]))
            pred = int(probs[0].argmax())
            said.append(f"{side.label}: {class_label(pred, names)} ({figure(float(probs[0, pred]))})")
        strip = np.stack([render.hstack(x, y) for x, y in zip(*overlays, strict=True)])  # (T, H, 2W, 3)
        path = render.save_gif(out / f"{row['subject']}_{start}.gif", strip, 8, max_width=strip.shape[2])
        figures.append((path, f"subject {subject}, frames {start}-{start + clip_len - 1}, true "
                              f"{row['true_name']}; {', '.join(said)}"))
    return figures


def _image(path: Path, text: str = "") -> str:
    kind = "gif" if path.suffix == ".gif" else "png"
    img = f'<img src="data:image/{kind};base64,{base64.b64encode(path.read_bytes()).decode()}">'
    return f"<figure>{img}<figcaption>{html.escape(text)}</figcaption></figure>" if text else img


REPORT_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
                "td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}img{max-width:100%;margin:4px}"
                "figure{display:inline-block;margin:4px}figcaption{font-size:90%}")


def write_report(out: Path, a: Side, b: Side, comparisons: dict[str, Comparison], verdict: str, paired: bool,
                 classes: pd.DataFrame | None, fixed: pd.DataFrame, broken: pd.DataFrame, config_diff: pd.DataFrame,
                 images: dict[str, list[tuple[Path, str]]]) -> Path:
    """report.html, self-contained (images as data URIs)."""
    def table(df: pd.DataFrame) -> str:
        # every figure of this report is a share, a difference of shares or a probability: fixed decimals
        return figures_table(df, fixed=tuple(df.columns)).to_html(index=False, na_rep="", border=0)

    summary = pd.DataFrame([{"metric": m, "A": c.a, "B": c.b, c.diff_label: c.diff, "95% low": c.low,
                             "95% high": c.high, "P(B better)": c.p_better, "subjects": c.n_subjects, "method": c.method}
                            for m, c in comparisons.items()])
    parts = [f"<h1>B against A</h1><p><b>{html.escape(verdict)}</b></p>",
             f"<p>A: <code>{html.escape(a.ref)}</code> (evaluation run <code>{a.evaluation_run}</code>"
             f"{', reused' if a.reused else ''})<br>B: <code>{html.escape(b.ref)}</code> (evaluation run "
             f"<code>{b.evaluation_run}</code>{', reused' if b.reused else ''})</p>",
             "<p>" + ("Paired: the same clips (digest <code>" + a.digest + "</code>); intervals over subjects."
                      if paired else "<b>Not paired</b>: the models were evaluated on different clips (other clip "
                      "settings); the figures are each model's own, without an interval.") + "</p>",
             "<h2>Headline metrics</h2>", table(summary)]
    if any(c.diff_label != "B - A" for c in comparisons.values()):
        parts.append("<p>A and B pool every clip; the difference is the mean of the per-subject differences (each "
                     "subject weighs the same), which the interval is about: with subjects of very different clip "
                     "counts it can differ from B minus A.</p>")
    if classes is not None:
        parts += ["<h2>Per class (sorted by the accuracy change)</h2>", table(classes)]
    for title, key in (("Confusion, B minus A (row-normalised)", "confusion"), ("Training curves", "curves")):
        if images.get(key):
            parts += [f"<h2>{title}</h2>", *(_image(p, text) for p, text in images[key])]
    for title, clips, key in (("Clips B fixed", fixed, "fixed"), ("Clips B broke", broken, "broken")):
        counts = clips.groupby("true_name").size().rename("clips").reset_index() if len(clips) else clips
        parts += [f"<h2>{title}: {len(clips)}</h2>", table(counts) if len(clips) else "",
                  "<p>GradCAM (block4), A left, B right:</p>" if images.get(key) else "",
                  *(_image(p, text) for p, text in images.get(key, [])), table(clips.head(50))]
    parts += ["<h2>Config keys that differ</h2>", table(config_diff) if len(config_diff) else "<p>none</p>"]
    path = out / "report.html"
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>compare</title><style>{REPORT_STYLE}</style>"
                    f"</head><body>{''.join(parts)}</body></html>")
    return path


def verdict_line(c: Comparison, paired: bool) -> str:
    if not paired:
        return (f"B vs A on {c.metric}: {c.b:.3f} vs {c.a:.3f} ({c.b - c.a:+.3f}), not paired (different clips): "
                "no interval, no verdict")
    return c.sentence()


def group_members(run_id: str) -> tuple[str, list]:
    """A group run's kind and finished members (groups.member_result), in member order."""
    tags = tracking.run_tags(run_id)
    children = [c for c in tracking.child_runs(run_id) if c["tags"].get(MEMBER_TAG)]
    finished = [c for c in children if c["status"] == "FINISHED"]
    size = int(tags.get("group_size", len(children)))
    if len(finished) < size:  # a part of the recipe's members would be compared as if it were all
        missing = sorted(c["tags"][MEMBER_TAG] for c in children if c["status"] != "FINISHED")
        raise ModelError(f"group run {run_id}: {len(finished)} of its {size} members finished"
                         f"{' (not: ' + ', '.join(missing) + ')' if missing else ''}; finish it first: "
                         f"exptrack train --resume {run_id}")
    members = sorted((member_result(c["tags"][MEMBER_TAG], c["run_id"]) for c in finished),
                     key=lambda m: (m.key.split("=")[0], int(m.key.split("=")[1])))
    if len(members) < 2:
        raise ModelError(f"group run {run_id}: {len(members)} member; a group comparison needs 2 or more")
    return tags[GROUP_TAG], members


def run_compare_groups(ref_a: str, ref_b: str, save_dir: str | Path | None = None,
                       overwrite: bool = False) -> CompareResult:
    """Two seed or fold groups (their parent runs), compared on their members' kept-model
    validation mean class accuracy: folds of the same subjects are paired fold by fold, seeds
    are two independent samples (Welch). The interval is over seeds or folds: it is about the
    recipes, as far as those members sample them."""
    check_save_dir(save_dir, overwrite)
    (kind_a, a), (kind_b, b) = group_members(ref_a), group_members(ref_b)
    folds = {r: tracking.run_tags(r).get("group_folds") for r in (ref_a, ref_b)}
    paired = kind_a == kind_b == "folds" and folds[ref_a] == folds[ref_b] and [m.key for m in a] == [m.key for m in b]
    unit = kind_a if kind_a == kind_b else "members"
    c = compare_groups([m.value() for m in a], [m.value() for m in b], paired, HEADLINE, unit)
    verdict = c.sentence() + ("" if paired or kind_a == kind_b == "seeds" else
                              " (folds of different subjects, or a fold and a seed group: compared unpaired)")
    config = config_from_dict(tracking.train_run_config(ref_a) or {}, f"run {ref_a} config.yaml")
    config_b = config_from_dict(tracking.train_run_config(ref_b) or {}, f"run {ref_b} config.yaml")
    differ = config_difference(config, config_b)
    with tracking.start_run(config, run_name="compare-groups", command="compare",
                            tags={"compare.a": ref_a, "compare.b": ref_b, "compare.kind": "groups",
                                  "compare.paired": paired}) as run:
        with invocation_folder(save_dir, DEFAULT_OUTPUTS / "compare" / run.id, overwrite) as out:
            table = pd.DataFrame([{"group": label, "member": m.key, "run_id": m.run_id, HEADLINE: m.value()}
                                  for label, members in (("A", a), ("B", b)) for m in members])
            table.to_csv(out / "members.csv", index=False)
            summary = pd.DataFrame([vars(c)])
            summary.to_csv(out / "headline.csv", index=False)
            differ.to_csv(out / "config_difference.csv", index=False)
            html_table = figures_table(table, fixed=(HEADLINE,)).to_html(index=False, border=0)
            differ_html = figures_table(differ).to_html(index=False, border=0) if len(differ) else "<p>none</p>"
            (out / "report.html").write_text(
                f"<!doctype html><html><head><meta charset='utf-8'><title>compare groups</title>"
                f"<style>{REPORT_STYLE}</style></head><body>"
                f"<h1>Group B against group A</h1><p><b>{html.escape(verdict)}</b></p><p>A: <code>{html.escape(ref_a)}"
                f"</code> ({kind_a})<br>B: <code>{html.escape(ref_b)}</code> ({kind_b})</p>"
                f"<h2>Members</h2>{html_table}<h2>Config keys that differ</h2>{differ_html}</body></html>")
            run.log_artifacts(out, "compare")
            run.log_metrics({f"{k}_{HEADLINE}": v for k, v in (("a", c.a), ("b", c.b), ("diff", c.diff), ("low", c.low),
                                                               ("high", c.high), ("p_better", c.p_better)) if v is not None})
            run.set_tags({"compare.verdict": c.verdict, "compare.sentence": verdict[:500],
                          "compare.time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return CompareResult({HEADLINE: c}, verdict, paired, out, run.id)


def refuse_model_options_for_groups(groups: list[bool], refs: tuple[str, str], split: str, metric: str,
                                    method: str, data_root: str | None) -> None:
    """A group compares only with a group, and only on its members' validation figures."""
    if not all(groups):
        group = refs[0] if groups[0] else refs[1]
        raise ModelError(f"{group} is a seed or fold group: compare two groups, or two models (the group's "
                         "registered version, models:/<name>/<version>, is a model)")
    model_only = [f"--{name} {value}" for name, value, default in
                  (("split", split, "test"), ("metric", metric, "mean_class_acc"), ("method", method, "t"),
                   ("data-root", data_root, None)) if value != default]
    if model_only:
        raise ModelError(f"{', '.join(model_only)}: a group comparison is on its members' kept-model validation "
                         "mean class accuracy (t interval over seeds or folds); those options compare two models "
                         "(e.g. the groups' registered versions) on a split")


def clip_differences(run: tracking.Run, out: Path, a: Side, b: Side, joined: pd.DataFrame, gradcam: int, split: str,
                     data_root: str | None, device: torch.device,
                     images: dict[str, list[tuple[Path, str]]]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """What only paired predictions show: per class, the clips B fixed and broke (with GradCAM
    strips), the confusion difference; written to `out`, logged as tables, the images added."""
    names = list(a.loaded.class_names)
    classes = per_class(joined, names)
    fixed, broken = changed_clips(joined, names, a.loaded.config.data.clip_len)
    images["confusion"] = [(figures.difference_heatmap(confusion_difference(joined, names),
                                                     "confusion: B minus A (row-normalised)",
                                                     out / "confusion_difference.png"), "")]
    images["fixed"] = gradcam_strips(a, b, fixed, gradcam, split, data_root, device, out / "fixed")
    images["broken"] = gradcam_strips(a, b, broken, gradcam, split, data_root, device, out / "broken")
    classes.to_csv(out / "per_class.csv", index=False)
    fixed.to_csv(out / "fixed_clips.csv", index=False)
    broken.to_csv(out / "broken_clips.csv", index=False)
    run.log_table(classes, "compare/per_class.json")
    run.log_table(pd.concat([fixed.assign(change="fixed"), broken.assign(change="broken")]),
                  "compare/changed_clips.json")
    return classes, fixed, broken


def run_compare(ref_a: str, ref_b: str, options: CompareOptions = CompareOptions()) -> CompareResult:
    """Two models, or two seed or fold groups (their parent run ids: run_compare_groups)."""
    groups = [is_group_run(ref) for ref in (ref_a, ref_b)]
    if any(groups):
        refuse_model_options_for_groups(groups, (ref_a, ref_b), options.split, options.metric, options.method,
                                        options.data_root)
        return run_compare_groups(ref_a, ref_b, options.save_dir, options.overwrite)
    metric = canonical_metric(options.metric)  # mean_class_accuracy, its spelling before, still works
    if metric not in METRICS:
        raise ModelError(f"--metric {metric}: compare takes {', '.join(METRICS)}")
    check_save_dir(options.save_dir, options.overwrite)
    device = resolve_device(options.device, key="--device")
    loaded_a, loaded_b = load_model(ref_a, device), load_model(ref_b, device)
    check_comparable(loaded_a, loaded_b, (ref_a, ref_b))  # before any evaluation
    # Both on one dataset, A's unless given: B on its own could be other clips (no paired verdict).
    data_root = options.data_root or loaded_a.config.data.root
    config = evaluation_config(loaded_a.config, data_root, {})
    # The compare run first (under `mlflow run` it is the project's run); evaluations it needs
    # are its children.
    with tracking.start_run(config, run_name="compare", command="compare",
                            tags={"compare.a": ref_a, "compare.b": ref_b, "split": options.split}) as run:
        a = evaluated("A", ref_a, loaded_a, options.split, data_root, options.progress, run.id)
        b = evaluated("B", ref_b, loaded_b, options.split, data_root, options.progress, run.id)
        joined = pair(a, b)
        comparisons = headline(joined, a, b, options.method)
        verdict = verdict_line(comparisons[metric], joined is not None)
        run.set_tags({"compare.paired": joined is not None})
        for side in (a, b):
            if side.loaded.source.get("model_id"):
                run.log_model_input(side.loaded.source["model_id"])
        with invocation_folder(options.save_dir, DEFAULT_OUTPUTS / "compare" / run.id, options.overwrite) as out:
            images: dict[str, list[tuple[Path, str]]] = {}
            classes, fixed, broken = None, pd.DataFrame(), pd.DataFrame()
            if joined is not None:
                classes, fixed, broken = clip_differences(run, out, a, b, joined, options.gradcam, options.split,
                                                          data_root, device, images)
            histories = training_histories(a, b)
            if histories:
                images["curves"] = [(figures.overlaid_curves(histories, out / "training_curves.png"),
                                     "A blue, B orange in both panels; train loss dashed")]
            config_diff = config_difference(a.loaded.config, b.loaded.config)
            config_diff.to_csv(out / "config_difference.csv", index=False)
            summary = pd.DataFrame([vars(c) for c in comparisons.values()])
            summary.to_csv(out / "headline.csv", index=False)
            run.log_table(summary, "compare/headline.json")
            write_report(out, a, b, comparisons, verdict, joined is not None, classes, fixed, broken, config_diff, images)
            run.log_artifacts(out, "compare")
            run.log_metrics({f"{k}_{m}": v for m, c in comparisons.items()
                             for k, v in (("a", c.a), ("b", c.b), ("diff", c.diff), ("low", c.low), ("high", c.high),
                                          ("p_better", c.p_better)) if v is not None})
            run.log_metrics({"clips_fixed": len(fixed), "clips_broken": len(broken)})
            run.set_tags({"compare.verdict": comparisons[metric].verdict if joined is not None else "not paired",
                          "compare.sentence": verdict[:500], "compare.time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return CompareResult(comparisons, verdict, joined is not None, out, run.id)
