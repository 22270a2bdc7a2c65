"""Evaluation metrics: classification scores and HARRISON's hashtag precision/recall/accuracy@k."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """(C, C) counts: row = actual class, column = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return matrix


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the share of a class predicted as each class); empty rows 0."""
    totals = matrix.sum(axis=1, keepdims=True).astype("float64")
    return np.divide(matrix, totals, out=np.zeros(matrix.shape, "float64"), where=totals > 0)


def per_class_scores(matrix: np.ndarray, classes: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class from a confusion matrix (0 where undefined)."""
    tp = np.diag(matrix).astype("float64")
    predicted = matrix.sum(axis=0).astype("float64")
    actual = matrix.sum(axis=1).astype("float64")
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(tp), where=both > 0)
    return {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(actual[i])}
        for i, name in enumerate(classes)
    }  # fmt: skip


def top_k_accuracy(y_true: Sequence[int], probabilities: np.ndarray, k: int) -> float:
    """Share of samples whose true class is among the k most probable."""
    probabilities = np.asarray(probabilities)
    if len(probabilities) == 0:
        return float("nan")
    k = min(k, probabilities.shape[1])
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return float(np.mean([label in row for label, row in zip(y_true, top, strict=True)]))


def classification_metrics(
    y_true: Sequence[int], probabilities: np.ndarray, classes: Sequence[str], top_k: int = 3
) -> dict[str, Any]:
    """Accuracy, top-k accuracy, macro F1 (over classes present in the test set), per-class scores.

    Returns:
        A dict with `accuracy`, `top{k}_accuracy` (and always `top3_accuracy`), `macro_f1`,
        `n_test`, `per_class` and `confusion` (the raw matrix as nested lists).

    Raises:
        ValueError: probabilities and labels do not line up.
    """
    probabilities = np.asarray(probabilities, dtype="float64")
    y_true = np.asarray(y_true, dtype=int)
    if probabilities.ndim != 2 or probabilities.shape != (len(y_true), len(classes)):
        raise ValueError(
            f"expected probabilities of shape ({len(y_true)}, {len(classes)}), "
            f"got {probabilities.shape}"
        )
    if len(y_true) == 0:
        raise ValueError("the test split is empty: raise clean.test_fraction or add images")
    y_pred = probabilities.argmax(axis=1)
    matrix = confusion(y_true, y_pred, len(classes))
    per_class = per_class_scores(matrix, classes)
    present = [name for name, row in per_class.items() if row["support"] > 0]
    result: dict[str, Any] = {
        "accuracy": float(np.mean(y_pred == y_true)),
        "top3_accuracy": top_k_accuracy(y_true, probabilities, 3),
        f"top{top_k}_accuracy": top_k_accuracy(y_true, probabilities, top_k),
        "macro_f1": float(np.mean([per_class[name]["f1"] for name in present])),
        "n_test": int(len(y_true)),
        "per_class": per_class,
        "confusion": matrix.tolist(),
    }
    return result


def hashtag_metrics(
    ranked: Sequence[Sequence[str]], truth: Sequence[set[str] | frozenset[str]], k: int = 5
) -> dict[str, float | int | None]:
    """HARRISON's hashtag metrics against each post's own hashtags.

    - precision@1: share of posts whose top suggestion is one of their hashtags;
    - recall@k: per post, the share of its hashtags found in the top k, averaged over posts;
    - accuracy@k: share of posts with at least one of their hashtags in the top k.

    Posts without hashtags are skipped (nothing to recall); `hashtag_n` counts the posts scored,
    and every metric is None when no post has hashtags.
    """
    if len(ranked) != len(truth):
        raise ValueError(f"{len(ranked)} rankings for {len(truth)} posts")
    p1, recall, hit = [], [], []
    for tags, own in zip(ranked, truth, strict=True):
        if not own:
            continue
        top = list(tags[:k])
        found = len(own.intersection(top))
        p1.append(float(bool(tags) and tags[0] in own))
        recall.append(found / len(own))
        hit.append(float(found > 0))
    if not p1:
        return {"hashtag_precision_at_1": None, f"hashtag_recall_at_{k}": None,
                f"hashtag_accuracy_at_{k}": None, "hashtag_n": 0}  # fmt: skip
    return {
        "hashtag_precision_at_1": float(np.mean(p1)),
        f"hashtag_recall_at_{k}": float(np.mean(recall)),
        f"hashtag_accuracy_at_{k}": float(np.mean(hit)),
        "hashtag_n": len(p1),
    }


def ranking_metrics(
    ranked: Sequence[Sequence[str]], truth: Sequence[set[str] | frozenset[str]], k: int,
    top_k: int,
) -> dict[str, float | int | None]:
    """`hashtag_metrics` at k, plus `hashtag_recall_at_{top_k}` (the whole served list)."""
    scores = hashtag_metrics(ranked, truth, k=k)
    if top_k != k:
        scores[f"hashtag_recall_at_{top_k}"] = hashtag_metrics(ranked, truth, k=top_k)[
            f"hashtag_recall_at_{top_k}"
        ]
    return scores


def split_fingerprint(sha256s: Sequence[str]) -> int:
    """A number that names a test split: the same images give the same number, in any order.

    Numeric (48 bits, exact in a float) so it travels through metrics.json, MLflow metrics and
    registry tags like any other metric, and the promotion gate compares only models evaluated on
    the same split.
    """
    import hashlib

    digest = hashlib.sha256("\n".join(sorted(sha256s)).encode("ascii")).hexdigest()
    return int(digest[:12], 16)


def with_prefix(scores: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Rename hashtag metric keys for a baseline (`hashtag_recall_at_5` -> `popularity_...`)."""
    return {f"{prefix}{key}": value for key, value in scores.items() if key != "hashtag_n"}
