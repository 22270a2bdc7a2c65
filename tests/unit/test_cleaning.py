"""The outlier rule on constructed vectors whose distances are known."""

from __future__ import annotations

import numpy as np
import pytest

from taglens.features.cleaning import centroid_distances, find_outliers


def ring(n: int, radius: float, centre=(0.0, 0.0)) -> np.ndarray:
    """n points evenly on a circle: every one is exactly `radius` from the centroid."""
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius + np.asarray(centre)


def test_a_far_point_is_dropped_and_the_rest_kept():
    a = np.vstack([ring(20, 1.0), [[30.0, 0.0]]])
    b = ring(12, 2.0, centre=(100.0, 100.0))
    vectors = np.vstack([a, b])
    labels = ["a"] * 21 + ["b"] * 12
    result = find_outliers(vectors, labels, k_std=2.0)
    assert result.keep.sum() == 32
    assert not result.keep[20]
    assert result.classes["a"].before == 21 and result.classes["a"].after == 20
    assert result.classes["b"].after == 12  # a zero-spread class loses nothing
    d = centroid_distances(a, "euclidean")
    assert result.classes["a"].threshold == pytest.approx(d.mean() + 2.0 * d.std())
    np.testing.assert_allclose(result.distances[:21], d)


@pytest.mark.parametrize(("k", "dropped"), [(0.4, 4), (1.0, 2), (2.0, 2), (2.1, 0)])
def test_k_std_sets_how_far_is_too_far(k, dropped):
    # 1-d points whose distances to the centroid (0) are 1 x 6, 2, 2, 4, 4, 8 (mirrored pairs)
    values = np.array([1, -1, 1, -1, 1, -1, 2, -2, 4, -4, 8, -8], dtype=float)[:, None]
    d = np.abs(values[:, 0])
    result = find_outliers(values, ["c"] * 12, k_std=k)
    threshold = d.mean() + k * d.std()
    assert result.classes["c"].threshold == pytest.approx(threshold)
    assert (~result.keep).sum() == dropped
    assert set(np.abs(values[~result.keep, 0])) <= {v for v in d if v > threshold}


@pytest.mark.parametrize("n", [1, 2])
def test_a_class_with_one_or_two_images_keeps_them(n):
    vectors = np.vstack([ring(10, 1.0), [[5.0, 5.0], [9.0, -9.0]][:n]])
    labels = ["big"] * 10 + ["tiny"] * n
    result = find_outliers(vectors, labels, k_std=0.1)
    assert result.classes["tiny"].after == n and result.classes["tiny"].threshold is None
    assert result.keep[10:].all()
    assert np.isinf(result.thresholds[10:]).all()


def test_disabled_keeps_everything_but_reports_distances():
    vectors = np.vstack([ring(20, 1.0), [[30.0, 0.0]]])
    result = find_outliers(vectors, ["a"] * 21, k_std=2.0, enabled=False)
    assert result.keep.all() and result.classes["a"].threshold is None
    assert result.distances[20] == pytest.approx(30.0 - 30.0 / 21)


def test_cosine_ignores_length_but_euclidean_does_not():
    directions = ring(16, 1.0) + np.array([3.0, 3.0])  # all pointing roughly the same way
    scaled = np.vstack([directions, directions[:1] * 20.0])  # same direction, 20x longer
    labels = ["a"] * 17
    assert not find_outliers(scaled, labels, k_std=2.0, metric="euclidean").keep[16]
    cosine = find_outliers(scaled, labels, k_std=2.0, metric="cosine")
    assert cosine.keep[16]
    assert cosine.distances[16] == pytest.approx(cosine.distances[0], abs=1e-12)


def test_cosine_handles_zero_vectors():
    vectors = np.vstack([ring(8, 1.0) + 5.0, [[0.0, 0.0]]])
    d = centroid_distances(vectors, "cosine")
    assert d[-1] == pytest.approx(1.0) and np.isfinite(d).all()


@pytest.mark.parametrize(
    ("vectors", "labels", "message"),
    [
        (np.zeros((3, 2)), ["a", "a"], "re-run featurize"),
        (np.array([[np.nan, 1.0], [0, 0], [1, 1]]), ["a"] * 3, "NaN"),
        (np.zeros(3), ["a"] * 3, "2-d"),
    ],
)
def test_bad_vectors_are_refused(vectors, labels, message):
    with pytest.raises(ValueError, match=message):
        find_outliers(vectors, labels, k_std=2.0)


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="clean.distance"):
        centroid_distances(np.zeros((3, 2)), "manhattan")


def test_fitted_on_training_rows_only_and_only_they_drop():
    # training rows: a ring of radius 1 plus one far point; held-out rows: one far, one near
    train = np.vstack([ring(20, 1.0), [[30.0, 0.0]]])
    held_out = np.array([[25.0, 0.0], [0.5, 0.0]])
    vectors = np.vstack([train, held_out])
    fit = np.array([True] * 21 + [False] * 2)
    result = find_outliers(vectors, ["a"] * 23, k_std=2.0, fit=fit)
    d_train = centroid_distances(train, "euclidean")
    assert result.classes["a"].threshold == pytest.approx(d_train.mean() + 2.0 * d_train.std())
    # the held-out rows are measured from the training centroid, not one that includes them
    centre = train.mean(axis=0)
    np.testing.assert_allclose(result.distances[21:], np.linalg.norm(held_out - centre, axis=1))
    assert result.flagged.tolist() == [False] * 20 + [True, True, False]
    assert result.keep.tolist() == [True] * 20 + [False, True, True]  # the far test row stays
    assert result.classes["a"].before == 23 and result.classes["a"].after == 22


def test_a_class_without_enough_training_rows_drops_nothing():
    vectors = np.vstack([ring(10, 1.0), [[50.0, 0.0]]])
    fit = np.array([True, True] + [False] * 9)
    result = find_outliers(vectors, ["a"] * 11, k_std=0.1, fit=fit)
    assert result.keep.all() and not result.flagged.any()
    assert result.classes["a"].threshold is None
