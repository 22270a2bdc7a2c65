"""Fit the hashtag rankers on training posts and choose the served ranking on validation posts.

The order is that of `taglens.training.blend`'s docstring: each ranker's own settings first (one
ranker at a time, so a few dozen candidates compete instead of their product), then the tag
weights and the blend together, with popularity and the class mixture as floors.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from taglens.data.posts import normalize_hashtag
from taglens.params import HashtagParams
from taglens.training.blend import (
    FLOORS,
    RANKERS,
    HashtagBlend,
    choose_blend,
    choose_tail,
    objective,
    post_scores,
)
from taglens.training.hashtags import HashtagStats
from taglens.training.selection import pick_paired
from taglens.training.tag_rankers import (
    NeighbourTags,
    class_lift,
    fit_tag_model,
    image_lift,
    tag_matrix,
    unit_rows,
)

logger = logging.getLogger(__name__)

# The blend is held by its floors (it must match popularity and the class mixture on all four
# metrics), so among the blends that do, the one whose whole list recalls the most is served.
# On the flowers photos with clean captions the one-standard-error rule at this step kept the
# image rankers out, and with them the colour tags only the photo shows.
BLEND_RULE = "best"


@dataclass(frozen=True)
class RankingInputs:
    """What the rankers read of one split: features, colour view, tag sets, probabilities.

    `features` and `colour` are None when the model has no such output (or the image rankers are
    off); `probabilities` (N, C) is needed for validation posts only.
    """

    features: np.ndarray | None
    colour: np.ndarray | None
    tags: Sequence[set[str]]
    probabilities: np.ndarray | None = None


def low_lift_tags(
    stats: HashtagStats, image_scores: list[np.ndarray], val_truth: np.ndarray, min_lift: float
) -> np.ndarray:
    """(T,) bool: tags whose rate barely depends on class or image (lift below `min_lift`).

    Class lift comes from the training counts, image lift from the image rankers' validation
    scores (how much higher they score a tag on posts that carry it). Class tags are never
    low-lift.
    """
    lift = class_lift(stats.counts, np.asarray(stats.captioned_posts))
    for scores in image_scores:
        lift = np.maximum(lift, image_lift(scores, val_truth))
    class_tags = {normalize_hashtag(c) for c in stats.classes}
    return (lift < min_lift) & np.array([t not in class_tags for t in stats.tags])


class _Validation:
    """Validation posts with tags, and the scoring every choice below shares."""

    def __init__(self, stats: HashtagStats, params: HashtagParams, tags: Sequence[set[str]]):
        self.stats = stats
        self.params = params
        self.truth = tag_matrix(list(tags), stats.tags)
        self.n_truth = np.array([len(t) for t in tags])

    def per_post(self, raw: np.ndarray, multiplier: np.ndarray | None = None) -> dict:
        final = self.stats.finish(raw, self.params, multiplier)
        return post_scores(final, self.truth, self.n_truth, self.params.top_k)

    def metrics_of(self, final: np.ndarray) -> dict[str, float]:
        """The metrics of final scores (already finished, as `HashtagBlend.final` gives)."""
        per_post = post_scores(final, self.truth, self.n_truth, self.params.top_k)
        return {key: float(v.mean()) for key, v in per_post.items()}

    def metrics(self, raw: np.ndarray, multiplier: np.ndarray | None = None) -> dict[str, float]:
        return {key: float(v.mean()) for key, v in self.per_post(raw, multiplier).items()}

    def choose(self, candidates: list[tuple[dict, np.ndarray]]) -> int:
        """Pick among (setting, raw scores) candidates listed simplest first."""
        per_post = [objective(self.per_post(raw)) for _, raw in candidates]
        return pick_paired(per_post, list(range(len(candidates))), self.params.search.rule)


def _class_mixture(val: _Validation, probabilities: np.ndarray) -> tuple[str, float, np.ndarray]:
    """The estimator and sharpening of the class mixture, chosen on validation."""
    search = val.params.search
    candidates = []
    # simplest first: the first sharpening (1: as the classifier says) with each estimator
    for sharpen in search.sharpen:
        for estimator in search.estimators:
            raw = val.stats.mixture(probabilities, val.params, estimator, sharpen)
            candidates.append(({"estimator": estimator, "sharpen": sharpen}, raw))
    chosen = val.choose(candidates)
    setting, raw = candidates[chosen]
    logger.info("class mixture: %s chosen of %d settings", setting, len(candidates))
    return setting["estimator"], setting["sharpen"], raw


def _neighbours(
    val: _Validation, reference: NeighbourTags, features: np.ndarray
) -> tuple[NeighbourTags, np.ndarray]:
    """The neighbours' k and similarity power, chosen on validation."""
    search = val.params.search
    sims, rows = reference.nearest(features, max(search.neighbours_k))
    candidates = []
    for power in search.neighbours_power:
        for k in search.neighbours_k:
            k = min(k, sims.shape[1])
            raw = reference.transfer(sims, rows, k, power)
            candidates.append(({"k": k, "power": power}, raw))
    chosen = val.choose(candidates)
    setting, raw = candidates[chosen]
    logger.info("neighbours: %s chosen of %d settings", setting, len(candidates))
    return NeighbourTags(reference.reference, reference.tags, setting["k"], setting["power"]), raw


