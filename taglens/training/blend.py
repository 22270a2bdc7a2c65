"""The served hashtag ranking: a blend of rankers whose weights are chosen on validation posts.

score(tag | image) = w_mix * class mixture + w_tag * tag model + w_colour * colour tag model
                     + w_nn * neighbours, then times the tag's weight (generic and low-lift tags
                     count less) with ineligible tags removed.

The weights come from a grid on the simplex (any of them may be 0). The objective, on the
validation posts: the highest recall@top_k among blends whose precision@1, recall@5 and
accuracy@5 are each at least the class mixture's, so image evidence may add tags but never at
the cost of what the class mixture already gets right.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from taglens.atomic import atomic_open
from taglens.errors import TaglensError
from taglens.training.tag_rankers import NeighbourTags, TagModel

logger = logging.getLogger(__name__)

RANKERS = ("class_mixture", "tag_model", "colour_tags", "neighbours")
HASHTAG_K = 5  # the k of HARRISON's recall and accuracy, as in evaluate


@dataclass
class ImageRankers:
    """The fitted image rankers, the blend weights and the per-tag multipliers."""

    tag_model: TagModel | None
    colour_model: TagModel | None
    neighbours: NeighbourTags | None
    weights: dict[str, float] = field(default_factory=lambda: {"class_mixture": 1.0})
    tag_multiplier: np.ndarray | None = None  # (T,) low-lift tags get low_lift_weight, others 1

    def ranker_scores(self, mixture: np.ndarray, features: np.ndarray | None,
                      colour: np.ndarray | None) -> dict[str, np.ndarray]:  # fmt: skip
        """(N, T) scores of every ranker that can run on these inputs."""
        n_tags = mixture.shape[1]
        scores = {"class_mixture": mixture}
        if self.tag_model is not None and features is not None:
            scores["tag_model"] = self.tag_model.predict(features, n_tags)
        if self.colour_model is not None and colour is not None:
            scores["colour_tags"] = self.colour_model.predict(colour, n_tags)
        if self.neighbours is not None and features is not None:
            scores["neighbours"] = self.neighbours.predict(features)
        return scores

    def blend(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """The weighted sum of the rankers' scores (a ranker without inputs counts as 0)."""
        total = np.zeros_like(scores["class_mixture"])
        for name, weight in self.weights.items():
            if weight and name in scores:
                total += weight * scores[name]
        return total

    def save(self, path: Path) -> Path:
        """Write every array to one .npz, atomically."""
        arrays: dict[str, np.ndarray] = {
            "weights": np.array([self.weights.get(name, 0.0) for name in RANKERS]),
        }
        if self.tag_multiplier is not None:
            arrays["tag_multiplier"] = self.tag_multiplier
        for prefix, model in (("tag", self.tag_model), ("colour", self.colour_model)):
            if model is not None:
                arrays.update({f"{prefix}_{k}": getattr(model, k) for k in
                               ("mean", "scale", "kernel", "bias", "columns")})  # fmt: skip
        if self.neighbours is not None:
            arrays["nn_reference"] = self.neighbours.reference.astype("float16")
            arrays["nn_rows"], arrays["nn_cols"] = np.nonzero(self.neighbours.tags)
            arrays["nn_shape"] = np.array(self.neighbours.tags.shape)
            arrays["nn_params"] = np.array([self.neighbours.k, self.neighbours.temperature])
        with atomic_open(path, "wb") as handle:
            np.savez(handle, **arrays)
        return path

    @classmethod
    def load(cls, path: Path) -> ImageRankers:
        """Read what `save` wrote.

        Raises:
            TaglensError: the file is not image rankers.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError) as exc:
            raise TaglensError(f"{path} is not valid image rankers ({exc}): re-run train") from None
        if "weights" not in arrays:
            raise TaglensError(f"{path} has no blend weights: re-run the train stage")

        def tag_model(prefix: str) -> TagModel | None:
            if f"{prefix}_kernel" not in arrays:
                return None
            return TagModel(*(arrays[f"{prefix}_{k}"] for k in
                              ("mean", "scale", "kernel", "bias", "columns")))  # fmt: skip

        neighbours = None
        if "nn_reference" in arrays:
            tags = np.zeros(tuple(arrays["nn_shape"]), dtype="float32")
            tags[arrays["nn_rows"], arrays["nn_cols"]] = 1.0
            k, temperature = arrays["nn_params"]
            neighbours = NeighbourTags(arrays["nn_reference"].astype("float32"), tags, int(k),
                                       float(temperature))  # fmt: skip
        weights = dict(zip(RANKERS, (float(w) for w in arrays["weights"]), strict=True))
        return cls(tag_model("tag"), tag_model("colour"), neighbours, weights,
                   arrays.get("tag_multiplier"))  # fmt: skip


def ranking_scores(
    final: np.ndarray, truth: np.ndarray, n_truth: np.ndarray, top_k: int
) -> dict[str, float]:
    """HARRISON's metrics (as taglens.training.metrics.hashtag_metrics) for a (N, T) score matrix.

    Args:
        final: scores, -inf for ineligible tags.
        truth: (N, T) 0/1, the vocabulary tags each post carries.
        n_truth: (N,) how many tags each post carries in all (its recall's denominator).
        top_k: the k of the extra recall@k (the number of tags served).
    """
    keep = n_truth > 0
    final, truth, n_truth = final[keep], truth[keep], n_truth[keep].astype("float64")
    k = max(top_k, HASHTAG_K)
    top = np.argsort(-final, axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(truth, top, axis=1) * np.isfinite(
        np.take_along_axis(final, top, axis=1))
    return {
        "precision_at_1": float(hits[:, 0].mean()),
        f"recall_at_{HASHTAG_K}": float((hits[:, :HASHTAG_K].sum(1) / n_truth).mean()),
        f"accuracy_at_{HASHTAG_K}": float((hits[:, :HASHTAG_K].sum(1) > 0).mean()),
        f"recall_at_{top_k}": float((hits[:, :top_k].sum(1) / n_truth).mean()),
    }


def choose_weights(
    scores: dict[str, np.ndarray], finish, truth: np.ndarray, n_truth: np.ndarray, top_k: int,
    step: float, floor: dict[str, float] | None = None,
) -> tuple[dict[str, float], dict[str, float]] | None:
    """Search the simplex grid of blend weights on validation posts (see the module docstring).

    Args:
        scores: each ranker's (N, T) validation scores; `class_mixture` must be among them.
        finish: turns a raw (N, T) blend into final scores (tag weights, -inf if ineligible).
        truth: (N, T) 0/1, the vocabulary tags each validation post carries.
        n_truth: (N,) how many tags each post carries in all.
        top_k: the k of the recall the search maximises (the number of tags served).
        step: the grid step of every weight (0.1: weights 0, 0.1, ..., 1).
        floor: the metrics a blend must reach; by default the class mixture's through `finish`.

    Returns:
        The chosen weights and their validation metrics, or None when no blend reaches the floor.
    """
    names = [name for name in RANKERS if name in scores]
    ticks = int(round(1 / step))
    floor = floor or ranking_scores(finish(scores["class_mixture"]), truth, n_truth, top_k)
    guarded = ("precision_at_1", f"recall_at_{HASHTAG_K}", f"accuracy_at_{HASHTAG_K}")
    best = None
    for combo in itertools.product(range(ticks + 1), repeat=len(names) - 1):
        if sum(combo) > ticks:
            continue
        weights = dict(zip(names[1:], (c / ticks for c in combo), strict=True))
        weights["class_mixture"] = (ticks - sum(combo)) / ticks
        raw = sum(w * scores[name] for name, w in weights.items() if w)
        got = ranking_scores(finish(raw), truth, n_truth, top_k)
        if all(got[key] >= floor[key] for key in guarded) and (
                best is None or got[f"recall_at_{top_k}"] > best[1][f"recall_at_{top_k}"]):
            best = (weights, got)
    logger.info("blend weights %s: validation %s (floor %s)", best and best[0],
                best and best[1], floor)  # fmt: skip
    return best
