"""The real benchmark corpora: IEMOCAP and MELD annotations and transcripts.

Read from the data root (``--data-root``, ``$MERC_DATA_ROOT`` or ``../shared/data``).
These files carry labels, speakers and transcripts only; the text modality is computed
from the transcripts by :mod:`merc.features.text` on first use. Audio and visual
features of these corpora are not distributed here: users who own the published feature
pickles read them with :mod:`merc.data.formats`.

Datasets:
    - ``iemocap6``: 151 dialogues, 7,433 utterances, 6 classes, COSMIC split
      (108 train / 12 valid / 31 test dialogues; Session 5 is the test set).
    - ``iemocap4``: happy+excited merged, frustrated dropped: the 5,531-utterance 4-class
      protocol (4,290 train+valid / 1,241 test), validation = the same 12 COSMIC dialogues.
    - ``iemocap4-cogmen``: the COGMEN/CORECT 4-way: only happy, sad, neutral, angry
      utterances of the 6-way labels (4,543 utterances, 943 test).
    - ``meld7`` / ``meld3``: the official MELD csv release, 7 emotions / 3 sentiments,
      real speaker names, official dev split as validation.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from merc.data.registry import register_dataset
from merc.data.safe_pickle import safe_load_pickle
from merc.data.schema import Conversation, MercDataset
from merc.errors import DataError

IEMOCAP6_LABELS = ["happy", "sad", "neutral", "angry", "excited", "frustrated"]
IEMOCAP4_LABELS = ["happy", "sad", "neutral", "angry"]
MELD7_LABELS = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
MELD3_LABELS = ["neutral", "positive", "negative"]
_MELD_SPLIT_FILES = {"train": "train_sent_emo.csv", "valid": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"missing data file {path}; is --data-root the folder holding iemocap/ and meld/?")
    return path


def _iemocap_cosmic(root: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Per-dialogue speakers/labels/texts and the dialogue -> split map of the COSMIC file."""
    obj = safe_load_pickle(_require(root / "iemocap" / "iemocap_cosmic.pkl"))
    if not (isinstance(obj, (list, tuple)) and len(obj) == 6):
        raise DataError("iemocap_cosmic.pkl: expected a list of 6 [speakers, labels, sentences, train, test, valid]")
    speakers, labels, sentences, train_ids, test_ids, valid_ids = obj
    split_of = {d: "train" for d in train_ids} | {d: "valid" for d in valid_ids} | {d: "test" for d in test_ids}
    return {"speakers": speakers, "labels": labels, "sentences": sentences}, split_of


def _iemocap_utterance_ids(root: Path, fname: str) -> dict[str, Any]:
    obj = safe_load_pickle(_require(root / "iemocap" / fname))
    if not (isinstance(obj, (list, tuple)) and len(obj) == 6):
        raise DataError(f"{fname}: expected a list of 6 [utterance_ids, labels, speakers, sentences, train, test]")
    utt_ids, labels, speakers, sentences, _train, _test = obj
    return {"utterance_ids": utt_ids, "labels": labels, "speakers": speakers, "sentences": sentences}


def _iemocap_dataset(name: str, label_names: list[str], convs: list[Conversation], description: str) -> MercDataset:
    splits: dict[str, list[Conversation]] = {"train": [], "valid": [], "test": []}
    for conv in sorted(convs, key=lambda c: c.id):
        splits[conv.split].append(conv)
    # Transcripts are the same for all IEMOCAP variants: one text-feature cache entry.
    return MercDataset(
        name=name,
        label_names=label_names,
        splits=splits,
        description=description,
        meta={"text_cache_key": name, "corpus": "IEMOCAP"},
    )


def _load_iemocap6_conversations(root: Path) -> list[Conversation]:
    cosmic, split_of = _iemocap_cosmic(root)
    ids6 = _iemocap_utterance_ids(root, "iemocap_6way_ids.pkl")
    convs = []
    for dia, split in split_of.items():
        convs.append(
            Conversation(
                id=dia,
                split=split,
                speakers=list(cosmic["speakers"][dia]),
                labels=np.asarray(cosmic["labels"][dia]),
                utterance_ids=list(ids6["utterance_ids"].get(dia, [])),
                texts=[str(t) for t in cosmic["sentences"][dia]],
            )
        )
    return convs


#: MultiDAG+CL Table 4: the best number of curriculum buckets per corpus.
IEMOCAP_RECIPE_DEFAULTS = {"curriculum": {"buckets": 5}}
MELD_RECIPE_DEFAULTS = {"curriculum": {"buckets": 12}}


@register_dataset(
    "iemocap6",
    "IEMOCAP 6-way (hap, sad, neu, ang, exc, fru): 151 dyadic dialogues, 7,433 utterances; "
    "COSMIC split 108/12/31 dialogues (Session 5 = test). Text from the real transcripts; "
    "no audio/visual features are distributed here.",
    modalities="t",
    recipe_defaults=IEMOCAP_RECIPE_DEFAULTS,
)
def load_iemocap6(data_root: Path) -> MercDataset:
    convs = _load_iemocap6_conversations(data_root)
    return _iemocap_dataset("iemocap6", IEMOCAP6_LABELS, convs, get_description("iemocap6"))


