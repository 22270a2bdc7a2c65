"""How a registered version records its evaluation, lineage and promotion decision in tags.

A version carries `metric.<name>` and `recall.<class>` (its evaluation), `lineage.<key>`
(where it came from, `lineage.run_id` first), and the decision: `decision.alias`,
`decision.reason`, `decision.score`, the paired test against the champion (`decision.p_value`,
`decision.difference`, `decision.ci_low`, ...), tagged first and `decision` last, which commits it
(`taglens.lifecycle.registry` explains the order). These functions write and read that scheme.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from taglens.lifecycle.gate import PAIRED_KEYS, Decision, Evaluation, PairedTest
from taglens.lineage import TAG_PREFIX

METRIC_TAG = "metric."
RECALL_TAG = "recall."
LINEAGE_TAG = TAG_PREFIX  # the lineage record of the version's run, as its tags carry it
RUN_ID_TAG = LINEAGE_TAG + "run_id"


def now_iso() -> str:
    """Return the current UTC time, ISO 8601 to the second (`decision.time`, the history)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def candidate_tags(run_id: str, evaluation: Evaluation, lineage: dict[str, Any]) -> dict[str, Any]:
    """The tags of a new version: its train run, lineage, numeric metrics and per-class recall."""
    tags = {RUN_ID_TAG: run_id, **{LINEAGE_TAG + k: v for k, v in lineage.items()}}
    tags.update(
        {
            METRIC_TAG + k: v
            for k, v in evaluation.metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
    )
    tags.update({RECALL_TAG + k: v for k, v in evaluation.recall.items()})
    return tags


def evaluation_of(tags: dict[str, str]) -> Evaluation:
    """Rebuild a version's Evaluation from its tags."""
    metrics = {
        k.removeprefix(METRIC_TAG): float(v) for k, v in tags.items() if k.startswith(METRIC_TAG)
    }
    recall = {
        k.removeprefix(RECALL_TAG): float(v) for k, v in tags.items() if k.startswith(RECALL_TAG)
    }
    return Evaluation(metrics, recall)


def decision_tags(decision: Decision, metric: str, time: str) -> dict[str, Any]:
    """The details of a decision, tagged before the committing `decision` tag."""
    champion_score = decision.champion_score
    return {
        "decision.alias": decision.alias,
        "decision.reason": decision.reason,
        "decision.metric": metric,
        "decision.score": decision.score,
        "decision.compared_with": decision.compared_with or "none",
        "decision.champion_score": "none" if champion_score is None else champion_score,
        "decision.champion_rescored": decision.champion_rescored,
        "decision.test_fingerprint": _text(decision.test_fingerprint),
        **{f"decision.{key}": _text_of(value) for key, value in decision.evidence().items()},
        "decision.time": time,
    }


def pending_decision(tags: dict[str, str]) -> Decision | None:
    """A decision tagged before a crash but not yet committed (no `decision` tag), or None."""
    if "decision.alias" not in tags:
        return None
    return Decision(
        alias=tags["decision.alias"],
        reason=tags["decision.reason"],
        score=float(tags["decision.score"]),
        champion_score=_number(tags.get("decision.champion_score")),
        compared_with=_none(tags.get("decision.compared_with")),
        champion_rescored=tags.get("decision.champion_rescored") == "True",
        test_fingerprint=_fingerprint(tags.get("decision.test_fingerprint")),
        paired=PairedTest.from_record(_paired_record(tags)),
    )


def decision_record(tags: dict[str, str]) -> dict[str, Any]:
    """A version's committed decision as register.json states it (without name and version)."""
    return {
        "run_id": tags.get(RUN_ID_TAG),
        "decision": tags.get("decision"),
        "reason": tags.get("decision.reason"),
        "metric": tags.get("decision.metric"),
        "score": _number(tags.get("decision.score")),
        "compared_with": _none(tags.get("decision.compared_with")),
        "champion_score": _number(tags.get("decision.champion_score")),
        "champion_rescored": tags.get("decision.champion_rescored") == "True",
        "test_fingerprint": _fingerprint(tags.get("decision.test_fingerprint")),
        **_paired_record(tags),
    }


def _paired_record(tags: dict[str, str]) -> dict[str, float | int | None]:
    """The paired test's numbers from `decision.*` tags (None where absent or "none")."""
    record = {key: _number(tags.get(f"decision.{key}")) for key in PAIRED_KEYS}
    counts = ("n_paired", "challenger_only", "champion_only")
    return {key: int(v) if key in counts and v is not None else v for key, v in record.items()}


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "none") else None
    except ValueError:
        return None


def _fingerprint(value: str | None) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _text(fingerprint: int | None) -> str:
    return "none" if fingerprint is None else str(int(fingerprint))


def _text_of(value: float | int | None) -> str:
    return "none" if value is None else repr(value)


def _none(value: str | None) -> str | None:
    return None if value in (None, "none") else value
