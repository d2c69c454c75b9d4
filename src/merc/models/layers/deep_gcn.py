r"""Deep spectral GCNs over MMGCN's multimodal graph: MMGCN's GCNII stack and MM-DFN's gated stack.

Both run over the graph of :func:`merc.data.graphs.mmgcn_graph` (one node per utterance
and modality) with the edge weights of MMGCN (Hu et al., ACL 2021), the
angular similarity of the two node features

.. math::

    A_{ij} = 1 - \frac{\arccos(\mathrm{sim}(x_i, x_j))}{\pi},

normalised symmetrically, :math:`\tilde P = D^{-1/2} A D^{-1/2}` with
:math:`D_{ii} = \sum_j A_{ij}` (self loops in ``A``: the code's adjacency has its diagonal
filled, no identity added). As the authors' ``create_big_adj``, the cosine is scaled by
``0.99999`` before the ``arccos`` (its derivative is infinite at 1) and the weights are
functions of the features, differentiable like everything else. A self loop's cosine is
1 by definition, so its weight is the constant ``1 - arccos(0.99999) / pi`` (the code
computes it from the features, up to rounding the same number).

Each layer is PyG's :class:`~torch_geometric.nn.GCN2Conv` (Chen et al., ICML 2020,
"Simple and Deep Graph Convolutional Networks"): initial residual and identity mapping,

.. math::

    H^{(l)} = \sigma\Big(\big((1-\alpha)\tilde P H^{(l-1)} + \alpha H^{(0)}\big)
        \big((1-\beta_l) I + \beta_l W^{(l)}\big)\Big), \qquad \beta_l = \log(\lambda / l + 1).

The authors' layer (``GraphConvolution`` with ``variant=True``, the setting of both
codes) gives the propagated and the initial states their own weights,
:math:`(1-\beta_l)\big((1-\alpha)\tilde P H + \alpha H^{(0)}\big) + \beta_l(\tilde P H W_1 + H^{(0)} W_2)`;
``GCN2Conv(shared_weights=False)`` computes
:math:`\beta_l\big((1-\alpha)\tilde P H W_1 + \alpha H^{(0)} W_2\big)` in that last term: the
same functions (:math:`W_1, W_2` absorb the constant factors), initialised by PyG.
``separate_initial_weight=False`` is the single weight of the equation above.

Speed (a fast path behind :mod:`merc.models.layers.fast`): MMGCN's intra-modal edges
join every two utterances of a dialogue, ``M * sum(n_b ** 2)`` edges, and PyG's
per-edge gather and scatter would hold an ``[E, h]`` message tensor per layer for the
backward pass (gigabytes for 16 layers over IEMOCAP batches). With ``NodeBlocks`` (the
dialogue and slot of every node) the cosines come from one Gram matrix per dialogue and
each propagation is one dense ``[B, S, S] @ [B, S, h]`` product, ``S = M * T``; the
normalised adjacency is built once per forward for all layers. ``MERC_FAST_KERNELS=0``
(or no blocks) runs the per-edge cosines and ``GCN2Conv.forward`` itself;
``tests/models/layers/test_deep_gcn.py`` checks that both agree.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GCN2Conv
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from merc.errors import ConfigError
from merc.models.layers.dropout import FastDropout
from merc.models.layers.fast import fast_kernels_enabled
from merc.models.layers.graph_attention import NodeBlocks

#: MMGCN's factor on the cosine before ``arccos`` (the authors' ``create_big_adj``).
COSINE_SCALE: float = 0.99999


def angular_edge_weights(
    x: Tensor, edge_index: Tensor, blocks: NodeBlocks | None = None, scale: float = COSINE_SCALE
) -> Tensor:
    """MMGCN's edge weights ``1 - arccos(scale * cos(x_src, x_dst)) / pi`` (self loops: cosine 1).

    A zero feature vector has cosine 0 with everything (weight about 0.5) instead of the
    code's division by zero.

    Args:
        x: Node features.
        edge_index: Source and target node ids.
        blocks: The dialogue and slot of every node (each edge inside one block); with the
            fast kernels on, the cosines come from one Gram matrix per block.
        scale: Factor on the cosine (keeps ``arccos`` differentiable).

    Shapes:
        - x: ``[V, h]``; edge_index: ``[2, E]``; output: ``[E]`` in ``(0, 1)``

    >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    >>> [round(w, 4) for w in angular_edge_weights(x, torch.tensor([[0, 0, 0], [0, 1, 2]])).tolist()]
    [0.9986, 0.5, 0.0014]
    """
    src, dst = edge_index
    unit = F.normalize(x, dim=-1)
    if blocks is not None and fast_kernels_enabled():
        dense = unit.new_zeros(blocks.num_blocks, blocks.size, unit.shape[-1])
        dense[blocks.block, blocks.slot] = unit
        gram = torch.bmm(dense, dense.transpose(1, 2))  # [B, S, S] cosines inside each dialogue
        cos = gram[blocks.block[src], blocks.slot[src], blocks.slot[dst]]
    else:
        cos = (unit[src] * unit[dst]).sum(-1)
    cos = torch.where(src == dst, torch.ones_like(cos), cos)
    return 1.0 - torch.acos((scale * cos).clamp(-1.0, 1.0)) / math.pi


class NormalizedGraph(NamedTuple):
    """A weighted graph ready for propagation (see :func:`normalized_graph`).

    Attributes:
        edge_index: ``long [2, E]`` source and target node ids.
        edge_weight: ``[E]`` symmetrically normalised weights ``A_ij / sqrt(d_i d_j)``.
        blocks: Dialogue and slot of every node, or ``None``.
        dense: ``[B, S, S]`` the same weights per dialogue (``dense[b, target, source]``)
            for the fast path, or ``None``.
        num_nodes: ``V``.
    """

    edge_index: Tensor
    edge_weight: Tensor
    blocks: NodeBlocks | None
    dense: Tensor | None
    num_nodes: int


def normalized_graph(
    x: Tensor, edge_index: Tensor, blocks: NodeBlocks | None = None, scale: float = COSINE_SCALE
) -> NormalizedGraph:
    """MMGCN's adjacency of the node features ``x``: angular weights, then ``D^{-1/2} A D^{-1/2}``.

    Degrees are weight sums over each node's edges (self loop included, none added), by
    PyG's ``gcn_norm``; a node without edges keeps degree 0 and receives nothing.

    Shapes:
        - x: ``[V, h]``; edge_index: ``[2, E]``
    """
    weight = angular_edge_weights(x, edge_index, blocks, scale)
    num_nodes = x.shape[0]
    edge_index, norm = gcn_norm(edge_index, weight, num_nodes, add_self_loops=False, dtype=x.dtype)
    assert norm is not None
    dense = None
    if blocks is not None and fast_kernels_enabled():
        src, dst = edge_index
        dense = norm.new_zeros(blocks.num_blocks, blocks.size, blocks.size)
        dense = dense.index_put((blocks.block[dst], blocks.slot[dst], blocks.slot[src]), norm, accumulate=True)
    return NormalizedGraph(edge_index, norm, blocks, dense, num_nodes)


def gcn2_conv(conv: GCN2Conv, x: Tensor, x_0: Tensor, graph: NormalizedGraph) -> Tensor:
    """``conv(x, x_0, edge_index, edge_weight)`` on a :class:`NormalizedGraph`.

    With the graph's dense blocks the propagation ``P x`` is one batched product and the
    rest is ``GCN2Conv``'s own arithmetic on its weights; otherwise PyG's forward.
    ``conv`` must not normalise again (``normalize=False``).

    Shapes:
        - x, x_0: ``[V, h]``; output ``[V, h]``
    """
    if conv.normalize:
        raise ConfigError("gcn2_conv takes an already normalised graph: build GCN2Conv with normalize=False")
    if graph.dense is None or graph.blocks is None:
        return conv(x, x_0, graph.edge_index, graph.edge_weight)
    blocks = graph.blocks
    dense_x = x.new_zeros(blocks.num_blocks, blocks.size, x.shape[-1])
    dense_x[blocks.block, blocks.slot] = x
    h = torch.bmm(graph.dense, dense_x)[blocks.block, blocks.slot] * (1 - conv.alpha)
    h_0 = conv.alpha * x_0
    beta = conv.beta
    if conv.weight2 is None:
        out = h + h_0
        return torch.addmm(out, out, conv.weight1, beta=1.0 - beta, alpha=beta)
    return torch.addmm(h, h, conv.weight1, beta=1.0 - beta, alpha=beta) + torch.addmm(
        h_0, h_0, conv.weight2, beta=1.0 - beta, alpha=beta
    )


def _gcn2_layers(hidden: int, num_layers: int, alpha: float, lamda: float, separate: bool) -> nn.ModuleList:
    if num_layers < 1:
        raise ConfigError(f"deep GCN needs num_layers >= 1, got {num_layers}")
    if not 0.0 <= alpha <= 1.0 or lamda < 0:
        raise ConfigError(f"deep GCN needs 0 <= alpha <= 1 and lamda >= 0, got alpha {alpha}, lamda {lamda}")
    return nn.ModuleList(
        GCN2Conv(hidden, alpha, theta=lamda, layer=layer, shared_weights=not separate, normalize=False)
        for layer in range(1, num_layers + 1)
    )


class DeepGCN(nn.Module):
    r"""MMGCN's deep spectral GCN (the authors' ``GCNII_lyc``).

    ``x -> dropout -> H^{(0)} = ReLU(W_0 x + b)``, then ``num_layers`` times
    ``H^{(l)} = ReLU(GCN2Conv_l(dropout(H^{(l-1)}), H^{(0)}))``, then dropout; with
    ``residual_input`` the output is ``[x, H^{(L)}]`` (the code's ``use_residue``, on:
    the classifier reads the input features next to the graph features).

    Args:
        in_dim: Node feature dim ``d`` (code: ``2 * D_e = 200``).
        hidden: GCN width ``h`` (code ``graph_h``: 100).
        num_layers: GCN layers ``L``.
        alpha: Initial-residual weight (MMGCN code: 0.1).
        lamda: ``lambda`` of ``beta_l = log(lambda / l + 1)`` (code: 0.5).
        dropout: Dropout rate (input, before every layer, output).
        separate_initial_weight: Own weights for the initial residual (the code's
            ``variant=True``), see the module docstring.
        residual_input: Output ``[x, H^{(L)}]`` rather than ``H^{(L)}``.

    Shapes:
        - x: ``[V, d]`` -> ``[V, d + h]`` (``[V, h]`` without ``residual_input``)
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        num_layers: int,
        alpha: float,
        lamda: float,
        dropout: float,
        separate_initial_weight: bool = True,
        residual_input: bool = True,
    ) -> None:
        super().__init__()
        self.input = nn.Linear(in_dim, hidden)
        self.convs = _gcn2_layers(hidden, num_layers, alpha, lamda, separate_initial_weight)
        self.dropout = FastDropout(dropout)
        self.residual_input = residual_input
        self.output_size = in_dim + hidden if residual_input else hidden

    def forward(self, x: Tensor, graph: NormalizedGraph) -> Tensor:
        x = self.dropout(x)
        h_0 = F.relu(self.input(x))
        h = h_0
        for conv in self.convs:
            h = F.relu(gcn2_conv(conv, self.dropout(h), h_0, graph))
        h = self.dropout(h)
        return torch.cat([x, h], dim=-1) if self.residual_input else h


