"""Which hashtag ranking is served: image rankers, their blend, tag weights, chosen on validation.

The image rankers look at the photo itself, where the class mixture (`taglens.model.hashtags`)
gives every photo of a class the same tags:
- a tag model: one sigmoid per frequent tag over the standardised features (a multi-label
  logistic regression fitted jointly), one on the backbone features and one on the colour view;
- neighbour transfer: the tags of the k most similar training photos (cosine similarity of the
  features), each weighted by its similarity raised to a power (higher: the closest count more).
Each scores P(tag | image) on the vocabulary of `HashtagStats`.

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
is made on what a ranker's own settings are chosen on (below), the per-post mean of the four
metrics (`objective`): the head of the list decides three of them. When no blend reaches both
floors, a single ranker is served (chosen by the blend's rule), and the choice says so and why.

The served list is read in two parts. P@1, R@5 and A@5 depend on its first `HASHTAG_K` tags
only, so those come from the blend above (were it chosen for the recall of its whole list
alone, the head would give up precision at the top for tags the tail can place; R@top_k stays in
its score because, when no tail beats the head's own blend, that blend's list is served whole).
The rest of the list (tags `HASHTAG_K + 1` to `top_k`) comes from a second blend, the tail
(`choose_tail`): among the tails whose whole list reaches the floors' R@top_k and recalls within
one paired standard error of the best tail, the one that weighs the image rankers most. When
recall cannot tell two lists apart, the one built from the photo rather than from its class is
served: class-level tags are already at the head of the list, and the tail is where tags only
the photo shows (a colour) find room.

Picking among many candidates on a few hundred posts rewards noise. A ranker's own settings are
chosen by `hashtags.search.rule`, by default the one-standard-error rule of
`taglens.training.search`: the simplest setting whose score (the per-post mean of the four
metrics, `objective`) is within one standard error of the best, the error of their paired
per-post difference. The blend is chosen on the same score among those that reach its floors,
by `hashtags.search.blend_rule` (by default `best`: the floors already guard it; under `one_se`
simpler means no tag weights before tag weights, then fewer image rankers, and weighing
popularity or the class mixture costs no simplicity).

`fit_ranking` fits the rankers on training posts and chooses in this order: each ranker's own
settings first (one ranker at a time, so a few dozen candidates compete instead of their
product), then the tag weights and the blend together, with popularity and the class mixture as
floors. The served choice is saved as image_rankers.npz (`HashtagBlend.save` and `load`).
"""

from __future__ import annotations

import itertools
import json
import logging
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from taglens import artifacts
from taglens.atomic import atomic_open
from taglens.data.posts import normalize_hashtag
from taglens.errors import TaglensError
from taglens.model.hashtags import HashtagStats, fit_hashtag_stats, own_tags
from taglens.params import HashtagParams
from taglens.training.search import mean_se, pick_paired

if TYPE_CHECKING:
    from taglens.training.head import HeadFit
    from taglens.training.run import TrainConfig
    from taglens.training.splits import Split

logger = logging.getLogger(__name__)

TAG_MODEL_EPOCHS = 200  # upper bound; early stopping on validation loss ends far sooner
TAG_MODEL_PATIENCE = 5
TAG_MODEL_L2 = 1e-4  # a little ridge keeps rare tags' weights from growing without bound
TAG_MODEL_BATCH = 64
TAG_MODEL_ADAM = (1e-3, 0.9, 0.999, 1e-7)  # learning rate, beta 1 and 2, epsilon: Keras' Adam
SCORE_CHUNK = 256  # query rows per similarity block: 256 x 7,000 floats is 7 MB


def tag_matrix(tag_lists: list[set[str]], vocabulary: list[str]) -> np.ndarray:
    """(N, T) float32 0/1: which vocabulary tags each post carries."""
    position = {tag: i for i, tag in enumerate(vocabulary)}
    matrix = np.zeros((len(tag_lists), len(vocabulary)), dtype="float32")
    for row, tags in enumerate(tag_lists):
        matrix[row, [position[t] for t in tags if t in position]] = 1.0
    return matrix


