"""Print where a finished pipeline run left its results: metrics, plots, MLflow, predictions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from taglens.artifacts import CLEAN_DIR, DECISION, METRICS, RAW_DIR, read_optional
from taglens.atomic import atomic_write_text
from taglens.features.split import read_manifest


def summarize(root: Path) -> str:
    """A short human summary of the outputs under `root`."""
    lines = ["", "taglens: pipeline finished."]
    metrics_path = root / METRICS.default
    metrics = read_optional(METRICS, metrics_path) if metrics_path.is_file() else None
    if metrics is not None:
        shown = ", ".join(
            f"{key} {metrics[key]:.3f}"
            if isinstance(metrics[key], float)
            else f"{key} {metrics[key]}"
            for key in ("accuracy", "top3_accuracy", "macro_f1", "hashtag_accuracy_at_5", "n_test")
            if key in metrics
        )
        lines.append(f"  metrics      {metrics_path}  ({shown})")
    decision_path = root / DECISION.default
    decision = read_optional(DECISION, decision_path) if decision_path.is_file() else None
    if decision is not None:
        # an experiment that was not registered has no version (register.on_experiment: skip)
        version = decision.get("version", "?")
        where = "not registered" if version is None else f"version {version}"
        lines.append(
            f"  registry     {decision.get('model_name', '?')} {where}"
            f": {decision.get('decision', '?')} ({decision.get('reason', '')})"
        )
    plots = (
        sorted(str(p) for p in (root / "reports").rglob("*.png"))
        if (root / "reports").is_dir()
        else []
    )
    if plots:
        lines.append(
            f"  plots        {len(plots)} PNGs under {root / 'reports'}/ (e.g. {plots[0]})"
        )
    predictions = sorted(
        path
        for suffix in ("csv", "jsonl", "parquet")
        for path in (root / "predictions").glob(f"*.{suffix}")
    )
    for path in predictions:
        lines.append(f"  predictions  {path}")
    lines.append("  MLflow UI    make mlflow-ui   (then open http://127.0.0.1:5000)")
    lines.append("  web page     make serve   (then open http://127.0.0.1:8000)")
    return "\n".join(lines)


def write_test_image_list(root: Path, out: Path) -> int:
    """Write the held-out test images of the last run, one path a line; return how many.

    The demo scores these with the champion: images the model has never trained on. Paths are
    absolute because batch predict reads a list file's relative paths from the list's folder.
    """
    root = root.resolve()
    manifest = read_manifest(root / CLEAN_DIR)
    test = manifest["image"][manifest["split"] == "test"]
    paths = [str(root / RAW_DIR / image) for image in test]
    atomic_write_text(out, "".join(f"{path}\n" for path in paths))
    return len(paths)


def main(argv: list[str] | None = None) -> int:
    """Print the summary for the project in the current directory."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--root", type=Path, default=Path("."), help="the project checkout (default %(default)s)"
    )
    parser.add_argument(
        "--list-test-images",
        type=Path,
        metavar="FILE",
        help="instead of the summary, write the test split's image paths to FILE",
    )
    args = parser.parse_args(argv)
    if args.list_test_images:
        count = write_test_image_list(args.root, args.list_test_images)
        print(f"{count} test images listed in {args.list_test_images}")
        return 0
    print(summarize(args.root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
