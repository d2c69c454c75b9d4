"""Making CPU bfloat16 autocast (``training.precision=bf16-mixed``) pay off on dialogue batches.

A fast path behind :mod:`merc.models.layers.fast` (``MERC_FAST_KERNELS=0`` or
``use_fast_kernels(False)``: :func:`cpu_autocast_active` is false, so no row padding,
``F.linear`` and no float32 islands; autocast then applies as PyTorch defines it).

Under autocast every matrix product runs in bfloat16. On CPU PyTorch hands bfloat16
products to oneDNN, which builds (JIT-compiles, into freshly mapped executable pages)
a kernel for every new problem shape and caches it by shape. Dialogue batches change
shape every batch (``N`` utterances, ``T`` steps), so without care a CORECT epoch on
text-only IEMOCAP compiled hundreds of kernels and lost in that, and in the page faults
it causes, much of what the bfloat16 products saved (``bench/bench_corect.py`` times
CORECT in float32 and bf16-mixed, results in ``bench/results/``). The tools:

- :func:`linear`: ``F.linear`` whose rows are padded to a multiple of
  :data:`ROW_BUCKET` under CPU autocast, so the few large products (a Transformer's
  projections and feed-forward, a Graph Transformer's projections, forward and
  backward) see a handful of shapes that stay cached; the padded rows are zeros and
  are sliced off, so values and gradients are those of ``F.linear``.
- attention (:func:`merc.models.layers.attention.block_attention`) pads its step count
  to a multiple of :data:`~merc.models.layers.attention.STEP_BUCKET` and uses explicit
  batched bfloat16 products and softmax (timed against float32 in
  ``bench/bench_cpu_kernels.py``, results in ``bench/results/``).
- :func:`float32_region`: a float32 island for the small, ragged rest (PyG's RGCN,
  cross-modal blocks, BatchNorm, classifiers). They are a few percent of the FLOPs,
  gain nothing from bfloat16 at ragged shapes on CPU (each new shape is a new
  compiled kernel), and stay closer to the float32 model.

None changes anything without autocast or on other devices (GPU kernels need no JIT).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from merc.models.layers.fast import fast_kernels_enabled

#: Rows of :func:`linear` are padded to a multiple of this under CPU autocast: few enough
#: shapes for oneDNN's kernel cache (1024 entries), at most 31 wasted rows per product.
ROW_BUCKET = 32


def cpu_autocast_active(x: Tensor) -> bool:
    """Whether merc's CPU-autocast measures apply to ``x``: ``x`` is on CPU, CPU autocast is
    enabled, and the fast kernels are on (:mod:`merc.models.layers.fast`; off, this is
    always false and every caller takes its plain path)."""
    return fast_kernels_enabled() and x.device.type == "cpu" and torch.is_autocast_enabled("cpu")


def float32_region(x: Tensor) -> tuple[Tensor, contextlib.AbstractContextManager[object]]:
    """``(x, context)`` in which to compute with ``x`` in float32 under CPU autocast.

    When :func:`cpu_autocast_active`: ``x`` cast to float32 and a context that disables
    autocast (so the products inside keep float32). Otherwise ``x`` unchanged and a
    no-op context.

    >>> from merc.models.layers.fast import use_fast_kernels
    >>> x, ctx = float32_region(torch.ones(2, dtype=torch.bfloat16))
    >>> x.dtype
    torch.bfloat16
    >>> with use_fast_kernels(True), torch.autocast("cpu", dtype=torch.bfloat16):
    ...     x, ctx = float32_region(torch.ones(2, dtype=torch.bfloat16))
    ...     with ctx:
    ...         y = x @ x
    >>> x.dtype, y.dtype
    (torch.float32, torch.float32)
    """
    if cpu_autocast_active(x):
        return x.float(), torch.autocast("cpu", enabled=False)
    return x, contextlib.nullcontext()


def pad_rows(x: Tensor) -> Tensor:
    """``x`` (2-D) with zero rows appended up to a multiple of :data:`ROW_BUCKET` when
    :func:`cpu_autocast_active`; ``x`` itself otherwise.

    For a stack of row-wise layers (a Transformer's projections, feed-forward,
    LayerNorm): pad once, run them all (:func:`linear` then pads nothing), slice the
    real rows off at the end; one copy and one gradient slice instead of one per product.

    >>> from merc.models.layers.fast import use_fast_kernels
    >>> with use_fast_kernels(True), torch.autocast("cpu", dtype=torch.bfloat16):
    ...     tuple(pad_rows(torch.ones(40, 3)).shape)
    (64, 3)
    >>> tuple(pad_rows(torch.ones(40, 3)).shape)
    (40, 3)
    """
    pad = -x.shape[0] % ROW_BUCKET if x.dim() == 2 and cpu_autocast_active(x) else 0
    return F.pad(x, (0, 0, 0, pad)) if pad else x


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``; when :func:`cpu_autocast_active`, a 2-D ``x`` is row-padded to :data:`ROW_BUCKET`.

    Same values and gradients (see the module docstring); the padding costs one copy
    of ``x`` (made in the autocast dtype, which autocast would copy ``x`` to anyway)
    and of the output gradient.

    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     y = linear(torch.ones(5, 3), torch.ones(2, 3))
    >>> tuple(y.shape), y.dtype
    ((5, 2), torch.bfloat16)
    """
    rows = x.shape[0]
    if x.dim() == 2 and rows % ROW_BUCKET and cpu_autocast_active(x):
        return F.linear(pad_rows(x.to(torch.get_autocast_dtype("cpu"))), weight, bias)[:rows]
    return F.linear(x, weight, bias)


__all__ = ["ROW_BUCKET", "cpu_autocast_active", "float32_region", "linear", "pad_rows"]
