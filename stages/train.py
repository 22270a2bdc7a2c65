"""train: fit the head on cached features (or a sweep of heads), then save the served model."""

from __future__ import annotations

import argparse
import csv
import io
import logging
from pathlib import Path
from typing import Any

from taglens import artifacts
from taglens.atomic import atomic_write_json, atomic_write_text
from taglens.cli import add_stage_inputs, run_main, setup_logging
from taglens.data.images import load_batch
from taglens.features.backbones import build_feature_extractor
from taglens.lifecycle import lineage
from taglens.lifecycle.tracking import configure_tracking, log_split_datasets
from taglens.params import Params, TrainParams, flatten, load_params
from taglens.serving.predictor import HASHTAGS_FILE, RANKERS_FILE
from taglens.training import eval_plots, train_data
from taglens.training.full_model import assemble, fine_tune, save_model, verify_extractor
from taglens.training.hashtags import fit_hashtag_stats, own_tags, post_tags
from taglens.training.head import HISTORY_COLUMNS, HeadFit, fit_baseline, fit_head, predict_views
from taglens.training.sweep import default_search, grid, parse_sweep_arg, run_sweep, setting_name

logger = logging.getLogger(__name__)

VERIFY_IMAGES = 4  # training images re-run through the extractor to check the cached vectors
BASELINE_RUN = "baseline-logreg"


def run(
    params: Params,
    *,
    raw: Path,
    features: Path,
    clean: Path,
    out: Path,
    reports: Path = Path("reports"),
    sweep: dict[str, tuple] | None = None,
) -> dict[str, Any]:
    """Train in an MLflow run and write models/ (model, info, hashtags) and reports/history.csv.

    Returns:
        The summary also written to reports/train.json (run ids, validation scores, baseline).
    """
    import mlflow

    if params.base.classes is None:  # the classes the source found, as clean kept them
        found = train_data.manifest_classes(clean)
        base = params.base.model_copy(update={"classes": found})
        params = params.model_copy(update={"base": base})
    base, classes = params.base, list(params.base.classes)
    meta = train_data.check_feature_meta(features, params.model, base.seed)
    splits = train_data.load_splits(features, train_data.read_manifest(clean, classes), classes)
    train, val = splits["train"], splits["val"]
    posts = artifacts.read_posts(raw)
    train_shas = set(train.rows["sha256"])
    train_posts = [post for post in posts if post.sha256 in train_shas]

    def fit_one(train_params: TrainParams, on_epoch) -> HeadFit:
        return fit_head((train.vectors, train.labels), (val.vectors, val.labels), len(classes),
                        train_params, base.seed, on_epoch,
                        flips=(train.views.get("flip"), val.views.get("flip")))  # fmt: skip

    settings, space = grid(params.train.sweep, sweep), "sweep"
    if not settings and params.train.search.enabled:
        settings, space = default_search(params.train.search, base.seed), "default"
    # The params a sweep or search varies go on this run (the one holding the model) once the
    # best is known.
    swept = {f"train.{key}" for setting in settings for key in setting}
    with mlflow.start_run(run_name=_run_name(params, len(settings))) as active:
        run_id = active.info.run_id
        flat = flatten(params)
        mlflow.log_params({key: value for key, value in flat.items() if key not in swept})
        record = lineage.record(
            Path.cwd(), {"raw": raw, "features": features, "clean": clean},
            {"backbone": params.model.backbone, "image_size": params.model.image_size,
             "weights_identity": meta["weights_identity"], "experiment": base.experiment},
        )  # fmt: skip
        mlflow.set_tags({"stage": "train", **lineage.as_tags(record)})
        log_split_datasets({name: split.rows for name, split in splits.items()},
                           digest=record.get("data.clean", "unknown"),
                           source=str(artifacts.MANIFEST.at(clean)))  # fmt: skip
        best_params = params.train
        if settings:
            trials, best = run_sweep(params.train, settings, fit_one, flat)
            fit, best_params = trials[best].fit, trials[best].params
            best_flat = flatten(params.model_copy(update={"train": best_params}))
            mlflow.log_params({key: best_flat[key] for key in sorted(swept)})
            mlflow.set_tags({"sweep_size": str(len(trials)), "search_space": space,
                             "best_child_run_id": trials[best].run_id,
                             "best_setting": setting_name(trials[best].setting)})  # fmt: skip
            for row in fit.history:
                mlflow.log_metrics(_metrics(row), step=int(row["epoch"]))
        else:
            fit = fit_one(params.train, lambda epoch, m: mlflow.log_metrics(m, step=epoch))
        history = list(fit.history)

        extractor = build_feature_extractor(params.model, base.seed)
        probe = train.rows["image"].head(VERIFY_IMAGES).map(lambda image: raw / image).tolist()
        verify_extractor(extractor, load_batch(probe, params.model.image_size).numpy(),
                         train.vectors[:VERIFY_IMAGES])  # fmt: skip
        model = assemble(extractor, fit.model, flip=fit.augmented,
                         colour=params.hashtags.image_rankers and "colour" in train.views)
        if params.train.fine_tune.enabled:
            history += _fine_tune(model, params, train, val, raw, start=len(history))

        summary = {"run_id": run_id, "val_accuracy": fit.val_accuracy, "val_loss": fit.val_loss,
                   "epochs_run": len(fit.history), "n_train": len(train.labels),
                   "n_val": len(val.labels)}  # fmt: skip
        if params.train.fine_tune.enabled and history:
            summary["fine_tune_val_accuracy"] = history[-1].get("val_accuracy")
        mlflow.log_metrics({"best_val_accuracy": fit.val_accuracy, "best_val_loss": fit.val_loss})
        stats = fit_hashtag_stats(train_posts, params.base.classes, params.hashtags)
        stats.save(out / HASHTAGS_FILE)
        (out / RANKERS_FILE).unlink(missing_ok=True)
        if params.hashtags.image_rankers and params.train.fine_tune.enabled:
            logger.warning("image rankers skipped: they read cached features, which fine-tuning "
                           "changed; the class mixture ranks hashtags")  # fmt: skip
        elif params.hashtags.image_rankers:
            summary["hashtags_val"] = _fit_rankers(stats, fit, splits, posts, base.seed, out)
        _write_outputs(params, best_params, model, history, out, reports, run_id)
    if params.train.baseline:
        summary.update(_baseline(params, splits, run_id))
    atomic_write_json(reports / "train.json", summary)
    return summary


