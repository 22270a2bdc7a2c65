"""Taking and committing a promotion decision: race-safe, and resumable after a crash.

Champion and challenger are compared image by image on the same test images: the caller's
`rescore` scores the champion again on the current test split, and the gate pairs its
per-image correctness with the candidate's (McNemar's exact test, `taglens.lifecycle.gate`).
The champion is read again right before the alias moves, and the decision's details are tagged
before the `decision` tag that commits it, so a re-run after a crash replays the decision
instead of taking a new one. `Registry.register` calls these under the registry lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from taglens.lifecycle.gate import CHALLENGER, CHAMPION, Decision, Evaluation, paired_decision
from taglens.lifecycle.registry_tags import decision_tags, evaluation_of, now_iso
from taglens.params import RegisterParams

if TYPE_CHECKING:
    from taglens.lifecycle.registry import Registry

logger = logging.getLogger(__name__)

Rescore = Callable[[Any], Evaluation]


def decide(
    registry: Registry,
    evaluation: Evaluation,
    params: RegisterParams,
    rescore: Rescore | None,
    mine: str | None,
) -> Decision:
    """The gate's decision against the champion of now (`mine`: the candidate's own version)."""
    for _ in range(3):
        champion = registry.alias(CHAMPION)
        if champion is not None and str(champion.version) == mine:
            champion = None
        decision = _paired(registry, evaluation, champion, params, rescore)
        # Re-check: if the champion moved while we decided (a writer outside this lock, e.g.
        # on another machine), decide again against the new one before moving the alias.
        now = registry.alias(CHAMPION)
        if (now and str(now.version)) == (champion and str(champion.version)):
            break
    return replace(decision, compared_with=str(champion.version) if champion else None)


def _paired(
    registry: Registry,
    evaluation: Evaluation,
    champion: Any | None,
    params: RegisterParams,
    rescore: Rescore | None,
) -> Decision:
    """Decide on scores of both models on the same test images (re-scoring the champion)."""
    if champion is None:
        return paired_decision(evaluation, None, None, params)
    again = None if rescore is None else (lambda: rescore(champion))
    return paired_decision(
        evaluation, (str(champion.version), evaluation_of(champion.tags)), again, params
    )


def commit(registry: Registry, version: Any, decision: Decision, params: RegisterParams) -> None:
    """Record and carry out a decision in an order a crash can resume from.

    The decision's details are tagged first; the `decision` tag, written last, commits it. A
    re-run finding details without `decision` replays them instead of deciding again (the
    champion may already have moved to this very version).
    """
    registry.tag(version, decision_tags(decision, params.primary_metric, now_iso()))
    if decision.promoted:
        registry.crown(version)
    else:
        registry.client.set_registered_model_alias(registry.name, CHALLENGER, version.version)
    last = (registry.history() or [{}])[-1]
    if (last.get("event"), last.get("version")) != ("register", str(version.version)):
        registry.record(
            "register",
            version,
            decision.reason,
            decision=decision.alias,
            compared_with=decision.compared_with,
            score=decision.score,
            champion_score=decision.champion_score,
            champion_rescored=decision.champion_rescored,
            test_fingerprint=decision.test_fingerprint,
            metric=params.primary_metric,
            **decision.evidence(),
        )
    registry.tag(version, {"decision": decision.alias})
    logger.info(
        "%s version %s -> %s: %s", registry.name, version.version, decision.alias, decision.reason
    )
