"""Whether the fine-tuned model is served: `train.fine_tune.enabled: auto` decides on validation.

Fine-tuning costs minutes per epoch on a CPU and, once served, the image rankers lose the cached
features they read (the backbone changed). So with `auto` the fine-tuned model must earn it:
both models classify the validation photos, and `train.search.rule` picks on the per-photo
correctness (`search.pick_paired`, the head first as the simpler): under `one_se` the
fine-tuned model is served only when its validation accuracy beats the head's by more than one
paired standard error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from taglens.training.search import mean_se, pick_paired


@dataclass(frozen=True)
class FineTuneChoice:
    """Which model is served (train.json's `fine_tune`) and the validation evidence."""

    tuned: bool  # the fine-tuned model is served
    why: str
    val_accuracy: dict[str, float]  # "head" and "fine_tuned" -> val accuracy (when both ran)
    difference_se: float = float("nan")

    def report(self) -> dict[str, Any]:
        """train.json's and MLflow's record of the choice."""
        return {
            "served": "fine_tuned" if self.tuned else "head",
            "why": self.why,
            "val_accuracy": dict(self.val_accuracy),
            "difference_se": self.difference_se,
        }


def choose_fine_tuned(
    head_right: np.ndarray, tuned_right: np.ndarray, mode: bool | str, rule: str
) -> FineTuneChoice:
    """Serve the fine-tuned model or the head, as `train.fine_tune.enabled` says.

    Args:
        head_right: 1.0 per validation photo the head (as served, over its views) gets right.
        tuned_right: the same for the fine-tuned model, on the same photos in the same order.
        mode: True (always the fine-tuned model) or "auto" (choose by `rule`).
        rule: `train.search.rule`.

    Raises:
        ValueError: the two were scored on different numbers of photos.
    """
    head_right = np.asarray(head_right, np.float64)
    tuned_right = np.asarray(tuned_right, np.float64)
    if head_right.shape != tuned_right.shape:
        raise ValueError(
            f"the head and the fine-tuned model were scored on {len(head_right)} and "
            f"{len(tuned_right)} validation photos"
        )
    accuracy = {"head": float(head_right.mean()), "fine_tuned": float(tuned_right.mean())}
    se = mean_se(tuned_right - head_right)
    if mode is True:
        return FineTuneChoice(True, "train.fine_tune.enabled is true", accuracy, se)
    tuned = pick_paired([head_right, tuned_right], [0, 1], rule) == 1
    if tuned:
        why = (
            f"fine-tuning raises validation accuracy from {accuracy['head']:.4f} to "
            f"{accuracy['fine_tuned']:.4f}, beyond {rule} (paired SE {se:.4f})"
        )
    else:
        why = (
            f"the fine-tuned model reaches {accuracy['fine_tuned']:.4f} on validation against "
            f"the head's {accuracy['head']:.4f}: not better beyond {rule} (paired SE {se:.4f}), "
            "so the head is served (and the image rankers keep their features)"
        )
    return FineTuneChoice(tuned, why, accuracy, se)


def log_fine_tune_choice(choice: FineTuneChoice) -> None:
    """Log which model is served (`train.fine_tune.served`), both val accuracies and why."""
    import mlflow

    mlflow.log_param("train.fine_tune.served", choice.report()["served"])
    mlflow.set_tag("fine_tune_why", choice.why)
    mlflow.log_metrics({f"val_accuracy_{name}": v for name, v in choice.val_accuracy.items()})
