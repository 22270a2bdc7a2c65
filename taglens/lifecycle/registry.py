"""The MLflow model registry side of promotion: versions, aliases, tags and the history.

Every decision is written three ways: the `champion` / `challenger` alias, tags on the version
(`decision`, `decision.reason`, `decision.compared_with`, `decision.score`,
`decision.champion_score`, `decision.test_fingerprint`, ...), and one line appended to the
promotion history (`reports/promotions.jsonl` by default), which is never rewritten.

Champion and challenger are compared on the same test images: when the champion's recorded
evaluation is on another test set, the caller's `rescore` scores it again on the current one.
Fail closed: only "no such alias / model" means there is no champion; any other registry error
stops with a RegistryError before anything is registered, tagged or moved.

Concurrency: gate + alias change run under an exclusive file lock beside the local SQLite store
(or beside the history file for a remote tracking server), and the champion is read again right
before the alias is moved, so a racing registration can neither lose the champion nor replace it
with a worse model.
"""

from __future__ import annotations

import getpass
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from taglens.atomic import append_jsonl, read_jsonl
from taglens.errors import TaglensError
from taglens.lifecycle.gate import CHALLENGER, CHAMPION, Decision, Evaluation, paired_decision
from taglens.lifecycle.lineage import TAG_PREFIX
from taglens.params import RegisterParams

logger = logging.getLogger(__name__)

METRIC_TAG = "metric."
RECALL_TAG = "recall."
LINEAGE_TAG = TAG_PREFIX  # the lineage record of the version's run, as its tags carry it
LOCK_TIMEOUT_S = 300.0


class RegistryError(TaglensError):
    """A registry operation that cannot be done as asked; the message says what to do."""


