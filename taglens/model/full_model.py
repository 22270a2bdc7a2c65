"""The served model: one Keras model from raw pixels to class probabilities.

It is the feature extractor featurize used (preprocessing inside) followed by the trained head,
so batch predict, the web page and `mlflow models serve` compute exactly what evaluate measured.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from taglens import artifacts
from taglens.atomic import atomic_write_json, fsync_dir, fsync_tree
from taglens.errors import TaglensError
from taglens.features.backbones import BACKBONES, build_feature_extractor, weights_identity
from taglens.params import FineTuneParams, ModelParams
from taglens.training.head import compile_for_training, one_hot

if TYPE_CHECKING:
    import keras

    from taglens.model.int8_model import ServedPrecision
    from taglens.training.head import HeadFit
    from taglens.training.run import TrainConfig
    from taglens.training.splits import Split

logger = logging.getLogger(__name__)

# Cached vectors may come from an XLA-compiled forward pass; allow float round-off, not more.
VERIFY_RTOL = 1e-3


def assemble(
    extractor: keras.Model,
    head: keras.Model,
    name: str = "taglens",
    *,
    flip: bool = False,
    colour: bool = False,
    crops: bool = False,
    colour_scale: float | None = None,
) -> keras.Model:
    """Compose extractor (pixels -> vectors) and head (vectors -> probabilities) into one model.

    The model's outputs are a dict: `probabilities` (N, C), the `features` the tag rankers read
    and, with `colour`, the `colour` histogram view. With `flip`, the image and its mirror image
    both go through the extractor and both outputs are the average of the two views, exactly as
    training scored its validation split; the two go through the extractor as one batch
    (`taglens.features.views.image_and_mirror`, the code featurize runs). With `crops`, the
    probabilities of the crops view (`taglens.features.views.crops_mean`) join the average;
    the `features` stay the image's (and mirror's), which the tag rankers were fitted on. With a
    `colour_scale` the head reads each view's vectors followed by the image's colour block
    (`taglens.training.head.head_input`), as it was fitted.
    """
    import keras

    from taglens.features.views import (
        colour_input_layer,
        colour_layer,
        crops_mean,
        image_and_mirror,
    )

    inputs = keras.Input(extractor.input_shape[1:], name="image")
    # the head as an uncompiled model over the same layers: no optimizer state is saved with it
    head_model = keras.Model(head.input, head.output, name=head.name)
    histograms = None
    if colour or colour_scale is not None:
        histograms = colour_layer(name="colour")(inputs)
    if colour_scale is None:
        head = head_model
    else:
        block = colour_input_layer(colour_scale, name="colour_input")(histograms)
        joined = keras.layers.Concatenate(name="head_input")

        def head(vectors):
            return head_model(joined([vectors, block]))

    if flip:
        # one extractor call on a batch of 2N (images, then mirrors), as featurize computes them
        features, mirrored = image_and_mirror(extractor, inputs)
        views = [head(features), head(mirrored)]
        features = keras.layers.Average(name="mean_features")([features, mirrored])
    else:
        features = extractor(inputs)
        views = [head(features)]
    if crops:
        views.append(head(crops_mean(extractor, inputs)))
    if len(views) > 1:
        probabilities = keras.layers.Average(name="mean_probabilities")(views)
    else:
        probabilities = views[0]
    outputs = {"probabilities": probabilities, "features": features}
    if colour:
        outputs["colour"] = histograms
    return keras.Model(inputs, outputs, name=name)


def probabilities_model(model: keras.Model) -> keras.Model:
    """The served model's probabilities output alone, sharing its layers (for fine-tuning)."""
    import keras

    output = model.output["probabilities"] if isinstance(model.output, dict) else model.output
    return keras.Model(model.input, output, name=f"{model.name}_probabilities")


def verify_extractor(extractor: keras.Model, images: np.ndarray, cached: np.ndarray) -> float:
    """Check that the extractor reproduces the cached vectors of a few images.

    Returns:
        The largest relative difference (row norm) found.

    Raises:
        ValueError: the vectors differ: the features were not made by this backbone.
    """
    fresh = np.asarray(extractor.predict(images, verbose=0), dtype="float64")
    cached = np.asarray(cached, dtype="float64")
    scale = np.maximum(np.linalg.norm(cached, axis=1), 1e-6)
    worst = float(np.max(np.linalg.norm(fresh - cached, axis=1) / scale))
    if worst > VERIFY_RTOL:
        raise TaglensError(
            f"the backbone built from params does not reproduce the cached features (relative "
            f"difference {worst:.3g} > {VERIFY_RTOL:g}): model.* or base.seed changed since "
            "featurize ran, or the weights file changed; re-run featurize (dvc repro featurize)"
        )
    logger.info("extractor reproduces cached features (max relative difference %.2g)", worst)
    return worst


