"""The synthetic demo source: deterministic, ten classes, images that decode, hashtags present."""

import io

import numpy as np
import pytest
from PIL import Image

from taglens.data.sources.demo import generate_demo
from taglens.params import PAPER_CLASSES, DemoSourceParams

PARAMS = DemoSourceParams(images_per_class=6, image_size=64)


def test_same_seed_same_images_other_seed_differs():
    first = list(generate_demo(PARAMS, PAPER_CLASSES, seed=7))
    again = list(generate_demo(PARAMS, PAPER_CLASSES, seed=7))
    other = list(generate_demo(PARAMS, PAPER_CLASSES, seed=8))
    assert [item.data for item in first] == [item.data for item in again]
    assert [item.caption for item in first] == [item.caption for item in again]
    assert sum(a.data != b.data for a, b in zip(first, other, strict=True)) > len(first) // 2


def test_ten_classes_with_the_requested_count():
    items = list(generate_demo(PARAMS, PAPER_CLASSES, seed=1))
    labels = [item.label for item in items]
    assert sorted(set(labels)) == sorted(PAPER_CLASSES)
    assert all(labels.count(label) == 6 for label in PAPER_CLASSES)
    assert len({item.id for item in items}) == len(items)


def test_images_decode_at_the_requested_size():
    for item in generate_demo(PARAMS, PAPER_CLASSES, seed=1):
        image = Image.open(io.BytesIO(item.data))
        image.load()
        assert image.size == (64, 64)
        assert image.mode == "RGB"


def test_captions_carry_the_class_hashtag_and_more():
    for item in generate_demo(PARAMS, PAPER_CLASSES, seed=3):
        assert item.hashtags[0] == item.label
        assert len(item.hashtags) >= 3
        assert f"#{item.label}" in item.caption
        assert item.likes is not None and item.likes >= 0


@pytest.mark.parametrize("label", PAPER_CLASSES)
def test_classes_are_visually_distinct(label):
    # The mean colour of a class's images is closer to its own class mean than to any other.
    items = list(
        generate_demo(DemoSourceParams(images_per_class=12, image_size=48), PAPER_CLASSES, 5)
    )
    means = {}
    for name in PAPER_CLASSES:
        pixels = [
            np.asarray(Image.open(io.BytesIO(i.data)), float).mean((0, 1))
            for i in items
            if i.label == name
        ]
        means[name] = np.median(pixels, axis=0)
    own = means[label]
    others = [np.linalg.norm(own - means[name]) for name in PAPER_CLASSES if name != label]
    assert min(others) > 10
