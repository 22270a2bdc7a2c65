"""The MLflow model registry side of promotion: versions, aliases, tags and the history.

Every decision is written into the registry, where every machine reads it: the `champion` /
`challenger` alias, tags on the version (`taglens.lifecycle.registry_tags`), and one event of the
promotion history, a `history.<time>` tag on the version it concerns. `history()` and rollback
read those tags; a copy of each event is also appended to a local report
(`reports/promotions.jsonl` by default), never read back. How a decision is taken and committed
is `taglens.lifecycle.promotion`.

Fail closed: only "no such alias / model" means there is no champion; any other registry error
stops with a RegistryError before anything is registered, tagged or moved.

Concurrency: gate + alias change run under the registry lock (`registry_lock`: a file lock
beside a local SQLite store, a PostgreSQL advisory lock or a lock on the MLflow server for a
shared one), and the champion is read again right before the alias is moved, so a racing
registration can neither lose the champion nor replace it with a worse model.
"""

from __future__ import annotations

import getpass
import json
import logging
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from taglens.atomic import append_jsonl
from taglens.lifecycle.gate import CHALLENGER, CHAMPION, Evaluation
from taglens.lifecycle.promotion import Rescore, commit, decide
from taglens.lifecycle.registry_lock import RegistryError, registry_lock
from taglens.lifecycle.registry_tags import (
    RUN_ID_TAG,
    candidate_tags,
    decision_record,
    now_iso,
    pending_decision,
)
from taglens.params import RegisterParams

logger = logging.getLogger(__name__)

__all__ = ["Registry", "RegistryError"]

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

        return RegistryError(
            f"cannot read {what} from the MLflow registry at {mlflow.get_registry_uri()} "
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

    def register(
        self,
        model_uri: str,
        run_id: str,
        evaluation: Evaluation,
        params: RegisterParams,
        lineage: dict[str, Any] | None = None,
        *,
        rescore: Rescore | None = None,
        hold: str | None = None,
    ) -> dict[str, Any]:
        """Register a run's model (once) and pass it through the gate.

        The gate runs before the version is created, so a registry error while reading the
        champion (or re-scoring it) leaves the registry as it was. Re-running with the same run
        id returns the recorded decision without a new version.

        Args:
            model_uri: the logged model to register.
            run_id: the train run (one version per run).
            evaluation: the candidate's metrics and per-class recall on the current test split.
            params: the gate's settings.
            lineage: tags describing where the model came from.
            rescore: scores a champion version on the current test split; called when the
                champion's recorded evaluation is on another test set. Raises
                NotComparableError when the champion cannot be loaded or has other classes.
            hold: when set, a winning candidate stays challenger and this says why (for example
                a `dvc exp run`, which must never move the champion).

        Raises:
            RegistryError: the registry cannot be read or written (nothing is promoted).
        """
        with self.lock():
            existing = self.find_run(run_id)
            if existing is not None and "decision" in existing.tags:
                logger.info(
                    "run %s is already %s version %s: nothing to do",
                    run_id,
                    self.name,
                    str(existing.version),
                )
                return self._result(existing, created=False)
            decision = pending_decision(existing.tags) if existing is not None else None
            if decision is None:
                mine = str(existing.version) if existing is not None else None
                decision = decide(self, evaluation, params, rescore, mine)
                if hold and decision.promoted:
                    reason = f"{hold} (the gate said: {decision.reason})"
                    decision = replace(decision, alias=CHALLENGER, reason=reason)
            version = existing or self._create(model_uri, run_id, evaluation, lineage or {})
            commit(self, version, decision, params)
            return self._result(self.version(version.version), created=existing is None)

    def _create(
        self, model_uri: str, run_id: str, evaluation: Evaluation, lineage: dict[str, Any]
    ) -> Any:
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

    def _result(self, version: Any, *, created: bool) -> dict[str, Any]:
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
