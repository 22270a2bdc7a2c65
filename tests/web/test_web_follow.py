"""Following @champion: a new version is loaded beside the old one and swapped in while serving."""

from __future__ import annotations

import logging
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from web_helpers import RecordingPredictor, VersionedPredictor, metric, metric_samples, photo_bytes

import taglens.serving.web.__main__ as web_main
from taglens.serving.model_ref import ModelRef, ResolvedModel
from taglens.serving.web import create_app
from taglens.serving.web.metrics import WebMetrics
from taglens.serving.web.model_slot import ModelSlot
from tests.helpers.params import tiny_params as make_params
from tests.helpers.servers import free_port

NAME = "taglens"

ON_TF = {"engine": "tensorflow", "precision": "fp32"}  # what a stand-in model runs on


class FakeAlias:
    """An alias whose version a test moves; some versions fail to load."""

    uri = f"models:/{NAME}@champion"

    def __init__(self, version: str = "1", broken: tuple[str, ...] = ()) -> None:
        self.version = version
        self.broken = set(broken)
        self.loads: list[str] = []
        self.unreachable = False

    def resolve(self) -> ResolvedModel:
        if self.unreachable:
            raise ConnectionError("registry at https://alice:s3cret@127.0.0.1:5000 does not answer")
        return ResolvedModel(f"models:/{NAME}/{self.version}", ModelRef(NAME, self.version))

    def load(self, resolved: ResolvedModel) -> VersionedPredictor:
        version = resolved.ref.version
        self.loads.append(version)
        if version in self.broken:
            raise OSError(f"model.keras of version {version} is truncated")
        return VersionedPredictor(f"v{version}")


def _app(params, source, follow_seconds=3600.0):
    serve = params.serve.model_copy(update={"follow_seconds": follow_seconds})
    return create_app(
        VersionedPredictor("v1"),
        ModelRef(NAME, "1"),
        200_000,
        ingest=params.ingest,
        serve=serve,
        follow=source,
    )


def _answer(client, jpeg) -> tuple[str, str]:
    """(model version, top class) of one prediction; the stand-ins' top class names them."""
    response = client.post("/predict", files={"file": ("p.jpg", jpeg, "image/jpeg")})
    assert response.status_code == 200, response.text
    return response.json()["model"]["version"], response.json()["top_class"]


def test_a_model_that_fails_to_load_keeps_the_old_one(tiny_params, jpeg, caplog):
    # given the page serving version 1 of a followed alias
    source = FakeAlias(broken=("2",))
    app = _app(tiny_params, source)
    follower = app.state.follower
    with TestClient(app) as client:
        assert client.portal.call(follower.check) is False  # nothing new
        # when the alias moves to a version that cannot be loaded
        source.version = "2"
        assert client.portal.call(follower.check) is False
        # then version 1 keeps answering, the failure is logged and counted, and not retried
        assert _answer(client, jpeg) == ("1", "v1")
        assert client.get("/health").json()["model"] == {"name": NAME, "version": "1"}
        assert client.portal.call(follower.check) is False
        assert source.loads == ["2"]
        assert (
            "version 2 could not be loaded (OSError: model.keras of version 2 is truncated); "
            "version 1 keeps serving" in caplog.text
        )
        samples = metric_samples(client.get("/metrics").text)
        assert metric(samples, "taglens_model_load_failures_total") == 1
        assert metric(samples, "taglens_model_swaps_total") == 0
        assert metric(samples, "taglens_model_info", name=NAME, version="1", **ON_TF) == 1
        # when the alias moves on to a version that loads
        old = app.state.slot.current
        source.version = "3"
        assert client.portal.call(follower.check) is True
        # then that version answers, computed by its own model, and is reported everywhere
        assert _answer(client, jpeg) == ("3", "v3")
        assert client.get("/health").json()["model"] == {"name": NAME, "version": "3"}
        samples = metric_samples(client.get("/metrics").text)
    assert source.loads == ["2", "3"]
    assert metric(samples, "taglens_model_swaps_total") == 1
    assert metric(samples, "taglens_model_info", name=NAME, version="3", **ON_TF) == 1
    assert metric(samples, "taglens_model_info", name=NAME, version="1", **ON_TF) is None
    # and the replaced model's batcher thread was stopped
    assert old.retired and old.batcher._executor._shutdown


