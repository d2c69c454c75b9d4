"""BiDDIN-specific behaviour: the vectorised influence/recurrence against loop references, switches, late fusion."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from helpers import DIMS, make_batch, make_dataset
from merc.config import load_recipe
from merc.data.batching import collate, to_tensors
from merc.errors import ConfigError
from merc.models import build_model
from merc.models.biddin import BiDDIN, BiDDINNetwork, gru_update, reversal_index
from merc.models.layers.positional import sinusoidal_positions
from merc.models.registry import check_model_arguments
from merc.training.trainer import TrainConfig


def _biddin(modalities: str = "tav", seed: int = 0, **kwargs: object) -> BiDDIN:
    torch.manual_seed(seed)
    model = build_model(
        "biddin", in_dims={m: DIMS[m] for m in modalities}, num_classes=3, num_speakers=2, num_parties=2, **kwargs
    )
    assert isinstance(model, BiDDIN)
    return model


SMALL = dict(utterance_size=6, global_size=5, party_size=7, emotion_size=4, hidden_size=3, attention_heads=2)


def network_reference(net: BiDDINNetwork, batch, utterances, memories) -> torch.Tensor:
    """BiDDIN's equations as loops over dialogues, readings and steps (eval mode): logits ``[N, C]``."""
    out = []
    for b, n in enumerate(batch.lengths.tolist()):
        states = {}
        for r in net.readings:
            order = list(range(n)) if r == "forward" else list(range(n - 1, -1, -1))
            pe = sinusoidal_positions(torch.arange(n), net.memory_size)
            keys = {k: torch.stack([memories[(r, k)][b, i] for i in order]) + pe for k in net.modalities}
            for m in net.modalities:
                party_state: dict[int, torch.Tensor] = {}
                e = torch.zeros(net.emotion_cells[f"{r}_{m}"].hidden_size)
                seq = {}
                for step, i in enumerate(order):
                    u = utterances[m][b, i]
                    contexts = []
                    for k in net.sources[m]:
                        if step == 0:
                            contexts.append(torch.zeros(net.memory_size))
                            continue
                        hist = keys[k][:step]
                        alpha = torch.softmax(hist @ net.attention[f"{r}_{m}_{k}"](u), dim=0)
                        contexts.append(alpha @ hist)
                    if len(contexts) > 1:
                        stacked = torch.stack(contexts)
                        gate = torch.softmax(net.gate[f"{r}_{m}"](stacked).squeeze(-1), dim=0)
                        context = net.merge[f"{r}_{m}"](((1 + gate[:, None]) * stacked).reshape(-1))
                    else:
                        context = contexts[0]
                    s = int(batch.parties[b, i])
                    cell = net.party_cells[f"{r}_{m}"]
                    q = cell(torch.cat([u, context])[None], party_state.get(s, torch.zeros(1, cell.hidden_size)))
                    party_state[s] = q
                    e = net.emotion_cells[f"{r}_{m}"](q, e[None])[0]
                    seq[i] = e
                states[(r, m)] = torch.stack([seq[i] for i in range(n)])
        x = torch.cat([states[g] for g in net.groups], dim=-1)  # [n, G * D_e]
        if net.sequence_attention is not None:
            att, _ = net.sequence_attention(x[None], x[None], x[None], need_weights=False)
            x = F.layer_norm(att[0] + x, (x.shape[-1],))
        out.append(net.classifier(F.relu(net.linear(x))))
    return torch.cat(out)


def test_gru_update_is_grucell() -> None:
    torch.manual_seed(0)
    cell = torch.nn.GRUCell(5, 4)
    x, h = torch.randn(3, 5), torch.randn(3, 4)
    gi = F.linear(x, cell.weight_ih, cell.bias_ih)
    gh = F.linear(h, cell.weight_hh, cell.bias_hh)
    torch.testing.assert_close(gru_update(gi, gh, h), cell(x, h))


