"""The promotion gate: paired decisions on constructed per-image results, and its evidence."""

from __future__ import annotations

import json
import math

import pytest

from taglens.errors import TaglensError
from taglens.lifecycle.evaluation import (
    check_metrics_run,
    read_correct,
    read_evaluation,
    read_recall,
)
from taglens.lifecycle.gate import (
    CHALLENGER,
    CHAMPION,
    Evaluation,
    EvidenceError,
    NotComparableError,
    decide,
    paired_decision,
    paired_test,
)
from taglens.lifecycle.registry import decision_record, decision_tags, pending_decision
from taglens.params import RegisterParams
from taglens.training.metrics import split_fingerprint

RUN = "a" * 32
CLASSES = ("cat", "dog")


def params(**changes) -> RegisterParams:
    base = {
        "model_name": "taglens",
        "primary_metric": "accuracy",
        "min_margin": 0.0,
        "significance": 0.05,
        "max_recall_drop": 0.1,
        "min_score": 0.3,
        "promote": True,
        "on_experiment": "skip",
    }
    return RegisterParams(**{**base, **changes})


def shas(n: int) -> list[str]:
    return [f"{i:064x}" for i in range(n)]


def pair(
    n: int,
    both: int,
    only_new: int,
    only_old: int,
    *,
    fingerprint: int = 7,
    new_recall: dict | None = None,
    old_recall: dict | None = None,
):
    """Candidate and champion on the same n images: `both` right for both, `only_new` right only
    for the candidate, `only_old` only for the champion, the rest wrong for both."""
    names = shas(n)
    new = {sha: i < both + only_new for i, sha in enumerate(names)}
    old = {
        sha: i < both or both + only_new <= i < both + only_new + only_old
        for i, sha in enumerate(names)
    }

    def evaluation(correct, recall):
        accuracy = sum(correct.values()) / n
        metrics = {"accuracy": accuracy, "n_test": n, "test_fingerprint": fingerprint}
        return Evaluation(metrics, recall or {"cat": 0.8, "dog": 0.7}, correct)

    return evaluation(new, new_recall), evaluation(old, old_recall)


# ----------------------------------------------------------------- the paired test, by hand
def test_mcnemar_and_agresti_min_match_hand_computed_numbers():
    # 500 images: 42 right only for the challenger, 2 only for the champion
    candidate, champion = pair(500, 350, 42, 2)
    result = paired_test(candidate, champion)
    assert (result.n, result.challenger_only, result.champion_only) == (500, 42, 2)
    assert result.difference == pytest.approx(40 / 500)
    # P(X >= 42), X ~ Binomial(44, 1/2) = (C(44,42) + C(44,43) + C(44,44)) / 2^44 = 991 / 2^44
    assert result.p_value == pytest.approx(991 / 2**44, rel=1e-9)
    # Agresti-Min: cells + 1/2 -> b 42.5, c 2.5, n 502; centre 40/502;
    # se = sqrt(45 - 40^2/502) / 502 = 0.012881; 1.96 * se = 0.025246
    assert result.ci_low == pytest.approx(0.054435, abs=1e-6)
    assert result.ci_high == pytest.approx(0.104928, abs=1e-6)
    assert (result.challenger_accuracy, result.champion_accuracy) == (0.784, 0.704)


def test_p_value_of_a_small_discordant_count():
    # b = 12, c = 3: P(X >= 12 | 15) = (455 + 105 + 15 + 1) / 2^15 = 576 / 32768
    result = paired_test(*pair(100, 60, 12, 3))
    assert result.p_value == pytest.approx(576 / 32768, rel=1e-12) == pytest.approx(0.017578125)


def test_no_discordant_images_is_no_evidence():
    result = paired_test(*pair(50, 30, 0, 0))
    assert result.p_value == 1.0 and result.difference == 0.0
    assert result.ci_low < 0 < result.ci_high


# ----------------------------------------------------------------- the decision
def test_a_one_photo_gain_out_of_500_is_refused_at_the_default_significance():
    candidate, champion = pair(500, 350, 1, 0)  # 0.702 vs 0.700: beats min_margin 0.0
    decision = decide(candidate, champion, params())
    assert decision.alias == CHALLENGER
    assert decision.reason.startswith("not significant: accuracy 0.7020 beats champion's 0.7000")
    assert "p = 0.5 is not below significance 0.05" in decision.reason
    assert decision.paired.p_value == 0.5
    # the CI of the difference (+0.002) spans 0: the reason shows both
    assert "difference +0.0020 (95% CI -0.0035 to +0.0075)" in decision.reason
    # five against four is no better: P(X >= 5 | 9) = 256 / 512
    assert not decide(*pair(500, 350, 5, 4), params()).promoted


