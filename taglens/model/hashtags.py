"""How hashtags are counted from training captions and ranked by popularity and the class mixture.

The train stage fits the statistics on the training posts only and writes `models/hashtags.json`;
serving loads that file.

Only the tags a post's author wrote are counted, and only captioned posts (with at least one
tag) estimate how often a class's posts carry a tag: that is what a suggestion is scored against.
A post collected under a hashtag but shown without a caption says nothing about which tags its
author would use, so counting its class tag would credit the class tag (and popularity) with
posts no ranking is ever judged on.

score(tag | image) = sum over classes c of q(c | image) * P(tag | c), where q is P(c | image)
sharpened (raised to a power and renormalised) and P(tag | c) one of two estimators: the share of
the class's captioned posts that carry the tag, or the tag's share of the class's tag uses.
Popularity, the share of all captioned posts that carry the tag, is the same for every image.
Then per-tag weights (chosen on validation; 1 unless a blend chose otherwise), eligibility
(denylist, min_support) and the top k, never more than Instagram allows. These rules are what a
change to the suggestions touches, while the counting and the stored format change rarely, so
they are kept apart in the code: `HashtagRanking` is the half of `HashtagStats` that ranks,
and callers keep one object.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from taglens import artifacts
from taglens.atomic import atomic_write_json
from taglens.data.posts import Post, hashtags_in, normalize_hashtag
from taglens.errors import TaglensError
from taglens.params import HashtagParams

INSTAGRAM_MAX_TAGS = 30  # Instagram refuses posts with more hashtags than this
SCORE_CHUNK = 64  # images scored at once: 64 x 20,000 tags is 10 MB of float64


class HashtagRanking:
    """Ranking on per-class hashtag counts; mixed into `HashtagStats`, which holds the data.

    It reads the statistics' fields (`classes`, `captioned_posts`, `tags`, `counts`, `engagement`,
    `params`, see `HashtagStats`) and what `HashtagStats` derives from them: `_support` (posts
    per tag), `_alpha` (each tag's alphabetical position) and `_cache` (results per params).
    """

    _support: np.ndarray
    _alpha: np.ndarray
    _cache: dict[Any, np.ndarray]

    def probability(self, smoothing: float, estimator: str = "posts") -> np.ndarray:
        """(T, C) P(tag | class) by `estimator`.

        - `posts`: the share of the class's captioned posts carrying the tag, with additive
          (Laplace) smoothing of a per-post Bernoulli, (n_tc + a) / (n_c + 2a), so a tag never
          seen with a class keeps a small probability that shrinks as the class grows;
        - `uses`: the tag's share of all tags the class's posts carry, n_tc / sum_t n_tc, which
          keeps a class whose posts carry many tags from outweighing the others.

        A class without captioned posts says only its own name: its class tag gets 1.
        """
        key = ("p", smoothing, estimator)
        if key not in self._cache:
            counts = self.counts.astype(np.float64)
            if estimator == "posts":
                totals = np.asarray(self.captioned_posts, np.float64) + 2.0 * smoothing
                prob = (counts + smoothing) / np.where(totals > 0, totals, 1.0)
            elif estimator == "uses":
                uses = counts.sum(axis=0)
                prob = counts / np.where(uses > 0, uses, 1.0)
            else:
                raise ValueError(f"unknown P(tag | class) estimator {estimator!r}")
            position = {tag: i for i, tag in enumerate(self.tags)}
            for c, name in enumerate(self.classes):
                if self.captioned_posts[c] == 0:
                    prob[:, c] = 0.0
                    prob[position[normalize_hashtag(name)], c] = 1.0
            self._cache[key] = prob
        return self._cache[key]

    def popularity(self) -> np.ndarray:
        """(T,) the share of captioned training posts that carry each tag."""
        return self.counts.sum(axis=1) / max(sum(self.captioned_posts), 1)

    def _eligible(self, params: HashtagParams) -> np.ndarray:
        key = ("eligible", params.denylist, params.min_support)
        if key not in self._cache:
            self._cache[key] = self._compute_eligible(params)
        return self._cache[key]

    def _compute_eligible(self, params: HashtagParams) -> np.ndarray:
        deny = {normalize_hashtag(tag) for tag in params.denylist}
        classes = {normalize_hashtag(c) for c in self.classes}
        support = self._support
        return np.array(
            [
                tag not in deny and (support[i] >= params.min_support or tag in classes)
                for i, tag in enumerate(self.tags)
            ],
            dtype=bool,
        )

    def tag_weights(self, generic: tuple[str, ...], weight: float) -> np.ndarray:
        """(T,) `weight` for the tags in `generic`, 1 for the others: a candidate weighting."""
        names = {normalize_hashtag(tag) for tag in generic}
        return np.array([weight if tag in names else 1.0 for tag in self.tags], np.float64)

    def scores(self, probabilities: np.ndarray, params: HashtagParams | None = None) -> np.ndarray:
        """(N, T) hashtag scores for (N, C) class probabilities; ineligible tags score -inf."""
        params = params or self.params
        probs = np.asarray(probabilities, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] != len(self.classes):
            raise TaglensError(
                f"expected class probabilities of shape (N, {len(self.classes)}) for classes "
                f"{self.classes}, got {probs.shape}: the model and {artifacts.HASHTAGS.name} "
                "do not match"
            )
        return self.finish(self.mixture(probs, params), params)

    def mixture(
        self,
        probabilities: np.ndarray,
        params: HashtagParams | None = None,
        estimator: str = "posts",
        sharpen: float = 1.0,
    ) -> np.ndarray:
        """(N, T) class mixture sum_c q(c | image) P(tag | c), before any tag weighting.

        q is P(c | image) ** sharpen, renormalised: above 1 it trusts the top class more, below
        1 it spreads the suggestions over the likely classes.
        """
        params = params or self.params
        probs = np.asarray(probabilities, np.float64)
        if sharpen != 1.0:
            probs = np.power(np.clip(probs, 0.0, None), sharpen)
            probs = probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-300)
        return probs @ self.probability(params.smoothing, estimator).T

    def finish(
        self,
        raw: np.ndarray,
        params: HashtagParams | None = None,
        multiplier: np.ndarray | None = None,
    ) -> np.ndarray:
        """Final (N, T) scores: raw scores times the tag weights; ineligible tags score -inf.

        Args:
            raw: any ranker's (N, T) scores.
            params: hashtag params (denylist, min_support).
            multiplier: optional (T,) per-tag weight chosen on validation (1 when None).
        """
        params = params or self.params
        raw = np.asarray(raw, np.float64)
        weighted = raw if multiplier is None else raw * multiplier
        return np.where(self._eligible(params), weighted, -np.inf)

    def rank_scores(
        self,
        final: np.ndarray,
        params: HashtagParams | None = None,
        shown: np.ndarray | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Ranked items for each row of final scores (from `finish`), best first.

        `shown`, if given, holds the scores the items carry (the final scores may only order).
        """
        params = params or self.params
        final = np.asarray(final, np.float64)
        shown = final if shown is None else np.asarray(shown, np.float64)
        return [self._top(row, params, label) for row, label in zip(final, shown, strict=True)]

    def rank(
        self, probabilities: np.ndarray, params: HashtagParams | None = None
    ) -> list[dict[str, Any]]:
        """Rank hashtags for one image's class probabilities (C,), best first.

        Each item is `{"tag", "score", "posts", "engagement"}`. At most `params.top_k` and never
        more than 30 (Instagram's limit); ties go to the more used tag, then alphabetically.
        """
        probs = np.asarray(probabilities, dtype=np.float64)
        if probs.ndim != 1:
            raise ValueError(f"rank takes one image's probabilities (C,), got shape {probs.shape}")
        return self.rank_batch(probs[None, :], params)[0]

    def rank_batch(
        self, probabilities: np.ndarray, params: HashtagParams | None = None
    ) -> list[list[dict[str, Any]]]:
        """`rank` for a batch of (N, C) probabilities."""
        params = params or self.params
        probs = np.asarray(probabilities, dtype=np.float64)
        ranked: list[list[dict[str, Any]]] = []
        for start in range(0, max(len(probs), 1), SCORE_CHUNK):  # bounds the (N, T) matrix
            scores = self.scores(probs[start : start + SCORE_CHUNK], params)
            ranked.extend(self._top(row, params) for row in scores)
        return ranked

    def _top(
        self, row: np.ndarray, params: HashtagParams, shown: np.ndarray | None = None
    ) -> list[dict[str, Any]]:
        shown = row if shown is None else shown
        # a NaN (a broken engine's output) would sort above every score in np.partition's
        # order and push finite tags out: it is no score, so it ranks as ineligible
        row = np.where(np.isnan(row), -np.inf, row)
        k = min(params.top_k, INSTAGRAM_MAX_TAGS)
        candidates = np.arange(len(row))
        if len(row) > k:  # only tags scoring at least the k-th best (ties included) can make it
            kth = np.partition(row, len(row) - k)[len(row) - k]
            candidates = np.flatnonzero(row >= kth)
        # lexsort: the last key is primary. Highest score, then most posts, then tag name.
        keys = (self._alpha[candidates], -self._support[candidates], -row[candidates])
        ranked = []
        for i in candidates[np.lexsort(keys)]:
            if len(ranked) == k or not np.isfinite(row[i]):
                break
            ranked.append(self._item(int(i), float(shown[i])))
        return ranked

    def _item(self, i: int, score: float) -> dict[str, Any]:
        return {
            "tag": self.tags[i],
            "score": round(score, 6),
            "posts": int(self._support[i]),
            "engagement": self.engagement[i],
        }

    def popular(self, params: HashtagParams | None = None) -> list[dict[str, Any]]:
        """Rank by popularity (the baseline): the most used eligible tags, the same for every image.

        `score` is the share of captioned training posts carrying the tag; no tag weights.
        """
        params = params or self.params
        return self._top(self.finish(self.popularity()[None, :], params)[0], params)


logger = logging.getLogger(__name__)

# 2: counts hold the authors' own tags only, with the captioned posts per class beside them
FORMAT_VERSION = 2


def own_tags(post: Post) -> set[str]:
    """The hashtags a post's author wrote (stored and in the caption): what a ranking must find."""
    return ({normalize_hashtag(tag) for tag in post.hashtags} | set(hashtags_in(post.caption))) - {
        ""
    }


@dataclass
class HashtagStats(HashtagRanking):
    """Per-class hashtag counts from the training posts, and what is needed to rank from them.

    Attributes:
        classes: the classifier's classes, in its output order.
        class_posts: training posts per class, captioned or not.
        captioned_posts: training posts per class with at least one tag of their own (the
            denominator of P(tag | class)).
        tags: the vocabulary, tags used on at least `min_support` posts (class tags always).
        counts: (T, C) int matrix, captioned posts of class c whose author wrote tag t.
        engagement: per tag, mean over the posts carrying it of likes / mean likes of the post's
            class (1.0 = as engaging as its class's average post); None without like counts.
        params: the hashtag params fitted with, used by default when ranking at serving time.

    """

    classes: list[str]
    class_posts: list[int]
    captioned_posts: list[int]
    tags: list[str]
    counts: np.ndarray
    engagement: list[float | None]
    params: HashtagParams
    _cache: dict[Any, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        shape = (len(self.tags), len(self.classes))
        self.counts = np.asarray(self.counts, dtype=np.int64).reshape(shape)
        self._support = self.counts.sum(axis=1)
        # alphabetical position of each tag: an int tie-breaker is far cheaper to sort than strings
        self._alpha = np.argsort(np.argsort(np.array(self.tags, dtype=object)))

    @property
    def support(self) -> np.ndarray:
        """Count posts carrying each tag, over all classes."""
        return self._support

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (sparse per-tag counts keyed by class name)."""
        return {
            "format_version": FORMAT_VERSION,
            "classes": self.classes,
            "class_posts": self.class_posts,
            "captioned_posts": self.captioned_posts,
            "params": self.params.model_dump(mode="json"),
            "tags": [
                {
                    "tag": tag,
                    "engagement": self.engagement[i],
                    "per_class": {
                        self.classes[c]: int(n) for c, n in enumerate(self.counts[i]) if n
                    },
                }
                for i, tag in enumerate(self.tags)
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HashtagStats:
        """Rebuild from `to_dict` output.

        Raises:
            ValueError: the dict is not hashtag statistics of a known format.

        """
        if data.get("format_version") != FORMAT_VERSION:
            raise TaglensError(
                f"hashtag statistics format {data.get('format_version')!r} is not supported "
                f"(expected {FORMAT_VERSION}); re-run the train stage to rebuild "
                f"{artifacts.HASHTAGS.name}"
            )
        classes = list(data["classes"])
        position = {name: c for c, name in enumerate(classes)}
        counts = np.zeros((len(data["tags"]), len(classes)), dtype=np.int64)
        for i, entry in enumerate(data["tags"]):
            for name, n in entry["per_class"].items():
                counts[i, position[name]] = n
        return cls(
            classes=classes,
            class_posts=[int(n) for n in data["class_posts"]],
            captioned_posts=[int(n) for n in data["captioned_posts"]],
            tags=[entry["tag"] for entry in data["tags"]],
            counts=counts,
            engagement=[entry.get("engagement") for entry in data["tags"]],
            params=HashtagParams.model_validate(_with_blend_rule(data["params"])),
        )

    def save(self, path: Path | str) -> Path:
        """Write the statistics as JSON, atomically."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path | str) -> HashtagStats:
        """Read statistics written by `save`.

        Raises:
            FileNotFoundError: no file at `path`.
            ValueError: the file is not valid hashtag statistics.

        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no hashtag statistics at {path}: run the train stage first")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise TaglensError(f"{path} is not valid hashtag statistics ({exc!r})") from None


def fit_hashtag_stats(
    posts: Sequence[Post], classes: Sequence[str], params: HashtagParams
) -> HashtagStats:
    """Count each tag per class over the training posts and measure its engagement.

    Only the authors' own tags count (see the module docstring). Tags used on fewer than
    `params.min_support` posts are dropped (class tags are kept), which also keeps hashtags.json
    small. Posts whose label is not in `classes` are ignored.
    """
    classes = list(classes)
    position = {name: c for c, name in enumerate(classes)}
    class_posts = [0] * len(classes)
    captioned_posts = [0] * len(classes)
    per_tag: dict[str, Counter[int]] = defaultdict(Counter)
    likes_by_class: dict[int, list[int]] = defaultdict(list)
    tagged_likes: dict[str, list[tuple[int, int]]] = defaultdict(list)
    skipped = 0
    for post in posts:
        c = position.get(post.label)
        if c is None:
            skipped += 1
            continue
        class_posts[c] += 1
        tags = own_tags(post)
        if not tags:
            continue
        captioned_posts[c] += 1
        if post.likes is not None:
            likes_by_class[c].append(post.likes)
        for tag in tags:
            per_tag[tag][c] += 1
            if post.likes is not None:
                tagged_likes[tag].append((c, post.likes))
    if skipped:
        logger.warning("ignored %d posts whose label is not one of the classes", skipped)
    class_tags = {normalize_hashtag(name) for name in classes}
    # a class tag is always in the vocabulary, even one no author wrote: it is what the class
    # suggests when it has no captioned posts
    tags = sorted(
        {tag for tag, counter in per_tag.items() if sum(counter.values()) >= params.min_support}
        | class_tags
    )
    class_mean = {c: float(np.mean(v)) for c, v in likes_by_class.items() if v}
    counts = np.zeros((len(tags), len(classes)), dtype=np.int64)
    engagement: list[float | None] = []
    for i, tag in enumerate(tags):
        for c, n in per_tag.get(tag, {}).items():
            counts[i, c] = n
        carried = tagged_likes.get(tag, [])
        ratios = [likes / class_mean[c] for c, likes in carried if class_mean.get(c)]
        engagement.append(round(float(np.mean(ratios)), 4) if ratios else None)
    logger.info(
        "hashtag statistics: %d tags kept of %d seen over %d captioned posts (of %d)",
        len(tags),
        len(per_tag),
        sum(captioned_posts),
        sum(class_posts),
    )
    return HashtagStats(classes, class_posts, captioned_posts, tags, counts, engagement, params)


def _with_blend_rule(params: dict[str, Any]) -> dict[str, Any]:
    """Saved hashtag params, with `search.blend_rule` for files saved before it existed.

    Those models' blends were chosen by the best score, so `best` is what they did.
    """
    search = params.get("search")
    if not isinstance(search, dict) or "blend_rule" in search:
        return params
    return {**params, "search": {**search, "blend_rule": "best"}}
