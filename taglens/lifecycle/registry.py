"""How a registered model lives in MLflow: versions, aliases, the tag scheme, the one-writer lock.

Every decision is written into the registry, where every machine reads it: the `champion` /
`challenger` alias, tags on the version, and one event of the promotion history, a
`history.<time>` tag on the version it concerns. `history()` and rollback read those tags; a copy
of each event is also appended to a local report (`reports/promotions.jsonl` by default), never
read back. How a decision is taken and committed is `taglens.lifecycle.promotion`.

Fail closed: only "no such alias / model" means there is no champion; any other registry error
stops with a RegistryError before anything is registered, tagged or moved.

The tag scheme: a version carries `metric.<name>` and `recall.<class>` (its evaluation),
`lineage.<key>` (where it came from, `lineage.run_id` first), and the decision:
`decision.alias`, `decision.reason`, `decision.score`, the paired test against the champion
(`decision.p_value`, `decision.difference`, `decision.ci_low`, ...), tagged first and `decision`
last, which commits it (`taglens.lifecycle.promotion` explains the order).

The lock: one registration or by-hand promotion at a time per registered model. Gate and alias
change run under it, and the champion is read again right before the alias is moved, so a
racing registration can neither lose the champion nor replace it with a worse model. Where the
lock lives follows where the registry lives, so every writer of one registry meets the same
lock:

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

import getpass
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from taglens.atomic import append_jsonl
from taglens.errors import TaglensError
from taglens.lifecycle.gate import (
    CHALLENGER,
    CHAMPION,
    PAIRED_KEYS,
    Decision,
    Evaluation,
    PairedTest,
)
from taglens.lineage import TAG_PREFIX
from taglens.tracking import redact_uri

logger = logging.getLogger(__name__)

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
                where = redact_uri(mlflow.get_registry_uri())
                raise RegistryError(
                    f"cannot take the registry lock {name} on {where}: "
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


METRIC_TAG = "metric."
RECALL_TAG = "recall."
LINEAGE_TAG = TAG_PREFIX  # the lineage record of the version's run, as its tags carry it
RUN_ID_TAG = LINEAGE_TAG + "run_id"


def now_iso() -> str:
    """Return the current UTC time, ISO 8601 to the second (`decision.time`, the history)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def candidate_tags(run_id: str, evaluation: Evaluation, lineage: dict[str, Any]) -> dict[str, Any]:
    """The tags of a new version: its train run, lineage, numeric metrics and per-class recall."""
    tags = {RUN_ID_TAG: run_id, **{LINEAGE_TAG + k: v for k, v in lineage.items()}}
    tags.update(
        {
            METRIC_TAG + k: v
            for k, v in evaluation.metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
    )
    tags.update({RECALL_TAG + k: v for k, v in evaluation.recall.items()})
    return tags


def evaluation_of(tags: dict[str, str]) -> Evaluation:
    """Rebuild a version's Evaluation from its tags."""
    metrics = {
        k.removeprefix(METRIC_TAG): float(v) for k, v in tags.items() if k.startswith(METRIC_TAG)
    }
    recall = {
        k.removeprefix(RECALL_TAG): float(v) for k, v in tags.items() if k.startswith(RECALL_TAG)
    }
    return Evaluation(metrics, recall)


def decision_tags(decision: Decision, metric: str, time: str) -> dict[str, Any]:
    """The details of a decision, tagged before the committing `decision` tag."""
    champion_score = decision.champion_score
    return {
        "decision.alias": decision.alias,
        "decision.reason": decision.reason,
        "decision.metric": metric,
        "decision.score": decision.score,
        "decision.compared_with": decision.compared_with or "none",
        "decision.champion_score": "none" if champion_score is None else champion_score,
        "decision.champion_rescored": decision.champion_rescored,
        "decision.test_fingerprint": _text(decision.test_fingerprint),
        **{f"decision.{key}": _text_of(value) for key, value in decision.evidence().items()},
        "decision.time": time,
    }


def pending_decision(tags: dict[str, str]) -> Decision | None:
    """A decision tagged before a crash but not yet committed (no `decision` tag), or None."""
    if "decision.alias" not in tags:
        return None
    return Decision(
        alias=tags["decision.alias"],
        reason=tags["decision.reason"],
        score=float(tags["decision.score"]),
        champion_score=_number(tags.get("decision.champion_score")),
        compared_with=_none(tags.get("decision.compared_with")),
        champion_rescored=tags.get("decision.champion_rescored") == "True",
        test_fingerprint=_fingerprint(tags.get("decision.test_fingerprint")),
        paired=PairedTest.from_record(_paired_record(tags)),
    )


def decision_record(tags: dict[str, str]) -> dict[str, Any]:
    """A version's committed decision as register.json states it (without name and version)."""
    return {
        "run_id": tags.get(RUN_ID_TAG),
        "decision": tags.get("decision"),
        "reason": tags.get("decision.reason"),
        "metric": tags.get("decision.metric"),
        "score": _number(tags.get("decision.score")),
        "compared_with": _none(tags.get("decision.compared_with")),
        "champion_score": _number(tags.get("decision.champion_score")),
        "champion_rescored": tags.get("decision.champion_rescored") == "True",
        "test_fingerprint": _fingerprint(tags.get("decision.test_fingerprint")),
        **_paired_record(tags),
    }


def _paired_record(tags: dict[str, str]) -> dict[str, float | int | None]:
    """The paired test's numbers from `decision.*` tags (None where absent or "none")."""
    record = {key: _number(tags.get(f"decision.{key}")) for key in PAIRED_KEYS}
    counts = ("n_paired", "challenger_only", "champion_only")
    return {key: int(v) if key in counts and v is not None else v for key, v in record.items()}


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "none") else None
    except ValueError:
        return None


