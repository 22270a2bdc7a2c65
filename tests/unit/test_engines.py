"""Every inference engine gives the Keras model's outputs; bad choices fail naming the param."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from taglens.features import engines
from taglens.features.engines import FP32_ENGINES as ENGINES
from taglens.features.engines import EngineError, compile_forward, on_engine

RTOL = 1e-4  # the bound: same vectors within 1e-4 relative


def relative_difference(got: np.ndarray, want: np.ndarray) -> float:
    """The largest row-wise |got - want| / |want| (vector norms), as train's verify check uses."""
    got, want = np.asarray(got, "float64"), np.asarray(want, "float64")
    scale = np.maximum(np.linalg.norm(want, axis=1), 1e-12)
    return float(np.max(np.linalg.norm(got - want, axis=1) / scale))


@pytest.fixture(scope="module")
def vgg19_32px():
    from taglens.features.backbones import build_feature_extractor
    from taglens.params import ModelParams

    return build_feature_extractor(ModelParams(backbone="vgg19", image_size=32, weights=None), 3)


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).uniform(0, 255, (5, 32, 32, 3)).astype("float32")


@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_gives_the_keras_vectors_within_1e_4(engine, vgg19_32px, pixels, tmp_path):
    # 5 images: OpenVINO splits them over its parallel requests unevenly; 1 image takes its
    # latency path; both must keep the order and the values.
    want = np.asarray(vgg19_32px(pixels, training=False))
    forward = compile_forward(
        vgg19_32px, engine, jit_compile=False, batch_size=5, cache_dir=tmp_path
    )
    got = forward(pixels)
    assert got.shape == (5, 512) and got.dtype == np.float32
    assert relative_difference(got, want) < RTOL
    assert relative_difference(forward(pixels[2:3]), want[2:3]) < RTOL
    assert relative_difference(forward(pixels[::-1]), want[::-1]) < RTOL


def test_openvino_conversion_sends_no_usage_statistics(vgg19_32px, pixels, monkeypatch):
    import openvino_telemetry

    def no_reports(*_, **__):
        raise AssertionError("conversion must not start usage reporting")

    monkeypatch.setattr(openvino_telemetry.Telemetry, "__init__", no_reports)
    monkeypatch.setattr(openvino_telemetry.Telemetry, "send_event", no_reports)
    assert compile_forward(vgg19_32px, "openvino", jit_compile=False)(pixels).shape == (5, 512)


def test_onnx_conversion_is_cached_on_disk(vgg19_32px, pixels, tmp_path, monkeypatch):
    first = compile_forward(vgg19_32px, "onnxruntime", jit_compile=False, cache_dir=tmp_path)
    first = first(pixels)
    cached = list((tmp_path / "onnx").glob("*.onnx"))
    assert len(cached) == 1 and cached[0].stat().st_size > 1_000_000  # VGG-19's 20M weights

    import tf2onnx

    def no_conversion(*_, **__):
        raise AssertionError("a cached model must not be converted again")

    monkeypatch.setattr(tf2onnx.convert, "from_function", no_conversion)
    engines._CONVERTED.clear()  # as in a new process: nothing converted in memory
    again = compile_forward(vgg19_32px, "onnxruntime", jit_compile=False, cache_dir=tmp_path)
    again = again(pixels)
    np.testing.assert_array_equal(again, first)


def test_a_model_is_converted_once_per_process_and_forgotten_with_it(pixels, monkeypatch):
    import gc

    import keras

    conversions = []
    real = engines.OpenVinoForward.__init__

    def counted(self, model):
        conversions.append(model.name)
        real(self, model)

    monkeypatch.setattr(engines.OpenVinoForward, "__init__", counted)

    def small(name):
        inputs = keras.Input((32, 32, 3), name="image")
        return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs), name=name)

    model = small("first")
    first = compile_forward(model, "openvino", jit_compile=False)
    # a Dask worker's next shard
    assert compile_forward(model, "openvino", jit_compile=False) is first
    other = compile_forward(small("second"), "openvino", jit_compile=False)
    assert other is not first and conversions == ["first", "second"]
    np.testing.assert_allclose(first(pixels), pixels.mean(axis=(1, 2)), rtol=1e-5)
    del model, first, other
    gc.collect()
    assert not any(m.name in ("first", "second") for m in list(engines._CONVERTED.keys()))


def test_fingerprint_follows_the_weights_and_survives_save_and_load(tmp_path):
    import keras

    def small(seed):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((8, 8, 3), name="image")
        return keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs), name="small")

    first = small(0)
    first.save(tmp_path / "small.keras")
    loaded = keras.saving.load_model(tmp_path / "small.keras")
    assert engines.model_fingerprint(loaded) == engines.model_fingerprint(first)
    assert engines.model_fingerprint(small(0)) == engines.model_fingerprint(first)
    assert engines.model_fingerprint(small(1)) != engines.model_fingerprint(first)


