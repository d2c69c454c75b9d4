"""Multi-seed aggregation: mean and standard deviation of each metric over seeds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from merc.evaluation.metrics import HEADLINE_METRICS


def aggregate_seeds(
    per_seed: Sequence[Mapping[str, Any]], keys: Sequence[str] = HEADLINE_METRICS
) -> dict[str, dict[str, Any]]:
    """``{metric: {"mean", "std", "per_seed"}}`` over the seeds' metric dicts.

    ``std`` is the sample standard deviation (``ddof=1``; 0 for a single seed), the
    convention of papers reporting mean ± std over runs.

    >>> aggregate_seeds([{"accuracy": 50.0}, {"accuracy": 60.0}], keys=["accuracy"])["accuracy"]["mean"]
    55.0
    """
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        values = np.array([float(m[key]) for m in per_seed if key in m])
        if values.size == 0:
            continue
        out[key] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            "per_seed": values.tolist(),
        }
    return out


def format_mean_std(entry: Mapping[str, Any], digits: int = 2) -> str:
    """``"63.41 ± 0.52"``; ``"63.41 (n = 1)"`` for one seed, which has no spread to show.

    >>> format_mean_std({"mean": 63.414, "std": 0.0, "per_seed": [63.414]})
    '63.41 (n = 1)'
    """
    if len(entry.get("per_seed") or ()) == 1:
        return f"{entry['mean']:.{digits}f} (n = 1)"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"
