"""What the train stage logs and writes around the fitted head: sweep, served model, baseline."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from taglens import artifacts
from taglens.atomic import atomic_write_csv, atomic_write_json
from taglens.data.images import load_batch
from taglens.features.backbones import build_feature_extractor, weights_identity
from taglens.params import TrainParams
from taglens.training import eval_plots
from taglens.training.baseline import fit_baseline
from taglens.training.fine_tune_choice import FineTuneChoice
from taglens.training.full_model import (
    assemble,
    fine_tune,
    probabilities_model,
    save_model,
    verify_extractor,
)
from taglens.training.head_fit import HISTORY_COLUMNS, HeadFit
from taglens.training.int8_model import ServedPrecision, quantize_served, served_engine
from taglens.training.selection import binomial_se
from taglens.training.sweep import run_sweep, setting_name
from taglens.training.train_config import TrainConfig
from taglens.training.train_data import Split
from taglens.training.views_choice import ViewsChoice

logger = logging.getLogger(__name__)

VERIFY_IMAGES = 4  # training images re-run through the extractor to check the cached vectors
BASELINE_RUN = "baseline-logreg"
# The train keys that shape each head: train.json's `chosen` shows them for the model's head.
CHOSEN_KEYS = {
    "logreg": ("head", "logreg_c", "normalise", "augment"),
    "kernel": ("head", "kernel_c", "kernel_gamma", "kernel_landmarks", "augment"),
    "dense": (
        "head",
        "hidden_units",
        "dropout",
        "learning_rate",
        "weight_decay",
        "normalise",
        "augment",
    ),
}


@dataclass(frozen=True)
class TrainResult:
    """reports/train.json's contents (run ids, validation scores, baseline) and the model dir."""

    summary: dict[str, Any]
    models: Path

    @property
    def run_id(self) -> str:
        """The MLflow run that holds the model."""
        return str(self.summary["run_id"])

    def line(self) -> str:
        """One line for the terminal."""
        return f"trained: val_accuracy {self.summary['val_accuracy']:.4f} (run {self.run_id})"


def log_data(config: TrainConfig, meta: dict, splits: dict[str, Split],
             data: dict[str, Path]) -> None:  # fmt: skip
    """Tag the active run with its lineage record and log the splits as its dataset inputs.

    Args:
        config: the sections the run trains with.
        meta: the cached features' meta.json (their weights identity).
        splits: the manifest's splits.
        data: raw, features and clean by name -> folder.
    """
    import mlflow

    from taglens.lifecycle import lineage
    from taglens.lifecycle.tracking import log_split_datasets

    record = lineage.record(Path.cwd(), data, {
        "backbone": config.model.backbone, "image_size": config.model.image_size,
        "weights_identity": meta["weights_identity"], "experiment": config.base.experiment,
    })  # fmt: skip
    mlflow.set_tags({"stage": "train", **lineage.as_tags(record)})
    log_split_datasets({name: split.rows for name, split in splits.items()},
                       digest=record.get("data.clean", "unknown"),
                       source=str(artifacts.MANIFEST.at(data["clean"])))  # fmt: skip


def sweep_logged(
    config: TrainConfig, settings: list[dict], fit_one: Callable, swept: set[str], space: str,
    n_val: int,
) -> tuple[HeadFit, TrainParams]:
    """Fit every setting in a child run; log the chosen one's params and curves on this run.

    The default search chooses by `train.search.rule`; a sweep the user asked for takes the best.
    """
    import mlflow

    rule = config.train.search.rule if space == "default" else "best"
    trials, best = run_sweep(config.train, settings, fit_one, config.flat(), rule, n_val)
    fit, best_params = trials[best].fit, trials[best].params
    best_flat = config.with_train(best_params).flat()
    mlflow.log_params({key: best_flat[key] for key in sorted(swept)})
    accuracies = [trial.fit.val_accuracy for trial in trials]
    mlflow.set_tags({"sweep_size": str(len(trials)), "search_space": space,
                     "selection_rule": rule, "best_child_run_id": trials[best].run_id,
                     "best_setting": setting_name(trials[best].setting)})  # fmt: skip
    # how far apart the candidates were, beside the error of one val accuracy
    mlflow.log_metrics({"search_val_accuracy_max": max(accuracies),
                        "search_val_accuracy_min": min(accuracies),
                        "search_val_accuracy_se": binomial_se(max(accuracies), n_val)})
    for row in fit.history:
        mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
    return fit, best_params


