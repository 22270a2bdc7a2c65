"""Metrics on hand-computed cases, HARRISON hashtag metrics, and the plots they feed."""

from __future__ import annotations

import numpy as np
import pytest

from taglens.training import plots
from taglens.training.metrics import (
    classification_metrics,
    confusion,
    hashtag_metrics,
    normalize_rows,
    top_k_accuracy,
)

Y_TRUE = [0, 0, 0, 1, 1, 2]
Y_PRED = [0, 0, 1, 1, 2, 2]
CLASSES = ["cat", "dog", "fox"]


def _probs_for(predicted, n_classes=3):
    probs = np.full((len(predicted), n_classes), 0.1)
    probs[np.arange(len(predicted)), predicted] = 0.8
    return probs


def test_confusion_matrix_and_scores_match_hand_computation():
    matrix = confusion(Y_TRUE, Y_PRED, 3)
    np.testing.assert_array_equal(matrix, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    result = classification_metrics(Y_TRUE, _probs_for(Y_PRED), CLASSES, top_k=2)
    assert result["accuracy"] == pytest.approx(4 / 6)
    # precision 1, 1/2, 1/2; recall 2/3, 1/2, 1 -> F1 0.8, 0.5, 2/3
    assert result["per_class"]["cat"] == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3}
    )
    assert result["per_class"]["fox"]["f1"] == pytest.approx(2 / 3)
    assert result["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert result["n_test"] == 6 and result["confusion"] == matrix.tolist()
    assert result["top3_accuracy"] == 1.0 and "top2_accuracy" in result


def test_macro_f1_agrees_with_scikit_learn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    result = classification_metrics(y_true, _probs_for(y_pred, 4), list("abcd"))
    assert result["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))


def test_top_k_accuracy_counts_the_true_class_among_the_k_best():
    probs = np.array([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.1, 0.3]])
    assert top_k_accuracy([1, 1, 1], probs, 1) == 0.0
    assert top_k_accuracy([1, 1, 1], probs, 2) == pytest.approx(2 / 3)
    assert top_k_accuracy([1, 1, 1], probs, 10) == 1.0


def test_normalized_rows_sum_to_one_and_empty_rows_stay_zero():
    normalized = normalize_rows(np.array([[2, 2], [0, 0]]))
    np.testing.assert_allclose(normalized, [[0.5, 0.5], [0.0, 0.0]])


def test_mismatched_probabilities_are_refused():
    with pytest.raises(ValueError, match="shape"):
        classification_metrics([0, 1], np.ones((3, 3)), CLASSES)


def test_hashtag_metrics_follow_harrison_definitions():
    ranked = [["a", "b", "c", "d", "e", "f"], ["x", "y", "z", "q", "w"], ["m"], ["n", "o"]]
    truth = [{"a", "f"}, {"y", "k"}, set(), {"p"}]
    result = hashtag_metrics(ranked, truth, k=5)
    assert result["hashtag_n"] == 3  # the post without hashtags is skipped
    assert result["hashtag_precision_at_1"] == pytest.approx(1 / 3)  # only "a" is a top-1 hit
    assert result["hashtag_recall_at_5"] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)  # f is 6th
    assert result["hashtag_accuracy_at_5"] == pytest.approx(2 / 3)


def test_hashtag_metrics_without_any_hashtags_are_none():
    result = hashtag_metrics([["a"], []], [set(), set()])
    assert result["hashtag_n"] == 0 and result["hashtag_precision_at_1"] is None


def test_plots_are_written_and_not_empty(tmp_path):
    matrix = confusion(Y_TRUE, Y_PRED, 3)
    paths = [
        plots.plot_confusion(matrix, CLASSES, tmp_path / "c.png"),
        plots.plot_confusion(normalize_rows(matrix), CLASSES, tmp_path / "n.png", normalized=True),
        plots.plot_history(
            [
                {"epoch": 1, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.2, "val_accuracy": 0.4},
                {"epoch": 2, "loss": 0.8, "accuracy": 0.6, "val_loss": 1.0, "val_accuracy": 0.5},
            ],
            tmp_path / "h.png",
        ),
        plots.plot_misclassified(
            [np.zeros((8, 8, 3))] * 3, ["a"] * 3, ["b"] * 3, tmp_path / "m.png"
        ),
        plots.plot_misclassified([], [], [], tmp_path / "none.png"),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="no training history"):
        plots.plot_history([], tmp_path / "x.png")


def test_split_fingerprint_names_the_images_and_labels_not_their_order():
    from taglens.training.metrics import split_fingerprint

    a, b, c = "a" * 64, "b" * 64, "c" * 64
    assert split_fingerprint([a, b, c], "xyz") == split_fingerprint([c, a, b], "zxy")
    assert split_fingerprint([a, b], "xy") != split_fingerprint([a, c], "xy")
    assert split_fingerprint([a, b], "xy") != split_fingerprint([a, b], "xx")  # relabelled
    value = split_fingerprint([a], ["x"])
    assert 0 <= value < 2**48 and float(value) == value
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        split_fingerprint([a, b], ["x"])


def test_popularity_baseline_keys_are_prefixed():
    from taglens.training.metrics import hashtag_metrics, with_prefix

    scores = hashtag_metrics([["food", "art"], ["food"]], [{"food"}, {"art"}], k=5)
    renamed = with_prefix(scores, "popularity_")
    assert renamed == {
        "popularity_hashtag_precision_at_1": 0.5,
        "popularity_hashtag_recall_at_5": 0.5,
        "popularity_hashtag_accuracy_at_5": 0.5,
    }


def test_macro_f1_counts_a_predicted_class_missing_from_the_test_set():
    # "fox" never occurs in the test labels but is predicted once: its F1 of 0 is averaged in
    y_true, y_pred = [0, 0, 1, 1], [0, 0, 1, 2]
    result = classification_metrics(y_true, _probs_for(y_pred), CLASSES)
    # cat F1 1, dog precision 1 recall 1/2 -> 2/3, fox 0
    assert result["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert result["per_class"]["fox"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_per_class_report_is_scikit_learns_for_every_class():
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(1)
    y_true, y_pred = rng.integers(0, 3, 40), rng.integers(0, 4, 40)  # class "d" never true
    result = classification_metrics(y_true, _probs_for(y_pred, 4), list("abcd"))
    p, r, f, n = precision_recall_fscore_support(y_true, y_pred, labels=range(4), zero_division=0)
    for i, name in enumerate("abcd"):
        assert result["per_class"][name] == pytest.approx(
            {"precision": p[i], "recall": r[i], "f1": f[i], "support": n[i]}
        )


def test_per_image_rows_are_ordered_by_sha256_and_refuse_a_photo_twice():
    import pandas as pd

    from taglens.errors import TaglensError
    from taglens.lifecycle.evaluation import per_image_rows

    test = pd.DataFrame({"sha256": ["c" * 64, "a" * 64, "b" * 64], "label": ["cat", "dog", "fox"]})
    probabilities = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.1, 0.8]])
    rows = per_image_rows(test, probabilities, CLASSES)
    assert rows == [
        {"sha256": "a" * 64, "label": "dog", "predicted": "cat", "correct": False},
        {"sha256": "b" * 64, "label": "fox", "predicted": "fox", "correct": True},
        {"sha256": "c" * 64, "label": "cat", "predicted": "cat", "correct": True},
    ]
    twice = pd.DataFrame({"sha256": ["a" * 64, "a" * 64], "label": ["cat", "cat"]})
    with pytest.raises(TaglensError, match="1 test images occur twice"):
        per_image_rows(twice, probabilities[:2], CLASSES)
