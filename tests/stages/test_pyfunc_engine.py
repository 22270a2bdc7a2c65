"""The logged pyfunc runs its model on the train run's engine, as batch predict and the web do."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest

from taglens.features.engines import EngineModel
from taglens.model.predictor import HashtagPredictor
from taglens.model.pyfunc import log_taglens_model
from taglens.serving.pyfunc import ENGINE_ENV, on_served_engine
from taglens.tracking import configure_tracking
from tests.helpers.params import tiny_params
from tests.helpers.servers import free_port, wait_until_healthy

MLFLOW = Path(sys.executable).with_name("mlflow")


def _log(models_dir, engine: str | None):
    """Log `models_dir` as the train stage does, recording the run's `featurize.engine`."""
    # an experiment of this store: an earlier test may leave another store's experiment active
    configure_tracking("pyfunc-engine")
    with mlflow.start_run():
        return log_taglens_model(
            models_dir, ingest=tiny_params().ingest, max_upload_mb=10, engine=engine
        ).model_uri


def _pixels(n=4):
    return np.random.default_rng(1).uniform(0, 255, (n, 32, 32, 3)).astype(np.float32)


@pytest.mark.parametrize(
    ("recorded", "override", "expected"),
    [
        ("openvino", None, "openvino"),
        (None, None, "tensorflow"),  # a model logged before engines were recorded
        ("openvino", "tensorflow", "tensorflow"),  # the serving process decides last
    ],
)
def test_the_loaded_pyfunc_runs_on_the_recorded_engine(
    recorded, override, expected, fresh_mlflow, tiny_models_dir, monkeypatch
):
    # given a model logged by a train run whose featurize.engine was `recorded`
    uri = _log(tiny_models_dir, recorded)
    if override:
        monkeypatch.setenv(ENGINE_ENV, override)
    # when MLflow loads it, as `mlflow models serve` does
    pyfunc = mlflow.pyfunc.load_model(uri)
    predictor = pyfunc.unwrap_python_model().predictor
    # then its Keras model runs on that engine, with TensorFlow's probabilities within 1e-4
    assert isinstance(predictor.model, EngineModel) and predictor.model.engine == expected
    reference = HashtagPredictor.from_dir(tiny_models_dir).probabilities(_pixels())
    assert np.allclose(predictor.probabilities(_pixels()), reference, atol=1e-4)
    served = pyfunc.predict(pd.DataFrame({"image": [_png()]}))
    assert len(served) == 1 and len(served[0]["probabilities"]) == len(predictor.classes)
    assert served[0]["engine"] == expected  # every answer says what it ran on


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime", "tensorflow", None])
def test_the_logged_requirements_pin_the_engines_package(engine, fresh_mlflow, tiny_models_dir):
    # given a model logged by a train run whose featurize.engine was `engine`
    uri = _log(tiny_models_dir, engine)
    # when MLflow reads the requirements it would build a serving environment from
    text = Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text()
    pins = dict(line.split("==") for line in text.split() if "==" in line)
    # then TensorFlow and the engine's own packages are there, pinned to what trained it
    wanted = {"openvino": {"openvino"}, "onnxruntime": {"onnxruntime", "tf2onnx", "onnx"}}
    expected = wanted.get(engine, set())
    for package in {"tensorflow-cpu", "mlflow", *expected}:
        assert pins[package] == metadata.version(package), text
    assert not ({"openvino", "onnxruntime", "tf2onnx", "onnx"} - expected) & set(pins), text


@pytest.mark.slow
def test_mlflow_models_serve_answers_on_the_recorded_engine(
    fresh_mlflow, tiny_models_dir, monkeypatch
):
    # given a model trained with featurize.engine openvino, and no override where it is served
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    uri = _log(tiny_models_dir, "openvino")
    port = free_port()
    # `mlflow models serve` starts `uvicorn` from PATH: the venv's bin must be on it
    env = {**os.environ, "PATH": f"{MLFLOW.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [MLFLOW, "models", "serve", "-m", uri, "--env-manager", "local"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    server = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # when it is served by MLflow's own server and asked for two photos
    try:
        ping = f"http://127.0.0.1:{port}/ping"
        wait_until_healthy(server, ping, timeout=120, what="mlflow models serve")
        request = {"dataframe_split": {"columns": ["image"], "data": [[_png()], [_png()]]}}
        answer = httpx.post(f"http://127.0.0.1:{port}/invocations", json=request, timeout=60)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
    # then each answer reports that it ran on OpenVINO
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert [row["engine"] for row in predictions] == ["openvino", "openvino"]


def _png() -> str:
    import base64

    from taglens.model.pyfunc import example_image

    return base64.b64encode(example_image(32)).decode()


def test_an_engine_missing_where_the_model_is_served_falls_back_to_tensorflow(
    tiny_models_dir, monkeypatch, caplog
):
    # given a serving environment without OpenVINO
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a)
    )
    predictor = HashtagPredictor.from_dir(tiny_models_dir)
    # when the model recorded openvino
    with caplog.at_level(logging.WARNING, logger="taglens.serving.pyfunc"):
        served = on_served_engine(predictor, "openvino", environ={})
    # then it serves on tensorflow, and says why
    assert served.model.engine == "tensorflow"
    assert "openvino" in caplog.text and "serving on tensorflow instead" in caplog.text
    assert np.allclose(
        served.probabilities(_pixels()), predictor.probabilities(_pixels()), atol=1e-4
    )


def test_an_int8_trained_model_served_on_another_engine_says_its_answers_differ(
    tiny_models_dir, caplog
):
    import dataclasses

    # given a model whose head learned INT8 vectors, and one trained on FP32 ones
    fp32 = HashtagPredictor.from_dir(tiny_models_dir)
    int8 = dataclasses.replace(fp32, info={**fp32.info, "precision": "int8"})
    # when TAGLENS_ENGINE asks for tensorflow
    with caplog.at_level(logging.WARNING, logger="taglens.serving.pyfunc"):
        on_served_engine(fp32, None, environ={ENGINE_ENV: "tensorflow"})
        assert caplog.text == ""
        served = on_served_engine(int8, "openvino-int8", environ={ENGINE_ENV: "tensorflow"})
    # then it serves as asked, and warns that batch predict and the page answer otherwise
    assert served.model.engine == "tensorflow"
    assert "trained on INT8 vectors but serves on tensorflow" in caplog.text
