"""Fit the image rankers and choose the blend on validation posts (called by the train stage)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from taglens.data.posts import normalize_hashtag
from taglens.training.blend import ImageRankers, choose_weights, ranking_scores
from taglens.training.hashtags import HashtagStats
from taglens.training.tag_rankers import (
    NeighbourTags,
    class_lift,
    fit_tag_model,
    image_lift,
    tag_matrix,
    unit_rows,
)

logger = logging.getLogger(__name__)


def low_lift_tags(stats: HashtagStats, image_scores: list[np.ndarray], val_truth: np.ndarray,
                  min_lift: float) -> np.ndarray:  # fmt: skip
    """(T,) bool: tags whose rate barely depends on class or image (lift below `min_lift`).

    Class lift comes from the training counts, image lift from the image rankers' validation
    scores (how much higher they score a tag on posts that carry it). Class tags are never
    low-lift.
    """
    lift = class_lift(stats.counts, np.asarray(stats.class_posts))
    for scores in image_scores:
        lift = np.maximum(lift, image_lift(scores, val_truth))
    class_tags = {normalize_hashtag(c) for c in stats.classes}
    return (lift < min_lift) & np.array([t not in class_tags for t in stats.tags])


def fit_image_rankers(
    stats: HashtagStats,
    train: tuple[np.ndarray, np.ndarray | None, Sequence[set[str]]],
    val: tuple[np.ndarray, np.ndarray | None, Sequence[set[str]], np.ndarray],
    seed: int,
) -> tuple[ImageRankers, dict[str, dict[str, float]]]:
    """Fit the tag models and neighbours on training posts; choose the blend on validation.

    Args:
        stats: the hashtag statistics (vocabulary, class mixture) of the training posts.
        train: features, colour view (or None) and tag sets of the training posts.
        val: the same for validation posts, plus their class probabilities (N, C).
        seed: seeds the tag models.

    Returns:
        The rankers and each ranker's validation metrics (and the blend's).
    """
    params = stats.params
    (x_train, colour_train, tags_train), (x_val, colour_val, tags_val, probs_val) = train, val
    y_train = tag_matrix(list(tags_train), stats.tags)
    y_val = tag_matrix(list(tags_val), stats.tags)
    n_val = np.array([len(tags) for tags in tags_val])
    tag_model = fit_tag_model((x_train, y_train), (x_val, y_val), params.max_image_tags, seed)
    colour_model = None
    if colour_train is not None and colour_val is not None:
        colour_model = fit_tag_model((colour_train, y_train), (colour_val, y_val),
                                     params.max_image_tags, seed)  # fmt: skip
    neighbours = NeighbourTags(unit_rows(x_train), y_train)
    rankers = ImageRankers(tag_model, colour_model, neighbours)
    scores = rankers.ranker_scores(stats.mixture(probs_val), x_val, colour_val)
    image_scores = [v for k, v in scores.items() if k != "class_mixture"]
    low = low_lift_tags(stats, image_scores, y_val, params.min_lift)
    logger.info("low-lift tags: %s", [t for t, flag in zip(stats.tags, low, strict=True) if flag])

    def finisher(multiplier: np.ndarray | None):
        return lambda raw: stats.finish(raw, params, multiplier)

    # every ranker on its own, as it is (no low-lift weighting): the class mixture is the floor
    report = {name: ranking_scores(finisher(None)(s), y_val, n_val, params.top_k)
              for name, s in scores.items()}  # fmt: skip
    # Down-weight low-lift tags as much as validation allows: the strongest weight first, a
    # weaker one only if it finds more tags, and never below the class mixture's P@1, R@5, A@5.
    chosen = None
    for weight in sorted({params.low_lift_weight, (1 + params.low_lift_weight) / 2, 1.0}):
        multiplier = np.where(low, weight, 1.0)
        found = choose_weights(scores, finisher(multiplier), y_val, n_val, params.top_k,
                               params.blend_step, floor=report["class_mixture"])  # fmt: skip
        recall = f"recall_at_{params.top_k}"
        if found and (chosen is None or found[1][recall] > chosen[1][1][recall]):
            chosen = (multiplier, found)
    if chosen is None:  # nothing beats the class mixture as it is: serve it
        chosen = (np.ones(len(stats.tags)), ({"class_mixture": 1.0}, report["class_mixture"]))
    rankers.tag_multiplier, (rankers.weights, report["blend"]) = chosen
    report["low_lift"] = {"tags": [t for t, flag in zip(stats.tags, low, strict=True) if flag],
                          "weight": float(np.min(chosen[0], initial=1.0))}  # fmt: skip
    return rankers, report
