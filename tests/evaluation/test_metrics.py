"""Metrics against scikit-learn (torchmetrics' shared-tester idea)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score

from merc.evaluation.aggregate import aggregate_seeds
from merc.evaluation.metrics import classification_metrics


@pytest.mark.parametrize("seed", range(8))
def test_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    c = int(rng.integers(2, 8))
    n = int(rng.integers(1, 300))
    y = rng.integers(0, c, n)
    # Biased predictions, and sometimes a class never predicted or absent from truth.
    p = np.where(rng.random(n) < 0.6, y, rng.integers(0, max(c - seed % 2, 1), n))
    m = classification_metrics(y, p, c)
    labels = list(range(c))
    assert m["accuracy"] == pytest.approx(100 * accuracy_score(y, p))
    assert m["weighted_f1"] == pytest.approx(100 * f1_score(y, p, average="weighted", labels=labels, zero_division=0))
    assert m["macro_f1"] == pytest.approx(100 * f1_score(y, p, average="macro", zero_division=0))
    with np.errstate(all="ignore"):
        ua = balanced_accuracy_score(y, p)
    assert m["ua"] == pytest.approx(100 * ua)
    per_class = f1_score(y, p, average=None, labels=labels, zero_division=0)
    assert list(m["per_class_f1"].values()) == pytest.approx(list(100 * per_class))
    assert m["confusion"] == confusion_matrix(y, p, labels=labels).tolist()


def test_aggregate_mean_and_sample_std() -> None:
    agg = aggregate_seeds(
        [
            {"weighted_f1": 60.0, "accuracy": 1.0},
            {"weighted_f1": 62.0, "accuracy": 2.0},
            {"weighted_f1": 64.0, "accuracy": 3.0},
        ]
    )
    assert agg["weighted_f1"]["mean"] == pytest.approx(62.0)
    assert agg["weighted_f1"]["std"] == pytest.approx(2.0)
    assert agg["accuracy"]["per_seed"] == [1.0, 2.0, 3.0]
