"""The served ranking chosen on validation posts: floors, the fallback, and what is recorded."""

from __future__ import annotations

import numpy as np
import pytest

from taglens.data.posts import Post
from taglens.model import rankers as fit_rankers
from taglens.model.hashtags import fit_hashtag_stats, own_tags
from taglens.model.rankers import RankingInputs, fit_ranking
from tests.unit.test_hashtags import params

CLASSES = ["food", "art"]


def _posts(n: int, seed: int, class_tags: bool = True) -> list[Post]:
    """Posts whose common tags (#love, #instagood, #yum) do not depend on the class; with
    `class_tags`, food posts also say #pizza and art posts #paint, six times in ten."""
    rng = np.random.default_rng(seed)
    posts = []
    for i in range(n):
        label = CLASSES[i % 2]
        common = (("love", 0.9), ("instagood", 0.8), ("yum", 0.5))
        tags = [tag for tag, rate in common if rng.uniform() < rate]
        if class_tags and rng.uniform() < 0.6:
            tags.append("pizza" if label == "food" else "paint")
        posts.append(
            Post(
                id=f"{seed}-{i}",
                label=label,
                image=f"images/{seed}-{i}.jpg",
                sha256=f"{seed:032x}{i:032x}",
                width=9,
                height=9,
                caption=" ".join(f"#{tag}" for tag in tags),
                source="test",
            )
        )
    return posts


def _inputs(posts: list[Post], probabilities=None) -> RankingInputs:
    return RankingInputs(None, None, [own_tags(post) for post in posts], probabilities)


def test_when_popularity_is_best_on_validation_the_served_ranking_is_popularity():
    # Given class tags in training that validation posts never use, and a confident classifier
    hashtags = params(top_k=3, min_support=2, generic=(), image_rankers=False)
    train, val = _posts(200, 0), _posts(120, 1, class_tags=False)
    stats = fit_hashtag_stats(train, CLASSES, hashtags)
    probs = np.array([[1.0, 0.0] if post.label == "food" else [0.0, 1.0] for post in val])

    # When the ranking is chosen on validation
    blend, report = fit_ranking(stats, _inputs(train), _inputs(val, probs), seed=0)

    # Then popularity beats the class mixture there, and it alone is served
    assert (
        report["rankers"]["popularity"]["recall_at_3"]
        > report["rankers"]["class_mixture"]["recall_at_3"]
    )
    assert blend.weights == {
        "popularity": 1.0,
        "class_mixture": 0.0,
        "tag_model": 0.0,
        "colour_tags": 0.0,
        "neighbours": 0.0,
    }
    assert blend.choice["rankers"] == ["popularity"]
    scores = blend.ranker_scores(stats, hashtags, probs)
    served = stats.rank_scores(
        stats.finish(blend.blend(scores), hashtags, blend.tag_multiplier), hashtags
    )
    popular = [item["tag"] for item in stats.popular(hashtags)]
    assert popular == ["love", "instagood", "yum"]
    assert all([item["tag"] for item in row] == popular for row in served)


def test_when_no_blend_reaches_the_floors_the_best_single_ranker_is_served(monkeypatch):
    # Given a search in which no blend reaches popularity's and the class mixture's scores
    monkeypatch.setattr(fit_rankers, "choose_blend", lambda *args, **kwargs: None)
    hashtags = params(top_k=3, min_support=2, generic=(), image_rankers=False)
    train, val = _posts(200, 0), _posts(120, 1)
    stats = fit_hashtag_stats(train, CLASSES, hashtags)
    probs = np.full((len(val), 2), 0.5)

    blend, report = fit_ranking(stats, _inputs(train), _inputs(val, probs), seed=0)

    # Then the better of the single rankers is served, and the choice says why
    assert blend.choice["served"] == "single"
    assert blend.choice["rankers"] == ["popularity"]
    assert "no blend reached" in blend.choice["why"]
    assert report["rankers"]["blend"] == report["rankers"]["popularity"]
    assert blend.weights["popularity"] == 1.0 and sum(blend.weights.values()) == 1.0


@pytest.mark.parametrize("rule", ["best", "one_se"])
def test_the_blend_is_chosen_by_its_own_rule(monkeypatch, rule):
    # Given hashtags.search.blend_rule set to `rule` (each ranker's rule the other one), and a
    # record of how the blend is chosen
    chosen_with = []
    choose = fit_rankers.choose_blend

    def recording(*args, **kwargs):
        chosen_with.append(args[6])  # choose_blend(scores, finishers, truth, n, k, step, rule, ...)
        return choose(*args, **kwargs)

    monkeypatch.setattr(fit_rankers, "choose_blend", recording)
    defaults = params()
    hashtags = params(
        top_k=3,
        min_support=2,
        generic=(),
        search=defaults.search.model_copy(
            update={"blend_rule": rule, "rule": "best" if rule == "one_se" else "one_se"}
        ),
    )
    train, val = _posts(200, 0), _posts(120, 1)
    stats = fit_hashtag_stats(train, CLASSES, hashtags)
    probs = np.array([[0.8, 0.2] if post.label == "food" else [0.2, 0.8] for post in val])

    # When the ranking is chosen on validation
    blend, _ = fit_ranking(stats, _inputs(train), _inputs(val, probs), seed=0)

    # Then the blend was chosen by that rule, and the choice says so
    assert chosen_with == [rule]
    assert blend.choice["served"] == "blend"
    assert f"hashtags.search.blend_rule ({rule})" in blend.choice["why"]


