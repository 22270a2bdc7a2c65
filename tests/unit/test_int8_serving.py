"""A model trained on INT8 vectors is served in INT8 and says so; without its INT8 model, FP32."""

from __future__ import annotations

import base64
import json
import logging

import numpy as np
import pandas as pd
import pytest

from tests.helpers.rawdata import solid_raw
from tests.helpers.tinymodels import IMAGE_SIZE


def _split(posts, labels):
    from taglens.training.splits import Split

    rows = pd.DataFrame({"image": [post.image for post in posts]})
    return Split(rows, np.zeros((len(posts), 1), "float32"), np.asarray(labels))


@pytest.mark.slow
def test_the_served_model_records_and_runs_its_int8_precision(
    tmp_path, tiny_models_dir, tiny_params, fresh_mlflow
):
    import mlflow

    from taglens.features.engines import on_engine
    from taglens.model.int8_model import quantize_served
    from taglens.model.predictor import HashtagPredictor
    from taglens.model.pyfunc import PRECISION_KEY, PRECISION_TAG, load_logged, log_taglens_model
    from taglens.serving import model_ref
    from taglens.tracking import configure_tracking

    # Given the tiny served model, labelled photos, and INT8 settings that keep any INT8 model
    rng = np.random.default_rng(1)
    colours = {"animals": [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(24)]}
    posts = solid_raw(tmp_path / "raw", colours, size=IMAGE_SIZE)
    predictor = HashtagPredictor.from_dir(tiny_models_dir)
    fp32 = predictor.model.predict(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), "float32"), verbose=0)
    labels = [int(np.argmax(fp32))] * 12  # what the FP32 model answers: accuracy 1 on val
    settings = tiny_params.featurize.int8.model_copy(update={"max_drop": 0.99})
    # When train quantizes it
    served = quantize_served(
        predictor.model,
        settings,
        _split(posts[:12], labels),
        _split(posts[12:], labels),
        tmp_path / "raw",
        tiny_models_dir,
    )
    # Then it serves on openvino-int8, with its INT8 model beside model.keras
    assert (served.engine, served.precision) == ("openvino-int8", "int8")
    assert (tiny_models_dir / "model-int8.xml").is_file()
    assert (tiny_models_dir / "model-int8.bin").is_file()

    # When it is logged as the pyfunc and loaded back
    configure_tracking(tiny_params.base.experiment, store=fresh_mlflow)
    with mlflow.start_run() as run:
        logged = log_taglens_model(
            tiny_models_dir,
            ingest=tiny_params.ingest,
            max_upload_mb=tiny_params.serve.max_upload_mb,
            engine=served.engine,
        )
    # Then the run, the model's config and every answer say INT8, and it runs the INT8 model
    assert mlflow.get_run(run.info.run_id).data.tags[PRECISION_TAG] == "int8"
    pyfunc = mlflow.pyfunc.load_model(logged.model_uri)
    assert pyfunc.model_config["featurize.engine"] == "openvino-int8"
    assert pyfunc.model_config[PRECISION_KEY] == "int8"
    image = base64.b64encode((tmp_path / "raw" / posts[0].image).read_bytes()).decode()
    answer = pyfunc.predict(pd.DataFrame({"image": [image]}))[0]
    assert (answer["engine"], answer["precision"]) == ("openvino-int8", "int8")
    loaded = load_logged(logged.model_uri)
    assert loaded.model.engine == "openvino-int8" and loaded.int8_model is not None
    pixels = np.random.default_rng(2).uniform(0, 255, (4, IMAGE_SIZE, IMAGE_SIZE, 3))
    on_fp32 = on_engine(HashtagPredictor.from_dir(tiny_models_dir), "openvino")
    got = loaded.probabilities(pixels.astype("float32"))
    want = on_fp32.probabilities(pixels.astype("float32"))
    assert got.shape == want.shape and not np.allclose(got, want, atol=1e-7)
    assert np.max(np.abs(got - want)) < 0.1

    # When batch predict or the web page load it with an FP32 engine configured
    info_path = tiny_models_dir / "model_info.json"
    info_path.write_text(json.dumps({**json.loads(info_path.read_text()), "precision": "int8"}))
    local = model_ref.load(str(tiny_models_dir), "openvino")
    # Then it runs on its INT8 model all the same: its head learned INT8 vectors
    assert local.model.engine == "openvino-int8"


def test_a_model_without_an_int8_model_serves_fp32_with_a_warning(tiny_models_dir, caplog):
    from taglens.features.engines import on_engine, precision_of
    from taglens.model.predictor import HashtagPredictor

    predictor = HashtagPredictor.from_dir(tiny_models_dir)
    assert predictor.int8_model is None
    with caplog.at_level(logging.WARNING, logger="taglens.features.engines"):
        served = on_engine(predictor, "openvino-int8")
    assert served.model.engine == "openvino" and precision_of(served.model.engine) == "fp32"
    assert "has no INT8 model" in caplog.text and "FP32" in caplog.text
