"""The MLflow model registry side of promotion: versions, aliases, tags and the history.

Every decision is written three ways: the `champion` / `challenger` alias, tags on the version
(`decision`, `decision.reason`, `decision.compared_with`, `decision.score`, ...), and one line
appended to the promotion history (`reports/promotions.jsonl` by default), which is never
rewritten. Concurrency: gate + alias change run under an exclusive file lock beside the local
SQLite store (or beside the history file for a remote tracking server), and the champion is
read again right before the alias is moved, so a racing registration can neither lose the
champion nor replace it with a worse model.
"""

from __future__ import annotations

import fcntl
import getpass
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from taglens.atomic import append_jsonl, read_jsonl
from taglens.gate import CHALLENGER, CHAMPION, Decision, Evaluation, decide
from taglens.params import RegisterParams

logger = logging.getLogger(__name__)

METRIC_TAG = "metric."
RECALL_TAG = "recall."
LINEAGE_TAG = "lineage."
LOCK_TIMEOUT_S = 300.0


class RegistryError(ValueError):
    """A registry operation that cannot be done as asked; the message says what to do."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextmanager
def file_lock(path: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive flock on `path` (per open file, so threads exclude each other too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(path, "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RegistryError(
                        f"registry lock {path} held for over {timeout:.0f} s; if "
                        "no registration is running, delete it"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
        """Return all versions, oldest first."""
        found = self.client.search_model_versions(f"name = '{self.name}'")
        return sorted(found, key=lambda v: int(v.version))

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
        """Return the version holding `alias`, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException:
            return None

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
    def _record(self, event: str, version: Any, reason: str, **extra: Any) -> dict[str, Any]:
        champion = self.alias(CHAMPION)
        row = {
            "time": _now(),
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

    def _tag(self, version: Any, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, str(version.version), key, str(value))

    def register(
        self,
        model_uri: str,
        run_id: str,
        evaluation: Evaluation,
        params: RegisterParams,
        lineage: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Register a run's model (once) and pass it through the gate.

        Re-running with the same run id returns the recorded decision without a new version.
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
            version = existing or self._create(model_uri, run_id, evaluation, lineage or {})
            decision = self._gate(version, evaluation, params)
            self._apply(version, decision, params)
            return self._result(self.version(version.version), created=existing is None)

    def _create(
        self, model_uri: str, run_id: str, evaluation: Evaluation, lineage: dict[str, Any]
    ) -> Any:
        import mlflow

        try:
            self.client.get_registered_model(self.name)
        except Exception:  # noqa: BLE001 - absent: create it (get raises a RestException)
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
        self._tag(version, tags)
        logger.info("registered %s version %s from run %s", self.name, str(version.version), run_id)
        return self.version(version.version)

    def _gate(self, version: Any, evaluation: Evaluation, params: RegisterParams) -> Decision:
        for _ in range(3):
            champion = self.alias(CHAMPION)
            if champion is not None and str(champion.version) == str(version.version):
                champion = None
            decision = decide(evaluation, self.evaluation(champion) if champion else None, params)
            # Re-check: if the champion moved while we decided (a writer outside this lock, e.g.
            # on another machine), decide again against the new one before moving the alias.
            now = self.alias(CHAMPION)
            if (now and str(now.version)) == (champion and str(champion.version)):
                break
        return replace(decision, compared_with=str(champion.version) if champion else None)

    def _apply(self, version: Any, decision: Decision, params: RegisterParams) -> None:
        compared = decision.compared_with
        self._tag(
            version,
            {
                "decision": decision.alias,
                "decision.reason": decision.reason,
                "decision.metric": params.primary_metric,
                "decision.score": decision.score,
                "decision.compared_with": compared or "none",
                "decision.champion_score": "none"
                if decision.champion_score is None
                else decision.champion_score,
                "decision.time": _now(),
            },
        )
        self.client.set_registered_model_alias(self.name, decision.alias, version.version)
        self._record(
            "register",
            version,
            decision.reason,
            decision=decision.alias,
            compared_with=compared,
            score=decision.score,
            champion_score=decision.champion_score,
            metric=params.primary_metric,
        )
        logger.info(
            "%s version %s -> %s: %s",
            self.name,
            str(version.version),
            decision.alias,
            decision.reason,
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
            "champion": str(champion.version) if champion else None,
        }

    # ----------------------------------------------------------- by hand
    def _crown(self, target: Any) -> None:
        """Give `target` the champion alias; a version is never champion and challenger at once."""
        self.client.set_registered_model_alias(self.name, CHAMPION, target.version)
        challenger = self.alias(CHALLENGER)
        if challenger is not None and str(challenger.version) == str(target.version):
            self.client.delete_registered_model_alias(self.name, CHALLENGER)

    def promote(self, version: str | int, reason: str) -> dict[str, Any]:
        """Make `version` champion by hand, recording who, when and why."""
        if not reason.strip():
            raise RegistryError("a reason is required: --reason 'why this version'")
        with file_lock(self.lock_path):
            target = self.version(version)
            previous = self.alias(CHAMPION)
            self._crown(target)
            self._tag(
                target,
                {
                    "decision": CHAMPION,
                    "decision.reason": f"manual: {reason}",
                    "decision.time": _now(),
                },
            )
            return self._record(
                "promote", target, reason, previous=str(previous.version) if previous else None
            )

    def champion_stack(self) -> list[str]:
        """Champions in order from the history: promotions push, rollbacks pop."""
        stack: list[str] = []
        for row in self.history():
            if row.get("event") == "promote" or (
                row.get("event") == "register" and row.get("decision") == CHAMPION
            ):
                stack.append(str(row["version"]))
            elif row.get("event") == "rollback" and stack:
                stack.pop()
        return stack

    def rollback(self, reason: str) -> dict[str, Any]:
        """Give the champion alias back to the previous champion (per the history)."""
        if not reason.strip():
            raise RegistryError("a reason is required: --reason 'what went wrong'")
        with file_lock(self.lock_path):
            current = self.alias(CHAMPION)
            stack = self.champion_stack()
            if current is None or len(stack) < 2 or stack[-1] != str(current.version):
                raise RegistryError(
                    f"nothing to roll back to: the history at {self.history_path} has no earlier "
                    "champion; use `promote VERSION --reason ...` instead"
                )
            target = self.version(stack[-2])
            self._crown(target)
            self._tag(current, {"rolled_back": reason, "decision.time": _now()})
            return self._record("rollback", target, reason, previous=str(current.version))

    def table(self, metric: str) -> list[dict[str, Any]]:
        """Return one row per version: score, aliases, decision, run, date."""
        versions = self.versions()
        aliases: dict[str, list[str]] = {}
        if versions:  # search results carry no aliases: read them from the registered model
            for alias, number in self.client.get_registered_model(self.name).aliases.items():
                aliases.setdefault(str(number), []).append(alias)
        rows = []
        for version in versions:
            rows.append(
                {
                    "version": str(version.version),
                    "aliases": ",".join(sorted(aliases.get(str(version.version), []))) or "-",
                    metric: version.tags.get(METRIC_TAG + metric, "-"),
                    "decision": version.tags.get("decision", "-"),
                    "run_id": version.tags.get(LINEAGE_TAG + "run_id", "-"),
                    "created": datetime.fromtimestamp(
                        version.creation_timestamp / 1000, UTC
                    ).isoformat(timespec="seconds"),
                    "reason": version.tags.get("decision.reason", ""),
                }
            )
        return rows


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "none") else None
    except ValueError:
        return None


def _none(value: str | None) -> str | None:
    return None if value in (None, "none") else value


def logged_model_uri(run_id: str, name: str = "model") -> str:
    """Return the URI of the model `name` logged in run `run_id` (`models:/m-...`).

    Raises:
        RegistryError: the run does not exist or logged no such model.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        run = mlflow.get_run(run_id)
    except MlflowException:
        raise RegistryError(
            f"MLflow run {run_id} not found in {mlflow.get_tracking_uri()}: "
            "was the train stage run against this tracking store?"
        ) from None
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
        output_format="list",
    )
    for model in models:
        if model.name == name:
            return f"models:/{model.model_id}"
    raise RegistryError(
        f"run {run_id} logged no model named {name!r}: the train stage must call "
        "taglens.pyfunc.log_taglens_model inside its run"
    )
