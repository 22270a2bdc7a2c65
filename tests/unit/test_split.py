"""The split: stratified by class, reproducible from the seed, duplicates never straddling."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest

from taglens.split import stratified_split


def sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def dataset(sizes: dict[str, int]) -> tuple[list[str], list[str]]:
    shas, labels, i = [], [], 0
    for label, n in sizes.items():
        for _ in range(n):
            shas.append(sha(i))
            labels.append(label)
            i += 1
    return shas, labels


@pytest.mark.parametrize(
    ("n", "val", "test"), [(100, 15, 15), (40, 6, 6), (20, 3, 3), (7, 1, 1), (3, 0, 0), (2, 0, 0)]
)
def test_each_class_is_split_in_the_given_proportions(n, val, test):
    shas, labels = dataset({"big": 200, "c": n})
    splits = stratified_split(shas, labels, val_fraction=0.15, test_fraction=0.15, seed=1)
    counts = Counter(s for s, label in zip(splits, labels, strict=True) if label == "c")
    assert (counts["train"], counts["val"], counts["test"]) == (n - val - test, val, test)
    big = Counter(s for s, label in zip(splits, labels, strict=True) if label == "big")
    assert (big["train"], big["val"], big["test"]) == (140, 30, 30)


def test_a_single_image_class_goes_to_train():
    shas, labels = dataset({"a": 30, "solo": 1})
    splits = stratified_split(shas, labels, val_fraction=0.4, test_fraction=0.4, seed=0)
    assert splits[-1] == "train"


def test_duplicates_never_straddle_splits():
    unique, labels = dataset({"a": 50, "b": 50})
    rng = np.random.default_rng(0)
    picks = rng.integers(0, 100, size=300)  # every image repeated about three times
    shas = [unique[i] for i in picks]
    labels = [labels[i] for i in picks]
    splits = stratified_split(shas, labels, val_fraction=0.2, test_fraction=0.2, seed=3)
    sides: dict[str, set[str]] = {}
    for s, side in zip(shas, splits, strict=True):
        sides.setdefault(s, set()).add(side)
    assert all(len(v) == 1 for v in sides.values())
    assert {side for v in sides.values() for side in v} == {"train", "val", "test"}


def test_a_duplicate_under_two_labels_follows_its_majority_label():
    shas, labels = dataset({"a": 10, "b": 10})
    shas += [shas[0], shas[0]]
    labels += ["b", "b"]  # shas[0] is now 1x "a", 2x "b": it is stratified as "b"
    splits = stratified_split(shas, labels, val_fraction=0.1, test_fraction=0.1, seed=0)
    assert len({splits[0], splits[-1], splits[-2]}) == 1
    # stratified as "b": "a" keeps 9 groups (1 val, 1 test), "b" has 11 (1 val, 1 test)
    a_sides = Counter(splits[1:10])
    assert (a_sides["val"], a_sides["test"]) == (1, 1)


def test_the_seed_makes_it_reproducible():
    shas, labels = dataset({"a": 60, "b": 60})
    one = stratified_split(shas, labels, val_fraction=0.15, test_fraction=0.15, seed=42)
    again = stratified_split(shas, labels, val_fraction=0.15, test_fraction=0.15, seed=42)
    other = stratified_split(shas, labels, val_fraction=0.15, test_fraction=0.15, seed=43)
    assert one.tolist() == again.tolist()
    assert one.tolist() != other.tolist()


def test_order_of_rows_does_not_change_where_an_image_goes():
    shas, labels = dataset({"a": 40, "b": 40})
    splits = stratified_split(shas, labels, val_fraction=0.2, test_fraction=0.2, seed=5)
    order = np.random.default_rng(1).permutation(80)
    shuffled = stratified_split([shas[i] for i in order], [labels[i] for i in order],
                                val_fraction=0.2, test_fraction=0.2, seed=5)  # fmt: skip
    assert dict(zip(shas, splits, strict=True)) == {
        shas[i]: side for i, side in zip(order, shuffled, strict=True)
    }


@pytest.mark.parametrize(
    ("shas", "labels", "val", "test", "message"),
    [(["x"], [], 0.1, 0.1, "sha256"), (["x"], ["a"], 0.5, 0.5, "fractions")],
)
def test_bad_input_is_refused(shas, labels, val, test, message):
    with pytest.raises(ValueError, match=message):
        stratified_split(shas, labels, val_fraction=val, test_fraction=test, seed=0)
