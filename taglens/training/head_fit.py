"""Fitting the head on cached vectors: compile, class weights, the epoch loop, validation.

Kept apart from the model (`taglens.training.head`) because the same compile and label helpers
serve the fine-tuned full model (`taglens.training.full_model`), and because this is where
training choices live: early stopping on validation loss, the flip view as extra rows, and the
validation score averaged over views that picks among fits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from taglens.errors import TaglensError
from taglens.params import TrainParams
from taglens.training.head import build_head

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")
KERNEL_MAX_ITER = 2000  # L-BFGS steps for the kernel head; it converges in a few hundred
EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class HeadFit:
    """A fitted head, its per-epoch history and its score on the validation split."""

    model: keras.Model
    history: list[dict[str, float]] = field(default_factory=list)
    val_loss: float = float("nan")
    val_accuracy: float = float("nan")
    augmented: bool = False  # trained on the flip view too: predict with both views averaged
    crops: bool = False  # the crops view is averaged in at prediction (train.crops chose it)

    def score(self) -> tuple[float, float]:
        """Sort key for picking the best fit: higher val accuracy, then lower val loss."""
        return (self.val_accuracy, -self.val_loss)

    @property
    def views(self) -> tuple[str, ...]:
        """The views whose probabilities are averaged at prediction (model_info.json's `views`)."""
        flip = ("flip",) if self.augmented else ()
        return ("image", *flip, *(("crops",) if self.crops else ()))

    def predict(self, vectors: np.ndarray, views: Mapping[str, np.ndarray]) -> np.ndarray:
        """Class probabilities of cached vectors, averaged over the views this fit predicts with.

        Args:
            vectors: the images' own vectors.
            views: the split's cached views by name (`flip`, `crops`, ...).

        Raises:
            TaglensError: a view the fit predicts with is not cached.
        """
        extra = [name for name in self.views if name != "image"]
        missing = [name for name in extra if name not in views]
        if missing:
            raise TaglensError(
                f"the model averages the {missing} view(s), which the cached features lack: "
                "re-run featurize with them in featurize.views"
            )
        return predict_views(self.model, vectors, *(views[name] for name in extra))


def class_weights(labels: np.ndarray, n_classes: int, mode: str) -> dict[int, float] | None:
    """Per-class loss weights; `balanced` is n_samples / (n_present_classes * count).

    Classes absent from `labels` get weight 0 (they contribute no samples anyway), so the weights
    of present classes average to 1 over the samples, keeping the loss scale comparable.
    """
    if mode == "none":
        return None
    if mode != "balanced":
        raise ValueError(f"train.class_weight must be 'none' or 'balanced', got {mode!r}")
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes)
    present = int((counts > 0).sum())
    total = int(counts.sum())
    return {c: (total / (present * n) if n else 0.0) for c, n in enumerate(counts.tolist())}


def make_optimizer(
    name: str, learning_rate: float, weight_decay: float = 0.0
) -> keras.optimizers.Optimizer:
    """A Keras optimizer by its params name, with decoupled weight decay when it is above 0."""
    import keras

    builders = {
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "sgd": lambda **kw: keras.optimizers.SGD(momentum=0.9, **kw),
        "rmsprop": keras.optimizers.RMSprop,
    }
    if name not in builders:
        raise ValueError(f"train.optimizer must be one of {sorted(builders)}, got {name!r}")
    return builders[name](learning_rate=learning_rate, weight_decay=weight_decay or None)


