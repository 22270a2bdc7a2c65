"""INT8 quantization: the keep-or-fall-back rule, its cache, and the openvino-int8 engine."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from taglens.features import quantize
from taglens.features.engines import EngineError, compile_forward, precision_of, use_int8

SIZE = 32


def tiny_net():
    """A small random conv net on raw pixels: enough layers for NNCF to quantize."""
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4)(x), name="tiny")


def pixels(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, SIZE, SIZE, 3)).astype("uint8")


def test_int8_is_kept_within_max_drop_and_refused_beyond_it_with_both_accuracies():
    kept = quantize.decide(
        0.80, 0.795, max_drop=0.01, validation_images=200, calibration_images=300
    )
    refused = quantize.decide(
        0.80, 0.75, max_drop=0.01, validation_images=200, calibration_images=300
    )
    assert kept.precision == "int8" and kept.drop == pytest.approx(0.005)
    assert refused.precision == "fp32" and refused.drop == pytest.approx(0.05)
    assert "0.750" in refused.reason and "0.800" in refused.reason
    assert "beyond featurize.int8.max_drop 0.01" in refused.reason
    # a gain is always kept
    assert (
        quantize.decide(0.5, 0.6, max_drop=0.0, validation_images=1, calibration_images=1).precision
        == "int8"
    )


def test_precision_follows_the_engine():
    assert precision_of("openvino-int8") == "int8"
    assert [precision_of(e) for e in ("tensorflow", "openvino", "onnxruntime")] == ["fp32"] * 3


def test_openvino_int8_refuses_a_model_nobody_quantized():
    with pytest.raises(EngineError, match=r"featurize\.engine: openvino-int8 runs an INT8 model"):
        compile_forward(tiny_net(), "openvino-int8", jit_compile=False)


@pytest.mark.slow
def test_accuracy_control_falls_back_to_fp32_with_a_warning(tmp_path, caplog):
    # Given a validation that only FP32's own outputs pass (any INT8 difference is an error)
    model = tiny_net()
    images = pixels(16, 1)
    reference = np.asarray(model.predict(images.astype("float32"), verbose=0))

    def exact(outputs, indices):
        return np.all(np.abs(outputs - reference[indices]) < 1e-5, axis=1)

    # When the model is quantized with no accuracy loss allowed and one layer group reverted
    with caplog.at_level(logging.WARNING, logger="taglens.features.quantize"):
        decision = quantize.quantize(
            model,
            pixels(16, 2),
            quantize.Validation(images, exact),
            max_drop=0.0,
            max_iterations=1,
            folder=tmp_path / "q",
        )
        quantize.report(decision)
    # Then FP32 is kept, and the warning gives both accuracies
    assert decision.precision == "fp32"
    assert decision.fp32_accuracy == 1.0 and decision.int8_accuracy < 1.0
    assert "using FP32, not INT8" in caplog.text
    assert f"{decision.int8_accuracy:.3f}" in caplog.text and "1.000" in caplog.text
    # and the decision is cached without a model, so the next run reads it instead of quantizing
    assert not (tmp_path / "q" / quantize.MODEL_XML).exists()
    assert json.loads((tmp_path / "q" / quantize.DECISION_FILE).read_text())["precision"] == "fp32"
    assert quantize.cached_decision(tmp_path / "q") == decision


@pytest.mark.slow
def test_a_kept_int8_model_is_cached_and_runs_on_openvino_int8(tmp_path):
    # Given a validation every model passes when its top output agrees with FP32's
    model = tiny_net()
    images = pixels(16, 1)
    top = np.argmax(model.predict(images.astype("float32"), verbose=0), axis=1)

    def agrees(outputs, indices):
        return np.argmax(outputs, axis=1) == top[indices]

    # When it is quantized with a generous max_drop
    decision = quantize.quantize(
        model,
        pixels(16, 2),
        quantize.Validation(images, agrees),
        max_drop=0.5,
        max_iterations=2,
        folder=tmp_path / "q",
    )
    # Then INT8 is kept and stored, and the cache gives the same decision back
    assert decision.precision == "int8" and decision.fp32_accuracy == 1.0
    assert (tmp_path / "q" / quantize.MODEL_XML).is_file()
    assert quantize.cached_decision(tmp_path / "q") == decision
    # and openvino-int8 runs the stored INT8 model: close to FP32's outputs, not the same
    use_int8(model, quantize.load_int8(tmp_path / "q"))
    int8 = compile_forward(model, "openvino-int8", jit_compile=False)(images.astype("float32"))
    fp32 = compile_forward(model, "openvino", jit_compile=False)(images.astype("float32"))
    assert int8.shape == fp32.shape == (16, 4)
    assert not np.allclose(int8, fp32, atol=1e-6)
    assert np.max(np.abs(int8 - fp32)) < 0.25 * np.max(np.abs(fp32))


def test_a_decision_whose_model_was_removed_is_decided_again(tmp_path):
    decision = quantize.decide(0.8, 0.8, max_drop=0.01, validation_images=1, calibration_images=1)
    (tmp_path / quantize.DECISION_FILE).write_text(json.dumps(decision.__dict__))
    assert quantize.cached_decision(tmp_path) is None  # INT8 without model.xml
    (tmp_path / quantize.MODEL_XML).write_text("<net/>")
    assert quantize.cached_decision(tmp_path) == decision
    (tmp_path / quantize.DECISION_FILE).write_text("{not json")
    assert quantize.cached_decision(tmp_path) is None
