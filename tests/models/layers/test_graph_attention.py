"""Block (per-dialogue dense) TransformerConv against PyG's TransformerConv on CORECT graphs."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.nn import TransformerConv

from helpers import assert_same_function
from merc.data.graphs import build_corect_graph, utterance_index
from merc.models.layers.graph_attention import (
    NodeBlocks,
    block_adjacency,
    block_transformer_conv,
    supports_block_attention,
)

LENGTHS = torch.tensor([6, 1, 9, 4])


def _blocks(lengths: torch.Tensor, num_modalities: int) -> NodeBlocks:
    # CORECT's layout: node k * N + n, block = dialogue, slot = k * T + position.
    index = utterance_index(lengths)
    steps, n = int(lengths.max()), int(lengths.sum())
    return NodeBlocks(
        block=index.dialogue.repeat(num_modalities),
        slot=(torch.arange(num_modalities) * steps).repeat_interleave(n) + index.position.repeat(num_modalities),
        num_blocks=len(lengths),
        size=num_modalities * steps,
    )


def _check(modalities: str, **graph_kwargs: object) -> None:
    torch.manual_seed(0)
    conv = TransformerConv(8, 5, heads=3)
    graph = build_corect_graph(LENGTHS, modalities, **graph_kwargs)  # type: ignore[arg-type]
    blocks = _blocks(LENGTHS, len(modalities))
    x = torch.randn(blocks.block.numel(), 8)
    assert_same_function(
        conv,
        lambda inp: conv(inp, graph.edge_index),
        lambda inp: block_transformer_conv(conv, inp, graph.edge_index, blocks),
        x,
    )


@pytest.mark.parametrize("modalities", ["t", "tav"])
@pytest.mark.parametrize(
    "graph_kwargs",
    [{}, {"past": 2, "future": 3}, {"window_owner": "target"}, {"past": -1, "future": -1}, {"use_temporal": False}],
)
def test_block_attention_equals_pyg(modalities: str, graph_kwargs: dict[str, object]) -> None:
    _check(modalities, **graph_kwargs)


def test_nodes_without_incoming_edges_aggregate_nothing() -> None:
    # Only cross-modal edges: with one modality no node has any incoming edge.
    _check("t", use_temporal=False, use_self_loops=False)
    _check("ta", use_temporal=False, use_self_loops=False)


def test_edges_across_blocks_are_refused() -> None:
    blocks = NodeBlocks(block=torch.tensor([0, 0, 1]), slot=torch.tensor([0, 1, 0]), num_blocks=2, size=2)
    with pytest.raises(ValueError, match="inside one block"):
        block_adjacency(torch.tensor([[0], [2]]), blocks)


def test_unsupported_configurations_are_detected() -> None:
    assert supports_block_attention(TransformerConv(4, 4, heads=2))
    assert not supports_block_attention(TransformerConv(4, 4, heads=2, concat=False))
    assert not supports_block_attention(TransformerConv(4, 4, heads=2, beta=True))
    assert not supports_block_attention(TransformerConv(4, 4, heads=2, edge_dim=3))
    with_dropout = TransformerConv(4, 4, heads=2, dropout=0.1)
    assert not supports_block_attention(with_dropout.train()) and supports_block_attention(with_dropout.eval())
    with pytest.raises(ValueError, match="no block-attention"):
        block_transformer_conv(
            TransformerConv(4, 4, concat=False),
            torch.randn(2, 4),
            torch.zeros(2, 0, dtype=torch.long),
            NodeBlocks(torch.zeros(2, dtype=torch.long), torch.arange(2), 1, 2),
        )
