"""Row-bucketed bfloat16 products and float32 islands under CPU autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from merc.models.layers.precision import ROW_BUCKET, cpu_autocast_active, float32_region, linear


@pytest.mark.parametrize("rows", [1, ROW_BUCKET - 1, ROW_BUCKET, 2 * ROW_BUCKET + 5])
def test_padded_linear_equals_f_linear_under_autocast(rows: int) -> None:
    torch.manual_seed(rows)
    x = torch.randn(rows, 24, requires_grad=True)
    w = torch.randn(16, 24, requires_grad=True)
    b = torch.randn(16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear(x, w, b)
        theirs = F.linear(x, w, b)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == torch.bfloat16
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    g = torch.randn(rows, 16)
    grads = torch.autograd.grad(ours.float(), (x, w, b), g)
    expected = torch.autograd.grad(theirs.float(), (x, w, b), g)
    for got, want in zip(grads, expected):
        # Same products up to bfloat16 rounding of differently blocked sums.
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_without_autocast_nothing_changes() -> None:
    x, w = torch.randn(5, 3), torch.randn(2, 3)
    assert not cpu_autocast_active(x)
    torch.testing.assert_close(linear(x, w), F.linear(x, w), rtol=0, atol=0)
    same, ctx = float32_region(x.bfloat16())
    with ctx:
        assert same.dtype == torch.bfloat16 and not torch.is_autocast_enabled("cpu")


def test_float32_region_turns_cpu_autocast_off_inside() -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x, ctx = float32_region(torch.randn(4, 4).bfloat16())
        with ctx:
            assert x.dtype == torch.float32 and (x @ x).dtype == torch.float32
        assert torch.is_autocast_enabled("cpu")  # restored after the island


@pytest.mark.parametrize("bias", [True, False])
def test_padded_linear_gradients_without_input_grad_or_bias(bias: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(ROW_BUCKET + 3, 8)  # a constant input (features): no input gradient
    w = torch.randn(6, 8, requires_grad=True)
    b = torch.randn(6, requires_grad=True) if bias else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = linear(x, w, b)
    y.float().sum().backward()
    assert w.grad is not None and w.grad.dtype == torch.float32 and w.grad.is_contiguous()
    # d(sum)/dW = column sums of x, rounded to bfloat16 on the way.
    torch.testing.assert_close(w.grad, x.bfloat16().float().sum(0).expand(6, 8), rtol=2e-2, atol=5e-2)
    if b is not None:
        torch.testing.assert_close(b.grad, torch.full((6,), float(x.shape[0])))
