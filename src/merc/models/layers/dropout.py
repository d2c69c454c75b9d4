"""Dropout whose mask comes from random bits: the same distribution as ``F.dropout``, cheaper on CPU.

A fast path behind :mod:`merc.models.layers.fast` (``MERC_FAST_KERNELS=0`` or
``use_fast_kernels(False)``: plain ``F.dropout`` / ``nn.Dropout``).

PyTorch draws a CPU dropout mask with ``Tensor.bernoulli_(1 - p)``, which on non-Intel
CPUs is a serial loop drawing one double-precision uniform per element: CORECT's text
Transformer spent more time drawing dropout masks than in its feed-forward matrix
products. (``bench/bench_cpu_kernels.py``, results in ``bench/results/``, times the
mask kernels chosen here; ``F.dropout`` against :func:`dropout` has no row there yet.)

Here the keep probability ``q = 1 - p`` is written as ``a / 2**k``; each mask element
compares one ``k``-bit field of uniformly random integers with ``a``, so a single 32-bit
draw yields ``32 / k`` elements. For ``p = 0.5`` (``k = 1``) every bit is one
Bernoulli(0.5) draw: exactly the distribution of ``F.dropout``. When ``q`` is not a
multiple of ``1/256`` it uses one 32-bit field per element, i.e. ``q`` rounded to a
multiple of ``2**-32`` (an error below ``1.2e-10``, far below float32's resolution
of the kept values). Kept values are scaled by ``1 / q`` as in ``F.dropout``.

The bits come from ``torch.randint`` on the default generator, so results are
reproducible under ``torch.manual_seed``; the random stream differs from
``F.dropout``'s, the distribution does not. On other devices :func:`dropout` and
:func:`relu_dropout` call ``F.dropout`` (fused and fast on GPUs).
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from merc.models.layers.fast import fast_kernels_enabled

_INT32_SPAN = 2**32


def _bit_field(keep: float) -> tuple[int, int]:
    """``(k, a)`` with ``keep == a / 2**k`` for the smallest ``k`` in 1, 2, 4, 8; else ``(32, round(keep * 2**32))``.

    >>> _bit_field(0.5), _bit_field(0.75), _bit_field(0.9)[0]
    ((1, 1), (2, 3), 32)
    """
    frac = Fraction(keep)
    for k in (1, 2, 4, 8):
        if (frac * 2**k).denominator == 1:
            return k, int(frac * 2**k)
    return 32, round(keep * _INT32_SPAN)


def _bit_fields(n: int, k: int, device: torch.device) -> Tensor:
    """``uint8 [>= n]`` independent uniform ``k``-bit integers (``k`` in 1, 2, 4, 8)."""
    per_byte = 8 // k
    n_bytes = -(-n // per_byte)
    # An int32 draw is 32 uniform bits (torch.randint reduces one 64-bit draw modulo 2**32).
    words = torch.randint(-(2**31), 2**31, (-(-n_bytes // 4),), dtype=torch.int32, device=device)
    octets = words.view(torch.uint8)[:n_bytes]
    # Field i of every byte in row i of a [per_byte, n_bytes] result: one broadcast shift
    # whose inner dimension runs over all bytes (vectorised). The transposed broadcast
    # [n_bytes, 8] has an inner dimension of 8, which CPU kernels vectorise poorly, and
    # one shift per row is 8 operations instead of one; bench/bench_cpu_kernels.py times
    # all three (results in bench/results/).
    shifts = _field_shifts(k, octets.device)
    return torch.bitwise_right_shift(octets, shifts).bitwise_and_(2**k - 1).view(-1)


_SHIFTS: dict[tuple[int, torch.device], Tensor] = {}


def _field_shifts(k: int, device: torch.device) -> Tensor:
    """``uint8 [8 / k, 1]`` bit offsets ``0, k, 2k, ...`` of the ``k``-bit fields of a byte (cached per device)."""
    key = (k, device)
    if key not in _SHIFTS:
        _SHIFTS[key] = torch.arange(0, 8, k, dtype=torch.uint8, device=device)[:, None]
    return _SHIFTS[key]


def _keep_bytes(shape: tuple[int, ...] | torch.Size, keep: float, device: torch.device) -> Tensor:
    """``uint8`` 0/1 tensor of ``shape``, each element 1 with probability ``keep`` (in (0, 1)).

    uint8 rather than bool because PyTorch's CPU kernels that read bool (``bool * float``,
    ``bool.to(bfloat16)``) are slower than the same kernels reading uint8
    (``bench/bench_cpu_kernels.py``, results in ``bench/results/``).
    """
    n = math.prod(shape)
    k, threshold = _bit_field(keep)
    if k == 32:
        # One uniform 32-bit integer per element, compared in the signed int32 range.
        words = torch.randint(-(2**31), 2**31, (n,), dtype=torch.int32, device=device)
        return (words < threshold - 2**31).view(torch.uint8).view(tuple(shape))
    fields = _bit_fields(n, k, device)[:n]
    # k = 1, a = 1: a set bit is as likely as a clear one; the 0/1 bytes are the mask already.
    mask = fields if k == 1 else (fields < threshold).view(torch.uint8)
    return mask.view(tuple(shape))


def keep_multiplier(like: Tensor, p: float) -> Tensor:
    """Dropout's multiplier for ``like`` (same shape and dtype): ``1 / (1 - p)`` where kept, ``0`` where dropped."""
    keep = 1.0 - p
    if keep == 0.0 or like.numel() == 0:
        return torch.zeros_like(like)
    if keep == 1.0:
        return torch.ones_like(like)
    return _keep_bytes(like.shape, keep, like.device).to(like.dtype).mul_(1.0 / keep)


