"""block_attention: its explicit (dropout / bfloat16) path against scaled_dot_product_attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import merc.models.layers.attention as attention
from merc.models.layers.attention import (
    STEP_BUCKET,
    block_attention,
    gather_heads,
    length_bucketed_attention,
    scatter_heads,
)

HEADS, HEAD_DIM = 2, 4


def _case(lengths: tuple[int, ...], square: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed qkv rows, their grid index and an allowed mask (key padding or a banded adjacency)."""
    gen = torch.Generator().manual_seed(seed)
    size = max(lengths)
    real = torch.arange(size)[None, :] < torch.tensor(lengths)[:, None]  # [B, S]
    index = real.reshape(-1).nonzero().squeeze(1)
    qkv = torch.randn(len(index), 3 * HEADS * HEAD_DIM, generator=gen, requires_grad=True)
    if not square:
        return qkv, index, real[:, None, :]
    pos = torch.arange(size)
    band = (pos[None, :] - pos[:, None] <= 2) & (pos[:, None] - pos[None, :] <= 3)  # [query, key]
    allowed = band[None] & real[:, None, :] & real[:, :, None]
    # Slots without a row (and rows without a key) see themselves, as the graph layer does.
    return qkv, index, allowed | torch.diag_embed(~allowed.any(-1))


def _reference(qkv: torch.Tensor, index: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    batch, _, size = allowed.shape
    q, k, v = scatter_heads(qkv, index, batch, size, HEADS)
    return gather_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None]), index)


@pytest.mark.parametrize("square", [False, True])
@pytest.mark.parametrize("lengths", [(5, 1, 9, 3), (1,), (STEP_BUCKET + 3, 2)])
def test_explicit_path_equals_sdpa(monkeypatch: pytest.MonkeyPatch, lengths: tuple[int, ...], square: bool) -> None:
    qkv, index, allowed = _case(lengths, square)
    want = _reference(qkv, index, allowed)
    want_grad = torch.autograd.grad(want.square().sum(), qkv)[0]
    # Dropout as the identity: what remains is the explicit softmax path.
    monkeypatch.setattr(attention, "dropout", lambda x, p: x)
    got = block_attention(qkv, index, allowed, HEADS, dropout_p=0.5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(got.square().sum(), qkv)[0], want_grad, rtol=1e-4, atol=1e-5)
    # bfloat16 under CPU autocast, slots padded to STEP_BUCKET: same function up to bfloat16 rounding.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = block_attention(qkv, index, allowed, HEADS, dropout_p=0.5)
    assert low.dtype == torch.bfloat16 and low.shape == want.shape
    torch.testing.assert_close(low.float(), want, rtol=5e-2, atol=5e-2)
    low_grad = torch.autograd.grad(low.float().square().sum(), qkv)[0]
    assert torch.isfinite(low_grad).all()
    torch.testing.assert_close(low_grad, want_grad, rtol=1e-1, atol=1e-1)


def test_dropout_drops_attention_weights_and_is_seeded() -> None:
    qkv, index, allowed = _case((6, 4), square=False)
    torch.manual_seed(0)
    a = block_attention(qkv, index, allowed, HEADS, dropout_p=0.5)
    torch.manual_seed(0)
    b = block_attention(qkv, index, allowed, HEADS, dropout_p=0.5)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, block_attention(qkv, index, allowed, HEADS, dropout_p=0.5))
    assert not torch.allclose(a, _reference(qkv, index, allowed))


