"""GRU / LSTM training over packed sequences with a hand-written backward pass (a CPU fast path).

PyTorch's CPU recurrence (``nn.GRU`` / ``nn.LSTM`` on a ``PackedSequence``) is autograd
over per-time-step operations. Its backward pass, per step and per direction, runs a
backward node for every elementwise gate operation, one product for the hidden-state
gradient and one more for the weight gradient; these small steps are most of the time
of MM-DFN's GRUs and do not get faster with more threads.

:func:`fused_rnn` computes the same function, from the module's own parameters
(``weight_ih_l0``, ``weight_hh_l0_reverse``, ...), as one ``torch.autograd.Function``
per layer (``_GRULayer`` / ``_LSTMLayer``):

- forward: the input products of all steps at once (one ``x W_ih^T + b_ih`` over all
  packed rows), then per step one product ``h W_hh^T`` and a few fused gate operations;
- backward: the elementwise gate derivatives that do not depend on the incoming
  gradient are computed for all rows at once before the step loop, so each step is a
  few elementwise operations and one product ``dgates W_hh`` (the hidden-state
  gradient); the weight gradients and the input gradient are one product each after
  the loop, over the gate gradients of all steps (the bias gradients one sum each).

Both directions of a bidirectional layer run in the same loop: reversing each sequence
within the packed layout (row ``(k, t)`` swapped with ``(k, L_k - 1 - t)``) turns
the reverse direction into a forward recurrence over the same packed layout, with the
same number of sequences per step, so one batched product per step serves both.

Only the layers run here; dropout between layers (training) is an ordinary autograd
operation between them. The initial state is zero and the final state is not returned
(no caller reads it). Gate definitions are PyTorch's (``torch.nn.GRU``: gates
``(r, z, n)``, ``n = tanh(x W_in + b_in + r * (h W_hn + b_hn))``, ``h' = (1 - z) * n + z * h``;
``torch.nn.LSTM``: gates ``(i, f, g, o)``, ``c' = f * c + i * g``, ``h' = o * tanh(c')``).
Double backward is not supported.
"""

from __future__ import annotations

from typing import Any, TypeGuard

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.nn.utils.rnn import PackedSequence

from merc.models.layers.dropout import dropout


class PackedSteps:
    """The time steps of a packed sequence, and where each row's neighbours are.

    Args:
        batch_sizes: ``long [T]`` (CPU) sequences present at each step, non-increasing
            (``PackedSequence.batch_sizes``).
        device: Where the index tensors live (the data's device).

    Attributes:
        starts, sizes: First packed row and row count of each step (Python ints).
        reverse: ``long [N]`` the row of the same sequence at the mirrored step: row
            ``(k, t)`` maps to ``(k, L_k - 1 - t)``. Its own inverse.
        previous: ``long [N - sizes[0]]`` for each row after the first step, the row of
            the same sequence one step earlier (first-step rows have a zero previous state).
    """

    def __init__(self, batch_sizes: Tensor, device: torch.device) -> None:
        self.sizes: list[int] = batch_sizes.tolist()
        starts = torch.cumsum(batch_sizes, 0) - batch_sizes
        self.starts: list[int] = starts.tolist()
        self.num_rows = int(batch_sizes.sum())
        step = torch.repeat_interleave(torch.arange(len(self.sizes)), batch_sizes)
        sequence = torch.arange(len(step)) - starts[step]  # rank of the row's sequence in its step
        lengths = (batch_sizes[None, :] > torch.arange(self.sizes[0])[:, None]).sum(1)
        self.reverse = (starts[lengths[sequence] - 1 - step] + sequence).to(device)
        self.previous = (starts[step[self.sizes[0] :] - 1] + sequence[self.sizes[0] :]).to(device)

    def per_direction(self, x: Tensor, directions: int) -> Tensor:
        """``x [N, ...]`` as ``[directions, N, ...]``: as is, then (bidirectional) each sequence reversed."""
        return x[None] if directions == 1 else torch.stack([x, x[self.reverse]])

    def join_directions(self, out: Tensor) -> Tensor:
        """``[D, N, h] -> [N, D * h]`` in packed order (the reverse direction's rows restored)."""
        return out[0] if out.shape[0] == 1 else torch.cat([out[0], out[1][self.reverse]], 1)

    def split_directions(self, grad: Tensor, directions: int) -> Tensor:
        """The inverse of :meth:`join_directions` (for the incoming gradient); a fresh tensor."""
        if directions == 1:
            return grad[None].clone()
        hidden = grad.shape[1] // 2
        return torch.stack([grad[:, :hidden], grad[:, hidden:][self.reverse]])

    def sum_directions(self, grad_x: Tensor) -> Tensor:
        """The gradient of :meth:`per_direction`: ``[D, N, d] -> [N, d]``."""
        return grad_x[0] if grad_x.shape[0] == 1 else grad_x[0] + grad_x[1][self.reverse]

    def previous_state(self, states: Tensor) -> Tensor:
        """``[D, N, h]`` each row's state one step earlier in its sequence (zero at the first step)."""
        previous = torch.zeros_like(states)
        previous[:, self.sizes[0] :] = states[:, self.previous]
        return previous


