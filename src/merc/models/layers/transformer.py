"""A Transformer encoder layer that works on packed (flat) sequences.

:class:`PackedTransformerEncoderLayer` *is* a :class:`torch.nn.TransformerEncoderLayer`
(same parameters, names, initialisation and state dict; its ``forward`` is PyTorch's)
with one more method, :meth:`~PackedTransformerEncoderLayer.forward_packed`, computing
the same function on the ``N`` real positions of a padded ``[B, T, d]`` batch given
as a flat ``[N, d]`` tensor:

- every per-position part (QKV and output projections, feed-forward, residuals,
  LayerNorms, dropouts) runs on the ``N`` real rows only, never on padding; on
  IEMOCAP batches of 10 dialogues about a third of ``B * T`` is padding, and the
  feed-forward (``d -> 2048 -> d``) is most of the layer's cost;
- only attention itself runs on the padded ``[B, heads, T, T]`` grid, with padded
  keys masked out (PyTorch's ``src_key_padding_mask``), by
  :func:`merc.models.layers.attention.block_attention` (which drops attention weights
  with :func:`merc.models.layers.dropout.dropout`);
- dropouts draw their masks from random bits (:mod:`merc.models.layers.dropout`): same
  distribution, cheaper on CPU than ``Tensor.bernoulli_``.

Outputs at the real positions equal PyTorch's ``layer(x, src_key_padding_mask=padding)``
up to float rounding (``tests/models/layers/test_transformer.py``); in training mode
the dropout masks are drawn from another random stream.

A fast path behind :mod:`merc.models.layers.fast` (``MERC_FAST_KERNELS=0`` or
``use_fast_kernels(False)``): off, ``forward_packed`` scatters the rows into the padded
``[B, T, d]`` batch, runs PyTorch's own ``forward`` on it and reads the real rows back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from merc.errors import ConfigError
from merc.models.layers.attention import block_attention
from merc.models.layers.dropout import dropout, relu_dropout
from merc.models.layers.fast import fast_kernels_enabled
from merc.models.layers.precision import linear


def packed_self_attention(
    qkv: Tensor,
    flat_index: Tensor,
    padding: Tensor,
    num_heads: int,
    dropout_p: float = 0.0,
) -> Tensor:
    """Multi-head scaled dot-product self-attention of packed sequences.

    Args:
        qkv: ``[R, 3 * d]`` projected queries, keys and values of the ``N`` real positions
            and ``R - N`` padding rows (PyTorch's packed ``in_proj`` layout: ``[q | k | v]``,
            heads contiguous in each).
        flat_index: ``long [N]`` positions of those rows in the ``B * T`` grid.
        padding: ``bool [B, T]``, true at padding (masked as keys).
        num_heads: Heads ``H``; ``d`` must be divisible by it.
        dropout_p: Dropout on the attention weights (0 in evaluation).

    Returns:
        ``[R, d]`` attention outputs (heads concatenated), before the output projection.
    """
    # Empty grid slots are zeros: finite keys/values (masked anyway), queries whose outputs are dropped.
    return block_attention(qkv, flat_index, ~padding[:, None, :], num_heads, dropout_p)


class PackedTransformerEncoderLayer(nn.TransformerEncoderLayer):
    """:class:`torch.nn.TransformerEncoderLayer` plus :meth:`forward_packed` (see the module docstring).

    Built with PyTorch's arguments (``d_model``, ``nhead``, ``dim_feedforward``,
    ``dropout``, ``activation``, ``norm_first`` ...); post-norm and ReLU by default, as
    PyTorch. ``forward`` is PyTorch's own.

    Shapes (``forward_packed``):
        - x: ``[R, d]``: the ``N`` real positions in ``flat_index`` order, then
          ``R - N >= 0`` padding rows (:func:`merc.models.layers.precision.pad_rows`),
          carried along but never attended to
        - flat_index: ``long [N]`` positions in the ``B * T`` grid, row-major
          (:attr:`merc.data.batching.Batch.flat_index`)
        - padding: ``bool [B, T]`` (true = padding)
        - output: ``[R, d]``
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if not self.self_attn._qkv_same_embed_dim:
            raise ConfigError("PackedTransformerEncoderLayer needs equal query/key/value dims")

    def _attention_block(self, x: Tensor, flat_index: Tensor, padding: Tensor) -> Tensor:
        attn = self.self_attn
        qkv = linear(x, attn.in_proj_weight, attn.in_proj_bias)
        p = attn.dropout if self.training else 0.0
        out = packed_self_attention(qkv, flat_index, padding, attn.num_heads, p)
        out = linear(out, attn.out_proj.weight, attn.out_proj.bias)
        return dropout(out, self.dropout1.p, self.training)

    def _feed_forward_block(self, x: Tensor) -> Tensor:
        h = linear(x, self.linear1.weight, self.linear1.bias)
        if self.activation is F.relu or isinstance(self.activation, nn.ReLU):
            h = relu_dropout(h, self.dropout.p, self.training)
        else:
            h = dropout(self.activation(h), self.dropout.p, self.training)
        return dropout(linear(h, self.linear2.weight, self.linear2.bias), self.dropout2.p, self.training)

    def forward_packed(self, x: Tensor, flat_index: Tensor, padding: Tensor) -> Tensor:
        """The layer on packed sequences; ``forward(x_padded, src_key_padding_mask=padding)`` at the real rows."""
        if not fast_kernels_enabled():
            return self._forward_padded(x, flat_index, padding)
        if self.norm_first:
            x = x + self._attention_block(self.norm1(x), flat_index, padding)
            return x + self._feed_forward_block(self.norm2(x))
        x = self.norm1(x + self._attention_block(x, flat_index, padding))
        return self.norm2(x + self._feed_forward_block(x))

    def _forward_padded(self, x: Tensor, flat_index: Tensor, padding: Tensor) -> Tensor:
        """The plain path: PyTorch's ``forward`` on the padded batch, read back at the real rows
        (row padding past them is returned unchanged)."""
        batch, steps = padding.shape
        rows = flat_index.shape[0]
        grid = x.new_zeros(batch * steps, x.shape[1]).index_copy(0, flat_index, x[:rows])
        grid = grid.view(batch, steps, -1)
        if not self.self_attn.batch_first:
            grid = grid.transpose(0, 1)
        out = self.forward(grid, src_key_padding_mask=padding)
        if not self.self_attn.batch_first:
            out = out.transpose(0, 1)
        real = out.reshape(batch * steps, -1).index_select(0, flat_index)
        return torch.cat([real, x[rows:]]) if x.shape[0] > rows else real


__all__ = ["PackedTransformerEncoderLayer", "packed_self_attention"]
