"""What the clean stage writes: the manifest and dropped tables, clean.json, and its MLflow run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from taglens import artifacts
from taglens.atomic import atomic_write_csv
from taglens.features import clean_report
from taglens.features.outliers import OutlierResult
from taglens.features.split import MANIFEST_COLUMNS, SPLITS
from taglens.params import BaseParams, CleanParams, flatten

DROPPED_COLUMNS = ("id", "sha256", "image", "label", "distance", "threshold")
HELD_OUT = ("val", "test")


@dataclass(frozen=True)
class CleanResult:
    """What clean kept and dropped: reports/clean.json's contents and the files it wrote."""

    report: dict[str, Any]
    manifest: Path
    dropped: Path

    @property
    def kept(self) -> int:
        """Images in the manifest."""
        return int(self.report["totals"]["after"])

    def summary(self) -> str:
        """One line for the terminal."""
        totals = self.report["totals"]
        return (
            f"clean: kept {totals['after']} of {totals['before']} images ({totals['dropped']} "
            f"training images dropped); split {', '.join(f'{s} {totals[s]}' for s in SPLITS)}"
        )


def write_tables(
    posts: Sequence[Any],
    labels: Sequence[str],
    splits: np.ndarray,
    result: OutlierResult,
    out: Path,
) -> tuple[Path, Path]:
    """Write manifest.csv (every kept image, its split) and dropped.csv (with the threshold)."""

    def row(i: int) -> dict[str, Any]:
        return {
            "id": posts[i].id,
            "sha256": posts[i].sha256,
            "image": posts[i].image,
            "label": labels[i],
            "split": splits[i],
            "distance": f"{result.distances[i]:.6g}",
            "threshold": f"{result.thresholds[i]:.6g}",
        }

    manifest = atomic_write_csv(
        artifacts.MANIFEST.at(out), (row(i) for i in np.flatnonzero(result.keep)), MANIFEST_COLUMNS
    )
    dropped = atomic_write_csv(
        artifacts.DROPPED.at(out), (row(i) for i in np.flatnonzero(~result.keep)), DROPPED_COLUMNS
    )
    return manifest, dropped


def build_report(
    params: CleanParams, result: OutlierResult, labels: Sequence[str], splits: np.ndarray
) -> dict[str, Any]:
    """reports/clean.json: the rule, per-class stats, and totals per split.

    It also counts, for information, the val / test images beyond their class's threshold: they
    are kept (only training images are dropped), so the held-out scores stay honest.
    """
    kept = result.keep
    return {
        "enabled": params.enabled,
        "k_std": params.k_std,
        "distance": params.distance,
        "fitted_on": "train",
        "classes": {
            label: {**stats.to_dict(), **_held_out_flags(result, labels, splits, label)}
            for label, stats in result.classes.items()
        },
        "totals": {
            "before": len(labels),
            "after": int(kept.sum()),
            "dropped": int((~kept).sum()),
            **{side: int((splits[kept] == side).sum()) for side in SPLITS},
            **_held_out_flags(result, labels, splits),
        },
    }


def _held_out_flags(
    result: OutlierResult, labels: Sequence[str], splits: np.ndarray, label: str | None = None
) -> dict[str, int]:
    """How many val / test images (of one class, or all) lie beyond the threshold: kept anyway."""
    rows = np.ones(len(labels), bool) if label is None else np.asarray(labels) == label
    return {
        f"flagged_{side}": int((result.flagged & rows & (splits == side)).sum())
        for side in HELD_OUT
    }


def write_plots(
    result: OutlierResult,
    labels: Sequence[str],
    images: Sequence[Path],
    reports: Path,
    contact_sheet_max: int,
) -> list[Path]:
    """The distance histogram and one contact sheet per class that drops images (stale removed)."""
    for stale in reports.glob("dropped_*.png"):  # sheets of classes that now drop nothing
        stale.unlink()
    pngs = [clean_report.plot_distances(result, labels, reports / clean_report.HISTOGRAM_FILE)]
    return pngs + clean_report.write_contact_sheets(
        result, labels, images, reports, contact_sheet_max
    )


def log_clean_run(
    base: BaseParams, params: CleanParams, report: dict[str, Any], files: list[Path]
) -> None:
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
