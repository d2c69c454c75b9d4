"""Cross-modal transformer: one modality's sequence attends to another's (MulT).

Tsai, Bai, Liang, Kolter, Morency, Salakhutdinov. "Multimodal Transformer for
Unaligned Multimodal Language Sequences." ACL 2019 (MulT). CORECT's Pairwise
Cross-modal Feature Interaction (P-CM, Nguyen et al., EMNLP 2023, Section 3.3,
eq. 11-13) stacks ``D`` such layers per ordered modality pair; Mi-CGA's cross-modal
attention and other fusion models reuse the same block.

Layer ``i`` (pre-LayerNorm, as the MulT/CORECT code; eq. 12 of CORECT writes the
residual from the normalised input, the code adds the un-normalised one, which keeps
the residual path an identity):

.. math::

    \\bar Z_i = \\mathrm{CM}(\\mathrm{LN}(Z_{i-1}), \\mathrm{LN}_s(X_s)) + Z_{i-1}, \\qquad
    Z_i = \\mathrm{FFN}(\\mathrm{LN}(\\bar Z_i)) + \\bar Z_i

with ``CM`` multi-head attention whose queries come from the target sequence ``Z`` and
keys/values from the *fixed* source sequence ``X_s`` (the same at every layer, eq. 12),
and ``FFN(x) = max(0, x W_1 + b_1) W_2 + b_2`` (eq. 13). A final LayerNorm closes the
stack. Without a source (``cross=False``) the block is an ordinary pre-LN self-attention
transformer (MulT's "memory" transformer over the concatenated cross-modal outputs).

Packed sequences (:meth:`CrossModalLayer.forward_packed`): a model whose sequences are
mostly padding (MiniLM tokens of IEMOCAP utterances: 16% of the first
``iemocap6-synthav@ta`` training batch's padded grid, ``bench/bench_fast_path.py``) runs the projections, LayerNorms and the FFN on the real rows only, and
lays out queries, keys and values as padded per-head grids for the attention products
alone (:func:`packed_multihead_attention`). The same parameters, the same outputs at the
real positions (tested against :meth:`CrossModalLayer.forward`); blocks are grouped by
length so that attention pays for each block's own size
(:func:`merc.models.layers.attention.length_bucketed_attention`); :mod:`merc.models.mgcma`
takes it with the fast kernels on (:mod:`merc.models.layers.fast`).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from merc.errors import ConfigError
from merc.models.layers.attention import length_bucketed_attention
from merc.models.layers.precision import linear


def packed_multihead_attention(
    attn: nn.MultiheadAttention,
    query: Tensor,
    query_index: Tensor,
    query_size: int,
    memory: Tensor,
    memory_index: Tensor,
    memory_valid: Tensor,
    training: bool,
) -> Tensor:
    """``attn(query, memory, memory, key_padding_mask=~memory_valid)`` on packed rows, with ``attn``'s parameters.

    Each block (an utterance, a dialogue) attends within itself: queries of block ``b``
    see the real keys of block ``b``, plus the zero key and value of
    ``add_zero_attn=True``. A block whose every key is padding (and no zero key) gets a
    zero output, as :meth:`CrossModalLayer.forward`. Attention-weight dropout is
    ``attn.dropout`` in training (PyTorch's ``scaled_dot_product_attention``).

    Args:
        attn: A ``batch_first`` :class:`torch.nn.MultiheadAttention` without ``bias_k``/``bias_v``.
        query: ``[N_q, d]`` query rows; query_index: ``long [N_q]`` their positions in the
            ``B x query_size`` grid.
        memory: ``[N_k, d_s]`` key/value rows; memory_index: ``long [N_k]`` their positions in
            the ``B x S`` grid of memory_valid.
        memory_valid: ``bool [B, S]``, true where a memory row sits.
        training: Apply the attention-weight dropout.

    Shapes:
        - output: ``[N_q, d]`` (after ``attn``'s output projection)
    """
    if attn.bias_k is not None or attn.bias_v is not None:
        raise ConfigError("packed_multihead_attention: add_bias_kv is not supported")
    heads = attn.num_heads
    if attn._qkv_same_embed_dim:
        w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    else:
        w_q, w_k, w_v = attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)
    p = attn.dropout if training else 0.0
    attended = length_bucketed_attention(
        linear(query, w_q, b_q),
        query_index,
        query_size,
        linear(memory, w_k, b_k),
        linear(memory, w_v, b_v),
        memory_index,
        memory_valid,
        heads,
        p,
        zero_key=attn.add_zero_attn,
    )
    return linear(attended, attn.out_proj.weight, attn.out_proj.bias)


class CrossModalLayer(nn.Module):
    """One pre-LN (cross-)attention + feed-forward layer, see the module docstring.

    Args:
        dim: Target (query) feature dim ``d``.
        num_heads: Attention heads; must divide ``dim``.
        source_dim: Source (key/value) dim ``d_s``; ``None`` = ``dim``.
        cross: Attend to a separate source sequence (own LayerNorm for it) or to the
            target itself.
        ffn_dim: Hidden units of the FFN (MulT: ``4 * dim``).
        dropout: Dropout on the attention and FFN outputs before each residual sum.
        attn_dropout: Dropout on the attention weights.

    Shapes:
        - target: ``[B, T, d]``; source: ``[B, S, d_s]``; key_padding_mask: ``bool [B, S]``
          (true = padding)
        - output: ``[B, T, d]``
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        source_dim: int | None = None,
        cross: bool = True,
        ffn_dim: int | None = None,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"attention dim {dim} is not divisible by {num_heads} heads")
        source_dim = dim if source_dim is None else source_dim
        if not cross and source_dim != dim:
            raise ConfigError("a self-attention layer (cross=False) needs source_dim == dim")
        self.cross = cross
        self.norm_query = nn.LayerNorm(dim)
        # Only a cross layer has a separate source to normalise (a module that never
        # runs would be a parameter without gradient).
        self.norm_source = nn.LayerNorm(source_dim) if cross else None
        self.attn = nn.MultiheadAttention(
            dim, num_heads, dropout=attn_dropout, kdim=source_dim, vdim=source_dim, batch_first=True
        )
        hidden = 4 * dim if ffn_dim is None else ffn_dim
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, target: Tensor, source: Tensor | None = None, key_padding_mask: Tensor | None = None) -> Tensor:
        query = self.norm_query(target)
        if self.cross:
            if source is None or self.norm_source is None:
                raise ValueError("a cross-modal layer needs a source sequence")
            memory = self.norm_source(source)
        else:
            memory = query
        empty = None
        if key_padding_mask is not None:
            # A row with every key masked would give softmax over nothing (NaN): let it
            # attend to its (padded) keys and zero its attention output instead.
            empty = key_padding_mask.all(dim=-1)
            key_padding_mask = key_padding_mask & ~empty[:, None]
        attended, _ = self.attn(query, memory, memory, key_padding_mask=key_padding_mask, need_weights=False)
        if empty is not None:
            attended = attended.masked_fill(empty[:, None, None], 0.0)
        x = target + self.drop(attended)
        return x + self.drop(self.ffn(self.norm_ffn(x)))

    def forward_packed(
        self,
        target: Tensor,
        target_index: Tensor,
        target_valid: Tensor,
        source: Tensor | None = None,
        source_index: Tensor | None = None,
        source_valid: Tensor | None = None,
    ) -> Tensor:
        """:meth:`forward` on packed rows: the same parameters and outputs at the real positions.

        Args:
            target: ``[N_t, d]`` the real target rows; target_index: ``long [N_t]`` their
                positions in the ``B x T`` grid of target_valid (``bool [B, T]``).
            source, source_index, source_valid: The same for the source (cross layers).

        Shapes:
            - output: ``[N_t, d]``
        """
        query = self.norm_query(target)
        if self.cross:
            if source is None or source_index is None or source_valid is None or self.norm_source is None:
                raise ValueError("a cross-modal layer needs a source sequence (rows, index, valid)")
            memory, memory_index, memory_valid = self.norm_source(source), source_index, source_valid
        else:
            memory, memory_index, memory_valid = query, target_index, target_valid
        attended = packed_multihead_attention(
            self.attn, query, target_index, target_valid.shape[1], memory, memory_index, memory_valid, self.training
        )
        # Position-wise from here on: the same modules as forward, on the real rows only.
        x = target + self.drop(attended)
        return x + self.drop(self.ffn(self.norm_ffn(x)))