def log_views(choice: ViewsChoice) -> None:
    """Log the test-time views chosen (`train.views_crops`), their val accuracies and why."""
    import mlflow

    mlflow.log_param("train.views_crops", choice.crops)
    mlflow.set_tag("views_why", choice.why)
    metrics = {
        f"val_accuracy_views_{name.replace('+', '_')}": value
        for name, value in choice.val_accuracy.items()
    }
    mlflow.log_metrics(metrics)


def search_note(space: str, searched: set[str]) -> str:
    """The log line saying which train keys a search (or sweep) sets, so params.yaml's are unused.

    Args:
        space: "default" (train.search) or "sweep" (train.sweep or --sweep).
        searched: the `train.*` keys its settings vary.
    """
    keys = ", ".join(sorted(searched))
    if space == "default":
        return (
            f"train.search is on: it varies {keys}, so their params.yaml values (and any "
            "`dvc exp run -S` of them) are not used; set train.search.enabled=false to "
            "train the values in params.yaml"
        )
    return f"the sweep varies {keys}: their params.yaml values are not used"


def setting_report(
    best: TrainParams, space: str | None, searched: set[str], fit: HeadFit
) -> dict[str, Any]:
    """What train.json says about the setting that made the model (`dvc exp show` lists it).

    Args:
        best: the train params the model was fitted with (the best setting of a search).
        space: "default" or "sweep" when settings were searched, None for one setting.
        searched: the `train.*` keys the search varied (empty for one setting).
        fit: the model's fit.

    Returns:
        `search` and `sweep` (which ran), `searched_keys` (comma-separated: DVC's metrics drop
        lists), `chosen` (the head's own keys) and, after a search, `search_val_accuracy`.
    """
    report: dict[str, Any] = {
        "search": space == "default",
        "sweep": space == "sweep",
        "searched_keys": ",".join(sorted(searched)),
        "chosen": {key: getattr(best, key) for key in CHOSEN_KEYS[best.head]},
    }
    if space is not None:
        report["search_val_accuracy"] = fit.val_accuracy
    return report


def served_model(
    config: TrainConfig, fit: HeadFit, train: Split, raw: Path, precision: str
) -> Any:
    """The backbone and the fitted head as one model, checked against the cached vectors.

    INT8 vectors (`precision`) differ from the FP32 backbone's by design: their check is the
    accuracy control of the INT8 model, so the FP32 extractor is not compared with them.
    """
    extractor = build_feature_extractor(config.model, config.base.seed)
    if precision == "fp32":
        probe = train.rows["image"].head(VERIFY_IMAGES).map(lambda image: raw / image).tolist()
        verify_extractor(extractor, load_batch(probe, config.model.image_size).numpy(),
                         train.vectors[:VERIFY_IMAGES])  # fmt: skip
    return assemble(extractor, fit.model, flip=fit.augmented, crops=fit.crops,
                    colour=config.hashtags.image_rankers and "colour" in train.views)


def fine_tune_logged(model, config: TrainConfig, train: Split, val: Split, raw: Path,
                     start: int) -> list[dict]:  # fmt: skip
    """Fine-tune the served model on images, logging `fine_tune_*` metrics after the head's."""
    import mlflow

    def paths(split: Split) -> list[Path]:
        return [raw / image for image in split.rows["image"]]

    rows = fine_tune(
        model, config.model, config.train.fine_tune,
        (paths(train), train.labels), (paths(val), val.labels),
        label_smoothing=config.train.label_smoothing, seed=config.base.seed,
        on_epoch=lambda epoch, m: mlflow.log_metrics(
            {f"fine_tune_{k}": v for k, v in m.items()}, step=start + epoch),
    )  # fmt: skip
    for row in rows:
        row["epoch"] += start
    return rows


