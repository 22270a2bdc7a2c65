"""Hashtag statistics from training captions, and the ranking built on them.

score(tag | image) = sum over classes c of P(c | image) * P(tag | c).
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

from taglens.atomic import atomic_write_json
from taglens.data.posts import Post, hashtags_in, normalize_hashtag
from taglens.errors import TaglensError
from taglens.params import HashtagParams

logger = logging.getLogger(__name__)

INSTAGRAM_MAX_TAGS = 30  # Instagram refuses posts with more hashtags than this
FORMAT_VERSION = 1
# what statistics saved before the image rankers existed meant: the class mixture alone
BEFORE_IMAGE_RANKERS = {"image_rankers": False, "max_image_tags": 1, "min_lift": 1.0,
                        "low_lift_weight": 1.0, "blend_step": 1.0}  # fmt: skip
SCORE_CHUNK = 64  # images scored at once: 64 x 20,000 tags is 10 MB of float64


def post_tags(post: Post) -> set[str]:
    """Collect the normalized hashtags of a post: stored tags, caption tags and its class tag.

    The class tag is added because the class *is* the hashtag the post was collected under, even
    when the source (a folder of images) had no caption.
    """
    tags = {normalize_hashtag(tag) for tag in post.hashtags}
    tags.update(hashtags_in(post.caption))
    tags.add(normalize_hashtag(post.label))
    tags.discard("")
    return tags


def own_tags(post: Post) -> set[str]:
    """The hashtags a post's author wrote (stored and in the caption): what a ranking must find."""
    return ({normalize_hashtag(tag) for tag in post.hashtags} | set(hashtags_in(post.caption))) - {
        ""
    }


