"""Which cached views the head reads and the served model averages.

The colour view (`taglens.features.views`) may join the head's input: with `train.colour: auto`
the chosen head setting is fitted once more on the vectors and the colour block
(`taglens.training.head.head_input`), and the refit is kept only when it beats the head on the
vectors alone on validation by more than `train.search.rule` allows to ignore. At prediction it
adds only the histogram, which the served model computes for the tag rankers anyway; in train
the refit costs one more fit.

The crops view (`taglens.features.views`) costs five more forward passes per photo at
prediction, so it is served only when it earns them. With `train.crops: auto` both candidates
are scored on the validation photos by the chosen head and picked with `train.search.rule`
on the per-photo correctness (`search.pick_paired`): under `one_se` the crops are kept only
when the image (and mirror) alone falls more than one paired standard error below them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from taglens.errors import TaglensError
from taglens.training.head import HeadFit, colour_scale
from taglens.training.search import mean_se, pick_paired

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairedChoice:
    """Whether an addition to the head (the crops view, the colour view) is served, and why.

    Attributes:
        name: what is added, and train.json's key for the decision (`crops`, `colour`).
        used: the addition is served.
        why: the reason in a sentence (the rule and the evidence, or the setting that decided).
        val_accuracy: each candidate's validation accuracy by name (empty when nothing was
            scored).
        difference_se: the paired standard error of the two accuracies' gap.
    """

    name: str
    used: bool
    why: str
    val_accuracy: dict[str, float]
    difference_se: float = float("nan")

    def report(self) -> dict[str, Any]:
        """train.json's and MLflow's record of the choice."""
        return {
            self.name: self.used,
            "why": self.why,
            "val_accuracy": dict(self.val_accuracy),
            "difference_se": self.difference_se,
        }


def _paired(
    name: str,
    candidates: tuple[str, str],
    right: tuple[np.ndarray, np.ndarray],
    mode: bool | str,
    rule: str,
    sentences: tuple[str, str],
) -> PairedChoice:
    """Decide between the head without and with an addition on per-photo correctness.

    Args:
        name: the addition (`PairedChoice.name`).
        candidates: the two candidates' names in `val_accuracy`, without then with.
        right: their 1.0-per-correct-photo arrays on the same validation photos.
        mode: True or "auto" (False is decided before anything is scored).
        rule: `train.search.rule`, applied by `search.pick_paired` (simpler: without).
        sentences: why, when kept and when left out; formatted with `without`, `with_`
            (the accuracies), `rule` and `se`.
    """
    accuracy = {candidates[0]: float(right[0].mean()), candidates[1]: float(right[1].mean())}
    se = mean_se(right[1] - right[0])
    if mode is True:
        return PairedChoice(name, True, f"train.{name} is true", accuracy, se)
    keep = pick_paired(list(right), [0, 1], rule) == 1
    why = sentences[0 if keep else 1].format(
        without=accuracy[candidates[0]], with_=accuracy[candidates[1]], rule=rule, se=se
    )
    return PairedChoice(name, keep, why, accuracy, se)


def scored(
    fit: HeadFit, vectors: np.ndarray, views: dict, labels: np.ndarray
) -> tuple[HeadFit, np.ndarray]:
    """The fit with its val loss and accuracy over its views, and 1.0 per photo it gets right."""
    probabilities = fit.predict(vectors, views)
    right = (probabilities.argmax(axis=1) == labels).astype("float64")
    picked = np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1.0)
    loss = float(-np.mean(np.log(picked)))
    return replace(fit, val_loss=loss, val_accuracy=float(right.mean())), right


def choose_crops(
    fit: HeadFit, vectors: np.ndarray, views: dict, labels: np.ndarray, mode: bool | str, rule: str
) -> tuple[HeadFit, PairedChoice]:
    """The fit with `crops` set as `train.crops` says, and why.

    Args:
        fit: the chosen head (its `augmented` decides whether the mirror is averaged).
        vectors: the validation photos' own vectors.
        views: their cached views by name; `crops` must be among them to try the crops.
        labels: their class indices.
        mode: `train.crops`: True, False or "auto" (choose on validation by `rule`).
        rule: `train.search.rule` (`best` or `one_se`).

    Raises:
        TaglensError: `train.crops: true` without the crops view in the cached features.
    """
    plain = replace(fit, crops=False)
    if mode is False:
        return plain, PairedChoice("crops", False, "train.crops is false", {})
    if "crops" not in views:
        if mode is True:
            raise TaglensError(
                "train.crops is true but the cached features have no crops view: "
                "add crops to featurize.views and re-run featurize"
            )
        return plain, PairedChoice("crops", False, "featurize.views has no crops view", {})
    labels = np.asarray(labels, int)
    plain, without = scored(plain, vectors, views, labels)
    cropped, with_crops = scored(replace(fit, crops=True), vectors, views, labels)
    choice = _paired(
        "crops",
        ("image", "image+crops"),
        (without, with_crops),
        mode,
        rule,
        (
            "the crops raise validation accuracy from {without:.4f} to {with_:.4f}, more than "
            "{rule} allows to ignore (paired SE {se:.4f})",
            "the crops reach {with_:.4f} on validation against {without:.4f} without them: "
            "not better beyond {rule} (paired SE {se:.4f}), so the cheaper views are served",
        ),
    )
    logger.info("test-time views: %s", choice.why)
    return (cropped if choice.used else plain), choice


def choose_colour(
    fit: HeadFit,
    refit: Callable[[float], HeadFit],
    train_vectors: np.ndarray,
    train_views: dict,
    val: tuple[np.ndarray, dict, np.ndarray],
    mode: bool | str,
    rule: str,
) -> tuple[HeadFit, PairedChoice]:
    """The head that reads the colour view or not, as `train.colour` says, and why.

    Args:
        fit: the chosen head, fitted on the vectors alone.
        refit: fits the same setting on the vectors and the colour block of the given scale.
        train_vectors: the training vectors (the colour block's scale is fitted on them).
        train_views: their cached views; `colour` must be among them to try the colour.
        val: the validation photos' vectors, cached views and class indices.
        mode: `train.colour`: True, False or "auto" (choose on validation by `rule`).
        rule: `train.search.rule` (`best` or `one_se`).

    Raises:
        TaglensError: `train.colour: true` without the colour view in the cached features.
    """
    vectors, views, labels = val
    if mode is False:
        return fit, PairedChoice("colour", False, "train.colour is false", {})
    if "colour" not in train_views or "colour" not in views:
        if mode is True:
            raise TaglensError(
                "train.colour is true but the cached features have no colour view: "
                "add colour to featurize.views and re-run featurize"
            )
        return fit, PairedChoice("colour", False, "featurize.views has no colour view", {})
    labels = np.asarray(labels, int)
    coloured = refit(colour_scale(train_vectors, train_views["colour"]))
    plain, without = scored(fit, vectors, views, labels)
    coloured, with_colour = scored(coloured, vectors, views, labels)
    choice = _paired(
        "colour",
        ("vectors", "vectors+colour"),
        (without, with_colour),
        mode,
        rule,
        (
            "reading the colour view raises validation accuracy from {without:.4f} to "
            "{with_:.4f}, more than {rule} allows to ignore (paired SE {se:.4f})",
            "with the colour view the head reaches {with_:.4f} on validation against "
            "{without:.4f} without it: not better beyond {rule} (paired SE {se:.4f}), so the "
            "head reads the vectors alone",
        ),
    )
    logger.info("head input: %s", choice.why)
    return (coloured if choice.used else plain), choice


def log_choice(choice: PairedChoice, param: str, why_tag: str, metric_prefix: str) -> None:
    """Log a paired choice on the active MLflow run.

    The decision goes in as `param`, the reason as the tag `why_tag`, and each candidate's
    validation accuracy as the metric `metric_prefix` + its name (`+` written `_`).
    """
    import mlflow

    mlflow.log_param(param, choice.used)
    mlflow.set_tag(why_tag, choice.why)
    mlflow.log_metrics(
        {
            f"{metric_prefix}{name.replace('+', '_')}": value
            for name, value in choice.val_accuracy.items()
        }
    )