def _run_name(params: Params, sweep_size: int) -> str:
    """`train vgg19-224px lr=0.001` (or `... sweep of 4`): tells runs apart in MLflow's list."""
    model = f"{params.model.backbone}-{params.model.image_size}px"
    if sweep_size:
        return f"train {model} sweep of {sweep_size}"
    return f"train {model} lr={params.train.learning_rate:g}"


def _metrics(row: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in row.items() if key != "epoch"}


def _fine_tune(model, params: Params, train, val, raw: Path, start: int) -> list[dict]:
    import mlflow

    def paths(split) -> list[Path]:
        return [raw / image for image in split.rows["image"]]

    rows = fine_tune(
        model, params.model, params.train.fine_tune,
        (paths(train), train.labels), (paths(val), val.labels),
        label_smoothing=params.train.label_smoothing, seed=params.base.seed,
        on_epoch=lambda epoch, m: mlflow.log_metrics(
            {f"fine_tune_{k}": v for k, v in m.items()}, step=start + epoch),
    )  # fmt: skip
    for row in rows:
        row["epoch"] += start
    return rows


def _fit_rankers(stats, fit: HeadFit, splits: dict, posts: list, seed: int, out: Path) -> dict:
    """Fit the image rankers on the features the served model outputs; log the comparison."""
    import mlflow

    from taglens.training.fit_rankers import fit_image_rankers

    by_sha = {post.sha256: post for post in posts}

    def inputs(split, tags) -> tuple:
        flip = split.views.get("flip") if fit.augmented else None
        features = split.vectors if flip is None else (split.vectors + flip) / 2
        return features, split.views.get("colour"), [tags(by_sha[s]) for s in split.rows["sha256"]]

    train, val = splits["train"], splits["val"]
    probs_val = predict_views(fit.model, val.vectors, val.views.get("flip") if fit.augmented
                              else None)  # fmt: skip
    rankers, report = fit_image_rankers(stats, inputs(train, post_tags),
                                        (*inputs(val, own_tags), probs_val), seed)  # fmt: skip
    rankers.save(out / RANKERS_FILE)
    low_lift = report.pop("low_lift")
    mlflow.log_metrics({f"val_hashtag_{name}_{key}": value for name, scores in report.items()
                        for key, value in scores.items()})  # fmt: skip
    mlflow.log_params({**{f"hashtags.blend.{name}": weight for name, weight in
                          rankers.weights.items()},
                       "hashtags.blend.low_lift_weight": low_lift["weight"]})  # fmt: skip
    mlflow.log_dict(low_lift, "train/low_lift_tags.json")
    report["low_lift"] = low_lift
    return {"blend_weights": rankers.weights, "rankers": report}


