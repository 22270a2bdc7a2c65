"""clean: split by content, then drop training images far from their class centroid."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from taglens import artifacts
from taglens.atomic import atomic_write_json
from taglens.cli import add_stage_inputs, run_stage
from taglens.data.posts import read_raw_posts
from taglens.errors import TaglensError
from taglens.features import cleaning
from taglens.features.cleaning import CleanResult, find_outliers
from taglens.features.split import content_split
from taglens.features.store import read_features
from taglens.params import BaseParams, CleanParams

logger = logging.getLogger(__name__)


def run(
    base: BaseParams,
    params: CleanParams,
    *,
    raw: Path,
    features: Path,
    out: Path,
    reports: Path,
    metrics: Path,
) -> CleanResult:
    """Write the manifest (every val/test image, the kept training images), dropped.csv, report.

    The split comes first and depends on each photo alone (features.split), so it is stable as
    data grows. The outlier rule is then fitted on the training split and drops training images
    only; the report counts, for information, the val/test images it would have flagged.

    Raises:
        MissingArtifactError: posts.jsonl or features.npz is missing.
        TaglensError: the features do not belong to these posts (featurize is stale).
    """
    raw = Path(raw)
    out = Path(out)
    reports = Path(reports)
    posts = read_raw_posts(raw)
    artifacts.FEATURES.require(features)  # a missing file fails like every other upstream file
    shas, vectors = read_features(features)
    if shas.tolist() != [post.sha256 for post in posts]:
        raise TaglensError(
            f"{features} does not match {artifacts.POSTS.at(raw)} (different images or order): "
            "re-run the featurize stage"
        )
    labels = [post.label for post in posts]
    unknown = sorted(set(labels) - set(base.classes)) if base.classes else []  # null: the labels
    if unknown:
        logger.warning("labels not in base.classes are kept as classes: %s", ", ".join(unknown))
    splits = content_split(
        [post.sha256 for post in posts],
        [post.owner for post in posts],
        val_fraction=params.val_fraction,
        test_fraction=params.test_fraction,
        seed=base.seed,
    )
    result = find_outliers(
        vectors,
        labels,
        k_std=params.k_std,
        metric=params.distance,
        enabled=params.enabled,
        fit=splits == "train",
    )
    manifest, dropped = cleaning.write_tables(posts, labels, splits, result, out)
    report = cleaning.build_report(params, result, labels, splits)
    atomic_write_json(metrics, report)
    pngs = cleaning.write_plots(
        result, labels, [raw / post.image for post in posts], reports, params.contact_sheet_max
    )
    cleaning.log_clean_run(base, params, report, [Path(metrics), *pngs])
    return CleanResult(report, manifest, dropped)


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m stages.clean --params params.yaml --raw ... --features ...`."""
    parser = argparse.ArgumentParser(description=__doc__)
    add_stage_inputs(parser, "params", "raw", "features")
    parser.add_argument(
        "--out",
        type=Path,
        default=artifacts.CLEAN_DIR,
        help=(
            f"where {artifacts.MANIFEST.name} and {artifacts.DROPPED.name} go (default %(default)s)"
        ),
    )
    parser.add_argument(
        "--reports",
        type=Path,
        default=artifacts.CLEAN_PLOTS_DIR,
        help="histogram and contact sheets go here (default %(default)s)",
    )
    parser.add_argument(
        "--metrics",
        type=Path,
        default=artifacts.CLEAN_REPORT.default,
        help="the clean report: counts per class and split (default %(default)s)",
    )
    args = parser.parse_args(argv)
    return run_stage(
        args,
        lambda params: run(
            params.base,
            params.clean,
            raw=args.raw,
            features=args.features,
            out=args.out,
            reports=args.reports,
            metrics=args.metrics,
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
