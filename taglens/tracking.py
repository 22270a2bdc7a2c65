"""MLflow set-up: a SQLite store under mlruns/ unless MLFLOW_TRACKING_URI names a server.

Called by entry points (stage mains, flows, the web app), never at import time.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_STORE = Path("mlruns")
_QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "DO_NOT_TRACK": "1",
}


def local_tracking_uri(store: Path = DEFAULT_STORE) -> str:
    """The SQLite tracking URI of a local store directory."""
    return f"sqlite:///{store.resolve() / 'mlflow.db'}"


def configure_tracking(experiment: str, store: Path = DEFAULT_STORE) -> str:
    """Point MLflow at the project's store and select the experiment; return the tracking URI.

    `MLFLOW_TRACKING_URI` in the environment wins, so a team can use a shared tracking server.
    Artifacts of a local store go under `<store>/artifacts`.
    """
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        store.mkdir(parents=True, exist_ok=True)
        uri = local_tracking_uri(store)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        artifact_location = None
        if uri.startswith("sqlite:"):
            artifact_location = (store.resolve() / "artifacts").as_uri()
        mlflow.create_experiment(experiment, artifact_location=artifact_location)
    mlflow.set_experiment(experiment)
    logger.info("MLflow tracking at %s, experiment %s", uri, experiment)
    return uri


def git_commit() -> str | None:
    """The current git commit, or None outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None
