"""The recipe's ``data`` section and the checks a dataset passes before training.

:class:`DataOptions` is the schema of the ``data`` section (types, ranges, defaults),
checked with the recipe before any data loads. :func:`check_trainable` runs once the
dataset is loaded and before any tensor is built or epoch trained:

- **errors** (one line, exit 2): a dialogue longer than
  ``data.max_utterances_per_dialogue``, features larger than ``data.max_feature_gib``
  (both say how to split the data or raise the limit), a split without any labelled
  utterance (nothing to learn from, nothing to select on, or nothing to score);
- **warnings** (logged, the run goes on): a class absent from the training split, a
  modality whose features are constant over the training split.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from merc.data.schema import MODALITY_NAMES, SPLITS, UNLABELLED, MercDataset
from merc.errors import ConfigError, DataError
from merc.training.run_folder import RECORDED_DATA_KEYS
from merc.training.trainer import check_option

log = logging.getLogger(__name__)

#: Valid values of the numeric ``data`` options.
_DATA_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "max_utterances_per_dialogue": (lambda v: v >= 1, "an integer >= 1"),
    "max_feature_gib": (lambda v: v > 0, "a finite number > 0"),
}


@dataclass
class DataOptions:
    """The ``data`` section of a recipe.

    Args:
        standardize: z-score each modality with training-split statistics.
        max_utterances_per_dialogue: Longest dialogue merc trains on. Memory and time of
            the context and graph models grow with the square of a dialogue's length
            (a 100,000-utterance dialogue took 22 GB), so a longer one is refused before
            training with a message saying how to split it or raise the limit.
        max_feature_gib: Largest total size of the features (float32, every split and
            modality), in GiB. Training holds about three copies (loaded, standardised,
            tensors), so the default leaves room on a 32 GB machine.
    """

    standardize: bool = True
    max_utterances_per_dialogue: int = 2000
    max_feature_gib: float = 8.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = check_option(field.name, field.default, getattr(self, field.name), "data", _DATA_RANGES, {})
            setattr(self, field.name, value)

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, Any]) -> DataOptions:
        """The options of ``recipe["data"]``; the keys merc records there itself are skipped.

        Raises:
            ConfigError: An unknown ``data`` option, or a value of the wrong type or range.
        """
        section = recipe.get("data") or {}
        if not isinstance(section, Mapping):
            raise ConfigError(f"the data section must be a mapping of option: value, not {section!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [str(k) for k in section if k not in names and k not in RECORDED_DATA_KEYS]
        if unknown:
            raise ConfigError(f"unknown data option(s) {', '.join(unknown)}; valid: {', '.join(names)}")
        return cls(**{k: v for k, v in section.items() if k in names})


def feature_bytes(dataset: MercDataset) -> int:
    """Bytes of the attached features as float32."""
    dims = dataset.dims
    return 4 * sum(len(conv) * sum(dims.values()) for conv in dataset.conversations())


def check_trainable(dataset: MercDataset, options: DataOptions) -> None:
    """Refuse a dataset merc cannot train on honestly; warn about suspicious ones.

    Raises:
        DataError: A dialogue over the length limit, features over the memory limit, or a
            split with no labelled utterance.
    """
    limit = options.max_utterances_per_dialogue
    for conv in dataset.conversations():
        if len(conv) > limit:
            raise DataError(
                f"dataset {dataset.name!r}, dialogue {conv.id!r}: {len(conv)} utterances, over "
                f"data.max_utterances_per_dialogue={limit} (memory grows with the square of a dialogue's "
                f"length); split it into shorter dialogues, or raise the limit with data.max_utterances_per_dialogue=N"
            )
    size = feature_bytes(dataset) / 2**30
    if size > options.max_feature_gib:
        raise DataError(
            f"dataset {dataset.name!r}: its features take {size:.3g} GiB, over data.max_feature_gib="
            f"{options.max_feature_gib:g} (training holds about three copies); use fewer modalities or dialogues, "
            f"or raise the limit with data.max_feature_gib=N"
        )
    what = {
        "train": "nothing to learn from",
        "valid": "the model is selected on it",
        "test": "it is scored once",
    }
    for split in SPLITS:
        labelled = sum(int((conv.labels != UNLABELLED).sum()) for conv in dataset.conversations(split))
        if labelled == 0:
            raise DataError(
                f"dataset {dataset.name!r}: the {split} split has no labelled utterance ({what[split]}); "
                "label some of its utterances (labels -1 mean unlabelled)"
            )
    counts = np.zeros(dataset.num_classes, dtype=np.int64)
    for conv in dataset.conversations("train"):
        labels = conv.labels[conv.labels != UNLABELLED]
        counts += np.bincount(labels, minlength=dataset.num_classes)[: dataset.num_classes]
    absent = [dataset.label_names[k] for k in np.flatnonzero(counts == 0)]
    if absent:
        log.warning(
            "dataset %r: class(es) %s have no training utterance; the model cannot learn them",
            dataset.name,
            ", ".join(absent),
        )
    for m in dataset.modalities:
        feats = [conv.features[m] for conv in dataset.conversations("train")]
        if feats and all((f == feats[0][0]).all() for f in feats):
            log.warning(
                "dataset %r: the %s features are the same for every training utterance; "
                "that modality carries no information",
                dataset.name,
                MODALITY_NAMES[m],
            )


__all__ = ["DataOptions", "check_trainable", "feature_bytes"]
