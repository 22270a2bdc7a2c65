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
class ViewsChoice:
    """The views chosen and the validation evidence (train.json's `views`)."""

    crops: bool
    why: str
    val_accuracy: dict[str, float]  # candidate name ("image", "image+crops") -> val accuracy
    difference_se: float = float("nan")  # the paired standard error of the two accuracies' gap

    def report(self) -> dict[str, Any]:
        """train.json's and MLflow's record of the choice."""
        return {
            "crops": self.crops,
            "why": self.why,
            "val_accuracy": dict(self.val_accuracy),
            "difference_se": self.difference_se,
        }


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
) -> tuple[HeadFit, ViewsChoice]:
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
        return plain, ViewsChoice(False, "train.crops is false", {})
    if "crops" not in views:
        if mode is True:
            raise TaglensError(
                "train.crops is true but the cached features have no crops view: "
                "add crops to featurize.views and re-run featurize"
            )
        return plain, ViewsChoice(False, "featurize.views has no crops view", {})
    labels = np.asarray(labels, int)
    plain, without = scored(plain, vectors, views, labels)
    cropped, with_crops = scored(replace(fit, crops=True), vectors, views, labels)
    scores = [without, with_crops]
    accuracy = {"image": float(scores[0].mean()), "image+crops": float(scores[1].mean())}
    se = mean_se(scores[1] - scores[0])
    if mode is True:
        return cropped, ViewsChoice(True, "train.crops is true", accuracy, se)
    keep = pick_paired(scores, [0, 1], rule) == 1
    if keep:
        why = (
            f"the crops raise validation accuracy from {accuracy['image']:.4f} to "
            f"{accuracy['image+crops']:.4f}, more than {rule} allows to ignore (paired SE "
            f"{se:.4f})"
        )
    else:
        why = (
            f"the crops reach {accuracy['image+crops']:.4f} on validation against "
            f"{accuracy['image']:.4f} without them: not better beyond {rule} (paired SE "
            f"{se:.4f}), so the cheaper views are served"
        )
    logger.info("test-time views: %s", why)
    chosen = cropped if keep else plain
    return chosen, ViewsChoice(keep, why, accuracy, se)


def log_views(choice: ViewsChoice) -> None:
    """Log the test-time views chosen (`train.views_crops`), their val accuracies and why."""
    import mlflow

    mlflow.log_param("train.views_crops", choice.crops)
    mlflow.set_tag("views_why", choice.why)
    metrics = {
        f"val_accuracy_views_{name.replace('+', '_')}": value
        for name, value in choice.val_accuracy.items()
    }
    mlflow.log_metrics(metrics)


@dataclass(frozen=True)
class ColourChoice:
    """Whether the head reads the colour view, and the validation evidence (train.json's)."""

    colour: bool
    why: str
    val_accuracy: dict[str, float]  # "vectors" and "vectors+colour" -> val accuracy
    difference_se: float = float("nan")

    def report(self) -> dict[str, Any]:
        """train.json's and MLflow's record of the choice."""
        return {
            "colour": self.colour,
            "why": self.why,
            "val_accuracy": dict(self.val_accuracy),
            "difference_se": self.difference_se,
        }


def choose_colour(
    fit: HeadFit,
    refit: Callable[[float], HeadFit],
    train_vectors: np.ndarray,
    train_views: dict,
    val: tuple[np.ndarray, dict, np.ndarray],
    mode: bool | str,
    rule: str,
) -> tuple[HeadFit, ColourChoice]:
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
        return fit, ColourChoice(False, "train.colour is false", {})
    if "colour" not in train_views or "colour" not in views:
        if mode is True:
            raise TaglensError(
                "train.colour is true but the cached features have no colour view: "
                "add colour to featurize.views and re-run featurize"
            )
        return fit, ColourChoice(False, "featurize.views has no colour view", {})
    labels = np.asarray(labels, int)
    coloured = refit(colour_scale(train_vectors, train_views["colour"]))
    plain, without = scored(fit, vectors, views, labels)
    coloured, with_colour = scored(coloured, vectors, views, labels)
    scores = [without, with_colour]
    accuracy = {"vectors": float(without.mean()), "vectors+colour": float(with_colour.mean())}
    se = mean_se(with_colour - without)
    if mode is True:
        return coloured, ColourChoice(True, "train.colour is true", accuracy, se)
    keep = pick_paired(scores, [0, 1], rule) == 1
    if keep:
        why = (
            f"reading the colour view raises validation accuracy from {accuracy['vectors']:.4f} "
            f"to {accuracy['vectors+colour']:.4f}, more than {rule} allows to ignore (paired SE "
            f"{se:.4f})"
        )
    else:
        why = (
            f"with the colour view the head reaches {accuracy['vectors+colour']:.4f} on "
            f"validation against {accuracy['vectors']:.4f} without it: not better beyond {rule} "
            f"(paired SE {se:.4f}), so the head reads the vectors alone"
        )
    logger.info("head input: %s", why)
    return (coloured if keep else plain), ColourChoice(keep, why, accuracy, se)


def log_colour(choice: ColourChoice) -> None:
    """Log whether the head reads the colour view (`train.head_colour`), the evidence and why."""
    import mlflow

    mlflow.log_param("train.head_colour", choice.colour)
    mlflow.set_tag("colour_why", choice.why)
    mlflow.log_metrics(
        {
            f"val_accuracy_head_{name.replace('+', '_')}": value
            for name, value in choice.val_accuracy.items()
        }
    )
