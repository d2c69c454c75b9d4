"""MMGCN-specific behaviour: paper defaults, speaker embedding, graph rule, late fusion, recipes."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from helpers import DIMS, make_batch
from merc.config import load_recipe
from merc.data.batching import Batch
from merc.errors import ConfigError, DataError
from merc.models import build_model
from merc.models.mmgcn import MMGCN, MultimodalGraphModel
from merc.models.registry import check_model_arguments
from merc.training.trainer import TrainConfig

#: Each utterance on its own before the graph: no recurrent encoder, no speaker embedding.
ISOLATED = dict(encoders="linear", use_speaker_embedding=False)


def _mmgcn(modalities: str = "tav", seed: int = 0, **kwargs: object) -> MMGCN:
    torch.manual_seed(seed)
    model = build_model(
        "mmgcn", in_dims={m: DIMS[m] for m in modalities}, num_classes=3, num_speakers=2, num_parties=2, **kwargs
    )
    assert isinstance(model, MMGCN)
    return model


def _perturbed(batch: Batch, modality: str, row: int, position: int, seed: int = 1) -> Batch:
    features = {m: f.clone() for m, f in batch.features.items()}
    g = torch.Generator().manual_seed(seed)
    features[modality][row, position] += 3.0 * torch.randn(features[modality].shape[-1], generator=g)
    return dataclasses.replace(batch, features=features)


def _changed(a: torch.Tensor, b: torch.Tensor) -> list[bool]:
    return [not torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b, strict=True)]


def test_paper_defaults() -> None:
    model = _mmgcn()
    stack = model.branch.stack
    assert len(stack.convs) == 4 and stack.input.out_features == 100 and stack.input.in_features == 200
    assert all(conv.alpha == 0.1 and conv.weight2 is not None for conv in stack.convs)
    assert [round(conv.beta, 6) for conv in stack.convs] == [
        round(float(torch.log(torch.tensor(0.5 / k + 1))), 6) for k in range(1, 5)
    ]
    assert stack.dropout.p == 0.4 and model.branch.classifier[0].p == 0.4
    # The code's smax_fc: Linear(300 * M, C), 300 = input features 200 + graph features 100.
    assert model.branch.classifier[2].in_features == 900 == model.fused_size
    text, audio = model.encoders["t"], model.encoders["a"]
    assert text.projection.out_features == 200 and audio.projection.out_features == 200
    rnn = text.context.rnn.rnn  # type: ignore[union-attr]
    assert isinstance(rnn, torch.nn.LSTM) and rnn.num_layers == 2 and rnn.hidden_size == 100 and rnn.bidirectional
    assert rnn.dropout == 0.4
    assert audio.context is None and model.encoders["v"].context is None  # "fully connected": the projection
    assert model.speaker_targets == ("t",) and model.speaker_embedding is not None
    assert model.speaker_embedding.num_embeddings == 2 and model.max_parties is None


def test_speaker_embedding_goes_to_the_chosen_modalities() -> None:
    batch, _ = make_batch((4, 3), "tav")
    swapped = dataclasses.replace(batch, speakers=1 - batch.speakers)  # global ids change, parties do not
    for targets, expected in (("text", {"t"}), ("all", {"t", "a", "v"})):
        model = _mmgcn(speaker_modalities=targets).eval()
        with torch.no_grad():
            a, b = model.encode(batch), model.encode(swapped)
        assert {m for m in "tav" if not torch.allclose(a[m], b[m])} == expected
    party = _mmgcn(speaker_ids="party").eval()
    assert party.max_parties == 2
    with torch.no_grad():
        torch.testing.assert_close(party(batch).logits, party(swapped).logits)
    # Without text the code adds no embedding at all; "all" still does.
    assert (
        _mmgcn("av").speaker_embedding is None and _mmgcn("av", speaker_modalities="all").speaker_embedding is not None
    )
    too_many = dataclasses.replace(batch, speakers=batch.speakers + 2)
    with pytest.raises(DataError, match="speaker"):
        _mmgcn()(too_many)
    more_parties = batch.parties.clone()
    more_parties[0, 2] = 2
    with pytest.raises(DataError, match="speakers"):
        party(dataclasses.replace(batch, parties=more_parties))


@pytest.mark.parametrize(
    ("kwargs", "reach"),
    [
        # No intra-modal edges: an utterance's modality nodes meet only each other.
        ({"use_intra_modal_edges": False}, [False, False, False, True, False, False, False]),
        ({"use_intra_modal_edges": False, "use_inter_modal_edges": False}, [False] * 3 + [True] + [False] * 3),
        # The whole dialogue is one intra-modal clique.
        ({}, [True] * 7),
        # Window 1, one layer: neighbours 2 and 4, and 1 and 5 through the degrees of 2 and 4
        # (D^-1/2 A D^-1/2 with weights that depend on utterance 3's features).
        ({"intra_window": 1, "num_layers": 1}, [False, True, True, True, True, True, False]),
    ],
)
def test_graph_rule_reach_of_one_utterance(kwargs: dict[str, object], reach: list[bool]) -> None:
    model = _mmgcn(**ISOLATED, **kwargs).eval()
    batch, _ = make_batch((2, 7), "tav", seed=3)
    with torch.no_grad():
        before = model(batch).logits
        after = model(_perturbed(batch, "a", 1, 3)).logits
    changed = _changed(before, after)
    assert changed[:2] == [False, False]  # the other dialogue never moves
    assert changed[2:] == reach


@pytest.mark.parametrize("inter", [True, False])
def test_inter_modal_edges_join_the_modality_nodes_of_one_utterance(inter: bool) -> None:
    model = _mmgcn(**ISOLATED, use_intra_modal_edges=False, use_inter_modal_edges=inter).eval()
    batch, _ = make_batch((5,), "tav", seed=4)
    seen: list[torch.Tensor] = []
    model.branch.stack.register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.no_grad():
        model(batch)
        model(_perturbed(batch, "t", 0, 2))
    n = batch.num_utterances
    before, after = (out.view(3, n, -1) for out in seen)  # node k * N + n
    assert _changed(before[0], after[0]) == [False, False, True, False, False]  # the text node itself
    for k in (1, 2):  # audio and visual nodes
        assert _changed(before[k], after[k]) == [False, False, inter, False, False]


@pytest.mark.parametrize("name", ["mmgcn", "mmdfn"])
def test_late_fusion_sums_unimodal_networks_that_see_one_modality_each(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, in_dims=DIMS, num_classes=3, num_speakers=2, num_parties=2, fusion="late")
    assert isinstance(model, MultimodalGraphModel)
    assert model.fills_unimodal_logits and model.has_unimodal_logits
    assert len(model.unimodal_classifiers) == 0 and not model.use_unimodal_heads
    assert sorted(model.branches) == ["a", "t", "v"] and not hasattr(model, "branch")
    batch, _ = make_batch((1, 7, 3), "tav", seed=2)
    model.eval()
    with torch.no_grad():
        out = model(batch)
        torch.testing.assert_close(out.logits, sum(out.unimodal_logits.values()))
        assert "unimodal_probe" not in model.train()(batch).aux_losses
        model.eval()
        for m in "tav":
            moved = model(_perturbed(batch, m, 1, 3))
            for other in "tav":
                same = torch.allclose(moved.unimodal_logits[other], out.unimodal_logits[other])
                assert same == (other != m), (m, other)
    # Each modality's group is its encoder and its whole unimodal network, disjoint.
    groups = {m: {id(p) for p in ps} for m, ps in model.modality_parameters().items()}
    for a, b in itertools.combinations("tav", 2):
        assert not groups[a] & groups[b]
    for m in "tav":
        assert {id(p) for p in model.branches[m].parameters()} <= groups[m]
        assert {id(p) for p in model.encoders[m].parameters()} <= groups[m]


def test_late_fusion_has_no_inter_modal_edges_and_is_the_summed_classifier() -> None:
    # Graph fusion without inter-modal edges differs from late fusion only in sharing one GCN.
    model = _mmgcn(fusion="late").eval()
    batch, _ = make_batch((4, 2), "tav")
    seen: list[int] = []
    for branch in model.branches.values():
        branch.stack.register_forward_hook(lambda module, args, out: seen.append(out.shape[0]))
    with torch.no_grad():
        out = model(batch)
    assert seen == [batch.num_utterances] * 3  # one node per utterance in each unimodal graph
    assert out.embeddings is not None and out.embeddings.shape == (6, 3 * 300)


def test_switches_change_the_parameters() -> None:
    prefixes = {name.split(".")[0] for name, _ in _mmgcn(use_speaker_embedding=False).named_parameters()}
    assert "speaker_embedding" not in prefixes
    shared = _mmgcn(separate_initial_weight=False)
    assert all(conv.weight2 is None for conv in shared.branch.stack.convs)
    lean = _mmgcn(residual_input=False)
    assert lean.fused_size == 3 * 100
    no_heads = _mmgcn(unimodal_heads=False)
    assert len(no_heads.unimodal_classifiers) == 0
    batch, _ = make_batch((1, 7, 3), "tav")
    for model in (shared, lean, _mmgcn("t"), _mmgcn(encoders={"t": "transformer", "a": "bigru"})):
        assert model.eval()(batch).logits.shape == (11, 3)


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="fusion"):
        _mmgcn(fusion="concat")
    with pytest.raises(ConfigError, match="fusion"):
        check_model_arguments("mmgcn", {"fusion": "concat"})
    with pytest.raises(ConfigError, match="speaker ids"):
        _mmgcn(speaker_ids="names")
    with pytest.raises(ConfigError, match="window"):
        _mmgcn(intra_window=-3)(make_batch((2,), "tav")[0])
    with pytest.raises(ConfigError, match="num_layers"):
        _mmgcn(num_layers=0)


@pytest.mark.parametrize("recipe", ["default", "meld7"])
def test_recipes_build(recipe: str) -> None:
    data = load_recipe("mmgcn", recipe)
    options = check_model_arguments("mmgcn", data["model"])
    config = TrainConfig.from_dict(data["training"])
    model = _mmgcn(**options)
    assert len(model.branch.stack.convs) == 4 and config.batch_size == 16
    assert (config.lr, config.epochs) == ((0.0003, 20) if recipe == "default" else (0.001, 60))
    assert model.speaker_ids == ("global" if recipe == "default" else "party")
    assert config.class_weighted_loss == (recipe == "default")
