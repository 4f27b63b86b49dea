"""The model card of a registered version: its description in the model registry, in Markdown,
which the MLflow UI renders on the version's page.

A version's tags hold only what promotion compares (the run, the training data digest, the
headline scores and the digest of the clips they were measured on, the decision). Everything a
reader wants besides (the data, the training config in brief, every validation and test figure,
the promotion decision in words) is on the card, rebuilt from the registry and the runs each time
a version is registered, evaluated or promoted.
"""

from __future__ import annotations

from typing import Any

from . import tracking
from .tracking import registry
from .formatting import figure, setting

# The config keys a reader needs to know what was trained (the rest is on the run's page).
CONFIG_BRIEF = ("data.frame_size", "data.clip_len", "data.use_masks", "data.use_skeleton_attention",
                "model.static_removal", "model.rest_class", "model.width", "loss.focal_gamma", "optim.lr", "train.epochs",
                "train.batch_size", "train.seed")
SPLITS = ("val", "test")


def is_count(metric: str) -> bool:
    """A figure that counts things (clips, subjects, members): printed as a whole number."""
    return metric.endswith(("clips", "subjects", "members", "frames", "epochs"))


def is_speed(metric: str) -> bool:
    """Throughput and time: how fast a machine ran the model, not how good the model is."""
    return metric.endswith(("clips_per_s", "_seconds", "seconds"))


# MLflow's Markdown renderer draws tables without cell padding ("training data digest40909b33"
# in bench/ui_check.py's screenshot): non-breaking spaces after each first-column cell keep the
# columns apart there and cost nothing in other renderers.
GAP = "&nbsp;" * 4


def _table(rows: list[tuple[str, str]], head: tuple[str, str]) -> list[str]:
    return [f"| {head[0]}{GAP} | {head[1]} |", "|:---|:---|", *(f"| {k}{GAP} | {v} |" for k, v in rows)]


def render(name: str, version: dict[str, Any], model: dict[str, Any] | None, train_run: dict[str, Any] | None,
           evaluations: dict[str, dict[str, Any]], group_run: dict[str, Any] | None = None) -> str:
    """The card as Markdown (pure). `version`: its tags and ids; `model`: its logged model
    (params = the resolved config, metrics = validation); `train_run`: the train run's tags (for
    an ensemble: a member's, which names the data); `evaluations`: split -> that split's
    evaluation run (metrics, tags); `group_run`: the seed or fold group's run, for a version
    registered from one (its members, the tune trial it was)."""
    tags = version.get("tags", {})
    ensemble = "group_run_id" in tags and tags["group_run_id"] == (version.get("run_id") or tags.get("run_id"))
    lines = [f"# {name} version {version['version']}", ""]
    run_id = version.get("run_id") or tags.get("run_id", "")
    model_id = version.get("model_id") or ""
    epoch = (model or {}).get("tags", {}).get("exptrack.epoch", tags.get("best_epoch", "?"))
    lines += [f"Trained by the group run `{run_id}`: the ensemble of its members' kept weights (logged model "
              f"`{model_id}`)." if ensemble else
              f"Trained by run `{run_id}`; the weights of epoch {epoch} (logged model `{model_id}`).", ""]

    run_tags = (train_run or {}).get("tags", {})
    lines += ["## Data", ""]
    lines += _table([("root", f"`{run_tags.get('data_root', '?')}`"),
                     ("training data digest", f"`{tags.get('training_data_digest', '?')}`"),
                     ("training clips", "each member's own (its run)" if ensemble else run_tags.get("clips_train", "?")),
                     ("validation clips", "each member's own (its run)" if ensemble else run_tags.get("clips_val", "?"))]
                    + ([("validation warning", run_tags["validation_weak"])] if "validation_weak" in run_tags else []),
                    ("item", "value"))
    params = (model or {}).get("params", {})
    lines += ["", "## Training config (in brief)", ""]
    lines += _table([(f"`{k}`", setting(params.get(k, "?"))) for k in CONFIG_BRIEF], ("key", "value"))
    lines += ["", "The full resolved config is the run's `config.yaml` and its parameters.", ""]

    if "group_run_id" in tags:
        lines += group_section(tags, (group_run or {}).get("tags", {}))
    val = {k: v for k, v in (model or {}).get("metrics", {}).items() if k.startswith("val_") and "_acc_class_" not in k}
    if ensemble:
        lines += ["## Validation", "", "An ensemble has no validation score of its own: each member was validated "
                  "on its own subjects (the group's figures above). Evaluations of the ensemble follow.", ""]
    else:
        lines += ["## Validation (the kept epoch)", ""]
        lines += _table([(k, figure(v)) for k, v in sorted(val.items())], ("metric", "value")) if val else ["none logged"]
    for split, run in evaluations.items():
        prefix = f"{split}_"
        figures = {k[len(prefix):]: v for k, v in run.get("metrics", {}).items() if k.startswith(prefix)}
        quality = {k: v for k, v in figures.items() if not is_speed(k)}
        speed = {k: v for k, v in figures.items() if is_speed(k)}
        lines += ["", f"## Evaluation on {split}", "",
                  f"Run `{run.get('run_id', '')}`, clips digest `{tags.get(f'{split}_data_digest', '?')}`.", ""]
        lines += _table([(k, figure(v, count=is_count(k))) for k, v in sorted(quality.items())], ("metric", "value"))
        if speed:
            lines += ["", "Speed of that evaluation (its machine, not the model's quality):", ""]
            lines += _table([(k, figure(v)) for k, v in sorted(speed.items())], ("figure", "value"))
    if "promotion.decision" in tags:
        lines += ["", "## Promotion", "", f"{tags['promotion.decision']} (on `{tags.get('promotion.metric', '')}`, "
                  f"rule `{tags.get('promotion.rule', 'best')}`, {tags.get('promotion.time', '')})."]
        compared = int(tags.get("promotion.versions_compared", "0") or 0)
        if compared > 1:
            on_test = tags.get("promotion.metric", "").startswith("test_")
            lines += ["", f"{compared} versions competed on these clips: the champion's figure on them is the best "
                      "of that many noisy draws, so it overstates how the model does on new subjects. "
                      + ("Promote on `val` and keep `test` for a final report to have an unbiased test figure."
                         if on_test else "Its `test` figure, if it was not used to choose, is the unbiased one.")]
        if version.get("aliases"):
            lines += ["", "Aliases: " + ", ".join(f"`{a}`" for a in sorted(version["aliases"])) + "."]
    return "\n".join(lines) + "\n"


