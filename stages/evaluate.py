"""evaluate: the saved model on the test split, scored and plotted, logged to the model's run."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from taglens.atomic import atomic_write_json, atomic_write_text
from taglens.cli import add_stage_inputs, run_main, setup_logging
from taglens.data.images import image_dataset, load_batch
from taglens.data.posts import POSTS_FILE, hashtags_in, normalize_hashtag, read_posts
from taglens.errors import TaglensError
from taglens.lifecycle.tracking import configure_tracking
from taglens.params import HashtagParams, Params, load_params
from taglens.progress import progress_bar
from taglens.training import eval_plots, metrics, train_data

logger = logging.getLogger(__name__)

HASHTAG_K = 5  # HARRISON reports recall and accuracy at 5
PLOTS_DIR = "evaluate"
MISCLASSIFIED_FILE = "misclassified.png"
FORWARD_BATCH = 32


@dataclass(frozen=True)
class Scored:
    """One model scored on the test split: the metrics and what the plots need."""

    scores: dict[str, Any]  # metrics.json plus `per_class` and `confusion`
    test: pd.DataFrame  # the manifest's test rows
    paths: list[Path]
    probabilities: np.ndarray
    y_true: np.ndarray


def hashtag_params(params: Params) -> HashtagParams:
    """The hashtag params evaluation ranks with (at least HASHTAG_K suggestions)."""
    return params.hashtags.model_copy(update={"top_k": max(params.hashtags.top_k, HASHTAG_K)})


def score_test_split(predictor, params: Params, *, raw: Path, clean: Path) -> Scored:
    """Score a loaded model on the test split: the one scoring code for evaluate and register.

    Register re-scores the champion through this function, so champion and challenger are
    compared on the same images with the same metrics.

    Raises:
        FileNotFoundError: the manifest or posts are missing.
        ValueError: the model's classes differ from the manifest's, or the test split is empty.
    """
    classes = predictor.classes
    test = train_data.read_manifest(clean / "manifest.csv", classes)
    test = test[test["split"] == "test"].reset_index(drop=True)
    if test.empty:
        raise TaglensError(
            f"{clean / 'manifest.csv'} has no test images: raise clean.test_fraction"
        )
    paths = [raw / image for image in test["image"]]
    outputs = _outputs(predictor, paths)
    probs = outputs["probabilities"]
    y_true = np.array([classes.index(label) for label in test["label"]])
    scores = metrics.classification_metrics(y_true, probs, classes, params.evaluate.top_k)

    truth = _post_hashtags(raw / POSTS_FILE, test)
    depth = hashtag_params(params).top_k  # how deep each ranking is scored
    # the served ranking (the blend chosen on validation, or the class mixture alone)
    ranked = [[item["tag"] for item in row] for row in predictor.rank(outputs)]
    scores.update(metrics.ranking_metrics(ranked, truth, HASHTAG_K, depth))
    # every ranker side by side, with the same tag weights; popularity suggests the most used
    # tags to every photo: every ranker must beat it
    popular = [item["tag"] for item in predictor.stats.popular(predictor.params)]
    for name, rows in [("popularity", [popular] * len(truth)), *_rankers(predictor, outputs)]:
        scores.update(metrics.with_prefix(
            metrics.ranking_metrics(rows, truth, HASHTAG_K, depth), f"{name}_"))
    scores["test_fingerprint"] = metrics.split_fingerprint(test["sha256"])
    return Scored(scores, test, paths, probs, y_true)


def run(params: Params, *, raw: Path, clean: Path, models: Path, out: Path) -> dict[str, Any]:
    """Score models/ on the test split; write reports/metrics.json, confusion.csv and plots.

    Returns:
        The contents of metrics.json.

    Raises:
        FileNotFoundError: models/, the manifest or posts are missing.
        ValueError: the model's classes differ from the manifest's, or the test split is empty.
    """
    from taglens.serving.predictor import HashtagPredictor

    predictor = HashtagPredictor.from_dir(models, params=hashtag_params(params))
    classes = predictor.classes
    scored = score_test_split(predictor, params, raw=raw, clean=clean)
    scores, test, paths = scored.scores, scored.test, scored.paths
    probs, y_true = scored.probabilities, scored.y_true
    scores["model_run_id"] = str(predictor.info.get("run_id") or "")  # checked by register

    plots = out / PLOTS_DIR
    per_class, matrix = scores.pop("per_class"), np.array(scores.pop("confusion"))
    atomic_write_json(plots / "per_class.json", per_class)
    y_pred = probs.argmax(axis=1)
    _write_confusion_csv(out / "confusion.csv", test["label"], [classes[i] for i in y_pred])
    eval_plots.plot_confusion(matrix, classes, plots / "confusion.png")
    eval_plots.plot_confusion(metrics.normalize_rows(matrix), classes,
                              plots / "confusion_normalized.png", normalized=True)  # fmt: skip
    history = out / "history.csv"
    if history.is_file():
        with open(history, encoding="utf-8") as handle:
            rows = [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(handle)]
        eval_plots.plot_history(rows, plots / "curves.png")
    wrong = np.flatnonzero(y_pred != y_true)[: params.evaluate.misclassified_max]
    eval_plots.plot_misclassified(
        list(load_batch([paths[i] for i in wrong], predictor.image_size).numpy()) if len(wrong)
        else [], [classes[y_true[i]] for i in wrong], [classes[y_pred[i]] for i in wrong],
        plots / MISCLASSIFIED_FILE,
    )  # fmt: skip
    atomic_write_json(out / "metrics.json", scores)
    _log_to_run(predictor.info, scores, per_class, plots, log_photos=params.base.log_photos)
    logger.info("evaluate: %s", {k: v for k, v in scores.items() if not k.startswith("top")})
    return scores


def _outputs(predictor, paths: list[Path]) -> dict[str, np.ndarray]:
    batches = image_dataset(paths, predictor.image_size, FORWARD_BATCH)
    parts = [predictor.outputs(batch.numpy())
             for batch in progress_bar(batches, desc="evaluate", unit="batch",
                               total=-(-len(paths) // FORWARD_BATCH))]  # fmt: skip
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _rankers(predictor, outputs: dict[str, np.ndarray]) -> list[tuple[str, list[list[str]]]]:
    """Each ranker's tag lists (class mixture, and the image rankers and blend if fitted)."""
    stats, params, rankers = predictor.stats, predictor.params, predictor.rankers
    mixture = stats.mixture(outputs["probabilities"], params)
    if rankers is None:
        return [("class_mixture", _tags(stats.rank_scores(stats.finish(mixture, params), params)))]
    scores = rankers.ranker_scores(mixture, outputs.get("features"), outputs.get("colour"))
    # each ranker as it is; the blend with the low-lift weighting chosen with it
    ranked = [(name, _tags(stats.rank_scores(stats.finish(raw, params), params)))
              for name, raw in scores.items()]  # fmt: skip
    blend = stats.finish(rankers.blend(scores), params, rankers.tag_multiplier)
    return [*ranked, ("blend", _tags(stats.rank_scores(blend, params)))]


