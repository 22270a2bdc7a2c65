"""The promotion gate on constructed metric sets."""

from __future__ import annotations

import json

import pytest

from taglens.lifecycle.gate import (
    CHALLENGER,
    CHAMPION,
    Evaluation,
    NotComparableError,
    decide,
    paired_decision,
    read_recall,
)
from taglens.params import RegisterParams


def params(**changes) -> RegisterParams:
    base = {"model_name": "taglens", "primary_metric": "accuracy", "min_margin": 0.01,
            "max_recall_drop": 0.1, "min_score": 0.3, "promote": True}  # fmt: skip
    base["on_experiment"] = "skip"
    return RegisterParams(**{**base, **changes})


def ev(accuracy: float, n_test: int = 100, **recall: float) -> Evaluation:
    return Evaluation({"accuracy": accuracy, "n_test": n_test}, recall or {"a": 0.8, "b": 0.7})


@pytest.mark.parametrize(
    ("candidate", "champion", "alias", "reason"),
    [
        (ev(0.5), None, CHAMPION, "first model"),
        (ev(0.2), None, CHALLENGER, "below min_score"),
        (ev(0.3), None, CHAMPION, ">= min_score"),  # the minimum itself passes
        (ev(0.80), ev(0.70), CHAMPION, "beats champion's 0.7000 by 0.1000"),
        (ev(0.60), ev(0.70), CHALLENGER, "does not beat"),
        (ev(0.705), ev(0.70), CHALLENGER, "more than min_margin 0.01"),  # within the margin
        (ev(0.71), ev(0.70), CHALLENGER, "does not beat"),  # exactly the margin is not enough
        (ev(0.90, a=0.95, b=0.55), ev(0.70), CHALLENGER, "recall drops more than"),
        (ev(0.90, a=0.95, b=0.60), ev(0.70), CHAMPION, "beats"),  # a drop of exactly the limit
        (ev(0.90, n_test=90), ev(0.70), CHALLENGER, "different test split"),
    ],
)
def test_gate_decisions(candidate, champion, alias, reason):
    decision = decide(candidate, champion, params())
    assert decision.alias == alias
    assert reason in decision.reason
    assert decision.score == candidate.metrics["accuracy"]
    assert decision.champion_score == (champion.metrics["accuracy"] if champion else None)
    assert decision.promoted is (alias == CHAMPION)


def test_recall_drop_names_each_class_and_amount():
    decision = decide(ev(0.9, a=0.5, b=0.4), ev(0.7, a=0.8, b=0.7), params())
    assert decision.recall_drops == {"a": pytest.approx(0.3), "b": pytest.approx(0.3)}
    assert "a -0.300, b -0.300" in decision.reason


def test_class_missing_from_candidate_counts_as_zero_recall():
    decision = decide(ev(0.9, a=0.9), ev(0.7, a=0.8, b=0.7), params())
    assert decision.alias == CHALLENGER and decision.recall_drops == {"b": 0.7}


def test_fingerprint_wins_over_n_test():
    champion = Evaluation({"accuracy": 0.7, "n_test": 100, "test_fingerprint": "abc"})
    same = Evaluation({"accuracy": 0.8, "n_test": 100, "test_fingerprint": "abc"})
    other = Evaluation({"accuracy": 0.8, "n_test": 100, "test_fingerprint": "xyz"})
    assert decide(same, champion, params()).promoted
    assert "test_fingerprint" in decide(other, champion, params()).reason


def test_other_primary_metric_and_missing_metric():
    champion = Evaluation({"accuracy": 0.9, "macro_f1": 0.5})
    candidate = Evaluation({"accuracy": 0.8, "macro_f1": 0.6})
    assert decide(candidate, champion, params(primary_metric="macro_f1")).promoted
    with pytest.raises(ValueError, match=r"'top3_accuracy' is not a number .*available"):
        decide(candidate, champion, params(primary_metric="top3_accuracy"))


@pytest.mark.parametrize(
    "content",
    [
        {"a": {"precision": 0.1, "recall": 0.8}, "b": {"recall": 0.7}},
        {"classes": {"a": {"recall": 0.8}, "b": {"recall": 0.7}}, "macro": {"f1": 0.4}},
        [{"class": "a", "recall": 0.8}, {"class": "b", "recall": 0.7}],
    ],
)
def test_read_recall_shapes(tmp_path, content):
    path = tmp_path / "per_class.json"
    path.write_text(json.dumps(content))
    assert read_recall(path) == {"a": 0.8, "b": 0.7}


def test_read_recall_missing_and_unusable(tmp_path):
    assert read_recall(tmp_path / "none.json") == {}
    (tmp_path / "bad.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(ValueError, match="no per-class recall"):
        read_recall(tmp_path / "bad.json")


def on(fingerprint: int | None, accuracy: float, **recall: float) -> Evaluation:
    metrics = {"accuracy": accuracy, "n_test": 100}
    if fingerprint is not None:
        metrics["test_fingerprint"] = fingerprint
    return Evaluation(metrics, recall or {"a": 0.8, "b": 0.7})


def test_paired_uses_the_recorded_champion_scores_on_the_same_test_set():
    def never():
        raise AssertionError("the champion was scored on these images already")

    decision = paired_decision(on(7, 0.8), ("1", on(7, 0.7)), never, params())
    assert decision.promoted and decision.champion_score == 0.7
    assert not decision.champion_rescored and decision.test_fingerprint == 7


def test_paired_rescores_a_champion_from_another_test_set_and_guards_recall():
    # recorded on last week's images the champion looks better (0.9); on this week's it is 0.6
    rescored = paired_decision(on(8, 0.7), ("1", on(7, 0.9)), lambda: on(8, 0.6), params())
    assert rescored.promoted and rescored.champion_rescored
    assert (rescored.score, rescored.champion_score, rescored.test_fingerprint) == (0.7, 0.6, 8)
    # the recall guard runs on the paired scores too: class b drops 0.9 -> 0.7
    guarded = paired_decision(on(8, 0.7, a=0.8, b=0.7), ("1", on(7, 0.9)),
                              lambda: on(8, 0.6, a=0.8, b=0.9), params())  # fmt: skip
    assert not guarded.promoted
    assert "recall drops" in guarded.reason and "b -0.200" in guarded.reason


def test_paired_is_not_comparable_only_when_the_champion_cannot_be_scored():
    def broken():
        raise NotComparableError("champion version 1 predicts other classes (x, y)")

    refused = paired_decision(on(8, 0.99), ("1", on(7, 0.1)), broken, params())
    assert refused.alias == CHALLENGER and refused.score == 0.99
    assert refused.reason.startswith("not comparable: champion version 1 predicts other classes")
    assert "promote by hand" in refused.reason
    blind = paired_decision(on(8, 0.99), ("1", on(7, 0.1)), None, params())
    assert not blind.promoted and "--clean" in blind.reason
    first = paired_decision(on(8, 0.5), None, None, params())
    assert first.promoted and first.test_fingerprint == 8
