"""Hashtag statistics and ranking on a hand-made caption table."""

from __future__ import annotations

import numpy as np
import pytest

from taglens.data.posts import Post
from taglens.model.hashtags import HashtagStats, fit_hashtag_stats
from taglens.params import HashtagParams

CLASSES = ["food", "art"]
# (label, caption, likes): food posts mostly say #pizza, art posts #paint; #yum is on both. The
# last two posts have no caption: they count as posts of their class, never as tag evidence.
TABLE = [
    ("food", "#pizza #yum #instagood #food", 10),
    ("food", "#Pizza #f4f dinner", 30),
    ("food", "#pizza #yum #rare", 20),
    ("food", "#pasta #food", 20),
    ("art", "#paint #yum #instagood", 5),
    ("art", "#paint #f4f", 15),
    ("art", "#sketch", 10),
    ("food", "", 500),
    ("art", "no tags here", 500),
]


def params(**changes) -> HashtagParams:
    from tests.helpers.params import tiny_params

    base = tiny_params().hashtags.model_dump()
    base.update(
        {
            "top_k": 10,
            "min_support": 2,
            "smoothing": 1.0,
            "denylist": ("f4f",),
            "generic": ("instagood",),
            "generic_weight": 0.3,
            "image_rankers": False,
        }
    )
    return HashtagParams(**{**base, **changes})


def posts(table=TABLE) -> list[Post]:
    return [
        Post(
            id=str(i),
            label=label,
            image=f"images/{i}.jpg",
            sha256=f"{i:064x}",
            width=9,
            height=9,
            caption=caption,
            likes=likes,
            source="test",
        )
        for i, (label, caption, likes) in enumerate(table)
    ]


@pytest.fixture
def stats() -> HashtagStats:
    return fit_hashtag_stats(posts(), CLASSES, params())


def test_counts_only_the_authors_own_tags_of_captioned_posts(stats):
    # rare, pasta, sketch appear once: below min_support 2. Class tags are always there, but
    # count only where an author wrote them (#food twice; #art never).
    assert stats.tags == ["art", "f4f", "food", "instagood", "paint", "pizza", "yum"]
    assert stats.class_posts == [5, 4]
    assert stats.captioned_posts == [4, 3]
    counts = dict(zip(stats.tags, stats.counts.tolist(), strict=True))
    assert counts["pizza"] == [3, 0] and counts["yum"] == [2, 1] and counts["food"] == [2, 0]
    assert counts["art"] == [0, 0]
    assert stats.support.tolist() == [0, 2, 2, 2, 2, 3, 3]


def test_both_estimators_of_p_tag_given_class(stats):
    pizza = stats.tags.index("pizza")
    # posts: the share of the class's captioned posts, smoothed per post
    prob = stats.probability(1.0)
    assert prob[pizza].tolist() == pytest.approx([(3 + 1) / (4 + 2), (0 + 1) / (3 + 2)])
    assert stats.probability(0.0)[pizza].tolist() == [0.75, 0.0]
    # uses: the tag's share of the class's tag uses (food: f4f 1, food 2, instagood 1, pizza 3,
    # yum 2: 9 uses in the vocabulary)
    uses = stats.probability(1.0, "uses")
    assert uses[pizza].tolist() == pytest.approx([3 / 9, 0.0])
    assert uses.sum(axis=0).tolist() == pytest.approx([1.0, 1.0])


def test_a_class_without_captions_suggests_its_own_tag():
    table = [("food", "#pizza #yum", 1), ("food", "#pizza", 1), ("art", "", 1), ("art", "", 1)]
    stats = fit_hashtag_stats(posts(table), CLASSES, params(min_support=1))
    assert stats.captioned_posts == [2, 0]
    for estimator in ("posts", "uses"):
        prob = stats.probability(1.0, estimator)
        assert prob[:, 1].tolist() == [float(tag == "art") for tag in stats.tags]
    assert [r["tag"] for r in stats.rank(np.array([0.0, 1.0]), params(top_k=1))] == ["art"]


def test_sharpening_moves_the_mixture_towards_the_top_class(stats):
    probs = np.array([[0.6, 0.4]])
    paint = stats.tags.index("paint")
    flat = stats.mixture(probs, params(smoothing=0.0))
    sharp = stats.mixture(probs, params(smoothing=0.0), sharpen=4.0)
    q = np.array([0.6**4, 0.4**4]) / (0.6**4 + 0.4**4)
    assert flat[0, paint] == pytest.approx(0.4 * 2 / 3)
    assert sharp[0, paint] == pytest.approx(q[1] * 2 / 3)


