"""Fused relational mean convolution against PyG's RGCNConv, on CORECT graphs and random multigraphs."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.nn import RGCNConv

from helpers import assert_same_function
from merc.data.graphs import build_corect_graph
from merc.models.layers.relational_conv import grouped_relational_conv, relational_mean_conv, supports_fused_rgcn

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


# --- grouped_relational_conv: DialogueGCN's settings (bases, sum, bipartite input) ---------


@pytest.mark.parametrize("num_bases", [None, 3])
@pytest.mark.parametrize("aggr", ["add", "mean"])
@pytest.mark.parametrize("bipartite", [False, True])
def test_grouped_equals_pyg(num_bases: int | None, aggr: str, bipartite: bool) -> None:
    torch.manual_seed(0)
    num_nodes, num_relations = 10, 18  # many relations, most with few edges, some with none
    edge_index = torch.randint(0, num_nodes, (2, 50))
    edge_index = torch.cat([edge_index, edge_index[:, :7]], dim=1)  # repeated edges
    edge_type = torch.randint(0, num_relations - 4, (edge_index.shape[1],))
    conv = RGCNConv(6, 5, num_relations, num_bases=num_bases, aggr=aggr).double()
    with torch.no_grad():  # PyG initialises some terms to zero; make every term count
        for p in conv.parameters():
            p.normal_()
    if bipartite:
        # DialogueGCN's form: one source row per edge; the targets are read by the root weight.
        targets = torch.randn(num_nodes, 6, dtype=torch.float64)
        per_edge = torch.stack([torch.arange(edge_index.shape[1]), edge_index[1]])
        x = torch.randn(edge_index.shape[1], 6, dtype=torch.float64)

        def plain(inp: torch.Tensor) -> torch.Tensor:
            return conv((inp, targets), per_edge, edge_type)

        def grouped(inp: torch.Tensor) -> torch.Tensor:
            return grouped_relational_conv(conv, (inp, targets), per_edge, edge_type)

    else:
        x = torch.randn(num_nodes, 6, dtype=torch.float64)

        def plain(inp: torch.Tensor) -> torch.Tensor:
            return conv(inp, edge_index, edge_type)

        def grouped(inp: torch.Tensor) -> torch.Tensor:
            return grouped_relational_conv(conv, inp, edge_index, edge_type)

    assert_same_function(conv, plain, grouped, x, rtol=1e-9, atol=1e-9)


def test_grouped_reads_each_relation_weight_once_in_backward() -> None:
    # The reason for the path: no per-relation select of the weight (whose backward
    # allocates a zero gradient as large as the whole weight).
    torch.manual_seed(0)
    conv = RGCNConv(4, 3, 30, num_bases=2)
    edge_index = torch.randint(0, 8, (2, 40))
    edge_type = torch.randint(0, 30, (40,))
    out = grouped_relational_conv(conv, torch.randn(8, 4), edge_index, edge_type)
    names: set[str] = set()
    seen: set[int] = set()
    stack = [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        names.add(node.name())
        stack.extend(fn for fn, _ in node.next_functions)
    assert "SelectBackward0" not in names and "UnbindBackward0" in names


def test_grouped_no_edges_and_refusals() -> None:
    conv = RGCNConv(3, 2, num_relations=2, num_bases=2)
    x = torch.randn(4, 3)
    out = grouped_relational_conv(conv, x, torch.empty(2, 0, dtype=torch.long), torch.empty(0, dtype=torch.long))
    torch.testing.assert_close(out, x @ conv.root + conv.bias)
    edge_index = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match=r"edge types must lie in 0 \.\. 1"):
        grouped_relational_conv(conv, x, edge_index, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="block decomposition"):
        grouped_relational_conv(RGCNConv(4, 4, 2, num_blocks=2), torch.randn(3, 4), edge_index, torch.tensor([0, 1]))
