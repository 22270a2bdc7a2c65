"""Which training images clean drops (the paper's distance-to-centroid rule), and what it writes.

The paper's outlier rule: drop images far from their class centroid in feature space.

Pictures of what clean did: distance histograms with thresholds, and the dropped images.

What the clean stage writes: the manifest and dropped tables, clean.json, and its MLflow run.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from taglens import artifacts
from taglens.atomic import atomic_open, atomic_write_csv
from taglens.errors import TaglensError
from taglens.features.split import MANIFEST_COLUMNS, SPLITS
from taglens.params import BaseParams, CleanParams, flatten

# Below this many images a class has no meaningful spread: all of them are kept.
MIN_CLASS_SIZE = 3
_EPS = 1e-12


@dataclass(frozen=True)
class ClassStats:
    """The distance distribution of one class and the threshold applied to it."""

    label: str
    before: int
    after: int
    mean: float
    std: float
    threshold: float | None  # None: the class was too small (or cleaning off) to drop anything

    def to_dict(self) -> dict:
        """JSON-ready form for reports/clean.json."""
        return {
            "before": self.before,
            "after": self.after,
            "dropped": self.before - self.after,
            "mean": self.mean,
            "std": self.std,
            "threshold": self.threshold,
        }


@dataclass(frozen=True)
class OutlierResult:
    """Which rows to keep, every row's distance to its class centroid, and per-class stats."""

    keep: np.ndarray  # (N,) bool
    distances: np.ndarray  # (N,) float64
    thresholds: np.ndarray  # (N,) float64, the threshold of the row's class (inf when none)
    classes: dict[str, ClassStats]
    flagged: np.ndarray  # (N,) bool, beyond the threshold whatever the split (only fit rows drop)


def class_centre(vectors: np.ndarray, metric: str) -> np.ndarray:
    """The centroid of one class's vectors: their mean, or for `cosine` the mean direction."""
    x = np.asarray(vectors, dtype=np.float64)
    if metric == "euclidean":
        return x.mean(axis=0)
    if metric == "cosine":
        centre = _unit(x).mean(axis=0)
        return centre / max(float(np.linalg.norm(centre)), _EPS)
    raise ValueError(f"clean.distance must be 'euclidean' or 'cosine', got {metric!r}")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)


def distances_to(vectors: np.ndarray, centre: np.ndarray, metric: str) -> np.ndarray:
    """Distance of each row to a centre from `class_centre` (cosine: 1 - cosine similarity)."""
    x = np.asarray(vectors, dtype=np.float64)
    if metric == "euclidean":
        return np.linalg.norm(x - centre, axis=1)
    if metric == "cosine":
        return np.clip(1.0 - _unit(x) @ centre, 0.0, 2.0)
    raise ValueError(f"clean.distance must be 'euclidean' or 'cosine', got {metric!r}")