def test_rank_known_order_with_denylist_and_no_hand_weights(stats):
    ranked = stats.rank(np.array([0.9, 0.1]), params(smoothing=0.0))

    # score = 0.9 P(tag|food) + 0.1 P(tag|art); f4f is denied; the generic list weighs nothing
    # by itself (a weighting is a candidate the ranking search may choose)
    assert [r["tag"] for r in ranked] == ["pizza", "yum", "food", "instagood", "paint", "art"]
    scores = {r["tag"]: r["score"] for r in ranked}
    assert scores["pizza"] == pytest.approx(0.675)
    assert scores["food"] == pytest.approx(0.45)
    assert scores["yum"] == pytest.approx(0.9 * 0.5 + 0.1 / 3)
    assert scores["instagood"] == pytest.approx(0.9 / 4 + 0.1 / 3, abs=1e-6)  # rounded to 6
    engagement = (10 / 20 + 30 / 20 + 20 / 20) / 3  # likes relative to the food mean of 20
    assert ranked[0] == {
        "tag": "pizza",
        "score": pytest.approx(0.675),
        "posts": 3,
        "engagement": pytest.approx(engagement),
    }
    weights = stats.tag_weights(("instagood",), 0.3)
    weighted = stats.finish(
        stats.mixture(np.array([[0.9, 0.1]]), params(smoothing=0.0)), params(smoothing=0.0), weights
    )
    assert weighted[0, stats.tags.index("instagood")] == pytest.approx(0.3 * (0.9 / 4 + 0.1 / 3))


def test_art_image_ranks_art_tags_first(stats):
    ranked = stats.rank(np.array([0.0, 1.0]), params(top_k=2, smoothing=0.0))
    # yum and instagood tie at 1/3: the more used tag (yum) goes first
    expected = [("paint", pytest.approx(2 / 3)), ("yum", pytest.approx(1 / 3))]
    assert [(r["tag"], r["score"]) for r in ranked] == expected


def test_top_k_is_capped_at_thirty():
    table = [("food", " ".join(f"#t{j}" for j in range(40)), None)] * 2
    stats = fit_hashtag_stats(posts(table), CLASSES, params())
    assert len(stats.tags) == 42  # 40 tags + both class tags (suggested though never written)
    ranked = stats.rank(np.array([1.0, 0.0]), params(top_k=30, denylist=()))
    assert len(ranked) == 30
    with pytest.raises(ValueError):
        params(top_k=31)
    assert all(r["engagement"] is None for r in ranked)  # no like counts in this table


def test_min_support_at_rank_time_and_denied_class_tag(stats):
    ranked = stats.rank(np.array([0.5, 0.5]), params(min_support=3, denylist=("food",)))
    assert {r["tag"] for r in ranked} == {"art", "pizza", "yum"}


def test_popularity_baseline_is_the_same_for_every_image(stats):
    # the share of the 7 captioned posts carrying the tag, unweighted (instagood is generic)
    popular = stats.popular(params(top_k=4))
    assert [r["tag"] for r in popular] == ["pizza", "yum", "food", "instagood"]
    assert popular[0]["score"] == pytest.approx(3 / 7)
    assert stats.popularity()[stats.tags.index("instagood")] == pytest.approx(2 / 7)


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
    assert "cat" not in stats.tags and sum(stats.class_posts) == 9


def test_a_nan_score_is_no_score_and_keeps_the_finite_tags(stats):
    # Given final scores where a broken engine left NaN for two tags
    finished = stats.finish(stats.mixture(np.array([[0.9, 0.1]]), params(smoothing=0.0)), params())
    clean = stats.rank_scores(finished, params(top_k=3))[0]
    broken = finished.copy()
    broken[0, [stats.tags.index("paint"), stats.tags.index("art")]] = np.nan
    # When they are ranked, Then the list holds the same finite tags as without the NaNs
    ranked = stats.rank_scores(broken, params(top_k=3))[0]
    assert [r["tag"] for r in ranked] == [r["tag"] for r in clean] == ["pizza", "yum", "food"]
    everything_nan = np.full_like(finished, np.nan)
    assert stats.rank_scores(everything_nan, params(top_k=3)) == [[]]
