"""Which runtime runs a forward pass (TensorFlow, OpenVINO, ONNX Runtime): conversion, caching.

The three runtimes a forward pass can run on: TensorFlow, OpenVINO and ONNX Runtime.

Each class wraps one Keras model (pixels in, a vector, probabilities or a dict of them out) as a
callable on float32 NumPy batches. `taglens.features.engines` chooses among them by
`featurize.engine`; this module holds what each runtime needs to convert and run the model.

OpenVINO converts the model's traced graph in memory in about 2 s (VGG-19), less than building
the Keras model. ONNX conversion (tf2onnx) takes 15-20 s for VGG-19, so its result is cached on
disk, keyed by a hash of the model's architecture and weights; conversion needs no network.

One forward pass, three inference engines: TensorFlow, OpenVINO or ONNX Runtime.

`compile_forward(model, engine)` turns a Keras model (pixels in, vectors or probabilities out)
into a callable on float32 NumPy batches. Featurize, batch predict and the web server all run
their network through it, so `featurize.engine` switches all three. Every engine gives the same
outputs within 1e-4 relative (tests/unit/test_engines.py); which one is fastest depends on the
network and the CPU (BENCHMARKS.md measures them side by side). The runtimes themselves live in
`taglens.features.engines`.

`openvino-int8` runs an INT8 model that `taglens.features.quantize` made from the Keras model
beforehand (calibrated and checked on labelled photos, which only the stages have): the stage
hands it over with `use_int8(model, int8_model)`, and every later `compile_forward(model,
"openvino-int8")` runs it. Its outputs are close to, not within 1e-4 of, the others'.

A converted model is kept for as long as its Keras model lives: a Dask worker that featurizes
many shards with one extractor converts it once, not once per shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from taglens.atomic import atomic_open
from taglens.errors import TaglensError
from taglens.params.features import ENGINES as ENGINE_SPECS

if TYPE_CHECKING:
    import keras


logger = logging.getLogger(__name__)

# The params key that chooses the engine: named in errors, and the logged pyfunc's config key.
ENGINE_PARAM = "featurize.engine"
ONNX_OPSET = 17
# A forward pass returns one array, or a dict of arrays for a dict-output model (taglens's own).
Outputs = np.ndarray | dict[str, np.ndarray]
Forward = Callable[[np.ndarray], Outputs]


class EngineError(TaglensError):
    """The chosen engine is not installed or cannot run this model (a setting the user fixes)."""


class EngineMissingError(EngineError):
    """The chosen engine's packages are not installed here (another machine may have them)."""


def default_cache_dir() -> Path:
    """Where converted models are kept: `$TAGLENS_CACHE_DIR`, else the user's cache directory."""
    root = os.environ.get("TAGLENS_CACHE_DIR")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "taglens"


def model_fingerprint(model: keras.Model) -> str:
    """A hash of the model's architecture, input shape and weights: the conversion cache key."""
    digest = hashlib.sha256(model.to_json().encode())
    digest.update(repr(model.input_shape).encode())
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()[:24]


def traced(model: keras.Model) -> Any:
    """The model as a `tf.function` on float32 pixels with a free batch dimension."""
    import tensorflow as tf

    shape = (None, *model.input_shape[1:])
    spec = [tf.TensorSpec(shape, tf.float32, name="image")]
    return tf.function(lambda images: model(images, training=False), input_signature=spec)


def output_keys(model: keras.Model) -> tuple[str, ...] | None:
    """The names of a dict-output model's outputs (sorted), or None for a single output."""
    structure = traced(model).get_concrete_function().structured_outputs
    return tuple(sorted(structure)) if isinstance(structure, dict) else None


def _key_of(names: set[str], keys: tuple[str, ...]) -> str:
    """The dict key a converted model's output tensor carries among its names."""
    found = [key for key in keys if key in names or any(n.startswith(f"{key}:") for n in names)]
    if len(found) != 1:
        raise EngineError(
            f"{ENGINE_PARAM}: cannot tell which model output {sorted(names)} is among "
            f"{list(keys)}: set {ENGINE_PARAM}: tensorflow"
        )
    return found[0]