@dataclass
class TagModel:
    """Sigmoid(standardise(x) @ kernel + bias) over the tags in `columns` (vocabulary indices)."""

    mean: np.ndarray
    scale: np.ndarray
    kernel: np.ndarray
    bias: np.ndarray
    columns: np.ndarray

    def predict(self, x: np.ndarray, n_tags: int) -> np.ndarray:
        """(N, n_tags) probabilities; tags the model does not cover score 0."""
        logits = ((np.asarray(x, "float32") - self.mean) / self.scale) @ self.kernel + self.bias
        out = np.zeros((len(x), n_tags), dtype="float32")
        out[:, self.columns] = 1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))
        return out


def fit_tag_model(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    max_tags: int,
    seed: int,
) -> TagModel:
    """Fit one sigmoid per tag (the `max_tags` most used in training) with early stopping.

    Args:
        train: features (N, D) and tag matrix (N, T) of the training posts.
        val: the same for validation posts (early stopping on their binary cross-entropy).
        max_tags: the tag model covers at most this many of the most frequent tags.
        seed: seeds initialisation and shuffling.
    """
    x_train, y_train = train
    x_val, y_val = val
    counts = y_train.sum(axis=0)
    columns = np.sort(np.argsort(-counts, kind="stable")[:max_tags])
    columns = columns[counts[columns] > 0]
    mean = x_train.mean(axis=0).astype("float32")
    std = x_train.std(axis=0)
    # A feature no training post varies in (a colour bin no photo fills) teaches nothing: it
    # keeps its random starting weight, which a photo that does fill it would multiply by 1/std.
    constant = std <= 1e-6
    scale = np.where(constant, 1.0, std).astype("float32")
    kernel, bias = fit_sigmoids(
        ((x_train - mean) / scale, y_train[:, columns]),
        ((x_val - mean) / scale, y_val[:, columns]),
        seed,
    )
    kernel[constant] = 0.0
    return TagModel(mean, scale, kernel, bias, columns.astype("int64"))


def sigmoid_loss(x: np.ndarray, y: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> float:
    """Mean binary cross-entropy of sigmoid(x @ kernel + bias) against y, plus the L2 penalty."""
    logits = x @ kernel + bias
    # the cross-entropy from logits, stable for large |logits|
    entropy = np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))
    return float(entropy.mean() + TAG_MODEL_L2 * np.sum(np.square(kernel)))


