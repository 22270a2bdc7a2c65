"""Whether a candidate replaces the champion: McNemar's paired test and the evidence checks.

Pure logic on plain values: no files, no MLflow (`taglens.lifecycle.evaluation` reads the
evidence evaluate wrote).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from taglens.artifacts import PER_IMAGE
from taglens.errors import TaglensError
from taglens.params import RegisterParams

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
# The metrics.json key naming the test images (and their labels) a model was scored on
# (taglens.training.metrics.split_fingerprint).
FINGERPRINT = "test_fingerprint"
RUN_KEY = "model_run_id"  # the metrics.json key naming the train run of the model scored
# Metrics are ratios of counts: 0.71 - 0.70 is 0.01000000000000009 in floating point, which must
# not count as "more than a margin of 0.01".
EPS = 1e-9
CONFIDENCE = 0.95  # of the interval the decision reports for the accuracy difference


class NotComparableError(ValueError):
    """The champion cannot be scored beside the candidate (not loadable, or other classes)."""


class EvidenceError(TaglensError):
    """The evidence a decision needs is missing or belongs to another model or test split.

    Register stops with this message (one line) before the registry is touched: the gate never
    decides on numbers it cannot tie to the model and the test images.
    """


@dataclass(frozen=True)
class Evaluation:
    """What the gate compares: one model's metrics, per-class recall and per-image correctness.

    `correct` maps each test image's sha256 to whether the model's top class was its label; the
    paired test needs it for both models, on the same images.
    """

    metrics: dict[str, float]
    recall: dict[str, float] = field(default_factory=dict)
    correct: dict[str, bool] | None = None

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
class PairedTest:
    """Two models on the same test images: who is right where, and what that proves.

    `challenger_only` (b) counts the images only the challenger gets right, `champion_only` (c)
    those only the champion gets right; images both get right or both wrong say nothing about
    which is better. The p-value is McNemar's exact test: under "no difference" each discordant
    image is a fair coin, so p = P(X >= b) for X ~ Binomial(b + c, 1/2) (one-sided: the
    challenger is better). The interval is Agresti and Min's (2005) for a difference of paired
    proportions: the Wald interval after adding 1/2 to each of the four cells.
    """

    n: int
    challenger_only: int
    champion_only: int
    challenger_accuracy: float
    champion_accuracy: float
    p_value: float
    ci_low: float
    ci_high: float

    @property
    def difference(self) -> float:
        """Challenger's accuracy minus the champion's on these images: (b - c) / n."""
        return (self.challenger_only - self.champion_only) / self.n

    def describe(self) -> str:
        """The evidence in words, for the decision's reason."""
        return (
            f"accuracy {self.challenger_accuracy:.4f} vs champion's {self.champion_accuracy:.4f} "
            f"on the same {self.n} test images: difference {self.difference:+.4f} "
            f"({CONFIDENCE:.0%} CI {self.ci_low:+.4f} to {self.ci_high:+.4f}), McNemar exact "
            f"p = {self.p_value:.3g} ({self.challenger_only} images right only for this model, "
            f"{self.champion_only} only for the champion)"
        )

    def record(self) -> dict[str, float | int]:
        """The numbers, as the version tags, register.json and the history line hold them."""
        return {
            "n_paired": self.n,
            "challenger_only": self.challenger_only,
            "champion_only": self.champion_only,
            "challenger_accuracy": round(self.challenger_accuracy, 6),
            "champion_accuracy": round(self.champion_accuracy, 6),
            "difference": round(self.difference, 6),
            "ci_low": round(self.ci_low, 6),
            "ci_high": round(self.ci_high, 6),
            "p_value": self.p_value,
        }

    @classmethod
    def from_record(cls, values: dict[str, Any]) -> PairedTest | None:
        """Back from `record()`'s keys (None when any is missing: no champion was paired)."""
        if any(values.get(key) is None for key in PAIRED_KEYS):
            return None
        return cls(
            n=int(values["n_paired"]),
            challenger_only=int(values["challenger_only"]),
            champion_only=int(values["champion_only"]),
            challenger_accuracy=float(values["challenger_accuracy"]),
            champion_accuracy=float(values["champion_accuracy"]),
            p_value=float(values["p_value"]),
            ci_low=float(values["ci_low"]),
            ci_high=float(values["ci_high"]),
        )


# The keys of PairedTest.record(): version tags `decision.KEY`, register.json and the history.
PAIRED_KEYS = (
    "n_paired",
    "challenger_only",
    "champion_only",
    "challenger_accuracy",
    "champion_accuracy",
    "difference",
    "ci_low",
    "ci_high",
    "p_value",
)


