r"""Modality-imbalance measures: per-modality true-class scores and their ratios.

Both papers that measure imbalance in MERC score each modality by the softmax
probability its own unimodal logits give the true class, summed over the utterances of a
batch (OGM-GE, Peng et al., CVPR 2022, eq. 9; Ada2I, Nguyen et al., ACM MM 2024, eq. 16):

.. math::
    s^m = \sum_j \mathrm{softmax}(z^m_j)_{y_j}

and compare the modalities by the ratio to the weakest one (Ada2I eq. 17, SPCL
Section 5.2.5 "modality ratio", Fig. 7):

.. math::
    \rho^m = \frac{s^m}{\min_k s^k}

so the weakest modality has ratio 1 and a dominant text modality ratios of 2-4 (Ada2I
Fig. 5). The gradient-modulation plug-ins compute the same quantities per batch from
these functions; the trainer records them per epoch (``history.json``) for train and
validation so that a run shows its own imbalance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from merc.data.batching import IGNORE_INDEX
from merc.evaluation.metrics import classification_metrics


def true_class_probabilities(logits: Tensor, labels: Tensor) -> Tensor:
    """Softmax probability of the true class per labelled utterance.

    Args:
        logits: ``[N, C]`` class scores.
        labels: ``[N]`` class ids, :data:`IGNORE_INDEX` for unlabelled utterances.

    Returns:
        ``[N_labelled]`` probabilities (float32, same device).
    """
    keep = labels != IGNORE_INDEX
    probs = torch.softmax(logits[keep].float(), dim=-1)
    return probs.gather(1, labels[keep].long()[:, None]).squeeze(1)


def true_class_scores(unimodal_logits: Mapping[str, Tensor], labels: Tensor, reduce: str = "sum") -> dict[str, Tensor]:
    """:math:`s^m` of every modality (OGM-GE eq. 9, Ada2I eq. 16).

    Args:
        unimodal_logits: ``{m: [N, C]}``.
        labels: ``[N]`` (:data:`IGNORE_INDEX` where unlabelled).
        reduce: ``"sum"`` (the papers' batch score) or ``"mean"`` (comparable across
            batch sizes: what the trainer records).

    Returns:
        ``{m: scalar tensor}``; 0 when nothing is labelled.

    >>> logits = {"t": torch.tensor([[4.0, 0.0], [0.0, 4.0]]), "a": torch.zeros(2, 2)}
    >>> {m: round(float(s), 3) for m, s in true_class_scores(logits, torch.tensor([0, 1])).items()}
    {'t': 1.964, 'a': 1.0}
    """
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    out: dict[str, Tensor] = {}
    for m, logits in unimodal_logits.items():
        p = true_class_probabilities(logits, labels)
        out[m] = p.sum() if reduce == "sum" or p.numel() == 0 else p.mean()
    return out


def modality_ratios(scores: Mapping[str, Tensor | float], eps: float = 1e-12) -> dict[str, float]:
    r""":math:`\rho^m = s^m / \min_k s^k` (Ada2I eq. 17; SPCL's modality ratio).

    >>> modality_ratios({"t": 3.0, "a": 1.5, "v": 1.0})
    {'t': 3.0, 'a': 1.5, 'v': 1.0}
    """
    values = {m: float(s) for m, s in scores.items()}
    if not values:
        return {}
    low = max(min(values.values()), eps)
    return {m: v / low for m, v in values.items()}


def unimodal_summary(unimodal_logits: Mapping[str, np.ndarray], labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Each modality's own scores from its unimodal logits, and its modality ratio.

    Args:
        unimodal_logits: ``{m: [N, C]}`` logits of the labelled utterances.
        labels: ``[N]`` true classes (all labelled).
        num_classes: ``C``.

    Returns:
        ``{m: {"accuracy", "weighted_f1", "score", "ratio"}}`` in percent for the first
        two; ``score`` is the *mean* true-class probability (``s^m`` / N, comparable
        across splits and epochs) and ``ratio`` is :func:`modality_ratios` of the scores.
        Empty when there is nothing to score.

    >>> logits = {"t": np.array([[3.0, 0.0], [0.0, 3.0]]), "a": np.array([[0.0, 1.0], [0.0, 1.0]])}
    >>> out = unimodal_summary(logits, np.array([0, 1]), 2)
    >>> out["t"]["accuracy"], out["a"]["accuracy"], round(out["t"]["ratio"], 2)
    (100.0, 50.0, 1.91)
    """
    if not unimodal_logits or len(labels) == 0:
        return {}
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    logits = {m: torch.as_tensor(np.asarray(v), dtype=torch.float32) for m, v in unimodal_logits.items()}
    scores = true_class_scores(logits, y, reduce="mean")
    ratios = modality_ratios(scores)
    out: dict[str, Any] = {}
    for m, lg in logits.items():
        metrics = classification_metrics(y.numpy(), lg.argmax(1).numpy(), num_classes)
        out[m] = {
            "accuracy": float(metrics["accuracy"]),
            "weighted_f1": float(metrics["weighted_f1"]),
            "score": float(scores[m]),
            "ratio": ratios[m],
        }
    return out


#: File stem of ``merc imbalance``'s comparison in a run folder (``.json``, ``.md``, ``.png``).
ALONE_REPORT_STEM = "unimodal_vs_alone"

MODALITY_COLOURS = {"t": "tab:blue", "a": "tab:orange", "v": "tab:green"}


def _plugin_series(histories: Mapping[int, Sequence[Mapping[str, Any]]]) -> list[tuple[str, str]]:
    """``(plug-in, key)`` of every scalar a plug-in recorded per epoch (history ``plugins``)."""
    found: list[tuple[str, str]] = []
    for history in histories.values():
        for entry in history:
            for name, values in (entry.get("plugins") or {}).items():
                for key, value in values.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool) and (name, key) not in found:
                        found.append((name, key))
    return found


