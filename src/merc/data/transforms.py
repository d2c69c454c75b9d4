"""Dataset-level feature transforms, fitted on the training split only.

Sentence embeddings such as MiniLM's are L2-normalised (each dimension ~ +-0.05); with
Adam's per-step update size, weights would need thousands of steps to reach a useful
scale. Per-dimension standardisation with training-split statistics fixes that without
leaking validation or test information.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from merc.data.schema import MODALITIES, MercDataset

#: Added to the std so that constant dimensions do not divide by zero.
STANDARDIZE_EPS: float = 1e-6


def feature_statistics(dataset: MercDataset, modality: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Mean and std ``[d]`` of a modality over the *available* utterances of ``split``."""
    col = MODALITIES.index(modality)
    rows = []
    for conv in dataset.conversations(split):
        feats = conv.features[modality]
        if conv.availability is not None:
            feats = feats[np.asarray(conv.availability, dtype=bool)[:, col]]
        rows.append(feats)
    stacked = np.concatenate(rows) if rows else np.zeros((0, dataset.dims[modality]), np.float32)
    if stacked.shape[0] == 0:
        d = dataset.dims[modality]
        return np.zeros(d, np.float32), np.ones(d, np.float32)
    return stacked.mean(0).astype(np.float32), stacked.std(0).astype(np.float32)


def standardize_features(
    dataset: MercDataset,
    modalities: Sequence[str] | None = None,
    split: str = "train",
    eps: float = STANDARDIZE_EPS,
    statistics: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> MercDataset:
    """A copy with each modality z-scored by ``split`` statistics.

    Statistics come from the *available* entries only. Missing entries (``availability``
    false) become exactly 0 -- the training mean -- unless the dataset was imputed
    (``meta["imputation"]`` set by :func:`merc.data.missing.impute`): then the filled
    values are deliberate and are z-scored like the others.

    Args:
        dataset: Dataset with features attached.
        modalities: Which to transform (default: all attached).
        split: The split whose statistics are used (train: nothing leaks).
        eps: Added to the std so constant dimensions do not divide by zero.
        statistics: ``{modality: (mean [d], std [d])}`` to use instead of ``split``'s,
            e.g. a training split's statistics for a test-only view.
    """
    mods = tuple(modalities) if modalities is not None else dataset.modalities
    stats = dict(statistics) if statistics is not None else {m: feature_statistics(dataset, m, split) for m in mods}
    keep_filled = "imputation" in dataset.meta
    splits = {}
    for name, convs in dataset.splits.items():
        new_convs = []
        for conv in convs:
            feats = dict(conv.features)
            for m in mods:
                mean, std = stats[m]
                z = ((conv.features[m] - mean) / (std + eps)).astype(np.float32)
                if conv.availability is not None and not keep_filled:
                    # Missing features are exactly zero: the training mean, the same for every model.
                    z[~np.asarray(conv.availability, dtype=bool)[:, MODALITIES.index(m)]] = 0.0
                feats[m] = z
            new_convs.append(conv.replace(features=feats))
        splits[name] = new_convs
    meta = dict(dataset.meta, standardized=list(mods))
    out = MercDataset(
        name=dataset.name,
        label_names=dataset.label_names,
        splits=splits,
        modalities=dataset.modalities,
        speaker_vocab=dataset.speaker_vocab,
        description=dataset.description,
        meta=meta,
    )
    return out
