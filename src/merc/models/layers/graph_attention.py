"""PyG's :class:`~torch_geometric.nn.TransformerConv` computed as dense attention within blocks of nodes.

Conversation graphs (CORECT's, DAG-ERC's ...) only link nodes of the same dialogue.
Grouping the nodes by dialogue into ``B`` blocks of at most ``S`` slots, the graph
attention of Shi et al. (2021) that ``TransformerConv`` implements,

.. math::

    x'_i = W_s x_i + \\sum_{j \\in N(i)} \\alpha_{ij} W_v x_j, \\qquad
    \\alpha_{ij} = \\mathrm{softmax}_{j \\in N(i)}\\big((W_q x_i)^\\top (W_k x_j) / \\sqrt{C}\\big)

(per head, heads concatenated), is ordinary masked multi-head attention inside each
block, with the adjacency as the mask. :func:`block_transformer_conv` evaluates it so,
with :func:`merc.models.layers.attention.block_attention` on ``[B, H, S, S]``, from
the module's own weights (bfloat16 products at bucketed shapes under CPU autocast);
PyG instead gathers ``[E, H, C]`` query, key and value copies per edge and scatters
them back, memory-bound work that cost CORECT's text-only IEMOCAP epoch more than the
Transformer's matrix products on the same nodes (``bench/bench_corect.py`` and
``bench/bench_corect_ops.py`` time CORECT's epoch, results in ``bench/results/``).

A fast path behind :mod:`merc.models.layers.fast` (``MERC_FAST_KERNELS=0`` or
``use_fast_kernels(False)``): off, :func:`supports_block_attention` is false, so
callers run the ``TransformerConv`` itself, and :func:`block_transformer_conv` calls
``conv(x, edge_index)``.

Same function (up to float rounding) for graphs whose edges never leave a block and
hold no duplicate ``(source, target)`` pair (a duplicate counts twice in PyG's
softmax); a node without incoming edges aggregates nothing, as in PyG.
``tests/models/layers/test_graph_attention.py`` checks outputs and gradients against
PyG on CORECT graphs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch_geometric.nn import TransformerConv

from merc.models.layers.attention import block_attention
from merc.models.layers.fast import fast_kernels_enabled
from merc.models.layers.precision import linear


class NodeBlocks(NamedTuple):
    """Where each graph node sits in the dense ``[B, S]`` block layout.

    Attributes:
        block: ``long [V]`` block (dialogue) of each node.
        slot: ``long [V]`` slot of each node inside its block, distinct within a block, ``< size``.
        num_blocks: ``B``.
        size: ``S``, slots per block.
    """

    block: Tensor
    slot: Tensor
    num_blocks: int
    size: int


def supports_block_attention(conv: TransformerConv) -> bool:
    """Whether to evaluate ``conv`` by :func:`block_transformer_conv`: the fast kernels are on
    (:mod:`merc.models.layers.fast`) and block attention reproduces ``conv``."""
    return fast_kernels_enabled() and _block_equivalent(conv)


def _block_equivalent(conv: TransformerConv) -> bool:
    """Whether block attention reproduces ``conv``: concatenated heads, root weight without
    beta gating, no edge features, no attention dropout in training."""
    return (
        bool(conv.concat)
        and bool(conv.root_weight)
        and conv.lin_beta is None
        and conv.lin_edge is None
        and (conv.dropout == 0.0 or not conv.training)
    )


def block_adjacency(edge_index: Tensor, blocks: NodeBlocks) -> Tensor:
    """``bool [B, S, S]`` with ``[b, target slot, source slot]`` true for every edge.

    Raises:
        ValueError: An edge joins two blocks.
    """
    src, dst = edge_index
    block = blocks.block[dst]
    if edge_index.numel() and not torch.equal(block, blocks.block[src]):
        raise ValueError("block attention needs every edge inside one block (dialogue)")
    allowed = torch.zeros(blocks.num_blocks, blocks.size, blocks.size, dtype=torch.bool, device=edge_index.device)
    allowed[block, blocks.slot[dst], blocks.slot[src]] = True
    return allowed


def block_transformer_conv(
    conv: TransformerConv,
    x: Tensor,
    edge_index: Tensor,
    blocks: NodeBlocks,
    adjacency: Tensor | None = None,
) -> Tensor:
    """``conv(x, edge_index)`` as masked dense attention inside blocks (see the module docstring);
    with the fast kernels off, ``conv(x, edge_index)`` itself.

    Args:
        conv: A ``TransformerConv`` that block attention reproduces (concatenated heads,
            root weight without beta gating, no edge features, no attention dropout in
            training).
        x: ``[V, F]`` node features.
        edge_index: ``long [2, E]`` (source, target), no duplicate pairs.
        blocks: The block and slot of every node.
        adjacency: The :func:`block_adjacency` of ``edge_index`` and ``blocks``, if already built.

    Returns:
        ``[V, heads * out_channels]``.

    Raises:
        ValueError: Block attention does not reproduce ``conv`` (fast kernels on).
    """
    if not fast_kernels_enabled():
        return conv(x, edge_index)  # the plain path: PyG's TransformerConv.forward
    if not _block_equivalent(conv):
        raise ValueError("this TransformerConv configuration has no block-attention equivalent; call it directly")
    heads = conv.heads
    allowed = adjacency if adjacency is not None else block_adjacency(edge_index, blocks)
    slots = blocks.block * blocks.size + blocks.slot
    # A query slot with no allowed key would be a softmax over nothing (NaN, whose
    # gradient reaches every key): let every such slot see itself. Empty slots of short
    # dialogues are always among them; a real node without incoming edges also has its
    # result zeroed below (PyG's sum over no incoming edge).
    no_key = ~allowed.any(dim=-1)  # [B, S]
    allowed = allowed | torch.diag_embed(no_key)
    isolated_nodes = no_key.view(-1)[slots]  # [V]
    # One projection for queries, keys, values and the root (skip) term: the four
    # Linear layers stacked, split afterwards (split's backward is one concatenation).
    # TransformerConv's ``bias`` switches the four biases together.
    linears = (conv.lin_query, conv.lin_key, conv.lin_value, conv.lin_skip)
    weight = torch.cat([lin.weight for lin in linears])
    bias = torch.cat([lin.bias for lin in linears]) if conv.lin_query.bias is not None else None
    width = conv.lin_skip.weight.shape[0]
    # 1/sqrt(C) scaling as PyG; under CPU autocast bfloat16 products at bucketed shapes
    # (merc.models.layers.precision), float32 otherwise.
    qkv, skip = linear(x, weight, bias).split([3 * width, width], dim=1)
    out = block_attention(qkv, slots, allowed, heads)
    if bool(isolated_nodes.any()):
        out = out.masked_fill(isolated_nodes[:, None], 0.0)
    return out + skip


__all__ = ["NodeBlocks", "block_adjacency", "block_transformer_conv", "supports_block_attention"]
