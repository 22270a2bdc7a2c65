"""Print where a finished pipeline run left its results: metrics, plots, MLflow, predictions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def summarize(root: Path) -> str:
    """A short human summary of the outputs under `root`."""
    lines = ["", "taglens: pipeline finished."]
    metrics_path = root / "reports" / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        shown = ", ".join(
            f"{key} {metrics[key]:.3f}"
            if isinstance(metrics[key], float)
            else f"{key} {metrics[key]}"
            for key in ("accuracy", "top3_accuracy", "macro_f1", "hashtag_accuracy_at_5", "n_test")
            if key in metrics
        )
        lines.append(f"  metrics      {metrics_path}  ({shown})")
    decision_path = root / "reports" / "register.json"
    if decision_path.is_file():
        decision = json.loads(decision_path.read_text())
        lines.append(
            f"  registry     {decision.get('model_name', '?')} "
            f"version {decision.get('version', '?')}"
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
    predictions = (
        sorted((root / "predictions").glob("*")) if (root / "predictions").is_dir() else []
    )
    for path in predictions:
        lines.append(f"  predictions  {path}")
    lines.append("  MLflow UI    make mlflow-ui   (then open http://127.0.0.1:5000)")
    lines.append(
        "  web page     .venv/bin/python -m taglens.web   (then open http://127.0.0.1:8000)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the summary for the project in the current directory."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    print(summarize(args.root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
