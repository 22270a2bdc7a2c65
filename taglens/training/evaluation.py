"""Scoring a loaded model on the test split: the one scoring code of evaluate and register.

Register re-scores the champion through `score_test_split`, so champion and challenger are
compared on the same images with the same metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from taglens import artifacts
from taglens.data.images import image_dataset
from taglens.data.posts import Post, hashtags_in, normalize_hashtag, read_raw_posts
from taglens.errors import TaglensError
from taglens.params import HashtagParams
from taglens.progress import progress_bar
from taglens.training import metrics, train_data

HASHTAG_K = 5  # HARRISON reports recall and accuracy at 5
FORWARD_BATCH = 32
RANK_CHUNK = 256  # test images ranked at once: bounds the (N, T) score matrices

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    """One model scored on the test split: the metrics and what the plots need."""

    scores: dict[str, Any]  # metrics.json plus `per_class` and `confusion`
    test: pd.DataFrame  # the manifest's test rows
    paths: list[Path]
    probabilities: np.ndarray
    y_true: np.ndarray
    # each test image, ordered by sha256: {"sha256", "label", "predicted", "correct"} (the
    # promotion gate pairs two models image by image on these)
    per_image: list[dict[str, Any]]


def hashtag_params(hashtags: HashtagParams) -> HashtagParams:
    """The hashtag params evaluation ranks with (at least HASHTAG_K suggestions)."""
    return hashtags.model_copy(update={"top_k": max(hashtags.top_k, HASHTAG_K)})


def score_test_split(predictor, top_k: int, *, raw: Path, clean: Path) -> Scored:
    """Score a loaded model (ranking with `hashtag_params`) on the test split.

    Args:
        predictor: a HashtagPredictor whose params come from `hashtag_params`.
        top_k: the class accuracy depth reported (evaluate.top_k).
        raw: data/raw (images and posts).
        clean: data/clean (the manifest names the test split).

    Raises:
        MissingArtifactError: the manifest or posts are missing.
        TaglensError: the model's classes differ from the manifest's, or the test split is empty.
    """
    classes = predictor.classes
    test = train_data.read_manifest(clean, classes)
    test = test[test["split"] == "test"].reset_index(drop=True)
    if test.empty:
        raise TaglensError(
            f"{artifacts.MANIFEST.at(clean)} has no test images: raise clean.test_fraction"
        )
    paths = [raw / image for image in test["image"]]
    outputs = _outputs(predictor, paths)
    probs = outputs["probabilities"]
    y_true = np.array([classes.index(label) for label in test["label"]])
    scores = metrics.classification_metrics(y_true, probs, classes, top_k)

    truth = _post_hashtags(read_raw_posts(raw), test)
    scores.update(hashtag_scores(predictor, outputs, truth))
    scores["test_fingerprint"] = metrics.split_fingerprint(test["sha256"], test["label"])
    return Scored(scores, test, paths, probs, y_true, per_image_rows(test, probs, classes))


def per_image_rows(
    test: pd.DataFrame, probabilities: np.ndarray, classes: list[str]
) -> list[dict[str, Any]]:
    """Each test image's label, top-1 prediction and whether it is right, ordered by sha256.

    Raises:
        TaglensError: a photo occurs twice in the test split (it could not be paired by sha256).
    """
    rows = []
    for sha, label, index in zip(
        test["sha256"], test["label"], probabilities.argmax(axis=1), strict=True
    ):
        predicted = classes[int(index)]
        rows.append(
            {
                "sha256": str(sha),
                "label": str(label),
                "predicted": predicted,
                "correct": predicted == label,
            }
        )
    twice = len(rows) - len({row["sha256"] for row in rows})
    if twice:
        raise TaglensError(
            f"{twice} test images occur twice in {artifacts.MANIFEST.name} (same sha256): "
            "re-run the clean stage"
        )
    return sorted(rows, key=lambda row: row["sha256"])


def hashtag_scores(
    predictor, outputs: dict[str, np.ndarray], truth: list[set[str]]
) -> dict[str, Any]:
    """The served ranking's hashtag metrics, and every ranker's beside it (prefixed by name).

    Popularity (the most used tags, suggested to every photo) and the class mixture are the
    floors the served ranking was chosen to reach on validation; a warning says when it falls
    below popularity on these posts.
    """
    depth = predictor.params.top_k  # how deep each ranking is scored
    ranked = [[item["tag"] for item in row] for row in predictor.rank(outputs)]
    scores: dict[str, Any] = dict(metrics.ranking_metrics(ranked, truth, HASHTAG_K, depth))
    for name, rows in _rankers(predictor, outputs):
        scores.update(
            metrics.with_prefix(metrics.ranking_metrics(rows, truth, HASHTAG_K, depth), f"{name}_")
        )
    if predictor.rankers is not None and predictor.rankers.choice:
        choice = predictor.rankers.choice
        scores["hashtag_ranking"] = {
            key: choice[key] for key in ("served", "rankers", "tag_weights", "why") if key in choice
        }
    below = [
        key
        for key in (
            "hashtag_precision_at_1",
            f"hashtag_recall_at_{HASHTAG_K}",
            f"hashtag_accuracy_at_{HASHTAG_K}",
        )
        if scores.get(key) is not None
        and scores.get(f"popularity_{key}") is not None
        and scores[key] < scores[f"popularity_{key}"]
    ]
    if below:
        logger.warning(
            "the served hashtags score below popularity (the most used tags for "
            "every photo) on the test posts in %s: %s",
            ", ".join(below),
            {key: (round(scores[key], 4), round(scores[f"popularity_{key}"], 4)) for key in below},
        )
    return scores


def _outputs(predictor, paths: list[Path]) -> dict[str, np.ndarray]:
    batches = image_dataset(paths, predictor.image_size, FORWARD_BATCH)
    parts = [
        predictor.outputs(batch.numpy())
        for batch in progress_bar(
            batches, desc="evaluate", unit="batch", total=-(-len(paths) // FORWARD_BATCH)
        )
    ]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _rankers(predictor, outputs: dict[str, np.ndarray]) -> list[tuple[str, list[list[str]]]]:
    """Each ranker's tag lists on its own (no tag weights), and the served blend's."""
    from taglens.training.blend import HashtagBlend

    stats = predictor.stats
    params = predictor.params
    blend = predictor.rankers or HashtagBlend()
    rows: dict[str, list[list[str]]] = {}
    probs = outputs["probabilities"]
    for start in range(0, len(probs), RANK_CHUNK):
        part = {key: value[start : start + RANK_CHUNK] for key, value in outputs.items()}
        scores = blend.ranker_scores(
            stats, params, part["probabilities"], part.get("features"), part.get("colour")
        )
        for name, raw in scores.items():
            ranked = _tags(stats.rank_scores(stats.finish(raw, params), params))
            rows.setdefault(name, []).extend(ranked)
        final = blend.final(stats, params, scores)
        rows.setdefault("blend", []).extend(_tags(stats.rank_scores(final, params)))
    return list(rows.items())


def _tags(rankings: list[list[dict]]) -> list[list[str]]:
    return [[item["tag"] for item in row] for row in rankings]


def _post_hashtags(posts: list[Post], test: pd.DataFrame) -> list[set[str]]:
    """Each test post's own caption hashtags (empty when the data has no captions)."""
    by_id = {}
    for post in posts:
        tags = {normalize_hashtag(t) for t in post.hashtags} | set(hashtags_in(post.caption))
        by_id[post.id] = by_id[post.sha256] = tags - {""}
    return [
        by_id.get(str(i), by_id.get(sha, set()))
        for i, sha in zip(test["id"], test["sha256"], strict=True)
    ]
