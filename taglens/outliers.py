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
            "before": self.before, "after": self.after, "dropped": self.before - self.after,
            "mean": self.mean, "std": self.std, "threshold": self.threshold,
        }  # fmt: skip


@dataclass(frozen=True)
class OutlierResult:
    """Which rows to keep, every row's distance to its class centroid, and per-class stats."""

    keep: np.ndarray  # (N,) bool
    distances: np.ndarray  # (N,) float64
    thresholds: np.ndarray  # (N,) float64, the threshold of the row's class (inf when none)
    classes: dict[str, ClassStats]


def centroid_distances(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Distance of each row of one class's vectors to the class centroid.

    `euclidean` uses the mean vector; `cosine` compares directions: one minus the cosine
    similarity to the mean of the L2-normalized vectors (a zero vector is at distance 1).
    """
    x = np.asarray(vectors, dtype=np.float64)
    if metric == "euclidean":
        return np.linalg.norm(x - x.mean(axis=0), axis=1)
    if metric == "cosine":
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)
        centre = unit.mean(axis=0)
        centre /= max(float(np.linalg.norm(centre)), _EPS)
        return np.clip(1.0 - unit @ centre, 0.0, 2.0)
    raise ValueError(f"clean.distance must be 'euclidean' or 'cosine', got {metric!r}")


def find_outliers(
    vectors: np.ndarray,
    labels: Sequence[str],
    *,
    k_std: float,
    metric: str = "euclidean",
    enabled: bool = True,
) -> OutlierResult:
    """Mark images farther from their class centroid than mean + k_std * std of the class.

    The std is the population std of the class's distances. Classes with fewer than
    `MIN_CLASS_SIZE` images keep everything; `enabled=False` keeps everything but still reports
    distances, so the report shows what the rule would see.

    Raises:
        ValueError: vectors and labels disagree in length, or vectors hold NaN/inf.
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
    keep = np.ones(n, dtype=bool)
    distances = np.zeros(n, dtype=np.float64)
    thresholds = np.full(n, np.inf)
    stats: dict[str, ClassStats] = {}
    for label in sorted(set(labels.tolist())):
        rows = np.flatnonzero(labels == label)
        d = centroid_distances(vectors[rows], metric)
        distances[rows] = d
        mean, std = float(d.mean()), float(d.std())
        threshold = None
        if enabled and len(rows) >= MIN_CLASS_SIZE:
            threshold = mean + k_std * std
            # a relative tolerance keeps float noise from dropping points of a zero-spread class
            keep[rows] = d <= threshold + 1e-9 * max(1.0, abs(threshold))
            thresholds[rows] = threshold
        stats[label] = ClassStats(label, len(rows), int(keep[rows].sum()), mean, std, threshold)
    return OutlierResult(keep, distances, thresholds, stats)