def paired_test(candidate: Evaluation, champion: Evaluation) -> PairedTest:
    """Compare two models image by image (McNemar's exact test, Agresti-Min interval).

    Raises:
        EvidenceError: either side lacks per-image correctness, or they cover other images.
    """
    from scipy.stats import binomtest, norm

    ours = candidate.correct
    theirs = champion.correct
    if not ours or not theirs:
        side = "this model" if not ours else "the champion"
        raise EvidenceError(
            f"no per-image correctness for {side}: the gate pairs both models image by image; "
            "run the evaluate stage (`dvc repro evaluate`), which writes "
            f"{PER_IMAGE.default}"
        )
    if set(ours) != set(theirs):
        raise EvidenceError(
            f"the two models were scored on other test images ({len(set(ours) - set(theirs))} "
            f"only for this model, {len(set(theirs) - set(ours))} only for the champion): run "
            "the evaluate stage again on the current split (`dvc repro evaluate`)"
        )
    b = sum(1 for sha, right in ours.items() if right and not theirs[sha])
    c = sum(1 for sha, right in ours.items() if not right and theirs[sha])
    n = len(ours)
    p_value = binomtest(b, b + c, 0.5, alternative="greater").pvalue if b + c else 1.0
    # Agresti & Min (2005): add 1/2 to each of the four cells, then the Wald interval
    b_adj = b + 0.5
    c_adj = c + 0.5
    n_adj = n + 2
    centre = (b_adj - c_adj) / n_adj
    standard_error = math.sqrt((b_adj + c_adj) - (b_adj - c_adj) ** 2 / n_adj) / n_adj
    spread = float(norm.ppf(0.5 + CONFIDENCE / 2)) * standard_error
    return PairedTest(
        n=n,
        challenger_only=b,
        champion_only=c,
        challenger_accuracy=sum(ours.values()) / n,
        champion_accuracy=sum(theirs.values()) / n,
        p_value=float(p_value),
        ci_low=max(-1.0, centre - spread),
        ci_high=min(1.0, centre + spread),
    )


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
    paired: PairedTest | None = None  # the image-by-image comparison with the champion

    @property
    def promoted(self) -> bool:
        """Whether the candidate becomes champion."""
        return self.alias == CHAMPION

    def evidence(self) -> dict[str, Any]:
        """The paired test's numbers (every key None when there was no champion to pair with)."""
        if self.paired is None:
            return dict.fromkeys(PAIRED_KEYS)
        return self.paired.record()


