"""The fused GRU / LSTM (merc.models.layers.fused_rnn) computes exactly what nn.GRU / nn.LSTM compute.

Its backward pass is written by hand, so every gradient (input, each weight and bias, each
layer and direction) is compared with PyTorch's autograd through ``nn.GRU`` / ``nn.LSTM``
on the same packed batch: in float64 to 1e-10 (a wrong derivative shows far above
rounding) and in float32 to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import merc.models.layers.recurrent as recurrent
from helpers import assert_same_function, make_batch
from merc.models.layers.fast import use_fast_kernels
from merc.models.layers.fused_rnn import PackedSteps, fused_rnn, supports_fused_rnn
from merc.models.layers.recurrent import ContextualRNN

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def _packed(lengths: tuple[int, ...], size: int, dtype: torch.dtype) -> PackedSequence:
    return pack_sequence([torch.randn(n, size, dtype=dtype) for n in lengths], enforce_sorted=False)


def _run(
    rnn: nn.Module, packed: PackedSequence, fn: Callable[[PackedSequence], PackedSequence], weights: Tensor | None
) -> tuple[Tensor, ...]:
    """Output, input gradient and every parameter gradient of ``fn`` (weighted sum as the loss)."""
    rnn.zero_grad()
    x = packed.data.clone().requires_grad_()
    out = fn(PackedSequence(x, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)).data
    (out.sum() if weights is None else (out * weights).sum()).backward()
    assert x.grad is not None
    grads = [p.grad for p in rnn.parameters()]
    assert all(g is not None for g in grads)
    return (out.detach(), x.grad, *(g for g in grads if g is not None))


def _assert_equal_to_pytorch(rnn: nn.GRU | nn.LSTM, packed: PackedSequence, tol: float, weighted: bool = True) -> None:
    out_size = rnn.hidden_size * (2 if rnn.bidirectional else 1)
    weights = torch.randn(packed.data.shape[0], out_size, dtype=packed.data.dtype) if weighted else None
    want = _run(rnn, packed, lambda p: rnn(p)[0], weights)
    got = _run(rnn, packed, lambda p: fused_rnn(rnn, p), weights)
    names = ["output", "input grad"] + [f"grad {n}" for n, _ in rnn.named_parameters()]
    for name, w, g in zip(names, want, got):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol, msg=name)


@pytest.mark.parametrize("lengths", [(5, 1, 7, 3), (1,), (4,), (3, 3, 1)])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_output_and_all_gradients_equal_pytorch(
    cell: str, dtype: torch.dtype, num_layers: int, bidirectional: bool, lengths: tuple[int, ...]
) -> None:
    # Unequal lengths (rows leave the batch as sequences end, and join it in the reverse
    # direction), length-1 sequences, a single sequence, equal lengths.
    torch.manual_seed(0)
    rnn = CELLS[cell](6, 4, num_layers=num_layers, bidirectional=bidirectional, batch_first=True).to(dtype)
    _assert_equal_to_pytorch(rnn, _packed(lengths, 6, dtype), TOLERANCE[dtype])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_an_expanded_incoming_gradient(cell: str) -> None:
    # out.sum() hands the backward pass a broadcast (stride-0) gradient, which it must not write into.
    torch.manual_seed(0)
    rnn = CELLS[cell](5, 3, num_layers=2, bidirectional=True).double()
    _assert_equal_to_pytorch(rnn, _packed((4, 2, 6), 5, torch.float64), 1e-10, weighted=False)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_dropout_between_layers_in_eval_mode_is_exact(cell: str) -> None:
    torch.manual_seed(0)
    rnn = CELLS[cell](6, 4, num_layers=3, bidirectional=True, dropout=0.5).double().eval()
    _assert_equal_to_pytorch(rnn, _packed((5, 2, 7), 6, torch.float64), 1e-10)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_dropout_between_layers_in_training_has_pytorch_distribution(cell: str) -> None:
    # Another random stream than PyTorch's, so compare the outputs' mean (each element
    # within 5 standard errors; about 100 elements) and spread over many draws.
    torch.manual_seed(0)
    rnn = CELLS[cell](6, 8, num_layers=2, bidirectional=True, dropout=0.5).train()
    packed = _packed((5, 2, 3), 6, torch.float32)
    draws = 400
    with torch.no_grad():
        want = torch.stack([rnn(packed)[0].data for _ in range(draws)])
        got = torch.stack([fused_rnn(rnn, packed).data for _ in range(draws)])
    standard_error = ((want.var(0) + got.var(0)) / draws).sqrt()
    assert ((got.mean(0) - want.mean(0)).abs() <= 5 * standard_error).all()
    torch.testing.assert_close(got.var(0).mean(), want.var(0).mean(), rtol=0.1, atol=0)
    assert want.std(0).mean() > 0.01  # dropout is on: the draws differ


def test_packed_steps_reverse_each_sequence() -> None:
    # Rows (k, t) and (k, L_k - 1 - t) swap: packing the reversed sequences gives the same layout.
    lengths = (3, 1, 4)
    seqs = [torch.arange(n, dtype=torch.float32)[:, None] + 10 * k for k, n in enumerate(lengths)]
    packed = pack_sequence(seqs, enforce_sorted=False)
    flipped = pack_sequence([s.flip(0) for s in seqs], enforce_sorted=False)
    steps = PackedSteps(packed.batch_sizes, packed.data.device)
    assert torch.equal(packed.data[steps.reverse], flipped.data)
    assert torch.equal(steps.reverse[steps.reverse], torch.arange(len(steps.reverse)))
    assert torch.equal(packed.data[steps.previous] + 1, packed.data[packed.batch_sizes[0] :])


def test_supports_fused_rnn() -> None:
    assert supports_fused_rnn(nn.GRU(3, 2)) and supports_fused_rnn(nn.LSTM(3, 2))
    assert not supports_fused_rnn(nn.GRU(3, 2, bias=False))
    assert not supports_fused_rnn(nn.LSTM(3, 2, proj_size=1))
    assert not supports_fused_rnn(nn.RNN(3, 2))


# --- behind the switch: ContextualRNN ---------------------------------------------------


@pytest.fixture
def fused_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of the fused path from ContextualRNN."""
    calls: list[int] = []

    def counted(rnn: nn.GRU | nn.LSTM, packed: PackedSequence) -> PackedSequence:
        calls.append(1)
        return fused_rnn(rnn, packed)

    monkeypatch.setattr(recurrent, "fused_rnn", counted)
    return calls


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cell": "gru"},
        {"cell": "gru", "num_layers": 2},
        {"cell": "gru", "bidirectional": False},
        {"cell": "lstm"},
        {"cell": "lstm", "num_layers": 2, "bidirectional": False},
    ],
)
def test_contextual_rnn_switch_on_and_off_agree(kwargs: dict[str, object], fused_calls: list[int]) -> None:
    # Eval mode so dropout is deterministic; gradients on, so the switch picks the fused path.
    torch.manual_seed(0)
    rnn = ContextualRNN(8, 6, dropout=0.3, **kwargs).eval()  # type: ignore[arg-type]
    batch, _ = make_batch((6, 1, 9, 4), "t")
    x = torch.randn(batch.num_utterances, 8)

    def run(fast_on: bool) -> Callable[[Tensor], Tensor]:
        def flat(inp: Tensor) -> Tensor:
            with use_fast_kernels(fast_on):
                return rnn.forward_flat(inp, batch)

        return flat

    assert_same_function(rnn, run(False), run(True), x, rtol=1e-5, atol=1e-6)
    assert fused_calls  # the switch on took the fused path ...
    calls = len(fused_calls)
    with use_fast_kernels(False):
        rnn.forward_flat(x, batch)
    assert len(fused_calls) == calls  # ... and off it did not


def test_contextual_rnn_keeps_pytorch_for_inference_and_float64(fused_calls: list[int]) -> None:
    # The fused path pays off in the backward pass: without gradients, and off float32, nn.GRU runs.
    rnn = ContextualRNN(8, 6, cell="gru")
    batch, _ = make_batch((3, 2), "t")
    x = torch.randn(batch.num_utterances, 8)
    with use_fast_kernels(True):
        with torch.no_grad():
            rnn.forward_flat(x, batch)
        rnn.double().forward_flat(x.double(), batch)
    assert not fused_calls