def imbalance_png(histories: Mapping[int, Sequence[Mapping[str, Any]]], dpi: int = 110) -> bytes | None:
    r"""Per-epoch unimodal scores of a run: how each modality learns inside the joint model.

    Panels: each modality's weighted F1 from its own unimodal logits on the training
    batches and on validation, the modality ratio :math:`\rho^m` (training batches), and
    one panel per scalar a plug-in recorded (e.g. SPCL's share of selected utterances).
    One line per seed and modality.

    Args:
        histories: ``{seed: history}`` (each ``history.json`` of the run's seeds).
        dpi: Resolution of the PNG.

    Returns:
        The PNG, or ``None`` when no epoch recorded unimodal scores (early-fusion models).
    """
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    recorded = {s: [e for e in h if e.get("unimodal")] for s, h in histories.items()}
    recorded = {s: h for s, h in recorded.items() if h}
    if not recorded:
        return None
    extra = _plugin_series(histories)
    panels = [("train", "weighted_f1"), ("valid", "weighted_f1"), ("train", "ratio")]
    titles = {
        ("train", "weighted_f1"): "unimodal w-F1, training batches (%)",
        ("valid", "weighted_f1"): "unimodal w-F1, validation (%)",
        ("train", "ratio"): "modality ratio s^m / min s (training)",
    }
    n = len(panels) + len(extra)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows))
    FigureCanvasAgg(fig)
    for k, (split, key) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        for seed, history in sorted(recorded.items()):
            modalities = list(history[-1]["unimodal"].get(split) or {})
            for m in modalities:
                points = [
                    (e["epoch"], e["unimodal"][split][m][key]) for e in history if m in (e["unimodal"].get(split) or {})
                ]
                ax.plot(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    color=MODALITY_COLOURS.get(m),
                    alpha=0.85,
                    linewidth=1.2,
                    label=m if seed == min(recorded) else None,
                )
        if key == "ratio":
            ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(titles[(split, key)], fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="modality" if k == 0 else None)
    for k, (name, key) in enumerate(extra):
        ax = fig.add_subplot(rows, cols, len(panels) + k + 1)
        for seed, seed_history in sorted(histories.items()):
            points = [
                (e["epoch"], e["plugins"][name][key])
                for e in seed_history
                if isinstance((e.get("plugins") or {}).get(name, {}).get(key), (int, float))
            ]
            ax.plot([p[0] for p in points], [p[1] for p in points], label=f"seed {seed}")
        ax.set_title(f"{name}: {key}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def plot_imbalance(histories: Mapping[int, Sequence[Mapping[str, Any]]], path: str | Path) -> Path | None:
    """Write :func:`imbalance_png` to ``path``; ``None`` (nothing written) without unimodal scores."""
    png = imbalance_png(histories)
    if png is None:
        return None
    path = Path(path)
    path.write_bytes(png)
    return path


__all__ = [
    "ALONE_REPORT_STEM",
    "imbalance_png",
    "modality_ratios",
    "plot_imbalance",
    "unimodal_summary",
    "true_class_probabilities",
    "true_class_scores",
]