def output_names(outputs: Any, keys: tuple[str, ...] | None) -> list[str]:
    """The key of each output port of a compiled OpenVINO model (positions for one output)."""
    if keys is None:
        return [str(i) for i in range(len(outputs))]
    return [_key_of(set(o.get_names()), keys) for o in outputs]


def _pack(keys: tuple[str, ...] | None, arrays: dict[str, np.ndarray]) -> Outputs:
    """One array for a single-output model, else the dict the Keras model returns."""
    return next(iter(arrays.values())) if keys is None else arrays


class TensorFlowForward:
    """The model as a `tf.function`; full batches go through XLA when `jit_compile` is set.

    A short last batch would make XLA compile the whole network again for the new shape, which
    costs more than running that one batch uncompiled, so it takes the plain graph instead.
    """

    def __init__(self, model: keras.Model, batch_size: int | None, jit_compile: bool):
        import tensorflow as tf

        def forward(images):
            return model(images, training=False)

        self.batch_size = batch_size
        self._graph = tf.function(forward, reduce_retracing=True)
        self._compiled = tf.function(forward, jit_compile=True) if jit_compile else self._graph

    def __call__(self, images: np.ndarray) -> Outputs:
        """Outputs of one float32 batch (B, S, S, 3) as NumPy (a dict for a dict-output model)."""
        fn = self._compiled if images.shape[0] == self.batch_size else self._graph
        out = fn(images)
        return {k: v.numpy() for k, v in out.items()} if isinstance(out, dict) else out.numpy()


def no_usage_reports() -> None:
    """Make OpenVINO's converter send no usage statistics (it does unless told otherwise).

    Without a consent file in the user's home, `convert_model` starts a thread that reports to a
    web analytics service; offline it only fails. This points the converter at the no-op
    Telemetry class OpenVINO itself uses when its telemetry package is not installed.
    """
    try:
        from openvino.tools.ovc import convert_impl, telemetry_stub, telemetry_utils
    except ImportError:  # another layout: nothing known to switch off
        return
    convert_impl.tm = telemetry_utils.tm = telemetry_stub


