"""Choosing among candidates scored on validation: the best, or the one-standard-error rule.

A few hundred validation photos make a search's best score partly luck: one photo in 500 is 0.2
points. The one-standard-error rule (Breiman et al., 1984; Hastie et al., *The Elements of
Statistical Learning*, 7.10) takes the simplest candidate whose score is within one standard
error of the best, which picks noise far less often and costs little when it is wrong. The head
search chooses through `pick` (one accuracy per candidate, a binomial error); the hashtag ranking
search through `pick_paired`, which has every candidate's per-post scores on the same posts and
so measures the error of each candidate's difference from the best: candidates that rank almost
alike are told apart by the posts where they differ, not by the spread of all posts.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

RULES = ("best", "one_se")


def binomial_se(accuracy: float, n: int) -> float:
    """The standard error of an accuracy measured on `n` samples."""
    return float(np.sqrt(max(accuracy * (1.0 - accuracy), 0.0) / max(n, 1)))


def mean_se(per_sample: np.ndarray) -> float:
    """The standard error of the mean of per-sample scores."""
    values = np.asarray(per_sample, np.float64)
    if len(values) < 2:
        return 0.0
    return float(np.std(values, ddof=1) / np.sqrt(len(values)))


def pick(scores: Sequence[float], best_se: float, complexity: Sequence[Hashable], rule: str) -> int:
    """The index of the chosen candidate.

    Args:
        scores: each candidate's validation score (higher is better).
        best_se: the standard error of the best candidate's score.
        complexity: each candidate's sort key, lower is simpler (compared only among themselves).
        rule: `best`: the highest score (the simpler on ties); `one_se`: the simplest candidate
            within `best_se` of the highest score (the higher score among equally simple ones).

    Raises:
        ValueError: no candidates, or an unknown rule.
    """
    _check(len(scores), rule)
    values = np.asarray(scores, np.float64)
    top = float(values.max())
    margin = best_se if rule == "one_se" else 0.0
    near = [i for i in range(len(values)) if values[i] >= top - margin - 1e-12]
    return _simplest(near, complexity, values)


def pick_paired(per_sample: Sequence[np.ndarray], complexity: Sequence[Hashable], rule: str) -> int:
    """`pick` for candidates scored on the same samples: the error of a paired difference.

    Under `one_se` a candidate qualifies when its mean is below the best's by at most the
    standard error of their per-sample difference.

    Raises:
        ValueError: no candidates, or an unknown rule.
    """
    _check(len(per_sample), rule)
    values = [np.asarray(v, np.float64) for v in per_sample]
    means = np.array([float(v.mean()) if len(v) else 0.0 for v in values])
    best = int(np.argmax(means))

    def qualifies(i: int) -> bool:
        gap = means[best] - means[i]
        if rule == "best" or i == best:
            return gap <= 1e-12
        return gap <= mean_se(values[best] - values[i]) + 1e-12

    near = [i for i in range(len(values)) if qualifies(i)]
    return _simplest(near, complexity, means)


def _check(candidates: int, rule: str) -> None:
    if not candidates:
        raise ValueError("a choice needs at least one candidate")
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; expected one of {RULES}")


def _simplest(near: list[int], complexity: Sequence[Hashable], scores: np.ndarray) -> int:
    """The simplest of the qualifying candidates; the higher score, then the first, on ties."""
    return min(near, key=lambda i: (complexity[i], -scores[i], i))
