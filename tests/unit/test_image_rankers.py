"""Image rankers, the blend chosen on validation, low-lift tags and the logistic head."""

from __future__ import annotations

import numpy as np
import pytest

from taglens.model.rankers import (
    HashtagBlend,
    NeighbourTags,
    TagModel,
    choose_blend,
    class_lift,
    fit_sigmoids,
    fit_tag_model,
    image_lift,
    post_scores,
    ranking_scores,
    reaches,
    sigmoid_loss,
    simplex,
    tag_matrix,
    unit_rows,
)
from taglens.training.metrics import hashtag_metrics

VOCAB = ["cat", "dog", "red", "blue", "follow"]


def test_tag_matrix_marks_known_tags_only():
    matrix = tag_matrix([{"cat", "red", "unknown"}, set()], VOCAB)
    assert matrix.tolist() == [[1, 0, 1, 0, 0], [0, 0, 0, 0, 0]]


def test_ranking_scores_agree_with_hashtag_metrics():
    rng = np.random.default_rng(0)
    scores = rng.uniform(size=(40, len(VOCAB)))
    truth_sets = [
        set(rng.choice(VOCAB + ["other"], size=rng.integers(0, 4), replace=False))
        for _ in range(40)
    ]
    ranked = [[VOCAB[i] for i in np.argsort(-row, kind="stable")] for row in scores]
    expected = hashtag_metrics(ranked, truth_sets, k=5)
    got = ranking_scores(
        scores, tag_matrix(truth_sets, VOCAB), np.array([len(t) for t in truth_sets]), top_k=5
    )
    assert got["precision_at_1"] == pytest.approx(expected["hashtag_precision_at_1"])
    assert got["recall_at_5"] == pytest.approx(expected["hashtag_recall_at_5"])
    assert got["accuracy_at_5"] == pytest.approx(expected["hashtag_accuracy_at_5"])


def _colour_world(n: int, seed: int):
    """Posts of one class whose colour tag (red or blue) shows only in the image's features."""
    rng = np.random.default_rng(seed)
    red = rng.uniform(size=n) < 0.5
    features = np.c_[red * 2.0 - 1.0, rng.normal(0, 0.3, (n, 3))].astype("float32")
    features[:, 0] += rng.normal(0, 0.3, n)
    tags = [
        {"cat", "red" if r else "blue"} | ({"follow"} if rng.uniform() < 0.3 else set())
        for r in red
    ]
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
    neighbours = NeighbourTags(unit_rows(x_train), y_train, k=10, power=1.0)
    near = neighbours.predict(x_val)
    assert np.mean((near[:, 2] > near[:, 3]) == is_red) > 0.9
    np.testing.assert_allclose(near[:, 0], 1.0, rtol=1e-5)  # every neighbour carries "cat"