def tuned_candidate(fit: HeadFit) -> HeadFit:
    """A copy of the fit with a head of its own, for fine-tuning beside the head it came from.

    Fine-tuning changes the head's weights in place; `train.fine_tune.enabled: auto` must still
    be able to serve the untouched head. The candidate averages the image and mirror only:
    the crops view, five more passes per training step, is left to the head.
    """
    import keras

    head = keras.models.clone_model(fit.model)
    head.set_weights(fit.model.get_weights())
    return replace(fit, model=head, crops=False)


def probabilities_on_images(model, split: Split, raw: Path, image_size: int) -> np.ndarray:
    """The served model's class probabilities for a split's photos, read from their files."""
    from taglens.data.images import image_dataset

    probabilities = probabilities_model(model)
    paths = [raw / image for image in split.rows["image"]]
    batches = [
        probabilities.predict(batch, verbose=0) for batch in image_dataset(paths, image_size, 32)
    ]
    return np.concatenate(batches) if batches else np.zeros((0, model.output_shape[-1]))


def log_fine_tune_choice(choice: FineTuneChoice) -> None:
    """Log which model is served (`train.fine_tune.served`), both val accuracies and why."""
    import mlflow

    mlflow.log_param("train.fine_tune.served", choice.report()["served"])
    mlflow.set_tag("fine_tune_why", choice.why)
    mlflow.log_metrics({f"val_accuracy_{name}": v for name, v in choice.val_accuracy.items()})


def fit_hashtags_logged(
    config: TrainConfig,
    fit: HeadFit,
    splits: dict[str, Split],
    posts: list,
    out: Path,
    tuned_val: np.ndarray | None = None,
) -> dict:
    """Fit hashtags.json on the training posts and choose the served ranking; log the choice.

    A served fine-tuned model (`tuned_val`: its validation probabilities, read from the
    images) changes the features the image rankers would read, so with it only popularity and
    the class mixture compete.

    Returns:
        Every ranker's validation metrics, the blend's and the choice (what is served, why).
    """
    import mlflow

    from taglens.training.fit_rankers import RankingInputs, fit_ranking
    from taglens.training.hashtags import fit_hashtag_stats, own_tags

    train_shas = set(splits["train"].rows["sha256"])
    stats = fit_hashtag_stats([post for post in posts if post.sha256 in train_shas],
                              config.base.classes, config.hashtags)  # fmt: skip
    stats.save(artifacts.HASHTAGS.at(out))
    by_sha = {post.sha256: post for post in posts}
    image = config.hashtags.image_rankers and tuned_val is None
    if config.hashtags.image_rankers and not image:
        logger.warning("image rankers skipped: they read cached features, which fine-tuning "
                       "changes; popularity and the class mixture rank hashtags")  # fmt: skip

    def inputs(split: Split, probabilities=None) -> RankingInputs:
        flip = split.views.get("flip") if fit.augmented else None
        features = split.vectors if flip is None else (split.vectors + flip) / 2
        return RankingInputs(
            features=features if image else None,
            colour=split.views.get("colour") if image else None,
            tags=[own_tags(by_sha[sha]) for sha in split.rows["sha256"]],
            probabilities=probabilities,
        )

    val = splits["val"]
    probs_val = fit.predict(val.vectors, val.views) if tuned_val is None else tuned_val
    blend, report = fit_ranking(stats, inputs(splits["train"]), inputs(val, probs_val),
                                config.base.seed)  # fmt: skip
    blend.save(artifacts.RANKERS.at(out))
    mlflow.log_metrics({f"val_hashtag_{name}_{key}": value
                        for name, scores in report["rankers"].items()
                        for key, value in scores.items()})  # fmt: skip
    mlflow.log_params({f"hashtags.blend.{name}": weight for name, weight in
                       blend.weights.items()})  # fmt: skip
    mlflow.log_params({"hashtags.served": blend.choice["served"],
                       "hashtags.tag_weights": blend.choice["tag_weights"],
                       "hashtags.class_mixture.estimator": blend.estimator,
                       "hashtags.class_mixture.sharpen": blend.sharpen})  # fmt: skip
    mlflow.log_dict(blend.choice, "train/hashtag_ranking.json")
    return {"blend_weights": blend.weights, **report}