def unfreeze_last_block(model: keras.Model, backbone_name: str, layers: int = 0) -> int:
    """Make only the end of the backbone trainable; count the trainable layers with weights.

    `layers: 0` unfreezes the backbone's last block (BackboneSpec.last_block, e.g. VGG's block5);
    `layers: N` the last N layers that hold weights, whatever their names. The backbone is called
    with `training=False` inside the extractor, so batch-norm layers keep their ImageNet
    statistics while their neighbours' weights are tuned.

    Raises:
        ValueError: nothing to unfreeze (no layer starts with the block prefix).
    """
    prefix = BACKBONES[backbone_name].last_block
    backbone = _find_backbone(model)
    backbone.trainable = True
    weighted = [layer for layer in backbone.layers if layer.weights]
    chosen = (
        set(map(id, weighted[-layers:]))
        if layers > 0
        else {id(layer) for layer in backbone.layers if layer.name.startswith(prefix)}
    )
    count = 0
    for layer in backbone.layers:
        layer.trainable = id(layer) in chosen
        count += int(layer.trainable and bool(layer.weights))
    if count == 0:
        raise ValueError(f"no layer of {backbone.name} starts with {prefix!r}; cannot fine-tune")
    return count


def _find_backbone(model: keras.Model) -> keras.Model:
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            nested = [sub for sub in layer.layers if isinstance(sub, keras.Model)]
            return nested[0] if nested else layer
    raise ValueError(f"{model.name} has no nested backbone model")


def image_label_dataset(
    paths: Sequence[Path],
    labels: np.ndarray,
    n_classes: int,
    size: int,
    batch: int,
    augment: bool,
    seed: int,
):
    """A tf.data pipeline of (pixels, one-hot label) batches, optionally lightly augmented."""
    import tensorflow as tf

    from taglens.data.images import decode_and_resize

    def load(path, label):
        image = decode_and_resize(tf.io.read_file(path), size)
        if augment:  # light augmentation: flips and small brightness changes only
            image = tf.image.random_flip_left_right(image, seed=seed)
            image = tf.clip_by_value(tf.image.random_brightness(image, 20.0, seed=seed), 0, 255)
        return image, label

    data = tf.data.Dataset.from_tensor_slices(([str(p) for p in paths], one_hot(labels, n_classes)))
    if augment:
        data = data.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    return data.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(2)