def _tag_weightings(
    stats: HashtagStats, params: HashtagParams, low_lift: np.ndarray
) -> list[tuple[str, np.ndarray | None]]:
    """Candidate per-tag weights, simplest (none) first."""
    weightings: list[tuple[str, np.ndarray | None]] = [("none", None)]
    generic = stats.tag_weights(params.generic, params.generic_weight)
    low = np.where(low_lift, params.low_lift_weight, 1.0)
    if params.generic and params.generic_weight < 1 and np.any(generic < 1):
        weightings.append(("generic", generic))
    if params.low_lift_weight < 1 and np.any(low_lift):
        weightings.append(("low_lift", low))
    if len(weightings) == 3:
        weightings.append(("generic+low_lift", generic * low))
    return weightings


def fit_ranking(
    stats: HashtagStats, train: RankingInputs, val: RankingInputs, seed: int
) -> tuple[HashtagBlend, dict]:
    """Fit the rankers on training posts and choose the served ranking on validation posts.

    Only captioned posts (with tags of their own) train the image rankers and score a choice.

    Args:
        stats: the hashtag statistics of the training posts (vocabulary, class mixture).
        train: the training posts' features, colour view and own tag sets.
        val: the same for validation posts, with their class probabilities.
        seed: seeds the tag models.

    Returns:
        The blend and a report: every ranker's validation metrics, the blend's, the floor and
        the choice (what is served and why).
    """
    params = stats.params
    check = _Validation(stats, params, val.tags)
    if not check.n_truth.any():  # nothing to choose on: the class's usual tags, as they are
        logger.warning("no validation post carries hashtags: the class mixture ranks them")
        blend = HashtagBlend(weights={name: float(name == "class_mixture") for name in RANKERS})
        blend.choice = {
            "served": "single",
            "rankers": ["class_mixture"],
            "tag_weights": "none",
            "why": "no validation post carries hashtags to choose a ranking on",
        }
        return blend, {"rankers": {}, "choice": blend.choice}
    mix_estimator, mix_sharpen, mixture = _class_mixture(check, val.probabilities)
    n_val = len(val.tags)
    scores = {
        "popularity": np.broadcast_to(stats.popularity(), (n_val, len(stats.tags))),
        "class_mixture": mixture,
    }
    blend = HashtagBlend(estimator=mix_estimator, sharpen=mix_sharpen)
    settings: dict = {"class_mixture": {"estimator": mix_estimator, "sharpen": mix_sharpen}}
    if params.image_rankers and train.features is not None and val.features is not None:
        captioned = np.array([bool(tags) for tags in train.tags])
        y_train = tag_matrix(
            [t for t, c in zip(train.tags, captioned, strict=True) if c], stats.tags
        )
        val_captioned = check.n_truth > 0
        if captioned.sum() and val_captioned.sum():
            y_val = check.truth[val_captioned]
            blend.tag_model = fit_tag_model(
                (train.features[captioned], y_train),
                (val.features[val_captioned], y_val),
                params.max_image_tags,
                seed,
            )
            scores["tag_model"] = blend.tag_model.predict(val.features, len(stats.tags))
            if train.colour is not None and val.colour is not None:
                blend.colour_model = fit_tag_model(
                    (train.colour[captioned], y_train),
                    (val.colour[val_captioned], y_val),
                    params.max_image_tags,
                    seed,
                )
                scores["colour_tags"] = blend.colour_model.predict(val.colour, len(stats.tags))
            reference = NeighbourTags(unit_rows(train.features[captioned]), y_train, 1, 1.0)
            blend.neighbours, scores["neighbours"] = _neighbours(check, reference, val.features)
            settings["neighbours"] = {"k": blend.neighbours.k, "power": blend.neighbours.power}
        else:
            logger.warning("image rankers skipped: no captioned training or validation posts")

    image_scores = [
        s for name, s in scores.items() if name in ("tag_model", "colour_tags", "neighbours")
    ]
    low = low_lift_tags(stats, image_scores, check.truth, params.min_lift)
    weightings = _tag_weightings(stats, params, low)
    # every ranker on its own, as it is (no tag weights): popularity and the class mixture are
    # the floors
    report: dict = {name: check.metrics(s) for name, s in scores.items()}
    floor = {key: max(report[name][key] for name in FLOORS) for key in report["popularity"]}
    floor_posts = {name: check.per_post(scores[name]) for name in FLOORS}
    floor_by_post = {
        key: floor_posts[max(FLOORS, key=lambda name: report[name][key])][key] for key in floor
    }
    found = choose_blend(
        scores,
        [lambda raw, m=m: stats.finish(raw, params, m) for _, m in weightings],
        check.truth,
        check.n_truth,
        params.top_k,
        params.blend_step,
        BLEND_RULE,
        floor_by_post,
    )
    if found is not None:
        weights, index, got, search = found
        blend.weights = weights
        blend.tag_multiplier = weightings[index][1]
        tail, search["tail"] = choose_tail(
            scores,
            lambda raw, m=blend.tag_multiplier: stats.finish(raw, params, m),
            weights,
            check.truth,
            check.n_truth,
            params.top_k,
            params.blend_step,
            floor_by_post[f"recall_at_{params.top_k}"],
        )
        blend.tail_weights = tail
        if tail is not None:
            search["tail"]["weights"] = tail
            got = check.metrics_of(blend.final(stats, params, scores))
        used = [name for name, w in weights.items() if w]
        choice = {
            "served": "blend",
            "rankers": used,
            "tag_weights": weightings[index][0],
            "why": "of the blends that reach popularity's and the class mixture's validation "
            "scores, the one whose served list finds the most of each post's tags",
            "search": search,
        }
        report["blend"] = got
    else:  # nothing reaches both floors: the best single ranker on validation, as it is
        names = list(scores)
        best = names[check.choose([({}, scores[name]) for name in names])]
        blend.weights = {best: 1.0}
        blend.tag_multiplier = None
        choice = {
            "served": "single",
            "rankers": [best],
            "tag_weights": "none",
            "why": f"no blend reached both popularity's and the class mixture's "
            f"validation scores {floor}; {best} scores best alone",
        }
        report["blend"] = report[best]
    choice.update(settings=settings, floor=floor)
    if params.image_rankers and low.any():
        choice["low_lift_tags"] = [t for t, flag in zip(stats.tags, low, strict=True) if flag]
    blend.choice = choice
    blend.weights = {name: float(blend.weights.get(name, 0.0)) for name in RANKERS}
    logger.info("served ranking: %s", {k: v for k, v in choice.items() if k != "low_lift_tags"})
    return blend, {"rankers": report, "choice": choice}
