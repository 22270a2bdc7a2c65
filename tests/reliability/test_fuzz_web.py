"""Schemathesis against the web app's own OpenAPI schema: no generated request may get a 5xx."""

from __future__ import annotations

import io
import os

import pytest
import schemathesis
from fastapi.testclient import TestClient
from fuzz_targets import CORPUS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

pytestmark = pytest.mark.slow

MAX_EXAMPLES = int(os.environ.get("TAGLENS_SCHEMATHESIS_EXAMPLES", "40"))
LIMIT = 2_000_000
SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture
def app(tiny_models_dir, tiny_params):
    """The real app around a tiny real model."""
    from taglens.model.predictor import HashtagPredictor
    from taglens.serving.web import create_app

    predictor = HashtagPredictor.from_dir(tiny_models_dir)
    return create_app(
        predictor,
        {"name": "taglens", "version": "1"},
        LIMIT,
        ingest=tiny_params.ingest,
        serve=tiny_params.serve,
    )


def test_schema_generated_requests_never_get_a_server_error(app):
    """Given every operation in the OpenAPI schema, generated requests are answered below 500."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/predict", "/health"}
    statuses: dict[str, set[int]] = {}
    for operation in operations:

        @SETTINGS
        @given(case=operation.as_strategy())
        def check(case):
            response = case.call()
            statuses.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)
            assert response.status_code < 500, (
                f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}"
            )

        check()
    assert statuses["GET /health"] == {200}
    # Random bytes in the 'file' field are refused as a client error, never a crash.
    assert statuses["POST /predict"] and max(statuses["POST /predict"]) < 500


def _image(fmt: str, mode: str, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color=0).save(buffer, fmt)
    return buffer.getvalue()


VALID = [
    _image("JPEG", "RGB", (48, 40)),
    _image("PNG", "RGBA", (40, 48)),
    _image("GIF", "P", (64, 64)),
    _image("WEBP", "RGB", (33, 90)),
]


@st.composite
def mutated_images(draw) -> bytes:
    """A valid image with a few bytes flipped, cut short or extended: the uploads that hurt."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(1, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=16))


def test_mutated_image_uploads_never_get_a_server_error(app, tiny_params):
    """Given valid photos with flipped or missing bytes, /predict answers 200 or a clear 4xx."""
    client = TestClient(app)
    seen: dict[int, int] = {}

    @SETTINGS
    @given(data=mutated_images(), name=st.sampled_from(["a.jpg", "b.png", "c", "ü.gif"]))
    def check(data, name):
        response = client.post("/predict", files={"file": (name, data)})
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, response.text[:300]
        if response.status_code == 200:
            assert set(response.json()["probabilities"]) == set(tiny_params.base.classes)
        else:
            assert response.json()["detail"]

    check()
    assert sum(seen.values()) >= min(MAX_EXAMPLES, 10)


@pytest.mark.parametrize("path", sorted((CORPUS / "upload_image").glob("*")), ids=lambda p: p.name)
def test_past_crashing_uploads_get_a_client_error(app, path):
    """Given an upload that once crashed the checks, the app answers it with a 4xx and a reason."""
    response = TestClient(app).post("/predict", files={"file": (path.name, path.read_bytes())})
    assert 400 <= response.status_code < 500, response.text[:300]
    assert response.json()["detail"]