GROUP_HEADLINE = "val_mean_class_acc"


def group_brief(tags: dict[str, str]) -> str | None:
    """A version's group in one phrase (None when it is not from a seed or fold group)."""
    if "group_run_id" not in tags:
        return None
    head = GROUP_HEADLINE
    return (f"group of {tags.get('group_members', '?')} {tags.get('group_kind', '')}: validation mean class accuracy "
            f"{tags.get(f'group_{head}_mean', '?')} +- {tags.get(f'group_{head}_std', '?')} (sd), 95% interval "
            f"{tags.get(f'group_{head}_ci', '?')}")


def group_members(group_tags: dict[str, str]) -> list[tuple[str, str]]:
    """(member key, run id) of a group run, from its tag `group_member_runs` ("seed=0:<id>, ...")."""
    pairs = [m.split(":", 1) for m in group_tags.get("group_member_runs", "").split(", ") if ":" in m]
    return [(key, run_id) for key, run_id in pairs]


def group_section(tags: dict[str, str], run_tags: dict[str, str] | None = None) -> list[str]:
    """What a version from a seed or fold group says about the recipe: the spread of its members,
    which members (their runs) and, for a tune trial's group, which trial of which study.
    `run_tags`: the group run's tags."""
    run_tags = run_tags or {}
    lines = ["## Group", "",
             f"This version is {tags.get('group_model', 'the model')} of the group run `{tags['group_run_id']}`, a "
             f"{group_brief(tags)} over its members' kept models: what the recipe gives, where the figures below are "
             "one draw of it.", ""]
    if "optuna.trial" in run_tags:
        lines += [f"The group is trial {run_tags['optuna.trial']} of the Optuna study "
                  f"`{run_tags.get('optuna.study', '?')}`: the study's best, registered as it was trained.", ""]
    members = group_members(run_tags)
    if members:
        lines += _table([(key, f"`{run_id}`") for key, run_id in members], ("member", "run")) + [""]
    return lines


def refresh(name: str, version: str) -> None:
    """Rebuild and store the card of `name` version `version` from what the registry holds now."""
    record = registry.model_version(name, version)
    model = registry.logged_model(record["model_id"]) if record.get("model_id") else None
    run_id = record.get("run_id") or ""
    group_id = record["tags"].get("group_run_id")
    group_run = tracking.run_record(group_id) if group_id else None  # a best member's version: its group's run
    members = group_members(group_run["tags"]) if group_run else []
    if group_id == run_id and members:  # an ensemble, on its group's run: a member's run names the data
        run_id = members[0][1]
    train_run = tracking.run_record(run_id) if run_id else None
    evaluations = {}
    for split in SPLITS:
        eval_run = record["tags"].get(f"{split}_evaluation_run")
        if eval_run:
            evaluations[split] = {"run_id": eval_run, **tracking.run_record(eval_run)}
    registry.set_model_version_description(name, version,
                                           render(name, record, model, train_run, evaluations, group_run))