def _tags(rankings: list[list[dict]]) -> list[list[str]]:
    return [[item["tag"] for item in row] for row in rankings]


def _post_hashtags(posts_path: Path, test) -> list[set[str]]:
    """Each test post's own caption hashtags (empty when the data has no captions)."""
    by_id = {}
    for post in read_posts(posts_path):
        tags = {normalize_hashtag(t) for t in post.hashtags} | set(hashtags_in(post.caption))
        by_id[post.id] = by_id[post.sha256] = tags - {""}
    return [by_id.get(str(i), by_id.get(sha, set())) for i, sha in zip(test["id"], test["sha256"],
                                                                       strict=True)]


def _write_confusion_csv(path: Path, actual, predicted) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["actual", "predicted"])
    writer.writerows(zip(actual, predicted, strict=True))
    atomic_write_text(path, buffer.getvalue())


def _log_to_run(info: dict, scores: dict, per_class: dict, plots: Path, *,
                log_photos: bool) -> None:  # fmt: skip
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
        mlflow.log_text(json.dumps(scores, indent=2), f"{PLOTS_DIR}/metrics.json")


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m stages.evaluate --params params.yaml --models models ...`."""
    parser = argparse.ArgumentParser(description=__doc__)
    add_stage_inputs(parser, "params", "raw", "clean", "models")
    parser.add_argument("--out", type=Path, default=Path("reports"),
                        help="metrics.json, confusion.csv, evaluate/ plots (default %(default)s)")
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        params = load_params(args.params)
        configure_tracking(params.base.experiment)
        scores = run(params, raw=args.raw, clean=args.clean, models=args.models, out=args.out)
        print(f"test accuracy {scores['accuracy']:.4f} on {scores['n_test']} images")
        return 0

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
