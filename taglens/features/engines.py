"""One forward pass, three inference engines: TensorFlow, OpenVINO or ONNX Runtime.

`compile_forward(model, engine)` turns a Keras model (pixels in, vectors or probabilities out)
into a callable on float32 NumPy batches. Featurize, batch predict and the web server all run
their network through it, so `featurize.engine` switches all three. Every engine gives the same
outputs within 1e-4 relative (tests/unit/test_engines.py); which one is fastest depends on the
network and the CPU (BENCHMARKS.md measures them side by side). The runtimes themselves live in
`taglens.features.engine_runtimes`.

`openvino-int8` runs an INT8 model that `taglens.features.quantize` made from the Keras model
beforehand (calibrated and checked on labelled photos, which only the stages have): the stage
hands it over with `use_int8(model, int8_model)`, and every later `compile_forward(model,
"openvino-int8")` runs it. Its outputs are close to, not within 1e-4 of, the others'.

A converted model is kept for as long as its Keras model lives: a Dask worker that featurizes
many shards with one extractor converts it once, not once per shard.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from taglens.features.engine_runtimes import (
    ENGINE_PARAM,
    ONNX_OPSET,
    EngineError,
    Forward,
    OnnxRuntimeForward,
    OpenVinoForward,
    Outputs,
    TensorFlowForward,
    default_cache_dir,
    model_fingerprint,
    no_usage_reports,
    traced,
)
from taglens.params.features import ENGINES as ENGINE_SPECS

if TYPE_CHECKING:
    import keras

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

logger = logging.getLogger(__name__)

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
        raise EngineError(
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
