"""The stratified train / val / test split, with exact duplicates always on the same side."""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "val", "test")
# data/clean/manifest.csv: the kept images and the split each one is in (clean writes, train reads).
MANIFEST_COLUMNS = ("id", "sha256", "image", "label", "split", "distance")


def _order_key(seed: int, sha256: str) -> str:
    # Ordering by a seeded hash rather than a shuffled list keeps each image's side stable when
    # images are added or dropped elsewhere, so test sets stay comparable across data versions.
    return hashlib.sha256(f"{seed}:{sha256}".encode()).hexdigest()


def _counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Val and test sizes for a class of n groups (rounded half up, training keeps at least 1)."""
    n_test = math.floor(n * test_fraction + 0.5)
    n_val = math.floor(n * val_fraction + 0.5)
    while n_test + n_val >= n and (n_test or n_val):
        if n_val >= n_test and n_val:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def stratified_split(
    shas: Sequence[str],
    labels: Sequence[str],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> np.ndarray:
    """Assign each row to train/val/test, stratified by label, duplicates (same sha256) together.

    Rows sharing a sha256 form one group; a group whose rows carry different labels is
    stratified under its most common label (ties: alphabetical). Each class's groups are ordered
    by a seeded hash of their sha256; the first go to test, the next to val, the rest to train.

    Returns:
        (N,) array of "train", "val" or "test".

    Raises:
        ValueError: shas and labels differ in length, or a fraction is out of range.
    """
    if len(shas) != len(labels):
        raise ValueError(f"got {len(shas)} sha256 values for {len(labels)} labels")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"split fractions must be in [0, 1) and sum below 1, got val={val_fraction}, "
            f"test={test_fraction}"
        )
    group_labels: dict[str, Counter] = defaultdict(Counter)
    for sha, label in zip(shas, labels, strict=True):
        group_labels[sha][label] += 1
    by_class: dict[str, list[str]] = defaultdict(list)
    for sha, votes in group_labels.items():
        top = max(votes.values())
        by_class[min(label for label, count in votes.items() if count == top)].append(sha)
    side: dict[str, str] = {}
    for groups in by_class.values():
        groups.sort(key=lambda sha: _order_key(seed, sha))
        n_val, n_test = _counts(len(groups), val_fraction, test_fraction)
        for i, sha in enumerate(groups):
            side[sha] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return np.array([side[sha] for sha in shas], dtype="<U5")
