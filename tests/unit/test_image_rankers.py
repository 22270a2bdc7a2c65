"""Image rankers, the blend chosen on validation, low-lift tags and the logistic head."""

from __future__ import annotations

import numpy as np
import pytest

from taglens.training.blend import ImageRankers, choose_weights, ranking_scores
from taglens.training.metrics import hashtag_metrics
from taglens.training.tag_rankers import (
    NeighbourTags,
    TagModel,
    class_lift,
    fit_tag_model,
    image_lift,
    tag_matrix,
    unit_rows,
)

VOCAB = ["cat", "dog", "red", "blue", "follow"]


def test_tag_matrix_marks_known_tags_only():
    matrix = tag_matrix([{"cat", "red", "unknown"}, set()], VOCAB)
    assert matrix.tolist() == [[1, 0, 1, 0, 0], [0, 0, 0, 0, 0]]


def test_ranking_scores_agree_with_hashtag_metrics():
    rng = np.random.default_rng(0)
    scores = rng.uniform(size=(40, len(VOCAB)))
    truth_sets = [set(rng.choice(VOCAB + ["other"], size=rng.integers(0, 4), replace=False))
                  for _ in range(40)]  # fmt: skip
    ranked = [[VOCAB[i] for i in np.argsort(-row, kind="stable")] for row in scores]
    expected = hashtag_metrics(ranked, truth_sets, k=5)
    got = ranking_scores(scores, tag_matrix(truth_sets, VOCAB),
                         np.array([len(t) for t in truth_sets]), top_k=5)  # fmt: skip
    assert got["precision_at_1"] == pytest.approx(expected["hashtag_precision_at_1"])
    assert got["recall_at_5"] == pytest.approx(expected["hashtag_recall_at_5"])
    assert got["accuracy_at_5"] == pytest.approx(expected["hashtag_accuracy_at_5"])


def _colour_world(n: int, seed: int):
    """Posts of one class whose colour tag (red or blue) shows only in the image's features."""
    rng = np.random.default_rng(seed)
    red = rng.uniform(size=n) < 0.5
    features = np.c_[red * 2.0 - 1.0, rng.normal(0, 0.3, (n, 3))].astype("float32")
    features[:, 0] += rng.normal(0, 0.3, n)
    tags = [{"cat", "red" if r else "blue"} | ({"follow"} if rng.uniform() < 0.3 else set())
            for r in red]  # fmt: skip
    return features, tags


def test_tag_model_and_neighbours_learn_an_image_specific_tag():
    x_train, tags_train = _colour_world(300, 0)
    x_val, tags_val = _colour_world(100, 1)
    y_train, y_val = tag_matrix(tags_train, VOCAB), tag_matrix(tags_val, VOCAB)
    model = fit_tag_model((x_train, y_train), (x_val, y_val), max_tags=10, seed=0)
    assert set(VOCAB[i] for i in model.columns) == {"cat", "red", "blue", "follow"}
    predicted = model.predict(x_val, len(VOCAB))
    is_red = y_val[:, 2] == 1
    assert np.mean((predicted[:, 2] > predicted[:, 3]) == is_red) > 0.9
    assert np.all(predicted[:, 1] == 0)  # "dog" was never used: not covered, scores 0
    neighbours = NeighbourTags(unit_rows(x_train), y_train, k=10)
    near = neighbours.predict(x_val)
    assert np.mean((near[:, 2] > near[:, 3]) == is_red) > 0.9
    np.testing.assert_allclose(near[:, 0], 1.0, rtol=1e-5)  # every neighbour carries "cat"


def test_neighbours_can_leave_out_the_query_itself():
    reference = unit_rows(np.eye(3, dtype="float32"))
    tags = np.eye(3, dtype="float32")
    with_self = NeighbourTags(reference, tags, k=1).predict(reference)
    without = NeighbourTags(reference, tags, k=1).predict(reference, exclude_self=True)
    np.testing.assert_allclose(with_self, np.eye(3))
    assert np.all(np.diag(without) == 0)


def test_lift_separates_class_and_image_tags_from_uniform_ones():
    counts = np.array([[50, 0], [25, 25], [10, 10]])  # class tag, uniform tag, uniform tag
    lift = class_lift(counts, np.array([50, 50]))
    np.testing.assert_allclose(lift, [2.0, 1.0, 1.0])
    carried = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], "float32")
    scores = np.array([[0.9, 0.2], [0.1, 0.2], [0.9, 0.2], [0.1, 0.2]])
    np.testing.assert_allclose(image_lift(scores, carried), [1.8, 1.0])


