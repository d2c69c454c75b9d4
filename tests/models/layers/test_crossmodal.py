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


def _packed(grid: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    index = torch.nonzero(valid.reshape(-1)).squeeze(1)
    return grid.reshape(-1, grid.shape[-1]).index_select(0, index), index


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("zero_attn", [False, True])
@pytest.mark.parametrize("source_dim", [8, 6])
def test_forward_packed_equals_forward_at_the_real_positions(cross: bool, zero_attn: bool, source_dim: int) -> None:
    if not cross and source_dim != 8:
        pytest.skip("a self-attention layer has no other source dim")
    torch.manual_seed(0)
    layer = CrossModalLayer(8, num_heads=2, source_dim=source_dim, cross=cross, ffn_dim=12).eval()
    if zero_attn:
        layer.attn = torch.nn.MultiheadAttention(
            8, 2, kdim=source_dim, vdim=source_dim, batch_first=True, add_zero_attn=True
        )
    target, source = torch.randn(4, 5, 8), torch.randn(4, 3, source_dim)
    target_valid = torch.arange(5)[None, :] < torch.tensor([5, 1, 3, 2])[:, None]
    # Block 2 has no source key at all: zero attention output (or only the zero key).
    source_valid = torch.arange(3)[None, :] < torch.tensor([3, 2, 0, 1])[:, None]
    if not cross:
        source, source_valid = target, target_valid
    expected = layer(target, source if cross else None, key_padding_mask=~source_valid)
    rows, index = _packed(target, target_valid)
    source_rows, source_index = _packed(source, source_valid)
    got = layer.forward_packed(rows, index, target_valid, *((source_rows, source_index, source_valid) if cross else ()))
    torch.testing.assert_close(got, expected.reshape(-1, 8)[index], rtol=1e-5, atol=1e-5)


def test_forward_packed_gradients_equal_forward_gradients() -> None:
    torch.manual_seed(1)
    layer = CrossModalLayer(8, num_heads=2, cross=True, ffn_dim=12).train()
    layer.drop.p = 0.0  # no dropout: both paths must agree exactly
    target, source = torch.randn(3, 4, 8), torch.randn(3, 5, 8)
    target_valid = torch.arange(4)[None, :] < torch.tensor([4, 2, 1])[:, None]
    source_valid = torch.arange(5)[None, :] < torch.tensor([1, 5, 3])[:, None]
    plain = layer(target, source, key_padding_mask=~source_valid)
    (plain * target_valid[..., None]).square().sum().backward()
    expected = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad()
    rows, index = _packed(target, target_valid)
    source_rows, source_index = _packed(source, source_valid)
    layer.forward_packed(rows, index, target_valid, source_rows, source_index, source_valid).square().sum().backward()
    for name, param in layer.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], rtol=1e-4, atol=1e-5, msg=name)
