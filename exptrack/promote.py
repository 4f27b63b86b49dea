"""Promotion in the model registry: the alias `champion` goes to the best version, by a fair
comparison (the same metric on the same data, identified by its digest), and by default only on
evidence: the challenger's paired interval over subjects against the champion must lie above
`min_improvement` (exptrack/stats.py). `rule="best"` is the plain strictly-higher rule.

Stages are deprecated in MLflow; exptrack uses aliases (`champion`, `previous`) and version tags
only. Every decision is written as tags on the versions involved, so the registry shows why a
version is (or is not) champion.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

from . import model_card, preemption, tracking
from .tracking import registry
from .errors import ModelError
from .evaluation import SplitIsTrainingData, evaluation_digest, evaluation_predictions, run_evaluate
from .options import EvaluateOptions
from .metrics import HEADLINE_METRICS, canonical_metric, legacy_metric
from .stats import METRICS as PAIRED_METRICS
from .stats import Comparison, compare
from .options import PromoteOptions

log = logging.getLogger("exptrack.promote")

CHAMPION, PREVIOUS = "champion", "previous"


@dataclass(frozen=True)
class Candidate:
    version: str
    value: float
    digest: str  # of the clips its metric was measured on (`<split>_data_digest`)
    current: str = ""  # of the same split's clips today ("" = unknown: taken as `digest`)

    @property
    def on_current_data(self) -> bool:
        return not self.current or self.digest == self.current


@dataclass(frozen=True)
class Decision:
    champion: str | None  # the champion after the decision
    previous: str | None  # the champion it replaced, if any
    reasons: dict[str, str]  # version -> why it was or was not promoted
    digest: str = ""  # the evaluation data the decision compared on
    evidence: Comparison | None = None  # the challenger against the champion (rule "interval")
    compared: int = 0  # versions that competed on that digest (the champion's figure is their best)
    challenger: str | None = None  # the version `evidence` is about


RULES = ("interval", "best")
Paired = Callable[[str, str], "Comparison | None"]  # (champion version, challenger version) -> B vs A


def _interval_verdict(best: Candidate, current: Candidate, evidence: Comparison | None,
                      min_improvement: float) -> tuple[bool, str]:
    """Whether the challenger's evidence against the champion promotes it, and why (or why not)."""
    if evidence is None:
        return False, (f"kept out: {best.value:.6f} vs champion v{current.version} ({current.value:.6f}), but no "
                       "paired predictions of both on the same clips to test it (evaluate both again)")
    if evidence.low is None:
        why = ("subject" if evidence.n_subjects < 2 else
               "subjects that all moved by the same amount, too few for a sign test")
        return False, (f"kept out: {best.value:.6f} vs champion v{current.version} ({current.value:.6f}) on "
                       f"{evidence.n_subjects} {why}: no interval can say it is better (`--rule best` "
                       "promotes on the point values)")
    interval = (f"difference {evidence.diff:+.4f}, 95% interval [{evidence.low:+.4f}, {evidence.high:+.4f}], "
                f"P(better) {evidence.p_better:.2f}, {evidence.n_subjects} subjects")
    if evidence.low > min_improvement:
        return True, f"promoted: beats champion v{current.version} ({interval})"
    return False, (f"kept out: not shown better than champion v{current.version} by more than {min_improvement:g} "
                   f"({interval})")


def _stale(c: Candidate) -> str:
    return (f"not compared: evaluated on other data (digest {c.digest}, now {c.current}); "
            "`exptrack promote --reevaluate` evaluates it again")


