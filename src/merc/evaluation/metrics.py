"""Classification metrics of the MERC literature, from one confusion matrix.

- ``accuracy``: fraction correct, what speech papers call WA (weighted accuracy).
- ``weighted_f1``: per-class F1 weighted by support (the field's main metric, "w-F1").
- ``macro_f1``: unweighted mean of per-class F1.
- ``ua``: unweighted accuracy = mean per-class recall (speech papers' UA).
- ``per_class_f1`` and the ``confusion`` matrix (rows true, columns predicted).

All in percent. Classes absent from both truth and prediction get F1 0 and no weight,
as in scikit-learn with ``zero_division=0``; tests check every value against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

HEADLINE_METRICS: tuple[str, ...] = ("weighted_f1", "accuracy", "macro_f1", "ua")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``int64 [C, C]``, row = true class, column = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def metrics_from_confusion(cm: np.ndarray, label_names: Sequence[str] | None = None) -> dict[str, Any]:
    """All metrics from a confusion matrix (percent)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    total = cm.sum()
    present = support > 0
    names = list(label_names) if label_names is not None else [str(i) for i in range(len(tp))]
    # scikit-learn's macro average runs over the labels seen in truth or prediction.
    seen = present | (predicted > 0)
    return {
        "accuracy": float(100.0 * tp.sum() / total) if total else 0.0,
        "weighted_f1": 100.0 * float((f1 * support).sum() / total) if total else 0.0,
        "macro_f1": 100.0 * float(f1[seen].mean()) if seen.any() else 0.0,
        "ua": 100.0 * float(recall[present].mean()) if present.any() else 0.0,
        "per_class_f1": {n: 100.0 * float(v) for n, v in zip(names, f1)},
        "confusion": cm.astype(np.int64).tolist(),
        "num_utterances": int(total),
    }


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, label_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Metrics of predictions ``y_pred`` against ``y_true`` (int arrays ``[N]``).

    >>> m = classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), 2)
    >>> round(m["accuracy"], 2), round(m["ua"], 2)
    (66.67, 75.0)
    """
    return metrics_from_confusion(confusion_matrix(y_true, y_pred, num_classes), label_names)
