r"""Emotion-shift curriculum with a baby-step scheduler (MultiDAG+CL, Nguyen et al., 2024).

Nguyen, Nguyen, Ha, Le. "Curriculum Learning Meets Directed Acyclic Graph for Multimodal
Emotion Recognition." LREC-COLING 2024, Section 2.2 and Algorithm 1. The curriculum only
chooses which training dialogues an epoch sees, so it works with every merc model.

Difficulty measure (eq. 8)
--------------------------
For a conversation :math:`c` with :math:`N_u` utterances and :math:`N_{sp}` distinct
speakers, let each speaker's emotion sequence be the labels of that speaker's utterances
in dialogue order. An *emotion shift* is a pair of consecutive utterances of the same
speaker (no utterance of that speaker in between; other speakers may talk in between)
with different emotions; :math:`N_{shift}` counts them over all speakers. Then

.. math::
    \mathrm{DLF}(c) = \frac{N_{shift}(c) + N_{sp}(c)}{N_u(c) + N_{sp}(c)}

:math:`N_{sp}` is additive smoothing: a one-utterance dialogue scores 1/2 rather than 0/1,
and with few utterances the score is pulled towards 1 (more speakers, harder). Emotion
changes *between* speakers are not shifts. This is Algorithm 1 and the authors' ``cl.py``
(``Dialog.cc``) exactly on fully labelled dialogues (IEMOCAP and MELD as used there).
Unlabelled utterances (:data:`~merc.data.schema.UNLABELLED`), which those corpora do not
have, carry no emotion: they are left out of the speakers' emotion sequences (so
``happy, ?, sad`` is one shift) but still count in :math:`N_u` and their speakers in
:math:`N_{sp}` (the paper's "total number of utterances" and "speakers appearing"). The
authors' code would compare the placeholder label ``-1`` like an emotion instead.

Scheduler (Algorithm 1, "baby step")
------------------------------------
Training dialogues are sorted by difficulty (stable: ties keep dataset order, as the
authors' Python ``sort``) and cut into ``k`` consecutive buckets, easiest first. Epoch
``e`` (0-based) trains on buckets ``0..min(e, k-1)``: one more bucket per epoch, then all
dialogues from epoch ``k-1`` on (the authors' ``run.py``: ``babystep_index = e + 1``
capped at ``bucket_number``). Buckets are as equal as possible (sizes differ by at most
one, larger ones first); the authors cut chunks of ``ceil(n / k)``, which for some
``(n, k)`` gives fewer than ``k`` buckets (e.g. ``n = 9, k = 6``), so merc's split always
yields exactly ``k`` buckets (``min(k, n)`` when there are fewer dialogues than buckets).
Table 4's best bucket counts: 5 for IEMOCAP, 12 for MELD.

Recipe section::

    curriculum:
      strategy: emotion-shift   # or "none" to switch a recipe's curriculum off
      buckets: 5
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from merc.data.schema import UNLABELLED, MercDataset
from merc.errors import ConfigError, DataError, resolve_choice
from merc.training.plugins.base import TrainerPlugin
from merc.training.plugins.registry import PluginOption, register_plugin

if TYPE_CHECKING:
    from merc.training.trainer import Trainer

log = logging.getLogger(__name__)

STRATEGIES = ("emotion-shift", "none")


def emotion_shift_difficulty(labels: Sequence[int] | np.ndarray, speakers: Sequence[Hashable]) -> float:
    """Difficulty of one conversation, MultiDAG+CL eq. 8 (see the module docstring).

    Args:
        labels: Emotion label per utterance; :data:`~merc.data.schema.UNLABELLED` for none.
        speakers: Speaker per utterance (any hashable ids).

    Returns:
        :math:`(N_{shift} + N_{sp}) / (N_u + N_{sp})`, in ``(0, 1]``.

    Raises:
        DataError: empty conversation, or labels and speakers of different lengths.

    >>> emotion_shift_difficulty([0, 1, 2, 1, 0], ["A", "B", "A", "B", "A"])  # A: 0,2,0 -> 2 shifts
    0.5714285714285714
    """
    labels = [int(x) for x in np.asarray(labels).reshape(-1)]
    if len(labels) != len(speakers):
        raise DataError(f"{len(labels)} labels but {len(speakers)} speakers")
    if not labels:
        raise DataError("the difficulty of an empty conversation is undefined")
    last_emotion: dict[Hashable, int] = {}
    shifts = 0
    for label, speaker in zip(labels, speakers, strict=True):
        if label == UNLABELLED:
            continue
        if speaker in last_emotion and last_emotion[speaker] != label:
            shifts += 1
        last_emotion[speaker] = label
    n_speakers = len(set(speakers))
    return (shifts + n_speakers) / (len(labels) + n_speakers)


def difficulty_buckets(difficulties: Sequence[float], buckets: int) -> list[list[int]]:
    """Indices sorted by difficulty (stable), cut into ``min(buckets, n)`` near-equal buckets.

    >>> difficulty_buckets([0.9, 0.1, 0.5, 0.1, 0.7], 2)
    [[1, 3, 2], [4, 0]]
    """
    if buckets < 1:
        raise ConfigError(f"curriculum.buckets must be >= 1, got {buckets}")
    if not difficulties:
        raise DataError("a curriculum needs at least one training dialogue")
    order = np.argsort(np.asarray(difficulties, dtype=np.float64), kind="stable")
    return [chunk.tolist() for chunk in np.array_split(order, min(buckets, len(order)))]


class EmotionShiftCurriculum(TrainerPlugin):
    """Baby-step curriculum over dialogues ranked by emotion-shift difficulty (Algorithm 1).

    Epoch ``e`` trains on the ``min(e + 1, k)`` easiest buckets; from epoch ``k - 1`` on, on
    every dialogue. Only :meth:`select_training_dialogues` acts; the model is untouched.

    Args:
        difficulties: Difficulty of each training dialogue, in ``trainer.train_items``
            order (:func:`emotion_shift_difficulty`).
        buckets: Number of buckets ``k`` (paper Table 4: 5 for IEMOCAP, 12 for MELD).
    """

    name = "curriculum"

    def __init__(self, difficulties: Sequence[float], buckets: int) -> None:
        self.difficulties = [float(d) for d in difficulties]
        self.requested_buckets = int(buckets)
        self.buckets = difficulty_buckets(self.difficulties, self.requested_buckets)
        if len(self.buckets) < self.requested_buckets:
            log.warning(
                "curriculum: %d buckets asked for but only %d training dialogues; using %d buckets",
                self.requested_buckets,
                len(self.difficulties),
                len(self.buckets),
            )
        self.last_epoch = -1

    @property
    def num_buckets(self) -> int:
        return len(self.buckets)

    def active_buckets(self, epoch: int) -> int:
        """How many buckets epoch ``epoch`` (0-based) trains on."""
        return min(max(epoch, 0) + 1, self.num_buckets)

    def dialogues_for_epoch(self, epoch: int) -> list[int]:
        """Training-dialogue indices of epoch ``epoch``, easiest first."""
        return [i for bucket in self.buckets[: self.active_buckets(epoch)] for i in bucket]

    def on_fit_start(self, trainer: Trainer) -> None:
        if len(trainer.train_items) != len(self.difficulties):
            raise ConfigError(
                f"curriculum has difficulties for {len(self.difficulties)} dialogues but the trainer has "
                f"{len(trainer.train_items)} training dialogues; build it from the same dataset"
            )

    def select_training_dialogues(self, trainer: Trainer, epoch: int, indices: list[int]) -> list[int]:
        allowed = set(self.dialogues_for_epoch(epoch))
        chosen = [i for i in indices if i in allowed]
        self.last_epoch = epoch
        log.info(
            "curriculum epoch %d: buckets 1-%d of %d, %d of %d dialogues",
            epoch,
            self.active_buckets(epoch),
            self.num_buckets,
            len(chosen),
            len(self.difficulties),
        )
        return chosen

    def state_dict(self) -> dict[str, Any]:
        # The schedule is a function of the epoch, which the trainer restores; the buckets
        # are stored so that resuming against different data or k fails loudly.
        return {"buckets": self.buckets, "requested_buckets": self.requested_buckets, "last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = [list(map(int, b)) for b in state.get("buckets", [])]
        if saved != self.buckets or int(state.get("requested_buckets", -1)) != self.requested_buckets:
            raise ConfigError(
                "the checkpoint's curriculum buckets differ from this run's (other training data or "
                "curriculum.buckets); resume with the original settings or use a new --out"
            )
        self.last_epoch = int(state.get("last_epoch", -1))


def check_curriculum(section: dict[str, Any]) -> tuple[str, int | None]:
    """The ``curriculum:`` section's strategy and bucket count, checked (no data needed).

    Returns:
        ``(strategy, buckets)``; ``buckets`` is ``None`` when the section leaves it unset.

    Raises:
        ConfigError: An unknown key, an unknown strategy, or buckets that are not a
            positive integer.
    """
    unknown = sorted(set(section) - {"strategy", "buckets"})
    if unknown:
        raise ConfigError(f"unknown curriculum option(s) {', '.join(unknown)}; valid: strategy, buckets")
    strategy = resolve_choice("curriculum strategy", str(section.get("strategy", "emotion-shift")), STRATEGIES)
    if "buckets" not in section:
        return strategy, None
    raw = section["buckets"]
    if isinstance(raw, str):
        try:
            raw = float(raw) if any(c in raw for c in ".eE") else int(raw)
        except ValueError:
            pass
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not float(raw).is_integer() or raw < 1:
        raise ConfigError(f"curriculum.buckets must be a positive integer, got {section['buckets']!r}")
    return strategy, int(raw)


def _check_curriculum_section(section: dict[str, Any]) -> None:
    check_curriculum(section)


@register_plugin(
    "curriculum",
    help="curriculum plug-in (MultiDAG+CL): emotion-shift difficulty, baby-step buckets",
    switch="curriculum",
    switch_key="strategy",
    choices=STRATEGIES,
    options=(
        PluginOption(
            "buckets",
            "buckets",
            int,
            "curriculum buckets (default: the dataset's, 5 for IEMOCAP, 12 for MELD: MultiDAG+CL Table 4)",
        ),
    ),
    check=_check_curriculum_section,
)
def build_curriculum(section: dict[str, Any], dataset: MercDataset) -> EmotionShiftCurriculum | None:
    """Build the curriculum from a recipe's ``curriculum:`` section (``None`` when off).

    Keys: ``strategy`` (``emotion-shift``, default, or ``none``) and ``buckets`` (required;
    MultiDAG+CL Table 4: 5 for IEMOCAP, 12 for MELD), checked by :func:`check_curriculum`.
    Difficulties are computed from ``dataset.splits["train"]``, the order of the
    trainer's training dialogues.
    """
    strategy, buckets = check_curriculum(section)
    if strategy == "none":
        return None
    if buckets is None:
        raise ConfigError(
            f"curriculum.buckets is required for dataset {dataset.name!r} (it has no default; MultiDAG+CL "
            "Table 4: 5 for IEMOCAP, 12 for MELD): pass --buckets K or curriculum.buckets=K"
        )
    train = dataset.splits.get("train", [])
    difficulties = [emotion_shift_difficulty(c.labels, c.speakers) for c in train]
    return EmotionShiftCurriculum(difficulties, buckets)


__all__ = [
    "EmotionShiftCurriculum",
    "build_curriculum",
    "check_curriculum",
    "difficulty_buckets",
    "emotion_shift_difficulty",
]