def test_without_tagged_validation_posts_the_class_mixture_is_served():
    hashtags = params(top_k=3, min_support=2, generic=(), image_rankers=False)
    train = _posts(50, 0)
    stats = fit_hashtag_stats(train, CLASSES, hashtags)
    empty = RankingInputs(None, None, [set(), set()], np.full((2, 2), 0.5))
    blend, _ = fit_ranking(stats, _inputs(train), empty, seed=0)
    assert blend.weights["class_mixture"] == 1.0
    assert "no validation post carries hashtags" in blend.choice["why"]


@pytest.mark.parametrize("generic", [(), ("love",)])
def test_tag_weights_are_candidates_that_start_from_none(generic):
    hashtags = params(top_k=3, min_support=2, generic=generic, generic_weight=0.3)
    stats = fit_hashtag_stats(_posts(50, 0), CLASSES, hashtags)
    low = np.zeros(len(stats.tags), bool)
    low[stats.tags.index("instagood")] = True
    weightings = fit_rankers._tag_weightings(stats, hashtags, low)
    assert weightings[0] == ("none", None)
    names = [name for name, _ in weightings]
    assert names == (
        ["none", "generic", "low_lift", "generic+low_lift"] if generic else ["none", "low_lift"]
    )


def test_evaluation_reports_every_ranker_and_warns_below_popularity(caplog):
    from taglens.lifecycle.evaluation import hashtag_scores
    from taglens.model.predictor import HashtagPredictor
    from taglens.model.rankers import HashtagBlend

    # Given a served ranking that is the class mixture alone, on posts that only use the common
    # tags (the class tags of training never come back)
    hashtags = params(top_k=3, min_support=2, generic=(), image_rankers=False)
    stats = fit_hashtag_stats(_posts(200, 0), CLASSES, hashtags)
    blend = HashtagBlend(
        weights={"class_mixture": 1.0},
        choice={
            "served": "single",
            "rankers": ["class_mixture"],
            "tag_weights": "none",
            "why": "test",
        },
    )
    predictor = HashtagPredictor(
        model=None,
        classes=CLASSES,
        image_size=32,
        stats=stats,
        params=hashtags,
        info={},
        rankers=blend,
    )
    test = _posts(60, 2, class_tags=False)
    probs = np.array([[1.0, 0.0] if post.label == "food" else [0.0, 1.0] for post in test])

    # When the test posts are scored
    with caplog.at_level("WARNING"):
        scores = hashtag_scores(
            predictor, {"probabilities": probs}, [own_tags(post) for post in test]
        )

    # Then every ranker has its row, the served one is the class mixture's, and evaluate warns
    for name in ("popularity", "class_mixture", "blend"):
        assert 0.0 <= scores[f"{name}_hashtag_recall_at_5"] <= 1.0, name
    assert scores["hashtag_recall_at_3"] == scores["class_mixture_hashtag_recall_at_3"]
    assert scores["hashtag_recall_at_3"] < scores["popularity_hashtag_recall_at_3"]
    assert scores["hashtag_ranking"] == {
        "served": "single",
        "rankers": ["class_mixture"],
        "tag_weights": "none",
        "why": "test",
    }
    assert "below popularity" in caplog.text


def test_head_then_tail_ranks_the_heads_best_tags_first_then_the_tails():
    from taglens.model.rankers import head_then_tail

    head = np.array([[0.9, 0.8, 0.1, 0.2, 0.0], [0.1, 0.2, 0.3, -np.inf, 0.5]])
    tail = np.array([[0.1, 0.2, 0.9, 0.3, 0.8], [0.9, 0.8, 0.1, -np.inf, 0.2]])
    out = head_then_tail(head, tail, 2)
    assert [list(np.argsort(-row, kind="stable")) for row in out] == [
        [0, 1, 2, 4, 3],
        [4, 2, 0, 1, 3],
    ]
    assert out[0, 2] == 0.9 and out[0, 4] == 0.8  # the tail keeps its own scores
    assert out[0, 0] > out[0, 1] > out[0, 2]  # the head keeps its order, above every tail tag
    assert out[1, 3] == -np.inf  # ineligible stays ineligible
    np.testing.assert_array_equal(head_then_tail(head, head, 2).argsort(1), head.argsort(1))


