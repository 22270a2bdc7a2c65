"""The served hashtag ranking: rankers, their blend, and how both are chosen on validation posts.

score(tag | image) = w_pop * popularity + w_mix * class mixture + w_tag * tag model
                     + w_colour * colour tag model + w_nn * neighbours,
then times a per-tag weight, with ineligible tags removed.

Everything here is chosen on validation posts, never by hand:
- each ranker's own settings (the class mixture's estimator and sharpening, the neighbours' k and
  similarity power), one ranker at a time;
- the tag weights (generic and low-lift tags down-weighted, or not: 1 is always a candidate);
- the blend weights, on a grid on the simplex (any may be 0).
A blend is eligible only if it reaches popularity's and the class mixture's P@1, R@5, A@5 and
R@top_k on validation, each within one standard error of the paired per-post difference (a
blend that ranks a handful of posts differently is not thereby worse): suggesting the most used
tags to everyone, and the class's usual tags, are floors. Among the eligible blends the choice
maximises the recall of the whole served list, R@top_k. When no blend reaches both floors, the
best single ranker is served, and the choice says so and why.

The served list is read in two parts. P@1, R@5 and A@5 depend on its first `HASHTAG_K` tags
only, so those come from the blend above. The rest of the list (tags `HASHTAG_K + 1` to
`top_k`) comes from a second blend, the tail (`choose_tail`): among the tails whose whole list
reaches the floors' R@top_k and recalls within one paired standard error of the best tail, the
one that weighs the image rankers most. When recall cannot tell two lists apart, the one built
from the photo rather than from its class is served: class-level tags are already at the head
of the list, and the tail is where tags only the photo shows (a colour) find room.

Picking among many candidates on a few hundred posts rewards noise. A ranker's own settings are
chosen by `hashtags.search.rule`, by default the one-standard-error rule of
`taglens.training.selection`: the simplest setting whose score (the per-post mean of the four
metrics, `objective`) is within one standard error of the best, the error of their paired
per-post difference. The blend is held by its floors instead; `choose_blend` can apply either
rule (complexity: no tag weights before tag weights, then the fewest image rankers).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from taglens.atomic import atomic_open
from taglens.errors import TaglensError
from taglens.training.selection import mean_se, pick_paired
from taglens.training.tag_rankers import NeighbourTags, TagModel

logger = logging.getLogger(__name__)

RANKERS = ("popularity", "class_mixture", "tag_model", "colour_tags", "neighbours")
FLOORS = ("popularity", "class_mixture")  # the rankers every blend must reach
IMAGE_RANKERS = ("tag_model", "colour_tags", "neighbours")
HASHTAG_K = 5  # the k of HARRISON's recall and accuracy, as in evaluate


@dataclass
class HashtagBlend:
    """The fitted rankers, their settings, the blend weights and the per-tag weights.

    Attributes:
        estimator: the class mixture's P(tag | class) estimator (`posts` or `uses`).
        sharpen: the exponent on P(class | image) before the class mixture.
        tag_model: sigmoid per tag on the backbone features, or None.
        colour_model: the same on the colour view, or None.
        neighbours: tag transfer from the nearest training photos, or None.
        weights: blend weight per ranker name (missing: 0).
        tag_multiplier: (T,) weight per tag chosen on validation, or None for 1.
        choice: what was served and why, with the validation scores (a JSON-ready dict).
    """

    estimator: str = "posts"
    sharpen: float = 1.0
    tag_model: TagModel | None = None
    colour_model: TagModel | None = None
    neighbours: NeighbourTags | None = None
    weights: dict[str, float] = field(default_factory=lambda: {"class_mixture": 1.0})
    tag_multiplier: np.ndarray | None = None
    choice: dict[str, Any] = field(default_factory=dict)
    tail_weights: dict[str, float] | None = None  # the list after HASHTAG_K tags; None: `weights`

    def ranker_scores(
        self,
        stats,
        params,
        probabilities: np.ndarray,
        features: np.ndarray | None = None,
        colour: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """(N, T) scores of every ranker that can run on these inputs (before tag weights).

        Args:
            stats: the HashtagStats the rankers were fitted with.
            params: hashtag params (smoothing).
            probabilities: (N, C) class probabilities.
            features: (N, D) backbone features, if the model outputs them.
            colour: (N, H) colour view, if the model outputs it.
        """
        probabilities = np.asarray(probabilities, np.float64)
        n = len(probabilities)
        scores = {
            "popularity": np.broadcast_to(stats.popularity(), (n, len(stats.tags))),
            "class_mixture": stats.mixture(probabilities, params, self.estimator, self.sharpen),
        }
        if self.tag_model is not None and features is not None:
            scores["tag_model"] = self.tag_model.predict(features, len(stats.tags))
        if self.colour_model is not None and colour is not None:
            scores["colour_tags"] = self.colour_model.predict(colour, len(stats.tags))
        if self.neighbours is not None and features is not None:
            scores["neighbours"] = self.neighbours.predict(features)
        return scores

    def blend(
        self, scores: dict[str, np.ndarray], weights: dict[str, float] | None = None
    ) -> np.ndarray:
        """The weighted sum of the rankers' scores (a ranker without inputs counts as 0).

        `weights` defaults to the blend's own (the head of the list).
        """
        first = next(iter(scores.values()))
        total = np.zeros(first.shape, np.float64)
        for name, weight in (self.weights if weights is None else weights).items():
            if weight and name in scores:
                total += weight * scores[name]
        return total

    def final(self, stats, params, scores: dict[str, np.ndarray]) -> np.ndarray:
        """(N, T) served scores: the head blend's first `HASHTAG_K` tags, then the tail's.

        Args:
            stats: the HashtagStats the rankers were fitted with (eligibility, tag weights).
            params: hashtag params.
            scores: `ranker_scores`.
        """
        head = stats.finish(self.blend(scores), params, self.tag_multiplier)
        if not self.tail_weights:
            return head
        tail = stats.finish(self.blend(scores, self.tail_weights), params, self.tag_multiplier)
        return head_then_tail(head, tail, HASHTAG_K)

    def save(self, path: Path) -> Path:
        """Write every array and the settings to one .npz, atomically."""
        arrays: dict[str, np.ndarray] = {
            "weights": np.array([self.weights.get(name, 0.0) for name in RANKERS]),
            "settings": np.array(
                json.dumps(
                    {"estimator": self.estimator, "sharpen": self.sharpen, "choice": self.choice}
                )
            ),
        }
        if self.tag_multiplier is not None:
            arrays["tag_multiplier"] = self.tag_multiplier
        if self.tail_weights:
            arrays["tail_weights"] = np.array([self.tail_weights.get(n, 0.0) for n in RANKERS])
        for prefix, model in (("tag", self.tag_model), ("colour", self.colour_model)):
            if model is not None:
                for name in ("mean", "scale", "kernel", "bias", "columns"):
                    arrays[f"{prefix}_{name}"] = getattr(model, name)
        if self.neighbours is not None:
            arrays["nn_reference"] = self.neighbours.reference.astype("float16")
            rows, cols = np.nonzero(self.neighbours.tags)
            arrays["nn_rows"] = rows
            arrays["nn_cols"] = cols
            arrays["nn_shape"] = np.array(self.neighbours.tags.shape)
            arrays["nn_params"] = np.array([self.neighbours.k, self.neighbours.power])
        with atomic_open(path, "wb") as handle:
            np.savez(handle, **arrays)
        return path

    @classmethod
    def load(cls, path: Path) -> HashtagBlend:
        """Read what `save` wrote.

        Raises:
            TaglensError: the file is not a hashtag blend of this version.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError) as exc:
            message = f"{path} is not a valid hashtag blend ({exc}): re-run train"
            raise TaglensError(message) from None
        if "weights" not in arrays or "settings" not in arrays:
            raise TaglensError(f"{path} is a hashtag blend of an older version: re-run train")
        if len(arrays["weights"]) != len(RANKERS):
            raise TaglensError(f"{path} names other rankers than {RANKERS}: re-run train")
        settings = json.loads(str(arrays["settings"]))

        def tag_model(prefix: str) -> TagModel | None:
            if f"{prefix}_kernel" not in arrays:
                return None
            names = ("mean", "scale", "kernel", "bias", "columns")
            return TagModel(*(arrays[f"{prefix}_{name}"] for name in names))

        neighbours = None
        if "nn_reference" in arrays:
            tags = np.zeros(tuple(arrays["nn_shape"]), dtype="float32")
            tags[arrays["nn_rows"], arrays["nn_cols"]] = 1.0
            k, power = arrays["nn_params"]
            reference = arrays["nn_reference"].astype("float32")
            neighbours = NeighbourTags(reference, tags, int(k), float(power))
        weights = dict(zip(RANKERS, (float(w) for w in arrays["weights"]), strict=True))
        tail = None
        if "tail_weights" in arrays:
            tail = dict(zip(RANKERS, (float(w) for w in arrays["tail_weights"]), strict=True))
        return cls(
            estimator=settings["estimator"],
            sharpen=float(settings["sharpen"]),
            tag_model=tag_model("tag"),
            colour_model=tag_model("colour"),
            neighbours=neighbours,
            weights=weights,
            tag_multiplier=arrays.get("tag_multiplier"),
            choice=settings.get("choice", {}),
            tail_weights=tail,
        )


