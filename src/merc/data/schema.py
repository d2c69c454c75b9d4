"""The conversation schema every merc dataset, reader, model and trainer shares.

A :class:`Conversation` is one dialogue: ordered utterances with their speakers, labels,
optional transcripts and per-modality features. A :class:`MercDataset` holds the
conversations of the named splits together with the facts about the dataset (label
names, modalities and their dims, speaker vocabulary) that models and trainers read from
here and nowhere else.

Modalities are named by one letter: ``t`` (text), ``a`` (audio), ``v`` (visual), always
in that canonical order.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from merc.errors import DataError

#: Canonical modality order; every dict of modalities is iterated in this order.
MODALITIES: tuple[str, ...] = ("t", "a", "v")
MODALITY_NAMES: dict[str, str] = {"t": "text", "a": "audio", "v": "visual"}
SPLITS: tuple[str, ...] = ("train", "valid", "test")
#: Label id of an utterance that carries no label (ignored by losses and metrics).
UNLABELLED: int = -1


def parse_modalities(spec: str | Iterable[str]) -> tuple[str, ...]:
    """Parse ``"tav"``, ``"t,a"`` or ``["t", "v"]`` into canonical order.

    Raises:
        DataError: an unknown letter, a repeated letter or an empty selection.

    >>> parse_modalities("vt")
    ('t', 'v')
    """
    letters = [c for c in spec if c not in ", "] if isinstance(spec, str) else list(spec)
    unknown = [m for m in letters if m not in MODALITIES]
    if unknown:
        raise DataError(
            f"unknown modality {unknown[0]!r} in {spec!r}; use letters from 'tav' "
            "(t=text, a=audio, v=visual), e.g. --modalities ta"
        )
    if len(set(letters)) != len(letters):
        raise DataError(f"modality repeated in {spec!r}")
    if not letters:
        raise DataError("no modality selected; use e.g. --modalities t")
    return tuple(m for m in MODALITIES if m in letters)


@dataclass
class Conversation:
    """One dialogue.

    Attributes:
        id: Dialogue id, unique within the dataset.
        speakers: Speaker name per utterance (``len == n_utt``).
        labels: Class id per utterance, ``int64 [n_utt]``; :data:`UNLABELLED` for none.
        utterance_ids: Id per utterance (e.g. ``Ses01F_impro01_F000``).
        texts: Transcript per utterance, or ``None`` when unknown.
        features: Utterance-level features per modality, ``float32 [n_utt, d_m]``.
        sequences: Optional token/frame-level features per modality: a list of
            ``n_utt`` arrays ``float32 [L_i, d'_m]`` (for token-level models such as MGCMA;
            ``L_i`` may be 0). Loaded only on request (``load_dataset(...,
            sequences="t")`` or a name like ``iemocap4@t``, :mod:`merc.data.registry`),
            stored by the native format, batched as ``Batch.sequences``.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        availability: Optional per-utterance modality availability, ``bool [n_utt, 3]``
            in canonical order ``t, a, v``; ``None`` means every modality is present.
            Missing features are expected to be zeroed (or imputed) in ``features``.
        meta: Free-form extras (season, episode, ...).

    Shapes:
        - labels: ``[n_utt]``
        - features[m]: ``[n_utt, d_m]``
    """

    id: str
    speakers: list[str]
    labels: np.ndarray
    utterance_ids: list[str] = field(default_factory=list)
    texts: list[str] | None = None
    features: dict[str, np.ndarray] = field(default_factory=dict)
    sequences: dict[str, list[np.ndarray]] = field(default_factory=dict)
    split: str = "train"
    availability: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if not self.utterance_ids:
            self.utterance_ids = [f"{self.id}_{i}" for i in range(len(self.labels))]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def replace(self, **changes: Any) -> Conversation:
        """A shallow copy with some fields replaced."""
        return dataclasses.replace(self, **changes)

    def select_utterances(self, keep: np.ndarray) -> Conversation:
        """A copy holding only the utterances where ``keep`` (bool ``[n_utt]``) is true."""
        idx = np.flatnonzero(keep)
        return self.replace(
            speakers=[self.speakers[i] for i in idx],
            labels=self.labels[idx],
            utterance_ids=[self.utterance_ids[i] for i in idx],
            texts=None if self.texts is None else [self.texts[i] for i in idx],
            features={m: f[idx] for m, f in self.features.items()},
            sequences={m: [s[i] for i in idx] for m, s in self.sequences.items()},
            availability=None if self.availability is None else self.availability[idx],
        )


@dataclass
class MercDataset:
    """Conversations of the named splits plus the dataset facts.

    Attributes:
        name: Registry name (e.g. ``iemocap6``).
        label_names: Ordered class names; label id ``k`` is ``label_names[k]``.
        splits: Conversations per split name (``train``, ``valid``, ``test``).
        modalities: Modalities whose features are attached, canonical order.
        speaker_vocab: All speaker names, sorted; a speaker's global id is its index.
        description: One paragraph for ``merc datasets``; says what is real, what is
            generated.
        max_parties: Largest number of distinct speakers in one dialogue.
    """

    name: str
    label_names: list[str]
    splits: dict[str, list[Conversation]]
    modalities: tuple[str, ...] = ()
    speaker_vocab: list[str] = field(default_factory=list)
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.speaker_vocab:
            self.speaker_vocab = sorted({s for c in self.conversations() for s in c.speakers})

    # -- facts -----------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def num_speakers(self) -> int:
        return len(self.speaker_vocab)

    @property
    def max_parties(self) -> int:
        return max((len(set(c.speakers)) for c in self.conversations()), default=1)

    @property
    def dims(self) -> dict[str, int]:
        """Feature dim per attached modality (read from the first conversation)."""
        for conv in self.conversations():
            return {m: int(conv.features[m].shape[1]) for m in self.modalities}
        return {}

    def conversations(self, split: str | None = None) -> Iterator[Conversation]:
        names = SPLITS if split is None else (split,)
        for name in names:
            yield from self.splits.get(name, [])

    def speaker_index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.speaker_vocab)}

    def summary(self) -> dict[str, dict[str, Any]]:
        """Dialogues, utterances and per-class counts of labelled utterances per split."""
        out: dict[str, dict[str, Any]] = {}
        for split in SPLITS:
            convs = self.splits.get(split, [])
            counts: Counter[int] = Counter()
            for c in convs:
                counts.update(int(x) for x in c.labels if x != UNLABELLED)
            out[split] = {
                "dialogues": len(convs),
                "utterances": int(sum(len(c) for c in convs)),
                "classes": {self.label_names[k]: counts.get(k, 0) for k in range(self.num_classes)},
            }
        return out

    def with_modalities(self, modalities: Sequence[str]) -> MercDataset:
        """A view keeping only the given attached modalities (features dropped otherwise)."""
        mods = parse_modalities(modalities)
        missing = [m for m in mods if m not in self.modalities]
        if missing:
            have = "".join(self.modalities) or "none"
            raise DataError(
                f"dataset {self.name!r} has no {', '.join(missing)} features (it has: {have}); "
                "pick --modalities from those"
            )
        splits = {
            s: [
                c.replace(
                    features={m: c.features[m] for m in mods},
                    sequences={m: v for m, v in c.sequences.items() if m in mods},
                )
                for c in convs
            ]
            for s, convs in self.splits.items()
        }
        return dataclasses.replace(self, splits=splits, modalities=mods)

    def validate(self) -> None:
        """Check the whole dataset; raise :class:`DataError` naming the first problem.

        Checks: every split non-empty, no empty dialogue, per-utterance lists of equal
        length, labels in ``[0, num_classes)`` or :data:`UNLABELLED`, each modality
        present with one consistent dim and finite values; sequences (where present)
        one ``[L_i, d']`` array per utterance, one ``d'`` per modality, finite.
        """
        dims: dict[str, int] = {}
        seq_dims: dict[str, int] = {}
        for split in SPLITS:
            if not self.splits.get(split):
                raise DataError(f"dataset {self.name!r} has no {split!r} conversations")
        for conv in self.conversations():
            where = f"dataset {self.name!r}, dialogue {conv.id!r}"
            n = len(conv)
            if n == 0:
                raise DataError(f"{where}: empty dialogue (no utterances); remove it")
            if len(conv.speakers) != n:
                raise DataError(f"{where}: {len(conv.speakers)} speakers for {n} labels")
            if conv.texts is not None and len(conv.texts) != n:
                raise DataError(f"{where}: {len(conv.texts)} texts for {n} labels")
            bad = conv.labels[(conv.labels != UNLABELLED) & ((conv.labels < 0) | (conv.labels >= self.num_classes))]
            if bad.size:
                raise DataError(
                    f"{where}: label {int(bad[0])} out of range; labels must be 0..{self.num_classes - 1} "
                    f"({', '.join(self.label_names)}) or {UNLABELLED} for unlabelled"
                )
            for m in self.modalities:
                if m not in conv.features:
                    raise DataError(f"{where}: no {MODALITY_NAMES[m]} features")
                feat = conv.features[m]
                if feat.ndim != 2 or feat.shape[0] != n:
                    raise DataError(
                        f"{where}: {MODALITY_NAMES[m]} features have shape {tuple(feat.shape)}, expected [{n}, d]"
                    )
                d = dims.setdefault(m, int(feat.shape[1]))
                if feat.shape[1] != d:
                    raise DataError(
                        f"{where}: {MODALITY_NAMES[m]} features have dim {feat.shape[1]}, other dialogues have {d}"
                    )
                if not np.isfinite(feat).all():
                    raise DataError(f"{where}: {MODALITY_NAMES[m]} features contain NaN or inf; clean or impute them")
            for m, rows in conv.sequences.items():
                what = f"{where}: {MODALITY_NAMES.get(m, repr(m))} sequences"
                if m not in MODALITIES or len(rows) != n:
                    raise DataError(f"{what}: expected one array per utterance ({n}) of a modality t, a or v")
                if rows and not all(np.ndim(r) == 2 for r in rows):
                    raise DataError(f"{what}: each utterance's frames must be a [L, d] array")
                for d in {int(np.shape(r)[1]) for r in rows}:
                    if seq_dims.setdefault(m, d) != d:
                        raise DataError(f"{what}: frames of dim {d}, elsewhere {seq_dims[m]}")
                if rows and not np.isfinite(np.concatenate(rows)).all():
                    raise DataError(f"{what} contain NaN or inf")


def class_weights(dataset: MercDataset, split: str = "train") -> np.ndarray:
    """Inverse-frequency class weights ``[C]`` normalised to mean 1 (for weighted CE)."""
    counts = np.zeros(dataset.num_classes)
    for c in dataset.conversations(split):
        lab = c.labels[c.labels != UNLABELLED]
        counts += np.bincount(lab, minlength=dataset.num_classes)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / dataset.num_classes, 0.0)
    return weights / max(weights[weights > 0].mean(), math.ulp(1.0))
