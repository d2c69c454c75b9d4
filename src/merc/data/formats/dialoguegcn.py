"""Reader for the DialogueGCN-family feature pickle (IEMOCAP/MELD/MOSEI pre-extracted features).

The pre-extracted features published with DialogueGCN (Ghosal et al., EMNLP 2019,
``declare-lab/conv-emotion``, ``IEMOCAP_features_raw.pkl``) and reused by MMGCN (Hu et al.,
ACL 2021), COGMEN (Joshi et al., NAACL 2022) and CORECT (Nguyen et al., EMNLP 2023) are a
pickled 9-tuple::

    (videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, videoVisual,
     videoSentence, trainVid, testVid)

The first seven items are dicts keyed by dialogue id:

- ``videoIDs[vid]``: utterance ids in order of occurrence;
- ``videoSpeakers[vid]``: a speaker per utterance, either a name (IEMOCAP: ``'M'``/``'F'``)
  or a one-hot vector (MELD/MOSEI);
- ``videoLabels[vid]``: class id per utterance;
- ``videoText/videoAudio/videoVisual[vid]``: per-utterance feature vectors ``[n, d]``
  (IEMOCAP: text 100, audio 100, visual 512);
- ``videoSentence[vid]``: transcript per utterance.

``trainVid``/``testVid`` are iterables of dialogue ids. MMGCN's ``MELD_features_raw1.pkl``
is the same with a tenth, trailing item (ignored here); its labels are the 7 MELD emotions
in the order of :data:`MELD_EMOTIONS` and its speakers are one-hot vectors of length 9.

The format has no validation split (the reference loaders carve one out of the train
indices with an unseeded sampler), so :func:`read_dialoguegcn_pickle` takes explicit
``valid_ids`` or otherwise holds out a seeded ``valid_fraction`` of the train dialogues.

The helpers :func:`default_label_names`, :func:`speaker_name` and
:func:`conversation_from_fields` are shared with the CORECT reader.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from merc.data.safe_pickle import safe_load_pickle
from merc.data.schema import SPLITS, UNLABELLED, Conversation, MercDataset
from merc.errors import DataError

logger = logging.getLogger(__name__)

#: IEMOCAP 6-class label order of the published pickles ({'hap':0, 'sad':1, 'neu':2, 'ang':3, 'exc':4, 'fru':5}).
IEMOCAP6_LABELS: list[str] = ["happy", "sad", "neutral", "angry", "excited", "frustrated"]
#: IEMOCAP 4-class label order (COGMEN/CORECT ``iemocap_4``).
IEMOCAP4_LABELS: list[str] = ["happy", "sad", "neutral", "angry"]
#: MELD 7-emotion label order of MMGCN's ``MELD_features_raw1.pkl``.
MELD_EMOTIONS: list[str] = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]

_FIELDS: tuple[str, ...] = (
    "videoIDs",
    "videoSpeakers",
    "videoLabels",
    "videoText",
    "videoAudio",
    "videoVisual",
    "videoSentence",
    "trainVid",
    "testVid",
)


def describe(obj: Any) -> str:
    """A short description of a loaded object's structure, for error messages."""
    if isinstance(obj, Mapping):
        keys = list(obj.keys())
        shown = ", ".join(repr(k) for k in keys[:8]) + (", ..." if len(keys) > 8 else "")
        return f"a dict with keys [{shown}]"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} items"
    if isinstance(obj, np.ndarray):
        return f"a numpy array of shape {obj.shape}"
    return f"a {type(obj).__name__}"


def default_label_names(num_classes: int) -> list[str]:
    """Label names for ``num_classes`` classes of an IEMOCAP-style feature file.

    6 classes are IEMOCAP's 6 emotions, 4 classes IEMOCAP's 4; anything else gets
    ``class0 .. class{C-1}``.

    >>> default_label_names(4)
    ['happy', 'sad', 'neutral', 'angry']
    >>> default_label_names(2)
    ['class0', 'class1']
    """
    if num_classes == 6:
        return list(IEMOCAP6_LABELS)
    if num_classes == 4:
        return list(IEMOCAP4_LABELS)
    return [f"class{k}" for k in range(num_classes)]