def test_a_block_ignores_the_other_blocks_under_autocast() -> None:
    # Padding to STEP_BUCKET must not let a block see padded or foreign slots.
    qkv, index, allowed = _case((7, 3), square=True)
    other = qkv.detach().clone()
    other[7:] = torch.randn(3, qkv.shape[1])  # rows of the second block changed
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = block_attention(qkv.detach(), index, allowed, HEADS)
        b = block_attention(other, index, allowed, HEADS)
    torch.testing.assert_close(a[:7], b[:7], rtol=0, atol=0)
    assert not torch.equal(a[7:], b[7:])


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("square", [False, True])
def test_padding_rows_change_nothing_and_get_no_gradient(autocast: bool, square: bool) -> None:
    # Row padding (merc.models.layers.precision.pad_rows): rows past len(index) ride along,
    # every real row's output and gradient is what it is without them.
    qkv, index, allowed = _case((5, 1, 9, 3), square)
    extra = torch.randn(7, qkv.shape[1]) * 100  # large values: any leak into the real rows shows
    padded = torch.cat([qkv.detach(), extra]).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        want = block_attention(qkv, index, allowed, HEADS)
        got = block_attention(padded, index, allowed, HEADS)
    assert got.shape == (len(index) + 7, want.shape[1])
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[: len(index)], want, rtol=0, atol=0)
    grad = torch.autograd.grad(got[: len(index)].float().square().sum(), padded)[0]
    torch.testing.assert_close(grad[: len(index)], torch.autograd.grad(want.float().square().sum(), qkv)[0])
    assert not grad[len(index) :].any()


def test_fewer_rows_than_positions_is_an_error() -> None:
    qkv, index, allowed = _case((5, 3), square=False)
    with pytest.raises(ValueError, match="grid positions"):
        block_attention(qkv[:-1], index, allowed, HEADS)


def _attention_per_block(q, q_index, q_size, k, v, k_index, k_valid, heads, zero_key):
    """Brute-force reference: every block on its own, keys in slot order, plain softmax."""
    out = torch.zeros_like(q)
    blocks, k_size = k_valid.shape
    d = q.shape[1]
    dh = d // heads
    for b in range(blocks):
        rows_q = [i for i, at in enumerate(q_index.tolist()) if at // q_size == b]
        rows_k = sorted((at % k_size, i) for i, at in enumerate(k_index.tolist()) if at // k_size == b)
        keys = [k[i] for _, i in rows_k] + ([torch.zeros(d)] if zero_key else [])
        values = [v[i] for _, i in rows_k] + ([torch.zeros(d)] if zero_key else [])
        if not keys:
            continue  # no key: zero output
        kk, vv = torch.stack(keys).view(-1, heads, dh), torch.stack(values).view(-1, heads, dh)
        for r in rows_q:
            qq = q[r].view(heads, dh)
            w = torch.softmax(torch.einsum("hd,khd->hk", qq, kk) / dh**0.5, dim=-1)
            out[r] = torch.einsum("hk,khd->hd", w, vv).reshape(d)
    return out


@pytest.mark.parametrize("zero_key", [False, True])
def test_length_bucketed_attention_equals_per_block_attention(zero_key: bool) -> None:
    g = torch.Generator().manual_seed(0)
    q_lengths, k_lengths = [1, 9, 3, 0, 17, 2, 5], [4, 2, 0, 3, 30, 1, 5]  # block 2: queries, no key
    q_size, k_size, d = 20, 32, 8
    q_valid = torch.arange(q_size)[None, :] < torch.tensor(q_lengths)[:, None]
    k_valid = torch.arange(k_size)[None, :] < torch.tensor(k_lengths)[:, None]
    k_valid[4, 7] = False  # a hole inside a block: only slots with rows are keys
    q_index = torch.nonzero(q_valid.reshape(-1)).squeeze(1)
    k_index = torch.nonzero(k_valid.reshape(-1)).squeeze(1)
    q = torch.randn(q_index.numel(), d, generator=g)
    k, v = torch.randn(k_index.numel(), d, generator=g), torch.randn(k_index.numel(), d, generator=g)
    got = length_bucketed_attention(q, q_index, q_size, k, v, k_index, k_valid, num_heads=2, zero_key=zero_key)
    expected = _attention_per_block(q, q_index, q_size, k, v, k_index, k_valid, 2, zero_key)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    if not zero_key:  # block 2 has queries and no key: zeros
        rows_of_block_2 = (q_index // q_size) == 2
        assert rows_of_block_2.any() and (got[rows_of_block_2] == 0).all()
