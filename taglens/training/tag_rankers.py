"""Image-specific hashtag rankers: a tag model on image features and neighbours' tags.

The class mixture (hashtags) gives every photo of a class the same tags. These rankers
look at the image itself:
- a tag model: one sigmoid per frequent tag over the standardised features (a multi-label
  logistic regression fitted jointly), one on the backbone features and one on the colour view;
- neighbour transfer: the tags of the k most similar training photos (cosine similarity of the
  features), each weighted by its similarity raised to a power (higher: the closest count more).
Each scores P(tag | image) on the vocabulary of taglens.training.hashtags.HashtagStats.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

TAG_MODEL_EPOCHS = 200  # upper bound; early stopping on validation loss ends far sooner
TAG_MODEL_PATIENCE = 5
TAG_MODEL_L2 = 1e-4  # a little ridge keeps rare tags' weights from growing without bound
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
    import keras

    x_train, y_train = train
    x_val, y_val = val
    counts = y_train.sum(axis=0)
    columns = np.sort(np.argsort(-counts, kind="stable")[:max_tags])
    columns = columns[counts[columns] > 0]
    mean = x_train.mean(axis=0).astype("float32")
    scale = (x_train.std(axis=0) + 1e-6).astype("float32")
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((x_train.shape[1],))
    dense = keras.layers.Dense(
        len(columns), activation="sigmoid", kernel_regularizer=keras.regularizers.l2(TAG_MODEL_L2)
    )
    model = keras.Model(inputs, dense(inputs))
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    model.fit(
        (x_train - mean) / scale,
        y_train[:, columns],
        validation_data=((x_val - mean) / scale, y_val[:, columns]),
        epochs=TAG_MODEL_EPOCHS,
        batch_size=64,
        verbose=0,
        shuffle=True,
        callbacks=[
            keras.callbacks.EarlyStopping(patience=TAG_MODEL_PATIENCE, restore_best_weights=True)
        ],
    )
    kernel, bias = dense.get_weights()
    return TagModel(mean, scale, kernel, bias, columns.astype("int64"))


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
