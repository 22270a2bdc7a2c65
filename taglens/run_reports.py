"""What people read after a run: the markdown of a training run and of a batch run.

Both go through one table renderer (`markdown_table`), which escapes what would break a cell.
The flows show them as Prefect artifacts; nothing here reads files or talks to MLflow.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from taglens.artifacts import DECISION, METRICS
from taglens.lineage import DATA_VERSION, TAG_PREFIX


def cell(value: Any) -> str:
    """One table cell: `-` for None, floats to 4 places, JSON for containers, `|` escaped."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict | list):
        value = json.dumps(value, sort_keys=True)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Iterable[Sequence[Any]], header: Sequence[str]) -> list[str]:
    """The lines of a markdown table: the header, its rule, one line per row of cells."""
    lines = ["|" + "|".join(f" {name} " if name else " " for name in header) + "|"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return lines


def training_markdown(
    *,
    metrics: dict[str, Any] | None,
    decision: dict[str, Any] | None,
    model_info: dict[str, Any] | None,
    data_tags: dict[str, str],
    stages: list[dict[str, Any]],
) -> str:
    """The run report shown as a Prefect artifact: metrics, promotion decision, lineage."""
    run_id = (model_info or {}).get("run_id", "unknown")
    lines = ["# Training run", ""]
    if decision and decision.get("decision"):
        version = decision.get("version")
        model = f" ({decision.get('model_name', 'model')} version {version})" if version else ""
        reason = f": {cell(decision['reason'])}" if decision.get("reason") else ""
        lines.append(f"- **Decision:** {cell(decision['decision'])}{model}{reason}")
    experiment = (model_info or {}).get("experiment")
    lines.append(
        f"- **MLflow run id:** `{run_id}`" + (f" (experiment `{experiment}`)" if experiment else "")
    )
    if data_tags:
        lines.append(f"- **Data version:** `{data_tags[TAG_PREFIX + DATA_VERSION]}`")
    lines += ["", "## Evaluation metrics", ""]
    if metrics:
        scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float | str)}
        lines += markdown_table(scalars.items(), ("metric", "value"))
    else:
        lines.append(f"_{METRICS.default} not found: evaluate did not run._")
    lines += ["", "## Promotion decision", ""]
    if decision:
        lines += markdown_table(decision.items(), ("field", "value"))
    else:
        lines.append(f"_{DECISION.default} not found: register did not run._")
    lines += ["", "## Stages", ""]
    lines += markdown_table(
        (
            (
                stage["stage"],
                "ran" if stage["ran"] else "skipped (unchanged)",
                f"{stage['seconds']:.1f}",
            )
            for stage in stages
        ),
        ("stage", "result", "seconds"),
    )
    return "\n".join(lines) + "\n"


def batch_markdown(
    summary: dict[str, Any],
    input: str,  # noqa: A002 - the flow's parameter name
    task_runner: str,
    retrain_deployment: str,
) -> str:
    """The batch run as a Prefect artifact: what was scored, with which model, where it went."""
    rows = {
        "input": input,
        "output": summary["output"],
        "task runner": task_runner,
        "model": f"{summary['model_name']} version {summary['model_version']}",
        "images": summary["total"],
        "scored": summary["scored"],
        "skipped (already scored)": summary["skipped"],
        "errors": summary["errors"],
        "seconds": f"{summary['seconds']:.1f}",
        "images per second": f"{summary['images_per_second']:.2f}",
    }
    lines = ["# Batch predict", "", *markdown_table(rows.items(), ("", ""))]
    if summary["errors"]:
        lines += [
            "",
            f"{summary['errors']} images could not be scored: their rows in the "
            "output carry the reason in `error`.",
        ]
    drift = summary.get("drift")
    if drift is not None:
        lines += ["", "## Drift against the model's validation photos", ""]
        lines += [drift_markdown(drift)]
    retrain = summary.get("retrain_flow_run_id")
    if retrain:
        lines += ["", f"Started `{retrain_deployment}` (flow run {retrain})."]
    if summary.get("retrain_error"):
        lines += ["", f"Could not start the retrain: {summary['retrain_error']}"]
    return "\n".join(lines) + "\n"


def drift_markdown(drift: dict[str, Any]) -> str:
    """The drift check as a markdown table (or the reason it was not made)."""
    if "photos" not in drift:
        return f"Not checked: {drift['reason']}."
    verdict = "not judged (too few photos)"
    if drift["judged"]:
        verdict = "**DRIFT**" if drift["drifted"] else "no drift"
    rows = [
        ("verdict", verdict),
        ("photos compared", f"{drift['photos']} (reference: {drift['reference_photos']})"),
        ("PSI, predicted classes", f"{drift['psi_class']:.3f}"),
        ("PSI, confidence", f"{drift['psi_confidence']:.3f}"),
        ("threshold (predict.drift.psi_threshold)", f"{drift['psi_threshold']}"),
        ("KS statistic, confidence", f"{drift['ks_statistic']:.3f}"),
        ("KS p-value", f"{drift['ks_pvalue']:.3g}"),
    ]
    lines = markdown_table(rows, ("", ""))
    shares = (
        (name, f"{share:.3f}", f"{drift['reference_class_shares'][name]:.3f}")
        for name, share in drift["class_shares"].items()
    )
    lines += ["", *markdown_table(shares, ("class", "share now", "share in validation"))]
    return "\n".join(lines)