def test_an_unreachable_registry_keeps_the_model_and_is_asked_again(tiny_params, jpeg, caplog):
    caplog.set_level(logging.INFO)
    source = FakeAlias()
    app = _app(tiny_params, source)
    with TestClient(app) as client:
        source.unreachable = True
        source.version = "2"
        assert client.portal.call(app.state.follower.check) is False
        assert _answer(client, jpeg) == ("1", "v1")
        assert (
            "cannot ask the registry where the alias points (ConnectionError: registry at "
            "https://***@127.0.0.1:5000 does not answer); still serving version 1" in caplog.text
        )
        assert "s3cret" not in caplog.text
        source.unreachable = False
        assert client.portal.call(app.state.follower.check) is True
        assert _answer(client, jpeg) == ("2", "v2")


def test_the_poll_loop_swaps_by_itself_every_follow_seconds(tiny_params, jpeg):
    source = FakeAlias()
    with TestClient(_app(tiny_params, source, follow_seconds=0.05)) as client:
        source.version = "2"
        deadline = time.monotonic() + 10
        while client.get("/health").json()["model"]["version"] != "2":
            assert time.monotonic() < deadline, "the page did not pick up version 2"
            time.sleep(0.02)
        assert _answer(client, jpeg) == ("2", "v2")
    assert source.loads == ["2"]


def test_a_held_model_is_closed_only_when_its_last_request_ends(tiny_params):
    # given a request holding version 1
    slot = ModelSlot(RecordingPredictor(), ModelRef(NAME, "1"), tiny_params.serve, WebMetrics())
    with slot.using() as held:
        # when version 2 is installed meanwhile
        replaced = slot.install(RecordingPredictor(), ModelRef(NAME, "2"))
        # then new requests get version 2 while the request keeps version 1, still running
        assert replaced is held and slot.current.ref.version == "2"
        assert not held.batcher._executor._shutdown
    # and version 1 stops once that request is done
    assert held.batcher._executor._shutdown
    slot.close()


@pytest.mark.parametrize(
    ("model_uri", "follow_seconds", "followed"),
    [
        (None, 30, f"models:/{NAME}@champion"),
        ("models:/taglens@challenger", 30, "models:/taglens@challenger"),
        ("models:/taglens/1", 30, None),
        ("runs:/abc/model", 30, None),
        (None, 0, None),
    ],
)
def test_only_an_alias_is_followed(model_uri, follow_seconds, followed, monkeypatch):
    params = make_params({"serve.follow_seconds": follow_seconds})
    monkeypatch.setattr(
        web_main, "load_model", lambda params, uri: (RecordingPredictor(), ModelRef(NAME, "1"))
    )
    app, label = web_main.build_app(params, model_uri)
    follower = app.state.follower
    assert label == ModelRef(NAME, "1")
    assert (follower.source.uri if follower else None) == followed
    if follower:
        assert follower.interval_s == follow_seconds
        assert follower.source.engine == params.featurize.engine


@pytest.mark.parametrize(("warm", "sizes"), [(True, [1, 2, 3, 4, 5, 6]), (False, [1])])
def test_the_model_runs_every_batch_size_before_it_serves(warm, sizes, monkeypatch):
    # given serve.warm_up on or off, and batches of at most 6 photos
    params = make_params({"serve.warm_up": warm, "serve.batch_max_size": 6})
    stub = RecordingPredictor()
    monkeypatch.setattr(web_main, "load_model", lambda params, uri: (stub, ModelRef(NAME, "1")))
    # when the app is built around the champion
    app, _ = web_main.build_app(params, None)
    # then the model ran once at every size the batcher can form (off: one photo) before the
    # app exists, and a new champion will be warmed up the same way before its swap
    assert stub.calls == sizes
    assert app.state.follower.source.warm_batches == len(sizes)


def test_a_new_version_is_warmed_up_before_it_is_installed(monkeypatch):
    from taglens.serving.web.model_slot import AliasSource

    stub = RecordingPredictor()
    monkeypatch.setattr("taglens.serving.model_ref.load", lambda uri, engine: stub)
    source = AliasSource(f"models:/{NAME}@champion", NAME, "tensorflow", warm_batches=4)
    loaded = source.load(ResolvedModel(f"models:/{NAME}/2", ModelRef(NAME, "2")))
    assert loaded is stub and stub.calls == [1, 2, 3, 4]