class _GRULayer(torch.autograd.Function):
    """One GRU layer, all directions: ``x [N, d] -> [N, D * h]`` over :class:`PackedSteps`.

    Weights are stacked over directions: ``w_ih [D, 3h, d]``, ``w_hh [D, 3h, h]``,
    ``b_ih, b_hh [D, 3h]`` (PyTorch's gate order ``r, z, n``).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, steps: PackedSteps
    ) -> Tensor:
        directions, hidden = w_hh.shape[0], w_hh.shape[2]
        input_gates = torch.baddbmm(b_ih[:, None], steps.per_direction(x, directions), w_ih.transpose(1, 2))
        input_rz, input_n = input_gates[..., : 2 * hidden], input_gates[..., 2 * hidden :]
        w_hh_t, b_hh = w_hh.transpose(1, 2), b_hh[:, None]
        h = x.new_zeros(directions, steps.sizes[0], hidden)
        # What the backward pass needs, written step by step into [D, N, ...] buffers.
        out = x.new_empty(directions, steps.num_rows, hidden)
        rz = x.new_empty(directions, steps.num_rows, 2 * hidden)
        hidden_gates = x.new_empty(directions, steps.num_rows, 3 * hidden)
        n = x.new_empty(directions, steps.num_rows, hidden)
        for start, size in zip(steps.starts, steps.sizes):
            rows = slice(start, start + size)
            h = h[:, :size]  # sequences sorted by length: the ones that ended are the last rows
            gh = torch.baddbmm(b_hh, h, w_hh_t, out=hidden_gates[:, rows])
            rz_t = torch.add(input_rz[:, rows], gh[..., : 2 * hidden], out=rz[:, rows]).sigmoid_()
            n_t = torch.addcmul(input_n[:, rows], rz_t[..., :hidden], gh[..., 2 * hidden :], out=n[:, rows]).tanh_()
            h = torch.lerp(n_t, h, rz_t[..., hidden:], out=out[:, rows])  # (1 - z) * n + z * h
        ctx.save_for_backward(x, w_ih, w_hh, out, rz, n, hidden_gates[..., 2 * hidden :])
        ctx.steps = steps  # type: ignore[attr-defined]
        return steps.join_directions(out)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        x, w_ih, w_hh, out, rz, n, hidden_n = ctx.saved_tensors
        steps: PackedSteps = ctx.steps
        directions, hidden = w_hh.shape[0], w_hh.shape[2]
        # grad: d loss / d h_t, completed step by step (from the output, then from step t + 1).
        grad = steps.split_directions(grad_y, directions)
        h_prev = steps.previous_state(out)
        r, z = rz[..., :hidden], rz[..., hidden:]
        # Gate pre-activation gradients are grad times these (they do not depend on grad).
        one_minus_z = 1 - z
        coef_n = one_minus_z * (1 - n * n)
        coef_z = (h_prev - n) * z * one_minus_z
        coef_r = coef_n * hidden_n * r * (1 - r)
        coef_hidden = torch.stack([coef_r, coef_z, coef_n * r], 2)  # [D, N, 3, h]: d / d(h W_hh^T + b_hh)
        d_gates = grad.new_empty(directions, steps.num_rows, 3, hidden)
        for t in range(len(steps.sizes) - 1, -1, -1):
            start, size = steps.starts[t], steps.sizes[t]
            rows = slice(start, start + size)
            g = grad[:, rows]
            dgates = torch.mul(coef_hidden[:, rows], g[:, :, None], out=d_gates[:, rows]).flatten(2)
            if t:
                into_prev = grad[:, steps.starts[t - 1] : steps.starts[t - 1] + size]
                into_prev.addcmul_(g, z[:, rows])
                into_prev.baddbmm_(dgates, w_hh)
        d_hidden = d_gates.flatten(2)  # [D, N, 3h]: d loss / d(h W_hh^T + b_hh)
        d_w_hh = torch.bmm(d_hidden.transpose(1, 2), h_prev)
        d_b_hh = d_hidden.sum(1)
        # The input gates differ from the hidden ones only in n (no factor r): reuse the buffer.
        torch.mul(grad, coef_n, out=d_gates[:, :, 2])
        d_input = d_hidden
        d_w_ih = torch.bmm(d_input.transpose(1, 2), steps.per_direction(x, directions))
        dx = steps.sum_directions(torch.bmm(d_input, w_ih))
        return dx, d_w_ih, d_w_hh, d_input.sum(1), d_b_hh, None


class _LSTMLayer(torch.autograd.Function):
    """One LSTM layer, all directions: ``x [N, d] -> [N, D * h]`` over :class:`PackedSteps`.

    Weights are stacked over directions: ``w_ih [D, 4h, d]``, ``w_hh [D, 4h, h]``,
    ``b_ih, b_hh [D, 4h]`` (PyTorch's gate order ``i, f, g, o``).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, steps: PackedSteps
    ) -> Tensor:
        directions, hidden = w_hh.shape[0], w_hh.shape[2]
        # Both biases add to the gates unchanged: fold them into the input products.
        input_gates = torch.baddbmm((b_ih + b_hh)[:, None], steps.per_direction(x, directions), w_ih.transpose(1, 2))
        w_hh_t = w_hh.transpose(1, 2)
        h = x.new_zeros(directions, steps.sizes[0], hidden)
        c = torch.zeros_like(h)
        # What the backward pass needs, written step by step into [D, N, ...] buffers.
        out = x.new_empty(directions, steps.num_rows, hidden)
        act = x.new_empty(directions, steps.num_rows, 4 * hidden)  # sigmoid(i, f), tanh(g), sigmoid(o)
        cell = torch.empty_like(out)
        tanh_cell = torch.empty_like(out)
        for start, size in zip(steps.starts, steps.sizes):
            rows = slice(start, start + size)
            h, c = h[:, :size], c[:, :size]  # the sequences that ended are the last rows
            gates = torch.baddbmm(input_gates[:, rows], h, w_hh_t)
            act_t = torch.sigmoid(gates, out=act[:, rows])  # the g slot is overwritten with tanh just below
            g = torch.tanh(gates[..., 2 * hidden : 3 * hidden], out=act_t[..., 2 * hidden : 3 * hidden])
            c = torch.addcmul(act_t[..., hidden : 2 * hidden] * c, act_t[..., :hidden], g, out=cell[:, rows])
            h = torch.mul(act_t[..., 3 * hidden :], torch.tanh(c, out=tanh_cell[:, rows]), out=out[:, rows])
        ctx.save_for_backward(x, w_ih, w_hh, out, act, cell, tanh_cell)
        ctx.steps = steps  # type: ignore[attr-defined]
        return steps.join_directions(out)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        x, w_ih, w_hh, out, act, cell, tanh_cell = ctx.saved_tensors
        steps: PackedSteps = ctx.steps
        directions, hidden = w_hh.shape[0], w_hh.shape[2]
        # grad / grad_cell: d loss / d h_t and d loss / d c_t from the later steps, completed step by step.
        grad = steps.split_directions(grad_y, directions)
        grad_cell = torch.zeros_like(grad)
        i, f = act[..., :hidden], act[..., hidden : 2 * hidden]
        g, o = act[..., 2 * hidden : 3 * hidden], act[..., 3 * hidden :]
        # The parts of the chain rule that do not depend on the incoming gradients.
        cell_from_h = o * (1 - tanh_cell * tanh_cell)  # d h_t / d c_t
        coef = torch.stack(  # d gates / d c_t for i, f, g; d gates / d h_t for o: [D, N, 4, h]
            [g * i * (1 - i), steps.previous_state(cell) * f * (1 - f), i * (1 - g * g), tanh_cell * o * (1 - o)], 2
        )
        d_gates = grad.new_empty(directions, steps.num_rows, 4, hidden)
        for t in range(len(steps.sizes) - 1, -1, -1):
            start, size = steps.starts[t], steps.sizes[t]
            rows = slice(start, start + size)
            g_h = grad[:, rows]
            g_c = torch.addcmul(grad_cell[:, rows], g_h, cell_from_h[:, rows])
            multiplier = torch.stack([g_c, g_c, g_c, g_h], 2)
            dgates = torch.mul(coef[:, rows], multiplier, out=d_gates[:, rows]).flatten(2)
            if t:
                prev = slice(steps.starts[t - 1], steps.starts[t - 1] + size)
                grad_cell[:, prev].addcmul_(g_c, f[:, rows])
                grad[:, prev].baddbmm_(dgates, w_hh)
        d_gates = d_gates.flatten(2)  # [D, N, 4h], the same for the input and the hidden products
        d_w_hh = torch.bmm(d_gates.transpose(1, 2), steps.previous_state(out))
        d_w_ih = torch.bmm(d_gates.transpose(1, 2), steps.per_direction(x, directions))
        dx = steps.sum_directions(torch.bmm(d_gates, w_ih))
        d_bias = d_gates.sum(1)
        return dx, d_w_ih, d_w_hh, d_bias, d_bias, None


