"""Making CPU bfloat16 autocast (``training.precision=bf16-mixed``) pay off on dialogue batches.

Under autocast every matrix product runs in bfloat16. On CPU PyTorch hands bfloat16
products to oneDNN, which builds (JIT-compiles, into freshly mapped executable pages)
a kernel for every new problem shape and caches it by shape. Dialogue batches change
shape every batch (``N`` utterances, ``T`` steps), so without care a CORECT epoch on
text-only IEMOCAP compiled hundreds of kernels and spent about as much time in that and
in the page faults it causes as the bfloat16 products saved. The tools:

- :func:`linear`: ``F.linear`` whose rows are padded to a multiple of
  :data:`ROW_BUCKET` under CPU autocast, so the few large products (a Transformer's
  projections and feed-forward, a Graph Transformer's projections, forward and
  backward) see a handful of shapes that stay cached; the padded rows are zeros and
  are sliced off, so values and gradients are those of ``F.linear``.
- attention (:func:`merc.models.layers.attention.block_attention`) pads its step count
  to a multiple of :data:`~merc.models.layers.attention.STEP_BUCKET` and uses explicit
  batched bfloat16 products and softmax (1.5x faster than float32 in
  ``bench/bench_cpu_kernels.py``).
- :func:`float32_region`: a float32 island for the small, ragged rest (PyG's RGCN,
  cross-modal blocks, BatchNorm, classifiers). They are a few percent of the FLOPs,
  faster in float32 on CPU, and closer to the float32 model.

None changes anything without autocast or on other devices (GPU kernels need no JIT).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

#: Rows of :func:`linear` are padded to a multiple of this under CPU autocast: few enough
#: shapes for oneDNN's kernel cache (1024 entries), at most 31 wasted rows per product.
ROW_BUCKET = 32


def cpu_autocast_active(x: Tensor) -> bool:
    """Whether ``x`` is on CPU and CPU autocast is enabled."""
    return x.device.type == "cpu" and torch.is_autocast_enabled("cpu")


def float32_region(x: Tensor) -> tuple[Tensor, contextlib.AbstractContextManager[object]]:
    """``(x, context)`` in which to compute with ``x`` in float32 under CPU autocast.

    Under an active CPU autocast: ``x`` cast to float32 and a context that disables
    autocast (so the products inside keep float32). Otherwise ``x`` unchanged and a
    no-op context.

    >>> x, ctx = float32_region(torch.ones(2, dtype=torch.bfloat16))
    >>> x.dtype
    torch.bfloat16
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
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
    """``x`` (2-D) with zero rows appended up to a multiple of :data:`ROW_BUCKET` under CPU
    autocast; ``x`` itself otherwise.

    For a stack of row-wise layers (a Transformer's projections, feed-forward,
    LayerNorm): pad once, run them all (:func:`linear` then pads nothing), slice the
    real rows off at the end; one copy and one gradient slice instead of one per product.

    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     tuple(pad_rows(torch.ones(40, 3)).shape)
    (64, 3)
    >>> tuple(pad_rows(torch.ones(40, 3)).shape)
    (40, 3)
    """
    pad = -x.shape[0] % ROW_BUCKET if x.dim() == 2 and cpu_autocast_active(x) else 0
    return F.pad(x, (0, 0, 0, pad)) if pad else x


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``; under CPU autocast a 2-D ``x`` is row-padded to :data:`ROW_BUCKET`.

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
