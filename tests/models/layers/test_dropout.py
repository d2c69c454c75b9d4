"""Bit-sampled dropout: distribution, scaling, gradients, reproducibility."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from merc.models.layers.dropout import FastDropout, _bit_field, dropout, keep_multiplier, relu_dropout


def _kept(shape: tuple[int, ...], keep: float) -> torch.Tensor:
    """``bool`` mask of the elements a dropout with keep probability ``keep`` keeps."""
    return keep_multiplier(torch.empty(shape), 1.0 - keep) != 0


@pytest.mark.parametrize("keep", [0.5, 0.75, 0.125, 0.9, 0.3, 1 / 3])
def test_mask_frequency(keep: float) -> None:
    torch.manual_seed(0)
    mask = _kept((400, 1000), keep)
    assert mask.shape == (400, 1000)
    # 4e5 draws: the standard error of the mean is below 8e-4.
    assert abs(mask.float().mean().item() - keep) < 4e-3


def test_mask_bits_are_uncorrelated_across_positions() -> None:
    torch.manual_seed(0)
    m = _kept((2**20,), 0.5).float() - 0.5
    for lag in (1, 2, 7, 8, 31, 32):
        assert abs((m[lag:] * m[:-lag]).mean().item()) * 4 < 0.01, lag


def test_bit_fields() -> None:
    assert _bit_field(0.5) == (1, 1)
    assert _bit_field(0.25) == (2, 1)
    assert _bit_field(3 / 16) == (4, 3)
    assert _bit_field(0.9)[0] == 32
    assert _kept((0, 4), 0.5).shape == (0, 4)
    for n in (7, 9, 33):  # not a multiple of the mask elements per byte or per draw
        assert _kept((n,), 0.5).shape == (n,) and _kept((n,), 0.75).shape == (n,)
    with pytest.raises(ValueError):
        dropout(torch.ones(2), 1.5)


@pytest.mark.parametrize("p", [0.5, 0.1])
def test_dropout_scales_kept_values_and_gradients(p: float) -> None:
    torch.manual_seed(0)
    x = (torch.rand(300, 200) + 0.5).requires_grad_()
    y = dropout(x, p)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    assert abs(kept.float().mean().item() - (1 - p)) < 0.01
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / (1 - p))


def test_reproducible_under_seed_and_identity_when_off() -> None:
    x = torch.randn(50, 40)
    torch.manual_seed(5)
    a = dropout(x, 0.5)
    torch.manual_seed(5)
    torch.testing.assert_close(dropout(x, 0.5), a)
    assert dropout(x, 0.5, training=False) is x and dropout(x, 0.0) is x
    assert (dropout(x, 1.0) == 0).all()


def test_relu_dropout_equals_relu_then_mask() -> None:
    torch.manual_seed(0)
    x = torch.randn(400, 300, requires_grad=True)
    y = relu_dropout(x, 0.5)
    active = y != 0
    assert not active[x <= 0].any()
    torch.testing.assert_close(y[active], 2 * x[active])
    # About half the positive entries survive.
    assert abs(active.sum().item() / (x > 0).sum().item() - 0.5) < 0.01
    y.sum().backward()
    torch.testing.assert_close(x.grad, 2 * active.float())
    torch.testing.assert_close(relu_dropout(x, 0.5, training=False), F.relu(x))


def test_fast_dropout_module() -> None:
    module = FastDropout(0.5)
    assert module.state_dict() == torch.nn.Dropout(0.5).state_dict()
    x = torch.randn(20, 30)
    assert module.eval()(x) is x
    out = module.train()(x)
    assert ((out == 0) | torch.isclose(out, 2 * x)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_relu_dropout_gradient_in_low_precision(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 128).to(dtype).requires_grad_()
    y = relu_dropout(x, 0.5)
    assert y.dtype == dtype
    active = y != 0
    g = torch.randn(64, 128).to(dtype)
    y.backward(g)
    # Gradient 2 * g where the element survived ReLU and the mask, 0 elsewhere.
    torch.testing.assert_close(x.grad, torch.where(active, 2 * g, torch.zeros_like(g)))
    assert not active[x.detach() <= 0].any()


def test_keep_multiplier_values_and_dtype() -> None:
    like = torch.empty(300, 70, dtype=torch.bfloat16)
    mult = keep_multiplier(like, 0.25)
    assert mult.dtype == torch.bfloat16 and mult.shape == like.shape
    scale = torch.tensor(1 / 0.75, dtype=torch.bfloat16).item()  # 1/keep rounded as the dtype holds it
    assert set(mult.unique().tolist()) <= {0.0, scale}
    assert abs((mult != 0).float().mean().item() - 0.75) < 0.02
    assert (keep_multiplier(like, 0.0) == 1).all() and (keep_multiplier(like, 1.0) == 0).all()
