"""Multi-head attention of packed rows inside blocks (dialogues), the kernel shared by merc's attention layers.

Conversation models attend within a dialogue only. Their rows come packed (``[N, ...]``,
the real utterances or graph nodes, no padding); :func:`block_attention` lays queries,
keys and values out as padded per-head grids ``[B, H, S, dh]`` (``B`` blocks of ``S``
slots), attends under a boolean ``allowed`` mask (key padding ``[B, 1, S]`` for a
Transformer, an adjacency ``[B, S, S]`` for graph attention) and returns the packed
``[N, H * dh]`` outputs. Used by :mod:`merc.models.layers.transformer` and
:mod:`merc.models.layers.graph_attention`.

Two evaluation paths, the same function:

- plain: :func:`torch.nn.functional.scaled_dot_product_attention` (with its own
  dropout on the attention weights). Always taken with the fast kernels off
  (:mod:`merc.models.layers.fast`, ``MERC_FAST_KERNELS=0``), and in float32 without
  dropout.
- fast, with dropout on the attention weights or under CPU autocast
  (``training.precision=bf16-mixed``): explicit ``softmax(q k^T / sqrt(dh) + bias) v``
  with batched products, the scale and the mask riding in one ``baddbmm``, the weights
  dropped by :func:`merc.models.layers.dropout.dropout`. Under CPU autocast the
  products run in bfloat16 with the slot count padded to a multiple of
  :data:`STEP_BUCKET` (so that oneDNN reuses its compiled kernels, see
  :mod:`merc.models.layers.precision`; added slots are masked keys and dropped
  queries) and the softmax reads and writes bfloat16 (accumulating in float32). One
  CORECT text-Transformer attention (10 dialogues, 80 steps, 8 heads, forward and
  backward with dropout, 1 thread) is timed both ways in ``bench/bench_cpu_kernels.py``
  (results in ``bench/results/``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from merc.models.layers.dropout import dropout
from merc.models.layers.fast import fast_kernels_enabled
from merc.models.layers.precision import cpu_autocast_active

#: Slots per block are padded to a multiple of this under CPU autocast: attention cost
#: grows with its square, so a finer bucket than the row bucket of the projections.
STEP_BUCKET = 16


def rows_to_grid(rows: Tensor, index: Tensor, num_blocks: int, size: int) -> Tensor:
    """Packed rows laid out in their blocks: ``[N, d]`` rows at ``index`` of the ``B x S`` grid -> ``[B, S, d]``.

    Positions no row fills are zero. In place into the zero grid: the out-of-place
    ``index_copy`` would clone it first.

    >>> rows_to_grid(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([0, 1, 3]), 2, 2)[..., 0].tolist()
    [[1.0, 2.0], [0.0, 3.0]]
    """
    grid = rows.new_zeros(num_blocks * size, rows.shape[-1]).index_copy_(0, index, rows)
    return grid.view(num_blocks, size, rows.shape[-1])


def _head_grid(rows: Tensor, index: Tensor, num_blocks: int, size: int, num_heads: int) -> Tensor:
    """:func:`rows_to_grid` viewed per head: ``[B, H, S, d / H]`` (no copy)."""
    d = rows.shape[-1]
    return rows_to_grid(rows, index, num_blocks, size).view(num_blocks, size, num_heads, d // num_heads).transpose(1, 2)


def scatter_heads(qkv: Tensor, index: Tensor, num_blocks: int, size: int, num_heads: int) -> list[Tensor]:
    """Queries, keys and values of packed rows laid out as padded per-head grids.

    Args:
        qkv: ``[N, 3 * d]`` rows ``[q | k | v]`` (heads contiguous in each).
        index: ``long [N]`` distinct positions of the rows in the ``num_blocks * size`` grid.
        num_blocks, size: ``B`` and ``S`` of the grid.
        num_heads: ``H``; ``d`` must be divisible by it.

    Returns:
        ``[q, k, v]``, each ``[B, H, S, d / H]``, zero at positions no row fills.

    Each part gets its own ``[B * S, d]`` grid (viewed head-major without a copy), not
    one ``[B * S, 3 * d]`` grid split by ``unbind``: the gradients attention returns then
    already have the grids' layout, whereas ``unbind``'s backward stacks and re-lays
    them out. Any time saved is within noise (``bench/bench_cpu_kernels.py`` times both
    layouts, results in ``bench/results/``); the three grids stay as the simpler code.
    """
    return [_head_grid(part, index, num_blocks, size, num_heads) for part in qkv.chunk(3, dim=1)]


def gather_heads(out: Tensor, index: Tensor) -> Tensor:
    """``[B, H, S, dh]`` attention outputs back to the ``[N, H * dh]`` rows at ``index`` (heads concatenated)."""
    batch, heads, size, head_dim = out.shape
    return out.transpose(1, 2).reshape(batch * size, heads * head_dim).index_select(0, index)


def block_attention(
    qkv: Tensor,
    index: Tensor,
    allowed: Tensor,
    num_heads: int,
    dropout_p: float = 0.0,
) -> Tensor:
    """Multi-head scaled dot-product attention of packed rows within blocks.

    Args:
        qkv: ``[R, 3 * d]`` projected queries, keys and values (``[q | k | v]``), ``R >= N``:
            rows past the first ``N`` are row padding (see
            :func:`merc.models.layers.precision.pad_rows`), never attended to; their
            outputs are finite but unspecified (row 0's).
        index: ``long [N]`` distinct positions of the first ``N`` rows in the ``B * S`` grid
            (row ``b * S + s``: block ``b``, slot ``s``).
        allowed: ``bool [B, 1, S]`` (keys each query may see, the same for all queries)
            or ``bool [B, S, S]`` (``[b, query slot, key slot]``). Every query slot,
            filled or not, must allow at least one key (else its softmax is NaN).
        num_heads: ``H``; ``d`` must be divisible by it.
        dropout_p: Dropout on the attention weights (training).

    Returns:
        ``[R, d]`` outputs, heads concatenated; float32 unless CPU autocast is active.
    """
    extra_rows = qkv.shape[0] - index.shape[0]
    if extra_rows < 0:
        raise ValueError(f"block_attention: {index.shape[0]} grid positions for {qkv.shape[0]} rows")
    if extra_rows:
        qkv = qkv[: index.shape[0]]
    if not fast_kernels_enabled() or (dropout_p == 0.0 and not cpu_autocast_active(qkv)):
        out, index = _sdpa_attention(qkv, index, allowed, num_heads, dropout_p)
    else:
        out, index = _explicit_attention(qkv, index, allowed, num_heads, dropout_p)
    # Padding rows read slot 0 (finite, unspecified).
    return gather_heads(out, F.pad(index, (0, extra_rows)) if extra_rows else index)


def _sdpa_attention(
    qkv: Tensor,
    index: Tensor,
    allowed: Tensor,
    num_heads: int,
    dropout_p: float,
) -> tuple[Tensor, Tensor]:
    """The plain path: PyTorch's ``scaled_dot_product_attention``; ``([B, H, S, dh] outputs, index)``."""
    batch, _, size = allowed.shape
    q, k, v = scatter_heads(qkv, index, batch, size, num_heads)  # [B, H, S, dh]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], dropout_p=dropout_p), index


def _explicit_attention(
    qkv: Tensor,
    index: Tensor,
    allowed: Tensor,
    num_heads: int,
    dropout_p: float,
) -> tuple[Tensor, Tensor]:
    """The fast path: explicit batched products and softmax, bfloat16 at bucketed sizes under CPU
    autocast; ``([B, H, S', dh] outputs, the rows' positions in that grid)``."""
    batch, _, size = allowed.shape
    if cpu_autocast_active(qkv):
        qkv = qkv.to(torch.get_autocast_dtype("cpu"))
        extra = -size % STEP_BUCKET
        if extra:
            index = index + index.div(size, rounding_mode="floor") * extra
            allowed = F.pad(allowed, (0, extra), value=False)
            if allowed.shape[1] > 1:  # the added query slots see themselves (zero rows, dropped)
                allowed = F.pad(allowed, (0, 0, 0, extra), value=False)
                allowed[:, size:, size:] = torch.eye(extra, dtype=torch.bool, device=allowed.device)
            size += extra
    heads_total = batch * num_heads
    head_dim = qkv.shape[1] // 3 // num_heads
    q, k, v = (t.reshape(heads_total, size, head_dim) for t in scatter_heads(qkv, index, batch, size, num_heads))
    bias = torch.zeros(allowed.shape, dtype=qkv.dtype, device=qkv.device).masked_fill_(~allowed, float("-inf"))
    scores = torch.baddbmm(bias.repeat_interleave(num_heads, 0), q, k.transpose(1, 2), alpha=head_dim**-0.5)
    # Softmax in the products' dtype: PyTorch's CPU kernel accumulates bfloat16 rows in
    # float32 and rounds the weights once, as a float32 softmax cast back would, without
    # the two casts of [B * H, S, S] forward and two backward.
    weights = dropout(torch.softmax(scores, dim=-1), dropout_p)
    return torch.bmm(weights, v).view(batch, num_heads, size, head_dim), index


def length_bucketed_attention(
    q: Tensor,
    query_index: Tensor,
    query_size: int,
    k: Tensor,
    v: Tensor,
    key_index: Tensor,
    key_valid: Tensor,
    num_heads: int,
    dropout_p: float = 0.0,
    zero_key: bool = False,
) -> Tensor:
    """Multi-head attention of packed rows within blocks, blocks grouped by length.

    The same attention as laying every block out at the longest block's size
    (:func:`block_attention`'s grid) and masking, but each group of blocks is laid out at
    its own longest size: blocks whose extent (last filled query or key slot + 1) falls
    in ``(2^(j-1), 2^j]`` form group ``j``. Attention costs ``B * S^2`` on one grid; here
    every block pays at most 4 times its own ``S_b^2``. With utterance tokens
    (MiniLM on IEMOCAP-6 training utterances: median 15, longest 109) one grid is mostly padding;
    a loop over the ``log2(S)`` groups (at most 8 below 256 slots) is not.

    Args:
        q: ``[N_q, d]`` projected query rows at ``query_index`` (``long [N_q]``) of the
            ``B x query_size`` grid.
        k, v: ``[N_k, d]`` projected key and value rows at ``key_index`` (``long [N_k]``)
            of the ``B x S`` grid of ``key_valid``.
        key_valid: ``bool [B, S]``, true where a key row sits (a query of block ``b``
            sees the keys of block ``b``).
        num_heads: ``H``; ``d`` must be divisible by it.
        dropout_p: Dropout on the attention weights.
        zero_key: Add a zero key and value to every block, never masked (PyTorch's
            ``add_zero_attn``): a query may attend to nothing.

    Returns:
        ``[N_q, d]`` outputs, heads concatenated (before any output projection). Queries
        of a block without keys (and no zero key) get zeros.
    """
    blocks, key_size = key_valid.shape
    d = q.shape[1]
    query_block = query_index.div(query_size, rounding_mode="floor")
    query_slot = query_index - query_block * query_size
    key_block = key_index.div(key_size, rounding_mode="floor")
    key_slot = key_index - key_block * key_size
    extent = torch.zeros(blocks, dtype=torch.long, device=q.device)
    extent = extent.scatter_reduce(0, query_block, query_slot + 1, "amax")
    extent = extent.scatter_reduce(0, key_block, key_slot + 1, "amax")
    group = torch.ceil(torch.log2(extent.clamp_min(1).double())).long()  # extent in (2^(g-1), 2^g]
    out = q.new_zeros(q.shape[0], d)
    for g in torch.unique(group[query_block]).tolist():  # groups that hold queries (at most log2 S + 1)
        members = group == g
        size = 1 << g
        rank = torch.cumsum(members.long(), 0) - 1  # a block's place among its group's blocks
        count = int(members.sum())
        rows_q = torch.nonzero(members[query_block], as_tuple=False).squeeze(1)
        rows_k = torch.nonzero(members[key_block], as_tuple=False).squeeze(1)
        q_at = rank[query_block[rows_q]] * size + query_slot[rows_q]
        k_at = rank[key_block[rows_k]] * size + key_slot[rows_k]
        qg, kg, vg = (
            _head_grid(rows.index_select(0, index_rows), at, count, size, num_heads)
            for rows, at, index_rows in ((q, q_at, rows_q), (k, k_at, rows_k), (v, k_at, rows_k))
        )
        allowed = key_valid[members][:, :size]
        if allowed.shape[1] < size:
            allowed = F.pad(allowed, (0, size - allowed.shape[1]), value=False)
        if zero_key:
            kg, vg = F.pad(kg, (0, 0, 0, 1)), F.pad(vg, (0, 0, 0, 1))
            allowed = F.pad(allowed, (0, 1), value=True)
        empty = ~allowed.any(dim=-1)
        # A block without keys would softmax over nothing (NaN): it sees its zero slots, output zeroed below.
        attended = F.scaled_dot_product_attention(
            qg, kg, vg, attn_mask=(allowed | empty[:, None])[:, None, None, :], dropout_p=dropout_p
        )
        if bool(empty.any()):
            attended = attended.masked_fill(empty[:, None, None, None], 0.0)
        out = out.index_copy(0, rows_q, gather_heads(attended, q_at))
    return out


__all__ = [
    "STEP_BUCKET",
    "block_attention",
    "gather_heads",
    "length_bucketed_attention",
    "rows_to_grid",
    "scatter_heads",
]
