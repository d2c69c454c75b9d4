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
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from merc.errors import ConfigError


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


__all__ = ["CrossModalLayer", "CrossModalTransformer"]
