"""The taglens pyfunc: logged, registered, loaded back by alias, served by MLflow's own tools."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest

from taglens.data.images import normalize_image
from taglens.model.predictor import HashtagPredictor
from taglens.model.pyfunc import example_image
from taglens.serving import model_ref
from taglens.serving.model_ref import ModelNotFoundError
from taglens.serving.pyfunc import ROOT_ENV
from tests.helpers.params import tiny_params
from tests.helpers.servers import free_port, wait_until_healthy

MLFLOW = Path(sys.executable).with_name("mlflow")


@pytest.fixture
def photos(tmp_path):
    """Two encoded test images of different sizes and formats, and the first as a file."""
    png = example_image(40)
    from PIL import Image

    rng = np.random.default_rng(3)
    buffer = __import__("io").BytesIO()
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path = tmp_path / "photo.png"
    path.write_bytes(png)
    return png, buffer.getvalue(), path


def _as_served(*images: bytes) -> list[bytes]:
    """Request images as the pyfunc feeds them to the model: normalized as ingest stores them."""
    # as the served model normalises them: with the ingest params logged with it
    return [normalize_image(data, tiny_params().ingest).jpeg for data in images]


def _same(results, expected, atol=1e-5):
    """Same classes and hashtags, probabilities within `atol` (engines differ in rounding)."""
    assert [r["top_class"] for r in results] == [e["top_class"] for e in expected]
    for result, want in zip(results, expected, strict=True):
        assert [h["tag"] for h in result["hashtags"]] == [h["tag"] for h in want["hashtags"]]
        assert np.allclose(
            list(result["probabilities"].values()), list(want["probabilities"].values()), atol=atol
        )


def test_registered_model_by_alias_matches_in_process_predictor(
    tiny_champion, tiny_models_dir, photos
):
    name, version, uri = tiny_champion
    png, jpeg, path = photos
    local = HashtagPredictor.from_dir(tiny_models_dir)
    expected = local.predict_bytes(_as_served(png, jpeg))

    pyfunc = mlflow.pyfunc.load_model(uri)
    frame = pd.DataFrame(
        {"image": [base64.b64encode(png).decode(), base64.b64encode(jpeg).decode()]}
    )
    served = pyfunc.predict(frame)
    champion = model_ref.load(model_ref.resolve(None, name).uri, "tensorflow")

    assert version == "1" and uri == "models:/taglens@champion"
    _same(served, expected)
    _same(champion.predict_bytes(_as_served(png, jpeg)), expected)
    first = expected[0]
    assert first["top_class"] in local.classes and len(first["probabilities"]) == 10
    assert abs(sum(first["probabilities"].values()) - 1) < 1e-5
    assert first["top_probability"] == max(first["probabilities"].values())
    assert len(first["hashtags"]) == 10  # hashtags.top_k of the tiny params
    assert set(first["hashtags"][0]) == {"tag", "score", "posts", "engagement", "why"}
    assert expected[0] != expected[1]
    top3 = pyfunc.predict(frame, params={"top_k": 3})
    assert [h["tag"] for h in top3[0]["hashtags"]] == [h["tag"] for h in first["hashtags"][:3]]


def test_pixels_and_bytes_agree_and_bad_input_is_named(tiny_models_dir, photos):
    from taglens.data.images import decode_and_resize

    png, jpeg, _ = photos
    predictor = HashtagPredictor.from_dir(tiny_models_dir)
    pixels = np.stack([decode_and_resize(data, 32).numpy() for data in (png, jpeg)])

    assert predictor.predict_pixels(pixels) == predictor.predict_bytes([png, jpeg])
    assert predictor.predict_bytes([]) == []
    with pytest.raises(ValueError, match="image 1 could not be decoded"):
        predictor.predict_bytes([png, b"not an image at all"])
    with pytest.raises(ValueError, match=r"shape \(N, 32, 32, 3\)"):
        predictor.predict_pixels(np.zeros((1, 64, 64, 3), np.float32))


def test_from_dir_names_missing_and_mismatched_files(tiny_models_dir):
    info = json.loads((tiny_models_dir / "model_info.json").read_text())
    (tiny_models_dir / "model_info.json").write_text(json.dumps({**info, "classes": ["a", "b"]}))
    with pytest.raises(ValueError, match="re-run the train stage"):
        HashtagPredictor.from_dir(tiny_models_dir)
    (tiny_models_dir / "hashtags.json").unlink()
    with pytest.raises(FileNotFoundError, match="lacks hashtags.json: run the train stage"):
        HashtagPredictor.from_dir(tiny_models_dir)


def test_missing_champion_says_what_to_do():
    # the session store has no model of this name (a fresh store would cost seconds to create)
    with pytest.raises(ModelNotFoundError, match=r"no champion yet .*run `dvc repro`"):
        model_ref.resolve(None, "no_such_model")
    with pytest.raises(ModelNotFoundError, match="python -m stages.register"):
        model_ref.load_logged("models:/no_such_model/7")


@pytest.mark.slow
def test_mlflow_cli_predict_and_serve_the_champion(
    tiny_champion, tiny_models_dir, photos, tmp_path
):
    _, _, uri = tiny_champion
    png, jpeg, path = photos
    expected = HashtagPredictor.from_dir(tiny_models_dir).predict_bytes(_as_served(png, jpeg))
    request = {
        "dataframe_split": {
            "columns": ["image"],
            "data": [[path.name], [base64.b64encode(jpeg).decode()]],
        }
    }
    # `mlflow models serve` starts `uvicorn` from PATH: the venv's bin must be on it; paths are
    # read only under the folder the serving side allows
    env = {
        **os.environ,
        "PATH": f"{MLFLOW.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        ROOT_ENV: str(path.parent),
    }
    (tmp_path / "request.json").write_text(json.dumps(request))

    subprocess.run(
        [
            MLFLOW,
            "models",
            "predict",
            "-m",
            uri,
            "-i",
            tmp_path / "request.json",
            "-t",
            "json",
            "-o",
            tmp_path / "out.json",
            "--env-manager",
            "local",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=180,
    )
    predicted = json.loads((tmp_path / "out.json").read_text())["predictions"]

    port = free_port()
    server = subprocess.Popen(
        [
            MLFLOW,
            "models",
            "serve",
            "-m",
            uri,
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until_healthy(
            server, f"http://127.0.0.1:{port}/ping", timeout=120, what="mlflow models serve"
        )
        answer = httpx.post(f"http://127.0.0.1:{port}/invocations", json=request, timeout=60)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)

    assert answer.status_code == 200
    for result in (predicted, answer.json()["predictions"]):
        assert [r["top_class"] for r in result] == [r["top_class"] for r in expected]
        assert [h["tag"] for h in result[1]["hashtags"]] == [
            h["tag"] for h in expected[1]["hashtags"]
        ]
        assert np.allclose(
            list(result[0]["probabilities"].values()),
            list(expected[0]["probabilities"].values()),
            atol=1e-6,
        )


def test_registered_model_holds_code_not_a_pickle(tiny_champion):
    """SECURITY.md: the pyfunc is logged as code (models from code), never cloudpickled."""
    import mlflow
    import yaml

    _, _, uri = tiny_champion
    local = Path(mlflow.artifacts.download_artifacts(uri))
    files = {path.name for path in local.rglob("*")}
    assert not {name for name in files if name.endswith((".pkl", ".pickle", ".cloudpickle"))}
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["model_code_path"].endswith("pyfunc_entry.py")
    assert "python_model" not in flavor
