"""PyG's :class:`~torch_geometric.nn.RGCNConv` (mean aggregation) as one gather, one scatter and one product.

The relational graph convolution of Schlichtkrull et al. (2018), CORECT's eq. 7,

.. math::

    x'_i = W_0 x_i + b + \\sum_{r} \\frac{1}{|N_r(i)|} \\sum_{j \\in N_r(i)} W_r x_j,

is what ``RGCNConv`` (no basis or block decomposition, ``aggr="mean"``) computes, one
relation at a time: per relation it masks the edges, gathers and mean-aggregates their
sources, and multiplies by ``W_r`` (a dozen operations forward and as many backward,
per relation). :func:`relational_mean_conv` evaluates the same sum for all relations
at once: the sources of all edges are gathered once and added into one
``[V * R, F]`` buffer at row ``target * R + relation``, divided by the per-row edge
count, and the ``[V, R * F]`` result multiplies the stacked ``[R * F, F']`` relation
weights in one matrix product (the same FLOPs as PyG's ``R`` products of ``[V, F]``).
Same function up to float rounding (the relation terms are summed in another order);
``tests/models/layers/test_relational_conv.py`` checks outputs and gradients against PyG.
``bench/bench_cpu_kernels.py`` times both on a CORECT graph (results in ``bench/results/``).

A fast path behind :mod:`merc.models.layers.fast` (``MERC_FAST_KERNELS=0`` or
``use_fast_kernels(False)``): off, :func:`supports_fused_rgcn` is false, so callers
run the ``RGCNConv`` itself, and :func:`relational_mean_conv` calls
``conv(x, edge_index, edge_type)``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.nn import RGCNConv

from merc.models.layers.fast import fast_kernels_enabled


def supports_fused_rgcn(conv: RGCNConv, x: Tensor) -> bool:
    """Whether to evaluate ``conv(x, ...)`` by :func:`relational_mean_conv`: the fast kernels are
    on (:mod:`merc.models.layers.fast`) and the fused form reproduces it."""
    return fast_kernels_enabled() and _fused_equivalent(conv, x)


def _fused_equivalent(conv: RGCNConv, x: Tensor) -> bool:
    """Whether the fused form reproduces ``conv(x, ...)``: no basis or block decomposition,
    mean aggregation, floating-point node features (not node indices)."""
    return (
        conv.num_bases is None
        and conv.num_blocks is None
        and conv.aggr == "mean"
        and isinstance(x, Tensor)
        and x.is_floating_point()
    )


def relational_mean_conv(conv: RGCNConv, x: Tensor, edge_index: Tensor, edge_type: Tensor) -> Tensor:
    """``conv(x, edge_index, edge_type)`` in one gather, scatter and product; with the fast
    kernels off, ``conv(x, edge_index, edge_type)`` itself.

    Args:
        conv: The module (its ``weight [R, F, F']``, ``root [F, F']`` or None, ``bias [F']``
            or None), without basis or block decomposition, ``aggr="mean"``.
        x: ``[V, F]`` node features.
        edge_index: ``long [2, E]`` (source, target).
        edge_type: ``long [E]`` relation of each edge, in ``0 .. R - 1``.

    Returns:
        ``[V, F']``.

    Raises:
        ValueError: ``conv`` has no fused equivalent, or an edge type is out of range
            (fast kernels on).
    """
    if not fast_kernels_enabled():
        return conv(x, edge_index, edge_type)  # the plain path: PyG's RGCNConv.forward
    if not _fused_equivalent(conv, x):
        raise ValueError("this RGCNConv configuration has no fused equivalent; call it directly")
    num_nodes, in_dim = x.shape
    num_relations = conv.num_relations
    # An out-of-range relation would land in a neighbouring node's bucket, not fail.
    if edge_type.numel() and not (0 <= int(edge_type.min()) and int(edge_type.max()) < num_relations):
        raise ValueError(
            f"edge types must lie in 0 .. {num_relations - 1} (the RGCN's relations), "
            f"got {int(edge_type.min())} .. {int(edge_type.max())}"
        )
    src, dst = edge_index
    row = dst * num_relations + edge_type  # [E]: (target, relation) bucket of each edge
    # Mean over each (target, relation) bucket; empty buckets stay zero, as PyG's scatter mean.
    count = torch.bincount(row, minlength=num_nodes * num_relations).clamp_min_(1)
    summed = x.new_zeros(num_nodes * num_relations, in_dim).index_add_(0, row, x.index_select(0, src))
    mean = summed / count.to(x.dtype)[:, None]
    stacked_weight = conv.weight.reshape(num_relations * in_dim, -1)
    out = mean.view(num_nodes, num_relations * in_dim) @ stacked_weight
    if conv.root is not None:
        out = out + x @ conv.root
    if conv.bias is not None:
        out = out + conv.bias
    return out


__all__ = ["relational_mean_conv", "supports_fused_rgcn"]