def decide(current: Candidate | None, candidates: list[Candidate], rule: str = "best",
           paired: Paired | None = None, min_improvement: float = 0.0) -> Decision:
    """Pure rule. Only versions evaluated on today's data compete, and only on one evaluation
    digest: the champion's (it is re-evaluated first when its data changed, see promote), or
    without a champion the newest version's. The best candidate (by value) challenges the
    champion: with `rule="best"` it wins when strictly better (ties keep the champion); with
    `rule="interval"` only when the lower end of the paired interval of (challenger - champion),
    from `paired(champion, challenger)`, is above `min_improvement`. Without a champion the best
    candidate becomes champion (ties go to the older version)."""
    if rule not in RULES:
        raise ValueError(f"unknown promotion rule {rule!r} (one of {', '.join(RULES)})")
    reasons: dict[str, str] = {}
    if current is not None and not current.on_current_data:
        raise ValueError(f"champion v{current.version} was evaluated on other data: re-evaluate it first")
    pool = []
    for c in candidates:
        if current is not None and c.version == current.version:
            continue
        if not c.on_current_data:
            reasons[c.version] = _stale(c)
        else:
            pool.append(c)
    pool = [c for c in pool if not math.isnan(c.value)]
    if current is not None:
        digest = current.digest
    elif pool:
        digest = max(pool, key=lambda c: int(c.version)).digest
    else:
        digest = ""
    for c in [c for c in pool if c.digest != digest]:
        reasons[c.version] = f"not compared: evaluated on other clips (digest {c.digest}) than the comparison ({digest})"
    pool = [c for c in pool if c.digest == digest]
    compared = len(pool) + (current is not None)
    if not pool:
        return Decision(current.version if current else None, None, reasons, digest, compared=compared)
    best = max(pool, key=lambda c: (c.value, -int(c.version)))
    for c in pool:
        if c is not best:
            reasons[c.version] = f"{c.value:.6f} below the best candidate v{best.version} ({best.value:.6f})"
    if current is None:
        reasons[best.version] = f"promoted: best candidate ({best.value:.6f}), no champion before"
        return Decision(best.version, None, reasons, digest, compared=compared)
    kept = f"champion, kept ({compared} versions compared on these clips)"
    if best.value <= current.value:
        reasons[best.version] = f"kept out: {best.value:.6f} does not beat champion v{current.version} ({current.value:.6f})"
        reasons[current.version] = kept
        return Decision(current.version, None, reasons, digest, compared=compared)
    evidence = None
    if rule == "best":
        promoted = True
        reasons[best.version] = f"promoted: {best.value:.6f} beats champion v{current.version} ({current.value:.6f})"
    else:
        evidence = paired(current.version, best.version) if paired else None
        promoted, reasons[best.version] = _interval_verdict(best, current, evidence, min_improvement)
    if not promoted:
        reasons[current.version] = kept
        return Decision(current.version, None, reasons, digest, evidence, compared, best.version)
    reasons[current.version] = f"replaced by v{best.version}"
    return Decision(best.version, current.version, reasons, digest, evidence, compared, best.version)


def needs_evaluation(name: str, version: dict, metric: str, split: str, today: str, even_if_stale: bool) -> bool:
    """A version never evaluated on `split` is; one evaluated on other data than today's
    (`today`: the split's digest now) is when `even_if_stale` (the champion, or --reevaluate)."""
    tags = version["tags"]
    digest_tag = f"{split}_data_digest"
    never = math.isnan(metric_value(version, metric, split)) or digest_tag not in tags
    stale = not never and tags[digest_tag] != today
    if never or (stale and even_if_stale):
        log.info("evaluating %s version %s on %s%s", name, version["version"], split,
                 " (its last evaluation was on other data)" if stale else "")
        return True
    return False


