"""Linear probe: logistic regression on frozen visual features (scikit-learn), trained on one split and
scored on a held-out one."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def linear_probe(train_ND: np.ndarray, train_labels: Sequence[str], test_ND: np.ndarray,
                 test_labels: Sequence[str], C: float = 1.0, max_iter: int = 1000, seed: int = 0) -> dict:
    """Fit multinomial logistic regression on standardized train features; accuracy (percent) on test.

    Test classes never seen in training count as errors. Returns accuracy, chance (uniform over the train
    classes), the class list and per-row predictions. Raises ValueError with fewer than 2 train classes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes = sorted(set(train_labels))
    if len(classes) < 2:
        raise ValueError(f"linear probe needs at least 2 classes in the train split, got {classes}")
    if len(test_labels) == 0:
        raise ValueError("linear probe: the held-out split is empty")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    clf.fit(np.asarray(train_ND, dtype=np.float64), list(train_labels))
    pred = clf.predict(np.asarray(test_ND, dtype=np.float64))
    acc = float(100.0 * np.mean([p == t for p, t in zip(pred, test_labels)]))
    return {"accuracy": acc, "chance": 100.0 / len(classes), "classes": classes, "train_rows": len(train_labels),
            "test_rows": len(test_labels), "predictions": [str(p) for p in pred]}