def served_precision(
    config: TrainConfig,
    model: Any,
    precision: str,
    splits: dict[str, Split],
    raw: Path,
    out: Path,
) -> ServedPrecision:
    """The engine the served model records: quantized to INT8 when its features were INT8."""
    if precision != "int8":
        for stale in (artifacts.INT8_MODEL.at(out), artifacts.INT8_WEIGHTS.at(out)):
            stale.unlink(missing_ok=True)
        return ServedPrecision(served_engine(config.engine, precision), precision, None)
    return quantize_served(model, config.int8, splits["train"], splits["val"], raw, out)


def write_model_dir(
    config: TrainConfig,
    model,
    history: list[dict],
    out: Path,
    reports: Path,
    run_id: str,
    served: ServedPrecision,
    views: tuple[str, ...],
) -> None:
    """Save model.keras, model_info.json and history.csv/png; log them and the pyfunc model.

    `served` is the engine and precision the model serves on (model_info.json records both,
    and the INT8 decision when there was one). `views` (model_info.json's `views`) names the
    views whose probabilities the model averages.
    """
    import mlflow

    from taglens.serving.pyfunc import log_taglens_model

    save_model(model, artifacts.MODEL.at(out))
    info = artifacts.MODEL_INFO.at(out)
    atomic_write_json(info, {
        "classes": list(config.base.classes), "image_size": config.model.image_size,
        "backbone": config.model.backbone,
        "weights_identity": weights_identity(config.model, config.base.seed),
        "run_id": run_id, "experiment": config.base.experiment, "params": config.flat(),
        "engine": served.engine, "precision": served.precision,
        "int8": asdict(served.decision) if served.decision else None,
        "views": list(views),
    })  # fmt: skip
    csv_path = atomic_write_csv(artifacts.HISTORY.at(reports), history, HISTORY_COLUMNS)
    png = eval_plots.plot_history(history, reports / "history.png")
    for path in (csv_path, png, info):
        mlflow.log_artifact(str(path), artifact_path="train")
    log_taglens_model(out, ingest=config.ingest, engine=served.engine)


def baseline_run(config: TrainConfig, splits: dict[str, Split], train_run_id: str) -> dict:
    """Fit and log the logistic-regression reference in its own run of the same experiment."""
    import mlflow

    train, val, test = splits["train"], splits["val"], splits["test"]
    classifier = fit_baseline(train.vectors, train.labels, config.base.seed,
                              config.train.class_weight)  # fmt: skip
    scores = {"val_accuracy": float(classifier.score(val.vectors, val.labels))}
    if len(test.labels):
        scores["test_accuracy"] = float(classifier.score(test.vectors, test.labels))
    with mlflow.start_run(run_name=BASELINE_RUN) as active:
        mlflow.log_params({key: value for key, value in config.flat().items()
                           if key.startswith(("base.", "model.", "train.class_weight"))})
        mlflow.set_tags({"baseline_for": train_run_id, "stage": "train",
                         "backbone": config.model.backbone})  # fmt: skip
        mlflow.log_metrics(scores)
    logger.info("baseline logistic regression: %s", scores)
    return {"baseline_run_id": active.info.run_id,
            **{f"baseline_{key}": value for key, value in scores.items()}}
