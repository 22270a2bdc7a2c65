"""A models/ folder and a logged pyfunc written by earlier code still load and predict the same.

Registered models outlive the code that wrote them: the registry holds model.keras (with the
`taglens>` Keras layers), hashtags.json, image_rankers.npz, drift_reference.json and
model_info.json, and every logged pyfunc stores a copy of `taglens/serving/pyfunc_entry.py`,
which imports `taglens.serving.pyfunc.TaglensModel` when the model loads. So that import path and
the file formats may not change. tests/fixtures/stored_model/ was written once by
`write_stored_model` (run `python -m tests.unit.test_stored_model DEST` only to make a new anchor
on purpose): the test loads it with today's code and compares the predictions stored beside it.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

STORED = Path(__file__).resolve().parents[1] / "fixtures" / "stored_model"
ENTRY = Path(__file__).resolve().parents[2] / "taglens" / "serving" / "pyfunc_entry.py"


def fixed_images() -> list[bytes]:
    """Two PNGs (a gradient and a checkerboard with a tint) that decode the same everywhere."""
    from PIL import Image

    y, x = np.mgrid[0:40, 0:48]
    gradient = np.stack([x * 5, y * 6, (x + y) * 3], axis=-1).astype("uint8")
    board = ((x // 8 + y // 8) % 2 * 200 + 30).astype("uint8")
    checker = np.stack([board, board // 2, 255 - board], axis=-1).astype("uint8")
    images = []
    for array in (gradient, checker):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def write_stored_model(dest: Path) -> Path:
    """Write a tiny models/ folder with every optional file, and expected.json beside it."""
    import keras

    from taglens.features.backbones import preprocess_layer
    from taglens.model.drift import DriftReference
    from taglens.model.hashtags import HashtagStats
    from taglens.model.predictor import HashtagPredictor
    from taglens.model.rankers import HashtagBlend, NeighbourTags, TagModel, unit_rows
    from tests.helpers.params import tiny_params
    from tests.helpers.tinymodels import IMAGE_SIZE, build_tiny_models

    params = tiny_params()
    models = build_tiny_models(dest / "models", params, seed=3)
    classes = list(params.base.classes)
    # a model with the features output too, so the image rankers take part
    keras.utils.set_random_seed(3)
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
    x = preprocess_layer("tf", name="preprocess")(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    features = keras.layers.GlobalAveragePooling2D(name="features")(x)
    probabilities = keras.layers.Dense(len(classes), activation="softmax")(features)
    outputs = {"probabilities": probabilities, "features": features}
    keras.Model(inputs, outputs).save(models / "model.keras")
    stats = HashtagStats.load(models / "hashtags.json")
    rng = np.random.default_rng(3)
    n_tags = len(stats.tags)
    tag_model = TagModel(
        rng.normal(size=4).astype("float32"),
        np.ones(4, "float32"),
        rng.normal(size=(4, 3)).astype("float32"),
        np.zeros(3, "float32"),
        np.array([0, 2, 4]),
    )
    neighbours = NeighbourTags(
        unit_rows(rng.normal(size=(6, 4))),
        rng.integers(0, 2, (6, n_tags)).astype("float32"),
        k=3,
        power=4.0,
    )
    blend = HashtagBlend(
        estimator="uses",
        sharpen=2.0,
        tag_model=tag_model,
        neighbours=neighbours,
        weights={"popularity": 0.2, "class_mixture": 0.5, "tag_model": 0.1, "neighbours": 0.2},
        tag_multiplier=np.linspace(0.5, 1.0, n_tags),
        choice={"served": "blend", "why": "stored model anchor"},
        tail_weights={"class_mixture": 1.0},
    )
    blend.save(models / "image_rankers.npz")
    reference = DriftReference.from_probabilities(rng.dirichlet(np.ones(len(classes)), 40), classes)
    reference.save(models / "drift_reference.json")
    predictor = HashtagPredictor.from_dir(models)
    expected = {
        "predictions": predictor.predict_bytes(fixed_images()),
        "drift_reference": reference.to_dict(),
    }
    (dest / "expected.json").write_text(json.dumps(expected, indent=1) + "\n", encoding="utf-8")
    return dest


def assert_close(actual, expected, where="") -> None:
    """Equal structure, equal strings, numbers within 1e-6."""
    if isinstance(expected, dict):
        assert sorted(actual) == sorted(expected), where
        for key in expected:
            assert_close(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_close(a, e, f"{where}[{index}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, abs=1e-6), where
    else:
        assert actual == expected, where


def test_the_pyfunc_entry_imports_the_model_class_from_its_stored_path():
    # given the file every logged pyfunc stores, when its imports are read
    source = ENTRY.read_text(encoding="utf-8")
    # then it names TaglensModel at taglens.serving.pyfunc, which still defines it
    assert "from taglens.serving.pyfunc import TaglensModel" in source
    from taglens.serving.pyfunc import TaglensModel

    assert TaglensModel.__module__ == "taglens.serving.pyfunc"


def test_the_stored_models_folder_predicts_as_when_it_was_written():
    from taglens.model.predictor import HashtagPredictor

    # given the folder written by the code of the day the anchor was made
    expected = json.loads((STORED / "expected.json").read_text(encoding="utf-8"))
    # when today's code loads it and predicts the two fixed images
    predictor = HashtagPredictor.from_dir(STORED / "models")
    predictions = predictor.predict_bytes(fixed_images())
    # then classes, probabilities and hashtags are the stored ones
    assert predictor.rankers is not None and predictor.rankers.neighbours is not None
    assert {item["why"] for row in predictions for item in row["hashtags"]} >= {"class"}
    assert_close(predictions, expected["predictions"], "predictions")
    assert_close(predictor.drift_reference, expected["drift_reference"], "drift_reference")


if __name__ == "__main__":
    print(write_stored_model(Path(sys.argv[1])))


def test_a_damaged_drift_reference_leaves_the_model_serving(tmp_path, caplog):
    import shutil

    from taglens.model.predictor import HashtagPredictor

    # Given the stored folder whose drift reference (only the nightly drift check reads it)
    # was cut short
    models = shutil.copytree(STORED / "models", tmp_path / "models")
    reference = models / "drift_reference.json"
    reference.write_text(reference.read_text(encoding="utf-8")[:40], encoding="utf-8")
    # When it is loaded, Then it predicts as ever, without a drift reference, and says why
    predictor = HashtagPredictor.from_dir(models)
    assert predictor.drift_reference is None
    assert "drift_reference.json is unreadable" in caplog.text
    expected = json.loads((STORED / "expected.json").read_text(encoding="utf-8"))
    assert_close(predictor.predict_bytes(fixed_images()), expected["predictions"], "predictions")