@dataclass
class HashtagStats:
    """Per-class hashtag counts from the training posts, and what is needed to rank from them.

    Attributes:
        classes: the classifier's classes, in its output order.
        class_posts: training posts per class (the denominator of P(tag | class)).
        tags: the vocabulary, tags used on at least `min_support` posts (class tags always).
        counts: (T, C) int matrix, posts of class c carrying tag t.
        engagement: per tag, mean over the posts carrying it of likes / mean likes of the post's
            class (1.0 = as engaging as its class's average post); None without like counts.
        params: the hashtag params fitted with, used by default when ranking at serving time.

    """

    classes: list[str]
    class_posts: list[int]
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

    def probability(self, smoothing: float) -> np.ndarray:
        """(T, C) smoothed P(tag | class): the share of a class's posts carrying the tag.

        Additive (Laplace) smoothing of a per-post Bernoulli: (n_tc + a) / (n_c + 2a), so a tag
        never seen with a class keeps a small probability that shrinks as the class grows.
        """
        if ("p", smoothing) not in self._cache:
            totals = np.asarray(self.class_posts, dtype=np.float64) + 2.0 * smoothing
            safe = np.where(totals > 0, totals, 1.0)
            prob = (self.counts + smoothing) / safe
            self._cache["p", smoothing] = np.where(totals > 0, prob, 0.0)
        return self._cache["p", smoothing]

    def _eligible(self, params: HashtagParams) -> np.ndarray:
        key = ("eligible", params.denylist, params.min_support)
        if key not in self._cache:
            self._cache[key] = self._compute_eligible(params)
        return self._cache[key]

    def _compute_eligible(self, params: HashtagParams) -> np.ndarray:
        deny = {normalize_hashtag(tag) for tag in params.denylist}
        classes = {normalize_hashtag(c) for c in self.classes}
        support = self.support
        return np.array(
            [
                tag not in deny and (support[i] >= params.min_support or tag in classes)
                for i, tag in enumerate(self.tags)
            ],
            dtype=bool,
        )

    def _weights(self, params: HashtagParams) -> np.ndarray:
        key = ("weights", params.generic, params.generic_weight)
        if key not in self._cache:
            generic = {normalize_hashtag(tag) for tag in params.generic}
            self._cache[key] = np.array(
                [params.generic_weight if tag in generic else 1.0 for tag in self.tags],
                dtype=np.float64,
            )
        return self._cache[key]

    def scores(self, probabilities: np.ndarray, params: HashtagParams | None = None) -> np.ndarray:
        """(N, T) hashtag scores for (N, C) class probabilities; ineligible tags score -inf."""
        params = params or self.params
        probs = np.asarray(probabilities, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] != len(self.classes):
            raise TaglensError(
                f"expected class probabilities of shape (N, {len(self.classes)}) for classes "
                f"{self.classes}, got {probs.shape}: the model and hashtags.json do not match"
            )
        return self.finish(self.mixture(probs, params), params)

    def mixture(self, probabilities: np.ndarray, params: HashtagParams | None = None) -> np.ndarray:
        """(N, T) class mixture sum_c P(c | image) P(tag | c), before any tag weighting."""
        params = params or self.params
        return np.asarray(probabilities, np.float64) @ self.probability(params.smoothing).T

    def finish(self, raw: np.ndarray, params: HashtagParams | None = None,
               multiplier: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        """Final (N, T) scores: raw scores times the tag weights; ineligible tags score -inf.

        Args:
            raw: any ranker's (N, T) scores.
            params: hashtag params (generic weight, denylist, min_support).
            multiplier: optional (T,) extra per-tag weight (the low-lift down-weighting).
        """
        params = params or self.params
        weights = self._weights(params) if multiplier is None else \
            self._weights(params) * multiplier  # fmt: skip
        return np.where(self._eligible(params), np.asarray(raw, np.float64) * weights, -np.inf)

    def rank_scores(self, final: np.ndarray, params: HashtagParams | None = None
                    ) -> list[list[dict[str, Any]]]:  # fmt: skip
        """Ranked items for each row of final scores (from `finish`), best first."""
        params = params or self.params
        return [self._top(np.asarray(row, np.float64), params) for row in final]

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

    def _top(self, row: np.ndarray, params: HashtagParams) -> list[dict[str, Any]]:
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
            ranked.append(self._item(int(i), float(row[i])))
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

        `score` is the share of training posts carrying the tag.
        """
        params = params or self.params
        total = max(sum(self.class_posts), 1)
        row = np.where(
            self._eligible(params), self.support / total * self._weights(params), -np.inf
        )
        return self._top(row, params)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (sparse per-tag counts keyed by class name)."""
        return {
            "format_version": FORMAT_VERSION,
            "classes": self.classes,
            "class_posts": self.class_posts,
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
                f"(expected {FORMAT_VERSION}); re-run the train stage to rebuild hashtags.json"
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
            tags=[entry["tag"] for entry in data["tags"]],
            counts=counts,
            engagement=[entry.get("engagement") for entry in data["tags"]],
            params=HashtagParams.model_validate({**BEFORE_IMAGE_RANKERS, **data["params"]}),
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
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise TaglensError(f"{path} is not valid hashtag statistics ({exc!r})") from None


def fit_hashtag_stats(
    posts: Sequence[Post], classes: Sequence[str], params: HashtagParams
) -> HashtagStats:
    """Count each tag per class over the training posts and measure its engagement.

    Tags used on fewer than `params.min_support` posts are dropped (class tags are kept), which
    also keeps hashtags.json small. Posts whose label is not in `classes` are ignored.
    """
    classes = list(classes)
    position = {name: c for c, name in enumerate(classes)}
    class_posts = [0] * len(classes)
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
        if post.likes is not None:
            likes_by_class[c].append(post.likes)
        for tag in post_tags(post):
            per_tag[tag][c] += 1
            if post.likes is not None:
                tagged_likes[tag].append((c, post.likes))
    if skipped:
        logger.warning("ignored %d posts whose label is not one of the classes", skipped)
    class_tags = {normalize_hashtag(name) for name in classes}
    tags = sorted(
        tag
        for tag, counter in per_tag.items()
        if sum(counter.values()) >= params.min_support or tag in class_tags
    )
    for name in sorted(class_tags - set(tags)):
        tags.append(name)  # a class with no posts still suggests its own tag
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
        "hashtag statistics: %d tags kept of %d seen over %d posts",
        len(tags),
        len(per_tag),
        sum(class_posts),
    )
    return HashtagStats(classes, class_posts, tags, counts, engagement, params)
