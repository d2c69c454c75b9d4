"""CrossModalTransformer: shapes, masking, padding invariance, gradients."""

from __future__ import annotations

import pytest
import torch

from merc.errors import ConfigError
from merc.models.layers.crossmodal import CrossModalLayer, CrossModalTransformer


def _block(**kwargs: object) -> CrossModalTransformer:
    torch.manual_seed(0)
    return CrossModalTransformer(8, num_heads=2, num_layers=2, **kwargs).eval()  # type: ignore[arg-type]


def test_shapes_with_other_source_dim() -> None:
    block = _block(source_dim=6)
    out = block(torch.randn(3, 5, 8), torch.randn(3, 4, 6))
    assert out.shape == (3, 5, 8) and torch.isfinite(out).all()


def test_padded_source_steps_are_ignored() -> None:
    block = _block()
    target, source = torch.randn(2, 5, 8), torch.randn(2, 4, 8)
    mask = torch.tensor([[False, False, True, True], [False, False, False, False]])
    out = block(target, source, key_padding_mask=mask)
    # Changing masked keys changes nothing; changing a real key does.
    garbage = source.clone()
    garbage[0, 2:] = 100.0
    torch.testing.assert_close(block(target, garbage, key_padding_mask=mask), out)
    garbage[0, 0] = torch.randn(8)  # (a constant shift would vanish in the LayerNorm)
    assert not torch.allclose(block(target, garbage, key_padding_mask=mask)[0], out[0])
    # Row 0 alone, without its padding, gives the same output.
    torch.testing.assert_close(block(target[:1], source[:1, :2]), out[:1], rtol=1e-5, atol=1e-6)


def test_rows_do_not_interact() -> None:
    block = _block()
    target, source = torch.randn(3, 4, 8), torch.randn(3, 6, 8)
    out = block(target, source)
    source2 = source.clone()
    source2[1] = torch.randn(6, 8)
    out2 = block(target, source2)
    torch.testing.assert_close(out2[[0, 2]], out[[0, 2]])
    assert not torch.allclose(out2[1], out[1])


def test_self_attention_mode_and_query_mask() -> None:
    block = _block(cross=False)
    x = torch.randn(2, 5, 8)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    out = block(x, key_padding_mask=pad, query_padding_mask=pad)
    assert (out[1, 3:] == 0).all() and (out[1, :3] != 0).any()
    torch.testing.assert_close(block(x[1:, :3]), out[1:, :3], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no source"):
        block(x, x)
    with pytest.raises(ValueError, match="pass a source"):
        _block()(x)


def test_fully_masked_row_gives_no_nan() -> None:
    block = _block()
    mask = torch.tensor([[True] * 4, [False] * 4])
    out = block(torch.randn(2, 3, 8), torch.randn(2, 4, 8), key_padding_mask=mask)
    assert torch.isfinite(out).all()


def test_every_parameter_gets_a_gradient() -> None:
    for cross in (True, False):
        block = CrossModalTransformer(8, num_heads=2, num_layers=2, cross=cross, dropout=0.1).train()
        x = torch.randn(2, 5, 8)
        out = block(x, torch.randn(2, 3, 8)) if cross else block(x)
        out.pow(2).sum().backward()
        dead = [n for n, p in block.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
        assert not dead, dead
    # A self-attention block has no source LayerNorm at all.
    assert CrossModalLayer(8, 2, cross=False).norm_source is None


def test_bad_configuration_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        CrossModalTransformer(10, num_heads=3, num_layers=1)
    with pytest.raises(ConfigError, match="at least one layer"):
        CrossModalTransformer(8, num_heads=2, num_layers=0)
    with pytest.raises(ConfigError, match="source_dim"):
        CrossModalLayer(8, 2, source_dim=6, cross=False)
