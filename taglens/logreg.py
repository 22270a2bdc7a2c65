"""Multinomial logistic regression on cached vectors, served as a Keras head like the dense one."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from taglens.head import normalise_layers
from taglens.params import TrainParams

if TYPE_CHECKING:
    import keras

# lbfgs to a loose tolerance: the search fits several of these, and a tighter fit moved
# validation accuracy by less than its noise on the flowers set
LOGREG_MAX_ITER = 300
LOGREG_TOL = 1e-3
ABSENT_CLASS_BIAS = -1e4  # a class with no training rows is never predicted


def softmax_weights(classifier, n_classes: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(D, C) kernel and (C,) bias of a softmax layer equal to a fitted LogisticRegression.

    With two classes scikit-learn keeps one coefficient row w (logit of class 1); the softmax
    over (-w/2, w/2) gives the same probabilities.
    """
    coef, bias = np.zeros((n_classes, dim)), np.full(n_classes, ABSENT_CLASS_BIAS)
    present = np.asarray(classifier.classes_, int)
    rows, intercept = classifier.coef_, classifier.intercept_
    if len(present) == 2:
        rows, intercept = np.vstack([-rows, rows]) / 2, np.array([-1.0, 1.0]) * intercept / 2
    coef[present], bias[present] = rows, intercept
    return coef.T.astype("float32"), bias.astype("float32")


def fit_logreg_head(
    x_train: np.ndarray, y_train: np.ndarray, n_classes: int, params: TrainParams, seed: int
) -> keras.Model:
    """Fit scikit-learn's logistic regression (C = `params.logreg_c`) on normalised vectors.

    Returns:
        A Keras head: the same normalisation layers, then a softmax layer holding the fitted
        coefficients, so a logistic winner is assembled and served like a dense head.
    """
    import keras
    from sklearn.linear_model import LogisticRegression

    layers = normalise_layers(params.normalise, x_train)
    normalised = keras.Sequential(layers).predict(
        np.asarray(x_train, "float32"), batch_size=4096, verbose=0
    )
    classifier = LogisticRegression(
        C=params.logreg_c, max_iter=LOGREG_MAX_ITER, tol=LOGREG_TOL, random_state=seed,
        class_weight="balanced" if params.class_weight == "balanced" else None,
    ).fit(np.asarray(normalised, "float64"), np.asarray(y_train, int))  # fmt: skip
    inputs = keras.Input((x_train.shape[1],), name="features")
    x = inputs
    for layer in layers:
        x = layer(x)
    dense = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")
    outputs = dense(x)
    dense.set_weights(list(softmax_weights(classifier, n_classes, x_train.shape[1])))
    return keras.Model(inputs, outputs, name="head")
