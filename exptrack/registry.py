"""Promotion in the model registry: the alias `champion` goes to the best version, by a fair
comparison (the same metric on the same data, identified by its digest).

Stages are deprecated in MLflow; exptrack uses aliases (`champion`, `previous`) and version tags
only. Every decision is written as tags on the versions involved, so the registry shows why a
version is (or is not) champion.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from . import tracking
from .errors import ModelError

log = logging.getLogger("exptrack.registry")

CHAMPION, PREVIOUS = "champion", "previous"


@dataclass(frozen=True)
class Candidate:
    version: str
    value: float
    digest: str


@dataclass(frozen=True)
class Decision:
    champion: str | None  # the champion after the decision
    previous: str | None  # the champion it replaced, if any
    reasons: dict[str, str]  # version -> why it was or was not promoted


def decide(current: Candidate | None, candidates: list[Candidate]) -> Decision:
    """Pure rule: the best candidate becomes champion only if it is strictly better than the
    current champion on the same data digest; ties keep the champion; another digest is never
    compared. Without a champion, the best candidate wins (ties: the older version)."""
    reasons: dict[str, str] = {}
    pool = [c for c in candidates if current is None or c.version != current.version]
    if current is not None:
        comparable = []
        for c in pool:
            if c.digest != current.digest:
                reasons[c.version] = f"not compared: data digest {c.digest} differs from the champion's {current.digest}"
            else:
                comparable.append(c)
        pool = comparable
    pool = [c for c in pool if not math.isnan(c.value)]
    if not pool:
        return Decision(current.version if current else None, None, reasons)
    best = max(pool, key=lambda c: (c.value, -int(c.version)))
    for c in pool:
        if c is not best:
            reasons[c.version] = f"{c.value:.6f} below the best candidate v{best.version} ({best.value:.6f})"
    if current is None:
        reasons[best.version] = f"promoted: best candidate ({best.value:.6f}), no champion before"
        return Decision(best.version, None, reasons)
    if best.value > current.value:
        reasons[best.version] = f"promoted: {best.value:.6f} beats champion v{current.version} ({current.value:.6f})"
        reasons[current.version] = f"replaced by v{best.version}"
        return Decision(best.version, current.version, reasons)
    reasons[best.version] = f"kept out: {best.value:.6f} does not beat champion v{current.version} ({current.value:.6f})"
    return Decision(current.version, None, reasons)


def promote(name: str, metric: str = "test_mean_class_accuracy", split: str = "test", evaluate=None,
            data_root: str | None = None, progress: bool = False) -> Decision:
    """Evaluate the versions that lack `metric`, then apply `decide` and record it.

    `evaluate(model_uri, split, data_root)` computes and tags a version's metrics (by default
    exptrack's evaluation, which writes `<split>_*` tags and `<split>_data_digest`).
    """
    if evaluate is None:
        from .evaluation import run_evaluate

        def evaluate(uri: str, split: str, data_root: str | None) -> None:
            run_evaluate(uri, split=split, data_root=data_root, progress=progress,
                         save_dir=f"outputs/results/{uri.replace(':/', '_').replace('/', '_')}")

    versions = tracking.model_versions(name)
    if not versions:
        raise ModelError(f"registered model {name!r} has no versions")
    digest_tag = f"{split}_data_digest"
    for v in versions:
        if metric not in v["tags"] or digest_tag not in v["tags"]:
            log.info("evaluating %s version %s on %s", name, v["version"], split)
            evaluate(f"models:/{name}/{v['version']}", split, data_root)
    versions = tracking.model_versions(name)
    candidates = [Candidate(v["version"], float(v["tags"].get(metric, "nan")), v["tags"].get(digest_tag, ""))
                  for v in versions]
    by_version = {c.version: c for c in candidates}
    champion_version = tracking.alias_version(name, CHAMPION)
    current = by_version.get(champion_version) if champion_version else None
    decision = decide(current, candidates)
    if decision.champion and decision.champion != champion_version:
        tracking.set_alias(name, CHAMPION, decision.champion)
        if decision.previous:
            tracking.set_alias(name, PREVIOUS, decision.previous)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for version, reason in decision.reasons.items():
        c = by_version[version]
        champ = by_version.get(decision.champion) if decision.champion else None
        tracking.set_model_version_tags(name, version, {
            "promotion.decision": reason, "promotion.metric": metric, "promotion.value": c.value,
            "promotion.champion_value": champ.value if champ else "", "promotion.data_digest": c.digest,
            "promotion.time": stamp,
        })
    log.info("champion of %s: version %s", name, decision.champion)
    return decision


SUMMARY_METRICS = ("accuracy", "top3_accuracy", "mean_class_accuracy", "macro_f1")


def version_scores(name: str, split: str = "test") -> dict[str, dict[str, float]]:
    """version -> the `<split>_*` metrics evaluate tagged it with (those of SUMMARY_METRICS)."""
    return {v["version"]: {m: float(v["tags"][f"{split}_{m}"]) for m in SUMMARY_METRICS if f"{split}_{m}" in v["tags"]}
            for v in tracking.model_versions(name)}
