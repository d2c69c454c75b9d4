"""MMGCN's edge weights and deep GCN stacks against dense references of the authors' equations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from merc.data.graphs import mmgcn_graph, utterance_index
from merc.errors import ConfigError
from merc.models.layers.deep_gcn import (
    COSINE_SCALE,
    DeepGCN,
    DynamicFusionGCN,
    angular_edge_weights,
    gcn2_conv,
    normalized_graph,
)
from merc.models.layers.fast import use_fast_kernels
from merc.models.layers.graph_attention import NodeBlocks

LENGTHS = (3, 1, 5)
MODS = "tav"


def _graph(lengths: tuple[int, ...] = LENGTHS, mods: str = MODS) -> tuple[Tensor, NodeBlocks, int]:
    n, t, m = sum(lengths), max(lengths), len(mods)
    idx = utterance_index(torch.tensor(lengths))
    blocks = NodeBlocks(
        block=idx.dialogue.repeat(m),
        slot=(torch.arange(m) * t).repeat_interleave(n) + idx.position.repeat(m),
        num_blocks=len(lengths),
        size=m * t,
    )
    return mmgcn_graph(torch.tensor(lengths), mods).edge_index, blocks, m * n


def _dense_reference_adjacency(x: Tensor, edge_index: Tensor) -> Tensor:
    """The authors' ``create_big_adj``: angular similarities in a dense matrix, then D^-1/2 A D^-1/2."""
    v = x.shape[0]
    adj = torch.zeros(v, v, dtype=torch.float64)
    for s, d in edge_index.t().tolist():
        a, b = x[s].double(), x[d].double()
        cos = 1.0 if s == d else float(a @ b / (a.norm() * b.norm()))
        adj[d, s] = 1 - math.acos(cos * COSINE_SCALE) / math.pi
    deg = adj.sum(1)
    inv = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
    return inv[:, None] * adj * inv[None, :]


@pytest.mark.parametrize("fast", [True, False])
def test_angular_weights_and_normalisation_match_the_dense_reference(fast: bool) -> None:
    edge_index, blocks, v = _graph()
    x = torch.randn(v, 7, generator=torch.Generator().manual_seed(0))
    with use_fast_kernels(fast):
        graph = normalized_graph(x, edge_index, blocks)
    assert (graph.dense is not None) == fast
    reference = _dense_reference_adjacency(x, edge_index)
    got = torch.zeros(v, v, dtype=torch.float64)
    got[edge_index[1], edge_index[0]] = graph.edge_weight.double()
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-6)
    assert torch.allclose(got, got.t(), atol=1e-6)  # symmetric graph, symmetric normalisation
    if graph.dense is not None:
        dense = torch.zeros(v, v)
        for s, d in edge_index.t().tolist():
            dense[d, s] = graph.dense[blocks.block[d], blocks.slot[d], blocks.slot[s]]
        torch.testing.assert_close(dense.double(), reference, rtol=1e-5, atol=1e-6)


def test_angular_weight_values_by_hand() -> None:
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
    edges = torch.tensor([[0, 0, 0, 0, 2], [0, 1, 2, 3, 2]])
    w = angular_edge_weights(x, edges)
    self_loop = 1 - math.acos(COSINE_SCALE) / math.pi  # the code's diagonal, about 0.99858
    expected = [self_loop, 1 - math.acos(COSINE_SCALE * math.sqrt(0.5)) / math.pi, 0.5, self_loop, self_loop]
    torch.testing.assert_close(w, torch.tensor(expected), rtol=1e-6, atol=1e-6)


def test_edge_weights_pass_gradients_to_the_features() -> None:
    # The adjacency is a function of the node features (as in the code): detaching it changes x's gradient.
    edge_index, blocks, v = _graph()
    torch.manual_seed(0)
    net = DeepGCN(6, 5, 2, 0.1, 0.5, 0.0).eval()
    x = torch.randn(v, 6, requires_grad=True)
    net(x, normalized_graph(x, edge_index, blocks)).sum().backward()
    with_weights = x.grad.clone()
    x.grad = None
    net(x, normalized_graph(x.detach(), edge_index, blocks)).sum().backward()
    assert not torch.allclose(with_weights, x.grad)


def _authors_layer(h: Tensor, h0: Tensor, p: Tensor, w1: Tensor, w2: Tensor, alpha: float, theta: float) -> Tensor:
    """The authors' ``GraphConvolution(variant=True)``: ``theta [PH, H0] W + (1 - theta)((1 - a) PH + a H0)``."""
    hi = p @ h
    support = torch.cat([hi, h0], dim=1)
    weight = torch.cat([w1, w2], dim=0)
    return theta * support @ weight + (1 - theta) * ((1 - alpha) * hi + alpha * h0)


@pytest.mark.parametrize("fast", [True, False])
def test_deep_gcn_is_the_authors_gcnii(fast: bool) -> None:
    # GCN2Conv(shared_weights=False) with W1, W2 = the authors' weight halves / (1 - alpha), / alpha.
    edge_index, blocks, v = _graph()
    alpha, lamda, layers = 0.1, 0.5, 3
    torch.manual_seed(1)
    net = DeepGCN(6, 4, layers, alpha, lamda, dropout=0.0).eval()
    x = torch.randn(v, 6)
    with use_fast_kernels(fast), torch.no_grad():
        out = net(x, normalized_graph(x, edge_index, blocks))
        p = _dense_reference_adjacency(x, edge_index).float()
        h0 = torch.relu(net.input(x))
        h = h0
        for layer, conv in enumerate(net.convs, start=1):
            theta = math.log(lamda / layer + 1)
            assert conv.beta == pytest.approx(theta)
            h = torch.relu(_authors_layer(h, h0, p, (1 - alpha) * conv.weight1, alpha * conv.weight2, alpha, theta))
    assert out.shape == (v, 6 + 4)
    torch.testing.assert_close(out, torch.cat([x, h], dim=-1), rtol=1e-4, atol=1e-5)