def test_a_local_models_dir_is_not_followed(tmp_path, monkeypatch):
    (tmp_path / "model.keras").write_bytes(b"")  # what makes a folder a models/ directory
    monkeypatch.setattr(
        web_main, "load_model", lambda params, uri: (RecordingPredictor(), ModelRef(uri, "x"))
    )
    app, _ = web_main.build_app(make_params(), str(tmp_path))
    assert app.state.follower is None


def _register_second_version(name: str, models_dir) -> str:
    """Log `models_dir` as a taglens pyfunc, register it under `name`, return its version."""
    import mlflow

    from taglens.model.pyfunc import log_taglens_model

    with mlflow.start_run():
        logged = log_taglens_model(models_dir, ingest=make_params().ingest, max_upload_mb=10)
    return str(mlflow.register_model(logged.model_uri, name).version)


@pytest.mark.slow
def test_the_page_follows_a_new_champion_under_a_steady_stream(tiny_champion, tmp_path):
    import mlflow
    import uvicorn

    from tests.helpers.tinymodels import build_tiny_models

    # given the page serving taglens@champion (version 1), polling it every 0.2 s
    name, first, _ = tiny_champion
    params = make_params({"serve.follow_seconds": 0.2})
    app, label = web_main.build_app(params, None)
    assert label == ModelRef(name, first) and app.state.follower is not None
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    base = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    answers: list[list[tuple[int, str | None]]] = [[], []]  # per client: (status, version)

    def client_loop(seen: list[tuple[int, str | None]], seed: int) -> None:
        photo = photo_bytes(64, seed=seed)
        with httpx.Client(base_url=base, timeout=60) as client:
            while not stop.is_set():
                response = client.post("/predict", files={"file": ("p.jpg", photo, "image/jpeg")})
                version = (
                    response.json()["model"]["version"] if response.status_code == 200 else None
                )
                seen.append((response.status_code, version))

    def versions() -> list[str | None]:
        return [version for seen in answers for _, version in seen]

    def wait_for(condition, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    clients = [threading.Thread(target=client_loop, args=(answers[i], i)) for i in range(2)]
    try:
        wait_for(lambda: server.started, "the server to start")
        for thread in clients:
            thread.start()
        wait_for(lambda: versions().count(first) >= 10, "answers from version 1")
        # when a second model is registered and the champion alias moved to it
        second_dir = build_tiny_models(tmp_path / "second", params, seed=1)
        second = _register_second_version(name, second_dir)
        mlflow.MlflowClient().set_registered_model_alias(name, "champion", second)
        # then the stream goes on and switches to it
        wait_for(lambda: versions().count(second) >= 10, "answers from version 2")
    finally:
        stop.set()
        for thread in clients:
            if thread.is_alive():
                thread.join(timeout=60)
    samples = metric_samples(httpx.get(f"{base}/metrics").text)
    server.should_exit = True
    serving.join(timeout=30)
    sent = [status for seen in answers for status, _ in seen]
    # every request was answered 200, version 1 first, then version 2 and never back
    assert second != first and set(sent) == {200}
    for seen in answers:
        order = [version for _, version in seen]
        switch = order.index(second) if second in order else len(order)
        assert set(order[:switch]) <= {first} and set(order[switch:]) == {second}, order
    # and /metrics counted every one, shows the new version and one swap
    predicted = {"route": "/predict", "method": "POST", "status": "200"}
    assert metric(samples, "taglens_http_requests_total", **predicted) == len(sent)
    assert metric(samples, "taglens_http_request_duration_seconds_count", route="/predict") == len(
        sent
    )
    assert metric(samples, "taglens_batch_size_sum") == len(sent)
    assert metric(samples, "taglens_model_info", name=name, version=second, **ON_TF) == 1
    assert metric(samples, "taglens_model_info", name=name, version=first, **ON_TF) is None
    assert metric(samples, "taglens_model_swaps_total") == 1
    assert metric(samples, "taglens_model_load_failures_total") == 0