def decide(candidate: Evaluation, champion: Evaluation | None, params: RegisterParams) -> Decision:
    """Apply the promotion gate.

    The first model becomes champion if it scores at least `min_score`. A later one is paired
    with the champion on the same test images and must beat it on `primary_metric` by more than
    `min_margin`, be better with McNemar's one-sided exact p below `significance`, and lose no
    more than `max_recall_drop` recall on any of the champion's classes.

    Raises:
        EvidenceError: a champion is given but the two lack per-image correctness on the same
            test images (the caller re-scores the champion on the candidate's).
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
    paired = paired_test(candidate, champion)
    evidence = paired.describe()
    if metric != "accuracy":
        evidence = f"{metric} {score:.4f} vs champion's {best:.4f}; {evidence}"
    margin = score - best

    def refuse(why: str, drops: dict[str, float] | None = None) -> Decision:
        return Decision(CHALLENGER, f"{why}: {evidence}", score, best, drops or {}, paired=paired)

    if not margin > params.min_margin + EPS:
        return refuse(
            f"{metric} {score:.4f} does not beat champion's {best:.4f} by more than "
            f"min_margin {params.min_margin:g}"
        )
    # significance 1 turns the test off: p is 1 exactly when the challenger is right on no image
    # the champion misses, which a gain in a metric other than accuracy can still come with
    if params.significance < 1 and not paired.p_value < params.significance:
        return refuse(
            f"not significant: {metric} {score:.4f} beats champion's {best:.4f}, but McNemar "
            f"p = {paired.p_value:.3g} is not below significance {params.significance:g}"
        )
    drops = {
        name: round(old - candidate.recall.get(name, 0.0), 6)
        for name, old in champion.recall.items()
        if old - candidate.recall.get(name, 0.0) > params.max_recall_drop + EPS
    }
    if drops:
        worst = ", ".join(f"{name} -{drop:.3f}" for name, drop in sorted(drops.items()))
        return refuse(
            f"{metric} improves by {margin:.4f} but recall drops more than max_recall_drop "
            f"{params.max_recall_drop:g}: {worst}",
            drops,
        )
    return Decision(
        CHAMPION,
        f"{metric} {score:.4f} beats champion's {best:.4f} by {margin:.4f}, significant at "
        f"{params.significance:g}, with no class losing too much recall: {evidence}",
        score,
        best,
        paired=paired,
    )


def paired_decision(
    candidate: Evaluation,
    champion: tuple[str, Evaluation] | None,
    rescore: Callable[[], Evaluation] | None,
    params: RegisterParams,
) -> Decision:
    """Decide on both models' per-image correctness on the same test images.

    The champion is always scored again on the current test split: its recorded numbers are
    from the images of its own week, and the paired test needs its answer on each image.

    Args:
        candidate: the new model's evaluation on the current test split (fingerprint and
            per-image correctness required).
        champion: the champion's version and its recorded evaluation, or None.
        rescore: scores the champion on the current test split. May raise NotComparableError.
        params: the gate's settings.

    Returns:
        The decision, with `test_fingerprint`, `champion_rescored` and `paired` set.

    Raises:
        EvidenceError: the candidate has no test fingerprint, or was evaluated on another test
            split than the current one the champion was re-scored on.
    """
    fingerprint = candidate.fingerprint()
    if fingerprint is None:
        raise EvidenceError(
            f"the metrics have no {FINGERPRINT}: the gate cannot tell which test images they are "
            "on; run the evaluate stage (`dvc repro evaluate`)"
        )
    if champion is None:
        return replace(decide(candidate, None, params), test_fingerprint=fingerprint)
    version, _recorded = champion
    try:
        if rescore is None:
            raise NotComparableError(
                f"champion version {version} must be scored again on this model's test images "
                "and none were given: run register as the DVC stage (`dvc repro`, which passes "
                "--raw and --clean)"
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
    if paired.fingerprint() != fingerprint:
        raise EvidenceError(
            f"the metrics are on test split {FINGERPRINT} {fingerprint}, but the current test "
            f"split is {paired.fingerprint()}: run the evaluate stage again (`dvc repro evaluate`)"
        )
    logger.info(
        "champion version %s re-scored on the current test split: %s %.4f",
        version,
        params.primary_metric,
        paired.score(params.primary_metric),
    )
    return replace(
        decide(candidate, paired, params), champion_rescored=True, test_fingerprint=fingerprint
    )


def check_evidence(data: Any, metrics: dict[str, Any], source: str) -> dict[str, bool]:
    """Per-image correctness from evaluate's per-image record, checked against its metrics.

    The record must name the same train run and test split as the metrics, list each image once
    with its label (the labels and sha256s must give the metrics' fingerprint), and agree with
    `n_test` and `accuracy`: otherwise it is another model's or another split's evidence.

    Args:
        data: the parsed per_image.json.
        metrics: the parsed metrics.json it should belong to.
        source: where `data` came from, for the messages.

    Raises:
        EvidenceError: it is malformed or does not belong to these metrics.
    """
    from taglens.training.metrics import split_fingerprint

    try:
        rows = data["images"]
        correct = {str(row["sha256"]): row["correct"] for row in rows}
        labels = [str(row["label"]) for row in rows]
    except (ValueError, TypeError, KeyError) as exc:
        raise EvidenceError(
            f"{source} is not evaluate's per-image record ({type(exc).__name__}: {exc}): re-run "
            "the evaluate stage"
        ) from None
    problems = []
    for key in (RUN_KEY, FINGERPRINT):
        if data.get(key) != metrics.get(key):
            problems.append(f"{key} {data.get(key)} but the metrics say {metrics.get(key)}")
    if len(correct) != len(rows) or not all(isinstance(v, bool) for v in correct.values()):
        problems.append("an image is listed twice or without a true/false `correct`")
    elif split_fingerprint([str(row["sha256"]) for row in rows], labels) != data.get(FINGERPRINT):
        problems.append(f"its images and labels do not give its {FINGERPRINT}")
    if metrics.get("n_test") is not None and len(rows) != metrics["n_test"]:
        problems.append(f"{len(rows)} images but n_test is {metrics['n_test']}")
    accuracy = metrics.get("accuracy")
    numeric = isinstance(accuracy, int | float) and not isinstance(accuracy, bool)
    if numeric and rows and abs(sum(correct.values()) / len(rows) - accuracy) > EPS:
        problems.append(f"{sum(correct.values())} of {len(rows)} right but accuracy is {accuracy}")
    if problems:
        raise EvidenceError(
            f"{source} does not belong to these metrics ({'; '.join(problems)}): re-run the "
            "evaluate stage (`dvc repro evaluate`)"
        )
    return correct