def test_shared_weight_form_is_the_papers_equation() -> None:
    edge_index, blocks, v = _graph()
    torch.manual_seed(2)
    net = DeepGCN(6, 4, 2, 0.1, 0.5, dropout=0.0, separate_initial_weight=False, residual_input=False).eval()
    assert all(conv.weight2 is None for conv in net.convs)
    x = torch.randn(v, 6)
    with torch.no_grad():
        out = net(x, normalized_graph(x, edge_index, blocks))
        p = _dense_reference_adjacency(x, edge_index).float()
        h0 = torch.relu(net.input(x))
        h = h0
        for layer, conv in enumerate(net.convs, start=1):
            beta = math.log(0.5 / layer + 1)
            s = 0.9 * p @ h + 0.1 * h0
            h = torch.relu(s @ ((1 - beta) * torch.eye(4) + beta * conv.weight1))
    torch.testing.assert_close(out, h, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fast", [True, False])
def test_dynamic_fusion_gates_every_layer_with_an_lstm_cell_across_layers(fast: bool) -> None:
    edge_index, blocks, v = _graph()
    alpha, lamda = 0.2, 0.5
    torch.manual_seed(3)
    net = DynamicFusionGCN(6, 4, 3, alpha, lamda, dropout=0.0).eval()
    assert net.gate is not None
    x = torch.randn(v, 6)
    with use_fast_kernels(fast), torch.no_grad():
        out = net(x, normalized_graph(x, edge_index, blocks))
        p = _dense_reference_adjacency(x, edge_index).float()
        h0 = torch.relu(net.input(x))
        hp, g, c = h0, torch.zeros_like(h0), torch.zeros_like(h0)
        for layer, conv in enumerate(net.convs, start=1):
            # The code's nn.LSTM(h, h, 1) on a length-1 sequence: the LSTM cell equations.
            gates = hp @ net.gate.weight_ih.t() + net.gate.bias_ih + g @ net.gate.weight_hh.t() + net.gate.bias_hh
            i, f, cand, o = gates.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(cand)
            g = torch.sigmoid(o) * torch.tanh(c)
            theta = math.log(lamda / layer + 1)
            hp = (
                torch.relu(_authors_layer(g, h0, p, (1 - alpha) * conv.weight1, alpha * conv.weight2, alpha, theta))
                + hp
            )
    torch.testing.assert_close(out, torch.cat([x, hp], dim=-1), rtol=1e-4, atol=1e-5)


def test_ungated_dynamic_fusion_is_mmgcns_stack() -> None:
    edge_index, blocks, v = _graph()
    torch.manual_seed(4)
    plain = DeepGCN(6, 4, 3, 0.2, 0.5, dropout=0.3)
    ungated = DynamicFusionGCN(6, 4, 3, 0.2, 0.5, dropout=0.3, gated=False)
    assert ungated.gate is None
    ungated.load_state_dict(plain.state_dict())
    x = torch.randn(v, 6)
    graph = normalized_graph(x, edge_index, blocks)
    for mode in ("eval", "train"):
        getattr(plain, mode)()
        getattr(ungated, mode)()
        torch.manual_seed(9)
        a = plain(x, graph)
        torch.manual_seed(9)
        torch.testing.assert_close(ungated(x, graph), a)
    gated = DynamicFusionGCN(6, 4, 3, 0.2, 0.5, dropout=0.0).eval()
    gated.load_state_dict({**plain.state_dict(), **{k: v for k, v in gated.state_dict().items() if "gate" in k}})
    assert not torch.allclose(gated(x, graph), plain.eval()(x, graph))


@pytest.mark.parametrize("cls", [DeepGCN, DynamicFusionGCN])
def test_dense_block_path_matches_pyg_with_gradients(cls: type[DeepGCN]) -> None:
    edge_index, blocks, v = _graph((6, 1, 9, 4), "ta")
    runs = []
    for fast in (True, False):
        torch.manual_seed(5)
        net = cls(6, 4, 4, 0.1, 0.5, dropout=0.0).eval()
        x = torch.randn(v, 6, requires_grad=True)
        with use_fast_kernels(fast):
            out = net(x, normalized_graph(x, edge_index, blocks))
            out.pow(2).sum().backward()
        runs.append((out.detach(), x.grad, {n: p.grad for n, p in net.named_parameters()}))
    (out_a, gx_a, gp_a), (out_b, gx_b, gp_b) = runs
    torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_a, gx_b, rtol=1e-4, atol=1e-5)
    for name, grad in gp_b.items():
        torch.testing.assert_close(gp_a[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_bad_settings_are_clear_errors() -> None:
    from torch_geometric.nn import GCN2Conv

    with pytest.raises(ConfigError, match="num_layers"):
        DeepGCN(4, 4, 0, 0.1, 0.5, 0.0)
    with pytest.raises(ConfigError, match="alpha"):
        DeepGCN(4, 4, 2, 1.5, 0.5, 0.0)
    edge_index, blocks, v = _graph()
    x = torch.randn(v, 4)
    with pytest.raises(ConfigError, match="normalize"):
        gcn2_conv(GCN2Conv(4, 0.1), x, x, normalized_graph(x, edge_index, blocks))
