"""The split: a pure function of each photo's content, stable as data grows, groups together."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest

from taglens.features.split import content_split, group_key, side_of, unit_position


def sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def split(shas, owners=None, seed=42, val=0.15, test=0.15):
    return content_split(shas, owners, val_fraction=val, test_fraction=test, seed=seed)


def test_fractions_are_met_in_expectation():
    shas = [sha(i) for i in range(20_000)]
    counts = Counter(split(shas).tolist())
    # binomial sd for 20k rows at 0.15 is about 50: 4 sd is 200
    assert abs(counts["test"] - 3000) < 200 and abs(counts["val"] - 3000) < 200
    assert counts["train"] == 20_000 - counts["test"] - counts["val"]


def test_adding_photos_never_moves_an_existing_one():
    week1 = [sha(i) for i in range(300)]
    week2 = week1 + [sha(i) for i in range(300, 700)]
    week3 = [sha(i) for i in range(650, 1000)] + week2[::-1]  # more photos, any order
    one, two, three = split(week1), split(week2), split(week3)
    assert two[:300].tolist() == one.tolist()
    where = dict(zip(week3, three.tolist(), strict=True))
    assert [where[s] for s in week2] == two.tolist()


def test_a_photo_side_is_its_keyed_hash_cut_at_the_fractions():
    shas = [sha(i) for i in range(50)]
    expected = [side_of(unit_position(group_key(s), 7), 0.2, 0.1) for s in shas]
    assert split(shas, seed=7, val=0.2, test=0.1).tolist() == expected
    assert side_of(0.05, 0.2, 0.1) == "test" and side_of(0.25, 0.2, 0.1) == "val"
    assert side_of(0.31, 0.2, 0.1) == "train"


def test_duplicates_never_straddle_splits():
    unique = [sha(i) for i in range(100)]
    picks = np.random.default_rng(0).integers(0, 100, size=300)  # each image about three times
    shas = [unique[i] for i in picks]
    owners = [f"o{i % 7}" if i % 2 else None for i in range(300)]  # some copies with an owner
    splits = split(shas, owners, val=0.2, test=0.2)
    sides: dict[str, set[str]] = {}
    for s, side in zip(shas, splits, strict=True):
        sides.setdefault(s, set()).add(side)
    assert all(len(v) == 1 for v in sides.values())


def test_posts_of_one_owner_share_a_side_and_owners_spread_over_sides():
    shas = [sha(i) for i in range(600)]
    owners = [f"owner{i % 60}" for i in range(600)]
    splits = split(shas, owners, val=0.2, test=0.2)
    by_owner: dict[str, set[str]] = {}
    for owner, side in zip(owners, splits, strict=True):
        by_owner.setdefault(owner, set()).add(side)
    assert all(len(v) == 1 for v in by_owner.values())
    assert {side for v in by_owner.values() for side in v} == {"train", "val", "test"}


def test_the_seed_changes_the_split_and_the_row_order_does_not():
    shas = [sha(i) for i in range(200)]
    assert split(shas, seed=42).tolist() == split(shas, seed=42).tolist()
    assert split(shas, seed=42).tolist() != split(shas, seed=43).tolist()
    order = np.random.default_rng(1).permutation(200)
    shuffled = split([shas[i] for i in order])
    assert dict(zip(shas, split(shas).tolist(), strict=True)) == {
        shas[i]: side for i, side in zip(order, shuffled.tolist(), strict=True)
    }


@pytest.mark.parametrize(
    ("shas", "owners", "val", "test", "message"),
    [(["x"], [], 0.1, 0.1, "owners"), (["x"], None, 0.5, 0.5, "fractions")],
)
def test_bad_input_is_refused(shas, owners, val, test, message):
    with pytest.raises(ValueError, match=message):
        content_split(shas, owners, val_fraction=val, test_fraction=test, seed=0)