def head_then_tail(head: np.ndarray, tail: np.ndarray, n: int) -> np.ndarray:
    """Scores that rank each row's `n` best tags by `head` first, then the rest by `tail`.

    Both are final scores (-inf: ineligible) over the same tags. The head's top tags keep their
    order and are lifted just above the row's best remaining tail score; the others keep their
    tail score.
    """
    head = np.asarray(head, np.float64)
    out = np.array(tail, np.float64, copy=True)
    n = min(n, head.shape[1])
    if n == 0 or not len(head):
        return out
    top = np.argpartition(-head, n - 1, axis=1)[:, :n]
    top_scores = np.take_along_axis(head, top, axis=1)
    finite = np.isfinite(top_scores)
    rest = out.copy()
    np.put_along_axis(rest, top, -np.inf, axis=1)
    rest_best = rest.max(axis=1, initial=-np.inf)
    head_low = np.where(finite, top_scores, np.inf).min(axis=1)
    gap = np.where(np.isfinite(rest_best) & np.isfinite(head_low), rest_best - head_low, 0.0)
    lift = np.maximum(gap, 0.0) + 1e-6
    np.put_along_axis(rest, top, np.where(finite, top_scores + lift[:, None], -np.inf), axis=1)
    return rest


def post_scores(
    final: np.ndarray, truth: np.ndarray, n_truth: np.ndarray, top_k: int
) -> dict[str, np.ndarray]:
    """Per post with tags, HARRISON's metrics for a (N, T) score matrix.

    Args:
        final: scores, -inf for ineligible tags.
        truth: (N, T) 0/1, the vocabulary tags each post carries.
        n_truth: (N,) how many tags each post carries in all (its recall's denominator).
        top_k: the k of the extra recall@k (the number of tags served).

    Returns:
        `precision_at_1`, `recall_at_5`, `accuracy_at_5` and `recall_at_{top_k}`, each an array
        over the posts that carry tags.
    """
    keep = n_truth > 0
    final = np.asarray(final)[keep]
    truth = truth[keep]
    n_truth = n_truth[keep].astype("float64")
    k = min(max(top_k, HASHTAG_K), final.shape[1])
    if k < final.shape[1]:
        picks = np.argpartition(-final, k - 1, axis=1)[:, :k]
    else:
        picks = np.tile(np.arange(final.shape[1]), (len(final), 1))
    picked = np.take_along_axis(final, picks, axis=1)
    order = np.argsort(-picked, axis=1, kind="stable")
    top = np.take_along_axis(picks, order, axis=1)
    hits = np.take_along_axis(truth, top, axis=1) * np.isfinite(np.take_along_axis(final, top, 1))
    return {
        "precision_at_1": hits[:, 0].astype("float64"),
        f"recall_at_{HASHTAG_K}": hits[:, :HASHTAG_K].sum(1) / n_truth,
        f"accuracy_at_{HASHTAG_K}": (hits[:, :HASHTAG_K].sum(1) > 0).astype("float64"),
        f"recall_at_{top_k}": hits[:, :top_k].sum(1) / n_truth,
    }


