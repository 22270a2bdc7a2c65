"""What a training run did, for people: the DVC data version, and a markdown report of the run.

Pure functions over the files the stages write (docs/architecture.md); no Prefect here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from taglens.artifacts import DECISION, METRICS, MODEL_INFO, read_optional
from taglens.lineage import DATA_VERSION, TAG_PREFIX

logger = logging.getLogger(__name__)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict | list):
        value = json.dumps(value, sort_keys=True)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(rows: dict[str, Any], header: tuple[str, str]) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {_cell(key)} | {_cell(value)} |" for key, value in rows.items()]
    return lines


def render_markdown(
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
        reason = f": {_cell(decision['reason'])}" if decision.get("reason") else ""
        lines.append(f"- **Decision:** {_cell(decision['decision'])}{model}{reason}")
    experiment = (model_info or {}).get("experiment")
    lines.append(
        f"- **MLflow run id:** `{run_id}`" + (f" (experiment `{experiment}`)" if experiment else "")
    )
    if data_tags:
        lines.append(f"- **Data version:** `{data_tags[TAG_PREFIX + DATA_VERSION]}`")
    lines += ["", "## Evaluation metrics", ""]
    if metrics:
        scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float | str)}
        lines += _table(scalars, ("metric", "value"))
    else:
        lines.append(f"_{METRICS.default} not found: evaluate did not run._")
    lines += ["", "## Promotion decision", ""]
    if decision:
        lines += _table(decision, ("field", "value"))
    else:
        lines.append(f"_{DECISION.default} not found: register did not run._")
    lines += ["", "## Stages", "", "| stage | result | seconds |", "|---|---|---|"]
    for stage in stages:
        result = "ran" if stage["ran"] else "skipped (unchanged)"
        lines.append(f"| {stage['stage']} | {result} | {stage['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def tag_run(repo: Path, run_id: str, tags: dict[str, str]) -> dict[str, str]:
    """Add the lineage tags the run does not already carry; return the tags added.

    The train stage tags its run itself; this fills them in for a run that predates them.
    """
    from taglens.tracking import configure_tracking

    info = read_optional(MODEL_INFO, repo / MODEL_INFO.default) or {}
    configure_tracking(info.get("experiment") or "taglens", store=repo / "mlruns")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        existing = client.get_run(run_id).data.tags
    except MlflowException as exc:
        # The model is trained and registered already; a tracking mix-up must not undo that.
        logger.warning(
            "cannot tag MLflow run %s with the data version (%s): do the stages and the flow "
            "use the same MLFLOW_TRACKING_URI?",
            run_id,
            exc,
        )
        return {}
    added = {key: value for key, value in tags.items() if key not in existing}
    for key, value in added.items():
        client.set_tag(run_id, key, value)
    return added
