"""COGMEN-specific behaviour: defaults, the relational graph it builds, speakers, switches, recipes."""

from __future__ import annotations

import pytest
import torch

import merc.models.corect as corect_module
from helpers import DIMS, make_batch
from merc.config import load_recipe
from merc.errors import ConfigError, DataError
from merc.models import build_model
from merc.models.cogmen import COGMEN
from merc.models.registry import check_model_arguments
from merc.training.trainer import TrainConfig


def _cogmen(modalities: str = "tav", seed: int = 0, **kwargs: object) -> COGMEN:
    torch.manual_seed(seed)
    model = build_model(
        "cogmen", in_dims={m: DIMS[m] for m in modalities}, num_classes=3, num_speakers=2, num_parties=2, **kwargs
    )
    assert isinstance(model, COGMEN)
    return model


def _captured_graph(model: COGMEN, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The (edge_index, edge_type) COGMEN feeds its RGCN for ``batch``."""
    seen: dict[str, torch.Tensor] = {}

    def grab(module, args):
        seen["edge_index"], seen["edge_type"] = args[1], args[2]

    assert model.gnn is not None
    handle = model.gnn.register_forward_pre_hook(grab)
    with torch.no_grad():
        model.eval()(batch)
    handle.remove()
    return seen["edge_index"], seen["edge_type"]


def cogmen_reference_edges(
    lengths: list[int], speakers: list[list[int]], wp: int, wf: int, num_speakers: int
) -> list[tuple[int, int, int]]:
    """The reference's ``edge_perms`` + ``batch_graphify`` with its ``edge_type_to_idx``, as loops."""
    relation = {}
    for j in range(num_speakers):
        for k in range(num_speakers):
            relation[f"{j}{k}0"] = len(relation)
            relation[f"{j}{k}1"] = len(relation)
    edges = []
    offset = 0
    for n, spk in zip(lengths, speakers, strict=True):
        for owner in range(n):
            lo = 0 if wp == -1 else max(0, owner - wp)
            hi = n if wf == -1 else min(n, owner + wf + 1)
            for item in range(lo, hi):
                c = "0" if owner < item else "1"
                edges.append((owner + offset, item + offset, relation[f"{spk[owner]}{spk[item]}{c}"]))
        offset += n
    return sorted(edges)


def test_code_defaults() -> None:
    model = _cogmen()
    assert (model.past_window, model.future_window, model.hidden_size) == (5, 5, 100)
    assert model.gnn is not None and model.gnn.graph_transformer.heads == 1
    assert model.gnn.rgcn.num_relations == 8  # 2 directions x 2 x 2 speaker pairs
    assert len(model.context.layers) == 2 and model.context.layers[0].dropout.p == 0.5
    # The Transformer reads the concatenation at the features' own widths (6 + 12 + 8 = 26:
    # SeqContext's head rule gives 13 heads).
    assert model.code_dims == DIMS and model.context.layers[0].self_attn.embed_dim == 26
    assert model.context.layers[0].self_attn.num_heads == 13
    assert model.classifier_input == 100 and model.classifier[2].p == 0.5


@pytest.mark.parametrize(("wp", "wf"), [(2, 1), (1, 3), (-1, 0)])
def test_graph_matches_the_reference_rule(wp: int, wf: int) -> None:
    # Asymmetric windows pin the direction: the window [i - wp, i + wf] belongs to the
    # edge's source, and the relation is (source speaker, target speaker, source first?).
    batch, _ = make_batch((1, 7, 3), "ta", seed=1)
    model = _cogmen("ta", past_window=wp, future_window=wf)
    speakers = [batch.speakers[b, : int(n)].tolist() for b, n in enumerate(batch.lengths)]
    edge_index, edge_type = _captured_graph(model, batch)
    got = sorted(zip(edge_index[0].tolist(), edge_index[1].tolist(), edge_type.tolist(), strict=True))
    assert got == cogmen_reference_edges(batch.lengths.tolist(), speakers, wp, wf, 2)


def test_speaker_ids_and_relation_switch() -> None:
    batch, _ = make_batch((4, 3), "ta")
    swapped = make_batch((4, 3), "ta")[0]
    swapped.speakers = 1 - swapped.speakers  # global ids change, parties do not
    glob = _cogmen("ta")
    party = _cogmen("ta", speaker_ids="party")
    plain = _cogmen("ta", use_speaker_relations=False)
    assert plain.gnn is not None and plain.gnn.rgcn.num_relations == 2
    with torch.no_grad():
        assert not torch.allclose(glob.eval()(batch).logits, glob(swapped).logits)
        torch.testing.assert_close(party.eval()(batch).logits, party(swapped).logits)
        torch.testing.assert_close(plain.eval()(batch).logits, plain(swapped).logits)
    # Without speaker relations only the direction is left: 0 = source first, 1 = not.
    edge_index, edge_type = _captured_graph(plain, batch)
    torch.testing.assert_close(edge_type, (edge_index[0] >= edge_index[1]).long())
    assert party.max_parties == 2 and glob.max_parties is None
    too_many = make_batch((4, 3), "ta")[0]
    too_many.speakers[0, 0] = 2
    with pytest.raises(DataError, match="speaker"):
        glob(too_many)


def test_switches_change_the_parts() -> None:
    no_gnn = _cogmen(use_graph=False)
    assert no_gnn.gnn is None and no_gnn.classifier_input == 100
    assert not any(n.startswith("gnn.") for n, _ in no_gnn.named_parameters())
    both = _cogmen(concat_graph_input=True, gnn_heads=2)
    assert both.classifier_input == 100 + 2 * 100
    projected = _cogmen(projection_size=10)
    assert projected.code_dims == {"t": 10, "a": 10, "v": 10}
    assert projected.context.layers[0].self_attn.embed_dim == 30
    batch, _ = make_batch((1, 7, 3), "tav")
    for model in (no_gnn, both, projected):
        out = model.eval()(batch)
        assert out.logits.shape == (11, 3) and out.embeddings is not None
        assert out.embeddings.shape == (11, model.classifier_input)


def test_single_node_training_batch() -> None:
    # One one-utterance dialogue: one graph node in the Graph Transformer's BatchNorm.
    batch, _ = make_batch((1,), "a")
    model = _cogmen("a").train()
    out = model(batch)
    out.logits.sum().backward()
    assert torch.isfinite(out.logits).all()


def test_block_graph_attention_matches_pyg(monkeypatch: pytest.MonkeyPatch) -> None:
    # COGMEN's node layout for RT-GCN's dense per-dialogue attention is right: PyG's
    # TransformerConv on the same graph and weights gives the same outputs and gradients.
    batch, _ = make_batch((1, 7, 3), "tav")

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model = _cogmen(seed=1, gnn_heads=3).eval()
        out = model(batch).logits
        out.pow(2).sum().backward()
        return out.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    block_out, block_grads = run()
    monkeypatch.setattr(corect_module, "supports_block_attention", lambda conv: False)
    pyg_out, pyg_grads = run()
    torch.testing.assert_close(block_out, pyg_out, rtol=1e-5, atol=1e-5)
    assert block_grads.keys() == pyg_grads.keys()
    for name, grad in pyg_grads.items():
        torch.testing.assert_close(block_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="speaker ids"):
        _cogmen(speaker_ids="names")
    with pytest.raises(ConfigError, match="windows"):
        _cogmen(past_window=-2)
    with pytest.raises(ConfigError, match="divisible"):
        _cogmen(transformer_heads=4)  # 26 is not divisible by 4
    with pytest.raises(ConfigError, match="has no argument"):
        _cogmen(wp=3)


@pytest.mark.parametrize("recipe", ["default", "meld7"])
def test_recipes_build(recipe: str) -> None:
    data = load_recipe("cogmen", recipe)
    TrainConfig.from_dict(data["training"])
    model = _cogmen(**check_model_arguments("cogmen", data["model"]))
    assert model.speaker_ids == ("party" if recipe == "meld7" else "global")
    assert (model.past_window, model.future_window) == (5, 5)
    assert data["training"]["lr"] == 0.0001 and data["training"]["epochs"] == 55
    assert data["training"]["batch_size"] == 32
