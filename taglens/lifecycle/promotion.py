"""How a train run's model is registered and promoted, and by hand promoted or rolled back.

The gate's decision is taken under the registry lock, committed in a crash-resumable order and
held inside `dvc exp run`.

The register stage calls `register_run`: it reads the run id and classes from
`models/model_info.json`, checks that `metrics.json` scores that run, registers the run's
logged model with its evaluation and lineage (`register_model`, where the gate decides), notes
the decision on the train run and writes it to `reports/register.json`.

Champion and challenger are compared image by image on the same test images: the caller's
`rescore` scores the champion again on the current test split, and the gate pairs its
per-image correctness with the candidate's (McNemar's exact test, `taglens.lifecycle.gate`).
The champion is read again right before the alias moves, and the decision's details are tagged
before the `decision` tag that commits it, so a re-run after a crash replays the decision
instead of taking a new one. `register_model` runs these under the registry lock.

By hand (the admin CLI): promote, roll back, list versions.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from taglens.artifacts import MODEL_INFO, PER_CLASS, PER_IMAGE, evaluated_beside, read_model_info
from taglens.atomic import atomic_write_json
from taglens.errors import TaglensError
from taglens.lifecycle.evaluation import check_metrics_run, read_evaluation
from taglens.lifecycle.gate import CHALLENGER, CHAMPION, Decision, Evaluation, paired_decision
from taglens.lifecycle.registry import (
    LINEAGE_TAG,
    METRIC_TAG,
    Registry,
    RegistryError,
    decision_tags,
    evaluation_of,
    now_iso,
    pending_decision,
)
from taglens.lineage import run_record
from taglens.params import RegisterParams

logger = logging.getLogger(__name__)

Rescore = Callable[[Any], Evaluation]


def decide(
    registry: Registry,
    evaluation: Evaluation,
    params: RegisterParams,
    rescore: Rescore | None,
    mine: str | None,
) -> Decision:
    """The gate's decision against the champion of now (`mine`: the candidate's own version)."""
    for _ in range(3):
        champion = registry.alias(CHAMPION)
        if champion is not None and str(champion.version) == mine:
            champion = None
        decision = _paired(registry, evaluation, champion, params, rescore)
        # Re-check: if the champion moved while we decided (a writer outside this lock, e.g.
        # on another machine), decide again against the new one before moving the alias.
        now = registry.alias(CHAMPION)
        if (now and str(now.version)) == (champion and str(champion.version)):
            break
    return replace(decision, compared_with=str(champion.version) if champion else None)


def _paired(
    registry: Registry,
    evaluation: Evaluation,
    champion: Any | None,
    params: RegisterParams,
    rescore: Rescore | None,
) -> Decision:
    """Decide on scores of both models on the same test images (re-scoring the champion)."""
    if champion is None:
        return paired_decision(evaluation, None, None, params)
    again = None if rescore is None else (lambda: rescore(champion))
    return paired_decision(
        evaluation, (str(champion.version), evaluation_of(champion.tags)), again, params
    )


def commit(registry: Registry, version: Any, decision: Decision, params: RegisterParams) -> None:
    """Record and carry out a decision in an order a crash can resume from.

    The decision's details are tagged first; the `decision` tag, written last, commits it. A
    re-run finding details without `decision` replays them instead of deciding again (the
    champion may already have moved to this very version).
    """
    registry.tag(version, decision_tags(decision, params.primary_metric, now_iso()))
    if decision.promoted:
        registry.crown(version)
    else:
        registry.client.set_registered_model_alias(registry.name, CHALLENGER, version.version)
    last = (registry.history() or [{}])[-1]
    if (last.get("event"), last.get("version")) != ("register", str(version.version)):
        registry.record(
            "register",
            version,
            decision.reason,
            decision=decision.alias,
            compared_with=decision.compared_with,
            score=decision.score,
            champion_score=decision.champion_score,
            champion_rescored=decision.champion_rescored,
            test_fingerprint=decision.test_fingerprint,
            metric=params.primary_metric,
            **decision.evidence(),
        )
    registry.tag(version, {"decision": decision.alias})
    logger.info(
        "%s version %s -> %s: %s", registry.name, version.version, decision.alias, decision.reason
    )


def register_model(
    registry: Registry,
    model_uri: str,
    run_id: str,
    evaluation: Evaluation,
    params: RegisterParams,
    lineage: dict[str, Any] | None = None,
    *,
    rescore: Rescore | None = None,
    hold: str | None = None,
) -> dict[str, Any]:
    """Register a run's model in `registry` (once) and pass it through the gate.

    The gate runs before the version is created, so a registry error while reading the
    champion (or re-scoring it) leaves the registry as it was. Re-running with the same run
    id returns the recorded decision without a new version.

    Args:
        registry: the registered model to add a version to.
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
    with registry.lock():
        existing = registry.find_run(run_id)
        if existing is not None and "decision" in existing.tags:
            logger.info(
                "run %s is already %s version %s: nothing to do",
                run_id,
                registry.name,
                str(existing.version),
            )
            return registry.result(existing, created=False)
        decision = pending_decision(existing.tags) if existing is not None else None
        champion = registry.alias(CHAMPION)
        crowned = (
            existing is not None
            and champion is not None
            and (str(champion.version) == str(existing.version))
        )
        if decision is not None and decision.promoted and not crowned:
            now = str(champion.version) if champion is not None else None
            if now != decision.compared_with:  # a later registration moved the champion
                logger.info(
                    "version %s was decided champion against %s, but the champion is now %s: "
                    "deciding again",
                    existing.version,
                    decision.compared_with,
                    now,
                )
                decision = None
        if decision is None:
            mine = str(existing.version) if existing is not None else None
            decision = decide(registry, evaluation, params, rescore, mine)
        if hold and decision.promoted and not crowned:
            reason = f"{hold} (the gate said: {decision.reason})"
            decision = replace(decision, alias=CHALLENGER, reason=reason)
        version = existing or registry.create(model_uri, run_id, evaluation, lineage or {})
        commit(registry, version, decision, params)
        return registry.result(registry.version(version.version), created=existing is None)


