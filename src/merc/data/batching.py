"""Batching: conversations to padded tensors plus the index maps graph models need.

Conversations are converted to tensors once (:class:`ConversationTensors`); a batch of
dialogues is then padded to ``[B, T, ...]`` (:func:`collate`). Every model receives a
:class:`Batch` and returns predictions for the *valid* utterances only, flattened in
dialogue-major order (``N = lengths.sum()``), the order of :attr:`Batch.flat_index`.
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

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def to_tensors(dataset: MercDataset) -> dict[str, list[ConversationTensors]]:
    """Convert every split of ``dataset`` (features attached) to tensors."""
    speaker_ids = dataset.speaker_index()
    cols = [MODALITIES.index(m) for m in dataset.modalities]
    out: dict[str, list[ConversationTensors]] = {}
    for split, convs in dataset.splits.items():
        out[split] = [conversation_tensors(c, dataset.modalities, speaker_ids, cols) for c in convs]
    return out


def conversation_tensors(
    conv: Conversation, modalities: Sequence[str], speaker_ids: dict[str, int], cols: Sequence[int]
) -> ConversationTensors:
    n = len(conv)
    first_seen: dict[str, int] = {}
    parties = [first_seen.setdefault(s, len(first_seen)) for s in conv.speakers]
    labels = torch.as_tensor(conv.labels, dtype=torch.long).clone()
    labels[labels == UNLABELLED] = IGNORE_INDEX
    if conv.availability is None:
        avail = torch.ones(n, len(cols), dtype=torch.bool)
    else:
        avail = torch.as_tensor(np.asarray(conv.availability, dtype=bool)[:, list(cols)])
    return ConversationTensors(
        id=conv.id,
        features={m: torch.as_tensor(np.asarray(conv.features[m], dtype=np.float32)) for m in modalities},
        speakers=torch.tensor([speaker_ids.get(s, 0) for s in conv.speakers], dtype=torch.long),
        parties=torch.tensor(parties, dtype=torch.long),
        labels=labels,
        availability=avail,
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
    )


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