def _sigmoid_world(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Standardised features and the 0/1 tags a fixed logistic model draws from them."""
    rng = np.random.default_rng(seed)
    truth = np.random.default_rng(99).normal(size=(16, 6))
    x = rng.normal(size=(n, 16)).astype("float32")
    probs = 1.0 / (1.0 + np.exp(-(x @ truth * 0.5 - 1.5)))
    return x, (rng.uniform(size=probs.shape) < probs).astype("float32")


@pytest.mark.slow
def test_the_tag_models_fit_reaches_what_keras_fit_reaches():
    import keras

    from taglens.model import rankers

    train, val, test = (_sigmoid_world(n, seed) for n, seed in ((300, 0), (100, 1), (2000, 2)))
    kernel, bias = fit_sigmoids(train, val, seed=0)
    # the same model, loss, optimizer and early stopping through Keras' fit
    keras.utils.set_random_seed(0)
    penalty = keras.regularizers.l2(rankers.TAG_MODEL_L2)
    dense = keras.layers.Dense(6, activation="sigmoid", kernel_regularizer=penalty)
    model = keras.Sequential([keras.Input((16,)), dense])
    rate, beta1, beta2, epsilon = rankers.TAG_MODEL_ADAM
    model.compile(keras.optimizers.Adam(rate, beta1, beta2, epsilon), "binary_crossentropy")
    stop = keras.callbacks.EarlyStopping(
        patience=rankers.TAG_MODEL_PATIENCE, restore_best_weights=True
    )
    model.fit(
        *train,
        validation_data=val,
        epochs=rankers.TAG_MODEL_EPOCHS,
        batch_size=rankers.TAG_MODEL_BATCH,
        verbose=0,
        callbacks=[stop],
    )
    reference = sigmoid_loss(*test, *dense.get_weights())
    start = sigmoid_loss(*test, np.zeros_like(kernel), np.zeros_like(bias))  # log 2
    assert sigmoid_loss(*test, kernel, bias) == pytest.approx(reference, abs=0.01)
    assert sigmoid_loss(*test, kernel, bias) < start - 0.1


def test_the_tag_model_keeps_its_best_validation_epoch(monkeypatch):
    from taglens.model import rankers

    train = _sigmoid_world(200, 0)
    # the training tags flipped as validation: its loss rises as the fit learns, from epoch 1 on
    flipped = (train[0][:60], 1 - train[1][:60])
    monkeypatch.setattr(rankers, "TAG_MODEL_PATIENCE", 1000)  # never stop: run every epoch
    monkeypatch.setattr(rankers, "TAG_MODEL_EPOCHS", 1)
    first = sigmoid_loss(*flipped, *fit_sigmoids(train, flipped, seed=0))
    monkeypatch.setattr(rankers, "TAG_MODEL_EPOCHS", 60)
    learned = sigmoid_loss(*flipped, *fit_sigmoids(train, train, seed=0))
    kept = sigmoid_loss(*flipped, *fit_sigmoids(train, flipped, seed=0))
    assert learned > first + 0.05  # 60 epochs' weights are far worse on it than the first's
    assert kept == pytest.approx(first)  # the same first epoch (same seed) is the one kept


def test_a_feature_no_training_post_varies_in_does_not_move_the_tags():
    # Given training and validation posts whose feature 5 is always 0 (a colour bin no photo
    # fills), fitted for a few epochs only (weights near their random start, as an early stop
    # on noisy tags leaves them)
    x, y = _sigmoid_world(120, 0)
    x[:, 5] = 0.0
    xv, yv = _sigmoid_world(60, 1)
    xv[:, 5] = 0.0
    model = fit_tag_model((x, y), (xv, yv), max_tags=6, seed=0)
    # When a new photo fills it
    filled = xv.copy()
    filled[:, 5] = 0.3
    # Then its tags score as without it: the feature's weight is 0, not its starting value
    assert np.all(model.kernel[5] == 0.0) and model.scale[5] == 1.0
    np.testing.assert_array_equal(model.predict(filled, 6), model.predict(xv, 6))
    assert np.all(model.kernel[[0, 1, 2]] != 0.0)  # the features that vary keep theirs


def test_neighbours_weigh_similarity_by_power():
    # two references: one at cosine 1 (tag "cat"), one at cosine 0.6 (tag "dog")
    reference = unit_rows(np.array([[1.0, 0.0], [0.6, 0.8]], "float32"))
    tags = tag_matrix([{"cat"}, {"dog"}], VOCAB)
    query = np.array([[1.0, 0.0]], "float32")
    even = NeighbourTags(reference, tags, k=2, power=1.0).predict(query)
    sharp = NeighbourTags(reference, tags, k=2, power=4.0).predict(query)
    np.testing.assert_allclose(even[0, :2], [1 / 1.6, 0.6 / 1.6], rtol=1e-5)
    np.testing.assert_allclose(sharp[0, :2], [1 / (1 + 0.6**4), 0.6**4 / (1 + 0.6**4)], rtol=1e-5)
    nearest = NeighbourTags(reference, tags, k=1, power=1.0).predict(query)
    np.testing.assert_allclose(nearest[0, :2], [1.0, 0.0])


def test_a_floor_is_reached_within_one_paired_standard_error():
    floor = np.array([1.0] * 90 + [0.0] * 10)
    one_worse = floor.copy()
    one_worse[0] = 0.0  # one post of 100 lost: within the error of the difference
    many_worse = floor.copy()
    many_worse[:20] = 0.0
    assert reaches(floor, floor) and reaches(one_worse, floor)
    assert not reaches(many_worse, floor)


def test_the_blend_grid_covers_the_simplex():
    grid = simplex(["a", "b", "c"], 0.5)
    assert len(grid) == 6
    assert all(sum(w.values()) == pytest.approx(1.0) for w in grid)
    assert {"a": 1.0, "b": 0.0, "c": 0.0} in grid and {"a": 0.0, "b": 0.5, "c": 0.5} in grid


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
    identity = [lambda raw: raw]
    floor = post_scores(mixture, truth, n_truth, top_k=2)
    weights, index, scores, _ = choose_blend(
        {"class_mixture": mixture, "tag_model": useful},
        identity,
        truth,
        n_truth,
        top_k=2,
        step=0.25,
        rule="best",
        floor=floor,
    )
    assert weights["tag_model"] > 0 and scores["recall_at_2"] == 1.0 and index == 0
    weights, _, _, _ = choose_blend(
        {"class_mixture": mixture, "tag_model": useless},
        identity,
        truth,
        n_truth,
        top_k=2,
        step=0.25,
        rule="best",
        floor=floor,
    )
    assert weights == {"class_mixture": 1.0, "tag_model": 0.0}
    unreachable = {**floor, "precision_at_1": floor["precision_at_1"] + 1.1}
    assert (
        choose_blend(
            {"class_mixture": mixture, "tag_model": useless},
            identity,
            truth,
            n_truth,
            top_k=2,
            step=0.25,
            rule="best",
            floor=unreachable,
        )
        is None
    )


def test_the_blend_is_chosen_for_all_four_metrics_not_the_recall_of_the_list_alone():
    # Given posts that carry t0 and t11; the class mixture ranks t0 first and t11 last, and a
    # tag model that puts a wrong t1 first but lifts t11 into the list (rank 7 when blended)
    vocab = [f"t{i}" for i in range(12)]
    truth = tag_matrix([{"t0", "t11"}] * 40, vocab)
    n_truth = np.full(40, 2)
    mixture = np.tile([0.9, *np.linspace(0.5, 0.05, 10), 0.0], (40, 1))
    tag_model = np.tile([0.0, 1.0, *[0.01] * 9, 0.28], (40, 1))
    scores = {"class_mixture": mixture, "tag_model": tag_model}
    half = post_scores(0.5 * mixture + 0.5 * tag_model, truth, n_truth, top_k=10)
    alone = post_scores(mixture, truth, n_truth, top_k=10)
    assert half["recall_at_10"].mean() == 1.0 and alone["recall_at_10"].mean() == 0.5
    assert half["precision_at_1"].mean() == 0.0 and alone["precision_at_1"].mean() == 1.0
    no_floor = {key: np.zeros(40) for key in alone}
    # When the blend is chosen
    weights, _, got, summary = choose_blend(
        scores, [lambda raw: raw], truth, n_truth, top_k=10, step=0.5, rule="best", floor=no_floor
    )
    # Then the class mixture alone is served (mean of the four 0.75, against 0.625 for the
    # half-and-half blend whose list recalls more): the head decides P@1, R@5 and A@5
    assert weights == {"class_mixture": 1.0, "tag_model": 0.0}
    assert got == {
        "precision_at_1": 1.0,
        "recall_at_5": 0.5,
        "accuracy_at_5": 1.0,
        "recall_at_10": 0.5,
    }
    assert summary["chosen_objective"] == summary["best_objective"] == pytest.approx(0.75)


def test_one_se_prefers_fewer_rankers_when_the_gain_is_noise():
    # Given a tag model that, blended half and half with the class mixture, is right on two
    # posts the class mixture misses and wrong on one it gets: one post better in 40
    truth_sets = [{"cat"}] * 37 + [{"dog"}] * 2 + [{"cat"}]
    truth = tag_matrix(truth_sets, VOCAB)
    n_truth = np.ones(40, int)
    mixture = np.tile([0.9, 0.1, 0, 0, 0], (40, 1))
    tag_model = np.tile([0.0, 0.3, 0, 0, 0], (40, 1))  # alone, it says dog to every cat
    tag_model[37:] = [0.0, 1.0, 0, 0, 0]
    floor = post_scores(mixture, truth, n_truth, top_k=1)
    scores = {"class_mixture": mixture, "tag_model": tag_model}
    best, *_ = choose_blend(
        scores, [lambda raw: raw], truth, n_truth, top_k=1, step=0.5, rule="best", floor=floor
    )
    simple, *_ = choose_blend(
        scores, [lambda raw: raw], truth, n_truth, top_k=1, step=0.5, rule="one_se", floor=floor
    )
    # Then the best rule takes the blend, the one-SE rule the class mixture alone
    assert best == {"class_mixture": 0.5, "tag_model": 0.5}
    assert simple == {"class_mixture": 1.0, "tag_model": 0.0}


def test_a_hashtag_blend_round_trips(tmp_path):
    from tests.unit.test_hashtags import fit_hashtag_stats, params, posts

    stats = fit_hashtag_stats(posts(), ["food", "art"], params())
    rng = np.random.default_rng(0)
    n_tags = len(stats.tags)
    model = TagModel(
        rng.normal(size=4).astype("float32"),
        np.ones(4, "float32"),
        rng.normal(size=(4, 2)).astype("float32"),
        np.zeros(2, "float32"),
        np.array([0, 3]),
    )
    neighbours = NeighbourTags(
        unit_rows(rng.normal(size=(6, 4))),
        rng.integers(0, 2, (6, n_tags)).astype("float32"),
        k=3,
        power=4.0,
    )
    blend = HashtagBlend(
        "uses",
        2.0,
        model,
        None,
        neighbours,
        {"popularity": 0.2, "class_mixture": 0.5, "tag_model": 0.1, "neighbours": 0.2},
        np.linspace(0.5, 1, n_tags),
        {"served": "blend", "why": "test"},
    )
    loaded = HashtagBlend.load(blend.save(tmp_path / "rankers.npz"))
    x = rng.normal(size=(3, 4)).astype("float32")
    probs = rng.dirichlet([1, 1], size=3)
    before = blend.ranker_scores(stats, stats.params, probs, x, None)
    after = loaded.ranker_scores(stats, stats.params, probs, x, None)
    assert set(after) == {"popularity", "class_mixture", "tag_model", "neighbours"}
    for name in before:
        np.testing.assert_allclose(after[name], before[name], atol=2e-3)  # float16 reference
    assert (loaded.estimator, loaded.sharpen, loaded.neighbours.power) == ("uses", 2.0, 4.0)
    assert loaded.weights["colour_tags"] == 0.0 and loaded.weights["class_mixture"] == 0.5
    assert loaded.choice == {"served": "blend", "why": "test"}
    np.testing.assert_allclose(loaded.blend(after), blend.blend(before), atol=2e-3)
    np.testing.assert_array_equal(loaded.tag_multiplier, blend.tag_multiplier)


def test_not_a_blend_file_is_refused(tmp_path):
    from taglens.errors import TaglensError

    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(ValueError, match="re-run"):
        HashtagBlend.load(tmp_path / "bad.npz")
    # a blend file cut short, or emptied, says the same (not a zipfile or EOF traceback)
    whole = HashtagBlend().save(tmp_path / "whole.npz").read_bytes()
    for name, content in (("cut.npz", whole[: len(whole) // 2]), ("empty.npz", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(TaglensError, match="not a valid hashtag blend.*re-run train"):
            HashtagBlend.load(tmp_path / name)
    np.savez(tmp_path / "old.npz", weights=np.ones(4))
    with pytest.raises(ValueError, match="older version: re-run train"):
        HashtagBlend.load(tmp_path / "old.npz")


def test_low_lift_tags_are_found_from_counts_and_image_scores():
    from taglens.model.hashtags import HashtagStats
    from taglens.model.rankers import low_lift_tags
    from tests.helpers.params import tiny_params

    params = tiny_params().hashtags
    # cat: a class tag; red: as common in both classes but follows the image; follow: uniform
    stats = HashtagStats(
        ["cat", "dog"],
        [50, 50],
        [50, 50],
        ["cat", "red", "follow"],
        np.array([[50, 0], [20, 20], [10, 10]]),
        [None] * 3,
        params,
    )
    carried = np.array([[1, 1, 0], [1, 0, 1], [1, 1, 1], [1, 0, 0]], "float32")
    image = np.array([[0.9, 0.8, 0.2], [0.9, 0.1, 0.2], [0.9, 0.8, 0.2], [0.9, 0.1, 0.2]])
    assert low_lift_tags(stats, [image], carried, min_lift=1.2).tolist() == [False, False, True]
    assert low_lift_tags(stats, [], carried, min_lift=1.2).tolist() == [False, True, True]
