"""clean: split by content, then drop training images far from their class centroid."""

from __future__ import annotations

import argparse
import csv
import io
import logging
from pathlib import Path

import numpy as np

from taglens.atomic import atomic_write_json, atomic_write_text
from taglens.cli import add_stage_inputs, run_main, setup_logging
from taglens.data.posts import POSTS_FILE, read_posts
from taglens.errors import TaglensError
from taglens.features import clean_report
from taglens.features.outliers import find_outliers
from taglens.features.split import MANIFEST_COLUMNS, SPLITS, content_split
from taglens.features.store import read_features
from taglens.params import BaseParams, CleanParams, flatten, load_params

logger = logging.getLogger(__name__)
DROPPED_COLUMNS = ("id", "sha256", "image", "label", "distance", "threshold")


def _csv(rows: list[dict], columns: tuple[str, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def run(
    base: BaseParams,
    params: CleanParams,
    *,
    raw: Path,
    features: Path,
    out: Path,
    reports: Path,
    metrics: Path,
) -> dict:
    """Write the manifest (every val/test image, the kept training images), dropped.csv, report.

    The split comes first and depends on each photo alone (features.split), so it is stable as
    data grows. The outlier rule is then fitted on the training split and drops training images
    only; the report counts, for information, the val/test images it would have flagged.

    Returns:
        The contents of `metrics` (reports/clean.json).

    Raises:
        FileNotFoundError: posts.jsonl or features.npz is missing.
        ValueError: the features do not belong to these posts (featurize is stale).
    """
    raw, out, reports = Path(raw), Path(out), Path(reports)
    posts = read_posts(raw / POSTS_FILE) if (raw / POSTS_FILE).is_file() else None
    if not posts:
        raise FileNotFoundError(f"no posts in {raw / POSTS_FILE}: run the scrape stage first")
    shas, vectors = read_features(features)
    if shas.tolist() != [post.sha256 for post in posts]:
        raise TaglensError(
            f"{features} does not match {raw / POSTS_FILE} (different images or order): "
            "re-run the featurize stage"
        )
    labels = [post.label for post in posts]
    unknown = sorted(set(labels) - set(base.classes)) if base.classes else []  # null: the labels
    if unknown:
        logger.warning("labels not in base.classes are kept as classes: %s", ", ".join(unknown))
    splits = content_split(
        [post.sha256 for post in posts], [post.owner for post in posts],
        val_fraction=params.val_fraction, test_fraction=params.test_fraction, seed=base.seed,
    )  # fmt: skip
    result = find_outliers(
        vectors, labels, k_std=params.k_std, metric=params.distance, enabled=params.enabled,
        fit=splits == "train",
    )  # fmt: skip
    kept = np.flatnonzero(result.keep)
    manifest = [
        {"id": posts[i].id, "sha256": posts[i].sha256, "image": posts[i].image,
         "label": labels[i], "split": splits[i], "distance": f"{result.distances[i]:.6g}"}
        for i in kept
    ]  # fmt: skip
    dropped = [
        {"id": posts[i].id, "sha256": posts[i].sha256, "image": posts[i].image,
         "label": labels[i], "distance": f"{result.distances[i]:.6g}",
         "threshold": f"{result.thresholds[i]:.6g}"}
        for i in np.flatnonzero(~result.keep)
    ]  # fmt: skip
    atomic_write_text(out / "manifest.csv", _csv(manifest, MANIFEST_COLUMNS))
    atomic_write_text(out / "dropped.csv", _csv(dropped, DROPPED_COLUMNS))

    split_counts = {side: int((splits[kept] == side).sum()) for side in SPLITS}
    report = {
        "enabled": params.enabled, "k_std": params.k_std, "distance": params.distance,
        "fitted_on": "train",
        "classes": {label: {**stats.to_dict(), **_held_out_flags(result, labels, splits, label)}
                    for label, stats in result.classes.items()},
        "totals": {"before": len(posts), "after": len(manifest), "dropped": len(dropped),
                   **split_counts, **_held_out_flags(result, labels, splits)},
    }  # fmt: skip
    atomic_write_json(metrics, report)
    for stale in reports.glob("dropped_*.png"):  # sheets of classes that now drop nothing
        stale.unlink()
    pngs = [clean_report.plot_distances(result, labels, reports / clean_report.HISTOGRAM_FILE)]
    pngs += clean_report.write_contact_sheets(
        result, labels, [raw / post.image for post in posts], reports, params.contact_sheet_max
    )
    logger.info(
        "clean: kept %d of %d images (%d training images dropped); split %s; val/test images "
        "beyond the threshold, kept: %d/%d",
        len(manifest), len(posts), len(dropped), split_counts,
        report["totals"]["flagged_val"], report["totals"]["flagged_test"],
    )  # fmt: skip
    _log_to_mlflow(base, params, report, [metrics, *pngs])
    return report


def _held_out_flags(
    result, labels: list[str], splits: np.ndarray, label: str | None = None
) -> dict:
    """How many val / test images (of one class, or all) lie beyond the threshold: kept anyway."""
    rows = np.ones(len(labels), bool) if label is None else np.asarray(labels) == label
    return {f"flagged_{side}": int((result.flagged & rows & (splits == side)).sum())
            for side in ("val", "test")}  # fmt: skip


def _log_to_mlflow(base: BaseParams, params: CleanParams, report: dict, files: list[Path]) -> None:
    """A run named `clean` with the params, counts per class and split, and the PNGs."""
    import mlflow

    with mlflow.start_run(run_name="clean", nested=mlflow.active_run() is not None):
        mlflow.log_params({f"clean.{k}": v for k, v in flatten(params).items()})
        mlflow.log_param("base.seed", base.seed)
        metrics = {f"clean.{k}": float(v) for k, v in report["totals"].items()}
        for label, stats in report["classes"].items():
            metrics[f"clean.{label}.before"] = stats["before"]
            metrics[f"clean.{label}.after"] = stats["after"]
        mlflow.log_metrics(metrics)
        for path in files:
            if base.log_photos or not clean_report.shows_photos(path):
                mlflow.log_artifact(str(path), artifact_path="clean")


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m stages.clean --params params.yaml --raw ... --features ...`."""
    parser = argparse.ArgumentParser(description=__doc__)
    add_stage_inputs(parser, "params", "raw", "features")
    parser.add_argument("--out", type=Path, default=Path("data/clean"),
                        help="where manifest.csv and dropped.csv go (default %(default)s)")
    parser.add_argument("--reports", type=Path, default=Path("reports/clean"),
                        help="histogram and contact sheets go here (default %(default)s)")
    parser.add_argument("--metrics", type=Path, default=Path("reports/clean.json"),
                        help="the clean report: counts per class and split (default %(default)s)")
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        from taglens.lifecycle.tracking import configure_tracking

        params = load_params(args.params)
        configure_tracking(params.base.experiment)
        run(
            params.base, params.clean, raw=args.raw, features=args.features, out=args.out,
            reports=args.reports, metrics=args.metrics,
        )  # fmt: skip
        return 0

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
