"""Batching: padding, masks and the flat index maps."""

from __future__ import annotations

import torch

from helpers import make_batch
from merc.data.batching import IGNORE_INDEX


def test_collate_shapes_and_maps() -> None:
    batch, ds = make_batch((1, 7, 3), "tav")
    assert batch.features["t"].shape == (3, 7, 12) and batch.features["v"].shape == (3, 7, 8)
    assert batch.lengths.tolist() == [1, 7, 3]
    assert batch.mask.sum() == 11 and batch.num_utterances == 11
    assert batch.utterance_dialogue.tolist() == [0] + [1] * 7 + [2] * 3
    assert batch.utterance_position.tolist() == [0, *range(7), 0, 1, 2]
    assert (batch.labels[~batch.mask] == IGNORE_INDEX).all()
    assert (batch.features["a"][~batch.mask] == 0).all()
    convs = ds.splits["train"]
    expected = torch.cat([torch.as_tensor(c.labels) for c in convs])
    assert torch.equal(batch.flat_labels, expected)
    flat_t = batch.flatten(batch.features["t"])
    assert torch.equal(flat_t[1:8], torch.as_tensor(convs[1].features["t"]))
    assert torch.equal(batch.unflatten(flat_t), batch.features["t"])


def test_parties_follow_first_appearance() -> None:
    batch, ds = make_batch((4, 3), "t")
    # dialogue 1's first speaker is s1: it becomes party 0 there.
    assert batch.parties[1, :3].tolist() == [0, 1, 0]
    assert batch.speakers[1, :3].tolist() == [1, 0, 1]


def test_availability_defaults_to_all_present() -> None:
    batch, _ = make_batch((2, 5), "ta")
    assert batch.availability.shape == (2, 5, 2)
    assert batch.availability[batch.mask].all()
    assert batch.modality_available("a").shape == (2, 5)
