"""The one off switch for merc's CPU / bfloat16 fast paths in :mod:`merc.models.layers`.

Several layers compute a textbook PyTorch / PyG operation in a less obvious way that
runs faster on CPU (the machines merc is developed and benchmarked on). Each fast path
computes the same function as its plain counterpart (up to float rounding; dropout:
the same distribution from another random stream), and every one of them sits behind
this switch, in the style of timm's ``use_fused_attn``:

- environment variable ``MERC_FAST_KERNELS``, read once at import: unset, ``1``,
  ``true``, ``yes`` or ``on`` (the default) enables the fast paths; ``0``, ``false``,
  ``no`` or ``off`` disables them; anything else is an error;
- :func:`fast_kernels_enabled` says which paths the layers take now;
- :func:`use_fast_kernels` sets it, as a plain call or as a context manager that
  restores the previous setting (tests, benchmarks, debugging).

Switched off, every layer takes its plain PyTorch path, the one to read first and to
compare against when a fast path is in doubt. The switch is read at every call (a
forward pass records which path it took; its backward follows it) and changes no
parameter, buffer or state dict: checkpoints work under either setting. What each
fast path does and why it exists (timings: ``bench/bench_cpu_kernels.py`` for single
kernels, ``bench/bench_corect_ops.py`` and ``bench/bench_corect.py`` for CORECT's
epoch; their results are in ``bench/results/``):

- :mod:`~merc.models.layers.dropout` (``dropout``, ``relu_dropout``, ``FastDropout``):
  the dropout mask is cut out of random integer bits, several mask elements per 32-bit
  draw, because PyTorch's CPU ``bernoulli_`` draws one double per element serially and
  cost CORECT's text Transformer more than its feed-forward products. Off:
  ``F.dropout`` / ``nn.Dropout``.
- :mod:`~merc.models.layers.attention` (``block_attention``): with attention dropout
  or under CPU autocast, an explicit ``softmax(q k^T / sqrt(d) + mask) v`` in batched
  products, in bfloat16 with the slot count padded to a bucket so oneDNN reuses its
  compiled kernels. Off: ``F.scaled_dot_product_attention`` (with its own dropout).
- :mod:`~merc.models.layers.precision` (``cpu_autocast_active``, ``pad_rows``,
  ``linear``, ``float32_region``): under CPU autocast, rows of the large products are
  padded to a bucket (again for oneDNN's kernel cache), and the small ragged parts run
  in float32 islands. Off: ``cpu_autocast_active`` is false, so no padding,
  ``F.linear`` and no islands (autocast applies as PyTorch defines it).
- :mod:`~merc.models.layers.graph_attention` (``supports_block_attention``,
  ``block_transformer_conv``): PyG's ``TransformerConv`` as masked dense attention per
  dialogue instead of per-edge gathers and scatters. Off: ``supports_block_attention``
  is false and ``block_transformer_conv`` calls ``TransformerConv.forward``.
- :mod:`~merc.models.layers.relational_conv` (``supports_fused_rgcn``,
  ``relational_mean_conv``): PyG's ``RGCNConv`` for all relations in one gather, one
  scatter and one product instead of a round of operations per relation. Off:
  ``supports_fused_rgcn`` is false and ``relational_mean_conv`` calls
  ``RGCNConv.forward``.
  ``grouped_relational_conv`` (DialogueGCN's basis-decomposed, summed, bipartite
  ``RGCNConv``): messages summed per (relation, target) bucket and multiplied per
  relation by one ``weight.unbind(0)``, instead of PyG's ``weight[r]`` per relation,
  whose backward zero-fills a whole-weight gradient each time (``R^2`` cost: 162
  relations on MELD). Off: it calls ``RGCNConv.forward``.
- :mod:`~merc.models.layers.transformer` (``PackedTransformerEncoderLayer.forward_packed``):
  a Transformer layer whose per-position parts run on the real (packed) rows only, not
  on padding. Off: PyTorch's own ``TransformerEncoderLayer.forward`` on the padded
  batch, read back at the real rows.
- :mod:`~merc.models.layers.fused_rnn` (``fused_rnn``, taken by ``ContextualRNN`` when
  training in float32 on CPU): the GRU / LSTM as one ``autograd.Function`` per layer
  with a hand-written backward pass (one small product per step each way, the weight
  and input gradients as one product each after the loop, both directions in one
  batched loop), because PyTorch's CPU recurrence runs autograd nodes per step and
  gate. Off: ``nn.GRU`` / ``nn.LSTM`` on the packed sequence.

``tests/models/layers/test_fast_switch.py`` checks that both settings agree.
"""

from __future__ import annotations

import os
from types import TracebackType

#: The environment variable read at import.
ENV_VAR = "MERC_FAST_KERNELS"

_ON = frozenset({"", "1", "true", "yes", "on"})
_OFF = frozenset({"0", "false", "no", "off"})


def _parse(value: str | None) -> bool:
    """The setting an environment value asks for (``None``: unset, the default on).

    >>> _parse(None), _parse("0"), _parse(" False "), _parse("1")
    (True, False, False, True)
    """
    if value is None:
        return True
    word = value.strip().lower()
    if word in _ON:
        return True
    if word in _OFF:
        return False
    raise ValueError(f"{ENV_VAR}={value!r}: expected 1/true/yes/on or 0/false/no/off")


_enabled: bool = _parse(os.environ.get(ENV_VAR))


def fast_kernels_enabled() -> bool:
    """Whether the layers take their fast paths (see the module docstring)."""
    return _enabled


class use_fast_kernels:  # lower case: called like a function, as torch.set_grad_enabled
    """Turn the fast paths on or off now; as a context manager, restore the previous setting on exit.

    >>> before = fast_kernels_enabled()
    >>> with use_fast_kernels(False):
    ...     fast_kernels_enabled()
    False
    >>> fast_kernels_enabled() == before
    True
    """

    def __init__(self, enabled: bool) -> None:
        global _enabled
        self.previous = _enabled
        _enabled = bool(enabled)

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _enabled
        _enabled = self.previous


__all__ = ["ENV_VAR", "fast_kernels_enabled", "use_fast_kernels"]