def test_a_clear_gain_is_promoted_with_the_evidence_in_the_reason():
    candidate, champion = pair(500, 350, 42, 2)
    decision = decide(candidate, champion, params())
    assert decision.alias == CHAMPION
    assert (decision.score, decision.champion_score) == (0.784, 0.704)
    assert decision.reason.startswith(
        "accuracy 0.7840 beats champion's 0.7040 by 0.0800, significant at 0.05"
    )
    for text in (
        "on the same 500 test images",
        "difference +0.0800",
        "95% CI +0.0544 to +0.1049",
        "McNemar exact p = 5.63e-11",
        "42 images right only for this model, 2 only for the champion",
    ):
        assert text in decision.reason
    evidence = decision.evidence()
    assert evidence["p_value"] == pytest.approx(991 / 2**44)
    assert (evidence["challenger_only"], evidence["champion_only"], evidence["n_paired"]) == (
        42,
        2,
        500,
    )
    assert (evidence["ci_low"], evidence["ci_high"]) == (0.054435, 0.104928)


@pytest.mark.parametrize(
    ("counts", "changes", "alias", "reason"),
    [
        ((500, 350, 12, 3), {}, CHAMPION, "significant at 0.05"),  # p 0.0176
        ((500, 350, 12, 3), {"significance": 0.01}, CHALLENGER, "not below significance 0.01"),
        ((500, 350, 3, 12), {}, CHALLENGER, "does not beat"),  # worse
        ((100, 60, 11, 10), {"min_margin": 0.01}, CHALLENGER, "more than min_margin 0.01"),
        ((100, 60, 12, 2), {"min_margin": 0.1}, CHALLENGER, "min_margin 0.1"),  # just the margin
        ((100, 60, 12, 1), {"min_margin": 0.1}, CHAMPION, "beats"),
    ],
)
def test_margin_and_significance_both_must_pass(counts, changes, alias, reason):
    decision = decide(*pair(*counts), params(**changes))
    assert decision.alias == alias, decision.reason
    assert reason in decision.reason


def test_the_recall_guard_stays():
    candidate, champion = pair(
        500, 350, 42, 2, new_recall={"cat": 0.95, "dog": 0.55}, old_recall={"cat": 0.8, "dog": 0.7}
    )
    decision = decide(candidate, champion, params())
    assert decision.alias == CHALLENGER and decision.recall_drops == {"dog": pytest.approx(0.15)}
    assert "recall drops more than max_recall_drop 0.1: dog -0.150" in decision.reason
    assert "McNemar exact p" in decision.reason
    missing = decide(*pair(500, 350, 42, 2, new_recall={"cat": 0.9}), params())
    assert missing.recall_drops == {"dog": 0.7}  # a class the new model lacks counts as 0


@pytest.mark.parametrize(
    ("score", "alias", "reason"),
    [
        (0.5, CHAMPION, "first model: accuracy 0.5000 >= min_score 0.3"),
        (0.3, CHAMPION, ">= min_score"),
        (0.2, CHALLENGER, "below min_score"),
    ],
)
def test_the_first_model_keeps_min_score(score, alias, reason):
    decision = paired_decision(
        Evaluation({"accuracy": score, "test_fingerprint": 3}), None, None, params()
    )
    assert decision.alias == alias and reason in decision.reason
    assert decision.test_fingerprint == 3 and decision.paired is None
    assert set(decision.evidence().values()) == {None}


def test_another_primary_metric_decides_the_margin_and_is_named():
    candidate, champion = pair(500, 350, 42, 2)
    candidate.metrics["macro_f1"] = 0.6
    champion.metrics["macro_f1"] = 0.5
    decision = decide(candidate, champion, params(primary_metric="macro_f1"))
    assert decision.promoted and "macro_f1 0.6000 vs champion's 0.5000; accuracy" in decision.reason
    with pytest.raises(ValueError, match=r"'top3_accuracy' is not a number .*available"):
        decide(candidate, champion, params(primary_metric="top3_accuracy"))


def test_significance_one_turns_the_test_off_even_when_the_classes_are_the_same():
    # The same per-image correctness (no image only the challenger gets right: p = 1) with a
    # better hashtag metric: a gain of the ranking alone, which only significance 1 may promote.
    candidate, champion = pair(500, 350, 0, 0)
    candidate.metrics["hashtag_recall_at_5"] = 0.45
    champion.metrics["hashtag_recall_at_5"] = 0.30
    gate = {"primary_metric": "hashtag_recall_at_5"}
    refused = decide(candidate, champion, params(**gate))
    assert not refused.promoted and "p = 1 is not below significance 0.05" in refused.reason
    off = decide(candidate, champion, params(**gate, significance=1.0))
    assert off.promoted and off.paired.p_value == 1.0


