"""Pictures of what clean did: distance histograms with thresholds, and the dropped images."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from taglens import artifacts
from taglens.atomic import atomic_open
from taglens.features.outliers import OutlierResult

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
