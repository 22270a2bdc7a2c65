"""Which test-time views the served model averages: the image (and mirror) alone, or + crops.

The crops view (`taglens.features.views`) costs five more forward passes per photo at
prediction, so it is served only when it earns them. With `train.crops: auto` both candidates
are scored on the validation photos by the chosen head and picked with `train.search.rule`
on the per-photo correctness (`search.pick_paired`): under `one_se` the crops are kept only
when the image (and mirror) alone falls more than one paired standard error below them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from taglens.errors import TaglensError
from taglens.training.head import HeadFit
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