def _fingerprint(value: str | None) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _text(fingerprint: int | None) -> str:
    return "none" if fingerprint is None else str(int(fingerprint))


def _text_of(value: float | int | None) -> str:
    return "none" if value is None else repr(value)


def _none(value: str | None) -> str | None:
    return None if value in (None, "none") else value


HISTORY_TAG = "history."
# A model-version tag value holds at most 5,000 characters in MLflow's SQL stores.
MAX_EVENT_CHARS = 4_500


def _alias_missing(exc: Exception) -> bool:
    """Whether an MLflow error says "no such model or alias" (the only error meaning "none")."""
    code = getattr(exc, "error_code", "")
    message = str(getattr(exc, "message", exc)).lower()
    return code == "RESOURCE_DOES_NOT_EXIST" or (
        code == "INVALID_PARAMETER_VALUE" and "alias" in message and "not found" in message
    )


def _one_line(exc: Exception) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:300]


@dataclass
class Registry:
    """One registered model, its aliases and its promotion history."""

    name: str
    history_path: Path

    def __post_init__(self) -> None:
        import mlflow

        self.client = mlflow.MlflowClient()

    def lock(self) -> AbstractContextManager[None]:
        """The registry lock of this model (one registration or promotion at a time)."""
        import mlflow

        return registry_lock(mlflow.get_registry_uri() or "", self.name, self.history_path)

    # ----------------------------------------------------------------- reading
    def versions(self) -> list[Any]:
        """Return all versions, oldest first.

        Raises:
            RegistryError: the registry cannot be read (nothing was registered or promoted).
        """
        try:
            found = self.client.search_model_versions(f"name = '{self.name}'")
        except Exception as exc:  # noqa: BLE001 - an unreadable registry stops register
            raise self._unreadable(f"the versions of {self.name}", exc) from None
        return sorted(found, key=lambda v: int(v.version))

    @staticmethod
    def _unreadable(what: str, exc: Exception) -> RegistryError:
        import mlflow

        where = redact_uri(mlflow.get_registry_uri())
        return RegistryError(
            f"cannot read {what} from the MLflow registry at {where} "
            f"({type(exc).__name__}: {_one_line(exc)}); nothing was registered or promoted: fix "
            "the store or server and run register again"
        )

    def version(self, version: str | int) -> Any:
        """Return one version (RegistryError if it does not exist)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(self.name, str(version))
        except MlflowException:
            raise RegistryError(
                f"{self.name} has no version {version}; see `python -m stages.register list`"
            ) from None

    def alias(self, alias: str) -> Any | None:
        """Return the version holding `alias`, or None when the model or the alias does not exist.

        Raises:
            RegistryError: any other error (store unreachable, locked, corrupt): an unreadable
                champion is never taken for a missing one, so nothing is promoted on it.
        """
        try:
            return self.client.get_model_version_by_alias(self.name, alias)
        except Exception as exc:  # noqa: BLE001 - only "not found" is an answer; the rest stops
            if _alias_missing(exc):
                return None
            raise self._unreadable(f"{self.name}@{alias}", exc) from None

    def find_run(self, run_id: str) -> Any | None:
        """Return the version registered from `run_id`, or None."""
        for version in self.versions():
            if version.tags.get(RUN_ID_TAG) == run_id or version.run_id == run_id:
                return version
        return None

    def history(self) -> list[dict[str, Any]]:
        """Return every recorded event, oldest first, from the versions' `history.*` tags."""
        events = []
        for version in self.versions():
            for key, value in version.tags.items():
                if key.startswith(HISTORY_TAG):
                    events.append((key.removeprefix(HISTORY_TAG), json.loads(value)))
        return [row for _, row in sorted(events, key=lambda item: item[0])]

    # ----------------------------------------------------------------- writing
    def record(self, event: str, version: Any, reason: str, **extra: Any) -> dict[str, Any]:
        """Add one event to the promotion history (with the champion after it) and return it.

        The event is a `history.<ns since epoch>.<event>` tag on the version, so its key sorts in
        time; callers hold the registry lock, so events of one model never interleave.
        """
        champion = self.alias(CHAMPION)
        row = {
            "time": now_iso(),
            "event": event,
            "model": self.name,
            "version": str(version.version),
            "run_id": version.tags.get(RUN_ID_TAG) or version.run_id,
            "champion": str(champion.version) if champion else None,
            "reason": reason,
            "user": getpass.getuser(),
            **extra,
        }
        text = json.dumps(row, sort_keys=True)
        if len(text) > MAX_EVENT_CHARS:
            keep = max(0, len(reason) - (len(text) - MAX_EVENT_CHARS) - 3)
            row["reason"] = reason[:keep] + "..."
            text = json.dumps(row, sort_keys=True)
        key = f"{HISTORY_TAG}{time.time_ns():020d}.{event}"
        self.client.set_model_version_tag(self.name, str(version.version), key, text)
        append_jsonl(self.history_path, row)  # the local report; never read back
        return row

    def tag(self, version: Any, tags: dict[str, Any]) -> None:
        """Set tags on a version (values as strings)."""
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, str(version.version), key, str(value))

    def create(
        self, model_uri: str, run_id: str, evaluation: Evaluation, lineage: dict[str, Any]
    ) -> Any:
        """Register the run's model as a new version tagged with its evaluation and lineage.

        Raises:
            RegistryError: the registered model cannot be read (nothing is registered).
        """
        import mlflow

        try:
            self.client.get_registered_model(self.name)
        except Exception as exc:  # noqa: BLE001 - absent: create it; any other error stops
            if not _alias_missing(exc):
                raise RegistryError(
                    f"cannot read registered model {self.name} ({_one_line(exc)}): nothing was "
                    "registered; fix the MLflow store or server and run register again"
                ) from None
            self.client.create_registered_model(self.name, description="taglens hashtag model")
        version = mlflow.register_model(model_uri, self.name)
        tags = candidate_tags(run_id, evaluation, lineage)
        self.tag(version, tags)
        logger.info("registered %s version %s from run %s", self.name, str(version.version), run_id)
        return self.version(version.version)

    def result(self, version: Any, *, created: bool) -> dict[str, Any]:
        """A version's recorded decision, with the champion of now (register.json's content)."""
        champion = self.alias(CHAMPION)
        return {
            "model_name": self.name,
            "version": str(version.version),
            "created": created,
            **decision_record(version.tags),
            "champion": str(champion.version) if champion else None,
        }

    def crown(self, target: Any) -> None:
        """Give `target` the champion alias; a version is never champion and challenger at once."""
        self.client.set_registered_model_alias(self.name, CHAMPION, target.version)
        challenger = self.alias(CHALLENGER)
        if challenger is not None and str(challenger.version) == str(target.version):
            self.client.delete_registered_model_alias(self.name, CHALLENGER)
