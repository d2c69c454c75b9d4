"""DialogueRNN specifics: the BiDialogueRNN+Att pipeline by hand, the variant switches, parties, recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import DIMS, make_dataset
from merc.config import load_recipe
from merc.data.batching import Batch, collate, to_tensors
from merc.models import build_model
from merc.models.dialoguernn import DialogueRNN
from merc.models.layers.party_rnn import reverse_padded
from merc.models.registry import check_model_arguments
from merc.training.trainer import TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "dialoguernn"
SMALL = {"global_size": 10, "party_size": 9, "emotion_size": 8, "hidden_size": 7}


def _model(modalities: str = "tav", seed: int = 0, **kwargs) -> DialogueRNN:  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    model = build_model("dialoguernn", in_dims={m: DIMS[m] for m in modalities}, num_classes=3, **{**SMALL, **kwargs})
    assert isinstance(model, DialogueRNN)
    return model.eval()


def _batch(lengths: tuple[int, ...], modalities: str = "tav", seed: int = 0) -> Batch:
    ds = make_dataset(lengths, modalities, seed=seed)
    return collate(to_tensors(ds)["train"], ds.modalities)


def _by_hand(model: DialogueRNN, batch: Batch) -> torch.Tensor:
    """The paper's pipeline written out from the model's parts (eval mode)."""
    codes = model.encode(batch)
    u = batch.unflatten(torch.cat([codes[m] for m in "tav"], dim=-1))
    e = model.forward_rnn(u, batch.parties, batch.lengths)
    if model.backward_rnn is not None:
        rev_u, rev_p = reverse_padded(u, batch.lengths), reverse_padded(batch.parties, batch.lengths)
        e = torch.cat([e, reverse_padded(model.backward_rnn(rev_u, rev_p, batch.lengths), batch.lengths)], -1)
    if model.emotion_attention is not None:
        rows = []
        for b, n in enumerate(batch.lengths.tolist()):
            mem = e[b, :n]  # [n, E]: the dialogue's emotion states
            beta = F.softmax(model.emotion_attention(mem) @ mem.t() * model.score_scale, dim=-1)
            rows.append(beta @ mem)
        rep = torch.cat(rows)
    else:
        rep = batch.flatten(e)
    return model.output(F.relu(model.hidden(rep)))


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("emotion_attention", [True, False])
@pytest.mark.parametrize("scaled", [True, False])
def test_pipeline_matches_the_paper_by_hand(bidirectional: bool, emotion_attention: bool, scaled: bool) -> None:
    batch = _batch((1, 7, 3, 5))
    model = _model(bidirectional=bidirectional, emotion_attention=emotion_attention, scaled_emotion_attention=scaled)
    assert (model.backward_rnn is not None) == bidirectional
    assert (model.emotion_attention is not None) == emotion_attention
    assert model.score_scale == ((8 * (2 if bidirectional else 1)) ** -0.5 if scaled else 1.0)
    with torch.no_grad():
        torch.testing.assert_close(model(batch).logits, _by_hand(model, batch))


def test_only_the_unidirectional_model_without_attention_is_causal() -> None:
    base = _batch((8,), seed=1)
    changed = _batch((8,), seed=1)
    changed.features["a"] = changed.features["a"].clone()
    changed.features["a"][0, 5:] += 3.0
    for bidirectional, attention in ((False, False), (True, False), (False, True)):
        model = _model(bidirectional=bidirectional, emotion_attention=attention)
        with torch.no_grad():
            a, b = model(base).logits, model(changed).logits
        assert not torch.allclose(a[5:], b[5:])
        assert torch.allclose(a[:5], b[:5]) == (not bidirectional and not attention)


def test_listener_state_adds_a_listener_gru_and_changes_the_output() -> None:
    batch = _batch((6, 4), seed=2)
    plain, listening = _model(), _model(listener_state=True)
    assert plain.forward_rnn.listener_cell is None and listening.forward_rnn.listener_cell is not None
    missing, unexpected = listening.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all("listener_cell" in k for k in missing)
    with torch.no_grad():
        assert not torch.allclose(plain(batch).logits, listening(batch).logits)


def test_context_attention_variants() -> None:
    general, simple = _model(), _model(context_attention="simple")
    assert general.forward_rnn.context_score.weight.shape == (10, sum(DIMS.values()))  # W_alpha: u -> D_g
    assert simple.forward_rnn.context_score.weight.shape == (1, 10)  # w: D_g -> 1
    with torch.no_grad():
        assert simple(_batch((5,))).logits.shape == (5, 3)


def test_speaker_turns_matter_but_party_names_do_not() -> None:
    batch = _batch((9,), seed=3)
    model = _model()
    with torch.no_grad():
        ref = model(batch).logits
        relabelled = _batch((9,), seed=3)
        relabelled.parties = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]])
        many = model(relabelled).logits
        swapped = _batch((9,), seed=3)
        swapped.parties = torch.tensor([[2, 0, 4, 1, 3, 2, 0, 4, 1]])  # same turns, other names
        torch.testing.assert_close(model(swapped).logits, many)
        assert not torch.allclose(many, ref)
    assert model.max_parties is None  # party states, no per-party parameters: any number


def test_embeddings_are_the_attended_emotion_states() -> None:
    model = _model()
    out = model(_batch((4, 2)))
    assert out.embeddings is not None and out.embeddings.shape == (6, 16)


@pytest.mark.parametrize("recipe", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_recipes_build(recipe: Path) -> None:
    cfg = load_recipe("dialoguernn", recipe.stem)
    TrainConfig.from_dict(cfg["training"])
    options = check_model_arguments("dialoguernn", cfg["model"])
    model = build_model("dialoguernn", in_dims={"t": 12, "a": 6, "v": 8}, num_classes=6, **options)
    assert isinstance(model, DialogueRNN)
    assert model.code_dims == {"t": 12, "a": 6, "v": 8}


def test_recipes_hold_the_authors_values() -> None:
    iemocap = load_recipe("dialoguernn", "iemocap6")  # no file of its own: the default
    meld = load_recipe("dialoguernn", "meld7")
    m, t = iemocap["model"], iemocap["training"]
    assert (m["global_size"], m["party_size"], m["emotion_size"], m["hidden_size"]) == (500, 500, 300, 300)
    assert m["bidirectional"] and m["emotion_attention"] and not m["listener_state"]
    assert (m["dropout"], m["recurrent_dropout"], m["emotion_dropout"]) == (0.1, 0.1, 0.25)
    assert (t["lr"], t["weight_decay"], t["batch_size"], t["epochs"]) == (0.0001, 0.00001, 30, 60)
    assert t["optimizer"] == "adam" and t["class_weighted_loss"] and t["clip_grad_norm"] == 0.0
    mm, mt = meld["model"], meld["training"]
    assert (mm["global_size"], mm["party_size"], mm["emotion_size"], mm["hidden_size"]) == (150, 150, 100, 100)
    assert (mt["lr"], mt["epochs"], mt["class_weighted_loss"], mt["batch_size"]) == (0.0005, 100, False, 30)