def centroid_distances(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Distance of each row of one class's vectors to the class centroid.

    `euclidean` uses the mean vector; `cosine` compares directions: one minus the cosine
    similarity to the mean of the L2-normalized vectors (a zero vector is at distance 1).
    """
    return distances_to(vectors, class_centre(vectors, metric), metric)


def find_outliers(
    vectors: np.ndarray,
    labels: Sequence[str],
    *,
    k_std: float,
    metric: str = "euclidean",
    enabled: bool = True,
    fit: np.ndarray | None = None,
) -> OutlierResult:
    """Mark images farther from their class centroid than mean + k_std * std of the class.

    Centroids, means and stds come from the `fit` rows only (the training split), and only `fit`
    rows are dropped: validation and test stay whole, as users' uploads are never filtered, so
    the reported scores are not flattered. Every row is still measured against its class's
    threshold (`flagged`), so a report can say how many held-out images the rule would catch.
    The std is the population std of the fit rows' distances. Classes with fewer than
    `MIN_CLASS_SIZE` fit rows keep everything; `enabled=False` keeps everything but still
    reports distances, so the report shows what the rule would see.

    Raises:
        ValueError: vectors, labels and fit disagree in length, or vectors hold NaN/inf.
    """
    vectors = np.asarray(vectors)
    labels = np.asarray(labels, dtype=str)
    if vectors.ndim != 2 or len(vectors) != len(labels):
        raise TaglensError(
            f"expected one 2-d feature vector per label, got vectors {vectors.shape} for "
            f"{len(labels)} labels: re-run featurize"
        )
    if not np.isfinite(vectors).all():
        raise TaglensError("feature vectors contain NaN or inf: re-run featurize")
    n = len(labels)
    fit = np.ones(n, dtype=bool) if fit is None else np.asarray(fit, dtype=bool)
    if fit.shape != (n,):
        raise ValueError(f"expected one fit flag per row ({n}), got shape {fit.shape}")
    flagged = np.zeros(n, dtype=bool)
    distances = np.zeros(n, dtype=np.float64)
    thresholds = np.full(n, np.inf)
    stats: dict[str, ClassStats] = {}
    for label in sorted(set(labels.tolist())):
        rows = np.flatnonzero(labels == label)
        fitted = rows[fit[rows]]
        reference = fitted if len(fitted) else rows  # a class with no training rows: its own
        d = distances_to(vectors[rows], class_centre(vectors[reference], metric), metric)
        distances[rows] = d
        d_fit = distances[reference]
        mean = float(d_fit.mean())
        std = float(d_fit.std())
        threshold = None
        if enabled and len(fitted) >= MIN_CLASS_SIZE:
            threshold = mean + k_std * std
            # a relative tolerance keeps float noise from dropping points of a zero-spread class
            flagged[rows] = d > threshold + 1e-9 * max(1.0, abs(threshold))
            thresholds[rows] = threshold
        kept = len(rows) - int((flagged[rows] & fit[rows]).sum())
        stats[label] = ClassStats(label, len(rows), kept, mean, std, threshold)
    return OutlierResult(~(flagged & fit), distances, thresholds, stats, flagged)


logger = logging.getLogger(__name__)

HISTOGRAM_FILE = artifacts.DISTANCES.name
THUMB = 96


def safe_name(label: str) -> str:
    """A label made safe for a file name (`dropped_<label>.png`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label) or "_"


def plot_distances(result: OutlierResult, labels: Sequence[str], path: Path) -> Path:
    """One histogram per class (faceted) of distances to the centroid, threshold in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    labels = np.asarray(labels, dtype=str)
    classes = sorted(result.classes)
    cols = min(5, max(1, len(classes)))
    rows = math.ceil(len(classes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, label in zip(axes.flat, classes, strict=False):
        stats = result.classes[label]
        mask = labels == label
        edges = np.histogram_bin_edges(result.distances[mask], bins=20)
        ax.hist(
            [result.distances[mask & result.keep], result.distances[mask & ~result.keep]],
            bins=edges,
            stacked=True,
            color=["tab:blue", "tab:orange"],
        )
        if stats.threshold is not None:
            ax.axvline(stats.threshold, color="tab:red", linestyle="--")
        ax.set_title(f"{label}: {stats.after}/{stats.before} kept", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(classes) :]:
        ax.axis("off")
    handles = [
        Patch(color="tab:blue", label="kept"),
        Patch(color="tab:orange", label="dropped"),
        Line2D([], [], color="tab:red", linestyle="--", label="mean + k*std"),
    ]
    fig.legend(handles=handles, loc="upper right", fontsize=7, ncols=3)
    fig.supxlabel("distance to class centroid", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=80)
    plt.close(fig)
    return path


def shows_photos(path: Path) -> bool:
    """Whether a report file is a contact sheet of photos (kept out of MLflow by default)."""
    return Path(path).name.startswith("dropped_")


def contact_sheet(images: Sequence[Path], captions: Sequence[str], path: Path) -> Path:
    """A grid of thumbnails with captions (the distance), written as PNG."""
    from PIL import Image, ImageDraw

    from taglens.data.images import open_image

    cols = min(8, max(1, len(images)))
    rows = max(1, math.ceil(len(images) / cols))
    sheet = Image.new("RGB", (cols * THUMB, rows * (THUMB + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image_path, caption) in enumerate(zip(images, captions, strict=True)):
        x = (i % cols) * THUMB
        y = (i // cols) * (THUMB + 14)
        try:
            with open_image(image_path) as image:
                thumb = image.convert("RGB")
                thumb.thumbnail((THUMB, THUMB))
            sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
        except OSError as exc:  # a missing picture must not lose the rest of the report
            logger.warning("contact sheet: cannot read %s (%s)", image_path, exc)
        draw.text((x + 2, y + THUMB), caption, fill="black")
    with atomic_open(path, "wb") as handle:
        sheet.save(handle, format="PNG")
    return path


def write_contact_sheets(
    result: OutlierResult,
    labels: Sequence[str],
    images: Sequence[Path],
    out_dir: Path,
    max_images: int,
) -> list[Path]:
    """One sheet per class with dropped images, farthest first, at most `max_images` each."""
    labels = np.asarray(labels, dtype=str)
    written = []
    if max_images == 0:
        return written
    for label in sorted(result.classes):
        rows = np.flatnonzero((labels == label) & ~result.keep)
        if not len(rows):
            continue
        rows = rows[np.argsort(-result.distances[rows])][:max_images]
        written.append(
            contact_sheet(
                [images[i] for i in rows],
                [f"d={result.distances[i]:.3g}" for i in rows],
                out_dir / f"dropped_{safe_name(label)}.png",
            )
        )
    return written


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
    pngs = [plot_distances(result, labels, reports / HISTOGRAM_FILE)]
    return pngs + write_contact_sheets(result, labels, images, reports, contact_sheet_max)


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
            if base.log_photos or not shows_photos(path):
                mlflow.log_artifact(str(path), artifact_path="clean")