_LAYERS: dict[type[nn.Module], type[torch.autograd.Function]] = {nn.GRU: _GRULayer, nn.LSTM: _LSTMLayer}


def supports_fused_rnn(rnn: nn.Module) -> TypeGuard[nn.GRU | nn.LSTM]:
    """Whether :func:`fused_rnn` computes ``rnn``: an ``nn.GRU`` or ``nn.LSTM`` with biases (no LSTM projection)."""
    return type(rnn) in _LAYERS and bool(rnn.bias) and not getattr(rnn, "proj_size", 0)


def fused_rnn(rnn: nn.GRU | nn.LSTM, packed: PackedSequence) -> PackedSequence:
    """``rnn(packed)[0]`` (zero initial state) with the hand-written backward of the module docstring.

    Args:
        rnn: An ``nn.GRU`` / ``nn.LSTM`` (:func:`supports_fused_rnn`); its parameters are
            used as they are (gradients flow to them).
        packed: ``data [N, d]`` in packed (time-major) layout.

    Returns:
        The output sequence, ``data [N, D * h]``, laid out as ``packed``. Dropout between
        layers follows ``rnn.dropout`` and ``rnn.training``.
    """
    layer_fn = _LAYERS[type(rnn)]
    steps = PackedSteps(packed.batch_sizes, packed.data.device)
    suffixes = ("", "_reverse") if rnn.bidirectional else ("",)
    x = packed.data
    for layer in range(rnn.num_layers):
        if layer:
            x = dropout(x, rnn.dropout, rnn.training)
        weights = [
            torch.stack([getattr(rnn, f"{name}_l{layer}{suffix}") for suffix in suffixes])
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        ]
        x = layer_fn.apply(x, *weights, steps)
    return PackedSequence(x, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)


__all__ = ["PackedSteps", "fused_rnn", "supports_fused_rnn"]