def ranking_scores(
    final: np.ndarray, truth: np.ndarray, n_truth: np.ndarray, top_k: int
) -> dict[str, float]:
    """HARRISON's metrics (as taglens.training.metrics.hashtag_metrics), averaged over posts."""
    return {
        key: float(values.mean())
        for key, values in post_scores(final, truth, n_truth, top_k).items()
    }


def objective(per_post: dict[str, np.ndarray]) -> np.ndarray:
    """Per post, the mean of the guarded metrics: what a ranker's own settings maximise."""
    return np.mean(np.stack(list(per_post.values())), axis=0)


def simplex(names: Sequence[str], step: float) -> list[dict[str, float]]:
    """Every weighting of `names` on the grid of `step` whose weights sum to 1."""
    ticks = int(round(1 / step))
    grid = []
    for combo in itertools.product(range(ticks + 1), repeat=len(names) - 1):
        if sum(combo) > ticks:
            continue
        weights = dict(zip(names[1:], (c / ticks for c in combo), strict=True))
        weights[names[0]] = (ticks - sum(combo)) / ticks
        grid.append({name: weights[name] for name in names})
    return grid


def choose_tail(
    scores: dict[str, np.ndarray],
    finish: Callable[[np.ndarray], np.ndarray],
    head_weights: dict[str, float],
    truth: np.ndarray,
    n_truth: np.ndarray,
    top_k: int,
    step: float,
    floor: np.ndarray,
) -> tuple[dict[str, float] | None, dict[str, Any]]:
    """The blend that ranks the list after its first `HASHTAG_K` tags (the module docstring).

    Args:
        scores: each ranker's (N, T) validation scores.
        finish: the chosen tag weighting (raw blend -> final scores).
        head_weights: the chosen blend, which ranks the head of the list (and is a candidate).
        truth: (N, T) 0/1, the vocabulary tags each validation post carries.
        n_truth: (N,) how many tags each post carries in all.
        top_k: the number of tags served.
        step: the grid step of the weights.
        floor: the per-post R@top_k (posts with tags) the whole list must reach.

    Returns:
        The tail's weights (None when the list is no longer than `HASHTAG_K`, or when the head's
        own blend is chosen) and a summary: the head's, the best and the chosen R@top_k.
    """
    if top_k <= HASHTAG_K:
        return None, {"why": f"the list has no tail after {HASHTAG_K} tags"}
    keep = n_truth > 0
    scores = {name: s[keep] for name, s in scores.items()}
    truth = truth[keep]
    n_truth = n_truth[keep]
    names = [name for name in RANKERS if name in scores]
    head = finish(sum(w * scores[name] for name, w in head_weights.items() if w and name in scores))
    key = f"recall_at_{top_k}"
    candidates = [{name: float(head_weights.get(name, 0.0)) for name in names}]
    candidates += [w for w in simplex(names, step) if w != candidates[0]]
    recalls = []
    for weights in candidates:
        tail = finish(sum(w * scores[name] for name, w in weights.items() if w))
        served = head_then_tail(head, tail, HASHTAG_K)
        recalls.append(post_scores(served, truth, n_truth, top_k)[key])
    passing = [i for i in range(len(candidates)) if reaches(recalls[i], floor)] or [0]
    best = max(passing, key=lambda i: float(recalls[i].mean()))
    gap = {i: float(recalls[best].mean() - recalls[i].mean()) for i in passing}
    near = [i for i in passing if gap[i] <= mean_se(recalls[best] - recalls[i]) + 1e-12]

    def image_weight(i: int) -> float:
        return sum(candidates[i].get(name, 0.0) for name in IMAGE_RANKERS)

    chosen = max(near, key=lambda i: (image_weight(i), float(recalls[i].mean()), -i))
    summary = {
        "head_recall": float(recalls[0].mean()),
        "best_recall": float(recalls[best].mean()),
        "chosen_recall": float(recalls[chosen].mean()),
        "near_best": len(near),
    }
    logger.info("list tail: %s (%s)", candidates[chosen], summary)
    return (None if chosen == 0 else candidates[chosen]), summary