class _ScaledReluMask(torch.autograd.Function):
    """``relu(x) * mult`` for a dropout multiplier ``mult`` (values 0 or ``scale``), saving only the output.

    The output is non-zero exactly where ``x > 0`` and the mask kept the element
    (``scale * x`` of a positive float is positive), so the gradient, ``scale`` there and 0
    elsewhere (0 at ``x == 0`` as PyTorch's ReLU), is one ``threshold_backward`` on the
    saved output and one scaling: no mask or comparison is kept for the backward pass.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, mult: Tensor, scale: float) -> Tensor:
        y = torch.relu(x).mul_(mult)
        ctx.save_for_backward(y)
        ctx.scale = scale  # type: ignore[attr-defined]
        return y

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        grad: Tensor,
    ) -> tuple[Tensor, None, None]:
        (y,) = ctx.saved_tensors  # type: ignore[attr-defined]
        grad_x = torch.ops.aten.threshold_backward(grad, y, 0).mul_(ctx.scale)  # type: ignore[attr-defined]
        return grad_x, None, None


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout(x, p, training)``; on CPU with the fast kernels on, with a bit-sampled mask
    (see the module docstring)."""
    if not fast_kernels_enabled() or x.device.type != "cpu":
        return F.dropout(x, p, training)  # the plain path (on GPUs fused and fast already)
    if not training or p == 0.0:
        return x
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if p == 1.0:
        return x * 0.0
    return x * keep_multiplier(x, p)


def relu_dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout(F.relu(x), p, training)``; on CPU with the fast kernels on, one ReLU and one
    in-place product forward, one ``threshold_backward`` and one scaling backward
    (``_ScaledReluMask``), with a bit-sampled mask."""
    if not fast_kernels_enabled() or x.device.type != "cpu":
        return F.dropout(F.relu(x), p, training)  # the plain path
    if not training or p == 0.0:
        return F.relu(x)
    if p == 1.0:
        return x * 0.0
    keep = 1.0 - p
    return _ScaledReluMask.apply(x, keep_multiplier(x.detach(), p), 1.0 / keep)


class FastDropout(nn.Dropout):
    """Drop-in :class:`torch.nn.Dropout` using :func:`dropout` (same ``p``, same state dict);
    exactly ``nn.Dropout`` with the fast kernels off."""

    def forward(self, input: Tensor) -> Tensor:
        if self.inplace or not fast_kernels_enabled():
            return super().forward(input)
        return dropout(input, self.p, self.training)


__all__ = ["FastDropout", "dropout", "keep_multiplier", "relu_dropout"]
