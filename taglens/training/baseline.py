"""The reference classifier the head is compared with: logistic regression in scikit-learn.

With `train.baseline: true` the train stage fits it on the same cached vectors as the head and
logs its scores in a run of its own, so the Keras head is always measured against a
well-understood linear model.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from taglens.training.run import TrainConfig
from taglens.training.splits import Split

logger = logging.getLogger(__name__)


def fit_baseline(
    x_train: np.ndarray, y_train: np.ndarray, seed: int, class_weight: str = "none"
) -> Any:
    """The reference classifier: standardized features -> multinomial logistic regression.

    `class_weight` follows `train.class_weight` (`none` or `balanced`) so the comparison is fair.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = make_pipeline(
        StandardScaler(),
        LogisticRegression(
            max_iter=2000,
            random_state=seed,
            class_weight="balanced" if class_weight == "balanced" else None,
        ),
    )
    return classifier.fit(np.asarray(x_train, "float64"), np.asarray(y_train, int))


BASELINE_RUN = "baseline-logreg"


def baseline_run(config: TrainConfig, splits: dict[str, Split], train_run_id: str) -> dict:
    """Fit and log the logistic-regression reference in its own run of the same experiment."""
    import mlflow

    train = splits["train"]
    val = splits["val"]
    test = splits["test"]
    classifier = fit_baseline(
        train.vectors, train.labels, config.base.seed, config.train.class_weight
    )
    scores = {"val_accuracy": float(classifier.score(val.vectors, val.labels))}
    if len(test.labels):
        scores["test_accuracy"] = float(classifier.score(test.vectors, test.labels))
    with mlflow.start_run(run_name=BASELINE_RUN) as active:
        mlflow.log_params(
            {
                key: value
                for key, value in config.flat().items()
                if key.startswith(("base.", "model.", "train.class_weight"))
            }
        )
        mlflow.set_tags(
            {"baseline_for": train_run_id, "stage": "train", "backbone": config.model.backbone}
        )
        mlflow.log_metrics(scores)
    logger.info("baseline logistic regression: %s", scores)
    return {
        "baseline_run_id": active.info.run_id,
        **{f"baseline_{key}": value for key, value in scores.items()},
    }
