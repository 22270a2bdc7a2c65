"""The classification head on cached backbone features: normalisation, layers, softmax.

Training on cached vectors instead of images is what makes re-training and sweeps cheap: the
backbone's forward pass (minutes to hours on a CPU) is paid once by featurize. This module is the
model alone (`train.head`: a dense network, multinomial logistic regression, or logistic
regression on RBF-kernel features); fitting it is in `taglens.training.head_fit`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from taglens.params import TrainParams

if TYPE_CHECKING:
    import keras


def feature_scale(vectors: np.ndarray) -> float:
    """One factor that brings training vectors to unit standard deviation.

    Random-weight backbones give features about 100x smaller than ImageNet ones; unscaled, the
    head barely moves from its initialisation in a few hundred steps (synthetic demo: test
    accuracy 0.65 unscaled, 0.95 scaled). Per-feature standardization measured 1-2 points worse
    on the flowers set, so one global factor is used: well-scaled features stay nearly as they are.
    """
    std = float(np.std(vectors))
    return 1.0 / std if std > 0 else 1.0


def normalise_layers(kind: str, x_train: np.ndarray, name: str = "normalise") -> list:
    """Keras layers that bring features to a common scale, fitted on the training vectors.

    `none` is one global factor (`feature_scale`); `l2` scales each row to unit length, then by
    sqrt(D) so that features keep about unit size; `standardise` is per-feature mean and variance.
    The layers live in the model, so serving normalises exactly as training did.
    """
    import keras

    if kind == "none":
        return [keras.layers.Rescaling(feature_scale(x_train), name="feature_scale")]
    if kind == "l2":
        return [keras.layers.UnitNormalization(name=f"{name}_l2"),
                keras.layers.Rescaling(float(np.sqrt(x_train.shape[1])), name=f"{name}_scale")]
    if kind == "standardise":
        x = np.asarray(x_train, "float64")
        return [keras.layers.Normalization(mean=x.mean(axis=0), variance=x.var(axis=0) + 1e-6,
                                           name=f"{name}_standardise")]  # fmt: skip
    raise ValueError(f"train.normalise must be none, l2 or standardise, got {kind!r}")


def kernel_map(
    x_train: np.ndarray, gamma_scale: float, landmarks: int, seed: int
) -> tuple[np.ndarray, float, np.ndarray]:
    """A Nystroem approximation of the RBF kernel on unit-length rows (Williams and Seeger, 2001).

    The kernel exp(-gamma ||x - l||^2) to `landmarks` training rows drawn at random, times the
    inverse square root of the landmarks' own kernel matrix, gives features whose inner products
    approximate the kernel between any two photos: a linear model on them is a kernel machine,
    whose nonlinearity comes from the training photos themselves rather than from a network
    fitted with early stopping on a few hundred validation photos.

    Args:
        x_train: (N, D) training rows (normalised to unit length here).
        gamma_scale: the width, times scikit-learn's `scale` heuristic 1 / (D * var(x)).
        landmarks: how many training rows to draw (at most N).
        seed: seeds the draw.

    Returns:
        The (M, D) unit-length landmarks, gamma, and the (M, M) map applied after the kernel.
    """
    x = np.asarray(x_train, "float64")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    picks = np.random.default_rng(seed).permutation(len(x))[: min(landmarks, len(x))]
    points = x[np.sort(picks)]
    variance = float(x.var())
    gamma = gamma_scale / (x.shape[1] * variance) if variance > 0 else gamma_scale
    # unit rows: ||a - b||^2 = 2 - 2 a.b, the form the served layers compute
    gram = np.exp(-gamma * np.clip(2.0 - 2.0 * points @ points.T, 0.0, None))
    u, singular, vt = np.linalg.svd(gram)
    inverse_root = (u / np.sqrt(np.maximum(singular, 1e-12))) @ vt
    return points.astype("float32"), gamma, inverse_root.T.astype("float32")


def kernel_layers(x_train: np.ndarray, params: TrainParams, seed: int) -> list:
    """Keras layers for `kernel_map`: unit length, the kernel to each landmark, the map.

    Only stock layers with fixed weights (a dense layer with an exponential activation computes
    exp(2 gamma x.l - 2 gamma) = exp(-gamma ||x - l||^2) on unit rows), so the served model
    needs no custom code and converts to every engine as it is.
    """
    import keras

    points, gamma, inverse_root = kernel_map(
        x_train, params.kernel_gamma, params.kernel_landmarks, seed
    )
    to_landmarks = keras.layers.Dense(
        len(points), activation="exponential", trainable=False, name="kernel_rbf"
    )
    to_landmarks.build((None, points.shape[1]))
    bias = np.full(len(points), -2.0 * gamma, "float32")
    to_landmarks.set_weights([(2.0 * gamma * points.T).astype("float32"), bias])
    mapped = keras.layers.Dense(len(points), use_bias=False, trainable=False, name="kernel_map")
    mapped.build((None, len(points)))
    mapped.set_weights([inverse_root])
    return [keras.layers.UnitNormalization(name="kernel_unit"), to_landmarks, mapped]


def build_head(
    input_dim: int, n_classes: int, params: TrainParams, seed: int,
    x_train: np.ndarray | None = None,
) -> keras.Model:
    """Vectors (N, input_dim) -> normalisation -> optional dense+dropout -> softmax.

    The normalisation (`params.normalise`, fitted on `x_train`) lives in the model, so serving
    scales exactly as training did. `head: logreg` is multinomial logistic regression: no hidden
    layer, no dropout, and scikit-learn's penalty ||w||^2 / (2 C n) on the softmax weights
    (the same objective as its `LogisticRegression(C)` on n rows, with the mean loss). `head:
    kernel` is the same on `kernel_layers`' features (`kernel_c`), which bring their own
    normalisation (unit rows), so `normalise` does not apply to it.
    """
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_dim,), name="features")
    x = inputs
    fitted_on = x_train if x_train is not None else np.full((1, input_dim), 1.0, "float32")
    if params.head == "kernel":
        before = kernel_layers(fitted_on, params, seed)
    else:
        before = normalise_layers(params.normalise, fitted_on)
    for layer in before:
        x = layer(x)
    penalty = None
    if params.head in ("logreg", "kernel"):
        rows = len(x_train) if x_train is not None else 1
        c = params.logreg_c if params.head == "logreg" else params.kernel_c
        penalty = keras.regularizers.L2(1.0 / (2.0 * c * rows))
    else:
        if params.hidden_units > 0:
            x = keras.layers.Dense(params.hidden_units, activation="relu", name="hidden")(x)
        if params.dropout > 0:
            x = keras.layers.Dropout(params.dropout, seed=seed, name="dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", kernel_regularizer=penalty,
                                 name="probabilities")(x)  # fmt: skip
    return keras.Model(inputs, outputs, name="head")