def test_unknown_engine_names_the_param(vgg19_32px):
    with pytest.raises(EngineError, match=r"featurize\.engine must be one of tensorflow, openvino"):
        compile_forward(vgg19_32px, "tensorrt", jit_compile=False)


def test_the_suite_converts_into_a_throwaway_cache_not_the_users(tmp_path_factory):
    # tests/conftest.py: a conversion a user's run left in ~/.cache/taglens must not be found
    cache = engines.default_cache_dir()
    assert cache.is_relative_to(tmp_path_factory.getbasetemp())
    assert cache.name.startswith("engine-cache")


def test_a_missing_package_names_the_param_and_the_fix(vgg19_32px, monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a)
    )
    with pytest.raises(EngineError) as caught:
        compile_forward(vgg19_32px, "openvino", jit_compile=False, cache_dir=tmp_path)
    message = str(caught.value)
    assert "featurize.engine: openvino needs openvino" in message
    assert "pip install openvino" in message and "featurize.engine: tensorflow" in message


def test_a_failed_conversion_names_the_param(vgg19_32px, monkeypatch, tmp_path):
    import openvino

    def broken(*_, **__):
        raise RuntimeError("Cannot create Foo layer\nlong trace")

    monkeypatch.setattr(openvino, "convert_model", broken)
    with pytest.raises(
        EngineError,
        match=r"^featurize\.engine: openvino could not convert "
        r"vgg19_features \(RuntimeError: Cannot create Foo layer\); set "
        r"featurize\.engine: tensorflow$",
    ):
        compile_forward(vgg19_32px, "openvino", jit_compile=False, cache_dir=tmp_path)


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_a_predictor_on_an_engine_gives_the_same_probabilities(
    engine, tiny_models_dir, tmp_path, monkeypatch
):
    from taglens.model.predictor import HashtagPredictor

    monkeypatch.setenv("TAGLENS_CACHE_DIR", str(tmp_path / "cache"))
    plain = HashtagPredictor.from_dir(tiny_models_dir)
    fast = on_engine(plain, engine)
    assert fast.model.engine == engine and fast.model.output_shape == plain.model.output_shape
    pixels = np.random.default_rng(1).uniform(0, 255, (7, 32, 32, 3)).astype("float32")
    want, got = plain.probabilities(pixels), fast.probabilities(pixels)
    assert relative_difference(got, want) < RTOL
    assert [p["top_class"] for p in fast.predict_pixels(pixels)] == [
        p["top_class"] for p in plain.predict_pixels(pixels)
    ]
    assert on_engine(fast, engine) is fast  # already there: no second conversion
    assert on_engine(fast, "tensorflow").model.model is plain.model  # switched, not stacked


@pytest.fixture(scope="module")
def served_model(vgg19_32px):
    """The model train writes: a dict of outputs, with the flip view averaged and colour kept."""
    import keras

    from taglens.model.full_model import assemble

    keras.utils.set_random_seed(5)
    vectors = keras.Input((512,))
    head = keras.Model(vectors, keras.layers.Dense(3, activation="softmax")(vectors))
    return assemble(vgg19_32px, head, flip=True, colour=True)


@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_keeps_every_output_of_a_dict_output_model(
    engine, served_model, pixels, tmp_path
):
    # Batch predict and the web page run this model on the engine: class probabilities, the
    # features and the colour view must each come back under their own name, in order.
    want = {k: np.asarray(v) for k, v in served_model(pixels, training=False).items()}
    assert set(want) == {"probabilities", "features", "colour"}
    forward = compile_forward(
        served_model, engine, jit_compile=False, batch_size=5, cache_dir=tmp_path
    )
    for rows in (slice(None), slice(2, 3), slice(None, None, -1)):  # parallel and latency paths
        got = forward(pixels[rows])
        assert set(got) == set(want)
        for key in want:
            assert got[key].shape == want[key][rows].shape
            assert relative_difference(got[key], want[key][rows]) < RTOL, key


def test_the_served_flip_average_is_two_passes_in_one_extractor_call(
    served_model, vgg19_32px, pixels
):
    # The served model runs the image and its mirror through the extractor as one 2B batch
    # (views.image_and_mirror, as featurize does): one call of the extractor in its graph, and
    # the average of two separate passes.
    nodes = [node for depth in served_model._nodes_by_depth.values() for node in depth]
    assert len([node for node in nodes if node.operation is vgg19_32px]) == 1
    assert {"with_mirror", "image_and_mirror"} <= {layer.name for layer in served_model.layers}
    image = np.asarray(vgg19_32px(pixels, training=False))
    mirror = np.asarray(vgg19_32px(pixels[:, :, ::-1], training=False))
    got = np.asarray(served_model(pixels, training=False)["features"])
    assert relative_difference(got, (image + mirror) / 2) < 1e-5