def speaker_name(value: Any, where: str) -> str:
    """One speaker entry as a name.

    Names (``'M'``) are kept; a one-hot (or score) vector becomes ``spk<argmax>`` and an
    integer id ``spk<id>``, so MELD/MOSEI speakers get stable names across dialogues.

    >>> speaker_name([0, 0, 1, 0], "d1")
    'spk2'
    >>> speaker_name("F", "d1")
    'F'
    """
    if isinstance(value, (str, np.str_)):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("latin1")
    if isinstance(value, (bool, np.bool_)):
        raise DataError(f"{where}: speaker {value!r} is a bool; expected a name or a one-hot vector")
    if isinstance(value, (int, np.integer)):
        return f"spk{int(value)}"
    try:
        vec = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: speaker {value!r} is neither a name nor a one-hot vector") from None
    if vec.ndim != 1 or vec.size == 0:
        raise DataError(f"{where}: speaker entry has shape {vec.shape}; expected a name or a one-hot vector")
    return f"spk{int(np.argmax(vec))}"


def _as_list(value: Any, what: str, where: str) -> list[Any]:
    if isinstance(value, np.ndarray):
        return list(value) if value.ndim >= 1 else [value.item()]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise DataError(f"{where}: {what} is {describe(value)}; expected a list with one entry per utterance")


