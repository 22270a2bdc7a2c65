"""What a caller of `mlflow models serve` can make the served model do with its request values."""

from __future__ import annotations

import base64
import io
import os

import pandas as pd
import pytest
from PIL import Image
from test_predict_inbox_bombs import png_bomb

from taglens.serving.pyfunc import MAX_MB_ENV, MAX_ROWS_ENV, ROOT_ENV, InputPolicy
from taglens.tracking import configure_tracking
from tests.helpers.params import tiny_params

INGEST = tiny_params().ingest


def _jpeg(size=(48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buffer, "JPEG")
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def tree(tmp_path):
    """An allowed folder with a photo and a symlink out of it, and a secret file beside it."""
    allowed = tmp_path / "allowed"
    (allowed / "sub").mkdir(parents=True)
    (allowed / "sub" / "photo.jpg").write_bytes(_jpeg())
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(_jpeg((64, 64)))
    (allowed / "link.jpg").symlink_to(secret)
    (allowed / "big.jpg").write_bytes(_jpeg() + b"\0" * 2_000_000)
    return allowed, secret


def test_by_default_no_request_value_is_read_as_a_path(tree):
    # Given the policy a server gets with no opt-in, and files the process could read
    allowed, secret = tree
    policy = InputPolicy.from_env(INGEST, environ={})

    # When a caller names existing and missing files
    errors = []
    for value in (
        str(secret),
        str(allowed / "sub" / "photo.jpg"),
        "/etc/hostname",
        str(allowed / "nothing.jpg"),
    ):
        with pytest.raises(ValueError) as refused:
            policy.image_bytes(value, 0)
        errors.append(str(refused.value).replace(value[:40], "VALUE"))

    # Then none is read, and existing and missing files get the same answer (no probing)
    assert len(set(errors)) == 1, errors
    assert ROOT_ENV in errors[0]
    assert policy.image_bytes(_b64(b"raw"), 0) == b"raw"


def test_an_opted_in_root_serves_only_regular_files_inside_it(tree):
    allowed, secret = tree
    policy = InputPolicy.from_env(INGEST, environ={ROOT_ENV: str(allowed), MAX_MB_ENV: "1"})

    assert policy.image_bytes("sub/photo.jpg") == (allowed / "sub" / "photo.jpg").read_bytes()
    assert policy.image_bytes(str(allowed / "sub" / "photo.jpg"))[:2] == b"\xff\xd8"
    refusals = set()
    for hostile in (
        "../secret.jpg",
        str(secret),
        "link.jpg",
        "sub/../../secret.jpg",
        "sub/.",
        "missing.jpg",
        "big.jpg",
        "/dev/zero.",
    ):
        with pytest.raises(ValueError, match="is not a readable image file under") as refused:
            policy.image_bytes(hostile, 2)
        refusals.add(str(refused.value).split("' is not")[1])
    assert len(refusals) == 1  # outside, a symlink out, a folder, missing, too large: one answer


def test_sizes_and_rows_are_capped_before_any_decoding():
    policy = InputPolicy.from_env(INGEST, environ={MAX_MB_ENV: "0.5", MAX_ROWS_ENV: "3"})
    with pytest.raises(ValueError, match=r"image 1 is larger than 0.5 MB \(TAGLENS_PYFUNC_MAX_MB"):
        policy.images([_b64(_jpeg()), _b64(b"\0" * 600_000)])
    with pytest.raises(ValueError, match=r"image 0 is larger than 0.5 MB"):
        policy.images([b"\0" * 600_000])
    with pytest.raises(ValueError, match=r"4 images in one request; at most 3"):
        policy.images([_b64(_jpeg())] * 4)
    assert len(policy.images([_b64(_jpeg())] * 3)) == 3


def test_every_image_gets_the_upload_checks(tmp_path):
    # A 400 MP bomb of a few KB, a Targa image, a too-small image, and a good photo
    png_bomb(tmp_path / "bomb.png", 20_000, 20_000)
    tga = io.BytesIO()
    Image.new("RGB", (64, 64)).save(tga, "TGA")
    policy = InputPolicy.from_env(INGEST, environ={})
    hostile = [
        ((tmp_path / "bomb.png").read_bytes(), "too_large"),
        (tga.getvalue(), "not_image"),
        (_jpeg((20, 20)), "too_small"),
    ]
    for data, reason in hostile:
        with pytest.raises(ValueError, match=f"image 1 refused: {reason}"):
            policy.images([_b64(_jpeg()), _b64(data)])
    (normalized,) = policy.images([_b64(_jpeg())])
    assert Image.open(io.BytesIO(normalized)).format == "JPEG"


def test_the_logged_model_applies_its_ingest_params_and_the_server_settings(
    fresh_mlflow, tiny_models_dir, tiny_params, tree, monkeypatch
):
    import mlflow

    from taglens.model.pyfunc import log_taglens_model

    # Given a model logged with a stricter min_side than the tiny params, served without opt-in
    strict = tiny_params.ingest.model_copy(update={"min_side": 45})
    configure_tracking("pyfunc-inputs")  # the fresh store: an earlier test's experiment is gone
    with mlflow.start_run():
        info = log_taglens_model(tiny_models_dir, ingest=strict, max_upload_mb=3.5)
    monkeypatch.delenv(ROOT_ENV, raising=False)
    monkeypatch.delenv(MAX_MB_ENV, raising=False)
    model = mlflow.pyfunc.load_model(info.model_uri)
    allowed, _ = tree
    # and its byte cap is the serve.max_upload_mb logged with it (the web page's limit)
    assert model.unwrap_python_model().inputs.max_bytes == 3_500_000

    # Then its requests are checked with the logged params, and paths are refused
    ok = model.predict(pd.DataFrame({"image": [_b64(_jpeg((48, 48)))]}))
    assert len(ok) == 1 and ok[0]["top_class"]
    with pytest.raises(Exception, match="too_small"):
        model.predict(pd.DataFrame({"image": [_b64(_jpeg((48, 40)))]}))
    with pytest.raises(Exception, match=ROOT_ENV):
        model.predict(pd.DataFrame({"image": [str(allowed / "sub" / "photo.jpg")]}))

    # And a server that opts in reads files under its root only
    monkeypatch.setenv(ROOT_ENV, str(allowed))
    served = mlflow.pyfunc.load_model(info.model_uri)
    with pytest.raises(Exception, match="not a readable image file"):
        served.predict(pd.DataFrame({"image": ["link.jpg"]}))
    assert os.path.islink(allowed / "link.jpg")
