"""Reader for CORECT's preprocessed ``data_<dataset>.pkl``.

Nguyen et al., "Conversation Understanding using Relational Temporal Graph Neural
Networks with Auxiliary Cross-Modality Interaction", EMNLP 2023
(``leson502/CORECT_EMNLP2023``). Its ``preprocess.py`` turns the DialogueGCN-style
pickle into a dict of splits::

    {"train": [dialogue, ...], "dev": [...], "test": [...]}

where each dialogue is a dict with keys ``vid``, ``speakers``, ``labels``, ``text``,
``audio``, ``visual`` and ``sentence`` (per-utterance lists; ``text`` holds the sentence
embeddings). CORECT's ``dev`` split becomes merc's ``valid``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from merc.data.formats.dialoguegcn import conversation_from_fields, describe, resolve_label_names
from merc.data.safe_pickle import safe_load_pickle
from merc.data.schema import Conversation, MercDataset
from merc.errors import DataError

logger = logging.getLogger(__name__)

#: CORECT split name -> merc split name.
_SPLIT_NAMES: dict[str, str] = {"train": "train", "dev": "valid", "test": "test"}
_KEYS: tuple[str, ...] = ("vid", "speakers", "labels", "text", "audio", "visual", "sentence")


def read_corect_pickle(
    path: str | Path,
    name: str = "custom",
    label_names: Sequence[str] | None = None,
) -> MercDataset:
    """Read CORECT's ``data_<dataset>.pkl`` (e.g. ``data_iemocap.pkl``).

    Args:
        path: The pickle.
        name: Dataset name to give the result.
        label_names: Class names in label-id order. Default: IEMOCAP's 6 names when the
            labels span 6 classes, IEMOCAP's 4 for 4 (``iemocap_4``), else ``class0..``.

    Returns:
        A validated :class:`MercDataset` with ``t``, ``a`` and ``v`` features (float32)
        and the file's train/dev/test dialogues, in file order, as train/valid/test.
        Utterance ids are ``<vid>_<i>`` (the file keeps none).

    Raises:
        DataError: the file is missing, truncated or not this layout; a dialogue lacks a
            key; per-utterance lengths disagree; NaN features; labels out of range.
        UnsafePickleError: the pickle references anything but plain data.
    """
    path = Path(path)
    obj = safe_load_pickle(path)
    if not isinstance(obj, Mapping) or not set(_SPLIT_NAMES) <= set(obj):
        hint = ""
        if isinstance(obj, (tuple, list)) and len(obj) in (9, 10):
            hint = "; a 9/10-tuple is the DialogueGCN/MMGCN format: use read_dialoguegcn_pickle"
        raise DataError(f"{path}: expected CORECT's dict with keys 'train', 'dev', 'test', got {describe(obj)}{hint}")

    splits: dict[str, list[Conversation]] = {s: [] for s in _SPLIT_NAMES.values()}
    seen: set[str] = set()
    for src, split in _SPLIT_NAMES.items():
        dialogues = obj[src]
        if not isinstance(dialogues, (list, tuple)):
            raise DataError(f"{path}: {src!r} is {describe(dialogues)}; expected a list of dialogue dicts")
        for i, dlg in enumerate(dialogues):
            if not isinstance(dlg, Mapping):
                raise DataError(f"{path}: {src}[{i}] is {describe(dlg)}; expected a dict with keys {', '.join(_KEYS)}")
            missing = [k for k in _KEYS if k not in dlg]
            if missing:
                raise DataError(f"{path}: {src}[{i}] lacks key(s) {', '.join(missing)}; expected {', '.join(_KEYS)}")
            vid = dlg["vid"]
            conv_id = vid.decode("latin1") if isinstance(vid, bytes) else str(vid)
            if conv_id in seen:
                raise DataError(f"{path}: dialogue {conv_id!r} appears twice; each dialogue belongs to one split")
            seen.add(conv_id)
            splits[split].append(
                conversation_from_fields(
                    conv_id,
                    split,
                    speakers=dlg["speakers"],
                    labels=dlg["labels"],
                    features={"t": dlg["text"], "a": dlg["audio"], "v": dlg["visual"]},
                    sentences=dlg["sentence"],
                )
            )

    dataset = MercDataset(
        name=name,
        label_names=resolve_label_names((c for s in splits.values() for c in s), label_names),
        splits=splits,
        modalities=("t", "a", "v"),
        description=f"Pre-extracted features read from CORECT's preprocessed pickle {path.name} (dev -> valid).",
        meta={"source": str(path), "format": "corect"},
    )
    dataset.validate()
    logger.info("read %s: %s", path, {s: len(c) for s, c in splits.items()})
    return dataset