def fit_sigmoids(
    train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) of the multi-label logistic regression, fitted by minibatch Adam.

    Adam minimises `sigmoid_loss` and stops when the validation loss has not improved for
    `TAG_MODEL_PATIENCE` epochs, keeping the best epoch's weights.

    This is Keras' `fit` of a sigmoid Dense layer (Glorot-uniform start, Adam at its defaults,
    early stopping that restores the best weights) written in NumPy: the model is one matrix
    product, and on a few hundred posts Keras' fixed cost per step and per epoch (tf.function
    calls, a new dataset iterator, the validation pass) was nearly all of the train stage, about
    20 s a fit whatever the data's size.
    """
    x, y = (np.ascontiguousarray(a, "float32") for a in train)
    x_val, y_val = (np.ascontiguousarray(a, "float32") for a in val)
    rng = np.random.default_rng(seed)
    n, width = x.shape
    limit = np.sqrt(6.0 / (width + y.shape[1]))
    weights = [
        rng.uniform(-limit, limit, (width, y.shape[1])).astype("float32"),
        np.zeros(y.shape[1], "float32"),
    ]
    first = [np.zeros_like(w) for w in weights]  # Adam's moment estimates
    second = [np.zeros_like(w) for w in weights]
    rate, beta1, beta2, epsilon = TAG_MODEL_ADAM
    best_loss, best, waited, step = np.inf, [w.copy() for w in weights], 0, 0
    for _ in range(TAG_MODEL_EPOCHS):
        order = rng.permutation(n)
        for start in range(0, n, TAG_MODEL_BATCH):
            rows = order[start : start + TAG_MODEL_BATCH]
            batch = x[rows]
            probs = 1.0 / (1.0 + np.exp(-np.clip(batch @ weights[0] + weights[1], -30, 30)))
            error = (probs - y[rows]) / np.float32(probs.size)  # d(mean entropy) / d(logits)
            grads = [batch.T @ error + 2 * TAG_MODEL_L2 * weights[0], error.sum(axis=0)]
            step += 1
            size = rate * float(np.sqrt(1 - beta2**step)) / (1 - beta1**step)
            for w, m, v, g in zip(weights, first, second, grads, strict=True):
                m += (1 - beta1) * (g - m)
                v += (1 - beta2) * (np.square(g) - v)
                w -= size * m / (np.sqrt(v) + epsilon)
        loss = sigmoid_loss(x_val, y_val, *weights)
        if loss < best_loss:
            best_loss, best, waited = loss, [w.copy() for w in weights], 0
        else:
            waited += 1
            if waited >= TAG_MODEL_PATIENCE:
                break
    return best[0], best[1]


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, "float32")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


@dataclass
class NeighbourTags:
    """Tags of the `k` nearest training photos, weighted by max(cosine, 0) ** power."""

    reference: np.ndarray  # (M, D) unit rows
    tags: np.ndarray  # (M, T) 0/1
    k: int
    power: float

    def nearest(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The similarities (N, k) and reference rows (N, k) of each query's k nearest photos."""
        queries = unit_rows(x)
        k = min(k, len(self.reference))
        sims = np.zeros((len(queries), k), dtype="float32")
        rows = np.zeros((len(queries), k), dtype="int64")
        for start in range(0, len(queries), SCORE_CHUNK):
            sim = queries[start : start + SCORE_CHUNK] @ self.reference.T
            picks = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            top = np.take_along_axis(sim, picks, axis=1)
            order = np.argsort(-top, axis=1, kind="stable")  # most similar first
            sims[start : start + len(sim)] = np.take_along_axis(top, order, axis=1)
            rows[start : start + len(sim)] = np.take_along_axis(picks, order, axis=1)
        return sims, rows

    def transfer(self, sims: np.ndarray, rows: np.ndarray, k: int, power: float) -> np.ndarray:
        """(N, T) tag scores from the first `k` of `nearest`'s neighbours, weighted by power."""
        weights = np.power(np.clip(sims[:, :k], 0.0, None), power).astype("float32")
        totals = weights.sum(axis=1, keepdims=True)
        # photos no reference resembles at all (every similarity <= 0) share the neighbours evenly
        weights = np.where(totals > 0, weights / np.where(totals > 0, totals, 1.0), 1.0 / k)
        out = np.zeros((len(sims), self.tags.shape[1]), dtype="float32")
        for start in range(0, len(sims), SCORE_CHUNK):
            block = slice(start, start + SCORE_CHUNK)
            out[block] = np.einsum("nk,nkt->nt", weights[block], self.tags[rows[block, :k]])
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, T) tag scores with the fitted `k` and `power`."""
        if len(self.reference) == 0 or len(x) == 0:
            return np.zeros((len(x), self.tags.shape[1]), dtype="float32")
        sims, rows = self.nearest(x, self.k)
        return self.transfer(sims, rows, min(self.k, sims.shape[1]), self.power)


def class_lift(counts: np.ndarray, class_posts: np.ndarray, min_posts: int = 20) -> np.ndarray:
    """Per tag, the largest P(tag | class) / P(tag) over classes with at least `min_posts` posts.

    1 means the tag is as common in every class as overall: its rate says nothing of the class.
    """
    class_posts = np.asarray(class_posts, "float64")
    overall = counts.sum(axis=1) / max(class_posts.sum(), 1.0)
    big = class_posts >= min(min_posts, class_posts.max(initial=0))
    rates = counts[:, big] / np.maximum(class_posts[big], 1.0)
    return np.max(rates, axis=1, initial=0.0) / np.where(overall > 0, overall, 1.0)


def image_lift(scores: np.ndarray, carried: np.ndarray) -> np.ndarray:
    """Per tag, mean score on posts carrying it / mean score on all posts (1 if unseen)."""
    mean_all = scores.mean(axis=0)
    n = carried.sum(axis=0)
    mean_carriers = np.divide(
        (scores * carried).sum(axis=0), n, out=np.zeros_like(mean_all), where=n > 0
    )
    lift = np.divide(mean_carriers, mean_all, out=np.ones_like(mean_all), where=mean_all > 0)
    return np.where(n > 0, lift, 1.0)


RANKERS = ("popularity", "class_mixture", "tag_model", "colour_tags", "neighbours")
FLOORS = ("popularity", "class_mixture")  # the rankers every blend must reach
IMAGE_RANKERS = ("tag_model", "colour_tags", "neighbours")
HASHTAG_K = 5  # the k of HARRISON's recall and accuracy, as in evaluate


class Placement(NamedTuple):
    """The served list of a blend with a tail (`HashtagBlend.placed`), all (N, T).

    `final` orders the list; `by_head` is True where the head blend places the tag, and
    `shown` is the placing blend's finished score (-inf: ineligible); `head_weights` and
    `tail_weights` are the two blends.
    """

    final: np.ndarray
    by_head: np.ndarray
    shown: np.ndarray
    head_weights: dict[str, float]
    tail_weights: dict[str, float]


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
        return self.placed(stats, params, scores).final

    def _finished(self, stats, params, scores, weights=None) -> np.ndarray:
        """A blend's finished scores (`weights`: the head's; None: the tail's); NaN is no score.

        A NaN (a broken engine's output) would win every max and comparison it meets.
        """
        weights = weights or self.tail_weights or self.weights
        final = stats.finish(self.blend(scores, weights), params, self.tag_multiplier)
        return np.where(np.isnan(final), -np.inf, final)

    def placed(self, stats, params, scores: dict[str, np.ndarray]) -> Placement:
        """The served list's order, and per tag the blend that places it and that blend's score.

        `final` ranks a row's head tags by lifting them above the tail: its values order the
        list but are not scores (they can pass 1, by a different amount in every row). A tag
        is shown with the finished score of the blend that placed it.
        """
        head = self._finished(stats, params, scores, self.weights)
        if not self.tail_weights:
            by_head = np.ones(head.shape, bool)
            return Placement(head, by_head, head, self.weights, self.weights)
        tail = self._finished(stats, params, scores)
        by_head = np.zeros(head.shape, bool)
        np.put_along_axis(by_head, head_top(head, HASHTAG_K), True, axis=1)
        by_head &= np.isfinite(head)
        final = head_then_tail(head, tail, HASHTAG_K)
        return Placement(
            final, by_head, np.where(by_head, head, tail), self.weights, self.tail_weights
        )

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
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # damaged or cut short
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


def head_top(head: np.ndarray, n: int) -> np.ndarray:
    """(N, n) indices of each row's `n` best tags by `head` (in no particular order)."""
    n = min(n, head.shape[1])
    if n == 0:
        return np.zeros((len(head), 0), dtype=np.int64)
    return np.argpartition(-np.asarray(head, np.float64), n - 1, axis=1)[:, :n]


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
    top = head_top(head, n)
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
    """Per post, the mean of the guarded metrics: what a ranker's settings and the blend maximise.

    With `top_k` 5, R@top_k is R@5 (one key): the mean is then of three metrics, R@5 once.
    """
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
        rule: `best` or `one_se` (see `taglens.training.search.pick`).
        floor: per metric, the per-post scores (on the posts with tags) a blend must reach:
            its mean on that metric may fall short of the floor's by no more than the standard
            error of their paired per-post difference, so that a blend is turned away for being
            worse, not for ranking one post differently.

    Returns:
        The weights, the index of the finisher chosen, their validation metrics and a summary
        of the search (the best and the chosen blend's `objective`); None when no blend reaches
        the floor.
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
                passing.append((weights, index, got, objective(per_post)))
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
    summary.update(best_objective=best, chosen_objective=float(passing[chosen][3].mean()))
    logger.info(
        "blend %s (tag weighting %d): validation %s; %d of %d blends reach the floor",
        weights,
        index,
        got,
        len(passing),
        tried,
    )
    return weights, index, got, summary


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

    def choose(self, candidates: list[tuple[dict, np.ndarray]], rule: str | None = None) -> int:
        """Pick among (setting, raw scores) candidates listed simplest first.

        `rule` defaults to the rankers' own, `hashtags.search.rule`.
        """
        per_post = [objective(self.per_post(raw)) for _, raw in candidates]
        return pick_paired(per_post, list(range(len(candidates))), rule or self.params.search.rule)


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
        params.search.blend_rule,
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
            f"scores, by hashtags.search.blend_rule ({params.search.blend_rule}) on the "
            "per-post mean of P@1, R@5, A@5 and R@top_k",
            "search": search,
        }
        report["blend"] = got
    else:  # nothing reaches both floors: the best single ranker on validation, as it is
        names = list(scores)
        # what is served in the blend's place is chosen by the blend's rule
        best = names[check.choose([({}, scores[name]) for name in names], params.search.blend_rule)]
        blend.weights = {best: 1.0}
        blend.tag_multiplier = None
        choice = {
            "served": "single",
            "rankers": [best],
            "tag_weights": "none",
            "why": f"no blend reached both popularity's and the class mixture's "
            f"validation scores {floor}; {best} is chosen alone by hashtags.search.blend_rule "
            f"({params.search.blend_rule})",
        }
        report["blend"] = report[best]
    choice.update(settings=settings, floor=floor)
    if params.image_rankers and low.any():
        choice["low_lift_tags"] = [t for t, flag in zip(stats.tags, low, strict=True) if flag]
    blend.choice = choice
    blend.weights = {name: float(blend.weights.get(name, 0.0)) for name in RANKERS}
    logger.info("served ranking: %s", {k: v for k, v in choice.items() if k != "low_lift_tags"})
    return blend, {"rankers": report, "choice": choice}


def fit_served_ranking(
    config: TrainConfig,
    fit: HeadFit,
    splits: dict[str, Split],
    posts: list,
    out: Path,
    tuned_val: np.ndarray | None = None,
) -> dict:
    """Fit hashtags.json on the training posts and choose the served ranking; log the choice.

    A served fine-tuned model (`tuned_val`: its validation probabilities, read from the
    images) changes the features the image rankers would read, so with it only popularity and
    the class mixture compete.

    Returns:
        Every ranker's validation metrics, the blend's and the choice (what is served, why).
    """
    import mlflow

    train_shas = set(splits["train"].rows["sha256"])
    stats = fit_hashtag_stats(
        [post for post in posts if post.sha256 in train_shas], config.base.classes, config.hashtags
    )
    stats.save(artifacts.HASHTAGS.at(out))
    by_sha = {post.sha256: post for post in posts}
    image = config.hashtags.image_rankers and tuned_val is None
    if config.hashtags.image_rankers and not image:
        logger.warning(
            "image rankers skipped: they read cached features, which fine-tuning "
            "changes; popularity and the class mixture rank hashtags"
        )

    def inputs(split: Split, probabilities=None) -> RankingInputs:
        flip = split.views.get("flip") if fit.augmented else None
        features = split.vectors if flip is None else (split.vectors + flip) / 2
        return RankingInputs(
            features=features if image else None,
            colour=split.views.get("colour") if image else None,
            tags=[own_tags(by_sha[sha]) for sha in split.rows["sha256"]],
            probabilities=probabilities,
        )

    val = splits["val"]
    probs_val = fit.predict(val.vectors, val.views) if tuned_val is None else tuned_val
    blend, report = fit_ranking(
        stats, inputs(splits["train"]), inputs(val, probs_val), config.base.seed
    )
    blend.save(artifacts.RANKERS.at(out))
    mlflow.log_metrics(
        {
            f"val_hashtag_{name}_{key}": value
            for name, scores in report["rankers"].items()
            for key, value in scores.items()
        }
    )
    mlflow.log_params({f"hashtags.blend.{name}": weight for name, weight in blend.weights.items()})
    mlflow.log_params(
        {
            "hashtags.served": blend.choice["served"],
            "hashtags.tag_weights": blend.choice["tag_weights"],
            "hashtags.class_mixture.estimator": blend.estimator,
            "hashtags.class_mixture.sharpen": blend.sharpen,
        }
    )
    mlflow.log_dict(blend.choice, "train/hashtag_ranking.json")
    return {"blend_weights": blend.weights, **report}
