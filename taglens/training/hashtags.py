"""Hashtag statistics from training captions: per-class tag counts, engagement, and their file.

The train stage fits them on the training posts only and writes `models/hashtags.json`; serving
loads that file. How they are turned into ranked suggestions is in
`taglens.training.hashtag_ranking`, which `HashtagStats` inherits.

Only the tags a post's author wrote are counted, and only captioned posts (with at least one
tag) estimate how often a class's posts carry a tag: that is what a suggestion is scored against.
A post collected under a hashtag but shown without a caption says nothing about which tags its
author would use, so counting its class tag would credit the class tag (and popularity) with
posts no ranking is ever judged on.
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
from taglens.training.hashtag_ranking import HashtagRanking

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
            params=HashtagParams.model_validate(data["params"]),
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
