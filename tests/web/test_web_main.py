"""`python -m taglens.serving.web`: which model it loads, what it reports, and its errors."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi.testclient import TestClient

import taglens.serving.web.__main__ as web_main
from taglens.serving import model_ref
from taglens.serving.model_ref import ModelRef
from tests.helpers.params import tiny_params_path
from tests.helpers.servers import free_port, wait_until_healthy

PARAMS = tiny_params_path()


@pytest.fixture
def served(monkeypatch):
    """Capture what main() would serve instead of starting a server."""
    captured = {}

    def fake_run(app, host, port, **kwargs):
        captured.update(app=app, host=host, port=port, options=kwargs)

    monkeypatch.setattr("uvicorn.run", fake_run)
    return captured


@pytest.mark.slow
def test_main_serves_a_local_models_dir(tiny_models_dir, served):
    # when main is pointed at a models/ directory the train stage wrote
    code = web_main.main(
        ["--params", str(PARAMS), "--model-uri", str(tiny_models_dir), "--port", "8123"]
    )
    # then it binds serve.host with the given port and serves that model
    assert code == 0
    assert (served["host"], served["port"]) == ("127.0.0.1", 8123)
    with TestClient(served["app"]) as client:
        health = client.get("/health").json()
    local = {
        "name": str(tiny_models_dir.resolve()),
        "version": model_ref.local_version(tiny_models_dir),
    }
    assert health == {"status": "ok", "model": local, "max_upload_bytes": 10_000_000}
    # and uvicorn gets serve's concurrency limit and timeouts
    options = served["options"]
    assert (
        options["limit_concurrency"],
        options["timeout_keep_alive"],
        options["timeout_graceful_shutdown"],
    ) == (256, 5, 10)


def test_registered_uris_are_labelled_with_name_and_version(
    tiny_champion, tiny_params, monkeypatch
):
    name, version, _ = tiny_champion
    loaded = []
    monkeypatch.setattr("taglens.tracking.configure_tracking", lambda experiment: "uri")
    monkeypatch.setattr(
        model_ref,
        "load_logged",
        lambda uri: loaded.append(uri) or SimpleNamespace(uri=uri, info={}),
    )
    monkeypatch.setattr(model_ref, "on_engine", lambda predictor, engine: (predictor.uri, engine))
    engine = tiny_params.featurize.engine
    # the champion alias is pinned to the version it points at, which is what is reported
    assert web_main.load_model(tiny_params, None) == (
        (f"models:/{name}/{version}", engine),
        ModelRef(name, version),
    )
    assert web_main.load_model(tiny_params, "runs:/abc/model") == (
        ("runs:/abc/model", engine),
        ModelRef("runs:/abc/model", "unregistered"),
    )
    assert loaded == [f"models:/{name}/{version}", "runs:/abc/model"]


@pytest.mark.slow
def test_no_champion_is_a_clear_error(fresh_mlflow, served, capsys):
    code = web_main.main(["--params", str(PARAMS)])
    assert code == 2 and served == {}
    err = capsys.readouterr().err
    assert "error: no champion yet for registered model 'taglens'" in err
    assert "run `dvc repro`" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--params", "missing.yaml"], "error: params file not found: missing.yaml"),
        (["--params", str(PARAMS), "--port", "70000"], "error: --port must be 1..65535"),
    ],
)
def test_bad_arguments_are_one_line_errors(argv, message, served, capsys):
    assert web_main.main(argv) == 2 and served == {}
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "chosen"), [([], "text"), (["--log-format", "json"], "json")])
def test_the_log_format_comes_from_params_or_the_flag(argv, chosen, served, monkeypatch):
    # given a model that loads at once, and the log format switch recorded
    from web_helpers import RecordingPredictor

    formats = []
    monkeypatch.setattr(web_main, "use_log_format", formats.append)
    monkeypatch.setattr(
        web_main, "load_model", lambda params, uri: (RecordingPredictor(), ModelRef("m", "1"))
    )
    # when the page is started with or without --log-format
    assert web_main.main(["--params", str(PARAMS), "--model-uri", "models:/m/1", *argv]) == 0
    # then that format is used (serve.log_format by default), and uvicorn logs through it:
    # its records reach the root handler and its access log gives way to the app's own
    assert formats == [chosen]
    assert served["options"]["log_config"] is None
    assert served["options"]["access_log"] is False


def test_an_unknown_log_format_is_refused_by_the_parser(served, capsys):
    with pytest.raises(SystemExit):
        web_main.main(["--params", str(PARAMS), "--log-format", "xml"])
    assert "invalid choice: 'xml'" in capsys.readouterr().err


@pytest.mark.slow
def test_json_logs_from_the_real_server(tiny_models_dir, tmp_path):
    # given the command started for real with --log-format json
    root = Path(__file__).resolve().parents[2]  # the worktree: the server runs its code
    port = free_port()
    log_path = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "taglens.serving.web", "--params", str(PARAMS)]
    cmd += ["--model-uri", str(tiny_models_dir), "--port", str(port), "--log-format", "json"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    with log_path.open("w") as log:
        process = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        health = f"http://127.0.0.1:{port}/health"
        wait_until_healthy(process, health, timeout=180, log_path=log_path)
        # when a client asks with its request id
        answer = httpx.get(health, headers={"X-Request-ID": "probe-7"})
    finally:
        process.terminate()
        process.wait(timeout=30)
    # then the server's records, uvicorn's included, are JSON lines, and the access line has the id
    assert answer.headers["x-request-id"] == "probe-7"
    records = []
    for line in log_path.read_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    loggers = {record["logger"] for record in records}
    assert {"uvicorn.error", "taglens.serving.web.request_log"} <= loggers
    assert any(r["message"].startswith("Uvicorn running on") for r in records)
    [access] = [r for r in records if r["request_id"] == "probe-7"]
    assert (access["method"], access["path"], access["status"]) == ("GET", "/health", 200)


def test_the_heap_is_set_steady_before_the_model_loads(served, monkeypatch):
    # given a server whose model loading and malloc settings are recorded
    order = []
    monkeypatch.setattr(web_main, "steady_malloc", lambda: order.append("malloc") or True)

    def build_app(params, model_uri):
        order.append("model")
        return object(), ModelRef("taglens", "3")

    monkeypatch.setattr(web_main, "build_app", build_app)
    # when the command starts
    assert web_main.main(["--params", str(PARAMS), "--port", "8124"]) == 0
    # then glibc's arenas and mmap threshold are set before the model allocates anything
    assert order == ["malloc", "model"] and served["port"] == 8124


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_steady_malloc_is_accepted_by_glibc():
    # mallopt answers 1 for each setting it takes, 0 for one it refuses
    assert web_main.steady_malloc() is True