def record_decision(name: str, decision: Decision, champion_before: str | None, metric: str, rule: str) -> None:
    """The aliases moved and every compared version tagged with its decision, as one unit: a
    signal here waits until the aliases and tags agree (no champion moved without its previous,
    no version without its decision)."""
    with preemption.deferred():
        if decision.champion and decision.champion != champion_before:
            registry.set_alias(name, CHAMPION, decision.champion)
            if decision.previous:
                registry.set_alias(name, PREVIOUS, decision.previous)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for version, reason in decision.reasons.items():
            registry.set_model_version_tags(name, version, {  # the values are in the decision and on the card
                "promotion.decision": reason, "promotion.metric": metric, "promotion.rule": rule,
                "promotion.compared_on_digest": decision.digest, "promotion.time": stamp,
                # the champion's figure is the best of this many versions on that test set (biased upwards)
                "promotion.versions_compared": decision.compared,
                **({"promotion.evidence": _evidence_tag(decision.evidence)}
                   if decision.evidence is not None and version == decision.challenger else {}),
            })
            model_card.refresh(name, version)


def promote(name: str, options: PromoteOptions = PromoteOptions(), evaluate=None, current_digest=None) -> Decision:
    """Evaluate what must be, then apply `decide` and record it on the versions.

    Evaluated first: versions never evaluated on the split; the champion when its evaluation data
    is not today's (so that it is compared on the same data as the candidates); with
    `reevaluate`, every version not evaluated on today's data.

    `evaluate(model_uri, split, data_root)` computes and tags a version's metrics (exptrack's
    evaluation: `<split>_*` and `<split>_data_digest` tags); `current_digest(model_uri, split,
    data_root)` is the digest of the split's clips today for that model (its clip settings).
    """
    if evaluate is None:
        def evaluate(uri: str, split: str, data_root: str | None) -> None:
            run_evaluate(uri, EvaluateOptions(split=split, data_root=data_root, progress=options.progress))
    if current_digest is None:
        current_digest = partial(evaluation_digest, memo={})  # one data preparation per clip setting

    split, data_root, rule = options.split, options.data_root, options.rule
    if rule not in RULES:
        raise ModelError(f"unknown promotion rule {rule!r} (one of {', '.join(RULES)})")
    metric = canonical_metric(options.metric)  # test_mean_class_accuracy, its spelling before, still works
    other = next((s for s in ("train", "val", "test") if s != split and metric.startswith(f"{s}_")), None)
    if other:
        raise ModelError(f"--metric {metric} is a figure of the {other} split, and versions are evaluated on "
                         f"{split} (--split): use {split}_{metric[len(other) + 1:]}")
    if rule == "interval":
        paired_metric(metric, split)  # before anything is evaluated
    versions = registry.model_versions(name)
    if not versions:
        raise ModelError(f"registered model {name!r} has no versions")
    digest_tag = f"{split}_data_digest"
    champion_version = registry.alias_version(name, CHAMPION)
    today = {v["version"]: current_digest(f"models:/{name}/{v['version']}", split, data_root) for v in versions}
    left_out: dict[str, str] = {}  # versions this split cannot score (a fold ensemble trained on val)
    for v in versions:
        if needs_evaluation(name, v, metric, split, today[v["version"]],
                            v["version"] == champion_version or options.reevaluate):
            try:
                evaluate(f"models:/{name}/{v['version']}", split, data_root)
            except SplitIsTrainingData as exc:
                if v["version"] == champion_version:
                    raise ModelError(f"champion v{champion_version} of {name}: {exc}; promote on test "
                                     "(--split test) to compare it") from None
                left_out[v["version"]] = f"not compared: {split} is its training data ({exc})"
                log.warning("%s version %s left out: %s", name, v["version"], exc)
    versions = registry.model_versions(name)
    candidates = [Candidate(v["version"], metric_value(v, metric, split), v["tags"].get(digest_tag, ""),
                            today[v["version"]]) for v in versions if v["version"] not in left_out]
    by_version = {c.version: c for c in candidates}
    current = by_version.get(champion_version) if champion_version else None
    by_number = {v["version"]: v for v in versions}
    decision = decide(current, candidates, rule, _paired_on_predictions(by_number, metric, split, options.method),
                      options.min_improvement)
    decision.reasons.update(left_out)
    record_decision(name, decision, champion_version, metric, rule)
    log.info("champion of %s: version %s", name, decision.champion)
    return decision


