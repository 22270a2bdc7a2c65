"""The registry lock: one registration or by-hand promotion at a time per registered model.

Where the lock lives follows where the registry lives, so every writer of one registry meets
the same lock:

- a local SQLite store (one machine): an OS file lock beside the database;
- `TAGLENS_LOCK_DB=postgresql://...` (a team whose MLflow store is PostgreSQL): a PostgreSQL
  advisory lock, held by one database session and released by the server when that session
  ends, so a killed registration never leaves it behind;
- any other tracking server (only its HTTP URL known): a lock taken through the MLflow server
  itself, by creating the registered model `<name>.lock`. Creating a registered model is an
  insert under a unique name in the server's store, so of two clients creating it at once
  exactly one succeeds (a tag or a model version would not do: setting a tag overwrites, and
  versions are numbered, never refused). Releasing deletes it. A holder killed without
  releasing leaves it: a waiter then fails after the time-out with the holder's host, pid and
  start time and the command that removes it (`taglens registry unlock`), never breaking it
  itself (two waiters breaking one stale lock could both take it).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from taglens.errors import TaglensError
from taglens.tracking import redact_uri

LOCK_TIMEOUT_S = 300.0
LOCK_DB_ENV = "TAGLENS_LOCK_DB"
LOCK_MODEL_SUFFIX = ".lock"
POLL_S = 0.5


class RegistryError(TaglensError):
    """A registry operation that cannot be done as asked; the message says what to do."""


def lock_path_for(registry_uri: str, history_path: Path) -> Path:
    """Beside a local SQLite store, else beside the history file (a local store of another kind)."""
    if registry_uri.startswith("sqlite:///"):
        return Path(registry_uri.removeprefix("sqlite:///")).parent / "registry.lock"
    return history_path.parent / ".registry.lock"


def is_remote(registry_uri: str) -> bool:
    """Whether the registry is a tracking server other machines may write too."""
    return registry_uri.lower().startswith(("http://", "https://", "databricks"))


def registry_lock(
    registry_uri: str,
    model_name: str,
    history_path: Path,
    timeout: float = LOCK_TIMEOUT_S,
    environ: dict[str, str] | None = None,
) -> AbstractContextManager[None]:
    """The lock that guards `model_name` in the registry at `registry_uri` (see the module doc)."""
    env = os.environ if environ is None else environ
    if env.get(LOCK_DB_ENV):
        return advisory_lock(env[LOCK_DB_ENV], model_name, timeout)
    if is_remote(registry_uri):
        return mlflow_lock(model_name, timeout)
    return file_lock(lock_path_for(registry_uri, history_path), timeout)


@contextmanager
def file_lock(path: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive lock on `path` (the `filelock` package's OS lock).

    Threads and processes exclude each other, and a lock left by a killed process is released
    with it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(path, timeout=timeout, thread_local=False):
            yield
    except Timeout:
        raise RegistryError(
            f"registry lock {path} held for over {timeout:.0f} s by another registration; wait "
            "for it to finish and run again"
        ) from None


def advisory_key(model_name: str) -> int:
    """The 64-bit advisory-lock key of a registered model (the same on every machine)."""
    digest = hashlib.sha256(f"taglens.registry:{model_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _psycopg_uri(uri: str) -> str:
    """A libpq URI from an SQLAlchemy-style one (`postgresql+psycopg://` as MLflow takes it)."""
    scheme, rest = uri.split("://", 1)
    return f"{scheme.split('+', 1)[0]}://{rest}"


@contextmanager
def advisory_lock(uri: str, model_name: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold PostgreSQL's session advisory lock for `model_name` in the database at `uri`.

    Raises:
        RegistryError: the database cannot be reached, or another session held the lock for
            longer than `timeout` seconds.
    """
    try:
        import psycopg
    except ImportError:
        raise RegistryError(
            f"{LOCK_DB_ENV} is set but the PostgreSQL driver is missing: pip install -e '.[team]'"
        ) from None
    where = redact_uri(uri)
    try:
        connection = psycopg.connect(_psycopg_uri(uri), autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise RegistryError(
            f"cannot reach the lock database {where} ({LOCK_DB_ENV}): "
            f"{str(exc).strip().splitlines()[0]}; nothing was registered or promoted"
        ) from None
    key = advisory_key(model_name)
    with connection:
        deadline = time.monotonic() + timeout
        while not connection.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
            if time.monotonic() > deadline:
                raise RegistryError(
                    f"registry lock of {model_name} (advisory lock {key} in {where}) held for "
                    f"over {timeout:.0f} s by another registration; wait for it and run again"
                )
            time.sleep(POLL_S)
        try:
            yield
        finally:
            connection.execute("SELECT pg_advisory_unlock(%s)", (key,))


def lock_model_name(model_name: str) -> str:
    """The registered model whose existence is the lock of `model_name`."""
    return model_name + LOCK_MODEL_SUFFIX


@contextmanager
def mlflow_lock(model_name: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the lock of `model_name` on the MLflow server (create `<name>.lock`, then delete it).

    Raises:
        RegistryError: another holder kept it for over `timeout` seconds (the message names the
            holder and how to remove a lock whose holder was killed), or the server failed.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    name = lock_model_name(model_name)
    holder = {
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create_registered_model(
                name, tags=holder, description=f"taglens registry lock of {model_name}"
            )
            break
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise RegistryError(
                    f"cannot take the registry lock {name} on {mlflow.get_registry_uri()}: "
                    f"{str(exc.message).splitlines()[0]}; nothing was registered or promoted"
                ) from None
        if time.monotonic() > deadline:
            raise RegistryError(
                f"registry lock {name} held for over {timeout:.0f} s by {_holder(client, name)}; "
                "wait for it to finish and run again, or, if that process is gone, remove the "
                f"lock with `taglens registry unlock` (deletes the registered model {name})"
            )
        time.sleep(POLL_S)
    try:
        yield
    finally:
        client.delete_registered_model(name)


def _holder(client, name: str) -> str:
    try:
        tags = client.get_registered_model(name).tags
    except Exception:  # noqa: BLE001 - released meanwhile: say so
        return "a holder that has just released it"
    return json.dumps(tags, sort_keys=True)


def unlock(model_name: str) -> bool:
    """Remove a left-behind MLflow lock of `model_name`; True if there was one."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient().delete_registered_model(lock_model_name(model_name))
    except MlflowException:
        return False
    return True
