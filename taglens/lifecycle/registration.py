"""Registering a train run's model: what train and evaluate wrote, through the gate, recorded.

The register stage calls `register_run`: it reads the run id and classes from
`models/model_info.json`, checks that `metrics.json` scores that run, registers the run's logged
model with its evaluation and lineage (`Registry.register`, where the gate decides), notes the
decision on the train run and writes it to `reports/register.json`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taglens.artifacts import MODEL_INFO, PER_CLASS, PER_IMAGE, evaluated_beside, read_model_info
from taglens.atomic import atomic_write_json
from taglens.errors import TaglensError
from taglens.lifecycle.gate import Evaluation, check_metrics_run, read_evaluation
from taglens.lifecycle.registry import Registry
from taglens.lineage import run_record
from taglens.params import RegisterParams

logger = logging.getLogger(__name__)

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
        """From what `Registry.register` (or `skipped_record`) returns."""
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

    from taglens.serving.model_ref import logged_model_uri

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
    result = Registry(register.model_name, history).register(
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
