"""The train / val / test split: a pure function of each photo's content, stable as data grows.

A photo's side is decided by a keyed hash of its group key (the post's owner when the source
knows it, else the image's sha256) mapped to [0, 1) and cut at the configured fractions. No
photo's side depends on any other photo, so adding photos never moves an existing one: last
week's test photos are this week's test photos, and models trained on different data versions
are still scored on comparable test sets. Exact duplicates share a key and so a side; posts of
one owner share a side, so near-identical shots of one account never straddle train and test.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from taglens import artifacts

if TYPE_CHECKING:
    import pandas as pd

SPLITS = ("train", "val", "test")
# data/clean/manifest.csv: the images train and evaluate read and the split each one is in.
MANIFEST_COLUMNS = ("id", "sha256", "image", "label", "split", "distance")
_SCALE = float(1 << 64)


def group_key(sha256: str, owner: str | None = None) -> str:
    """The key a photo is split by: its owner when known (same owner, same side), else its bytes."""
    return f"owner:{owner}" if owner else f"sha256:{sha256}"


def unit_position(key: str, seed: int) -> float:
    """A key's place in [0, 1): the first 64 bits of HMAC-SHA256(seed, key), uniform over keys."""
    digest = hmac.new(str(seed).encode(), key.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def side_of(position: float, val_fraction: float, test_fraction: float) -> str:
    """The split for a place in [0, 1): test below test_fraction, then val, the rest train."""
    if position < test_fraction:
        return "test"
    if position < test_fraction + val_fraction:
        return "val"
    return "train"


def content_split(
    shas: Sequence[str],
    owners: Sequence[str | None] | None = None,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> np.ndarray:
    """Assign each row to train/val/test from its content alone.

    Rows sharing a sha256 follow the smallest group key among them, so exact duplicates never
    straddle splits even when they came from different owners (ingest keeps one post per sha256,
    so this only matters for callers that pass duplicates). Fractions are met in expectation, not
    exactly per class: exactness would make a photo's side depend on the other photos.

    Args:
        shas: each row's image sha256.
        owners: each row's owner (a salted hash) or None when the source does not know it.
        val_fraction: expected share of validation rows.
        test_fraction: expected share of test rows.
        seed: the hash key; another seed gives another (equally stable) split.

    Returns:
        (N,) array of "train", "val" or "test".

    Raises:
        ValueError: shas and owners differ in length, or a fraction is out of range.
    """
    owners = [None] * len(shas) if owners is None else list(owners)
    if len(shas) != len(owners):
        raise ValueError(f"got {len(shas)} sha256 values for {len(owners)} owners")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"split fractions must be in [0, 1) and sum below 1, got val={val_fraction}, "
            f"test={test_fraction}"
        )
    key_of: dict[str, str] = {}
    for sha, owner in zip(shas, owners, strict=True):
        key = group_key(sha, owner)
        key_of[sha] = min(key, key_of.get(sha, key))
    side = {
        sha: side_of(unit_position(key, seed), val_fraction, test_fraction)
        for sha, key in key_of.items()
    }
    return np.array([side[sha] for sha in shas], dtype="<U5")


def read_manifest(clean: Path | str) -> pd.DataFrame:
    """data/clean/manifest.csv as written (training.splits.read_manifest checks its contents).

    Raises:
        MissingArtifactError: clean has not run.
    """
    import pandas as pd

    path = artifacts.MANIFEST.require(clean)
    return pd.read_csv(path, dtype={"id": str, "sha256": str, "image": str, "label": str})