def test_reversal_index_reverses_inside_each_dialogue() -> None:
    mask = torch.tensor([[True, True, True], [True, False, False], [True, True, False]])
    index = reversal_index(mask)
    assert index.tolist() == [[2, 1, 0], [0, 1, 2], [1, 0, 2]]
    torch.testing.assert_close(index.gather(1, index), torch.arange(3).expand(3, 3))


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"bidirectional": False}, {"use_inter_modal": False}, {"use_sequence_attention": False}],
)
@pytest.mark.parametrize("modalities", ["tav", "a"])
def test_network_matches_the_loop_reference(modalities: str, kwargs: dict[str, bool]) -> None:
    # All steps' history attention under one causal mask, dialogues reversed inside their
    # lengths, party and emotion GRUs of all groups stepped together: the same function
    # as the equations run dialogue by dialogue and step by step.
    batch, _ = make_batch((1, 7, 3, 5), modalities, seed=4)
    batch.parties[1, :7] = torch.tensor([0, 1, 1, 2, 0, 2, 1])  # three parties in one dialogue
    model = _biddin(modalities, **SMALL, **kwargs).eval()
    with torch.no_grad():
        codes = model.encode(batch)
        utterances, memories = model._split(codes, batch)
        got, _ = model.network(batch, utterances, memories)
        want = network_reference(model.network, batch, utterances, memories)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def _reach(model: BiDDIN, position: int) -> list[bool]:
    """Which utterances' predictions change when utterance ``position`` of one dialogue changes."""
    batch, _ = make_batch((7,), "".join(model.modalities), seed=5)
    model.eval()
    with torch.no_grad():
        before = model(batch).logits
        for m in batch.features:
            batch.features[m][0, position] += torch.randn_like(batch.features[m][0, position])
        after = model(batch).logits
    return [not torch.allclose(a, b, atol=1e-6) for a, b in zip(before, after, strict=True)]


def test_forward_reading_is_causal_and_the_reversed_one_looks_ahead() -> None:
    causal = _biddin(bidirectional=False, use_sequence_attention=False, **SMALL)
    assert causal.encoders["t"].context.rnn.rnn.bidirectional is False  # a "gru" encoder
    assert _reach(causal, 3) == [False, False, False, True, True, True, True]
    both = _biddin(use_sequence_attention=False, **SMALL)
    assert _reach(both, 3) == [True] * 7


