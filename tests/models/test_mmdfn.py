"""MM-DFN-specific behaviour: what differs from MMGCN (encoders, speaker-level GRU, GDF), recipes."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from helpers import DIMS, make_batch
from merc.config import load_recipe
from merc.data.batching import collate, to_tensors
from merc.errors import ConfigError
from merc.models import build_model
from merc.models.layers.deep_gcn import DeepGCN, DynamicFusionGCN
from merc.models.mmdfn import MMDFN, SpeakerContextRNN, party_index
from merc.models.mmgcn import MMGCN
from merc.models.registry import check_model_arguments
from merc.training.trainer import TrainConfig


def _mmdfn(modalities: str = "tav", seed: int = 0, **kwargs: object) -> MMDFN:
    torch.manual_seed(seed)
    model = build_model(
        "mmdfn", in_dims={m: DIMS[m] for m in modalities}, num_classes=3, num_speakers=2, num_parties=2, **kwargs
    )
    assert isinstance(model, MMDFN)
    return model


def _batch_with_parties(lengths: list[int], parties: list[list[int]], seed: int = 0):
    batch, _ = make_batch(lengths, "tav", seed=seed)
    grid = torch.zeros_like(batch.parties)
    for b, row in enumerate(parties):
        grid[b, : len(row)] = torch.tensor(row)
    return dataclasses.replace(batch, parties=grid)


def test_paper_defaults_and_what_differs_from_mmgcn() -> None:
    model = _mmdfn()
    stack = model.branch.stack
    assert isinstance(stack, DynamicFusionGCN) and stack.gate is not None
    assert len(stack.convs) == 16 and all(conv.alpha == 0.2 for conv in stack.convs)
    assert stack.dropout.p == 0.4 and model.fused_size == 900
    text = model.encoders["t"]
    rnn = text.context.rnn.rnn  # type: ignore[union-attr]
    assert isinstance(rnn, torch.nn.GRU) and rnn.num_layers == 2 and rnn.hidden_size == 100 and rnn.bidirectional
    # Speaker-level GRUs where the IEMOCAP script weighs them (3-0-1 in a-v-l order), none for visual.
    assert model.speaker_weights == {"t": 1.0, "a": 3.0, "v": 0.0}
    assert isinstance(text.speaker, SpeakerContextRNN) and text.speaker_weight == 1.0
    assert isinstance(model.encoders["a"].speaker, SpeakerContextRNN) and model.encoders["a"].speaker_weight == 3.0
    assert model.encoders["v"].speaker is None and model.encoders["a"].context is None
    assert model.speaker_embedding is None and model.max_parties is None
    # MMGCN's graph and classifier, built by the same code.
    mmgcn = build_model("mmgcn", in_dims=DIMS, num_classes=3)
    assert isinstance(mmgcn, MMGCN) and type(mmgcn.branch) is type(model.branch)
    assert type(mmgcn.branch.stack) is DeepGCN


def _party_reference(lengths: list[int], parties: list[list[int]]) -> list[tuple[int, int, int, int]]:
    """(dialogue, party, flat index, rank) with one loop per dialogue and utterance."""
    rows = []
    offset = 0
    for b, (length, row) in enumerate(zip(lengths, parties, strict=True)):
        seen: dict[int, int] = {}
        for t in range(length):
            rows.append((b, row[t], offset + t, seen.get(row[t], 0)))
            seen[row[t]] = seen.get(row[t], 0) + 1
        offset += length
    return rows


@pytest.mark.parametrize("seed", range(6))
def test_party_index_matches_reference(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(1, 9) for _ in range(rng.randint(1, 5))]
    parties = []
    for n in lengths:
        row, first = [], {}
        for _ in range(n):  # parties numbered by first appearance, as the batching does
            s = rng.randint(0, 3)
            row.append(first.setdefault(s, len(first)))
        parties.append(row)
    batch = _batch_with_parties(lengths, parties)
    idx = party_index(batch)
    reference = _party_reference(lengths, parties)
    groups: dict[tuple[int, int], int] = {}
    for b, p, flat, rank in reference:
        groups.setdefault((b, p), int(idx.group[flat]))
        assert int(idx.group[flat]) == groups[(b, p)] and int(idx.rank[flat]) == rank
    assert len(set(groups.values())) == len(groups) == idx.lengths.numel()
    counts = {k: sum(1 for b, p, _, _ in reference if (b, p) == k) for k in groups}
    assert all(int(idx.lengths[g]) == counts[k] for k, g in groups.items())


def test_speaker_rnn_runs_each_speakers_sequence_on_its_own() -> None:
    batch = _batch_with_parties([5, 3], [[0, 1, 0, 0, 1], [0, 0, 1]])
    torch.manual_seed(0)
    module = SpeakerContextRNN(8, num_layers=2, dropout=0.0).eval()
    p = torch.randn(batch.num_utterances, 8)
    with torch.no_grad():
        out = module(p, batch)
        for rows in ([0, 2, 3], [1, 4], [5, 6], [7]):
            alone, _ = module.rnn.rnn(p[rows][None])
            torch.testing.assert_close(out[rows], alone[0], rtol=1e-5, atol=1e-6)


def test_speaker_context_follows_who_speaks() -> None:
    batch, _ = make_batch((5, 4), "tav")
    other = dataclasses.replace(batch, parties=torch.zeros_like(batch.parties))  # everyone is one speaker
    with torch.no_grad():
        model = _mmdfn().eval()
        a, b = model.encode(batch), model.encode(other)
        assert not torch.allclose(a["t"], b["t"]) and not torch.allclose(a["a"], b["a"])
        torch.testing.assert_close(a["v"], b["v"])  # weight 0: no speaker context
        off = _mmdfn(use_speaker_context=False).eval()
        for m in "tav":
            torch.testing.assert_close(off.encode(batch)[m], off.encode(other)[m])
    # The code's h = c + w s with the modality's weight.
    enc = model.encoders["a"]
    x = batch.features["a"]
    with torch.no_grad():
        proj = enc.projection(batch.flatten(x))
        assert enc.speaker is not None
        torch.testing.assert_close(enc(x, batch), proj + 3.0 * enc.speaker(proj, batch))


def test_speaker_weights_choose_the_speaker_grus() -> None:
    meld = _mmdfn(speaker_weights={"a": 0.5, "v": 0.5, "t": 1.5})
    assert all(meld.encoders[m].speaker is not None for m in "tav")
    assert meld.encoders["t"].speaker_weight == 1.5
    text_only = _mmdfn(speaker_weights={"t": 1.0})
    assert text_only.encoders["a"].speaker is None and text_only.speaker_weights == {"t": 1.0, "a": 0.0, "v": 0.0}
    with pytest.raises(ConfigError, match="speaker_weights"):
        _mmdfn(speaker_weights={"x": 1.0})


def test_dynamic_fusion_switch() -> None:
    batch, _ = make_batch((1, 7, 3), "tav")
    gated, plain = _mmdfn(num_layers=3).eval(), _mmdfn(num_layers=3, dynamic_fusion=False).eval()
    assert plain.branch.stack.gate is None  # type: ignore[union-attr]
    assert {n for n, _ in gated.named_parameters()} - {n for n, _ in plain.named_parameters()} == {
        f"branch.stack.gate.{w}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    }
    with torch.no_grad():
        assert not torch.allclose(gated(batch).logits, plain(batch).logits)


def test_dialogues_with_many_speakers_need_no_party_limit() -> None:
    batch = _batch_with_parties([6], [[0, 1, 2, 3, 4, 5]])
    out = _mmdfn().eval()(batch)
    assert out.logits.shape == (6, 3) and torch.isfinite(out.logits).all()


def test_predictions_of_a_dialogue_ignore_its_batch_mates_speakers() -> None:
    ds_batch, ds = make_batch((4, 6, 3), "tav", seed=5)
    items = to_tensors(ds)["train"]
    model = _mmdfn().eval()
    with torch.no_grad():
        alone = model(collate([items[1]], ds.modalities)).logits
        together = model(ds_batch).logits[4:10]
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("recipe", ["default", "meld7"])
def test_recipes_build(recipe: str) -> None:
    data = load_recipe("mmdfn", recipe)
    options = check_model_arguments("mmdfn", data["model"])
    config = TrainConfig.from_dict(data["training"])
    model = _mmdfn(**options)
    assert len(model.branch.stack.convs) == 16 and config.epochs == 30 and config.batch_size == 32
    weights = {"a": 3.0, "v": 0.0, "t": 1.0} if recipe == "default" else {"a": 0.5, "v": 0.5, "t": 1.5}
    assert model.speaker_weights == weights
    assert config.lr == (0.0003 if recipe == "default" else 0.0005)
    assert config.class_weighted_loss == (recipe == "default")