class CrossModalTransformer(nn.Module):
    """``num_layers`` :class:`CrossModalLayer` s: a target sequence enriched by a source.

    MulT's ``CM^{s -> t}`` (CORECT eq. 12): every layer attends to the same source
    sequence; inputs are scaled by ``sqrt(dim)`` first as in MulT's code
    (``scale_inputs``), and a final LayerNorm closes the stack.

    Args:
        dim: Target dim ``d``.
        num_heads: Attention heads (CORECT P-CM: 2).
        num_layers: Layers ``D`` (CORECT: 2 cross-modal, 3 self-attention).
        source_dim: Source dim (``None`` = ``dim``).
        cross: ``False`` makes it a self-attention transformer (call without source).
        ffn_dim: FFN hidden units (default ``4 * dim``).
        dropout: Residual/FFN dropout (CORECT's P-CM: 0).
        attn_dropout: Attention-weight dropout (CORECT's P-CM: 0).
        scale_inputs: Multiply target and source by ``sqrt`` of their dims (MulT).

    Shapes:
        - target: ``[B, T, d]``; source: ``[B, S, d_s]``
        - key_padding_mask: ``bool [B, S]`` true at padded source (self: target) steps
        - query_padding_mask: ``bool [B, T]`` true at padded target steps, zeroed in the output
        - output: ``[B, T, d]``; position ``(b, t)`` depends only on row ``b``'s
          target step ``t`` and its unmasked source steps.

    >>> import torch
    >>> block = CrossModalTransformer(8, num_heads=2, num_layers=2)
    >>> block(torch.randn(3, 5, 8), torch.randn(3, 4, 8)).shape
    torch.Size([3, 5, 8])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_layers: int,
        source_dim: int | None = None,
        cross: bool = True,
        ffn_dim: int | None = None,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        scale_inputs: bool = True,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"a cross-modal transformer needs at least one layer, got {num_layers}")
        source_dim = dim if source_dim is None else source_dim
        self.cross = cross
        self.target_scale = math.sqrt(dim) if scale_inputs else 1.0
        self.source_scale = math.sqrt(source_dim) if scale_inputs else 1.0
        self.layers = nn.ModuleList(
            CrossModalLayer(dim, num_heads, source_dim, cross, ffn_dim, dropout, attn_dropout)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        target: Tensor,
        source: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        query_padding_mask: Tensor | None = None,
    ) -> Tensor:
        if self.cross and source is None:
            raise ValueError("this CrossModalTransformer was built with cross=True: pass a source sequence")
        if not self.cross and source is not None:
            raise ValueError("this CrossModalTransformer was built with cross=False (self-attention): pass no source")
        x = target * self.target_scale
        src = source * self.source_scale if source is not None else None
        for layer in self.layers:
            x = layer(x, src, key_padding_mask)
        x = self.norm(x)
        if query_padding_mask is not None:
            x = x.masked_fill(query_padding_mask[..., None], 0.0)
        return x


__all__ = ["CrossModalLayer", "CrossModalTransformer", "packed_multihead_attention"]
