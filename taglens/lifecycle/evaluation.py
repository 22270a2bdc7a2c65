"""How a model is scored on the test split, what evaluate writes, and how it is read back.

Evaluate and register share the scoring: register re-scores the champion through
`score_test_split`, so champion and challenger are compared on the same images with the same
metrics. Evaluate writes metrics.json, confusion.csv and, under evaluate/, per_class.json,
per_image.json and the plots, and logs them on the train run. The gate's evidence is read back
here (`read_evaluation`, `check_metrics_run`) and judged in `taglens.lifecycle.gate`.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from taglens import artifacts
from taglens.artifacts import METRICS, MODEL_INFO, PER_IMAGE, MissingArtifactError, read_json
from taglens.atomic import atomic_write_csv, atomic_write_json
from taglens.data.images import image_dataset, load_batch
from taglens.data.posts import Post, hashtags_in, normalize_hashtag, read_raw_posts
from taglens.errors import TaglensError
from taglens.lifecycle.gate import FINGERPRINT, RUN_KEY, Evaluation, EvidenceError, check_evidence
from taglens.params import HashtagParams
from taglens.progress import progress_bar
from taglens.training import metrics, splits
from taglens.training.plots import plot_confusion, plot_history, plot_misclassified

HASHTAG_K = 5  # HARRISON reports recall and accuracy at 5
FORWARD_BATCH = 32
RANK_CHUNK = 256  # test images ranked at once: bounds the (N, T) score matrices

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    """One model scored on the test split: the metrics and what the plots need."""

    scores: dict[str, Any]  # metrics.json plus `per_class` and `confusion`
    test: pd.DataFrame  # the manifest's test rows
    paths: list[Path]
    probabilities: np.ndarray
    y_true: np.ndarray
    # each test image, ordered by sha256: {"sha256", "label", "predicted", "correct"} (the
    # promotion gate pairs two models image by image on these)
    per_image: list[dict[str, Any]]


def hashtag_params(hashtags: HashtagParams) -> HashtagParams:
    """The hashtag params evaluation ranks with (at least HASHTAG_K suggestions)."""
    return hashtags.model_copy(update={"top_k": max(hashtags.top_k, HASHTAG_K)})


def score_test_split(predictor, top_k: int, *, raw: Path, clean: Path) -> Scored:
    """Score a loaded model (ranking with `hashtag_params`) on the test split.

    Args:
        predictor: a HashtagPredictor whose params come from `hashtag_params`.
        top_k: the class accuracy depth reported (evaluate.top_k).
        raw: data/raw (images and posts).
        clean: data/clean (the manifest names the test split).

    Raises:
        MissingArtifactError: the manifest or posts are missing.
        TaglensError: the model's classes differ from the manifest's, or the test split is empty.
    """
    classes = predictor.classes
    test = splits.read_manifest(clean, classes)
    test = test[test["split"] == "test"].reset_index(drop=True)
    if test.empty:
        raise TaglensError(
            f"{artifacts.MANIFEST.at(clean)} has no test images: raise clean.test_fraction"
        )
    paths = [raw / image for image in test["image"]]
    outputs = _outputs(predictor, paths)
    probs = outputs["probabilities"]
    y_true = np.array([classes.index(label) for label in test["label"]])
    scores = metrics.classification_metrics(y_true, probs, classes, top_k)

    truth = _post_hashtags(read_raw_posts(raw), test)
    scores.update(hashtag_scores(predictor, outputs, truth))
    scores["test_fingerprint"] = metrics.split_fingerprint(test["sha256"], test["label"])
    return Scored(scores, test, paths, probs, y_true, per_image_rows(test, probs, classes))


def per_image_rows(
    test: pd.DataFrame, probabilities: np.ndarray, classes: list[str]
) -> list[dict[str, Any]]:
    """Each test image's label, top-1 prediction and whether it is right, ordered by sha256.

    Raises:
        TaglensError: a photo occurs twice in the test split (it could not be paired by sha256).
    """
    rows = []
    for sha, label, index in zip(
        test["sha256"], test["label"], probabilities.argmax(axis=1), strict=True
    ):
        predicted = classes[int(index)]
        rows.append(
            {
                "sha256": str(sha),
                "label": str(label),
                "predicted": predicted,
                "correct": predicted == label,
            }
        )
    twice = len(rows) - len({row["sha256"] for row in rows})
    if twice:
        raise TaglensError(
            f"{twice} test images occur twice in {artifacts.MANIFEST.name} (same sha256): "
            "re-run the clean stage"
        )
    return sorted(rows, key=lambda row: row["sha256"])


def hashtag_scores(
    predictor, outputs: dict[str, np.ndarray], truth: list[set[str]]
) -> dict[str, Any]:
    """The served ranking's hashtag metrics, and every ranker's beside it (prefixed by name).

    Popularity (the most used tags, suggested to every photo) and the class mixture are the
    floors the served ranking was chosen to reach on validation; a warning says when it falls
    below popularity on these posts.
    """
    depth = predictor.params.top_k  # how deep each ranking is scored
    ranked = [[item["tag"] for item in row] for row in predictor.rank(outputs)]
    scores: dict[str, Any] = dict(metrics.ranking_metrics(ranked, truth, HASHTAG_K, depth))
    for name, rows in _rankers(predictor, outputs):
        scores.update(
            metrics.with_prefix(metrics.ranking_metrics(rows, truth, HASHTAG_K, depth), f"{name}_")
        )
    if predictor.rankers is not None and predictor.rankers.choice:
        choice = predictor.rankers.choice
        scores["hashtag_ranking"] = {
            key: choice[key] for key in ("served", "rankers", "tag_weights", "why") if key in choice
        }
    below = [
        key
        for key in (
            "hashtag_precision_at_1",
            f"hashtag_recall_at_{HASHTAG_K}",
            f"hashtag_accuracy_at_{HASHTAG_K}",
        )
        if scores.get(key) is not None
        and scores.get(f"popularity_{key}") is not None
        and scores[key] < scores[f"popularity_{key}"]
    ]
    if below:
        logger.warning(
            "the served hashtags score below popularity (the most used tags for "
            "every photo) on the test posts in %s: %s",
            ", ".join(below),
            {key: (round(scores[key], 4), round(scores[f"popularity_{key}"], 4)) for key in below},
        )
    return scores


def _outputs(predictor, paths: list[Path]) -> dict[str, np.ndarray]:
    batches = image_dataset(paths, predictor.image_size, FORWARD_BATCH)
    parts = [
        predictor.outputs(batch.numpy())
        for batch in progress_bar(
            batches, desc="evaluate", unit="batch", total=-(-len(paths) // FORWARD_BATCH)
        )
    ]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _rankers(predictor, outputs: dict[str, np.ndarray]) -> list[tuple[str, list[list[str]]]]:
    """Each ranker's tag lists on its own (no tag weights), and the served blend's."""
    from taglens.model.rankers import HashtagBlend

    stats = predictor.stats
    params = predictor.params
    blend = predictor.rankers or HashtagBlend()
    rows: dict[str, list[list[str]]] = {}
    probs = outputs["probabilities"]
    for start in range(0, len(probs), RANK_CHUNK):
        part = {key: value[start : start + RANK_CHUNK] for key, value in outputs.items()}
        scores = blend.ranker_scores(
            stats, params, part["probabilities"], part.get("features"), part.get("colour")
        )
        for name, raw in scores.items():
            ranked = _tags(stats.rank_scores(stats.finish(raw, params), params))
            rows.setdefault(name, []).extend(ranked)
        final = blend.final(stats, params, scores)
        rows.setdefault("blend", []).extend(_tags(stats.rank_scores(final, params)))
    return list(rows.items())


def _tags(rankings: list[list[dict]]) -> list[list[str]]:
    return [[item["tag"] for item in row] for row in rankings]


def _post_hashtags(posts: list[Post], test: pd.DataFrame) -> list[set[str]]:
    """Each test post's own caption hashtags (empty when the data has no captions)."""
    by_id = {}
    for post in posts:
        tags = {normalize_hashtag(t) for t in post.hashtags} | set(hashtags_in(post.caption))
        by_id[post.id] = by_id[post.sha256] = tags - {""}
    return [
        by_id.get(str(i), by_id.get(sha, set()))
        for i, sha in zip(test["id"], test["sha256"], strict=True)
    ]


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
    plot_confusion(matrix, classes, plots / "confusion.png")
    plot_confusion(
        metrics.normalize_rows(matrix), classes, plots / "confusion_normalized.png", normalized=True
    )
    history = artifacts.HISTORY.at(out)
    if history.is_file():
        with open(history, encoding="utf-8") as handle:
            rows = [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(handle)]
        plot_history(rows, plots / "curves.png")
    wrong = np.flatnonzero(y_pred != y_true)[:misclassified_max]
    plot_misclassified(
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


def read_metrics(path: Path | str) -> dict[str, Any]:
    """Read evaluate's metrics.json.

    Raises:
        MissingArtifactError: evaluate has not run.
        ValueError: the file is not a JSON object.
    """
    return read_json(METRICS, path)


def read_recall(path: Path | str) -> dict[str, float]:
    """Per-class recall from evaluate's per_class.json; {} when the file does not exist.

    Reads `{class: {"recall": r, ...}}`, the one shape evaluate writes.

    Raises:
        TaglensError: the file exists but is not in that shape (re-run evaluate).
    """
    path = Path(path)
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    wrapped = isinstance(data, dict) and isinstance(data.get("classes"), dict | list)
    rows = data.items() if isinstance(data, dict) and not wrapped else ()
    recall = {
        str(name): float(row["recall"])
        for name, row in rows
        if isinstance(row, dict) and "recall" in row
    }
    if not recall and data:
        raise TaglensError(
            f"{path} is not evaluate's per-class record (expected {{class: {{recall: r}}}}): "
            "re-run the evaluate stage (`dvc repro evaluate`)"
        )
    return recall


def check_metrics_run(metrics: Path | str, run_id: str) -> None:
    """Refuse a metrics.json that does not say it scores the model of train run `run_id`.

    After a failed or skipped evaluate, metrics.json can be the previous model's; one written by
    hand or by an older evaluate names no run at all. Registering the new model with either
    would promote (or keep out) a model on numbers it never earned, so both are refused.

    Raises:
        MissingArtifactError: metrics.json is missing.
        EvidenceError: metrics.json names no run or another run (the message says how to fix it).
    """
    metrics = Path(metrics)
    stated = read_metrics(metrics).get(RUN_KEY)
    if not stated:
        raise EvidenceError(
            f"{metrics} names no {RUN_KEY}, so nothing ties it to train run {run_id} (written "
            "by hand or by an older evaluate?): run the evaluate stage for this model "
            "(`dvc repro evaluate`)"
        )
    if stated != run_id:
        raise EvidenceError(
            f"{metrics} holds the metrics of train run {stated}, but {MODEL_INFO.name} is run "
            f"{run_id}: run the evaluate stage for this model (`dvc repro evaluate`) first"
        )


def read_correct(path: Path | str, metrics: dict[str, Any]) -> dict[str, bool]:
    """Per-image correctness from evaluate's per_image.json, checked against its metrics.json.

    See `gate.check_evidence` for what must agree.

    Raises:
        MissingArtifactError: evaluate has not written it.
        EvidenceError: it is malformed or does not belong to these metrics.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingArtifactError(path, PER_IMAGE.stage)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise EvidenceError(
            f"{path} is not evaluate's per-image record ({type(exc).__name__}: {exc}): re-run "
            "the evaluate stage"
        ) from None
    return check_evidence(data, metrics, str(path))


def read_evaluation(
    metrics: Path | str, per_class: Path | str, per_image: Path | str
) -> Evaluation:
    """The candidate's evaluation as evaluate wrote it, refused when evidence is missing.

    Raises:
        MissingArtifactError: metrics.json or per_image.json is missing.
        EvidenceError: no test fingerprint or train run id, or per_image.json is not the
            metrics' own (see `read_correct`).
    """
    scores = read_metrics(metrics)
    needed = {FINGERPRINT: "which test images they are on", RUN_KEY: "which model they score"}
    for key, what in needed.items():
        if scores.get(key) in (None, ""):
            raise EvidenceError(
                f"{metrics} has no {key}, so nothing says {what} (written by hand or by an "
                "older evaluate?): re-run the evaluate stage (`dvc repro evaluate`)"
            )
    return Evaluation(scores, read_recall(per_class), read_correct(per_image, scores))