def fine_tune(
    model: keras.Model,
    model_params: ModelParams,
    params: FineTuneParams,
    train: tuple[Sequence[Path], np.ndarray],
    val: tuple[Sequence[Path], np.ndarray],
    *,
    label_smoothing: float,
    seed: int,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train the backbone's last block and the head end to end on images, at a low learning rate.

    Costly: every step runs the whole backbone forward (see docs/training.md for measured times).

    Returns:
        Per-epoch history rows (epoch, loss, accuracy, val_loss, val_accuracy).
    """
    import keras

    model = probabilities_model(model)
    n_classes = int(model.output_shape[-1])
    layers = unfreeze_last_block(model, model_params.backbone, params.layers)
    logger.info("fine-tuning %d layers of %s", layers, model_params.backbone)
    compile_for_training(model, "adam", params.learning_rate, label_smoothing, "auto")
    size = model_params.image_size
    batch = params.batch_size
    train_data = image_label_dataset(*train, n_classes, size, batch, True, seed)
    val_data = image_label_dataset(*val, n_classes, size, batch, False, seed)
    rows: list[dict[str, float]] = []

    def record(epoch: int, logs: dict | None) -> None:
        row = {"epoch": float(epoch + 1), **{k: float(v) for k, v in (logs or {}).items()}}
        rows.append(row)
        if on_epoch is not None:
            on_epoch(epoch + 1, {k: v for k, v in row.items() if k != "epoch"})

    # patience = every epoch: never stops early, but ends on the best validation epoch's weights
    keep_best = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=params.epochs, restore_best_weights=True
    )
    model.fit(
        train_data,
        validation_data=val_data,
        epochs=params.epochs,
        verbose=0,
        shuffle=False,
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=record), keep_best],
    )
    model.trainable = False  # the saved model is for inference
    return rows


def save_model(model: keras.Model, path: Path) -> Path:
    """Save a .keras file for inference, atomically: written beside `path`, then moved in place."""
    import keras

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.keras")
    # a fresh, uncompiled model over the same layers: the file holds no optimizer state
    export = keras.Model(model.input, model.output, name=model.name)
    try:
        export.save(tmp)
        fsync_tree(tmp)  # the bytes on disk before the rename makes them the model
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path


VERIFY_IMAGES = 4  # training images re-run through the extractor to check the cached vectors


def served_model(config: TrainConfig, fit: HeadFit, train: Split, raw: Path, precision: str) -> Any:
    """The backbone and the fitted head as one model, checked against the cached vectors.

    INT8 vectors (`precision`) differ from the FP32 backbone's by design: their check is the
    accuracy control of the INT8 model, so the FP32 extractor is not compared with them.
    """
    from taglens.data.images import load_batch

    extractor = build_feature_extractor(config.model, config.base.seed)
    if precision == "fp32":
        probe = train.rows["image"].head(VERIFY_IMAGES).map(lambda image: raw / image).tolist()
        verify_extractor(
            extractor,
            load_batch(probe, config.model.image_size).numpy(),
            train.vectors[:VERIFY_IMAGES],
        )
    return assemble(
        extractor,
        fit.model,
        flip=fit.augmented,
        crops=fit.crops,
        colour=config.hashtags.image_rankers and "colour" in train.views,
        colour_scale=fit.colour_scale,
    )


def fine_tune_logged(
    model, config: TrainConfig, train: Split, val: Split, raw: Path, start: int
) -> list[dict]:
    """Fine-tune the served model on images, logging `fine_tune_*` metrics after the head's."""
    import mlflow

    def paths(split: Split) -> list[Path]:
        return [raw / image for image in split.rows["image"]]

    rows = fine_tune(
        model,
        config.model,
        config.train.fine_tune,
        (paths(train), train.labels),
        (paths(val), val.labels),
        label_smoothing=config.train.label_smoothing,
        seed=config.base.seed,
        on_epoch=lambda epoch, m: mlflow.log_metrics(
            {f"fine_tune_{k}": v for k, v in m.items()}, step=start + epoch
        ),
    )
    for row in rows:
        row["epoch"] += start
    return rows


def tuned_candidate(fit: HeadFit) -> HeadFit:
    """A copy of the fit with a head of its own, for fine-tuning beside the head it came from.

    Fine-tuning changes the head's weights in place; `train.fine_tune.enabled: auto` must still
    be able to serve the untouched head. The candidate averages the image and mirror only:
    the crops view, five more passes per training step, is left to the head.
    """
    import keras

    head = keras.models.clone_model(fit.model)
    head.set_weights(fit.model.get_weights())
    return replace(fit, model=head, crops=False)


def probabilities_on_images(model, split: Split, raw: Path, image_size: int) -> np.ndarray:
    """The served model's class probabilities for a split's photos, read from their files."""
    from taglens.data.images import image_dataset

    probabilities = probabilities_model(model)
    paths = [raw / image for image in split.rows["image"]]
    batches = [
        probabilities.predict(batch, verbose=0) for batch in image_dataset(paths, image_size, 32)
    ]
    return np.concatenate(batches) if batches else np.zeros((0, model.output_shape[-1]))


def write_model_folder(
    config: TrainConfig,
    model,
    out: Path,
    run_id: str,
    served: ServedPrecision,
    views: tuple[str, ...],
) -> None:
    """Save model.keras and model_info.json into models/; log model_info.json on the run.

    `served` is the engine and precision the model serves on (model_info.json records both,
    and the INT8 decision when there was one). `views` (model_info.json's `views`) names the
    views whose probabilities the model averages.
    """
    import mlflow

    save_model(model, artifacts.MODEL.at(out))
    info = artifacts.MODEL_INFO.at(out)
    atomic_write_json(
        info,
        {
            "classes": list(config.base.classes),
            "image_size": config.model.image_size,
            "backbone": config.model.backbone,
            "weights_identity": weights_identity(config.model, config.base.seed),
            "run_id": run_id,
            "experiment": config.base.experiment,
            "params": config.flat(),
            "engine": served.engine,
            "precision": served.precision,
            "int8": asdict(served.decision) if served.decision else None,
            "views": list(views),
        },
    )
    mlflow.log_artifact(str(info), artifact_path="train")
