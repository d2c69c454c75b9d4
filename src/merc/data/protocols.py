"""Evaluation protocols beyond a dataset's own splits: leave-one-session-out (LOSO).

IEMOCAP was recorded in five sessions, each with its own pair of actors. Speech emotion
papers (e.g. MGCMA) report it with **leave-one-session-out 5-fold cross-validation**:
fold ``k`` tests on session ``k`` and trains on the other four, so no test speaker is
ever seen in training; WA (accuracy) and UA (mean per-class recall) are averaged over
the folds.

The session of a dialogue is an integer ``meta["session"]`` when the dialogue carries
one (a user's own corpus), else read from an IEMOCAP dialogue id: ``Ses01F_impro01`` is
session 1 (:func:`dialogue_session`). Every IEMOCAP-based dataset (``iemocap6``,
``iemocap4``, ``iemocap4-cogmen``, ``iemocap6-synthav``, ``iemocap4-synthav``, and native folders exported
from them) has such ids.

Validation rule (the papers leave it open; the test session must stay untouched): each
session's dialogues (sorted by id) are permuted with a generator seeded by
``(split_seed, session)``, and the first ``valid_share`` of them (rounded half up, at
least one, never all) are that session's **validation dialogues**. Fold ``k``'s
validation is the validation dialogues of the training sessions, its training split the
rest of those sessions, its test split every dialogue of session ``k``. So validation
comes from the training sessions only, is stratified by session, and is the same for
every training seed and every model (it depends only on the ids, the share and the
split seed), which keeps folds and runs comparable. With the default share 0.1, IEMOCAP
gives 3 validation dialogues per session, 12 per fold: the size of the COSMIC
validation split.

>>> from merc.data.schema import Conversation, MercDataset
>>> convs = [Conversation(id=f"Ses0{s}F_impro0{i}", speakers=["F"], labels=[0]) for s in (1, 2, 3) for i in (1, 2)]
>>> ds = MercDataset(name="toy", label_names=["a"], splits={"train": convs, "valid": [], "test": []})
>>> [(f.held_out_session, len(f.train), len(f.valid), len(f.test)) for f in session_folds(ds, valid_share=0.5)]
[(1, 2, 2, 2), (2, 2, 2, 2), (3, 2, 2, 2)]
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from merc.data.schema import Conversation, MercDataset
from merc.errors import ConfigError, DataError

#: Protocol names of ``merc train --protocol``: the dataset's own splits, or LOSO.
PROTOCOLS: tuple[str, ...] = ("split", "loso")
#: Default share of each training session's dialogues held out for validation.
DEFAULT_VALID_SHARE = 0.1
#: Seed of the validation draw: fixed, so every run of every model sees the same folds.
DEFAULT_SPLIT_SEED = 0
#: ``Ses01F_impro01`` -> 1: the session number of an IEMOCAP dialogue id.
_IEMOCAP_ID = re.compile(r"^Ses(\d{2})[FM]_")


@dataclass(frozen=True)
class Fold:
    """One LOSO fold: the dialogue ids of each split.

    Attributes:
        held_out_session: The session tested (also the fold's number).
        train: Dialogue ids trained on (sorted).
        valid: Dialogue ids of model selection, from the training sessions (sorted).
        test: Every dialogue id of the held-out session (sorted).
    """

    held_out_session: int
    train: tuple[str, ...]
    valid: tuple[str, ...]
    test: tuple[str, ...]

    def splits(self) -> dict[str, tuple[str, ...]]:
        return {"train": self.train, "valid": self.valid, "test": self.test}


def dialogue_session(conv: Conversation) -> int | None:
    """The recording session of a dialogue, or ``None`` when it has none.

    ``conv.meta["session"]`` (an integer) wins; otherwise an IEMOCAP id such as
    ``Ses03M_script01_2`` gives 3.

    >>> dialogue_session(Conversation(id="Ses05F_impro03", speakers=["F"], labels=[0]))
    5
    >>> dialogue_session(Conversation(id="train_dia0", speakers=["Joey"], labels=[0])) is None
    True
    """
    session = conv.meta.get("session") if isinstance(conv.meta, Mapping) else None
    if isinstance(session, (int, np.integer)) and not isinstance(session, bool):
        return int(session)
    found = _IEMOCAP_ID.match(conv.id)
    return int(found.group(1)) if found else None


def dialogue_sessions(dataset: MercDataset) -> dict[str, int]:
    """``{dialogue id: session}`` over every split of ``dataset``.

    Raises:
        DataError: A dialogue without a session ("loso needs session ids ..."), or a
            dialogue id given twice (a dialogue would land in two splits).
    """
    sessions: dict[str, int] = {}
    for conv in dataset.conversations():
        session = dialogue_session(conv)
        if session is None:
            raise DataError(
                f"loso needs session ids: dataset {dataset.name!r}, dialogue {conv.id!r} has none (IEMOCAP ids "
                "such as Ses01F_impro01 give session 1, or give each dialogue an integer meta.session); "
                "use an IEMOCAP dataset (iemocap6, iemocap4, iemocap4-cogmen, iemocap6-synthav, iemocap4-synthav) or --protocol split"
            )
        if conv.id in sessions:
            raise DataError(
                f"loso: dataset {dataset.name!r} has dialogue id {conv.id!r} twice; dialogue ids must be unique "
                "so that no dialogue lands in two splits"
            )
        sessions[conv.id] = session
    return sessions


def check_valid_share(value: Any) -> float:
    """``valid_share`` as a float in ``(0, 1)``.

    Raises:
        ConfigError: Not a number strictly between 0 and 1.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ConfigError(f"--valid-share: {value!r} is not a share in (0, 1), e.g. 0.1")
    return float(value)


def validation_dialogues(ids: Sequence[str], session: int, valid_share: float, split_seed: int) -> list[str]:
    """A session's validation dialogues: a seeded draw of ``valid_share`` of its ids.

    ``round(valid_share * n)`` rounded half up, at least 1 and at most ``n - 1`` (a
    session keeps a training dialogue); none for a session of one dialogue. The draw
    depends on ``(split_seed, session)`` and the sorted ids only.
    """
    ordered = sorted(ids)
    n = len(ordered)
    if n < 2:
        return []
    count = min(max(math.floor(valid_share * n + 0.5), 1), n - 1)
    order = np.random.default_rng([split_seed, session]).permutation(n)
    return sorted(ordered[i] for i in order[:count])


def session_folds(
    dataset: MercDataset, valid_share: float = DEFAULT_VALID_SHARE, split_seed: int = DEFAULT_SPLIT_SEED
) -> list[Fold]:
    """The leave-one-session-out folds of ``dataset``, one per session, in session order.

    The dataset's own splits are pooled: every dialogue is tested exactly once, in the
    fold of its session. Validation follows the rule of the module docstring.

    Args:
        dataset: A dataset whose dialogues have sessions (:func:`dialogue_session`).
        valid_share: Share of each training session's dialogues used for validation.
            Default 0.1.
        split_seed: Seed of the validation draw. Default 0.

    Raises:
        DataError: A dialogue without a session, fewer than two sessions, or no session
            with two dialogues to draw validation from.
        ConfigError: ``valid_share`` outside ``(0, 1)``.
    """
    valid_share = check_valid_share(valid_share)
    by_session: dict[int, list[str]] = {}
    for dia, session in dialogue_sessions(dataset).items():
        by_session.setdefault(session, []).append(dia)
    if len(by_session) < 2:
        raise DataError(
            f"loso needs at least two sessions; dataset {dataset.name!r} has "
            f"{len(by_session)} ({', '.join(map(str, sorted(by_session))) or 'none'})"
        )
    held_for_valid = {s: set(validation_dialogues(ids, s, valid_share, split_seed)) for s, ids in by_session.items()}
    folds = []
    for test_session in sorted(by_session):
        train: list[str] = []
        valid: list[str] = []
        for session, ids in by_session.items():
            if session != test_session:
                valid += [d for d in ids if d in held_for_valid[session]]
                train += [d for d in ids if d not in held_for_valid[session]]
        if not valid:
            raise DataError(
                f"loso fold {test_session}: no training session has two dialogues to hold one out for validation"
            )
        folds.append(
            Fold(test_session, tuple(sorted(train)), tuple(sorted(valid)), tuple(sorted(by_session[test_session])))
        )
    return folds


def fold_dataset(dataset: MercDataset, fold: Fold) -> MercDataset:
    """``dataset`` with its dialogues regrouped into ``fold``'s splits (shared arrays, not copied).

    Name, labels, modalities and speaker vocabulary stay the dataset's, so a model built
    for one fold fits every fold.
    """
    by_id = {conv.id: conv for conv in dataset.conversations()}
    splits = {split: [by_id[d].replace(split=split) for d in ids] for split, ids in fold.splits().items()}
    meta = {**dataset.meta, "fold": fold.held_out_session}
    return dataclasses.replace(dataset, splits=splits, meta=meta)


def folds_record(folds: Sequence[Fold]) -> list[dict[str, Any]]:
    """The folds as JSON (``folds.json`` of a LOSO run folder): per fold its session and ids per split."""
    return [
        {
            "fold": f.held_out_session,
            "held_out_session": f.held_out_session,
            **{k: list(v) for k, v in f.splits().items()},
        }
        for f in folds
    ]


__all__ = [
    "DEFAULT_SPLIT_SEED",
    "DEFAULT_VALID_SHARE",
    "PROTOCOLS",
    "Fold",
    "check_valid_share",
    "dialogue_session",
    "dialogue_sessions",
    "fold_dataset",
    "folds_record",
    "session_folds",
    "validation_dialogues",
]