# DVC sets these in the environment of every stage that `dvc exp run` runs (dvc.env).
EXPERIMENT_ENV = ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV")
SKIPPED = "skipped"  # register.json's decision when an experiment is not registered
# Scores a champion version on the current test split, given the candidate's classes.
ChampionRescorer = Callable[[Any, list[str]], Evaluation]


@dataclass(frozen=True)
class Registered:
    """What one registration did: the version, the gate's decision and why.

    `record` is the whole of it as `reports/register.json` holds it (scores, champion, ...).
    """

    model_name: str
    version: str | None  # None when registration was skipped
    decision: str
    reason: str
    record: dict[str, Any]

    @classmethod
    def of(cls, record: dict[str, Any]) -> Registered:
        """From what `register_model` (or `skipped_record`) returns."""
        version = record.get("version")
        return cls(
            str(record["model_name"]),
            None if version is None else str(version),
            str(record["decision"]),
            str(record["reason"]),
            dict(record),
        )

    def summary(self) -> str:
        """One line for the console."""
        if self.version is None:
            return f"{self.model_name}: not registered ({self.reason})"
        return f"{self.model_name} version {self.version}: {self.decision} ({self.reason})"


def running_experiment(environ: Mapping[str, str]) -> str | None:
    """The name of the `dvc exp run` this process is a stage of, or None outside one."""
    return next((environ[key] for key in EXPERIMENT_ENV if environ.get(key)), None)


def skipped_record(register: RegisterParams, run_id: str, experiment: str) -> dict[str, Any]:
    """register.json for an experiment that is not registered (`register.on_experiment: skip`).

    Nothing is written to the registry or the train run, so once the experiment is applied and
    committed, `dvc repro -f -s register` registers this run for real and the gate decides.
    """
    return {
        "model_name": register.model_name,
        "version": None,
        "created": False,
        "decision": SKIPPED,
        "run_id": run_id,
        "experiment": experiment,
        "reason": (
            f"skipped: `dvc exp run` ({experiment}) with register.on_experiment: skip adds no "
            "version, so the registry holds no experiment nobody merged; to register and gate "
            f"this model, `dvc exp apply {experiment}`, commit, then `dvc repro -f -s register`"
        ),
    }


def promotion_hold(register: RegisterParams, environ: Mapping[str, str]) -> str | None:
    """Why a winning model must stay challenger this time, or None when it may be promoted.

    `dvc exp run` never moves the champion: an experiment may never be merged, and batch scoring
    and the web page follow @champion. `register.promote: false` holds every model.
    """
    running = running_experiment(environ)
    if running:
        return (
            f"held: registered from `dvc exp run` ({running}), which never moves the champion; "
            "to promote it, `python -m stages.register promote VERSION --reason ...`"
        )
    if not register.promote:
        return (
            "held: register.promote is false; promote by hand with "
            "`python -m stages.register promote VERSION --reason ...`"
        )
    return None