class DynamicFusionGCN(DeepGCN):
    r"""MM-DFN's graph-based dynamic fusion (GDF) stack (the authors' ``GCNII_lyc`` with ``reason_flag``).

    Each GCN layer's input is gated by an LSTM cell that runs across the layers, one
    state per node, so that every layer sees the previous layers' contextual states
    through update, forget and output gates instead of only the last one:

    .. math::

        g^{(k)}, c^{(k)} = \mathrm{LSTMCell}\big(H'^{(k-1)}, (g^{(k-1)}, c^{(k-1)})\big),\quad
        H^{(k)} = \mathrm{dropout}\big(\mathrm{ReLU}(\mathrm{GCN2Conv}_k(g^{(k)}, H^{(0)}))\big),\quad
        H'^{(k)} = H^{(k)} + H'^{(k-1)},

    with ``H'^{(0)} = dropout(H^{(0)})``, ``H^{(0)} = ReLU(W_0 dropout(x) + b)`` and zero
    initial ``g, c``. The output is ``[x, H'^{(L)}]`` (``residual_input``).
    ``gated=False`` drops the cell and the running sum: the code's ``GF`` setting, which is
    :class:`DeepGCN` (the same sequence of dropout, convolution and ReLU).

    Args: as :class:`DeepGCN` (MM-DFN code: ``alpha`` 0.2, ``lamda`` 0.5), plus
        gated: The LSTM gate across layers (MM-DFN); ``False``: MMGCN's stack.

    Shapes:
        - x: ``[V, d]`` -> ``[V, d + h]``
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        num_layers: int,
        alpha: float,
        lamda: float,
        dropout: float,
        separate_initial_weight: bool = True,
        residual_input: bool = True,
        gated: bool = True,
    ) -> None:
        super().__init__(in_dim, hidden, num_layers, alpha, lamda, dropout, separate_initial_weight, residual_input)
        self.gate = nn.LSTMCell(hidden, hidden) if gated else None

    def forward(self, x: Tensor, graph: NormalizedGraph) -> Tensor:
        if self.gate is None:
            return super().forward(x, graph)
        x = self.dropout(x)
        h_0 = F.relu(self.input(x))
        h = self.dropout(h_0)
        state = (torch.zeros_like(h_0), torch.zeros_like(h_0))
        for conv in self.convs:
            state = self.gate(h, state)
            h = self.dropout(F.relu(gcn2_conv(conv, state[0], h_0, graph))) + h
        return torch.cat([x, h], dim=-1) if self.residual_input else h


__all__ = [
    "COSINE_SCALE",
    "DeepGCN",
    "DynamicFusionGCN",
    "NormalizedGraph",
    "angular_edge_weights",
    "gcn2_conv",
    "normalized_graph",
]