def _paired_on_predictions(versions: dict[str, dict], metric: str, split: str, method: str) -> Paired:
    """(champion, challenger) -> the challenger against the champion on the clips both were
    evaluated on: their evaluation runs' predictions, joined by subject and start frame."""
    base = paired_metric(metric, split)

    def paired(champion: str, challenger: str) -> Comparison | None:
        tables = [version_predictions(versions[v], split) for v in (champion, challenger)]
        if any(t is None for t in tables):
            return None
        keys = ["subject", "start_frame"]
        joined = tables[0].merge(tables[1], on=keys, suffixes=("_a", "_b"))
        if len(joined) != len(tables[0]) or len(joined) != len(tables[1]) or \
                (joined["true_a"] != joined["true_b"]).any():
            return None  # not the same clips: no pairing
        return compare(joined["subject"].to_numpy(), joined["true_a"].to_numpy(), joined["predicted_a"].to_numpy(),
                       joined["predicted_b"].to_numpy(), metric=base, method=method)
    return paired


def _evidence_tag(e: Comparison) -> str:
    """The challenger's interval against the champion, as one tag value."""
    if e.low is None:
        return (f"no interval ({e.n_subjects} subject)" if e.n_subjects < 2 else
                f"no interval ({e.n_subjects} subjects that all moved by {e.diff:+.4f}, too few for a sign test)")
    return (f"{e.method} 95% [{e.low:+.4f}, {e.high:+.4f}], difference {e.diff:+.4f}, P(better) {e.p_better:.3f}, "
            f"{e.n_subjects} subjects")


def paired_metric(metric: str, split: str) -> str:
    """The per-subject metric (stats.METRICS) behind a `<split>_*` promotion metric; ModelError
    for one the interval rule cannot compare per subject."""
    base = metric[len(f"{split}_"):] if metric.startswith(f"{split}_") else metric
    if base not in PAIRED_METRICS:
        raise ModelError(f"--rule interval compares {', '.join(f'{split}_{m}' for m in PAIRED_METRICS)} per "
                         f"subject, not {metric}: use one of those, or --rule best")
    return base


def version_predictions(version: dict, split: str):
    """The per-clip predictions of a version's last evaluation on `split` (a DataFrame), or None."""
    run_id = version["tags"].get(f"{split}_evaluation_run")
    return evaluation_predictions(run_id) if run_id else None


def metric_value(version: dict, metric: str, split: str) -> float:
    """A version's `metric` on `split`: its tag (the headline metrics), else the metric of its
    last evaluation run on that split (any other `<split>_*` figure); nan when never evaluated."""
    tag = _known_as(metric, version["tags"])
    if tag is not None:
        return float(tag)
    eval_run = version["tags"].get(f"{split}_evaluation_run")
    value = _known_as(metric, tracking.run_record(eval_run)["metrics"]) if eval_run else None
    return float("nan") if value is None else float(value)


def _known_as(metric: str, figures: dict[str, Any]) -> Any:
    """figures[metric], or its spelling before the one vocabulary (runs and versions of then)."""
    for name in (metric, legacy_metric(metric)):
        if name in figures:
            return figures[name]
    return None


def version_scores(name: str, split: str = "test") -> dict[str, dict[str, float]]:
    """version -> the `<split>_*` headline metrics evaluate tagged it with."""
    return {v["version"]: {m: float(tag) for m in HEADLINE_METRICS
                           if (tag := _known_as(f"{split}_{m}", v["tags"])) is not None}
            for v in registry.model_versions(name)}


def version_groups(name: str) -> dict[str, str]:
    """version -> its seed or fold group in one phrase, for the versions that come from one."""
    briefs = {v["version"]: model_card.group_brief(v["tags"]) for v in registry.model_versions(name)}
    return {v: b for v, b in briefs.items() if b}