def reaches(candidate: np.ndarray, floor: np.ndarray) -> bool:
    """Whether per-post scores are at least a floor's, within one paired standard error."""
    difference = np.asarray(candidate, np.float64) - np.asarray(floor, np.float64)
    return bool(difference.mean() >= -mean_se(difference) - 1e-12)


def choose_blend(
    scores: dict[str, np.ndarray],
    finishers: Sequence[Callable[[np.ndarray], np.ndarray]],
    truth: np.ndarray,
    n_truth: np.ndarray,
    top_k: int,
    step: float,
    rule: str,
    floor: dict[str, np.ndarray],
) -> tuple[dict[str, float], int, dict[str, float], dict[str, Any]] | None:
    """Search the blend grid on validation posts (see the module docstring).

    Args:
        scores: each ranker's (N, T) validation scores.
        finishers: candidate tag weightings, simplest first: each turns a raw (N, T) blend into
            final scores (tag weights, -inf if ineligible).
        truth: (N, T) 0/1, the vocabulary tags each validation post carries.
        n_truth: (N,) how many tags each post carries in all.
        top_k: the k of the served recall.
        step: the grid step of every weight (0.1: weights 0, 0.1, ..., 1).
        rule: `best` or `one_se` (see `taglens.training.selection.pick`).
        floor: per metric, the per-post scores (on the posts with tags) a blend must reach:
            its mean on that metric may fall short of the floor's by no more than the standard
            error of their paired per-post difference, so that a blend is turned away for being
            worse, not for ranking one post differently.

    Returns:
        The weights, the index of the finisher chosen, their validation metrics and a summary
        of the search (the best and the chosen blend's R@top_k); None when no blend reaches the
        floor.
    """
    keep = n_truth > 0  # only posts with tags are scored: leave the others out of the search
    scores = {name: s[keep] for name, s in scores.items()}
    truth = truth[keep]
    n_truth = n_truth[keep]
    names = [name for name in RANKERS if name in scores]
    passing: list[tuple[dict[str, float], int, dict[str, float], np.ndarray]] = []
    tried = 0
    for index, finish in enumerate(finishers):
        for weights in simplex(names, step):
            raw = sum(w * scores[name] for name, w in weights.items() if w)
            per_post = post_scores(finish(raw), truth, n_truth, top_k)
            tried += 1
            got = {key: float(v.mean()) for key, v in per_post.items()}
            if all(reaches(per_post[key], floor[key]) for key in floor):
                passing.append((weights, index, got, per_post[f"recall_at_{top_k}"]))
    summary = {"tried": tried, "passing": len(passing)}
    if not passing:
        logger.info("no blend of %d reaches the floor", tried)
        return None
    # popularity and the class mixture are the floors: weighing them costs no simplicity
    complexity = [
        (index, sum(1 for name in IMAGE_RANKERS if weights.get(name)))
        for weights, index, _, _ in passing
    ]
    chosen = pick_paired([p[3] for p in passing], complexity, rule)
    weights, index, got, _ = passing[chosen]
    best = max(float(p[3].mean()) for p in passing)
    summary.update(best_recall=best, chosen_recall=float(passing[chosen][3].mean()))
    logger.info(
        "blend %s (tag weighting %d): validation %s; %d of %d blends reach the floor",
        weights,
        index,
        got,
        len(passing),
        tried,
    )
    return weights, index, got, summary
