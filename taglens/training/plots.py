"""PNG plots of a run: confusion matrices, loss/accuracy curves, misclassified test images."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from taglens.atomic import atomic_open
from taglens.errors import TaglensError

logger = logging.getLogger(__name__)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_confusion(
    matrix: np.ndarray, classes: Sequence[str], path: Path, *, normalized: bool = False
) -> Path:
    """Draw a confusion matrix (rows actual, columns predicted) with the value in each cell."""
    plt = _pyplot()
    matrix = np.asarray(matrix)
    side = max(4.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalized else None)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("confusion matrix (normalized by row)" if normalized else "confusion matrix")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), value in np.ndenumerate(matrix):
        text = f"{value:.2f}" if normalized else str(int(value))
        ax.text(
            col,
            row,
            text,
            ha="center",
            va="center",
            fontsize=8,
            color="white" if value > threshold else "black",
        )
    return _save(fig, path)


def plot_history(rows: Sequence[dict[str, float]], path: Path) -> Path:
    """Loss and accuracy per epoch, train and validation, side by side.

    Raises:
        ValueError: no epochs to plot.
    """
    if not rows:
        raise TaglensError("no training history to plot: train at least one epoch")
    plt = _pyplot()
    epochs = [row["epoch"] for row in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            values = [row.get(key, np.nan) for row in rows]
            ax.plot(epochs, values, style, marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_misclassified(
    images: Sequence[np.ndarray],
    actual: Sequence[str],
    predicted: Sequence[str],
    path: Path,
    columns: int = 6,
) -> Path:
    """A grid of test images titled `true -> predicted`; a note when nothing was misclassified."""
    plt = _pyplot()
    count = len(images)
    rows = max(1, -(-count // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    if count == 0:
        axes[0, 0].text(0, 0.5, "no misclassified test images", fontsize=12)
    for ax, image, truth, guess in zip(axes.ravel(), images, actual, predicted, strict=False):
        ax.imshow(np.clip(np.asarray(image), 0, 255).astype("uint8"))
        ax.set_title(f"{truth} -> {guess}", fontsize=8, color="firebrick")
    return _save(fig, path)