def _labels(value: Any, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: labels are not a list of integers") from None
    if arr.ndim != 1:
        raise DataError(f"{where}: labels have shape {arr.shape}; expected one integer per utterance")
    if arr.size and arr.dtype.kind == "f":
        # Some files store integral labels as floats; refuse only real fractions.
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise DataError(f"{where}: labels are not integers (e.g. {arr[0]!r}); a regression file is not supported")
    elif arr.size and arr.dtype.kind not in "iub":
        raise DataError(f"{where}: labels have dtype {arr.dtype}; expected integers")
    return arr.astype(np.int64)


def _features(value: Any, modality: str, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: {modality} features are not a numeric [n, d] array ({exc})") from None
    if arr.ndim != 2:
        raise DataError(f"{where}: {modality} features have shape {arr.shape}; expected [n_utterances, d]")
    return np.ascontiguousarray(arr)


def conversation_from_fields(
    conv_id: str,
    split: str,
    *,
    speakers: Any,
    labels: Any,
    features: Mapping[str, Any],
    utterance_ids: Any = None,
    sentences: Any = None,
    meta: dict[str, Any] | None = None,
) -> Conversation:
    """Build one :class:`Conversation` from raw per-dialogue fields, checking lengths.

    Args:
        conv_id: Dialogue id (already a string).
        split: Split name.
        speakers: Speaker names, one-hot vectors or integer ids per utterance.
        labels: Class id per utterance.
        features: Raw ``[n, d]`` features per modality letter.
        utterance_ids: Id per utterance, or ``None`` for ``<conv_id>_<i>``.
        sentences: Transcript per utterance, or ``None``.
        meta: Extras stored on the conversation.

    Raises:
        DataError: a field is malformed or its length disagrees with the labels.
    """
    where = f"dialogue {conv_id!r}"
    lab = _labels(labels, where)
    n = int(lab.shape[0])
    spk_raw = _as_list(speakers, "speakers", where)
    if len(spk_raw) != n:
        raise DataError(f"{where}: {len(spk_raw)} speakers for {n} labels; per-utterance lists must have equal length")
    spk = [speaker_name(s, where) for s in spk_raw]
    uids: list[str] = []
    if utterance_ids is not None:
        uids = [str(u) for u in _as_list(utterance_ids, "utterance ids", where)]
        if len(uids) != n:
            raise DataError(
                f"{where}: {len(uids)} utterance ids for {n} labels; per-utterance lists must have equal length"
            )
    texts: list[str] | None = None
    if sentences is not None:
        texts = [
            s.decode("latin1") if isinstance(s, bytes) else str(s) for s in _as_list(sentences, "sentences", where)
        ]
        if len(texts) != n:
            raise DataError(
                f"{where}: {len(texts)} sentences for {n} labels; per-utterance lists must have equal length"
            )
    feats: dict[str, np.ndarray] = {}
    for m, raw in features.items():
        arr = _features(raw, m, where)
        if arr.shape[0] != n:
            raise DataError(
                f"{where}: {arr.shape[0]} {m} feature rows for {n} labels; per-utterance lists must have equal length"
            )
        feats[m] = arr
    return Conversation(
        id=conv_id,
        speakers=spk,
        labels=lab,
        utterance_ids=uids,
        texts=texts,
        features=feats,
        split=split,
        meta=dict(meta or {}),
    )


def resolve_label_names(convs: Iterable[Conversation], label_names: Sequence[str] | None) -> list[str]:
    """``label_names`` if given, else defaults for ``max label + 1`` classes."""
    if label_names is not None:
        names = [str(x) for x in label_names]
        if not names:
            raise DataError("label_names is empty; give the class names in label-id order")
        return names
    top = max((int(c.labels.max()) for c in convs if len(c) and (c.labels != UNLABELLED).any()), default=-1)
    return default_label_names(top + 1)


def _id_list(value: Any, what: str) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise DataError(f"{what} is {describe(value)}; expected a list or set of dialogue ids")
    items = list(value)
    # A set's order depends on string hashing, which differs between processes: sort it.
    if isinstance(value, (set, frozenset)):
        items = sorted(items, key=str)
    return items


def _hold_out(train: list[str], valid_ids: Iterable[Any] | None, valid_fraction: float, seed: int) -> set[str]:
    if valid_ids is not None:
        wanted = [str(v) for v in valid_ids]
        unknown = [v for v in wanted if v not in set(train)]
        if unknown:
            raise DataError(f"valid_ids {unknown[:5]} are not train dialogues of this file; pass ids from trainVid")
        chosen = set(wanted)
    else:
        if not 0.0 < valid_fraction < 1.0:
            raise DataError(f"valid_fraction must be in (0, 1), got {valid_fraction}; or pass valid_ids")
        k = max(1, int(valid_fraction * len(train)))
        # Seeded choice over the sorted ids: the same file and seed always give the same split.
        order = np.random.default_rng(seed).permutation(len(train))
        ranked = sorted(train)
        chosen = {ranked[i] for i in order[:k]}
    if len(chosen) >= len(train):
        raise DataError(f"holding out {len(chosen)} of {len(train)} train dialogues would leave no training data")
    return chosen


def read_dialoguegcn_pickle(
    path: str | Path,
    name: str = "custom",
    label_names: Sequence[str] | None = None,
    valid_ids: Iterable[Any] | None = None,
    valid_fraction: float = 0.1,
    seed: int = 0,
) -> MercDataset:
    """Read a DialogueGCN/MMGCN/COGMEN/CORECT feature pickle (9- or 10-tuple).

    Args:
        path: The pickle, e.g. ``IEMOCAP_features_raw.pkl`` or ``MELD_features_raw1.pkl``.
        name: Dataset name to give the result.
        label_names: Class names in label-id order. Default: IEMOCAP's 6 names when the
            labels span 6 classes, IEMOCAP's 4 for 4, else ``class0..``.
        valid_ids: Train dialogues to use as the validation split (e.g. the 12 IEMOCAP
            validation dialogues of COSMIC). Default ``None``: hold out
            ``valid_fraction`` of the train dialogues instead.
        valid_fraction: Share of train dialogues held out for validation when
            ``valid_ids`` is not given (at least one; default 0.1, as the reference
            loaders' ``--valid 0.1``); chosen by a seeded permutation of the sorted ids,
            so it is deterministic, unlike the reference samplers.
        seed: Seed of that choice.

    Returns:
        A validated :class:`MercDataset` with ``t``, ``a`` and ``v`` features (float32),
        dialogue ids as strings, in the file's train/test order.

    Raises:
        DataError: the file is missing, truncated or not this layout; train/test ids are
            missing from the dicts; per-utterance lengths disagree; NaN features; labels
            out of range.
        UnsafePickleError: the pickle references anything but plain data.
    """
    path = Path(path)
    obj = safe_load_pickle(path)
    if not isinstance(obj, (tuple, list)) or len(obj) not in (9, 10):
        raise DataError(
            f"{path}: expected a 9-tuple (videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, "
            f"videoVisual, videoSentence, trainVid, testVid) or MMGCN's 10-tuple, got {describe(obj)}"
            + (
                "; a dict with train/dev/test is CORECT's format: use read_corect_pickle"
                if isinstance(obj, Mapping) and {"train", "test"} <= set(obj)
                else ""
            )
        )
    fields = dict(zip(_FIELDS, obj[:9], strict=True))
    for key in _FIELDS[:7]:
        if not isinstance(fields[key], Mapping):
            hint = ""
            if key == "videoSentence" and isinstance(obj[8], Mapping):
                hint = (
                    " (this looks like DialogueGCN's text+audio MELD_features.pkl, which has no visual "
                    "features; use MMGCN's MELD_features_raw1.pkl)"
                )
            raise DataError(
                f"{path}: item {_FIELDS.index(key)} ({key}) is {describe(fields[key])}; "
                f"expected a dict keyed by dialogue id{hint}"
            )
    train_raw = _id_list(fields["trainVid"], f"{path}: trainVid")
    test_raw = _id_list(fields["testVid"], f"{path}: testVid")

    seen: dict[str, Any] = {}
    for vid in train_raw + test_raw:
        if str(vid) in seen:
            raise DataError(
                f"{path}: dialogue {vid!r} is listed twice in trainVid/testVid; a dialogue belongs to one split"
            )
        seen[str(vid)] = vid
    for key in _FIELDS[:7]:
        try:
            missing = [v for v in train_raw + test_raw if v not in fields[key]]
        except TypeError:
            raise DataError(f"{path}: trainVid/testVid hold unhashable ids; expected strings or integers") from None
        if missing:
            raise DataError(
                f"{path}: {len(missing)} train/test dialogue(s) missing from {key}, e.g. {missing[0]!r}; "
                "the file is incomplete or its ids do not match"
            )

    train = [str(v) for v in train_raw]
    held = _hold_out(train, valid_ids, valid_fraction, seed)
    assignment = [(v, "valid" if str(v) in held else "train") for v in train_raw] + [(v, "test") for v in test_raw]

    splits: dict[str, list[Conversation]] = {s: [] for s in SPLITS}
    for vid, split in assignment:
        conv = conversation_from_fields(
            str(vid),
            split,
            speakers=fields["videoSpeakers"][vid],
            labels=fields["videoLabels"][vid],
            features={"t": fields["videoText"][vid], "a": fields["videoAudio"][vid], "v": fields["videoVisual"][vid]},
            utterance_ids=fields["videoIDs"][vid],
            sentences=fields["videoSentence"][vid],
        )
        splits[split].append(conv)

    names = resolve_label_names((c for s in splits.values() for c in s), label_names)
    valid_how = (
        "the given valid_ids" if valid_ids is not None else f"a seeded {valid_fraction:g} of train (seed {seed})"
    )
    dataset = MercDataset(
        name=name,
        label_names=names,
        splits=splits,
        modalities=("t", "a", "v"),
        description=(
            f"Pre-extracted features read from the DialogueGCN-style pickle {path.name}; "
            f"validation split = {valid_how}."
        ),
        meta={"source": str(path), "format": "dialoguegcn", "valid_ids": sorted(held)},
    )
    dataset.validate()
    logger.info("read %s: %s", path, {s: len(c) for s, c in splits.items()})
    return dataset


def read_mmgcn_meld_pickle(
    path: str | Path,
    name: str = "meld",
    label_names: Sequence[str] | None = None,
    valid_ids: Iterable[Any] | None = None,
    valid_fraction: float = 0.1,
    seed: int = 0,
) -> MercDataset:
    """Read MMGCN's ``MELD_features_raw1.pkl`` (10-tuple, 7 emotions, one-hot speakers).

    Hu et al., "MMGCN: Multimodal Fusion via Deep Graph Convolution Network for Emotion
    Recognition in Conversation", ACL 2021 (``hujingwen6666/MMGCN``). Same as
    :func:`read_dialoguegcn_pickle` with :data:`MELD_EMOTIONS` as default label names;
    speakers become ``spk0..spk8``. MELD's official dev split is not in the file, so the
    validation split is chosen as in :func:`read_dialoguegcn_pickle`.
    """
    return read_dialoguegcn_pickle(
        path,
        name=name,
        label_names=list(MELD_EMOTIONS) if label_names is None else label_names,
        valid_ids=valid_ids,
        valid_fraction=valid_fraction,
        seed=seed,
    )
