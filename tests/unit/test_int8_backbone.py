"""Featurize's INT8 photos are clean's own training and validation photos, chosen stably."""

from __future__ import annotations

import pytest

from taglens.data.posts import Post
from taglens.features.int8_backbone import calibration_and_validation, prepare
from taglens.features.quantize import QuantizeError
from taglens.features.split import content_split


def _posts(count: int, classes: int = 3) -> list[Post]:
    return [
        Post(
            id=f"p{n}",
            label=f"c{n % classes}",
            image=f"images/{n:064x}.jpg",
            sha256=f"{n:064x}",
            width=8,
            height=8,
            owner=f"o{n // 2}" if n % 3 else None,
            source="test",
        )
        for n in range(count)
    ]


def test_calibration_and_validation_photos_are_on_the_side_clean_puts_them(tiny_params):
    # Given 400 posts (some sharing an owner) and clean's fractions
    posts = _posts(400)
    clean = tiny_params.clean
    sides = content_split(
        [p.sha256 for p in posts],
        [p.owner for p in posts],
        val_fraction=clean.val_fraction,
        test_fraction=clean.test_fraction,
        seed=7,
    )
    side_of = {post.sha256: side for post, side in zip(posts, sides, strict=True)}
    # When featurize picks its INT8 photos
    train, val = calibration_and_validation(posts, clean, 7, 50, 20)
    # Then they are training and validation photos by clean's split, never test photos
    assert len(train) == 50 and len(val) == 20
    assert {side_of[p.sha256] for p in train} == {"train"}
    assert {side_of[p.sha256] for p in val} == {"val"}
    # and the choice does not depend on the posts' order
    again = calibration_and_validation(list(reversed(posts)), clean, 7, 50, 20)
    assert again == (train, val)


def test_int8_without_two_classes_or_validation_photos_is_refused_before_any_model(
    tiny_params, tmp_path
):
    featurize = tiny_params.featurize.model_copy(update={"engine": "openvino-int8"})
    with pytest.raises(QuantizeError, match=r"it needs two classes and some validation photos"):
        prepare(
            tiny_params.model,
            featurize,
            tiny_params.clean,
            seed=0,
            weights_identity="x",
            posts=_posts(40, classes=1),
            raw=tmp_path,
            cache_dir=tmp_path,
        )
