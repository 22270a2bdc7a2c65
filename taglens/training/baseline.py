"""The reference classifier the head is compared with: logistic regression in scikit-learn.

With `train.baseline: true` the train stage fits it on the same cached vectors as the head and
logs its scores in a run of its own, so the Keras head is always measured against a
well-understood linear model.
"""

from __future__ import annotations

from typing import Any

import numpy as np


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
