"""Fused relational mean convolution against PyG's RGCNConv, on CORECT graphs and random multigraphs."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.nn import RGCNConv

from helpers import assert_same_function
from merc.data.graphs import build_corect_graph
from merc.models.layers.relational_conv import relational_mean_conv, supports_fused_rgcn

LENGTHS = torch.tensor([6, 1, 9, 4])


def _check(conv: RGCNConv, x: torch.Tensor, edge_index: torch.Tensor, edge_type: torch.Tensor) -> None:
    assert_same_function(
        conv,
        lambda inp: conv(inp, edge_index, edge_type),
        lambda inp: relational_mean_conv(conv, inp, edge_index, edge_type),
        x,
        rtol=1e-6,
    )


@pytest.mark.parametrize("modalities", ["t", "tav"])
@pytest.mark.parametrize("graph_kwargs", [{}, {"past": 2, "future": 3}, {"use_temporal": False}])
def test_equals_pyg_on_corect_graphs(modalities: str, graph_kwargs: dict[str, object]) -> None:
    torch.manual_seed(0)
    graph = build_corect_graph(LENGTHS, modalities, **graph_kwargs)  # type: ignore[arg-type]
    conv = RGCNConv(8, 5, num_relations=15)
    _check(conv, torch.randn(len(modalities) * int(LENGTHS.sum()), 8), graph.edge_index, graph.edge_type)


@pytest.mark.parametrize("root_weight", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_pyg_on_random_multigraphs(root_weight: bool, bias: bool) -> None:
    # Duplicate edges, nodes without incoming edges, relations without edges.
    torch.manual_seed(1)
    num_nodes, num_edges = 12, 40
    edge_index = torch.randint(0, num_nodes - 3, (2, num_edges))
    edge_index = torch.cat([edge_index, edge_index[:, :5]], dim=1)
    edge_type = torch.randint(0, 3, (edge_index.shape[1],))  # relation 3 of 4 never occurs
    conv = RGCNConv(6, 4, num_relations=4, root_weight=root_weight, bias=bias)
    _check(conv, torch.randn(num_nodes, 6), edge_index, edge_type)


def test_no_edges_leaves_the_root_term() -> None:
    conv = RGCNConv(3, 2, num_relations=2)
    x = torch.randn(4, 3)
    out = relational_mean_conv(conv, x, torch.empty(2, 0, dtype=torch.long), torch.empty(0, dtype=torch.long))
    torch.testing.assert_close(out, x @ conv.root + conv.bias)


def test_unsupported_configurations_are_refused() -> None:
    x = torch.randn(3, 4)
    assert supports_fused_rgcn(RGCNConv(4, 4, 2), x)
    assert not supports_fused_rgcn(RGCNConv(4, 4, 2, num_bases=1), x)
    assert not supports_fused_rgcn(RGCNConv(4, 4, 2, aggr="sum"), x)
    with pytest.raises(ValueError, match="no fused equivalent"):
        relational_mean_conv(
            RGCNConv(4, 4, 2, num_blocks=2), x, torch.zeros(2, 1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
        )


@pytest.mark.parametrize("bad_type", [-1, 2])
def test_out_of_range_edge_types_are_refused(bad_type: int) -> None:
    conv = RGCNConv(3, 2, num_relations=2)
    edge_index = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match=r"edge types must lie in 0 \.\. 1"):
        relational_mean_conv(conv, torch.randn(3, 3), edge_index, torch.tensor([0, bad_type]))
