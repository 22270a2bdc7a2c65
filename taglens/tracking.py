"""MLflow set-up: a SQLite store under mlruns/ unless MLFLOW_TRACKING_URI names a server.

Called by entry points (stage mains, flows, the web app), never at import time.
"""

from __future__ import annotations

import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from taglens import toolenv
from taglens.errors import TaglensError

logger = logging.getLogger(__name__)

DEFAULT_STORE = Path("mlruns")


# How long to wait for a tracking server to answer before giving up: MLflow's own client would
# retry a refused connection for about four minutes before failing.
PING_TIMEOUT_SECONDS = 5.0


class TrackingServerUnreachable(TaglensError):
    """MLFLOW_TRACKING_URI names a server that does not answer (a setting the user must fix)."""


def redact_uri(uri: str) -> str:
    """The URI without a password or token in its user-info part, for logs and messages."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.password and not parts.username:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


def check_server(uri: str, timeout: float = PING_TIMEOUT_SECONDS) -> None:
    """Make sure an http(s) tracking server answers at all, before any work depends on it.

    Any HTTP answer counts (a proxy may not serve MLflow's `/health`); only a refused, reset or
    timed-out connection fails. Other URI schemes (sqlite, file, databricks) are not checked.

    Raises:
        TrackingServerUnreachable: the server does not answer within `timeout` seconds.
    """
    if not uri.lower().startswith(("http://", "https://")):
        return
    parts = urllib.parse.urlsplit(uri)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    # No credentials are sent: a 401 answer is an answer, which is all this checks.
    health = urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", "")
    )
    try:
        with urllib.request.urlopen(health, timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return  # it answered
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingServerUnreachable(
            f"the MLflow tracking server at {redact_uri(uri)} does not answer ({reason}): start "
            "it, fix MLFLOW_TRACKING_URI, or unset it to log to the local mlruns/ store"
        ) from None


def local_tracking_uri(store: Path = DEFAULT_STORE) -> str:
    """The SQLite tracking URI of a local store directory."""
    return f"sqlite:///{store.resolve() / 'mlflow.db'}"


def configure_tracking(experiment: str, store: Path = DEFAULT_STORE) -> str:
    """Point MLflow at the project's store and select the experiment; return the tracking URI.

    `MLFLOW_TRACKING_URI` in the environment wins, so a team can use a shared tracking server.
    Artifacts of a local store go under `<store>/artifacts`; a server (`mlflow server
    --serve-artifacts`) stores them itself and clients send them as `mlflow-artifacts:/` URIs.

    Raises:
        TrackingServerUnreachable: a tracking server is named but does not answer; raised within
            seconds, before any stage spends time on work it could not log.
    """
    toolenv.apply()
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        store.mkdir(parents=True, exist_ok=True)
        uri = local_tracking_uri(store)
    check_server(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    _relative_source_name()
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=_artifact_location(uri))
    mlflow.set_experiment(experiment)
    logger.info("MLflow tracking at %s, experiment %s", redact_uri(uri), experiment)
    return uri


def _relative_source_name() -> None:
    """Let runs name their entry point without this machine's folders.

    MLflow tags every run `mlflow.source.name = sys.argv[0]`, which `python -m stages.train`
    makes an absolute path (`/home/me/taglens/stages/train.py`): meaningless, even misleading,
    on a teammate's machine reading the shared server. Inside the checkout (the working
    directory) it becomes relative (`stages/train.py`), elsewhere (a venv's script) its name.
    """
    if not sys.argv or not sys.argv[0] or not os.path.isabs(sys.argv[0]):
        return
    main = Path(sys.argv[0])
    try:
        sys.argv[0] = main.relative_to(Path.cwd()).as_posix()
    except ValueError:
        sys.argv[0] = main.name


def source_path(path: Path | str) -> str:
    """A path as a run records it: relative to the checkout (the cwd), else just its name."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.name


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store live beside its database; a server decides for itself."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    database = Path(uri[len(prefix) :])
    return (database.resolve().parent / "artifacts").as_uri()


# MLflow's input contexts for the three splits (the UI's dataset column shows them).
SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


def log_split_datasets(rows: dict[str, Any], *, digest: str, source: str) -> None:
    """Log each split's manifest rows as a dataset input of the active run.

    Args:
        rows: split name -> its manifest rows (a DataFrame: sha256, image, label, ...).
        digest: the data version: DVC's hash of data/clean (what `dvc checkout` restores), so
            two runs on the same data show the same dataset and a new data version a new one.
        source: where the rows come from (the manifest's path; recorded relative to the
            checkout, so the shared server names no folder of this machine).
    """
    import warnings

    import mlflow

    for name, frame in rows.items():
        with warnings.catch_warnings():
            # MLflow 3.17 registers its local-file source class twice and warns that a path
            # "can be interpreted in multiple ways" (both are the same LocalArtifactDatasetSource).
            warnings.filterwarnings("ignore", message=".*interpreted in multiple ways.*")
            dataset = mlflow.data.from_pandas(
                frame, source=source_path(source), name=name, digest=digest[:36], targets="label"
            )
        mlflow.log_input(dataset, context=SPLIT_CONTEXTS.get(name, name))
