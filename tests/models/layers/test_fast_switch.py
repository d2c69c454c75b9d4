"""The fast-kernel switch (merc.models.layers.fast): every fast path agrees with its plain path.

For each fast path the same inputs and weights go through both settings of the switch
and must give the same outputs and input / parameter gradients (within float rounding;
under bfloat16 autocast within bfloat16 rounding). Dropout draws from another random
stream on each path, so training-mode dropout is compared by its distribution.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import RGCNConv, TransformerConv

import merc.models.layers.fast as fast
from helpers import DIMS, assert_same_function, make_batch
from merc.data.graphs import build_corect_graph, utterance_index
from merc.models.layers.attention import block_attention, gather_heads, scatter_heads
from merc.models.layers.dropout import FastDropout, dropout, relu_dropout
from merc.models.layers.fast import fast_kernels_enabled, use_fast_kernels
from merc.models.layers.graph_attention import NodeBlocks, block_transformer_conv, supports_block_attention
from merc.models.layers.precision import ROW_BUCKET, cpu_autocast_active, float32_region, linear, pad_rows
from merc.models.layers.recurrent import ContextualRNN, packed_order
from merc.models.layers.relational_conv import relational_mean_conv, supports_fused_rgcn
from merc.models.layers.transformer import PackedTransformerEncoderLayer

LENGTHS = (6, 1, 9, 4)


def _on(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def run(*args: object) -> Tensor:
        with use_fast_kernels(True):
            return fn(*args)

    return run


def _off(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def run(*args: object) -> Tensor:
        with use_fast_kernels(False):
            return fn(*args)

    return run


def _value_and_grad(fn: Callable[[Tensor], Tensor], x: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    inp = x.detach().clone().requires_grad_()
    out = fn(inp)
    w = torch.ones(out.shape) if weights is None else weights
    (out.float() * w).sum().backward()
    assert inp.grad is not None
    return out.detach(), inp.grad


# --- the switch ------------------------------------------------------------------------


def test_setter_and_context_manager() -> None:
    assert fast_kernels_enabled()  # pinned on by conftest.py
    use_fast_kernels(False)
    assert not fast_kernels_enabled()
    use_fast_kernels(True)
    assert fast_kernels_enabled()
    with use_fast_kernels(False):
        assert not fast_kernels_enabled()
        with use_fast_kernels(True):
            assert fast_kernels_enabled()
        assert not fast_kernels_enabled()
    assert fast_kernels_enabled()
    with pytest.raises(RuntimeError), use_fast_kernels(False):
        raise RuntimeError
    assert fast_kernels_enabled()  # restored after an exception too


def test_environment_variable_sets_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        for value, want in [("0", False), ("false", False), ("OFF", False), ("1", True), ("true", True), ("", True)]:
            monkeypatch.setenv(fast.ENV_VAR, value)
            importlib.reload(fast)
            assert fast_kernels_enabled() is want, value  # the layers' reference sees the re-read value
        monkeypatch.delenv(fast.ENV_VAR)
        importlib.reload(fast)
        assert fast_kernels_enabled()
        monkeypatch.setenv(fast.ENV_VAR, "maybe")
        with pytest.raises(ValueError, match="MERC_FAST_KERNELS"):
            importlib.reload(fast)
    finally:
        monkeypatch.undo()
        importlib.reload(fast)


# --- dropout ---------------------------------------------------------------------------


@pytest.mark.parametrize("fast_on", [True, False])
def test_dropout_is_exact_in_eval_and_at_p0(fast_on: bool) -> None:
    x = torch.randn(40, 30)
    with use_fast_kernels(fast_on):
        assert torch.equal(dropout(x, 0.5, training=False), x)
        assert torch.equal(dropout(x, 0.0), x)
        assert torch.equal(relu_dropout(x, 0.5, training=False), F.relu(x))
        assert torch.equal(relu_dropout(x, 0.0), F.relu(x))
        assert torch.equal(FastDropout(0.5).eval()(x), x)
        assert torch.equal(FastDropout(0.0).train()(x), x)


@pytest.mark.parametrize("fast_on", [True, False])
@pytest.mark.parametrize("p", [0.5, 0.1, 0.3])
@pytest.mark.parametrize("kind", ["dropout", "relu_dropout", "module"])
def test_dropout_distribution_in_training(fast_on: bool, p: float, kind: str) -> None:
    torch.manual_seed(0)
    x = torch.rand(400, 250) + 0.5  # positive: ReLU keeps every element
    fn: Callable[[Tensor], Tensor] = {
        "dropout": lambda t: dropout(t, p),
        "relu_dropout": lambda t: relu_dropout(t - 1.0, p),  # about half the inputs negative
        "module": FastDropout(p).train(),
    }[kind]
    with use_fast_kernels(fast_on):
        y, grad = _value_and_grad(fn, x)
    base = F.relu(x - 1.0) if kind == "relu_dropout" else x
    kept = y != 0
    alive = base > 0
    assert not kept[~alive].any()  # zero where ReLU zeroed
    # Keep rate 1 - p among the elements dropout could keep (n >= 5e4: std error < 2.3e-3).
    assert abs(kept[alive].float().mean().item() - (1 - p)) < 0.01
    torch.testing.assert_close(y[kept], base[kept] / (1 - p))  # kept values scaled by 1 / (1 - p)
    torch.testing.assert_close(grad, kept.float() / (1 - p))  # gradient: the same mask and scale


def test_plain_dropout_is_pytorchs_own() -> None:
    # Switched off, the random stream is PyTorch's too: same seed, same masks.
    x = torch.randn(64, 48)
    with use_fast_kernels(False):
        torch.manual_seed(3)
        ours = (dropout(x, 0.3), relu_dropout(x, 0.3), FastDropout(0.3).train()(x))
    torch.manual_seed(3)
    theirs = (F.dropout(x, 0.3), F.dropout(F.relu(x), 0.3), nn.Dropout(0.3).train()(x))
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


# --- attention -------------------------------------------------------------------------

HEADS, HEAD_DIM = 2, 4


def _attention_case(square: bool, extra_rows: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    size = max(LENGTHS)
    real = torch.arange(size)[None, :] < torch.tensor(LENGTHS)[:, None]
    index = real.reshape(-1).nonzero().squeeze(1)
    qkv = torch.randn(len(index) + extra_rows, 3 * HEADS * HEAD_DIM, generator=gen)
    if not square:
        return qkv, index, real[:, None, :]
    pos = torch.arange(size)
    band = (pos[None, :] - pos[:, None] <= 2) & (pos[:, None] - pos[None, :] <= 3)
    allowed = band[None] & real[:, None, :] & real[:, :, None]
    return qkv, index, allowed | torch.diag_embed(~allowed.any(-1))


@pytest.mark.parametrize("square", [False, True])
@pytest.mark.parametrize("extra_rows", [0, 5])
@pytest.mark.parametrize("autocast", [False, True])
def test_attention_paths_agree(square: bool, extra_rows: int, autocast: bool) -> None:
    qkv, index, allowed = _attention_case(square, extra_rows)
    weights = torch.randn(qkv.shape[0], HEADS * HEAD_DIM)
    weights[len(index) :] = 0  # row padding: unspecified outputs, compared for shape only

    def attend(inp: Tensor) -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return block_attention(inp, index, allowed, HEADS)

    fast_out, fast_grad = _value_and_grad(_on(attend), qkv, weights)
    plain_out, plain_grad = _value_and_grad(_off(attend), qkv, weights)
    assert fast_out.shape == plain_out.shape
    n = len(index)
    tol = {"rtol": 5e-2, "atol": 5e-2} if autocast else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(fast_out[:n].float(), plain_out[:n].float(), **tol)
    torch.testing.assert_close(fast_grad, plain_grad, **({"rtol": 1e-1, "atol": 1e-1} if autocast else tol))


@pytest.mark.parametrize("fast_on", [True, False])
def test_attention_dropout_is_unbiased_on_both_paths(fast_on: bool) -> None:
    # Different random streams: compare the mean over many draws with the no-dropout output.
    qkv, index, allowed = _attention_case(square=True)
    exact = block_attention(qkv, index, allowed, HEADS)
    torch.manual_seed(0)
    with use_fast_kernels(fast_on):
        draws = torch.stack([block_attention(qkv, index, allowed, HEADS, dropout_p=0.5) for _ in range(2000)])
    assert not torch.allclose(draws[0], exact)
    # Within 5 standard errors of the mean, element by element.
    stderr = draws.std(0) / len(draws) ** 0.5
    assert ((draws.mean(0) - exact).abs() <= 5 * stderr + 1e-6).all()


def test_plain_attention_dropout_is_pytorchs_sdpa() -> None:
    qkv, index, allowed = _attention_case(square=False)
    with use_fast_kernels(False):
        torch.manual_seed(2)
        got = block_attention(qkv, index, allowed, HEADS, dropout_p=0.5)
    q, k, v = scatter_heads(qkv, index, len(LENGTHS), max(LENGTHS), HEADS)
    torch.manual_seed(2)
    want = gather_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], dropout_p=0.5), index)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# --- precision -------------------------------------------------------------------------


def test_precision_helpers_are_plain_when_off() -> None:
    x = torch.randn(ROW_BUCKET + 3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with use_fast_kernels(True):
            assert cpu_autocast_active(x) and pad_rows(x).shape[0] == 2 * ROW_BUCKET
            inside, island = float32_region(x.bfloat16())
            with island:
                assert inside.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
        with use_fast_kernels(False):
            assert not cpu_autocast_active(x) and pad_rows(x) is x
            inside, island = float32_region(x.bfloat16())
            with island:
                assert inside.dtype == torch.bfloat16 and torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("rows", [1, ROW_BUCKET, 2 * ROW_BUCKET + 5])
@pytest.mark.parametrize("autocast", [False, True])
def test_linear_paths_agree(rows: int, autocast: bool) -> None:
    torch.manual_seed(rows)
    layer = nn.Linear(24, 16)
    x = torch.randn(rows, 24)

    def project(inp: Tensor) -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return linear(inp, layer.weight, layer.bias).float()

    tol = 2e-2 if autocast else 1e-5  # bfloat16 sums blocked differently at another row count
    assert_same_function(layer, _off(project), _on(project), x, rtol=tol / 10, atol=tol)


def test_float32_region_paths_agree_within_bfloat16_rounding() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(24, 16)

    def island(inp: Tensor) -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inp, ctx = float32_region(inp)
            with ctx:
                return layer(inp).float()

    assert_same_function(layer, _off(island), _on(island), torch.randn(20, 24), rtol=2e-3, atol=5e-2)


# --- graph attention and RGCN -----------------------------------------------------------


def _corect_graph(modalities: str) -> tuple[Tensor, Tensor, NodeBlocks]:
    lengths = torch.tensor(LENGTHS)
    graph = build_corect_graph(lengths, modalities)
    index = utterance_index(lengths)
    steps, n, mods = int(lengths.max()), int(lengths.sum()), len(modalities)
    blocks = NodeBlocks(
        block=index.dialogue.repeat(mods),
        slot=(torch.arange(mods) * steps).repeat_interleave(n) + index.position.repeat(mods),
        num_blocks=len(lengths),
        size=mods * steps,
    )
    return graph.edge_index, graph.edge_type, blocks


@pytest.mark.parametrize("modalities", ["t", "tav"])
def test_graph_attention_paths_agree(modalities: str) -> None:
    torch.manual_seed(0)
    conv = TransformerConv(8, 5, heads=3)
    edge_index, _, blocks = _corect_graph(modalities)
    x = torch.randn(blocks.block.numel(), 8)
    with use_fast_kernels(False):
        assert not supports_block_attention(conv)
    assert supports_block_attention(conv)

    def attend(inp: Tensor) -> Tensor:
        return block_transformer_conv(conv, inp, edge_index, blocks)

    assert_same_function(conv, _off(attend), _on(attend), x)
    # Off, block_transformer_conv is PyG's forward itself, for any configuration.
    unsupported = TransformerConv(8, 5, heads=3, concat=False)
    with use_fast_kernels(False):
        torch.testing.assert_close(
            block_transformer_conv(unsupported, x, edge_index, blocks), unsupported(x, edge_index), rtol=0, atol=0
        )


@pytest.mark.parametrize("modalities", ["t", "tav"])
def test_rgcn_paths_agree(modalities: str) -> None:
    torch.manual_seed(0)
    conv = RGCNConv(8, 5, num_relations=15)
    edge_index, edge_type, blocks = _corect_graph(modalities)
    x = torch.randn(blocks.block.numel(), 8)
    with use_fast_kernels(False):
        assert not supports_fused_rgcn(conv, x)
    assert supports_fused_rgcn(conv, x)

    def convolve(inp: Tensor) -> Tensor:
        return relational_mean_conv(conv, inp, edge_index, edge_type)

    assert_same_function(conv, _off(convolve), _on(convolve), x, rtol=1e-6)
    # Off, relational_mean_conv is PyG's forward itself, for any configuration.
    unsupported = RGCNConv(8, 5, num_relations=15, num_bases=2)
    with use_fast_kernels(False):
        torch.testing.assert_close(
            relational_mean_conv(unsupported, x, edge_index, edge_type),
            unsupported(x, edge_index, edge_type),
            rtol=0,
            atol=0,
        )


# --- packed Transformer layer ----------------------------------------------------------


def _packed_case(dim: int = 16) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    steps = max(LENGTHS)
    padding = torch.arange(steps)[None, :] >= torch.tensor(LENGTHS)[:, None]
    flat_index = (~padding).reshape(-1).nonzero().squeeze(1)
    return torch.randn(len(flat_index), dim, generator=gen), flat_index, padding


LAYER_CASES = [{}, {"norm_first": True}, {"activation": "gelu"}, {"batch_first": False}]


# Dropout in training is compared by test_plain_packed_transformer_is_pytorchs_layer.
@pytest.mark.parametrize(
    ("kwargs", "train"),
    [(kw, False) for kw in [*LAYER_CASES, {"dropout": 0.5}]] + [(kw, True) for kw in LAYER_CASES],
)
def test_packed_transformer_paths_agree(kwargs: dict[str, object], train: bool) -> None:
    torch.manual_seed(0)
    layer = PackedTransformerEncoderLayer(
        16, 4, **{"dim_feedforward": 32, "batch_first": True, "dropout": 0.0, **kwargs}
    )
    layer.train(train)
    x, flat_index, padding = _packed_case()

    def run(inp: Tensor) -> Tensor:
        return layer.forward_packed(inp, flat_index, padding)

    assert_same_function(layer, _off(run), _on(run), x, rtol=1e-5, atol=1e-5)


def test_plain_packed_transformer_is_pytorchs_layer() -> None:
    # In training with dropout too: off, forward_packed is PyTorch's forward on the padded batch.
    torch.manual_seed(0)
    ours = PackedTransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.5, batch_first=True).train()
    torch_layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.5, batch_first=True).train()
    torch_layer.load_state_dict(ours.state_dict())
    x, flat_index, padding = _packed_case()
    grid = x.new_zeros(padding.numel(), 16).index_copy(0, flat_index, x).view(*padding.shape, 16)
    with use_fast_kernels(False):
        torch.manual_seed(1)
        got = ours.forward_packed(x, flat_index, padding)
    torch.manual_seed(1)
    want = torch_layer(grid, src_key_padding_mask=padding).reshape(-1, 16)[flat_index]
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_packed_transformer_row_padding_and_autocast() -> None:
    torch.manual_seed(0)
    layer = PackedTransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True).eval()
    x, flat_index, padding = _packed_case()
    n = len(flat_index)
    padded = torch.cat([x, torch.randn(ROW_BUCKET - n % ROW_BUCKET, 16)])
    with torch.no_grad():
        want = layer.forward_packed(x, flat_index, padding)
        for fast_on in (True, False):
            with use_fast_kernels(fast_on):
                got = layer.forward_packed(padded, flat_index, padding)
                assert got.shape == padded.shape
                torch.testing.assert_close(got[:n], want, rtol=1e-5, atol=1e-5)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    low = layer.forward_packed(pad_rows(x), flat_index, padding)[:n]
                torch.testing.assert_close(low.float(), want, rtol=5e-2, atol=5e-2)


# --- contextual recurrence on flat rows ---------------------------------------------------


def test_packed_order_is_pack_padded_sequences_layout() -> None:
    lengths = torch.tensor([3, 5, 1, 5, 2])
    batch, _ = make_batch(tuple(lengths.tolist()), "t")
    flat = torch.arange(int(lengths.sum()), dtype=torch.float32)[:, None]
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        batch.unflatten(flat), lengths, batch_first=True, enforce_sorted=False
    )
    rows, sizes, _ = packed_order(lengths)
    assert torch.equal(flat[rows], packed.data)
    assert torch.equal(sizes, packed.batch_sizes)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"bidirectional": False}, {"cell": "gru"}, {"num_layers": 2}, {"cell": "gru", "num_layers": 2}],
)
def test_contextual_rnn_flat_paths_agree(kwargs: dict[str, object]) -> None:
    torch.manual_seed(0)
    rnn = ContextualRNN(8, 6, **kwargs).eval()  # type: ignore[arg-type]
    batch, _ = make_batch(LENGTHS, "t")
    x = torch.randn(batch.num_utterances, 8)

    def run(inp: Tensor) -> Tensor:
        return rnn.forward_flat(inp, batch)

    assert_same_function(rnn, _off(run), _on(run), x, rtol=1e-5, atol=1e-6)


def test_contextual_rnn_autocast_paths_agree_within_bfloat16_rounding() -> None:
    # The fast path casts the weights once; PyTorch's recurrence under autocast casts them
    # at every step. Same products in bfloat16, so the outputs agree to bfloat16 rounding.
    torch.manual_seed(0)
    rnn = ContextualRNN(8, 6).eval()
    batch, _ = make_batch(LENGTHS, "t")
    x = torch.randn(batch.num_utterances, 8)
    with torch.no_grad():
        want = rnn.forward_flat(x, batch)
        outs = {}
        for fast_on in (True, False):
            with use_fast_kernels(fast_on), torch.autocast("cpu", dtype=torch.bfloat16):
                outs[fast_on] = rnn.forward_flat(x, batch).float()
    torch.testing.assert_close(outs[True], outs[False], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(outs[True], want, rtol=5e-2, atol=5e-2)


def test_contextual_rnn_trains_in_float32_under_autocast() -> None:
    # With gradients on, the fast path runs the recurrence as a float32 island: the
    # output and the weight gradients are the float32 model's exactly.
    torch.manual_seed(0)
    rnn = ContextualRNN(8, 6, cell="gru", num_layers=2)
    batch, _ = make_batch(LENGTHS, "t")
    x = torch.randn(batch.num_utterances, 8)
    want = rnn.forward_flat(x, batch)
    (want_grad,) = torch.autograd.grad(want.square().sum(), rnn.rnn.weight_hh_l0)
    with use_fast_kernels(True), torch.autocast("cpu", dtype=torch.bfloat16):
        got = rnn.forward_flat(x.to(torch.bfloat16), batch)
    assert got.dtype == torch.float32
    (got_grad,) = torch.autograd.grad(got.square().sum(), rnn.rnn.weight_hh_l0)
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)  # the input was rounded to bfloat16
    torch.testing.assert_close(got_grad, want_grad, rtol=5e-2, atol=5e-2)
    with use_fast_kernels(True), torch.autocast("cpu", dtype=torch.bfloat16):
        exact = rnn.forward_flat(x, batch)
    torch.testing.assert_close(exact, want, rtol=0, atol=0)


# --- end to end ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bclstm", "dialoguegcn"])
def test_recurrent_models_agree_in_eval(name: str) -> None:
    from merc.models import build_model

    torch.manual_seed(0)
    model = build_model(name, in_dims=dict(DIMS), num_classes=3, num_speakers=2, num_parties=2).eval()
    batch, _ = make_batch((1, 7, 3), "tav")
    with torch.no_grad():
        with use_fast_kernels(True):
            fast_logits = model(batch).logits
        with use_fast_kernels(False):
            plain_logits = model(batch).logits
    torch.testing.assert_close(fast_logits, plain_logits, rtol=1e-5, atol=1e-5)


def test_corect_logits_agree_in_eval() -> None:
    from merc.models import build_model

    torch.manual_seed(0)
    model = build_model("corect", in_dims=dict(DIMS), num_classes=3, num_speakers=2, num_parties=2).eval()
    batch, _ = make_batch((1, 7, 3), "tav")
    with torch.no_grad():
        with use_fast_kernels(True):
            fast_logits = model(batch).logits
        with use_fast_kernels(False):
            plain_logits = model(batch).logits
    assert torch.isfinite(fast_logits).all()
    torch.testing.assert_close(fast_logits, plain_logits, rtol=1e-5, atol=1e-5)