def _write_outputs(params: Params, best: TrainParams, model, history: list[dict],
                   out: Path, reports: Path, run_id: str) -> None:
    import mlflow

    from taglens.serving.pyfunc import log_taglens_model

    save_model(model, out / "model.keras")
    trained = params.model_copy(update={"train": best})
    atomic_write_json(out / "model_info.json", {
        "classes": list(params.base.classes), "image_size": params.model.image_size,
        "backbone": params.model.backbone, "weights_identity": _identity(params),
        "run_id": run_id, "experiment": params.base.experiment, "params": flatten(trained),
    })  # fmt: skip
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({key: row.get(key, "") for key in HISTORY_COLUMNS} for row in history)
    atomic_write_text(reports / "history.csv", buffer.getvalue())
    eval_plots.plot_history(history, reports / "history.png")
    for path in (reports / "history.csv", reports / "history.png", out / "model_info.json"):
        mlflow.log_artifact(str(path), artifact_path="train")
    log_taglens_model(out, ingest=params.ingest)


def _identity(params: Params) -> str:
    from taglens.features.backbones import weights_identity

    return weights_identity(params.model, params.base.seed)


def _baseline(params: Params, splits: dict, train_run_id: str) -> dict[str, Any]:
    """Fit and log the logistic-regression reference in its own run of the same experiment."""
    import mlflow

    train, val, test = splits["train"], splits["val"], splits["test"]
    classifier = fit_baseline(train.vectors, train.labels, params.base.seed,
                              params.train.class_weight)  # fmt: skip
    scores = {"val_accuracy": float(classifier.score(val.vectors, val.labels))}
    if len(test.labels):
        scores["test_accuracy"] = float(classifier.score(test.vectors, test.labels))
    with mlflow.start_run(run_name=BASELINE_RUN) as active:
        mlflow.log_params({key: value for key, value in flatten(params).items()
                           if key.startswith(("base.", "model.", "train.class_weight"))})
        mlflow.set_tags({"baseline_for": train_run_id, "stage": "train",
                         "backbone": params.model.backbone})  # fmt: skip
        mlflow.log_metrics(scores)
    logger.info("baseline logistic regression: %s", scores)
    return {"baseline_run_id": active.info.run_id,
            **{f"baseline_{key}": value for key, value in scores.items()}}


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m stages.train --params params.yaml ... [--sweep key=v1,v2]`."""
    parser = argparse.ArgumentParser(description=__doc__)
    add_stage_inputs(parser, "params", "raw", "features", "clean")
    parser.add_argument("--out", type=Path, default=Path("models"),
                        help="the model folder to write (default %(default)s)")
    parser.add_argument("--reports", type=Path, default=Path("reports"),
                        help="folder for train.json and history.csv/png (default %(default)s)")
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                        help="sweep a train key over values (repeat for a grid)")
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        params = load_params(args.params)
        sweep = dict(parse_sweep_arg(text) for text in args.sweep)
        configure_tracking(params.base.experiment)
        summary = run(params, raw=args.raw, features=args.features, clean=args.clean,
                      out=args.out, reports=args.reports, sweep=sweep)  # fmt: skip
        print(f"trained: val_accuracy {summary['val_accuracy']:.4f} (run {summary['run_id']})")
        return 0

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())

