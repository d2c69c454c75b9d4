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

:func:`grouped_relational_conv` covers the other ``RGCNConv`` settings merc uses
(DialogueGCN: basis decomposition, sum aggregation, a bipartite ``(sources, targets)``
input, up to ``2 P^2`` relations for ``P`` parties: 162 on MELD). PyG's loop reads
``weight[r]`` once per relation, and each of those reads costs the backward pass a
zero-filled gradient as large as the whole ``[R, F, F']`` weight: ``R^2 F F'`` numbers
per layer, 93% of a DialogueGCN epoch on MELD (``bench/profile_epoch.py``). Here the
messages are first summed per non-empty (relation, target) bucket, the buckets are
sorted by relation, and each
relation's buckets are multiplied by its weight, taken from one ``weight.unbind(0)``
(one backward node for all relations). Its products cover the non-empty buckets only
(at most one row per edge) instead of ``R`` full ``[V, F]`` matrices.

Both are fast paths behind :mod:`merc.models.layers.fast` (``MERC_FAST_KERNELS=0`` or
``use_fast_kernels(False)``): off, :func:`supports_fused_rgcn` is false, so callers
run the ``RGCNConv`` itself, and :func:`relational_mean_conv` and
:func:`grouped_relational_conv` call ``conv(x, edge_index, edge_type)``.
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


def grouped_relational_conv(
    conv: RGCNConv, x: Tensor | tuple[Tensor, Tensor], edge_index: Tensor, edge_type: Tensor
) -> Tensor:
    """``conv(x, edge_index, edge_type)`` with the messages grouped by relation (module docstring).

    Any ``RGCNConv`` without block decomposition: with or without basis decomposition,
    ``aggr`` ``"add"`` or ``"mean"``, ``x`` one feature matrix or a ``(sources, targets)``
    pair. With the fast kernels off, ``conv(x, edge_index, edge_type)`` itself.

    Args:
        conv: The module.
        x: ``[V, F]``, or ``([V_s, F], [V_t, F_t])`` (sources; targets, read by the root weight).
        edge_index: ``long [2, E]`` (source, target).
        edge_type: ``long [E]`` relation of each edge, in ``0 .. R - 1``.

    Returns:
        ``[V_t, F']`` (``V_t = V`` for one feature matrix).

    Raises:
        ValueError: a block decomposition, another aggregation, non-float features, or an
            edge type out of range (fast kernels on).
    """
    if not fast_kernels_enabled():
        return conv(x, edge_index, edge_type)  # the plain path: PyG's RGCNConv.forward
    sources, targets = x if isinstance(x, tuple) else (x, x)
    if conv.num_blocks is not None or conv.aggr not in ("add", "mean") or not sources.is_floating_point():
        raise ValueError("grouped_relational_conv needs float features, no block decomposition, aggr add or mean")
    num_relations, num_targets = conv.num_relations, targets.shape[0]
    if edge_type.numel() and not (0 <= int(edge_type.min()) and int(edge_type.max()) < num_relations):
        raise ValueError(
            f"edge types must lie in 0 .. {num_relations - 1} (the RGCN's relations), "
            f"got {int(edge_type.min())} .. {int(edge_type.max())}"
        )
    weight = conv.weight
    if conv.num_bases is not None:
        weight = (conv.comp @ weight.view(conv.num_bases, -1)).view(num_relations, sources.shape[1], -1)
    src, dst = edge_index
    # Bucket of each edge, relation-major, so that each relation's buckets are contiguous.
    bucket, edge_bucket = torch.unique(edge_type * num_targets + dst, return_inverse=True)
    messages = sources.index_select(0, src)
    if conv.aggr == "mean":
        # Mean over each (relation, target) bucket, as PyG's per-relation mean aggregation.
        count = torch.bincount(edge_bucket, minlength=bucket.numel()).to(messages.dtype)
        messages = messages / count[edge_bucket, None]
    summed = messages.new_zeros(bucket.numel(), messages.shape[1]).index_add_(0, edge_bucket, messages)
    per_relation = torch.bincount(bucket // num_targets, minlength=num_relations).tolist()
    products = [
        rows @ w for rows, w, n in zip(summed.split(per_relation), weight.unbind(0), per_relation, strict=True) if n
    ]
    out = summed.new_zeros(num_targets, weight.shape[-1])
    if products:
        out = out.index_add(0, bucket % num_targets, torch.cat(products))
    if conv.root is not None:
        out = out + targets @ conv.root
    if conv.bias is not None:
        out = out + conv.bias
    return out


__all__ = ["grouped_relational_conv", "relational_mean_conv", "supports_fused_rgcn"]
