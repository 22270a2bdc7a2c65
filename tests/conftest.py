"""Test-wide set-up: no network, quiet tools, a throwaway MLflow store, shared fixtures."""

from __future__ import annotations

import os
import socket
from pathlib import Path

# Prefect configures logging when prefect.main is first imported, and that closes every logging
# handler that exists then. absl's handler (TensorFlow's) closes its stream on close unless it is
# the current sys.stderr, so a first import of prefect inside a test that captures output (capsys)
# after TensorFlow was loaded closed pytest's own capture file and ended the session. Importing it
# here, before TensorFlow and any capture, makes that harmless.
import prefect.main  # noqa: F401
import pytest

from taglens.params import Params
from taglens.toolenv import TOOL_ENV
from tests.helpers.params import tiny_params as merged_tiny_params
from tests.helpers.paths import FLOWERS, ROOT, WEIGHTS

CHECKOUT_RUNS = ROOT / "mlruns"

# The tools' quiet environment, forced (not only defaulted): a test runs the same whatever the
# shell that started pytest sets.
os.environ.update(TOOL_ENV)

_real_connect = socket.socket.connect


def _loopback_only(self, address):
    """Refuse any connection that leaves this machine: tests must never touch the network."""
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        if host not in ("localhost", "::1") and not str(host).startswith("127."):
            raise ConnectionRefusedError(f"tests may not reach the network (tried {host})")
    return _real_connect(self, address)


socket.socket.connect = _loopback_only


def _checkout_runs() -> set[str]:
    """What the checkout's own MLflow folder holds: each experiment's runs and logged models."""
    found = [*CHECKOUT_RUNS.glob("*/*"), *CHECKOUT_RUNS.glob("*/models/*")]
    return {str(path.relative_to(CHECKOUT_RUNS)) for path in found}


@pytest.fixture(scope="session", autouse=True)
def _session_mlflow_store(tmp_path_factory):
    """Every test logs to a session-wide throwaway store unless it asks for a fresh one.

    An experiment created without an artifact location keeps its artifacts in `./mlruns` of the
    directory it was created from: the checkout's own, where a user's runs live. The session
    fails if anything appeared there.
    """
    store = tmp_path_factory.mktemp("mlruns")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    before = _checkout_runs()
    yield store
    leaked = sorted(_checkout_runs() - before)
    assert not leaked, f"tests wrote into the checkout's {CHECKOUT_RUNS}: {leaked[:10]}"


@pytest.fixture(scope="session", autouse=True)
def _session_engine_cache(tmp_path_factory):
    """Converted models (featurize.engine) go to a session-wide throwaway cache, never the
    user's: a test that expects a conversion must not find one a user's run left behind."""
    os.environ["TAGLENS_CACHE_DIR"] = str(tmp_path_factory.mktemp("engine-cache"))


@pytest.fixture
def fresh_mlflow(tmp_path, monkeypatch) -> Path:
    """A brand-new, empty MLflow store for this test (creating one costs a few seconds)."""
    store = tmp_path / "mlruns"
    store.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    import mlflow

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    # configure_tracking() pins the registry URI too: reset it, or aliases leak across tests.
    mlflow.set_registry_uri(os.environ["MLFLOW_TRACKING_URI"])
    yield store


@pytest.fixture
def tiny_params() -> Params:
    """The tiny test configuration (32 px, random weights, few epochs: tests/helpers/params.py)."""
    return merged_tiny_params()


@pytest.fixture
def flowers_dir() -> Path:
    """The shared real-photo set, or skip: a fresh clone has no ../shared."""
    if not FLOWERS.is_dir():
        pytest.skip(f"real photos not available at {FLOWERS}")
    return FLOWERS


@pytest.fixture
def mobilenet_weights() -> Path:
    """Pretrained MobileNet 1.0 weights from ../shared, or skip."""
    path = WEIGHTS / "mobilenet_v1_1.0_imagenet_no_top.weights.h5"
    if not path.is_file():
        pytest.skip(f"pretrained weights not available at {path}")
    return path


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """A copy of the repository's source (no run state: see tests/helpers/repocopy.py)."""
    from tests.helpers.repocopy import copy_source_tree

    return copy_source_tree(tmp_path / "repo")


@pytest.fixture
def tiny_models_dir(tmp_path, tiny_params) -> Path:
    """A models/ dir like the train stage writes: a tiny random conv net (32 px, preprocessing
    inside), model_info.json and hashtags.json for the ten base.classes (helpers/tinymodels.py)."""
    from tests.helpers.tinymodels import build_tiny_models

    return build_tiny_models(tmp_path / "models", tiny_params)


@pytest.fixture
def tiny_champion(fresh_mlflow, tiny_models_dir, tiny_params):
    """`tiny_models_dir` logged as a taglens pyfunc and registered as `taglens`@champion.

    Returns (model_name, version, uri) with uri `models:/taglens@champion`.
    """
    import json

    import mlflow

    from taglens.lifecycle.gate import Evaluation
    from taglens.lifecycle.promotion import register_model
    from taglens.lifecycle.registry import Registry
    from taglens.model.pyfunc import log_taglens_model
    from taglens.tracking import configure_tracking

    configure_tracking(tiny_params.base.experiment, store=fresh_mlflow)
    name = tiny_params.register.model_name
    with mlflow.start_run() as run:
        logged = log_taglens_model(
            tiny_models_dir,
            ingest=tiny_params.ingest,
            max_upload_mb=tiny_params.serve.max_upload_mb,
        )
    info_path = tiny_models_dir / "model_info.json"
    info = {**json.loads(info_path.read_text()), "run_id": run.info.run_id}
    info_path.write_text(json.dumps(info))
    # the first model: the gate needs only its score and the test split it was scored on
    evaluation = Evaluation({"accuracy": 0.5, "n_test": 30, "test_fingerprint": 1})
    result = register_model(
        Registry(name, fresh_mlflow / "promotions.jsonl"),
        logged.model_uri,
        run.info.run_id,
        evaluation,
        tiny_params.register,
    )
    return name, result["version"], f"models:/{name}@champion"
