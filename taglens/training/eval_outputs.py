"""What the evaluate stage writes: metrics.json, per-class scores, confusion.csv, plots, MLflow."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from taglens import artifacts
from taglens.atomic import atomic_write_csv, atomic_write_json
from taglens.data.images import load_batch
from taglens.training import eval_plots, metrics
from taglens.training.evaluation import Scored

logger = logging.getLogger(__name__)

# evaluate's plots and per_class.json, inside --out
PLOTS_DIR = artifacts.EVALUATE_DIR.relative_to(artifacts.REPORTS_DIR).as_posix()
MISCLASSIFIED_FILE = artifacts.MISCLASSIFIED.name


@dataclass(frozen=True)
class EvaluateResult:
    """The test-split scores written to metrics.json, and where."""

    scores: dict[str, Any]
    metrics: Path

    def summary(self) -> str:
        """One line for the terminal."""
        return f"test accuracy {self.scores['accuracy']:.4f} on {self.scores['n_test']} images"


def write_reports(
    scored: Scored,
    classes: list[str],
    image_size: int,
    out: Path,
    *,
    misclassified_max: int,
    model_run_id: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write metrics.json, confusion.csv and evaluate/ (per_class.json, per_image.json, plots).

    per_image.json names the run and test split it belongs to, beside each test image's
    correctness (ordered by sha256): register pairs it with the champion's, image by image.

    Returns:
        metrics.json's contents (naming the model's train run, checked by register) and the
        per-class scores.
    """
    scores = dict(scored.scores)
    scores["model_run_id"] = model_run_id
    per_class = scores.pop("per_class")
    matrix = np.array(scores.pop("confusion"))
    plots = out / PLOTS_DIR
    atomic_write_json(plots / artifacts.PER_CLASS.name, per_class)
    per_image = {
        "model_run_id": model_run_id,
        "test_fingerprint": scores["test_fingerprint"],
        "images": scored.per_image,
    }
    atomic_write_json(plots / artifacts.PER_IMAGE.name, per_image)
    y_pred = scored.probabilities.argmax(axis=1)
    y_true = scored.y_true
    atomic_write_csv(
        artifacts.CONFUSION.at(out),
        (
            {"actual": actual, "predicted": classes[i]}
            for actual, i in zip(scored.test["label"], y_pred, strict=True)
        ),
        ("actual", "predicted"),
    )
    eval_plots.plot_confusion(matrix, classes, plots / "confusion.png")
    eval_plots.plot_confusion(
        metrics.normalize_rows(matrix), classes, plots / "confusion_normalized.png", normalized=True
    )
    history = artifacts.HISTORY.at(out)
    if history.is_file():
        with open(history, encoding="utf-8") as handle:
            rows = [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(handle)]
        eval_plots.plot_history(rows, plots / "curves.png")
    wrong = np.flatnonzero(y_pred != y_true)[:misclassified_max]
    eval_plots.plot_misclassified(
        list(load_batch([scored.paths[i] for i in wrong], image_size).numpy())
        if len(wrong)
        else [],
        [classes[y_true[i]] for i in wrong],
        [classes[y_pred[i]] for i in wrong],
        plots / MISCLASSIFIED_FILE,
    )
    atomic_write_json(artifacts.METRICS.at(out), scores)
    return scores, per_class


def log_to_run(info: dict, scores: dict, per_class: dict, plots: Path, *, log_photos: bool) -> None:
    """Log into the model's train run (a new `evaluate` run if that run is not in the store)."""
    import mlflow

    run_id = info.get("run_id")
    try:
        context = mlflow.start_run(run_id=run_id) if run_id else None
    except mlflow.exceptions.MlflowException:
        logger.warning("run %s of the model is not in this MLflow store; logging a new run", run_id)
        context = None
    if context is None:
        context = mlflow.start_run(run_name="evaluate", tags={"model_run_id": str(run_id)})
    with context:
        numbers = {f"test_{k}": float(v) for k, v in scores.items() if isinstance(v, int | float)}
        numbers.update({f"test_recall_{name}": row["recall"] for name, row in per_class.items()})
        mlflow.log_metrics(numbers)
        for path in sorted(plots.iterdir()):  # the grid of test photos only if base.log_photos
            if path.is_file() and (log_photos or path.name != MISCLASSIFIED_FILE):
                mlflow.log_artifact(str(path), artifact_path=PLOTS_DIR)
        mlflow.log_text(json.dumps(scores, indent=2), f"{PLOTS_DIR}/{artifacts.METRICS.name}")