def _recurrence_inputs(model: BiDDIN, batch, monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    original = BiDDINNetwork._recur

    def spy(self, inputs, parties, mask):
        seen.append(inputs)
        return original(self, inputs, parties, mask)

    monkeypatch.setattr(BiDDINNetwork, "_recur", spy)
    with torch.no_grad():
        model.eval()(batch)
    monkeypatch.setattr(BiDDINNetwork, "_recur", original)
    return seen[0]


@pytest.mark.parametrize("inter", [True, False])
def test_inter_modal_influence_switch(inter: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # The text party GRU's inputs [u_t ; c_t] move with the visual features only through
    # the inter-modal attention.
    model = _biddin(use_inter_modal=inter, **SMALL)
    assert ("forward_t_v" in model.network.attention) is inter and ("forward_t" in model.network.gate) is inter
    batch, _ = make_batch((1, 7, 3), "tav")
    noisy = dict(batch.features)
    noisy["v"] = noisy["v"] + torch.randn_like(noisy["v"])
    plain = _recurrence_inputs(model, batch, monkeypatch)
    moved = _recurrence_inputs(model, dataclasses.replace(batch, features=noisy), monkeypatch)
    text_groups = [k for k, (_, m) in enumerate(model.network.groups) if m == "t"]
    assert torch.allclose(plain[text_groups], moved[text_groups]) is not inter
    visual = [k for k, (_, m) in enumerate(model.network.groups) if m == "v"]
    assert not torch.allclose(plain[visual], moved[visual])


def test_defaults_and_encoder_layout() -> None:
    model = _biddin()
    assert model.code_dims == {m: 100 + 2 * 150 for m in "tav"}  # [u ; g_forward | g_backward]
    net = model.network
    assert net.readings == ("forward", "backward") and net.memory_size == 150
    assert net.party_cells["forward_t"].hidden_size == 150 and net.emotion_cells["backward_v"].hidden_size == 100
    assert net.sequence_attention is not None and net.sequence_attention.num_heads == 4
    assert net.sequence_attention.embed_dim == 6 * 100 and net.hidden_width == 3 * 100
    assert _biddin("ta").network.hidden_width == 2 * 100 and _biddin("t").network.hidden_width == 2 * 100
    # Another encoder kind: one context shared by both readings.
    fc = _biddin(encoders="fc")
    assert fc.code_dims["t"] == 100 + 150 and not any(fc.split_context.values())
    batch, _ = make_batch((1, 7, 3), "tav")
    _, memories = fc._split(fc.encode(batch), batch)
    assert memories[("forward", "t")] is memories[("backward", "t")]


def test_late_fusion_sums_unimodal_networks() -> None:
    model = _biddin(fusion="late", **SMALL).eval()
    assert model.fills_unimodal_logits and model.has_unimodal_logits and len(model.unimodal_classifiers) == 0
    for m, net in model.networks.items():
        assert net.modalities == (m,) and set(net.attention) == {f"{r}_{m}_{m}" for r in net.readings}
    batch, _ = make_batch((1, 7, 3), "tav")
    with torch.no_grad():
        out = model(batch)
        torch.testing.assert_close(out.logits, sum(out.unimodal_logits.values()))
        assert out.aux_losses == {}
        for m in "tav":
            features = dict(batch.features)
            features[m] = features[m] + torch.randn_like(features[m])
            moved = model(dataclasses.replace(batch, features=features))
            for other in "tav":
                same = torch.allclose(moved.unimodal_logits[other], out.unimodal_logits[other])
                assert same is (other != m), (m, other)


def test_late_fusion_groups_gradients_and_batch_invariance() -> None:
    model = _biddin(fusion="late", **SMALL)
    groups = model.modality_parameters()
    ids = {m: {id(p) for p in ps} for m, ps in groups.items()}
    assert not (ids["t"] & ids["a"]) and not (ids["t"] & ids["v"]) and not (ids["a"] & ids["v"])
    assert set().union(*ids.values()) == {id(p) for p in model.parameters()}  # every part is one modality's
    ds = make_dataset((1, 7, 3, 5), "tav")
    items = to_tensors(ds)["train"]
    batch = collate(items, ds.modalities)
    out = model.train()(batch)
    F.cross_entropy(out.logits, batch.flat_labels).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    with torch.no_grad():
        together = model(batch).logits
        offsets = [0, 1, 8, 11, 16]
        for i, item in enumerate(items):
            alone = model(collate([item], ds.modalities)).logits
            torch.testing.assert_close(alone, together[offsets[i] : offsets[i + 1]], rtol=1e-4, atol=1e-5)


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="fusion"):
        _biddin(fusion="early")
    with pytest.raises(ConfigError, match="divisible"):
        _biddin(attention_heads=7)
    with pytest.raises(ConfigError, match=">= 1"):
        _biddin(party_size=0)
    with pytest.raises(ConfigError, match="context widths"):
        _biddin(bidirectional=False, encoders={"t": "bigru"})  # 2 x 150 unsplit, the others 150


def test_recipe_builds() -> None:
    data = load_recipe("biddin", "default")
    TrainConfig.from_dict(data["training"])
    model = _biddin(**check_model_arguments("biddin", data["model"]))
    assert model.fusion == "intermodal" and model.network.memory_size == 150
    assert data["training"]["lr"] == 0.0001 and data["training"]["batch_size"] == 30
    assert data["training"]["class_weighted_loss"] is True
    late = _biddin(**check_model_arguments("biddin", {**data["model"], "fusion": "late"}))
    assert late.fills_unimodal_logits