# ----------------------------------------------------------------- pairing with a champion
def test_the_champion_is_always_rescored_and_paired_on_the_current_images():
    candidate, champion = pair(500, 350, 42, 2, fingerprint=8)
    recorded = Evaluation({"accuracy": 0.99, "test_fingerprint": 8})  # its own old numbers
    decision = paired_decision(candidate, ("1", recorded), lambda: champion, params())
    assert decision.promoted and decision.champion_rescored
    assert (decision.score, decision.champion_score, decision.test_fingerprint) == (0.784, 0.704, 8)


def test_a_champion_that_cannot_be_scored_is_not_comparable():
    candidate, _ = pair(500, 350, 42, 2)

    def broken():
        raise NotComparableError("champion version 1 predicts other classes (x, y)")

    refused = paired_decision(candidate, ("1", Evaluation({})), broken, params())
    assert refused.alias == CHALLENGER and refused.score == 0.784
    assert refused.reason.startswith("not comparable: champion version 1 predicts other classes")
    assert "promote by hand" in refused.reason
    blind = paired_decision(candidate, ("1", Evaluation({})), None, params())
    assert not blind.promoted and "--clean" in blind.reason


# ----------------------------------------------------------------- fail closed on evidence
def test_missing_fingerprint_refuses():
    candidate, champion = pair(500, 350, 42, 2)
    del candidate.metrics["test_fingerprint"]
    with pytest.raises(EvidenceError, match="no test_fingerprint"):
        paired_decision(candidate, ("1", champion), lambda: champion, params())
    with pytest.raises(EvidenceError, match="no test_fingerprint"):  # also for a first model
        paired_decision(candidate, None, None, params())


def test_two_missing_fingerprints_are_not_the_same_split():
    candidate, champion = pair(500, 350, 42, 2)
    del candidate.metrics["test_fingerprint"]
    del champion.metrics["test_fingerprint"]
    with pytest.raises(EvidenceError):
        paired_decision(candidate, ("1", champion), lambda: champion, params())


def test_metrics_from_another_split_than_the_rescored_champion_refuse():
    candidate, _ = pair(500, 350, 42, 2, fingerprint=8)
    _, champion = pair(500, 350, 42, 2, fingerprint=9)
    with pytest.raises(EvidenceError, match="current test split is 9: run the evaluate stage"):
        paired_decision(candidate, ("1", champion), lambda: champion, params())


def test_no_per_image_results_or_other_images_refuse():
    candidate, champion = pair(20, 10, 5, 0)
    with pytest.raises(EvidenceError, match="no per-image correctness for the champion"):
        decide(candidate, Evaluation(champion.metrics, champion.recall), params())
    other = Evaluation(champion.metrics, champion.recall, {"f" * 64: True})
    with pytest.raises(EvidenceError, match="other test images"):
        decide(candidate, other, params())


def write_evidence(folder, *, run=RUN, labels=None, drop=(), correct=None):
    """metrics.json, per_class.json and per_image.json as evaluate writes them (4 images)."""
    names = shas(4)
    labels = labels or ["cat", "dog", "cat", "dog"]
    correct = correct or [True, True, False, True]
    fingerprint = split_fingerprint(names, labels)
    metrics = {
        "accuracy": sum(correct) / 4,
        "n_test": 4,
        "test_fingerprint": fingerprint,
        "model_run_id": run,
    }
    for key in drop:
        metrics.pop(key)
    rows = [
        {"sha256": s, "label": label, "predicted": label if ok else "x", "correct": ok}
        for s, label, ok in zip(names, labels, correct, strict=True)
    ]
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "per_class.json").write_text(
        json.dumps({"cat": {"recall": 0.5}, "dog": {"recall": 1.0}})
    )
    (folder / "per_image.json").write_text(
        json.dumps({"model_run_id": run, "test_fingerprint": fingerprint, "images": rows})
    )
    return [folder / name for name in ("metrics.json", "per_class.json", "per_image.json")]


def test_read_evaluation_returns_all_three_parts(tmp_path):
    evaluation = read_evaluation(*write_evidence(tmp_path))
    assert evaluation.score("accuracy") == 0.75
    assert evaluation.recall == {"cat": 0.5, "dog": 1.0}
    assert evaluation.correct == dict(zip(shas(4), [True, True, False, True], strict=True))


