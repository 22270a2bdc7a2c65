"""What the classification head is and how it is fitted on cached vectors.

Training on cached vectors instead of images is what makes re-training and sweeps cheap: the
backbone's forward pass (minutes to hours on a CPU) is paid once by featurize. The head
(`train.head`) is a dense network, multinomial logistic regression over normalised vectors, or
logistic regression on RBF-kernel features, with a softmax. Fitting it: compile, class weights,
the epoch loop with early stopping on validation loss (the kernel head: one L-BFGS fit), the
flip view as extra rows, and the validation score averaged over views that picks among fits.
The compile and label helpers also serve the fine-tuned full model (`taglens.model.full_model`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from taglens.errors import TaglensError
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
        return [
            keras.layers.UnitNormalization(name=f"{name}_l2"),
            keras.layers.Rescaling(float(np.sqrt(x_train.shape[1])), name=f"{name}_scale"),
        ]
    if kind == "standardise":
        x = np.asarray(x_train, "float64")
        return [
            keras.layers.Normalization(
                mean=x.mean(axis=0), variance=x.var(axis=0) + 1e-6, name=f"{name}_standardise"
            )
        ]
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
    input_dim: int,
    n_classes: int,
    params: TrainParams,
    seed: int,
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
    outputs = keras.layers.Dense(
        n_classes, activation="softmax", kernel_regularizer=penalty, name="probabilities"
    )(x)
    return keras.Model(inputs, outputs, name="head")


logger = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")
KERNEL_MAX_ITER = 2000  # L-BFGS steps for the kernel head; it converges in a few hundred
# Batches per call of the compiled training step. A head's batch is a few milliseconds of work,
# less than Keras' Python overhead per call; more per call fit the same weights with less CPU
# (bench/search.py measures the default search both ways).
HEAD_STEPS_PER_EXECUTION = 32
PREDICT_CHUNK = 1024  # rows per eager call of a head: bounds its activations' memory
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
    colour_scale: float | None = None  # the head reads the colour view too (`head_input`)

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
        needed = extra + (["colour"] if self.colour_scale is not None else [])
        missing = [name for name in needed if name not in views]
        if missing:
            raise TaglensError(
                f"the model reads the {missing} view(s), which the cached features lack: "
                "re-run featurize with them in featurize.views"
            )
        rows = [vectors, *(views[name] for name in extra)]
        if self.colour_scale is not None:
            rows = [head_input(row, views["colour"], self.colour_scale) for row in rows]
        return predict_views(self.model, *rows)


def colour_scale(vectors: np.ndarray, colour: np.ndarray) -> float:
    """The factor that gives the colour block of `head_input` the vectors' mean row length.

    The kernel head, `l2` and `none` normalisation treat a row as a whole: unscaled, the colour
    block (length at most sqrt(2)) would vanish beside backbone vectors tens of units long.
    """
    vectors_length = float(np.linalg.norm(vectors, axis=1).mean()) if len(vectors) else 0.0
    colour_length = float(np.linalg.norm(np.sqrt(np.clip(colour, 0.0, None)), axis=1).mean())
    return vectors_length / colour_length if colour_length > 0 and vectors_length > 0 else 1.0


def head_input(vectors: np.ndarray, colour: np.ndarray, scale: float) -> np.ndarray:
    """The head's input when it reads the colour view: the vectors, then scale * sqrt(colour).

    The square root of a histogram (the Hellinger map) lets bins with few pixels, such as the
    petals' colour in a photo of leaves, count beside the large ones. The served model computes
    the same with `taglens.features.views.colour_input_layer`.
    """
    block = np.sqrt(np.clip(np.asarray(colour, "float32"), 0.0, None)) * np.float32(scale)
    return np.concatenate([np.asarray(vectors, "float32"), block], axis=1)


def head_rows(
    vectors: np.ndarray, views: Mapping[str, np.ndarray], scale: float | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """A split's rows for `fit_head`: its vectors and flip view, as the head reads them.

    With a `scale` both carry the image's colour block (a histogram does not change when the
    image is mirrored).
    """
    flip = views.get("flip")
    if scale is None:
        return vectors, flip
    colour = views["colour"]
    return (
        head_input(vectors, colour, scale),
        None if flip is None else head_input(flip, colour, scale),
    )


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
    steps_per_execution: int = 1,
) -> None:
    """Compile with categorical cross-entropy (one-hot labels, so label smoothing applies).

    XLA is off by default: for a small dense head, compiling costs far more (measured 12-18 s
    per fit) than the few milliseconds per epoch it could save. Fine-tuning passes "auto".
    `steps_per_execution` runs that many batches in one call of the compiled step: the same
    updates in the same order, with Python's per-batch overhead paid once per call.
    """
    import keras

    model.compile(
        optimizer=make_optimizer(optimizer, learning_rate, weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
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


def call_in_chunks(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """The model's outputs for the rows of `x`, called eagerly `PREDICT_CHUNK` rows at a time.

    A head is a few matrix products. `model.predict` traces a new graph for every model it
    sees, and a search fits dozens of heads: the tracing cost more than the products (and
    TensorFlow warned of retracing in every train log). The eager call computes the same.
    """
    import keras

    x = np.asarray(x, "float32")
    starts = range(0, max(len(x), 1), PREDICT_CHUNK)
    chunks = [
        keras.ops.convert_to_numpy(model(x[s : s + PREDICT_CHUNK], training=False)) for s in starts
    ]
    return np.concatenate(chunks)


def predict_views(model: keras.Model, x: np.ndarray, *views: np.ndarray | None) -> np.ndarray:
    """Class probabilities averaged over the image's views (x, and each other view given)."""
    rows = [x, *(view for view in views if view is not None)]
    return np.mean([call_in_chunks(model, v) for v in rows], axis=0)


