"""The paper's outlier rule: drop images far from their class centroid in feature space."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from taglens.errors import TaglensError

# Below this many images a class has no meaningful spread: all of them are kept.
MIN_CLASS_SIZE = 3
_EPS = 1e-12


@dataclass(frozen=True)
class ClassStats:
    """The distance distribution of one class and the threshold applied to it."""

    label: str
    before: int
    after: int
    mean: float
    std: float
    threshold: float | None  # None: the class was too small (or cleaning off) to drop anything

    def to_dict(self) -> dict:
        """JSON-ready form for reports/clean.json."""
        return {
            "before": self.before,
            "after": self.after,
            "dropped": self.before - self.after,
            "mean": self.mean,
            "std": self.std,
            "threshold": self.threshold,
        }


@dataclass(frozen=True)
class OutlierResult:
    """Which rows to keep, every row's distance to its class centroid, and per-class stats."""

    keep: np.ndarray  # (N,) bool
    distances: np.ndarray  # (N,) float64
    thresholds: np.ndarray  # (N,) float64, the threshold of the row's class (inf when none)
    classes: dict[str, ClassStats]
    flagged: np.ndarray  # (N,) bool, beyond the threshold whatever the split (only fit rows drop)


def class_centre(vectors: np.ndarray, metric: str) -> np.ndarray:
    """The centroid of one class's vectors: their mean, or for `cosine` the mean direction."""
    x = np.asarray(vectors, dtype=np.float64)
    if metric == "euclidean":
        return x.mean(axis=0)
    if metric == "cosine":
        centre = _unit(x).mean(axis=0)
        return centre / max(float(np.linalg.norm(centre)), _EPS)
    raise ValueError(f"clean.distance must be 'euclidean' or 'cosine', got {metric!r}")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)


def distances_to(vectors: np.ndarray, centre: np.ndarray, metric: str) -> np.ndarray:
    """Distance of each row to a centre from `class_centre` (cosine: 1 - cosine similarity)."""
    x = np.asarray(vectors, dtype=np.float64)
    if metric == "euclidean":
        return np.linalg.norm(x - centre, axis=1)
    if metric == "cosine":
        return np.clip(1.0 - _unit(x) @ centre, 0.0, 2.0)
    raise ValueError(f"clean.distance must be 'euclidean' or 'cosine', got {metric!r}")


def centroid_distances(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Distance of each row of one class's vectors to the class centroid.

    `euclidean` uses the mean vector; `cosine` compares directions: one minus the cosine
    similarity to the mean of the L2-normalized vectors (a zero vector is at distance 1).
    """
    return distances_to(vectors, class_centre(vectors, metric), metric)


def find_outliers(
    vectors: np.ndarray,
    labels: Sequence[str],
    *,
    k_std: float,
    metric: str = "euclidean",
    enabled: bool = True,
    fit: np.ndarray | None = None,
) -> OutlierResult:
    """Mark images farther from their class centroid than mean + k_std * std of the class.

    Centroids, means and stds come from the `fit` rows only (the training split), and only `fit`
    rows are dropped: validation and test stay whole, as users' uploads are never filtered, so
    the reported scores are not flattered. Every row is still measured against its class's
    threshold (`flagged`), so a report can say how many held-out images the rule would catch.
    The std is the population std of the fit rows' distances. Classes with fewer than
    `MIN_CLASS_SIZE` fit rows keep everything; `enabled=False` keeps everything but still
    reports distances, so the report shows what the rule would see.

    Raises:
        ValueError: vectors, labels and fit disagree in length, or vectors hold NaN/inf.
    """
    vectors = np.asarray(vectors)
    labels = np.asarray(labels, dtype=str)
    if vectors.ndim != 2 or len(vectors) != len(labels):
        raise TaglensError(
            f"expected one 2-d feature vector per label, got vectors {vectors.shape} for "
            f"{len(labels)} labels: re-run featurize"
        )
    if not np.isfinite(vectors).all():
        raise TaglensError("feature vectors contain NaN or inf: re-run featurize")
    n = len(labels)
    fit = np.ones(n, dtype=bool) if fit is None else np.asarray(fit, dtype=bool)
    if fit.shape != (n,):
        raise ValueError(f"expected one fit flag per row ({n}), got shape {fit.shape}")
    flagged = np.zeros(n, dtype=bool)
    distances = np.zeros(n, dtype=np.float64)
    thresholds = np.full(n, np.inf)
    stats: dict[str, ClassStats] = {}
    for label in sorted(set(labels.tolist())):
        rows = np.flatnonzero(labels == label)
        fitted = rows[fit[rows]]
        reference = fitted if len(fitted) else rows  # a class with no training rows: its own
        d = distances_to(vectors[rows], class_centre(vectors[reference], metric), metric)
        distances[rows] = d
        d_fit = distances[reference]
        mean = float(d_fit.mean())
        std = float(d_fit.std())
        threshold = None
        if enabled and len(fitted) >= MIN_CLASS_SIZE:
            threshold = mean + k_std * std
            # a relative tolerance keeps float noise from dropping points of a zero-spread class
            flagged[rows] = d > threshold + 1e-9 * max(1.0, abs(threshold))
            thresholds[rows] = threshold
        kept = len(rows) - int((flagged[rows] & fit[rows]).sum())
        stats[label] = ClassStats(label, len(rows), kept, mean, std, threshold)
    return OutlierResult(~(flagged & fit), distances, thresholds, stats, flagged)
