"""Batching: conversations to padded tensors plus the index maps graph models need.

Conversations are converted to tensors once (:class:`ConversationTensors`); a batch of
dialogues is then padded to ``[B, T, ...]`` (:func:`collate`). Every model receives a
:class:`Batch` and returns predictions for the *valid* utterances only, flattened in
dialogue-major order (``N = lengths.sum()``), the order of :attr:`Batch.flat_index`.

Token/frame-level inputs (``Conversation.sequences``) are kept ragged per conversation,
one flat ``[sum L_i, d]`` tensor plus ``[n]`` lengths, and padded per batch over the
real utterances only: ``Batch.sequences[m]`` is ``[N, L_max, d]``, so a batch of long
dialogues does not pay for ``B * T * L_max`` frames. An utterance whose modality is
unavailable gets length 0 (and no frames) when the tensors are built.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from merc.data.schema import MODALITIES, UNLABELLED, Conversation, MercDataset
from merc.errors import DataError

#: Label value at padded / unlabelled positions (PyTorch's CE ``ignore_index`` default).
IGNORE_INDEX = -100


@dataclass
class ConversationTensors:
    """One conversation as tensors (built once per dataset, reused every epoch)."""

    id: str
    features: dict[str, Tensor]  # [n, d_m]
    speakers: Tensor  # long [n], global speaker ids
    parties: Tensor  # long [n], per-dialogue speaker index by first appearance
    labels: Tensor  # long [n], IGNORE_INDEX where unlabelled
    availability: Tensor  # bool [n, M], modalities of the dataset in canonical order
    #: Per modality with token/frame-level inputs: the frames of all utterances, one
    #: after another, ``float [sum L_i, d'_m]`` (none for unavailable utterances).
    sequences: dict[str, Tensor] = field(default_factory=dict)
    #: Per modality in ``sequences``: ``long [n]`` frames per utterance (0: none).
    sequence_lengths: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def sequence_dims(dataset: MercDataset) -> dict[str, int]:
    """``{modality: d'}`` of the token/frame-level inputs of ``dataset``'s attached modalities.

    Read from the first conversation with a non-empty utterance in that modality (an
    utterance may have zero frames, ``[0, d']``, which still carries the dim).

    Raises:
        DataError: Two conversations disagree on a modality's frame dim.
    """
    dims: dict[str, int] = {}
    for conv in dataset.conversations():
        for m, rows in conv.sequences.items():
            if m not in dataset.modalities or not rows:
                continue
            d = int(np.shape(rows[0])[-1])
            if dims.setdefault(m, d) != d:
                raise DataError(
                    f"dataset {dataset.name!r}, dialogue {conv.id!r}: {m!r} sequences have dim {d}, "
                    f"other dialogues have {dims[m]}"
                )
    return {m: dims[m] for m in MODALITIES if m in dims}


def to_tensors(dataset: MercDataset) -> dict[str, list[ConversationTensors]]:
    """Convert every split of ``dataset`` (features attached) to tensors."""
    speaker_ids = dataset.speaker_index()
    cols = [MODALITIES.index(m) for m in dataset.modalities]
    seq_dims = sequence_dims(dataset)
    out: dict[str, list[ConversationTensors]] = {}
    for split, convs in dataset.splits.items():
        out[split] = [conversation_tensors(c, dataset.modalities, speaker_ids, cols, seq_dims) for c in convs]
    return out


def _ragged(rows: Sequence[np.ndarray] | None, n: int, dim: int, keep: np.ndarray, where: str) -> tuple[Tensor, Tensor]:
    """One conversation's per-utterance frames as ``(flat [sum L_i, dim], lengths [n])``.

    Utterances where ``keep`` is false (modality unavailable) get length 0. ``rows is
    None`` (a conversation without this modality's sequences): all lengths 0.
    """
    if rows is None:
        return torch.zeros(0, dim), torch.zeros(n, dtype=torch.long)
    if len(rows) != n:
        raise DataError(f"{where}: {len(rows)} sequences for {n} utterances")
    kept = [np.asarray(r, dtype=np.float32).reshape(-1, dim) for r, k in zip(rows, keep) if k]
    lengths = np.zeros(n, dtype=np.int64)
    lengths[keep] = [len(r) for r in kept]
    flat = np.concatenate(kept) if kept else np.zeros((0, dim), dtype=np.float32)
    return torch.as_tensor(flat), torch.as_tensor(lengths)


def conversation_tensors(
    conv: Conversation,
    modalities: Sequence[str],
    speaker_ids: dict[str, int],
    cols: Sequence[int],
    sequence_dims: dict[str, int] | None = None,
) -> ConversationTensors:
    """One conversation as tensors.

    Args:
        conv: The conversation (features of ``modalities`` attached).
        modalities: Modalities to convert, canonical order.
        speaker_ids: Global speaker vocabulary index.
        cols: Column of each of ``modalities`` in ``conv.availability``'s ``t, a, v``.
        sequence_dims: ``{m: d'}`` of the token/frame-level inputs to convert
            (:func:`sequence_dims`); ``None`` or ``{}``: none.
    """
    n = len(conv)
    first_seen: dict[str, int] = {}
    parties = [first_seen.setdefault(s, len(first_seen)) for s in conv.speakers]
    labels = torch.as_tensor(conv.labels, dtype=torch.long).clone()
    labels[labels == UNLABELLED] = IGNORE_INDEX
    if conv.availability is None:
        avail = torch.ones(n, len(cols), dtype=torch.bool)
    else:
        avail = torch.as_tensor(np.asarray(conv.availability, dtype=bool)[:, list(cols)])
    sequences: dict[str, Tensor] = {}
    sequence_lengths: dict[str, Tensor] = {}
    for m, dim in (sequence_dims or {}).items():
        if m not in modalities:
            continue
        keep = avail[:, list(modalities).index(m)].numpy()
        where = f"dialogue {conv.id!r}, {m!r} sequences"
        sequences[m], sequence_lengths[m] = _ragged(conv.sequences.get(m), n, dim, keep, where)
    return ConversationTensors(
        id=conv.id,
        features={m: torch.as_tensor(np.asarray(conv.features[m], dtype=np.float32)) for m in modalities},
        speakers=torch.tensor([speaker_ids.get(s, 0) for s in conv.speakers], dtype=torch.long),
        parties=torch.tensor(parties, dtype=torch.long),
        labels=labels,
        availability=avail,
        sequences=sequences,
        sequence_lengths=sequence_lengths,
    )


@dataclass
class Batch:
    """A padded batch of ``B`` dialogues of at most ``T`` utterances.

    Attributes:
        features: Per modality ``float [B, T, d_m]``, zero at padding.
        mask: ``bool [B, T]``, true at real utterances.
        lengths: ``long [B]`` utterances per dialogue.
        speakers: ``long [B, T]`` global speaker ids (dataset vocabulary).
        parties: ``long [B, T]`` per-dialogue speaker index (0 = first to speak).
        availability: ``bool [B, T, M]``, modality present, columns in ``modalities`` order.
        labels: ``long [B, T]``, :data:`IGNORE_INDEX` at padding and unlabelled utterances.
        modalities: Modality letters of ``features``/``availability``, canonical order.
        dialogue_ids: The ``B`` dialogue ids.
        flat_index: ``long [N]`` positions of the real utterances in the row-major ``B*T``
            grid; model outputs are ``[N, ...]`` in this order.
        utterance_dialogue: ``long [N]`` batch row (dialogue) of each utterance.
        utterance_position: ``long [N]`` position of each utterance in its dialogue.
        complete: The batch before a model hid available entries from itself in training
            (``train_mask_rate``, :meth:`merc.models.base.MercModel.apply_availability`),
            so that it can reconstruct what it did not see; ``None`` otherwise.
        sequences: Token/frame-level inputs per modality that has them, ``float [N, L_m, d'_m]``
            over the real utterances in :attr:`flat_index` order, zero past each length
            (``{}`` when the dataset carries none).
        sequence_lengths: Per modality in ``sequences``, ``long [N]`` tokens/frames of each
            utterance (0 where the utterance has none).
    """

    features: dict[str, Tensor]
    mask: Tensor
    lengths: Tensor
    speakers: Tensor
    parties: Tensor
    availability: Tensor
    labels: Tensor
    modalities: tuple[str, ...]
    dialogue_ids: list[str] = field(default_factory=list)
    flat_index: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    utterance_dialogue: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    utterance_position: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    complete: Batch | None = None
    sequences: dict[str, Tensor] = field(default_factory=dict)
    sequence_lengths: dict[str, Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def max_len(self) -> int:
        return int(self.mask.shape[1])

    @property
    def num_utterances(self) -> int:
        return int(self.flat_index.shape[0])

    @property
    def flat_labels(self) -> Tensor:
        """``long [N]`` labels of the real utterances."""
        return self.flatten(self.labels)

    def flatten(self, x: Tensor) -> Tensor:
        """``[B, T, ...] -> [N, ...]`` keeping real utterances, dialogue-major."""
        return x.reshape(self.batch_size * self.max_len, *x.shape[2:])[self.flat_index]

    def unflatten(self, y: Tensor, fill: float = 0.0) -> Tensor:
        """``[N, ...] -> [B, T, ...]``, ``fill`` at padding."""
        out = y.new_full((self.batch_size * self.max_len, *y.shape[1:]), fill)
        out[self.flat_index] = y
        return out.reshape(self.batch_size, self.max_len, *y.shape[1:])

    def modality_available(self, modality: str) -> Tensor:
        """``bool [B, T]`` availability of one modality."""
        return self.availability[..., self.modalities.index(modality)]

    def to(self, device: torch.device | str) -> Batch:
        moved: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                moved[f.name] = v.to(device, non_blocking=True)
            elif isinstance(v, dict):
                moved[f.name] = {k: t.to(device, non_blocking=True) for k, t in v.items()}
            elif isinstance(v, Batch):
                moved[f.name] = v.to(device)
            else:
                moved[f.name] = v
        return Batch(**moved)


def collate(items: Sequence[ConversationTensors], modalities: Sequence[str]) -> Batch:
    """Pad a list of conversations into a :class:`Batch`.

    Shapes:
        - output ``features[m]``: ``[B, T, d_m]`` with ``T = max(len(item))``.
        - output ``sequences[m]``: ``[N, L_m, d'_m]`` with ``N = sum(len(item))``, ``L_m``
          the longest sequence (at least 1); ``sequence_lengths[m]``: ``[N]``.
    """
    if not items:
        raise ValueError("cannot collate an empty batch")
    lengths = torch.tensor([len(it) for it in items], dtype=torch.long)
    max_len = int(lengths.max())
    mask = torch.arange(max_len)[None, :] < lengths[:, None]
    flat_index = torch.nonzero(mask.reshape(-1), as_tuple=False).squeeze(1)
    feats = {m: pad_sequence([it.features[m] for it in items], batch_first=True) for m in modalities}
    return Batch(
        features=feats,
        mask=mask,
        lengths=lengths,
        speakers=pad_sequence([it.speakers for it in items], batch_first=True),
        parties=pad_sequence([it.parties for it in items], batch_first=True),
        availability=pad_sequence([it.availability for it in items], batch_first=True),
        labels=pad_sequence([it.labels for it in items], batch_first=True, padding_value=IGNORE_INDEX),
        modalities=tuple(modalities),
        dialogue_ids=[it.id for it in items],
        flat_index=flat_index,
        utterance_dialogue=flat_index // max_len,
        utterance_position=flat_index % max_len,
        **_collate_sequences(items, modalities),
    )


def _collate_sequences(items: Sequence[ConversationTensors], modalities: Sequence[str]) -> dict[str, Any]:
    """``Batch.sequences`` / ``Batch.sequence_lengths`` of ``items``, padded in one scatter.

    The utterances of the batch are the rows of ``[N, L, d]`` in dialogue-major order
    (that of :attr:`Batch.flat_index`), with ``L`` the longest sequence, at least 1 so
    the tensor is never empty (an all-empty batch then holds one zero frame per
    utterance, of length 0). Only the loop over dialogues concatenates; frames go to
    their rows in one indexed assignment.
    """
    mods = [m for m in modalities if m in items[0].sequences]
    if not mods:
        return {}
    sequences: dict[str, Tensor] = {}
    lengths: dict[str, Tensor] = {}
    for m in mods:
        flat = torch.cat([it.sequences[m] for it in items])
        lens = torch.cat([it.sequence_lengths[m] for it in items])
        longest = max(int(lens.max()) if lens.numel() else 0, 1)
        row = torch.repeat_interleave(torch.arange(lens.numel()), lens)
        starts = torch.cumsum(lens, 0) - lens
        position = torch.arange(flat.shape[0]) - starts[row]
        padded = flat.new_zeros(lens.numel(), longest, flat.shape[1])
        padded[row, position] = flat
        sequences[m] = padded
        lengths[m] = lens
    return {"sequences": sequences, "sequence_lengths": lengths}


def iterate_batches(
    items: Sequence[ConversationTensors],
    modalities: Sequence[str],
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[Batch]:
    """Yield batches of ``batch_size`` dialogues (last one smaller), optionally shuffled."""
    order = torch.randperm(len(items), generator=generator).tolist() if shuffle else range(len(items))
    order = list(order)
    for start in range(0, len(order), batch_size):
        yield collate([items[i] for i in order[start : start + batch_size]], modalities)
