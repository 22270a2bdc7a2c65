"""Choosing among candidates scored on validation: the best, or within one standard error."""

from __future__ import annotations

import numpy as np
import pytest

from taglens.training.search import binomial_se, mean_se, pick, pick_paired


def test_standard_errors():
    assert binomial_se(0.75, 300) == pytest.approx(np.sqrt(0.75 * 0.25 / 300))
    assert mean_se(np.array([1.0, 0.0, 1.0, 0.0])) == pytest.approx(
        np.std([1, 0, 1, 0], ddof=1) / 2
    )
    assert mean_se(np.array([1.0])) == 0.0


def test_one_se_takes_the_simplest_candidate_near_the_best():
    scores = [0.70, 0.74, 0.73]  # complexity 0, 2, 1
    assert pick(scores, best_se=0.02, complexity=[0, 2, 1], rule="best") == 1
    assert pick(scores, best_se=0.02, complexity=[0, 2, 1], rule="one_se") == 2
    assert pick(scores, best_se=0.05, complexity=[0, 2, 1], rule="one_se") == 0
    with pytest.raises(ValueError, match="unknown selection rule"):
        pick(scores, 0.02, [0, 1, 2], "median")


def test_paired_errors_tell_close_candidates_apart_by_where_they_differ():
    rng = np.random.default_rng(0)
    base = rng.uniform(size=400)
    # a candidate that is better on 10 posts by 0.5: a real gain, though below the spread
    better = base.copy()
    better[:10] += 0.5
    assert better.mean() - base.mean() < mean_se(better)  # unpaired: within one error
    assert pick_paired([base, better], [0, 1], "one_se") == 1  # paired: clearly better
    # a candidate that differs on two posts only, one better and one worse: a tie
    tied = base.copy()
    tied[0] += 0.3
    tied[1] -= 0.2
    assert pick_paired([base, tied], [0, 1], "one_se") == 0
    assert pick_paired([base, tied], [0, 1], "best") == 1
