"""PackedTransformerEncoderLayer against PyTorch's TransformerEncoderLayer on padded batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from merc.models.layers.transformer import PackedTransformerEncoderLayer

LENGTHS = (5, 1, 9, 3)


def pack_index(padding: torch.Tensor) -> torch.Tensor:
    """``long [N]`` row-major positions of the real steps (``Batch.flat_index`` order)."""
    return (~padding).reshape(-1).nonzero().squeeze(1)


def _padded(lengths: tuple[int, ...] = LENGTHS, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    steps = max(lengths)
    padding = torch.arange(steps)[None, :] >= torch.tensor(lengths)[:, None]
    x = torch.randn(len(lengths), steps, dim, generator=gen)
    return x.masked_fill(padding[..., None], 0.0), padding


def _pair(**kwargs: object) -> tuple[nn.TransformerEncoderLayer, PackedTransformerEncoderLayer]:
    torch.manual_seed(0)
    kwargs = {"dim_feedforward": 32, "batch_first": True, **kwargs}
    torch_layer = nn.TransformerEncoderLayer(16, 4, **kwargs)  # type: ignore[arg-type]
    ours = PackedTransformerEncoderLayer(16, 4, **kwargs)
    ours.load_state_dict(torch_layer.state_dict())  # same parameter names: weights copied
    return torch_layer, ours


def _real(y: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    return y.reshape(-1, y.shape[-1])[pack_index(padding)]


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"dropout": 0.5}, {"norm_first": True}, {"activation": "gelu"}, {"dim_feedforward": 2048}],
)
def test_matches_torch_layer_on_padded_batches_in_eval(kwargs: dict[str, object]) -> None:
    torch_layer, ours = _pair(**kwargs)
    torch_layer.eval()
    ours.eval()
    x, padding = _padded()
    index = pack_index(padding)
    with torch.no_grad():
        expected = _real(torch_layer(x, src_key_padding_mask=padding), padding)
        got = ours.forward_packed(_real(x, padding), index, padding)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_gradients_match_torch_layer_without_dropout() -> None:
    torch_layer, ours = _pair(dropout=0.0)
    torch_layer.train()
    ours.train()
    x, padding = _padded()
    weights = torch.randn(int((~padding).sum()), 16)
    x_torch = x.clone().requires_grad_()
    (_real(torch_layer(x_torch, src_key_padding_mask=padding), padding) * weights).sum().backward()
    x_ours = _real(x, padding).requires_grad_()
    (ours.forward_packed(x_ours, pack_index(padding), padding) * weights).sum().backward()
    torch.testing.assert_close(x_ours.grad, _real(x_torch.grad, padding), rtol=1e-4, atol=1e-5)
    theirs = dict(torch_layer.named_parameters())
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, theirs[name].grad, rtol=1e-4, atol=1e-5, msg=name)


def test_training_output_ignores_padding_and_batch_mates() -> None:
    _, ours = _pair(dropout=0.5)
    ours.train()
    x, padding = _padded()
    index = pack_index(padding)
    torch.manual_seed(3)
    out = ours.forward_packed(_real(x, padding), index, padding)
    assert torch.isfinite(out).all()
    # Same seed, same shapes: same dropout masks, so a change of another dialogue's
    # real utterance must leave this dialogue's outputs unchanged.
    x2 = x.clone()
    x2[2, :4] = torch.randn(4, 16)
    torch.manual_seed(3)
    out2 = ours.forward_packed(_real(x2, padding), index, padding)
    first = slice(0, LENGTHS[0])
    torch.testing.assert_close(out2[first], out[first])
    assert not torch.allclose(
        out2[LENGTHS[0] + 1 : LENGTHS[0] + 1 + LENGTHS[2]], out[LENGTHS[0] + 1 : LENGTHS[0] + 1 + LENGTHS[2]]
    )


def test_dropout_is_active_in_training_and_reproducible() -> None:
    _, ours = _pair(dropout=0.5)
    ours.train()
    x, padding = _padded()
    flat, index = _real(x, padding), pack_index(padding)
    torch.manual_seed(1)
    a = ours.forward_packed(flat, index, padding)
    torch.manual_seed(1)
    b = ours.forward_packed(flat, index, padding)
    c = ours.forward_packed(flat, index, padding)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_torch_forward_is_untouched() -> None:
    torch_layer, ours = _pair()
    torch_layer.eval()
    ours.eval()
    x, padding = _padded()
    with torch.no_grad():
        torch.testing.assert_close(ours(x, src_key_padding_mask=padding), torch_layer(x, src_key_padding_mask=padding))