@register_dataset(
    "iemocap4-cogmen",
    "IEMOCAP 4-way as in COGMEN/CORECT: only the hap, sad, neu, ang utterances of the 6-way "
    "labels are kept (exc and fru dropped): 4,543 utterances, 943 test; COSMIC split.",
    modalities="t",
    recipe_defaults=IEMOCAP_RECIPE_DEFAULTS,
)
def load_iemocap4_cogmen(data_root: Path) -> MercDataset:
    convs = []
    for conv in _load_iemocap6_conversations(data_root):
        kept = conv.select_utterances(conv.labels < 4)  # 6-way ids 0..3 are hap, sad, neu, ang
        if len(kept):
            convs.append(kept)
    ds = _iemocap_dataset("iemocap4-cogmen", IEMOCAP4_LABELS, convs, get_description("iemocap4-cogmen"))
    ds.meta["text_cache_key"] = "iemocap4-cogmen"
    return ds


@register_dataset(
    "iemocap4",
    "IEMOCAP 4-class protocol: happy+excited merged, frustrated removed; 5,531 utterances "
    "(4,290 train+valid / 1,241 test), validation = the 12 COSMIC validation dialogues.",
    modalities="t",
    recipe_defaults=IEMOCAP_RECIPE_DEFAULTS,
)
def load_iemocap4(data_root: Path) -> MercDataset:
    _, split_of = _iemocap_cosmic(data_root)
    ids4 = _iemocap_utterance_ids(data_root, "iemocap_4way_ids.pkl")
    convs = []
    for dia, split in split_of.items():
        if dia not in ids4["labels"] or not len(ids4["labels"][dia]):
            continue
        convs.append(
            Conversation(
                id=dia,
                split=split,
                speakers=list(ids4["speakers"][dia]),
                labels=np.asarray(ids4["labels"][dia]),
                utterance_ids=list(ids4["utterance_ids"][dia]),
                texts=[str(t) for t in ids4["sentences"][dia]],
            )
        )
    return _iemocap_dataset("iemocap4", IEMOCAP4_LABELS, convs, get_description("iemocap4"))


def read_meld_csv(path: Path, split: str, label_column: str, label_names: list[str]) -> list[Conversation]:
    """Read one official MELD csv (``Sr No., Utterance, Speaker, Emotion, ...``).

    Utterances are ordered by ``Utterance_ID`` within each ``Dialogue_ID`` (a few ids are
    missing in the release; the order is kept, the gaps are not filled).
    """
    index = {n: i for i, n in enumerate(label_names)}
    dialogues: dict[int, list[dict[str, str]]] = {}
    with open(_require(path), encoding="utf-8", newline="") as fh:
        for line_no, row in enumerate(csv.DictReader(fh), start=2):
            try:
                dialogues.setdefault(int(row["Dialogue_ID"]), []).append(row)
                int(row["Utterance_ID"])
            except (KeyError, ValueError, TypeError) as exc:
                raise DataError(f"{path}:{line_no}: malformed row ({exc})") from None
            if row[label_column].lower() not in index:
                raise DataError(f"{path}:{line_no}: unknown label {row[label_column]!r}; expected one of {label_names}")
    convs = []
    for dia_id in sorted(dialogues):
        rows = sorted(dialogues[dia_id], key=lambda r: int(r["Utterance_ID"]))
        convs.append(
            Conversation(
                id=f"{split}_dia{dia_id}",
                split=split,
                speakers=[r["Speaker"] for r in rows],
                labels=np.array([index[r[label_column].lower()] for r in rows]),
                utterance_ids=[f"{split}_dia{dia_id}_utt{r['Utterance_ID']}" for r in rows],
                # The release's typographic quotes are kept: they are what the encoder reads.
                texts=[r["Utterance"] for r in rows],
                meta={"season": rows[0]["Season"], "episode": rows[0]["Episode"]},
            )
        )
    return convs


def _load_meld(data_root: Path, name: str, label_column: str, label_names: list[str]) -> MercDataset:
    splits = {
        s: read_meld_csv(data_root / "meld" / f, s, label_column, label_names) for s, f in _MELD_SPLIT_FILES.items()
    }
    # meld7 and meld3 share transcripts: one text-feature cache entry.
    return MercDataset(
        name=name,
        label_names=label_names,
        splits=splits,
        description=get_description(name),
        meta={"text_cache_key": "meld", "corpus": "MELD"},
    )


@register_dataset(
    "meld7",
    "MELD emotions (neutral, surprise, fear, sadness, joy, disgust, anger): 1,432 multi-party "
    "dialogues from Friends, 13,708 utterances, official train/dev/test csv with real speaker "
    "names. Text from the real transcripts; no audio/visual features are distributed here.",
    modalities="t",
    recipe_defaults=MELD_RECIPE_DEFAULTS,
)
def load_meld7(data_root: Path) -> MercDataset:
    return _load_meld(data_root, "meld7", "Emotion", MELD7_LABELS)


@register_dataset(
    "meld3",
    "MELD sentiment (neutral, positive, negative) of the same dialogues as meld7.",
    modalities="t",
    recipe_defaults=MELD_RECIPE_DEFAULTS,
)
def load_meld3(data_root: Path) -> MercDataset:
    return _load_meld(data_root, "meld3", "Sentiment", MELD3_LABELS)


def get_description(name: str) -> str:
    from merc.data.registry import get_dataset_spec

    return get_dataset_spec(name).description