def compile_for_training(
    model: keras.Model,
    optimizer: str,
    learning_rate: float,
    label_smoothing: float,
    jit_compile: bool | str = False,
    weight_decay: float = 0.0,
) -> None:
    """Compile with categorical cross-entropy (one-hot labels, so label smoothing applies).

    XLA is off by default: for a small dense head, compiling costs far more (measured 12-18 s
    per fit) than the few milliseconds per epoch it could save. Fine-tuning passes "auto".
    """
    import keras

    model.compile(
        optimizer=make_optimizer(optimizer, learning_rate, weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Integer labels to float32 one-hot rows."""
    return np.eye(n_classes, dtype="float32")[np.asarray(labels, dtype=int)]


class _EpochLogger:
    """Collects Keras epoch logs into history rows and forwards them (e.g. to MLflow)."""

    def __init__(self, on_epoch: EpochCallback | None):
        self.rows: list[dict[str, float]] = []
        self.on_epoch = on_epoch

    def __call__(self, epoch: int, logs: dict[str, Any] | None) -> None:
        logs = logs or {}
        row = {"epoch": float(epoch + 1)}
        row.update({key: float(logs[key]) for key in HISTORY_COLUMNS[1:] if key in logs})
        self.rows.append(row)
        if self.on_epoch is not None:
            self.on_epoch(epoch + 1, {k: v for k, v in row.items() if k != "epoch"})


def _rows(x: np.ndarray, flip: np.ndarray | None, augment: bool) -> np.ndarray:
    """Training rows: the vectors, plus their flip view when augmenting."""
    return np.concatenate([x, flip]) if augment and flip is not None else x


def predict_views(model: keras.Model, x: np.ndarray, *views: np.ndarray | None) -> np.ndarray:
    """Class probabilities averaged over the image's views (x, and each other view given)."""
    rows = [x, *(view for view in views if view is not None)]
    return np.mean([model.predict(np.asarray(v, "float32"), batch_size=1024, verbose=0)
                    for v in rows], axis=0)  # fmt: skip


def score_views(model: keras.Model, x: np.ndarray, flip: np.ndarray | None, y: np.ndarray,
                n_classes: int) -> tuple[float, float]:  # fmt: skip
    """(cross-entropy, accuracy) of the probabilities averaged over the given views."""
    probs = predict_views(model, x, flip)
    picked = np.clip(probs[np.arange(len(y)), np.asarray(y, int)], 1e-7, 1.0)
    return float(-np.mean(np.log(picked))), float(np.mean(probs.argmax(axis=1) == y))


def fit_head(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    n_classes: int,
    params: TrainParams,
    seed: int,
    on_epoch: EpochCallback | None = None,
    flips: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
) -> HeadFit:
    """Fit a head (`params.head`: dense network or logistic regression) on cached vectors.

    Training stops early on validation loss and keeps its best epoch's weights.

    Args:
        train: training vectors (N, D) and labels (N,).
        val: validation vectors and labels; must not be empty (early stopping and search use it).
        n_classes: number of output classes.
        params: the `train` params section (one setting of a search or sweep).
        seed: seeds initialisation, dropout and shuffling.
        on_epoch: called with (epoch starting at 1, metrics) after every epoch.
        flips: the flip view of the train and val vectors, if featurize made it; with
            `params.augment` they are extra training rows and validation averages both views.

    Raises:
        ValueError: empty or mismatched inputs.
    """
    (x_train, y_train), (x_val, y_val) = train, val
    if len(x_train) == 0 or len(x_val) == 0:
        raise TaglensError(
            f"training needs train and validation vectors, got {len(x_train)} train and "
            f"{len(x_val)} validation: add images or raise clean.val_fraction"
        )
    if x_train.shape[1] != x_val.shape[1]:
        raise ValueError(f"feature widths differ: {x_train.shape[1]} vs {x_val.shape[1]}")
    augment = params.augment and flips[0] is not None and flips[1] is not None
    rows = _rows(x_train, flips[0], augment)
    labels = np.concatenate([y_train, y_train]) if augment else y_train
    if params.head == "kernel":
        model, history = _fit_kernel(rows, labels, (x_val, y_val), n_classes, params, seed)
        if on_epoch is not None:
            on_epoch(1, {k: v for k, v in history[0].items() if k != "epoch"})
    else:
        model, history = _fit_dense(
            rows, labels, (x_val, y_val), n_classes, params, seed, on_epoch
        )
    val_loss, val_accuracy = score_views(model, x_val, flips[1] if augment else None, y_val,
                                         n_classes)  # fmt: skip
    logger.info("head fitted (%s, augment %s) for %d epochs: val_loss %.4f, val_accuracy %.4f",
                params.head, augment, len(history), val_loss, val_accuracy)  # fmt: skip
    return HeadFit(model, history, val_loss, val_accuracy, augment)


def _fit_kernel(
    x_train, y_train, val, n_classes, params: TrainParams, seed: int
) -> tuple[keras.Model, list[dict[str, float]]]:
    """The kernel head: its fixed kernel map, then the softmax layer fitted to convergence.

    The softmax layer on fixed features is a convex problem, which L-BFGS (scikit-learn's
    `LogisticRegression`, the objective `build_head`'s penalty states) solves in seconds, where
    gradient steps with early stopping stop short of it (measured on the flowers: 0.727 against
    0.744 validation accuracy). So the history is that one fit: a single row.
    """
    import keras
    from sklearn.linear_model import LogisticRegression

    x_val, y_val = val
    model = build_head(x_train.shape[1], n_classes, params, seed, x_train)
    mapped = keras.Model(model.inputs, model.get_layer("kernel_map").output)
    z_train = mapped.predict(np.asarray(x_train, "float32"), batch_size=1024, verbose=0)
    weights = class_weights(y_train, n_classes, params.class_weight)
    if weights is not None:
        weights = {c: w for c, w in weights.items() if w > 0}  # classes present in y_train
    fit = LogisticRegression(C=params.kernel_c, class_weight=weights, max_iter=KERNEL_MAX_ITER)
    fit.fit(z_train, y_train)
    kernel = np.zeros((z_train.shape[1], n_classes), "float32")
    # a class absent from the training rows is never predicted
    bias = np.full(n_classes, -30.0, "float32")
    classes = fit.classes_.astype(int)
    if len(classes) == 2:  # one row of coefficients: the second class's logit minus the first's
        kernel[:, classes] = np.stack([-fit.coef_[0], fit.coef_[0]], axis=1) / 2.0
        bias[classes] = np.array([-fit.intercept_[0], fit.intercept_[0]]) / 2.0
    else:
        kernel[:, classes] = fit.coef_.T
        bias[classes] = fit.intercept_
    model.get_layer("probabilities").set_weights([kernel, bias])
    row = {"epoch": 1.0}
    for prefix, (x, y) in (("", (x_train, y_train)), ("val_", (x_val, y_val))):
        probs = model.predict(np.asarray(x, "float32"), batch_size=1024, verbose=0)
        picked = np.clip(probs[np.arange(len(y)), np.asarray(y, int)], 1e-7, 1.0)
        row[f"{prefix}loss"] = float(-np.mean(np.log(picked)))
        row[f"{prefix}accuracy"] = float(np.mean(probs.argmax(axis=1) == y))
    return model, [row]


def _fit_dense(
    x_train, y_train, val, n_classes, params: TrainParams, seed: int, on_epoch: EpochCallback | None
) -> tuple[keras.Model, list[dict[str, float]]]:
    import keras

    x_val, y_val = val
    model = build_head(x_train.shape[1], n_classes, params, seed, x_train)
    # logistic heads (logreg, kernel) carry their own penalty
    decay = params.weight_decay if params.head == "dense" else 0.0
    compile_for_training(model, params.optimizer, params.learning_rate, params.label_smoothing,
                         weight_decay=decay)  # fmt: skip
    epoch_logger = _EpochLogger(on_epoch)
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.LambdaCallback(on_epoch_end=epoch_logger)
    ]
    if params.early_stopping_patience > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=params.early_stopping_patience,
                restore_best_weights=True,
            )
        )
    model.fit(
        np.asarray(x_train, "float32"),
        one_hot(y_train, n_classes),
        validation_data=(np.asarray(x_val, "float32"), one_hot(y_val, n_classes)),
        epochs=params.epochs,
        batch_size=params.batch_size,
        class_weight=class_weights(y_train, n_classes, params.class_weight),
        callbacks=callbacks,
        shuffle=True,
        verbose=0,
    )
    return model, epoch_logger.rows
