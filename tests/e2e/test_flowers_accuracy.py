"""Real photos through `dvc repro` with params.yaml's defaults: accuracy and hashtags that beat
the baselines, on clean captions and on captions as noisy as real Instagram posts.

The figures come from bench/quality.py's `measure`, the same code `python -m bench.quality`
runs to write bench/results/quality.json (BENCHMARKS.md's quality table).
"""

from __future__ import annotations

import json

import pytest

from tests.helpers.paths import FLOWERS

# Both caption sets through `dvc repro` take 11-12 minutes on an idle 2-core machine, in the
# first test's set-up: the default 900 s cannot hold them beside a second worker's tests.
pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(2700)]

GUARDED = ("hashtag_precision_at_1", "hashtag_recall_at_5", "hashtag_accuracy_at_5")


@pytest.fixture(scope="module")
def quality(tmp_path_factory) -> dict:
    """Both caption sets through the real pipeline (the second reuses the feature store)."""
    from bench.quality import WEIGHTS, measure

    if not FLOWERS.is_dir():
        pytest.skip(f"no shared flowers photos at {FLOWERS}")
    if not WEIGHTS.is_file():
        pytest.skip(f"no pretrained MobileNet weights at {WEIGHTS}")

    results = measure(tmp_path_factory.mktemp("quality"))
    print(json.dumps(results, indent=1, default=str))
    return results


def _at_least_both_floors(figures: dict) -> None:
    """The served ranking is at least popularity and the class mixture on every guarded metric:
    a shortfall may not exceed two standard errors of the paired per-post difference (a few
    hundred test posts: one post is 0.2 to 0.3 points)."""
    rows = figures["rankers"]
    for floor in ("popularity", "class_mixture"):
        for key in GUARDED:
            paired = figures["paired"][floor][key.removeprefix("hashtag_")]
            assert paired["difference"] == pytest.approx(rows["served"][key] - rows[floor][key])
            assert paired["difference"] >= -2 * paired["se"], (key, floor, rows, paired)


def _views_choice_is_recorded(figures: dict) -> None:
    """train chose the test-time views on validation (train.crops: auto, one-SE rule) and said
    so: the crops are served exactly when they beat the image and mirror by more than one
    paired standard error there. Without crops in featurize.views (the default) there is
    nothing to choose, and train says so."""
    views = figures["views"]
    accuracy = views["val_accuracy"]
    if "crops" not in figures["featurize_views"]:  # the default views: nothing to choose from
        assert (views["crops"], views["served"]) == (False, ["image", "flip"]), views
        assert "no crops view" in views["why"]
        return
    gain = accuracy["image+crops"] - accuracy["image"]
    assert views["crops"] == (gain > views["difference_se"]), views
    expected = ["image", "flip", "crops"] if views["crops"] else ["image", "flip"]
    assert views["served"] == expected
    served = accuracy["image+crops" if views["crops"] else "image"]
    assert figures["val_accuracy"] == pytest.approx(served)


def _head_colour_choice_is_recorded(figures: dict) -> None:
    """train chose on validation whether the head reads the colour view (train.colour: auto,
    one-SE rule), said why, and reports the validation accuracy of the head it serves."""
    choice = figures["head_colour"]
    accuracy = choice["val_accuracy"]
    gain = accuracy["vectors+colour"] - accuracy["vectors"]
    assert choice["colour"] == (gain > choice["difference_se"]), choice
    assert figures["val_accuracy"] == pytest.approx(
        accuracy["vectors+colour" if choice["colour"] else "vectors"]
    )


def test_clean_captions_beat_the_reference_and_find_the_colour_tags(quality):
    figures = quality["clean"]
    # the content split's test photos (15 % of 4,317, less the outliers clean dropped)
    assert 550 < figures["n_test"] < 700
    _views_choice_is_recorded(figures)
    _head_colour_choice_is_recorded(figures)
    # the default search, with the colour view in the head's input (chosen on validation),
    # reaches the aim of 0.73 (bench/results/quality.json: 0.761) and beats the
    # logistic-regression reference on the backbone's vectors alone
    assert figures["accuracy"] >= 0.73
    assert figures["accuracy"] > figures["baseline_accuracy"]
    colour = figures["colour_recall_at_10"]
    assert colour["posts"] > 300
    # the photo's colours reach the served list, through the list's tail, beyond the class
    # mixture's (bench/results/quality.json: 0.437 against 0.219; the aim of 0.52 is not reached).
    # Which of the near-tied tails is served moves it by a few points: 0.474 with a tag model fitted
    # by Keras to the same validation loss, so the guard leaves room below the measured figure.
    assert colour["served"] >= 0.40
    assert colour["served"] >= colour["class_mixture"] + 0.15
    tail = figures["tail"]
    assert tail["chosen_recall"] >= tail["best_recall"] - 0.01  # within one SE of the best
    image_rankers = ("tag_model", "colour_tags", "neighbours")
    assert sum(tail.get("weights", {}).get(name, 0) for name in image_rankers) > 0
    _at_least_both_floors(figures)
    # the whole list recalls at least the class mixture's (its R@10 floor), within 2 paired SE
    paired = figures["paired"]["class_mixture"]["recall_at_10"]
    assert paired["difference"] >= -2 * paired["se"]


def test_noisy_captions_served_ranking_reaches_popularity_and_the_class_mixture(quality):
    figures = quality["noisy"]
    # daisy and sunflower photos have no captions: only three classes' posts are scored
    assert 0 < figures["hashtag_posts"] < figures["n_test"]
    assert figures["choice"]["served"] in ("blend", "single")
    _views_choice_is_recorded(figures)
    _at_least_both_floors(figures)
    # popularity here is the most used tags of captioned posts, the same for every photo
    assert figures["rankers"]["popularity"]["hashtag_recall_at_5"] > 0.3