@pytest.mark.parametrize(
    ("key", "words"), [("test_fingerprint", "which test images"), ("model_run_id", "which model")]
)
def test_missing_fingerprint_or_run_id_in_metrics_refuses(tmp_path, key, words):
    with pytest.raises(EvidenceError, match=f"has no {key}, so nothing says {words}"):
        read_evaluation(*write_evidence(tmp_path, drop=[key]))


def test_missing_run_id_refuses_at_the_run_check(tmp_path):
    metrics, _, _ = write_evidence(tmp_path, drop=["model_run_id"])
    with pytest.raises(EvidenceError, match="names no model_run_id, so nothing ties it to"):
        check_metrics_run(metrics, RUN)


def test_mismatching_run_refuses(tmp_path):
    metrics, _, _ = write_evidence(tmp_path, run="b" * 32)
    with pytest.raises(
        EvidenceError,
        match=r"metrics of train run b{32}, but model_info.json is "
        r"run a{32}",
    ):
        check_metrics_run(metrics, RUN)
    check_metrics_run(metrics, "b" * 32)  # its own run passes


def test_relabelling_one_test_photo_changes_the_fingerprint(tmp_path):
    names = shas(4)
    before = split_fingerprint(names, ["cat", "dog", "cat", "dog"])
    after = split_fingerprint(names, ["cat", "dog", "dog", "dog"])  # photo 2 relabelled
    assert before != after
    assert split_fingerprint(list(reversed(names)), ["dog", "cat", "dog", "cat"]) == before
    # a per-image record whose labels were edited no longer matches its fingerprint
    metrics, _, per_image = write_evidence(tmp_path)
    record = json.loads(per_image.read_text())
    record["images"][2]["label"] = "dog"
    per_image.write_text(json.dumps(record))
    with pytest.raises(EvidenceError, match="images and labels do not give its test_fingerprint"):
        read_correct(per_image, json.loads(metrics.read_text()))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"model_run_id": "b" * 32}, "the metrics say bbbb"),
        ({"n_test": 5}, "4 images but n_test"),
        ({"accuracy": 1.0}, "3 of 4 right but accuracy is 1.0"),
        ({"test_fingerprint": 1}, "test_fingerprint"),
    ],
)
def test_per_image_results_of_another_model_or_split_refuse(tmp_path, change, words):
    metrics, _, per_image = write_evidence(tmp_path)
    scores = {**json.loads(metrics.read_text()), **change}
    with pytest.raises(EvidenceError, match=words):
        read_correct(per_image, scores)


def test_missing_per_image_results_name_the_stage(tmp_path):
    metrics, _, per_image = write_evidence(tmp_path)
    per_image.unlink()
    with pytest.raises(FileNotFoundError, match="run the evaluate stage first"):
        read_correct(per_image, json.loads(metrics.read_text()))


# ----------------------------------------------------------------- recorded as tags
def test_the_evidence_survives_the_version_tags():
    decision = decide(*pair(500, 350, 42, 2), params())
    tags = {k: str(v) for k, v in decision_tags(decision, "accuracy", "t").items()}
    assert tags["decision.p_value"] == repr(decision.paired.p_value)
    assert tags["decision.ci_low"] == "0.054435" and tags["decision.champion_only"] == "2"
    # a decision tagged before a crash is replayed with the same recorded numbers
    assert pending_decision(tags).paired.record() == decision.paired.record()
    record = decision_record(tags)
    assert record["p_value"] == decision.paired.p_value and record["n_paired"] == 500
    assert math.isclose(record["difference"], 0.08)


# ----------------------------------------------------------------- per-class recall files
@pytest.mark.parametrize(
    ("content", "read"),
    [
        ({"a": {"precision": 0.1, "recall": 0.8}, "b": {"recall": 0.7}}, True),
        # shapes no evaluate writes: refused, not guessed at
        ({"classes": {"a": {"recall": 0.8}, "b": {"recall": 0.7}}, "macro": {"f1": 0.4}}, False),
        ([{"class": "a", "recall": 0.8}, {"class": "b", "recall": 0.7}], False),
    ],
)
def test_read_recall_reads_what_evaluate_writes_and_refuses_other_shapes(tmp_path, content, read):
    path = tmp_path / "per_class.json"
    path.write_text(json.dumps(content))
    if read:
        assert read_recall(path) == {"a": 0.8, "b": 0.7}
    else:
        with pytest.raises(TaglensError, match="is not evaluate's per-class record"):
            read_recall(path)


def test_read_recall_missing_and_unusable(tmp_path):
    assert read_recall(tmp_path / "none.json") == {}
    (tmp_path / "bad.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(TaglensError, match="is not evaluate's per-class record"):
        read_recall(tmp_path / "bad.json")
