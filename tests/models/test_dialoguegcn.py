"""DialogueGCN specifics: edge attention and weighted RGCN (eq. 1-2), graph reach, ablations, late fusion."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from helpers import DIMS, make_batch
from merc.config import load_recipe
from merc.errors import ConfigError, DataError
from merc.models import build_model
from merc.models.dialoguegcn import DialogueGCN
from merc.models.registry import check_model_arguments
from merc.training.trainer import TrainConfig

SMALL = {"modality_size": 8, "hidden_size": 6, "graph_hidden_size": 5, "num_bases": 3}


def _model(modalities: str = "tav", seed: int = 0, **kw) -> DialogueGCN:
    torch.manual_seed(seed)
    model = build_model(
        "dialoguegcn", in_dims={m: DIMS[m] for m in modalities}, num_classes=3, **{"num_parties": 2, **SMALL, **kw}
    )
    assert isinstance(model, DialogueGCN)
    return model


def _perturb(batch, modality: str | None = None, utterance: tuple[int, int] | None = None, seed: int = 0):
    """The batch with one modality's features (or one utterance's, all modalities) moved."""
    gen = torch.Generator().manual_seed(seed)
    features = {}
    for m, x in batch.features.items():
        x = x.clone()
        if modality == m:
            x = x + 3.0 * torch.randn(x.shape, generator=gen) * batch.mask[..., None]
        if utterance is not None:
            x[utterance] = x[utterance] + 3.0 * torch.randn(x.shape[-1], generator=gen)
        features[m] = x
    return dataclasses.replace(batch, features=features)


def test_edge_weights_are_a_softmax_of_the_bilinear_score_per_window_owner() -> None:
    batch, _ = make_batch((5, 3), "t")
    for owner in ("source", "target"):
        model = _model("t", window_past=2, window_future=1, window_owner=owner).eval()
        net = model.networks["fused"]
        graph, _ = model.graph(batch)
        g = torch.randn(batch.num_utterances, 2 * SMALL["hidden_size"])
        alpha = net.edge_attention(g, graph)
        w = net.edge_attention.weight.weight  # W_e
        src, tgt = graph.edge_index
        own = src if owner == "source" else tgt
        assert torch.equal(graph.owner, own)
        for i in range(batch.num_utterances):  # eq. 1, one owner's window at a time
            edges = (own == i).nonzero().squeeze(1)
            others = (src + tgt - own)[edges]
            expected = torch.softmax(g[others] @ w.T @ g[i], dim=0)
            torch.testing.assert_close(alpha[edges], expected)
        # Each owner holds its window [i - 2, i + 1] clipped to its dialogue (lengths 5 and 3).
        assert torch.bincount(own, minlength=batch.num_utterances).tolist() == [2, 3, 4, 4, 3, 2, 3, 3]


def test_weighted_rgcn_is_eq_2_with_basis_weights() -> None:
    batch, _ = make_batch((6, 4), "t")
    for aggregation in ("sum", "mean"):
        model = _model("t", rgcn_aggregation=aggregation).eval()
        net = model.networks["fused"]
        graph, edge_type = model.graph(batch)
        g = torch.randn(batch.num_utterances, 2 * SMALL["hidden_size"])
        alpha = torch.rand(edge_type.numel())
        src, tgt = graph.edge_index
        messages = alpha[:, None] * g[src]
        per_edge = torch.stack([torch.arange(src.numel()), tgt])
        got = net.rgcn((messages, g), per_edge, edge_type)
        conv = net.rgcn
        weight = (conv.comp @ conv.weight.view(conv.num_bases, -1)).view(conv.num_relations, *conv.weight.shape[1:])
        expected = g @ conv.root + conv.bias
        for i in range(batch.num_utterances):
            for r in range(conv.num_relations):
                edges = ((tgt == i) & (edge_type == r)).nonzero().squeeze(1)
                if edges.numel():
                    total = (alpha[edges, None] * g[src[edges]]).sum(0) @ weight[r]
                    expected[i] += total / (edges.numel() if aggregation == "mean" else 1)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("owner", ["target", "source"])
def test_graph_reach_follows_the_windows_and_the_attention_owner(owner: str) -> None:
    # No sequential encoder, no nodal attention: an utterance reaches the others only
    # through the graph: two layers (RGCN, GraphConv) over windows of w on both sides.
    # Owner = target: each layer reaches w. Owner = source (the code): node k's RGCN
    # input from j is weighted by j's attention over j's own window, which reaches w
    # beyond j, so the RGCN layer reaches 2w and the whole graph 3w.
    batch, _ = make_batch((12,), "t")
    for window in (0, 1, 2):
        reach = window * (2 if owner == "target" else 3)
        model = _model("t", context_encoder="none", window_past=window, window_future=window, window_owner=owner).eval()
        with torch.no_grad():
            base = model(batch).logits
            moved = model(_perturb(batch, utterance=(0, 0))).logits
        changed = ~torch.isclose(base, moved, atol=1e-6).all(-1)
        assert changed.nonzero().squeeze(1).tolist() == list(range(reach + 1))


def test_relation_ablations_set_the_relation_count_and_speaker_dependence() -> None:
    counts = {(True, True): 8, (True, False): 4, (False, True): 2, (False, False): 1}
    for (speaker, temporal), n in counts.items():
        model = _model(use_speaker_relations=speaker, use_temporal_relations=temporal)
        assert model.networks["fused"].rgcn.num_relations == n
    assert _model(num_parties=3).networks["fused"].rgcn.num_relations == 18
    # Swapping the two speakers changes the predictions only through speaker relations.
    batch, _ = make_batch((1, 7, 3), "tav")
    swapped = dataclasses.replace(batch, parties=torch.where(batch.mask, 1 - batch.parties, batch.parties))
    for speaker in (True, False):
        model = _model(use_speaker_relations=speaker, seed=1).eval()
        with torch.no_grad():
            same = torch.allclose(model(batch).logits, model(swapped).logits, atol=1e-6)
        assert same != speaker
    graph_free = _model(use_graph=False).eval()
    assert not any(".rgcn." in n or ".graph_conv." in n for n, _ in graph_free.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(graph_free(batch).logits, graph_free(swapped).logits)


def test_window_owner_changes_only_the_attention_normalisation_for_equal_windows() -> None:
    batch, _ = make_batch((1, 7, 3), "tav")
    source, target = _model(window_owner="source").eval(), _model(window_owner="target").eval()
    gs, ts = source.graph(batch)
    gt, tt = target.graph(batch)
    assert sorted(zip(*gs.edge_index.tolist(), ts.tolist())) == sorted(zip(*gt.edge_index.tolist(), tt.tolist()))
    with torch.no_grad():
        assert not torch.allclose(source(batch).logits, target(batch).logits)


def test_switches_change_the_network() -> None:
    batch, _ = make_batch((1, 7, 3), "tav")
    base = _model().eval()
    names = {n for n, _ in base.named_parameters()}
    with_attention = _model(nodal_attention=True).eval()
    extra = {n for n, _ in with_attention.named_parameters()} - names
    assert extra and all(".attention." in n for n in extra)
    assert isinstance(_model(context_encoder="none").networks["fused"].context, torch.nn.Linear)
    assert _model(context_encoder="lstm").networks["fused"].context.rnn.mode == "LSTM"
    assert _model(num_bases=None).networks["fused"].rgcn.num_bases is None
    with torch.no_grad():
        plain = base(batch).logits
        for kw in ({"nodal_attention": True}, {"graph_activation": "relu"}, {"rgcn_aggregation": "mean"}):
            assert not torch.allclose(_model(**kw).eval()(batch).logits, plain), kw


def test_late_fusion_sums_unimodal_networks_that_see_one_modality_each() -> None:
    batch, _ = make_batch((1, 7, 3), "tav")
    model = _model(fusion="late", nodal_attention=True).eval()
    assert model.fills_unimodal_logits and model.has_unimodal_logits and len(model.unimodal_classifiers) == 0
    assert set(model.networks) == {"t", "a", "v"}
    with torch.no_grad():
        out = model(batch)
        torch.testing.assert_close(out.logits, sum(out.unimodal_logits.values()))
        for m in "tav":
            moved = model(_perturb(batch, modality=m)).unimodal_logits
            for other in "tav":
                same = torch.allclose(moved[other], out.unimodal_logits[other])
                assert same == (other != m), (m, other)
    assert model.train()(batch).aux_losses == {}  # no probe heads to train
    groups = model.modality_parameters()
    ids = {m: {id(p) for p in ps} for m, ps in groups.items()}
    assert all(not ids[a] & ids[b] for a, b in itertools.combinations("tav", 2))
    assert set().union(*ids.values()) == {id(p) for p in model.parameters()}
    for m in "tav":
        assert {id(p) for p in model.networks[m].parameters()} <= ids[m]


def test_late_fusion_trains_every_parameter() -> None:
    batch, _ = make_batch((1, 7, 3, 5), "tav")
    model = _model(fusion="late", nodal_attention=True).train()
    torch.nn.functional.cross_entropy(model(batch).logits, batch.flat_labels).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead


def test_recipe_builds_the_readme_configuration() -> None:
    recipe = load_recipe("dialoguegcn", "default")
    options = check_model_arguments("dialoguegcn", recipe["model"])
    TrainConfig.from_dict(recipe["training"])
    assert recipe["training"]["lr"] == 0.0003 and recipe["training"]["batch_size"] == 32
    model = build_model("dialoguegcn", in_dims={"t": 100}, num_classes=6, num_parties=2, **options)
    assert isinstance(model, DialogueGCN)
    net = model.networks["fused"]
    assert net.rgcn.num_bases == 30 and net.rgcn.num_relations == 8 and net.attention is not None
    assert (model.window_past, model.window_future, model.max_parties) == (10, 10, 2)
    with pytest.raises(ConfigError, match="fusion"):
        check_model_arguments("dialoguegcn", {"fusion": "middle"})


def test_invalid_settings_and_too_many_speakers_are_errors() -> None:
    with pytest.raises(ConfigError, match="windows"):
        _model(window_past=-2)
    with pytest.raises(ConfigError, match="num_bases"):
        _model(num_bases=0)
    with pytest.raises(ConfigError, match="context encoder"):
        _model(context_encoder="transformer")
    batch, _ = make_batch((4,), "tav")
    three = dataclasses.replace(batch, parties=torch.tensor([[0, 1, 2, 0]]))
    with pytest.raises(DataError, match="speakers"):
        _model(fusion="late")(three)
    assert _model(num_parties=3).eval()(three).logits.shape == (4, 3)
