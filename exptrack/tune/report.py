"""A study's end on its parent run: the trial table and Optuna's plots, the best trial's model
registered once, and `--retrain-best` (the best params refitted on train + validation)."""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from .. import tracking
from ..tracking import registry
from ..config import load_config
from ..training import logged_models
from ..training.groups import GROUP_TAG, tags_from_group_run
from ..training.run import RunOptions, train_run
from . import optuna_experimental
from .study_file import StudySpec

log = logging.getLogger("exptrack.tune")


def register_best_once(run_id: str, config) -> str | None:
    """Register the best trial's model (its best logged model; a fold or seed trial's group
    model) unless a version already points at it (a rerun of a finished study). Nothing reopens
    the trial's run: the version points at the logged model. Two workers finishing together may
    both register it; the registry has no compare-and-set, so afterwards every worker keeps the
    lowest version of that model and deletes its own if it is not that one. Whoever registers
    second sees the first version, so one version survives."""
    name = config.mlflow.registered_model
    if not name:
        return None
    model_id = registry.best_logged_model(run_id)
    if model_id is None:
        log.warning("trial run %s has no logged model to register", run_id)
        return None

    def versions() -> list[str]:
        return [v["version"] for v in registry.model_versions(name) if v["model_id"] == model_id]

    if versions():
        return min(versions(), key=int)
    group = tags_from_group_run(run_id) if GROUP_TAG in tracking.run_tags(run_id) else None  # a fold or seed trial
    version = logged_models.register(model_id, name, group)
    first = min(versions(), key=int)
    if first != version:
        log.info("trial run %s was registered twice (versions %s and %s); keeping %s", run_id, first, version, first)
        registry.delete_model_version(name, version)
    return first


RETRAINED_TAG = "retrained_model_version"


RETRAINED_TRIAL_TAG = "retrained_trial"


def best_trial_config(study: optuna.Study, spec: StudySpec, *extra: str):
    return load_config(spec.config, [*spec.overrides, *[f"{k}={v}" for k, v in study.best_trial.params.items()],
                                     *extra])


def retrain_best_trial(study: optuna.Study, spec: StudySpec, parent: str, progress: bool) -> str | None:
    """Fit the best params once more on train + validation subjects, for as many epochs as the
    best trial needed to reach its best validation score (nothing is held out to stop on), as a
    child run of the study registered as a new model version. Once per best trial: a rerun
    reuses it, and refits again only when a grown study has a new best. Not while trials of
    other workers still run (their result could change the best)."""
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        log.warning("study %s: no complete trial to retrain", spec.study)
        return None
    unfinished = [t.number for t in study.trials if not t.state.is_finished()]
    if unfinished:
        log.warning("study %s: trials %s are still running or queued; rerun with --retrain-best when they are done",
                    spec.study, unfinished)
        return None
    best = study.best_trial
    tags = tracking.run_tags(parent)
    if tags.get(RETRAINED_TRIAL_TAG) == str(best.number):
        log.info("study %s: best trial %d already retrained on train+val (model version %s)", spec.study,
                 best.number, tags.get(RETRAINED_TAG))
        return tags.get(RETRAINED_TAG)
    epochs = best.user_attrs.get("best_epoch") or best_trial_config(study, spec).train.epochs
    config = best_trial_config(study, spec, "data.train_on_val=true", f"train.epochs={epochs}")
    options = RunOptions(parent_run_id=parent, run_name=f"retrain-best-trial-{best.number}",
                         tags={"optuna.study": spec.study, "optuna.retrain_of": best.number, "trained_on": "train+val"})
    result = train_run(config, progress=progress, options=options)
    tracking.set_run_tags(parent, {RETRAINED_TRIAL_TAG: best.number, RETRAINED_TAG: result.model_version or ""})
    log.info("study %s: best params retrained on train+val for %d epochs: run %s, model version %s", spec.study,
             epochs, result.run_id, result.model_version)
    return result.model_version


def summarize(study: optuna.Study, spec: StudySpec, parent: str) -> None:
    """Best value and params, the trial table and Optuna's plots on the parent run; the best
    trial's model registered."""
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    log.info("study %s: writing the trial table and plots to the parent run, registering the best model", spec.study)
    with tempfile.TemporaryDirectory(prefix="exptrack-tune-") as tmp:
        write_study_report(study, complete, Path(tmp))
        conclude_study(study, complete, spec, parent, Path(tmp))


def write_study_report(study: optuna.Study, complete: list, out: Path) -> None:
    """The trial table and Optuna's plots, into `out`."""
    table = study.trials_dataframe()
    table.to_csv(out / "trials.csv", index=False)
    if complete:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import optuna.visualization.matplotlib as ovm

        for name, plot in (("optimization_history", ovm.plot_optimization_history),
                           ("param_importances", ovm.plot_param_importances),
                           ("parallel_coordinate", ovm.plot_parallel_coordinate), ("slice", ovm.plot_slice)):
            try:
                with optuna_experimental(), warnings.catch_warnings():  # degenerate axes of a small study
                    warnings.simplefilter("ignore", UserWarning)
                    ax = plot(study)
                fig = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).get_figure(root=True)
                assert fig is not None, "optuna's plot draws on a figure"
                fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
                plt.close("all")
            except Exception as exc:  # noqa: BLE001 - e.g. importances need 2+ complete trials
                log.info("no %s plot: %s", name, exc)


def conclude_study(study: optuna.Study, complete: list, spec: StudySpec, parent: str, report: Path) -> None:
    """The study's end on its parent run: its figures and report; once every trial has finished
    (in every worker), the best trial's model registered (once) and the parent finished."""
    metrics: dict[str, float] = {}
    params: dict[str, Any] = {}
    if complete:
        best = study.best_trial
        assert best.value is not None  # a complete trial has its value
        metrics = {f"best_{spec.metric}": best.value, "best_trial": best.number}
        params = {f"best.{k}": v for k, v in best.params.items()}
    metrics.update({"trials_complete": len(complete),
                    "trials_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
                    "trials_failed": sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials)})
    tracking.log_to_run(parent, metrics=metrics, folder=report, artifact_path="tune")
    for key, value in params.items():
        tracking.set_run_tags(parent, {key: value})
    if not all(t.state.is_finished() for t in study.trials):
        # another worker's trial may still become the best: registering now would leave a
        # version that is not the study's result; the last worker to finish (or a rerun) registers
        log.info("study %s: trials still running or queued in other workers; the last to finish registers the best "
                 "trial's model", study.study_name)
        return
    if complete and "run_id" in study.best_trial.user_attrs:
        attrs = study.best_trial.user_attrs
        config = best_trial_config(study, spec)
        version = register_best_once(attrs["run_id"], config)
        tracking.set_run_tags(parent, {"best_model_version": version})
    tracking.finish_run(parent)
