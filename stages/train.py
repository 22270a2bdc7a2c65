"""train: fit the head on cached features (or a sweep of heads), then save the served model."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from taglens import artifacts
from taglens.atomic import atomic_write_json
from taglens.cli import add_stage_inputs, run_stage
from taglens.data.posts import read_raw_posts
from taglens.model.drift import DriftReference
from taglens.model.full_model import (
    fine_tune_logged,
    probabilities_on_images,
    served_model,
    tuned_candidate,
    write_model_folder,
)
from taglens.model.int8_model import served_precision
from taglens.model.pyfunc import log_taglens_model
from taglens.model.rankers import fit_served_ranking
from taglens.params import (
    BaseParams,
    HashtagParams,
    IngestParams,
    Int8Params,
    ModelParams,
    Params,
    TrainParams,
)
from taglens.training.baseline import baseline_run
from taglens.training.fine_tune_choice import choose_fine_tuned, log_fine_tune_choice
from taglens.training.head import HeadFit, fit_head, head_rows
from taglens.training.run import TrainConfig, TrainResult, log_data, write_history
from taglens.training.search import (
    default_search,
    grid,
    parse_sweep_arg,
    search_note,
    setting_report,
    sweep_logged,
)
from taglens.training.splits import (
    Split,
    check_feature_meta,
    load_splits,
    manifest_classes,
    read_manifest,
)
from taglens.training.views_choice import choose_colour, choose_crops, log_choice

logger = logging.getLogger(__name__)

# the per-epoch metrics of the head refitted on the vectors and the colour view (train.colour)
COLOUR_REFIT_PREFIX = "colour_refit_"


def run(
    base: BaseParams,
    model: ModelParams,
    params: TrainParams,
    hashtags: HashtagParams,
    ingest: IngestParams,
    *,
    raw: Path,
    features: Path,
    clean: Path,
    out: Path,
    reports: Path = artifacts.REPORTS_DIR,
    sweep: dict[str, tuple] | None = None,
    engine: str,
    int8: Int8Params,
    max_upload_mb: float,
) -> TrainResult:
    """Train in an MLflow run and write models/ (model, info, hashtags) and reports/history.csv.

    `ingest` is not used to train: it is logged with the model, which checks request images
    with it. The run logs these five sections only. `engine` (`featurize.engine`) is recorded
    with the logged model, which `mlflow models serve` then runs on. When featurize's vectors
    are INT8 (meta.json's `precision`), the served model is quantized too (`int8`,
    `featurize.int8`; taglens.model.int8_model) and serves on openvino-int8 if it keeps
    accuracy, on openvino otherwise.
    """
    import mlflow

    if base.classes is None:  # the classes the source found, as clean kept them
        base = base.model_copy(update={"classes": manifest_classes(clean)})
    config = TrainConfig(base, model, params, hashtags, ingest, engine, int8)
    classes = list(base.classes)
    meta = check_feature_meta(features, model, base.seed)
    splits = load_splits(features, read_manifest(clean, classes), classes)
    train = splits["train"]
    val = splits["val"]
    posts = read_raw_posts(raw)

    def log_epoch_as(prefix: str) -> Callable[[int, dict[str, float]], None]:
        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            mlflow.log_metrics({f"{prefix}{name}": value for name, value in metrics.items()}, epoch)

        return on_epoch

    def fit_one(train_params: TrainParams, on_epoch, scale: float | None = None) -> HeadFit:
        x_train, flip_train = head_rows(train.vectors, train.views, scale)
        x_val, flip_val = head_rows(val.vectors, val.views, scale)
        fit = fit_head(
            (x_train, train.labels),
            (x_val, val.labels),
            len(classes),
            train_params,
            base.seed,
            on_epoch,
            flips=(flip_train, flip_val),
        )
        return replace(fit, colour_scale=scale)

    settings = grid(params.sweep, sweep)
    space = "sweep"
    if not settings and params.search.enabled:
        settings = default_search(params.search, base.seed)
        space = "default"
    # The params a sweep or search varies go on this run (the one holding the model) once the
    # best is known.
    swept = {f"train.{key}" for setting in settings for key in setting}
    if settings:
        logger.info("%s", search_note(space, swept))
    with mlflow.start_run(run_name=config.run_name(len(settings))) as active:
        run_id = active.info.run_id
        mlflow.log_params({key: value for key, value in config.flat().items() if key not in swept})
        log_data(config, meta, splits, {"raw": raw, "features": features, "clean": clean})
        if settings:
            fit, best = sweep_logged(config, settings, fit_one, swept, space, len(val.labels))
        else:
            fit = fit_one(params, log_epoch_as(""))
            best = params
        fit, colour = choose_colour(
            fit,
            # the refit's curves beside the chosen setting's: it is the head served if it wins
            lambda scale: fit_one(best, log_epoch_as(COLOUR_REFIT_PREFIX), scale),
            train.vectors,
            train.views,
            (val.vectors, val.views, val.labels),
            params.colour,
            params.search.rule,
        )
        log_choice(colour, "train.head_colour", "colour_why", "val_accuracy_head_")
        fit, views = choose_crops(
            fit, val.vectors, val.views, val.labels, params.crops, params.search.rule
        )
        log_choice(views, "train.views_crops", "views_why", "val_accuracy_views_")
        history = list(fit.history)
        precision = meta.get("precision", "fp32")  # older features files are FP32
        served = served_model(config, fit, train, raw, precision)
        head_fit = fit
        tuned_val = None
        tuning = None
        if params.fine_tune.enabled:
            served, fit, history, tuned_val, tuning = fine_tune_step(
                config, fit, served, history, splits, raw, precision
            )

        summary = {
            "run_id": run_id,
            "val_accuracy": fit.val_accuracy,
            "val_loss": fit.val_loss,
            "epochs_run": len(fit.history),
            "n_train": len(train.labels),
            "n_val": len(val.labels),
        }
        summary.update(setting_report(best, space if settings else None, swept, head_fit))
        summary["views"] = {"served": list(fit.views), **views.report()}
        summary["head_colour"] = colour.report()
        if tuning is not None:
            summary["fine_tune"] = tuning.report()
            summary["fine_tune_val_accuracy"] = tuning.val_accuracy["fine_tuned"]
        mlflow.log_metrics({"best_val_accuracy": fit.val_accuracy, "best_val_loss": fit.val_loss})
        summary["hashtags_val"] = fit_served_ranking(config, fit, splits, posts, out, tuned_val)
        write_drift_reference(fit, val, classes, fine_tuned=tuned_val is not None, out=out)
        served_as = served_precision(config, served, precision, splits, raw, out)
        summary["precision"] = served_as.precision
        write_history(history, reports)
        write_model_folder(config.with_train(best), served, out, run_id, served_as, fit.views)
        log_taglens_model(
            out, ingest=config.ingest, max_upload_mb=max_upload_mb, engine=served_as.engine
        )
    if params.baseline:
        summary.update(baseline_run(config, splits, run_id))
    atomic_write_json(artifacts.TRAIN_REPORT.at(reports), summary)
    return TrainResult(summary, Path(out))


def fine_tune_step(
    config: TrainConfig,
    fit: HeadFit,
    served,
    history: list[dict],
    splits: dict[str, Split],
    raw: Path,
    precision: str,
) -> tuple:
    """Fine-tune a copy of the served model; serve it as `train.fine_tune.enabled` says.

    `precision` is the cached vectors' (`served_model` checks FP32 ones against the backbone).

    Returns:
        The served model, its fit, its history, the fine-tuned model's validation probabilities
        when it is served (else None), and the choice (`FineTuneChoice`).
    """
    train = splits["train"]
    val = splits["val"]
    params = config.train
    candidate = tuned_candidate(fit)
    tuned = served_model(config, candidate, train, raw, precision)
    rows = fine_tune_logged(tuned, config, train, val, raw, len(history))
    tuned_val = probabilities_on_images(tuned, val, raw, config.model.image_size)
    labels = np.asarray(val.labels, int)
    head_right = fit.predict(val.vectors, val.views).argmax(axis=1) == labels
    tuning = choose_fine_tuned(
        head_right, tuned_val.argmax(axis=1) == labels, params.fine_tune.enabled, params.search.rule
    )
    log_fine_tune_choice(tuning)
    logger.info("fine-tuning: %s", tuning.why)
    if not tuning.tuned:
        return served, fit, history, None, tuning
    picked = np.clip(tuned_val[np.arange(len(labels)), labels], 1e-7, 1.0)
    candidate = replace(
        candidate,
        val_accuracy=tuning.val_accuracy["fine_tuned"],
        val_loss=float(-np.mean(np.log(picked))),
    )
    return tuned, candidate, history + rows, tuned_val, tuning


def write_drift_reference(
    fit: HeadFit, val: Split, classes: list[str], *, fine_tuned: bool, out: Path
) -> Path | None:
    """Write the served model's validation outputs as the nightly drift check's reference.

    The head on the cached validation vectors is the served model's output on those photos
    (the extractor was checked against them). Fine-tuning changes the backbone, so the cached
    vectors no longer match: no reference then, and batch runs judge no drift.
    """
    path = artifacts.DRIFT_REFERENCE.at(out)
    path.unlink(missing_ok=True)
    if fine_tuned:
        logger.warning("no drift reference: fine-tuning changed the features the head saw")
        return None
    probabilities = fit.predict(val.vectors, val.views)
    return DriftReference.from_probabilities(probabilities, classes).save(path)


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m stages.train --params params.yaml ... [--sweep key=v1,v2]`."""
    parser = argparse.ArgumentParser(description=__doc__)
    add_stage_inputs(parser, "params", "raw", "features", "clean")
    parser.add_argument(
        "--out",
        type=Path,
        default=artifacts.MODELS_DIR,
        help="the model folder to write (default %(default)s)",
    )
    parser.add_argument(
        "--reports",
        type=Path,
        default=artifacts.REPORTS_DIR,
        help=(
            f"folder for {artifacts.TRAIN_REPORT.name}, {artifacts.HISTORY.name} and "
            f"{artifacts.HISTORY_PLOT.name} (default %(default)s)"
        ),
    )
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="sweep a train key over values (repeat for a grid)",
    )
    args = parser.parse_args(argv)

    def call(params: Params) -> TrainResult:
        sweep = dict(parse_sweep_arg(text) for text in args.sweep)
        return run(
            params.base,
            params.model,
            params.train,
            params.hashtags,
            params.ingest,
            raw=args.raw,
            features=args.features,
            clean=args.clean,
            out=args.out,
            reports=args.reports,
            sweep=sweep,
            engine=params.featurize.engine,
            int8=params.featurize.int8,
            max_upload_mb=params.serve.max_upload_mb,
        )

    return run_stage(args, call, text=TrainResult.line)


if __name__ == "__main__":
    raise SystemExit(main())
