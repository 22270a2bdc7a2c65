"""The promotion gate: does a newly evaluated model replace the champion? Pure logic, no MLflow."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from taglens.artifacts import METRICS, MissingArtifactError
from taglens.errors import TaglensError
from taglens.params import RegisterParams

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
# The metrics.json key naming the test images a model was scored on (taglens.training.metrics).
FINGERPRINT = "test_fingerprint"
# Keys whose values must agree for two evaluations to be comparable (same test split).
SPLIT_KEYS = (FINGERPRINT, "n_test")
# Metrics are ratios of counts: 0.71 - 0.70 is 0.01000000000000009 in floating point, which must
# not count as "more than a margin of 0.01".
EPS = 1e-9


class NotComparableError(ValueError):
    """The champion cannot be scored beside the candidate (not loadable, or other classes)."""


@dataclass(frozen=True)
class Evaluation:
    """What the gate compares: the metrics.json numbers and per-class recall of one model."""

    metrics: dict[str, float]
    recall: dict[str, float] = field(default_factory=dict)

    def score(self, metric: str) -> float:
        """Return the primary metric.

        Raises:
            ValueError: the metric is missing or not a number (names the keys there are).
        """
        value = self.metrics.get(metric)
        if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
            raise TaglensError(
                f"register.primary_metric {metric!r} is not a number in the metrics "
                f"(available: {sorted(self.metrics)}); fix params.yaml or re-run evaluate"
            )
        return float(value)

    def fingerprint(self) -> int | None:
        """The test split this evaluation was made on (None when not recorded)."""
        value = self.metrics.get(FINGERPRINT)
        return None if value is None else int(value)


@dataclass(frozen=True)
class Decision:
    """The gate's verdict on a candidate."""

    alias: str  # CHAMPION or CHALLENGER
    reason: str
    score: float
    champion_score: float | None = None
    recall_drops: dict[str, float] = field(default_factory=dict)
    compared_with: str | None = None  # the champion version compared against, set by the registry
    champion_rescored: bool = False  # the champion was scored again on the candidate's test images
    test_fingerprint: int | None = None  # the test images both scores are on

    @property
    def promoted(self) -> bool:
        """Whether the candidate becomes champion."""
        return self.alias == CHAMPION


def decide(candidate: Evaluation, champion: Evaluation | None, params: RegisterParams) -> Decision:
    """Apply the promotion gate.

    The first model becomes champion if it scores at least `min_score`. Later ones must be
    evaluated on the same test split as the champion (the registry re-scores the champion when
    its recorded evaluation is on another one), beat it on `primary_metric` by more than
    `min_margin`, and lose no more than `max_recall_drop` recall on any of its classes.
    """
    metric = params.primary_metric
    score = candidate.score(metric)
    if champion is None:
        if score >= params.min_score:
            return Decision(
                CHAMPION,
                f"first model: {metric} {score:.4f} >= min_score {params.min_score:g}",
                score,
            )
        return Decision(
            CHALLENGER,
            f"first model below min_score: {metric} {score:.4f} < {params.min_score:g}",
            score,
        )
    best = champion.score(metric)
    for key in SPLIT_KEYS:
        ours, theirs = candidate.metrics.get(key), champion.metrics.get(key)
        if ours is not None and theirs is not None:
            if ours != theirs:
                return Decision(
                    CHALLENGER,
                    f"not comparable: evaluated on a different test split "
                    f"({key} {ours} vs champion's {theirs}); promote by hand after "
                    "checking",
                    score,
                    best,
                )
            break  # the most specific key present in both decides
    margin = score - best
    if not margin > params.min_margin + EPS:
        return Decision(
            CHALLENGER,
            f"{metric} {score:.4f} does not beat champion's {best:.4f} by "
            f"more than min_margin {params.min_margin:g}",
            score,
            best,
        )
    drops = {
        name: round(old - candidate.recall.get(name, 0.0), 6)
        for name, old in champion.recall.items()
        if old - candidate.recall.get(name, 0.0) > params.max_recall_drop + EPS
    }
    if drops:
        worst = ", ".join(f"{name} -{drop:.3f}" for name, drop in sorted(drops.items()))
        return Decision(
            CHALLENGER,
            f"{metric} improves by {margin:.4f} but recall drops more "
            f"than max_recall_drop {params.max_recall_drop:g}: {worst}",
            score,
            best,
            drops,
        )
    return Decision(
        CHAMPION,
        f"{metric} {score:.4f} beats champion's {best:.4f} by {margin:.4f} "
        "with no class losing too much recall",
        score,
        best,
    )


def paired_decision(
    candidate: Evaluation,
    champion: tuple[str, Evaluation] | None,
    rescore: Callable[[], Evaluation] | None,
    params: RegisterParams,
) -> Decision:
    """Decide on both models' scores on the same test images.

    Args:
        candidate: the new model's evaluation on the current test split.
        champion: the champion's version and its recorded evaluation, or None.
        rescore: scores the champion on the current test split; called only when its recorded
            evaluation is on another test set. May raise NotComparableError.
        params: the gate's settings.

    Returns:
        The decision, with `test_fingerprint` and `champion_rescored` set.
    """
    fingerprint = candidate.fingerprint()
    if champion is None:
        return replace(decide(candidate, None, params), test_fingerprint=fingerprint)
    version, recorded = champion
    if recorded.fingerprint() == fingerprint:
        return replace(decide(candidate, recorded, params), test_fingerprint=fingerprint)
    try:
        if rescore is None or fingerprint is None:
            raise NotComparableError(
                f"champion version {version} was evaluated on another test set ({FINGERPRINT} "
                f"{recorded.fingerprint()} vs {fingerprint}) and no test images were given to "
                "score it again: run register as the DVC stage (`dvc repro`, which passes --raw "
                "and --clean)"
            )
        paired = rescore()
    except NotComparableError as exc:
        return Decision(
            CHALLENGER,
            f"not comparable: {exc}; or check both models and promote by hand with "
            "`python -m stages.register promote VERSION --reason ...`",
            candidate.score(params.primary_metric),
            test_fingerprint=fingerprint,
        )
    logger.info(
        "champion version %s re-scored on the current test split: %s %.4f",
        version, params.primary_metric, paired.score(params.primary_metric),
    )  # fmt: skip
    return replace(
        decide(candidate, paired, params), champion_rescored=True, test_fingerprint=fingerprint
    )


def read_metrics(path: Path | str) -> dict[str, Any]:
    """Read evaluate's metrics.json.

    Raises:
        MissingArtifactError: evaluate has not run.
        ValueError: the file is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingArtifactError(path, METRICS.stage)
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise TaglensError(f"{path} must hold a JSON object of metrics")
    return data


def read_recall(path: Path | str) -> dict[str, float]:
    """Per-class recall from evaluate's per_class.json; {} when the file does not exist.

    Accepts `{class: {"recall": r, ...}}`, `{"classes": {...}}` or `[{"class": c, "recall": r}]`.

    Raises:
        ValueError: the file exists but has none of these shapes.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and isinstance(data.get("classes"), dict | list):
        data = data["classes"]
    rows = data.items() if isinstance(data, dict) else [(r.get("class"), r) for r in data]
    recall = {
        str(name): float(row["recall"])
        for name, row in rows
        if name is not None and isinstance(row, dict) and "recall" in row
    }
    if not recall and data:
        raise TaglensError(f"{path}: no per-class recall found (expected {{class: {{recall: r}}}})")
    return recall
