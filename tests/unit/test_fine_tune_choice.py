"""`train.fine_tune.enabled: auto`: the fine-tuned model is served only when it wins on val."""

from __future__ import annotations

import numpy as np
import pytest

from taglens.training.fine_tune_choice import choose_fine_tuned


def right(n: int, wrong: list[int]) -> np.ndarray:
    values = np.ones(n)
    values[wrong] = 0.0
    return values


def test_auto_serves_the_fine_tuned_model_only_beyond_one_paired_se():
    head = right(100, list(range(20)))  # 0.80
    tuned = right(100, list(range(5)))  # 0.95: 15 photos fixed, none lost
    choice = choose_fine_tuned(head, tuned, "auto", "one_se")
    assert choice.tuned and choice.report()["served"] == "fine_tuned"
    assert choice.val_accuracy == {"head": 0.8, "fine_tuned": 0.95}
    assert choice.difference_se == pytest.approx(np.std(tuned - head, ddof=1) / 10)
    # 2 photos fixed, 1 lost: +0.01 against a paired SE of 0.017: the head stays
    tuned = right(100, [*range(2, 20), 50])
    choice = choose_fine_tuned(head, tuned, "auto", "one_se")
    assert not choice.tuned and choice.report()["served"] == "head"
    assert choice.val_accuracy["fine_tuned"] == pytest.approx(0.81)
    assert "the head is served" in choice.why
    assert choose_fine_tuned(head, tuned, "auto", "best").tuned  # `best` takes any gain
    assert not choose_fine_tuned(head, head, "auto", "best").tuned  # a tie: the head


def test_true_always_serves_it_and_mismatched_scores_are_refused():
    head = right(10, [])
    choice = choose_fine_tuned(head, right(10, [1, 2, 3]), True, "one_se")
    assert choice.tuned and choice.why == "train.fine_tune.enabled is true"
    assert choice.val_accuracy == {"head": 1.0, "fine_tuned": 0.7}
    with pytest.raises(ValueError, match="10 and 9 validation photos"):
        choose_fine_tuned(head, right(9, []), "auto", "one_se")
