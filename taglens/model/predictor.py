"""Load a trained `models/` directory and turn images into class probabilities and hashtags."""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from taglens import artifacts
from taglens.errors import TaglensError
from taglens.model.hashtags import HashtagStats
from taglens.model.rankers import HashtagBlend
from taglens.params import HashtagParams

logger = logging.getLogger(__name__)

MODEL_FILE = artifacts.MODEL.name
INFO_FILE = artifacts.MODEL_INFO.name
HASHTAGS_FILE = artifacts.HASHTAGS.name
RANKERS_FILE = artifacts.RANKERS.name  # optional: without it, the class mixture ranks alone
DRIFT_FILE = artifacts.DRIFT_REFERENCE.name  # optional: without it, batch runs judge no drift
RANK_CHUNK = 256  # images ranked at once: bounds the (N, T) score matrices
MODEL_FILES = (MODEL_FILE, INFO_FILE, HASHTAGS_FILE)
INT8_FILE = artifacts.INT8_MODEL.name  # optional: the INT8 model openvino-int8 serves
OPTIONAL_FILES = (RANKERS_FILE, DRIFT_FILE, INT8_FILE, artifacts.INT8_WEIGHTS.name)
CHUNK = 32  # images per forward pass: bounds memory for large inputs


@dataclass
class HashtagPredictor:
    """A Keras classifier plus hashtag statistics: pixels or encoded images in, suggestions out.

    Attributes:
        model: the Keras model (float32 RGB pixels 0..255 -> softmax over `classes`).
        classes: class names in the model's output order.
        image_size: the side in pixels the model expects.
        stats: hashtag statistics fitted on the training posts.
        params: the hashtag params used for ranking (the ones stored at train time by default).
        info: the whole model_info.json.
        rankers: the served hashtag ranking chosen at train time (None: the class mixture).
        drift_reference: drift_reference.json's contents (the validation outputs), when train
            wrote one (see `taglens.model.drift`).
    """

    model: Any
    classes: list[str]
    image_size: int
    stats: HashtagStats
    params: HashtagParams
    info: dict[str, Any]
    rankers: HashtagBlend | None = None
    drift_reference: dict[str, Any] | None = None
    int8_model: Path | None = None  # the INT8 model (OpenVINO IR) train quantized, if any

    @classmethod
    def from_dir(
        cls, models_dir: Path | str, params: HashtagParams | None = None
    ) -> HashtagPredictor:
        """Load model.keras, model_info.json and hashtags.json from a directory.

        Args:
            models_dir: the train stage's output directory.
            params: hashtag params overriding the ones stored in hashtags.json.

        Raises:
            FileNotFoundError: a file is missing (the message says to run the train stage).
            TaglensError: the files do not belong together (class lists differ).
        """
        models_dir = Path(models_dir)
        missing = [name for name in MODEL_FILES if not (models_dir / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{models_dir} lacks {', '.join(missing)}: run the train stage (`dvc repro train`) "
                "or point at a directory it wrote"
            )
        info = json.loads((models_dir / INFO_FILE).read_text(encoding="utf-8"))
        for key in ("classes", "image_size"):
            if key not in info:
                raise TaglensError(
                    f"{models_dir / INFO_FILE} has no {key!r}: re-run the train stage"
                )
        stats = HashtagStats.load(models_dir / HASHTAGS_FILE)
        if list(stats.classes) != list(info["classes"]):
            raise TaglensError(
                f"{models_dir}: {HASHTAGS_FILE} classes {stats.classes} differ from the model's "
                f"{info['classes']}; re-run the train stage so both come from the same run"
            )
        import keras

        from taglens.features.backbones import preprocess_layer
        from taglens.features.views import register_view_layers

        preprocess_layer("none")  # defines and registers the Preprocess class the model names
        register_view_layers()  # and the view layers (mirror image, colour histogram)
        model = keras.saving.load_model(models_dir / MODEL_FILE, compile=False)
        logger.info(
            "loaded %s (%d classes, %d px)", models_dir, len(info["classes"]), info["image_size"]
        )
        rankers = None
        if (models_dir / RANKERS_FILE).is_file():
            rankers = HashtagBlend.load(models_dir / RANKERS_FILE)
        drift_reference = None
        if (models_dir / DRIFT_FILE).is_file():
            try:
                drift_reference = json.loads((models_dir / DRIFT_FILE).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                # only the nightly drift check reads it: the model still serves without one
                logger.warning(
                    "%s is unreadable (%s): no drift check with this model; re-run train to "
                    "write it again",
                    models_dir / DRIFT_FILE,
                    exc,
                )
        return cls(
            model=model,
            classes=list(info["classes"]),
            image_size=int(info["image_size"]),
            stats=stats,
            params=params or stats.params,
            info=info,
            rankers=rankers,
            drift_reference=drift_reference,
            int8_model=(models_dir / INT8_FILE) if (models_dir / INT8_FILE).is_file() else None,
        )

    @property
    def views(self) -> tuple[str, ...]:
        """The views whose probabilities the model averages (model_info.json's `views`).

        The model computes them itself; models trained before views were recorded name none.
        """
        return tuple(self.info.get("views") or ())

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Return (N, C) class probabilities for float32 pixels (N, S, S, 3) in 0..255.

        Raises:
            ValueError: the batch does not have the model's shape.
        """
        return self.outputs(batch)["probabilities"]

    def outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the model for a pixel batch, as arrays.

        `probabilities` (N, C) always; `features` and `colour` (what the image rankers read) when
        the model has them.

        Raises:
            ValueError: the batch does not have the model's shape.
        """
        pixels = np.asarray(batch, dtype=np.float32)
        expected = (self.image_size, self.image_size, 3)
        if pixels.ndim != 4 or pixels.shape[1:] != expected:
            raise ValueError(
                f"expected pixels of shape (N, {self.image_size}, {self.image_size}, 3), got "
                f"{pixels.shape}; decode images with taglens.data.images.decode_and_resize"
            )
        if len(pixels) == 0:
            return {"probabilities": np.zeros((0, len(self.classes)), dtype=np.float32)}
        parts = [
            _as_outputs(self.model(pixels[start : start + CHUNK], training=False))
            for start in range(0, len(pixels), CHUNK)
        ]
        return {
            key: np.concatenate([part[key] for part in parts]).astype(np.float32)
            for key in parts[0]
        }

    def rank(self, outputs: dict[str, np.ndarray]) -> list[list[dict[str, Any]]]:
        """Ranked hashtags per image from `outputs`: the ranking chosen at train time.

        Each item's `score` is the score of the blend that placed it (the head's for the first
        tags, the tail's after them), and its `why` says `class` when popularity and the class
        mixture give the larger share of that score, else `image`.
        """
        probs = outputs["probabilities"]
        ranked: list[list[dict[str, Any]]] = []
        for start in range(0, len(probs), RANK_CHUNK):
            part = {key: value[start : start + RANK_CHUNK] for key, value in outputs.items()}
            ranked.extend(self._rank_chunk(part))
        return ranked

    def final_scores(
        self, outputs: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, T) final scores of the served ranking, the scores shown and where they come from.

        The final scores order the list (`Placement.final`); each tag is shown with the
        score of the blend that placed it, head or tail (`HashtagBlend.placed`), and comes
        `from_class` when popularity and the class mixture give the larger share of that score.
        """
        blend = self.rankers or HashtagBlend()
        scores = blend.ranker_scores(
            self.stats,
            self.params,
            outputs["probabilities"],
            outputs.get("features"),
            outputs.get("colour"),
        )
        placement = blend.placed(self.stats, self.params, scores)

        def class_level_leads(weights: dict[str, float]) -> np.ndarray:
            class_level = sum(
                weights.get(name, 0.0) * scores[name] for name in ("popularity", "class_mixture")
            )
            return class_level >= blend.blend(scores, weights) / 2

        from_class = np.where(
            placement.by_head,
            class_level_leads(placement.head_weights),
            class_level_leads(placement.tail_weights),
        )
        final = placement.final
        return final, placement.shown, np.where(np.isfinite(final), from_class, True)

    def _rank_chunk(self, outputs: dict[str, np.ndarray]) -> list[list[dict[str, Any]]]:
        final, shown, from_class = self.final_scores(outputs)
        ranked = self.stats.rank_scores(final, self.params, shown)
        position = {tag: i for i, tag in enumerate(self.stats.tags)}
        for row, items in enumerate(ranked):
            for item in items:
                item["why"] = "class" if from_class[row, position[item["tag"]]] else "image"
        return ranked

    def predict_pixels(self, batch: np.ndarray) -> list[dict[str, Any]]:
        """Predict for a pixel batch; one dict per image.

        Each dict is `{"top_class", "top_probability", "probabilities": {class: p},
        "hashtags": [{"tag", "score", "posts", "engagement"}, ...]}`.
        """
        outputs = self.outputs(batch)
        probs = outputs["probabilities"]
        rankings = self.rank(outputs)
        results = []
        for row, hashtags in zip(probs, rankings, strict=True):
            top = int(np.argmax(row))
            results.append(
                {
                    "top_class": self.classes[top],
                    "top_probability": float(row[top]),
                    "probabilities": {c: float(p) for c, p in zip(self.classes, row, strict=True)},
                    "hashtags": hashtags,
                }
            )
        return results

    def decode(self, images: Sequence[bytes]) -> np.ndarray:
        """Decode encoded images (JPEG, PNG, GIF, BMP, WebP) to the model's pixel batch.

        Uses `taglens.data.images.decode_and_resize`, the function featurize and training use.

        Raises:
            TaglensError: an item is not an image; the message names its position.
        """
        import tensorflow as tf

        decode = _decoder(self.image_size)
        pixels = []
        for index, data in enumerate(images):
            if not isinstance(data, bytes | bytearray) or not data:
                raise TaglensError(
                    f"image {index}: expected encoded image bytes, got "
                    f"{type(data).__name__} of length {len(data or b'')}"
                )
            try:
                image = decode(tf.constant(bytes(data)))
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as exc:
                raise TaglensError(
                    f"image {index} could not be decoded (JPEG, PNG, GIF, BMP or WebP expected): "
                    f"{_first_line(exc.message) if exc.message else exc}"
                ) from None
            pixels.append(image.numpy())
        if not pixels:
            return np.zeros((0, self.image_size, self.image_size, 3), dtype=np.float32)
        return np.stack(pixels)

    def predict_bytes(self, images: Sequence[bytes]) -> list[dict[str, Any]]:
        """Predict for encoded images; an undecodable item raises TaglensError naming its index.

        Raising (rather than returning an error entry) keeps results aligned with inputs; callers
        that want to skip bad items validate each one with `decode([item])` first.
        """
        return self.predict_pixels(self.decode(images))


@functools.cache
def _decoder(image_size: int) -> Any:
    """`decode_and_resize` to `image_size` as one TensorFlow graph, traced once per size.

    Called eagerly, its ops (decode, resize, cast) are dispatched one by one from Python, which
    added about a third to the CPU of decoding a 640 px photo; the graph gives the same pixels
    (the same ops), as batch predict's tf.data pipeline runs them. The web page calls it
    from its decode threads at once: a traced function is safe to call from several threads.
    """
    import tensorflow as tf

    from taglens.data.images import decode_and_resize

    return tf.function(
        lambda data: decode_and_resize(data, image_size),
        input_signature=[tf.TensorSpec([], tf.string)],
    )


def _first_line(message: str) -> str:
    """A TensorFlow error's first line without the graph's node and op names."""
    line = message.splitlines()[0]
    return re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:[\w<>]+\].*$", "", line).strip()


def _as_outputs(result: Any) -> dict[str, np.ndarray]:
    """A model's result as a dict of arrays (a single-output model gives probabilities)."""
    if isinstance(result, dict):
        return {key: np.asarray(value) for key, value in result.items()}
    return {"probabilities": np.asarray(result)}