class OpenVinoForward:
    """The model converted to OpenVINO and compiled for the CPU in float32.

    OpenVINO would otherwise run in bfloat16 on CPUs that have it (results then differ by about
    1e-2). `converted` is an OpenVINO model made from it beforehand (the INT8 model of
    `taglens.features.quantize`): its quantized layers run in INT8, the others in float32. A batch
    is split over the throughput streams OpenVINO picks for this CPU and run as
    parallel requests; batches smaller than that go through a latency-compiled copy instead,
    which uses every core for one request (the web page's single images).
    """

    def __init__(self, model: keras.Model, converted: Any = None):
        import openvino as ov

        no_usage_reports()
        if converted is None:
            converted = ov.convert_model(traced(model).get_concrete_function())
        core = ov.Core()

        def compiled(hint: str) -> Any:
            config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": hint}
            return core.compile_model(converted, "CPU", config)

        self._throughput = compiled("THROUGHPUT")
        self._latency = compiled("LATENCY")
        # OpenVINO keeps a dict-output model's outputs as tensors named after the dict's keys
        keys = self._keys = output_keys(model)
        self._outputs = output_names(self._latency.outputs, keys)
        self.requests = int(self._throughput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._queue = ov.AsyncInferQueue(self._throughput, self.requests)
        self._lock = threading.Lock()  # one request queue: callers from several threads take turns

    def __call__(self, images: np.ndarray) -> Outputs:
        """Outputs of one float32 batch (B, S, S, 3) as NumPy (a dict for a dict-output model)."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        count = len(self._outputs)
        with self._lock:
            if len(images) < self.requests:
                result = self._latency(images)
                arrays = [np.array(result[i]) for i in range(count)]
                return _pack(self._keys, dict(zip(self._outputs, arrays, strict=True)))
            parts = np.array_split(images, self.requests)
            results: list[list[np.ndarray] | None] = [None] * len(parts)

            def done(request: Any, index: int) -> None:
                results[index] = [np.array(request.get_output_tensor(i).data) for i in range(count)]

            self._queue.set_callback(done)
            for index, part in enumerate(parts):
                self._queue.start_async({0: part}, index)
            self._queue.wait_all()
        joined = [np.concatenate([part[i] for part in results]) for i in range(count)]
        return _pack(self._keys, dict(zip(self._outputs, joined, strict=True)))


class OnnxRuntimeForward:
    """The model converted to ONNX (tf2onnx, cached on disk) and run by an ONNX Runtime session."""

    def __init__(self, model: keras.Model, cache_dir: Path):
        import onnxruntime as ort

        path = Path(cache_dir) / "onnx" / f"{model_fingerprint(model)}-opset{ONNX_OPSET}.onnx"
        if not path.is_file():
            import tf2onnx

            logger.info("converting %s to ONNX (cached at %s)", model.name, path)
            forward = traced(model)
            proto, _ = tf2onnx.convert.from_function(
                forward, input_signature=forward.input_signature, opset=ONNX_OPSET
            )
            with atomic_open(path, "wb") as handle:
                handle.write(proto.SerializeToString())
        self._session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        keys = self._keys = output_keys(model)
        self._outputs = [
            str(i) if keys is None else _key_of({o.name}, keys)
            for i, o in enumerate(self._session.get_outputs())
        ]

    def __call__(self, images: np.ndarray) -> Outputs:
        """Outputs of one float32 batch (B, S, S, 3) as NumPy (a dict for a dict-output model)."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        arrays = self._session.run(None, {self._input: images})
        return _pack(self._keys, dict(zip(self._outputs, arrays, strict=True)))


__all__ = [
    "ENGINE_PARAM",
    "ENGINES",
    "FP32_ENGINES",
    "INT8_ENGINE",
    "ONNX_OPSET",
    "EngineError",
    "EngineModel",
    "Forward",
    "Outputs",
    "TensorFlowForward",
    "compile_forward",
    "default_cache_dir",
    "model_fingerprint",
    "no_usage_reports",
    "on_engine",
    "precision_of",
    "traced",
    "use_int8",
]


INT8_ENGINE = "openvino-int8"
ENGINES = tuple(ENGINE_SPECS)  # what featurize.engine accepts (taglens.params.ENGINES)
FP32_ENGINES = tuple(e for e in ENGINES if e != INT8_ENGINE)  # the same outputs within 1e-4
_INT8_KEY = (INT8_ENGINE, "")  # an INT8 model is handed over, never converted: no cache dir
# Converted forwards by Keras model, then by (engine, cache_dir). The forwards of the converting
# engines hold no reference to the Keras model, so an entry goes when its model does.
_CONVERTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CONVERTED_LOCK = threading.Lock()


def precision_of(engine: str) -> str:
    """The arithmetic an engine's model runs in: `int8` for openvino-int8, else `fp32`."""
    return "int8" if engine == INT8_ENGINE else "fp32"


def use_int8(model: keras.Model, int8_model: Any) -> None:
    """Run `model` on openvino-int8 as `int8_model` (an OpenVINO model quantized from it)."""
    _check_installed(INT8_ENGINE)
    with _CONVERTED_LOCK:
        _CONVERTED.setdefault(model, {})[_INT8_KEY] = OpenVinoForward(model, int8_model)


def _check_installed(engine: str) -> None:
    import importlib.util

    modules = ENGINE_SPECS[engine].modules if engine in ENGINE_SPECS else ()
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise EngineMissingError(
            f"{ENGINE_PARAM}: {engine} needs {' and '.join(missing)}, which is not installed: "
            f"pip install {' '.join(missing)}, or set {ENGINE_PARAM}: tensorflow"
        )


def compile_forward(
    model: keras.Model,
    engine: str,
    *,
    jit_compile: bool,
    batch_size: int | None = None,
    cache_dir: Path | None = None,
) -> Forward:
    """The model's forward pass on the chosen engine: float32 (B, S, S, 3) -> NumPy outputs.

    Args:
        model: a Keras model on raw pixels (preprocessing inside).
        engine: one of ENGINES.
        jit_compile: XLA for the TensorFlow engine (`featurize.jit_compile`; the others
            compile by themselves).
        batch_size: the usual batch (the TensorFlow engine XLA-compiles only that shape).
        cache_dir: where converted models are kept (default `default_cache_dir()`).

    A converting engine's result is kept with the model: the same Keras model on the same
    engine is converted once per process.

    Raises:
        EngineError: an unknown engine, one that is not installed, or a failed conversion; the
            message names `featurize.engine`.

    """
    if engine not in ENGINES:
        raise EngineError(f"{ENGINE_PARAM} must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "tensorflow":
        return TensorFlowForward(model, batch_size, jit_compile)
    _check_installed(engine)
    if engine == INT8_ENGINE:
        with _CONVERTED_LOCK:
            forward = _CONVERTED.get(model, {}).get(_INT8_KEY)
        if forward is None:
            raise EngineError(
                f"{ENGINE_PARAM}: {INT8_ENGINE} runs an INT8 model quantized from {model.name} by "
                f"the featurize or train stage, and none was made for it: run the stage, or set "
                f"{ENGINE_PARAM}: openvino"
            )
        return forward
    key = (engine, str(cache_dir or default_cache_dir()))
    with _CONVERTED_LOCK:  # two threads asking for the same model convert it once
        converted = _CONVERTED.setdefault(model, {})
        if key not in converted:
            converted[key] = _convert(model, engine, Path(key[1]))
        return converted[key]


def _convert(model: keras.Model, engine: str, cache_dir: Path) -> Forward:
    """The model converted and compiled for a converting engine (openvino or onnxruntime)."""
    try:
        if engine == "openvino":
            return OpenVinoForward(model)
        return OnnxRuntimeForward(model, cache_dir)
    except Exception as exc:  # converters raise many kinds; the user's fix is the same
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EngineError(
            f"{ENGINE_PARAM}: {engine} could not convert {model.name} ({type(exc).__name__}: "
            f"{first[:300]}); set {ENGINE_PARAM}: tensorflow"
        ) from exc


class EngineModel:
    """A Keras model whose calls run on an engine; every other attribute is the model's own.

    It stands in for `HashtagPredictor.model`, which is called as `model(pixels, training=False)`.
    """

    def __init__(self, model: keras.Model, engine: str, **options: Any):
        self.model = model
        self.engine = engine
        # served batches come in every size: XLA would compile the model again for each shape
        self._forward = compile_forward(model, engine, jit_compile=False, **options)

    def __call__(self, images: Any, training: bool = False) -> Outputs:
        """Outputs of one float32 pixel batch."""
        return self._forward(np.asarray(images, dtype=np.float32))

    def __getattr__(self, name: str) -> Any:
        if name == "model":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)


def on_engine(predictor: Any, engine: str, **options: Any) -> Any:
    """A copy of a HashtagPredictor whose model runs on `engine` (same outputs within 1e-4).

    On openvino-int8 it runs the INT8 model train quantized from it (`predictor.int8_model`);
    a model without one (its INT8 model lost too much accuracy, or it was trained on FP32
    vectors) runs on openvino in FP32, with a warning. The engine a predictor's model runs on
    is `predictor.model.engine`. Other predictors (anything without a dataclass `model` field)
    are returned unchanged.

    Raises:
        EngineError: see `compile_forward`.

    """
    if not dataclasses.is_dataclass(predictor) or not hasattr(predictor, "model"):
        return predictor
    model = predictor.model
    if isinstance(model, EngineModel):
        if model.engine == engine:
            return predictor
        model = model.model
    if engine == INT8_ENGINE:
        int8 = getattr(predictor, "int8_model", None)
        if int8 is None:
            logger.warning(
                "%s: this model has no INT8 model (train kept FP32, or its features were FP32): "
                "serving it on openvino in FP32",
                ENGINE_PARAM,
            )
            engine = "openvino"
        else:
            import openvino as ov

            use_int8(model, ov.Core().read_model(int8))
    return dataclasses.replace(predictor, model=EngineModel(model, engine, **options))