def score_views(
    model: keras.Model, x: np.ndarray, flip: np.ndarray | None, y: np.ndarray, n_classes: int
) -> tuple[float, float]:
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
    """Fit a head (`params.head`: dense network, logistic regression or kernel) on cached vectors.

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
    x_train, y_train = train
    x_val, y_val = val
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
        model, history = _fit_dense(rows, labels, (x_val, y_val), n_classes, params, seed, on_epoch)
    val_loss, val_accuracy = score_views(
        model, x_val, flips[1] if augment else None, y_val, n_classes
    )
    logger.info(
        "head fitted (%s, augment %s) for %d epochs: val_loss %.4f, val_accuracy %.4f",
        params.head,
        augment,
        len(history),
        val_loss,
        val_accuracy,
    )
    return HeadFit(model, history, val_loss, val_accuracy, augment)


def _fit_kernel(
    x_train, y_train, val, n_classes, params: TrainParams, seed: int
) -> tuple[keras.Model, list[dict[str, float]]]:
    """The kernel head: its fixed kernel map, then the softmax layer fitted to convergence.

    The softmax layer on fixed features is a convex problem, which L-BFGS (scikit-learn's
    `LogisticRegression`, the objective `build_head`'s penalty states) solves in seconds, where
    gradient steps with early stopping stop short of it (with lower validation accuracy on the
    flowers' cached features). So the history is that one fit: a single row.
    """
    import keras
    from sklearn.linear_model import LogisticRegression

    x_val, y_val = val
    model = build_head(x_train.shape[1], n_classes, params, seed, x_train)
    mapped = keras.Model(model.inputs, model.get_layer("kernel_map").output)
    z_train = call_in_chunks(mapped, x_train)
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
    loss, accuracy = score_views(model, x_train, None, y_train, n_classes)
    val_loss, val_accuracy = score_views(model, x_val, None, y_val, n_classes)
    row = {"epoch": 1.0, "loss": loss, "accuracy": accuracy}
    row.update(val_loss=val_loss, val_accuracy=val_accuracy)
    return model, [row]


def _fit_dense(
    x_train, y_train, val, n_classes, params: TrainParams, seed: int, on_epoch: EpochCallback | None
) -> tuple[keras.Model, list[dict[str, float]]]:
    import keras

    x_val, y_val = val
    model = build_head(x_train.shape[1], n_classes, params, seed, x_train)
    # logistic heads (logreg, kernel) carry their own penalty
    decay = params.weight_decay if params.head == "dense" else 0.0
    compile_for_training(
        model,
        params.optimizer,
        params.learning_rate,
        params.label_smoothing,
        weight_decay=decay,
        steps_per_execution=HEAD_STEPS_PER_EXECUTION,
    )
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