def register_run(
    register: RegisterParams,
    *,
    models: Path,
    metrics: Path,
    out: Path,
    history: Path,
    per_class: Path | None = None,
    per_image: Path | None = None,
    rescorer: ChampionRescorer | None = None,
    environ: Mapping[str, str] | None = None,
) -> Registered:
    """Register the model of the train run in `models/` and write the decision to `out`.

    Args:
        register: the registry name and the gate's settings.
        models: the train stage's folder (its model_info.json names the run).
        metrics: evaluate's metrics.json for that run.
        out: where the decision is written (register.json).
        history: the promotion history (promotions.jsonl).
        per_class: per-class recall (default: `<metrics dir>/evaluate/per_class.json`).
        per_image: each test image right or wrong (default: `<metrics dir>/evaluate/
            per_image.json`), paired with the champion's by the gate.
        rescorer: scores the champion on the current test split (without it, a model that
            has a champion to beat stays challenger: not comparable).
        environ: where a `dvc exp run` is detected (default: this process's environment).

    Raises:
        FileNotFoundError: model_info.json, metrics.json or per_image.json is missing.
        EvidenceError: metrics.json names no run or another run, has no test fingerprint, or
            per_image.json is not its own.
        ValueError: the run id is missing, the metric is unknown, or MLflow lacks the run.
        RegistryError: the registry cannot be read or written; nothing was promoted.
    """
    import os

    from taglens.model.pyfunc import logged_model_uri

    info = read_model_info(models)
    run_id = info.get("run_id")
    if not run_id:
        raise TaglensError(
            f"{MODEL_INFO.at(models)} has no run_id: the train stage must run inside MLflow"
        )
    check_metrics_run(metrics, run_id)
    environ = os.environ if environ is None else environ
    experiment = running_experiment(environ)
    if experiment and register.on_experiment == "skip":
        record = skipped_record(register, run_id, experiment)
        logger.info("%s", record["reason"])
        atomic_write_json(out, record)
        return Registered.of(record)
    evaluated = evaluated_beside(metrics)
    evaluation = read_evaluation(
        metrics,
        per_class or PER_CLASS.at(evaluated),
        per_image or PER_IMAGE.at(evaluated),
    )
    evaluation.score(register.primary_metric)  # fail before touching the registry
    classes = list(info.get("classes", []))
    rescore = None if rescorer is None else functools.partial(rescorer, classes=classes)
    hold = promotion_hold(register, environ)
    result = register_model(
        Registry(register.model_name, history),
        logged_model_uri(run_id),
        run_id,
        evaluation,
        register,
        run_record(run_id),
        rescore=rescore,
        hold=hold,
    )
    _tag_run(run_id, result)
    atomic_write_json(out, result)
    return Registered.of(result)


def _tag_run(run_id: str, result: dict[str, Any]) -> None:
    """Note the registered version and decision on the train run, the run of the model."""
    import mlflow

    client = mlflow.MlflowClient()
    client.set_tag(run_id, "register.version", result["version"])
    client.set_tag(run_id, "register.decision", str(result["decision"]))


def promote(registry: Registry, version: str | int, reason: str) -> dict[str, Any]:
    """Make `version` champion by hand, recording who, when and why."""
    if not reason.strip():
        raise RegistryError("a reason is required: --reason 'why this version'")
    with registry.lock():
        target = registry.version(version)
        previous = registry.alias(CHAMPION)
        registry.crown(target)
        registry.tag(
            target,
            {
                "decision": CHAMPION,
                "decision.reason": f"manual: {reason}",
                "decision.time": now_iso(),
            },
        )
        return registry.record(
            "promote", target, reason, previous=str(previous.version) if previous else None
        )


def champion_stack(registry: Registry) -> list[str]:
    """List champions in order from the registry's history: promotions push, rollbacks pop."""
    stack: list[str] = []
    for row in registry.history():
        if row.get("event") == "promote" or (
            row.get("event") == "register" and row.get("decision") == CHAMPION
        ):
            stack.append(str(row["version"]))
        elif row.get("event") == "rollback" and stack:
            stack.pop()
    return stack


def rollback(registry: Registry, reason: str) -> dict[str, Any]:
    """Give the champion alias back to the previous champion (per the history)."""
    if not reason.strip():
        raise RegistryError("a reason is required: --reason 'what went wrong'")
    with registry.lock():
        current = registry.alias(CHAMPION)
        stack = champion_stack(registry)
        if current is None or len(stack) < 2 or stack[-1] != str(current.version):
            raise RegistryError(
                f"nothing to roll back to: the registry's history of {registry.name} has no "
                "earlier champion; use `promote VERSION --reason ...` instead"
            )
        target = registry.version(stack[-2])
        registry.crown(target)
        registry.tag(current, {"rolled_back": reason, "decision.time": now_iso()})
        return registry.record("rollback", target, reason, previous=str(current.version))


def version_table(registry: Registry, metric: str) -> list[dict[str, Any]]:
    """Return one row per version: score, aliases, decision, run, date."""
    versions = registry.versions()
    aliases: dict[str, list[str]] = {}
    if versions:  # search results carry no aliases: read them from the registered model
        for alias, number in registry.client.get_registered_model(registry.name).aliases.items():
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
                "created": datetime.fromtimestamp(version.creation_timestamp / 1000, UTC).isoformat(
                    timespec="seconds"
                ),
                "reason": version.tags.get("decision.reason", ""),
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """`version_table` rows as aligned text columns, or what to do when there are none."""
    if not rows:
        return "no versions registered yet: run `dvc repro`"
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    lines = [[k.ljust(widths[k]) for k in keys]]
    lines += [[str(row[k]).ljust(widths[k]) for k in keys] for row in rows]
    return "\n".join("  ".join(cells) for cells in lines)