def now_iso() -> str:
    """Return the current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


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
    lock_path: Path | None = None

    def __post_init__(self) -> None:
        import mlflow

        self.client = mlflow.MlflowClient()
        if self.lock_path is None:
            uri = mlflow.get_registry_uri() or ""
            if uri.startswith("sqlite:///"):
                self.lock_path = Path(uri.removeprefix("sqlite:///")).parent / "registry.lock"
            else:
                self.lock_path = self.history_path.parent / ".registry.lock"

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
            if version.tags.get(LINEAGE_TAG + "run_id") == run_id or version.run_id == run_id:
                return version
        return None

    @staticmethod
    def evaluation(version: Any) -> Evaluation:
        """Rebuild a version's Evaluation from its tags."""
        tags = version.tags
        metrics = {
            k.removeprefix(METRIC_TAG): float(v)
            for k, v in tags.items()
            if k.startswith(METRIC_TAG)
        }
        recall = {
            k.removeprefix(RECALL_TAG): float(v)
            for k, v in tags.items()
            if k.startswith(RECALL_TAG)
        }
        return Evaluation(metrics, recall)

    def history(self) -> list[dict[str, Any]]:
        """Return every recorded event, oldest first."""
        return read_jsonl(self.history_path)

    # ----------------------------------------------------------------- writing
    def record(self, event: str, version: Any, reason: str, **extra: Any) -> dict[str, Any]:
        """Append one event to the promotion history (with the champion after it) and return it."""
        champion = self.alias(CHAMPION)
        row = {
            "time": now_iso(),
            "event": event,
            "model": self.name,
            "version": str(version.version),
            "run_id": version.tags.get(LINEAGE_TAG + "run_id") or version.run_id,
            "champion": str(champion.version) if champion else None,
            "reason": reason,
            "user": getpass.getuser(),
            **extra,
        }
        append_jsonl(self.history_path, row)
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
        rescore: Callable[[Any], Evaluation] | None = None,
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
        with file_lock(self.lock_path):
            existing = self.find_run(run_id)
            if existing is not None and "decision" in existing.tags:
                logger.info(
                    "run %s is already %s version %s: nothing to do",
                    run_id,
                    self.name,
                    str(existing.version),
                )
                return self._result(existing, created=False)
            decision = self._pending(existing) if existing is not None else None
            if decision is None:
                mine = str(existing.version) if existing is not None else None
                decision = self._gate(evaluation, params, rescore, mine)
                if hold and decision.promoted:
                    reason = f"{hold} (the gate said: {decision.reason})"
                    decision = replace(decision, alias=CHALLENGER, reason=reason)
            version = existing or self._create(model_uri, run_id, evaluation, lineage or {})
            self._apply(version, decision, params)
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
        tags = {LINEAGE_TAG + "run_id": run_id, **{LINEAGE_TAG + k: v for k, v in lineage.items()}}
        tags.update(
            {
                METRIC_TAG + k: v
                for k, v in evaluation.metrics.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
        )
        tags.update({RECALL_TAG + k: v for k, v in evaluation.recall.items()})
        self.tag(version, tags)
        logger.info("registered %s version %s from run %s", self.name, str(version.version), run_id)
        return self.version(version.version)

    def _gate(
        self,
        evaluation: Evaluation,
        params: RegisterParams,
        rescore: Callable[[Any], Evaluation] | None,
        mine: str | None,
    ) -> Decision:
        for _ in range(3):
            champion = self.alias(CHAMPION)
            if champion is not None and str(champion.version) == mine:
                champion = None
            decision = self._paired(evaluation, champion, params, rescore)
            # Re-check: if the champion moved while we decided (a writer outside this lock, e.g.
            # on another machine), decide again against the new one before moving the alias.
            now = self.alias(CHAMPION)
            if (now and str(now.version)) == (champion and str(champion.version)):
                break
        return replace(decision, compared_with=str(champion.version) if champion else None)

    def _paired(
        self,
        evaluation: Evaluation,
        champion: Any | None,
        params: RegisterParams,
        rescore: Callable[[Any], Evaluation] | None,
    ) -> Decision:
        """Decide on scores of both models on the same test images (re-scoring the champion)."""
        if champion is None:
            return paired_decision(evaluation, None, None, params)
        again = None if rescore is None else (lambda: rescore(champion))
        return paired_decision(
            evaluation, (str(champion.version), self.evaluation(champion)), again, params
        )

    @staticmethod
    def _pending(version: Any) -> Decision | None:
        """A decision taken before a crash but not yet committed (no `decision` tag)."""
        tags = version.tags
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
        )

    def _apply(self, version: Any, decision: Decision, params: RegisterParams) -> None:
        """Record and carry out a decision in an order a crash can resume from.

        The decision's details are tagged first; the `decision` tag, written last, commits it. A
        re-run finding details without `decision` replays them instead of deciding again (the
        champion may already have moved to this very version).
        """
        compared = decision.compared_with
        champion_score = decision.champion_score
        self.tag(
            version,
            {
                "decision.alias": decision.alias,
                "decision.reason": decision.reason,
                "decision.metric": params.primary_metric,
                "decision.score": decision.score,
                "decision.compared_with": compared or "none",
                "decision.champion_score": "none" if champion_score is None else champion_score,
                "decision.champion_rescored": decision.champion_rescored,
                "decision.test_fingerprint": _text(decision.test_fingerprint),
                "decision.time": now_iso(),
            },
        )
        if decision.promoted:
            self.crown(version)
        else:
            self.client.set_registered_model_alias(self.name, CHALLENGER, version.version)
        last = (self.history() or [{}])[-1]
        if (last.get("event"), last.get("version")) != ("register", str(version.version)):
            self.record(
                "register",
                version,
                decision.reason,
                decision=decision.alias,
                compared_with=compared,
                score=decision.score,
                champion_score=champion_score,
                champion_rescored=decision.champion_rescored,
                test_fingerprint=decision.test_fingerprint,
                metric=params.primary_metric,
            )
        self.tag(version, {"decision": decision.alias})
        logger.info(
            "%s version %s -> %s: %s", self.name, version.version, decision.alias, decision.reason
        )

    def _result(self, version: Any, *, created: bool) -> dict[str, Any]:
        tags = version.tags
        champion = self.alias(CHAMPION)
        return {
            "model_name": self.name,
            "version": str(version.version),
            "created": created,
            "run_id": tags.get(LINEAGE_TAG + "run_id"),
            "decision": tags.get("decision"),
            "reason": tags.get("decision.reason"),
            "metric": tags.get("decision.metric"),
            "score": _number(tags.get("decision.score")),
            "compared_with": _none(tags.get("decision.compared_with")),
            "champion_score": _number(tags.get("decision.champion_score")),
            "champion_rescored": tags.get("decision.champion_rescored") == "True",
            "test_fingerprint": _fingerprint(tags.get("decision.test_fingerprint")),
            "champion": str(champion.version) if champion else None,
        }

    def crown(self, target: Any) -> None:
        """Give `target` the champion alias; a version is never champion and challenger at once."""
        self.client.set_registered_model_alias(self.name, CHAMPION, target.version)
        challenger = self.alias(CHALLENGER)
        if challenger is not None and str(challenger.version) == str(target.version):
            self.client.delete_registered_model_alias(self.name, CHALLENGER)


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


def _none(value: str | None) -> str | None:
    return None if value in (None, "none") else value
