"""Evaluation metrics: classification scores and HARRISON's hashtag precision/recall/accuracy@k."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from taglens.errors import TaglensError


def confusion(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """(C, C) counts: row = actual class, column = predicted class (scikit-learn's matrix)."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, y_pred, labels=np.arange(n_classes)).astype(np.int64)


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the share of a class predicted as each class); empty rows 0."""
    totals = matrix.sum(axis=1, keepdims=True).astype("float64")
    return np.divide(matrix, totals, out=np.zeros(matrix.shape, "float64"), where=totals > 0)


def per_class_report(
    y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of every class (scikit-learn's classification report).

    Every class of the model is listed, also one absent from the test set (support 0); scores
    that divide by zero are 0.
    """
    from sklearn.metrics import classification_report

    report = classification_report(
        y_true,
        y_pred,
        labels=np.arange(len(classes)),
        target_names=list(classes),
        output_dict=True,
        zero_division=0,
    )
    return {
        name: {
            "precision": float(report[name]["precision"]),
            "recall": float(report[name]["recall"]),
            "f1": float(report[name]["f1-score"]),
            "support": int(report[name]["support"]),
        }
        for name in classes
    }


def top_k_accuracy(y_true: Sequence[int], probabilities: np.ndarray, k: int) -> float:
    """Share of samples whose true class is among the k most probable (scikit-learn's)."""
    from sklearn.metrics import top_k_accuracy_score

    probabilities = np.asarray(probabilities)
    if len(probabilities) == 0:
        return float("nan")
    n_classes = probabilities.shape[1]
    if k >= n_classes:  # every class is among the k best (scikit-learn warns, then says the same)
        return 1.0
    return float(top_k_accuracy_score(y_true, probabilities, k=k, labels=np.arange(n_classes)))


def classification_metrics(
    y_true: Sequence[int], probabilities: np.ndarray, classes: Sequence[str], top_k: int = 3
) -> dict[str, Any]:
    """Accuracy, top-k accuracy, macro F1, per-class scores, all computed by scikit-learn.

    Macro F1 is scikit-learn's: the mean F1 over the classes that occur in the test labels or the
    predictions, so a class predicted but absent from the test set counts (with F1 0) and a model
    cannot gain by spraying predictions over classes the test set lacks.

    Returns:
        A dict with `accuracy`, `top{k}_accuracy` (and always `top3_accuracy`), `macro_f1`,
        `n_test`, `per_class` and `confusion` (the raw matrix as nested lists).

    Raises:
        ValueError: probabilities and labels do not line up, or there are no test images.
    """
    from sklearn.metrics import accuracy_score, f1_score

    probabilities = np.asarray(probabilities, dtype="float64")
    y_true = np.asarray(y_true, dtype=int)
    if probabilities.ndim != 2 or probabilities.shape != (len(y_true), len(classes)):
        raise ValueError(
            f"expected probabilities of shape ({len(y_true)}, {len(classes)}), "
            f"got {probabilities.shape}"
        )
    if len(y_true) == 0:
        raise TaglensError("the test split is empty: raise clean.test_fraction or add images")
    y_pred = probabilities.argmax(axis=1)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "top3_accuracy": top_k_accuracy(y_true, probabilities, 3),
        f"top{top_k}_accuracy": top_k_accuracy(y_true, probabilities, top_k),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "n_test": int(len(y_true)),
        "per_class": per_class_report(y_true, y_pred, classes),
        "confusion": confusion(y_true, y_pred, len(classes)).tolist(),
    }


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
    p1 = []
    recall = []
    hit = []
    for tags, own in zip(ranked, truth, strict=True):
        if not own:
            continue
        top = list(tags[:k])
        found = len(own.intersection(top))
        p1.append(float(bool(tags) and tags[0] in own))
        recall.append(found / len(own))
        hit.append(float(found > 0))
    if not p1:
        return {
            "hashtag_precision_at_1": None,
            f"hashtag_recall_at_{k}": None,
            f"hashtag_accuracy_at_{k}": None,
            "hashtag_n": 0,
        }
    return {
        "hashtag_precision_at_1": float(np.mean(p1)),
        f"hashtag_recall_at_{k}": float(np.mean(recall)),
        f"hashtag_accuracy_at_{k}": float(np.mean(hit)),
        "hashtag_n": len(p1),
    }


def ranking_metrics(
    ranked: Sequence[Sequence[str]],
    truth: Sequence[set[str] | frozenset[str]],
    k: int,
    top_k: int,
) -> dict[str, float | int | None]:
    """`hashtag_metrics` at k, plus `hashtag_recall_at_{top_k}` (the whole served list)."""
    scores = hashtag_metrics(ranked, truth, k=k)
    if top_k != k:
        scores[f"hashtag_recall_at_{top_k}"] = hashtag_metrics(ranked, truth, k=top_k)[
            f"hashtag_recall_at_{top_k}"
        ]
    return scores


def split_fingerprint(sha256s: Sequence[str], labels: Sequence[str]) -> int:
    """A number that names a test split: its images and their labels, in any order.

    Each image counts with its label, so relabelling one test photo gives another number (the
    scores of a model on the old labels are not scores on the new ones). Numeric (48 bits, exact
    in a float) so it travels through metrics.json, MLflow metrics and registry tags like any
    other metric.

    Raises:
        ValueError: the two sequences differ in length.
    """
    import hashlib

    sha256s = list(sha256s)
    labels = list(labels)
    if len(sha256s) != len(labels):
        raise ValueError(f"{len(sha256s)} images but {len(labels)} labels")
    lines = sorted(f"{sha}\t{label}" for sha, label in zip(sha256s, labels, strict=True))
    digest = hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()
    return int(digest[:12], 16)


def with_prefix(scores: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Rename hashtag metric keys for a baseline (`hashtag_recall_at_5` -> `popularity_...`)."""
    return {f"{prefix}{key}": value for key, value in scores.items() if key != "hashtag_n"}
