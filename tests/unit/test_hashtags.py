"""Hashtag statistics and ranking on a hand-made caption table."""

from __future__ import annotations

import numpy as np
import pytest

from taglens.data.posts import Post
from taglens.params import HashtagParams
from taglens.training.hashtags import HashtagStats, fit_hashtag_stats

CLASSES = ["food", "art"]
# (label, caption, likes): food posts mostly say #pizza, art posts #paint; #yum is on both.
TABLE = [
    ("food", "#pizza #yum #instagood", 10),
    ("food", "#Pizza #f4f dinner", 30),
    ("food", "#pizza #yum #rare", 20),
    ("food", "#pasta", 20),
    ("art", "#paint #yum #instagood", 5),
    ("art", "#paint #f4f", 15),
    ("art", "#sketch", 10),
]


def params(**changes) -> HashtagParams:
    base = {"top_k": 10, "min_support": 2, "smoothing": 1.0, "denylist": ("f4f",),
            "generic": ("instagood",), "generic_weight": 0.3, "image_rankers": False,
            "max_image_tags": 50, "min_lift": 1.2, "low_lift_weight": 0.5,
            "blend_step": 0.1}  # fmt: skip
    return HashtagParams(**{**base, **changes})


def posts(table=TABLE) -> list[Post]:
    return [
        Post(id=str(i), label=label, image=f"images/{i}.jpg", sha256=f"{i:064x}", width=9,
             height=9, caption=caption, likes=likes, source="test")  # fmt: skip
        for i, (label, caption, likes) in enumerate(table)
    ]


@pytest.fixture
def stats() -> HashtagStats:
    return fit_hashtag_stats(posts(), CLASSES, params())


def test_counts_support_threshold_and_class_tags(stats):
    # rare, pasta, sketch appear once: below min_support 2. Class tags are always there.
    assert stats.tags == ["art", "f4f", "food", "instagood", "paint", "pizza", "yum"]
    assert stats.class_posts == [4, 3]
    counts = dict(zip(stats.tags, stats.counts.tolist(), strict=True))
    assert counts["pizza"] == [3, 0] and counts["yum"] == [2, 1] and counts["food"] == [4, 0]
    assert stats.support.tolist() == [3, 2, 4, 2, 2, 3, 3]


def test_smoothed_probability(stats):
    prob = stats.probability(1.0)
    pizza = stats.tags.index("pizza")
    assert prob[pizza].tolist() == pytest.approx([(3 + 1) / (4 + 2), (0 + 1) / (3 + 2)])
    assert stats.probability(0.0)[pizza].tolist() == [0.75, 0.0]


def test_rank_known_order_with_denylist_and_generic_weight(stats):
    ranked = stats.rank(np.array([0.9, 0.1]), params(smoothing=0.0))

    # score = 0.9 P(tag|food) + 0.1 P(tag|art); f4f is denied; instagood is weighted x 0.3,
    # which moves it from 4th (0.258) to 5th (0.078), behind art (0.1)
    assert [r["tag"] for r in ranked] == ["food", "pizza", "yum", "art", "instagood", "paint"]
    unweighted = stats.rank(np.array([0.9, 0.1]), params(smoothing=0.0, generic_weight=1.0))
    assert [r["tag"] for r in unweighted][3] == "instagood"
    scores = {r["tag"]: r["score"] for r in ranked}
    assert scores["food"] == pytest.approx(0.9)
    assert scores["pizza"] == pytest.approx(0.675)
    assert scores["yum"] == pytest.approx(0.9 * 0.5 + 0.1 / 3)
    assert scores["instagood"] == pytest.approx(0.3 * (0.9 / 4 + 0.1 / 3))
    engagement = (10 / 20 + 30 / 20 + 20 / 20) / 3  # likes relative to the food mean of 20
    assert ranked[1] == {"tag": "pizza", "score": pytest.approx(0.675), "posts": 3,
                         "engagement": pytest.approx(engagement)}  # fmt: skip


def test_art_image_ranks_art_tags_first(stats):
    ranked = stats.rank(np.array([0.0, 1.0]), params(top_k=2, smoothing=0.0))
    expected = [("art", 1.0), ("paint", pytest.approx(2 / 3))]
    assert [(r["tag"], r["score"]) for r in ranked] == expected


def test_top_k_is_capped_at_thirty():
    table = [("food", " ".join(f"#t{j}" for j in range(40)), None)] * 2
    stats = fit_hashtag_stats(posts(table), CLASSES, params())
    assert len(stats.tags) == 42  # 40 tags + both class tags
    ranked = stats.rank(np.array([1.0, 0.0]), params(top_k=30, denylist=()))
    assert len(ranked) == 30
    with pytest.raises(ValueError):
        params(top_k=31)
    assert all(r["engagement"] is None for r in ranked)  # no like counts in this table


def test_min_support_at_rank_time_and_denied_class_tag(stats):
    ranked = stats.rank(np.array([0.5, 0.5]), params(min_support=3, denylist=("art",)))
    assert {r["tag"] for r in ranked} == {"food", "pizza", "yum"}


def test_popularity_baseline_is_the_same_for_every_image(stats):
    popular = stats.popular(params(top_k=3))
    assert [r["tag"] for r in popular] == ["food", "art", "pizza"]
    assert popular[0]["score"] == pytest.approx(4 / 7)


def test_save_load_round_trip_and_batch(stats, tmp_path):
    path = stats.save(tmp_path / "hashtags.json")
    loaded = HashtagStats.load(path)
    probs = np.array([[0.2, 0.8], [0.7, 0.3]])

    assert loaded.params == stats.params
    assert loaded.rank_batch(probs) == stats.rank_batch(probs)
    assert loaded.rank_batch(probs)[1] == stats.rank(probs[1])


def test_bad_inputs_say_what_to_do(stats, tmp_path):
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        stats.rank_batch(np.ones((1, 3)))
    with pytest.raises(FileNotFoundError, match="run the train stage"):
        HashtagStats.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"format_version": 99}')
    with pytest.raises(ValueError, match="re-run the train stage"):
        HashtagStats.load(tmp_path / "bad.json")


def test_labels_outside_classes_are_ignored():
    stats = fit_hashtag_stats(posts([*TABLE, ("cats", "#cat #cat2", 1)]), CLASSES, params())
    assert "cat" not in stats.tags and sum(stats.class_posts) == 7