def test_the_tail_prefers_the_image_rankers_when_recall_cannot_tell_them_apart():
    """Tags 0-4 are every post's head; the tail's last slot (top_k 6) goes to tag 5 or 6.
    The class mixture and the colour model find as many tags there (tag 5 on half the posts,
    tag 6 on the other half): the colour model is served. A tail that finds fewer is not."""
    from taglens.model.rankers import choose_tail

    n, tags = 40, 8
    truth = np.zeros((n, tags))
    truth[:, :5] = 1.0
    truth[: n // 2, 5] = 1.0
    truth[n // 2 :, 6] = 1.0
    n_truth = truth.sum(1)
    base = np.tile(np.linspace(1.0, 0.6, tags), (n, 1))  # tags 0-4 above the rest
    mixture = base.copy()  # tag 7 scores 0.6
    mixture[:, 5], mixture[:, 6] = 0.7, 0.5  # the class's tag 5 for every post: half right
    colour = base.copy()
    first = np.arange(n) < n // 2
    colour[:, 5] = np.where(first, 0.9, 0.0)  # the photo's own tag: right on every post
    colour[:, 6] = np.where(first, 0.0, 0.9)
    scores = {"class_mixture": mixture, "colour_tags": colour}
    floor = np.full(n, 5.5 / 6)
    weights, summary = choose_tail(
        scores, lambda raw: raw, {"class_mixture": 1.0}, truth, n_truth, 6, 0.5, floor
    )
    assert weights == {"class_mixture": 0.0, "colour_tags": 1.0}
    assert summary["head_recall"] == pytest.approx(5.5 / 6)
    assert summary["chosen_recall"] == summary["best_recall"] == pytest.approx(1.0)
    # the colour model wrong on every post: the head's own blend stays (no tail)
    scores["colour_tags"] = colour[:, [0, 1, 2, 3, 4, 6, 5, 7]]
    weights, summary = choose_tail(
        scores, lambda raw: raw, {"class_mixture": 1.0}, truth, n_truth, 6, 0.5, floor
    )
    assert weights is None and summary["chosen_recall"] == pytest.approx(5.5 / 6)
    # no tail in a list of HASHTAG_K tags
    assert (
        choose_tail(scores, lambda raw: raw, {"class_mixture": 1.0}, truth, n_truth, 5, 0.5, floor)[
            0
        ]
        is None
    )


def test_a_blend_with_a_tail_saves_loads_and_serves_head_then_tail(tmp_path):
    from taglens.model.rankers import HashtagBlend

    class Stats:  # finish: no eligibility rule, no tag weights
        def finish(self, raw, params, multiplier=None):
            return np.asarray(raw, np.float64)

    scores = {
        "class_mixture": np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.1]]),
        "colour_tags": np.array([[0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.9]]),
    }
    blend = HashtagBlend(
        weights={"class_mixture": 1.0}, tail_weights={"class_mixture": 0.5, "colour_tags": 0.5}
    )
    loaded = HashtagBlend.load(blend.save(tmp_path / "rankers.npz"))
    assert loaded.tail_weights == {
        "popularity": 0.0,
        "class_mixture": 0.5,
        "tag_model": 0.0,
        "colour_tags": 0.5,
        "neighbours": 0.0,
    }
    final = loaded.final(Stats(), None, scores)
    assert list(np.argsort(-final[0])) == [0, 1, 2, 3, 4, 6, 5]  # the tail lifts tag 6
    # the head's five keep the head's own scores, lifted only to order the list; the others
    # show the tail's (what the page and batch predict print: never above 1)
    placement = loaded.placed(Stats(), None, scores)
    np.testing.assert_array_equal(placement.final, final)
    assert placement.by_head[0].tolist() == [True] * 5 + [False] * 2
    np.testing.assert_allclose(placement.shown[0], [0.9, 0.8, 0.7, 0.6, 0.5, 0.25, 0.5])
    assert placement.head_weights == loaded.weights
    assert placement.tail_weights == loaded.tail_weights
    # a NaN (a broken engine's score) is no score: the head's five still come first
    broken = {name: value.copy() for name, value in scores.items()}
    broken["colour_tags"][0, 5] = np.nan
    final = loaded.final(Stats(), None, broken)
    assert list(np.argsort(-final[0]))[:5] == [0, 1, 2, 3, 4] and final[0, 5] == -np.inf
    placement = loaded.placed(Stats(), None, broken)
    assert placement.by_head[0].tolist() == [True] * 5 + [False] * 2
    assert placement.shown[0, 5] == -np.inf
    plain = HashtagBlend(weights={"class_mixture": 1.0})
    assert HashtagBlend.load(plain.save(tmp_path / "plain.npz")).tail_weights is None
    np.testing.assert_array_equal(plain.final(Stats(), None, scores), scores["class_mixture"])