def test_the_blend_weights_an_image_ranker_only_where_it_helps():
    truth_sets = [{"cat", "red"}, {"cat", "blue"}] * 20
    truth = tag_matrix(truth_sets, VOCAB)
    n_truth = np.array([2] * 40)
    mixture = np.tile([0.9, 0.1, 0.5, 0.45, 0.6], (40, 1))  # class-level: same for every post
    useful = truth * 0.8  # knows each post's colour
    useless = np.tile([0.0, 0.9, 0.0, 0.0, 0.9], (40, 1))  # pushes wrong tags
    identity = lambda raw: raw  # noqa: E731
    weights, scores = choose_weights({"class_mixture": mixture, "tag_model": useful}, identity,
                                     truth, n_truth, top_k=2, step=0.25)  # fmt: skip
    assert weights["tag_model"] > 0 and scores["recall_at_2"] == 1.0
    weights, _ = choose_weights({"class_mixture": mixture, "tag_model": useless}, identity,
                                truth, n_truth, top_k=2, step=0.25)  # fmt: skip
    assert weights == {"tag_model": 0.0, "class_mixture": 1.0}
    unreachable = {"precision_at_1": 1.1, "recall_at_5": 1.0, "accuracy_at_5": 1.0}
    assert choose_weights({"class_mixture": mixture, "tag_model": useless}, identity, truth,
                          n_truth, top_k=2, step=0.25, floor=unreachable) is None


def test_image_rankers_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    model = TagModel(rng.normal(size=4).astype("float32"), np.ones(4, "float32"),
                     rng.normal(size=(4, 2)).astype("float32"), np.zeros(2, "float32"),
                     np.array([0, 3]))  # fmt: skip
    neighbours = NeighbourTags(unit_rows(rng.normal(size=(6, 4))), tag_matrix(
        [{"cat"}, {"dog"}, {"red"}, {"blue"}, {"cat", "red"}, set()], VOCAB), k=3)
    rankers = ImageRankers(model, None, neighbours,
                           {"class_mixture": 0.7, "tag_model": 0.1, "neighbours": 0.2},
                           np.array([1, 1, 1, 1, 0.5]))  # fmt: skip
    loaded = ImageRankers.load(rankers.save(tmp_path / "rankers.npz"))
    x = rng.normal(size=(3, 4)).astype("float32")
    mixture = rng.uniform(size=(3, 5))
    before = rankers.ranker_scores(mixture, x, None)
    after = loaded.ranker_scores(mixture, x, None)
    assert set(after) == {"class_mixture", "tag_model", "neighbours"}
    for name in before:
        np.testing.assert_allclose(after[name], before[name], atol=2e-3)  # float16 reference
    assert loaded.weights["colour_tags"] == 0.0 and loaded.weights["class_mixture"] == 0.7
    np.testing.assert_allclose(loaded.blend(after), rankers.blend(before), atol=2e-3)
    np.testing.assert_array_equal(loaded.tag_multiplier, [1, 1, 1, 1, 0.5])


def test_not_a_rankers_file_is_refused(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(ValueError, match="re-run"):
        ImageRankers.load(tmp_path / "bad.npz")


def test_low_lift_tags_are_found_from_counts_and_image_scores():
    from taglens.training.fit_rankers import low_lift_tags
    from taglens.training.hashtags import HashtagStats
    from tests.helpers.params import tiny_params

    params = tiny_params().hashtags
    # cat: a class tag; red: as common in both classes but follows the image; follow: uniform
    stats = HashtagStats(["cat", "dog"], [50, 50], ["cat", "red", "follow"],
                         np.array([[50, 0], [20, 20], [10, 10]]), [None] * 3, params)
    carried = np.array([[1, 1, 0], [1, 0, 1], [1, 1, 1], [1, 0, 0]], "float32")
    image = np.array([[0.9, 0.8, 0.2], [0.9, 0.1, 0.2], [0.9, 0.8, 0.2], [0.9, 0.1, 0.2]])
    assert low_lift_tags(stats, [image], carried, min_lift=1.2).tolist() == [False, False, True]
    assert low_lift_tags(stats, [], carried, min_lift=1.2).tolist() == [False, True, True]
